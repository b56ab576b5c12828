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
    let expected = tradehook::deliver::sign::standard_signature(
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
