//! Secrets at rest: encrypted in the database, with a key file only the hub can read.

use serde_json::json;
use tradehook::app::Application;
use tradehook::config::Config;

use crate::helpers::*;

fn file_contains(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}

#[tokio::test]
async fn secrets_are_encrypted_on_disk_and_a_wrong_key_stops_the_start() {
    let mut app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let ep = app.create_endpoint(json!({"url": receiver.url})).await;
    let endpoint_secret = ep["secret"].as_str().unwrap().to_owned();
    let ding = app
        .create_endpoint(
            json!({"url": "https://oapi.dingtalk.com/robot/send?access_token=t",
                                "preset": "dingtalk", "sign_secret": "SECdingtalk-signing-secret"}),
        )
        .await;
    assert_eq!(ding["sign_secret"], "***");
    let source = app
        .create_source(json!({"name": "tv", "format": "tradingview"}))
        .await;
    let source_secret = source["secret"].as_str().unwrap().to_owned();

    // The hub still signs with the real secret.
    app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    let got = receiver.wait_for(1).await;
    let signature = got[0].header("webhook-signature").unwrap();
    let expected = tradehook::security::sign::standard_signature(
        &endpoint_secret,
        got[0].header("webhook-id").unwrap(),
        got[0].header("webhook-timestamp").unwrap().parse().unwrap(),
        &got[0].body,
    );
    assert_eq!(signature, expected);

    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    let stored: Vec<String> = conn
        .prepare("select secret from endpoints union all select secret from sources")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored.len(), 3);
    assert!(
        stored.iter().all(|s| s.starts_with("enc:v1:")),
        "{stored:?}"
    );
    let wal = app.db_path.with_extension("db-wal");
    for secret in [
        endpoint_secret.as_str(),
        source_secret.as_str(),
        "SECdingtalk-signing-secret",
    ] {
        assert!(
            !file_contains(&app.db_path, secret),
            "{secret} is in the database file"
        );
        assert!(!file_contains(&wal, secret), "{secret} is in the WAL");
    }

    let key_file = app.db_path.with_extension("db.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Another key cannot open them: the hub refuses to start rather than run without secrets.
    app.stop().await;
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", app.db_path.display()),
        secret_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
        ..Config::default()
    };
    let err = Application::build(config).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("cannot be decrypted"),
        "{err:#}"
    );
}

#[tokio::test]
async fn secrets_in_an_endpoints_url_and_headers_never_leave_the_hub() {
    let app = spawn_app_with(|c| {
        c.dispatch.auto_disable_failures = 1;
        c.dispatch.auto_disable_after = std::time::Duration::ZERO;
    })
    .await;
    let ops = TestReceiver::start().await;
    app.create_endpoint(json!({"url": ops.url, "event_types": ["endpoint.disabled"]}))
        .await;
    // A port nothing listens on: every attempt fails with the URL in the error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let secrets = [
        "pa55word-secret",
        "123456:ABCdefTOKEN",
        "tok-secret-1",
        "c0de-secret-2",
        "s1g-secret-3",
        "okx-sign-secret",
        "kucoin-pass-secret",
        "api-pass-secret",
    ];
    let url = format!(
        "http://trader:pa55word-secret@127.0.0.1:{port}/bot123456%3AABCdefTOKEN/sendMessage\
         ?token=tok-secret-1&code=c0de-secret-2&sig=s1g-secret-3&chat_id=42"
    );
    let created = app
        .create_endpoint(json!({
            "url": url, "event_types": ["entry"], "retry_schedule": [0.05],
            "headers": {"OK-ACCESS-SIGN": "okx-sign-secret", "KC-API-PASSPHRASE": "kucoin-pass-secret",
                        "X-Api-Pass": "api-pass-secret"}
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let event = app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    // One failure disables the endpoint; the operator's endpoint hears of it.
    let notice = ops.wait_for(1).await[0].body.clone();

    // Everything a read-only token can read, and what the hub sent and stored.
    let reply = app
        .post(
            "/api/v1/tokens",
            &json!({"name": "viewer", "scope": "read_only"}),
        )
        .await;
    let viewer = reply.json()["token"].as_str().unwrap().to_owned();
    let delivery = app.delivery_of(&event).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen = String::from_utf8_lossy(&notice).into_owned();
    for path in [
        format!("/api/v1/endpoints/{id}"),
        "/api/v1/endpoints".to_owned(),
        format!("/api/v1/deliveries/{delivery}"),
        format!("/api/v1/deliveries?event_id={event}"),
        "/api/v1/events".to_owned(),
    ] {
        let reply = app
            .client
            .get(app.url(&path))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        seen.push_str(&reply.text().await.unwrap());
    }
    for stored in app.events().await {
        seen.push_str(&stored.to_string());
    }
    assert!(
        seen.contains("error sending request"),
        "the errors are there: {seen}"
    );
    assert!(
        seen.contains("127.0.0.1"),
        "the URL is there, masked: {seen}"
    );
    for secret in secrets {
        assert!(!seen.contains(secret), "{secret} leaked: {seen}");
    }
    let shown = app.get(&format!("/api/v1/endpoints/{id}")).await.json();
    assert_eq!(shown["headers"]["OK-ACCESS-SIGN"], "***");
    assert!(
        shown["url"].as_str().unwrap().contains("trader:***@"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_emptied_database_beside_its_key_file_or_a_lost_key_file_stops_the_start() {
    let mut app = spawn_app().await;
    app.create_endpoint(json!({"url": "https://bot.example/hook"}))
        .await;
    app.stop().await;
    let db = app.db_path.clone();
    let key_file = db.with_extension("db.key");
    let start = || {
        Application::build(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: format!("sqlite://{}", db.display()),
            api_token: Some(TOKEN.into()),
            ..Config::default()
        })
    };

    // The key file is lost: refused, and no new key is left behind in its place.
    let kept = db.with_extension("kept");
    std::fs::rename(&key_file, &kept).unwrap();
    let err = format!("{:#}", start().await.err().unwrap());
    assert!(err.contains("key file") && err.contains("missing"), "{err}");
    assert!(!key_file.exists());
    std::fs::rename(&kept, &key_file).unwrap();

    // The database is truncated to nothing beside its key file: refused, saying what to do.
    for suffix in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(db.with_extension(suffix));
    }
    std::fs::File::create(&db).unwrap();
    let err = format!("{:#}", start().await.err().unwrap());
    assert!(
        err.contains("is missing or empty") && err.contains("move the key file away"),
        "{err}"
    );
    // Missing altogether: the same.
    std::fs::remove_file(&db).unwrap();
    assert!(start().await.is_err());
    assert!(!db.exists(), "nothing was created");

    // Moving the key file away is the deliberate way to start afresh.
    std::fs::rename(&key_file, &kept).unwrap();
    let app = start().await.expect("a new database starts");
    app.store().close().await;
}
