//! The first run as a trader does it: `tradehook init` writes a config file and prints what to
//! paste into TradingView and Freqtrade, a hub serves that file, and what was printed is
//! accepted; `tradehook doctor` checks a running setup and names what to fix.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use tradehook::config::{ServeArgs, TlsSource};

use crate::helpers::*;
use crate::https::Authority;

/// Runs the binary with `args`: (succeeded, stdout, stderr).
async fn tradehook(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_tradehook"))
            .args(&args)
            .env_remove("TRADEHOOK_CONFIG")
            .env_remove("TRADEHOOK_API_TOKEN")
            .env_remove("TRADEHOOK_URL")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `tradehook init` with `args` into a new file: what it printed, and the settings the hub
/// reads from the file.
async fn init_for(args: &[&str]) -> (String, tradehook::config::Config) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let mut all = vec![
        "init".to_owned(),
        "--config".into(),
        path.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let (ok, out, err) = tradehook(all).await;
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    (out, settings_from_file(dir.path(), &text).unwrap())
}

/// The pretty JSON block printed after the line starting with `heading`.
fn block_after(text: &str, heading: &str) -> String {
    let rest = &text[text.find(heading).unwrap()..];
    let lines: Vec<&str> = rest
        .lines()
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .collect();
    lines.join("\n")
}

/// A hub on the configuration in `path`, listening on a free loopback port, with its
/// database in a temporary directory.
async fn hub_from(path: &Path) -> TestApp {
    let file = ServeArgs {
        config: Some(path.to_owned()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    spawn_app_with(|c| {
        let (database, dispatch) = (c.database.clone(), c.dispatch.clone());
        *c = file;
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.database = database;
        c.dispatch = dispatch;
    })
    .await
}

#[tokio::test]
async fn init_writes_a_config_a_hub_serves_and_what_it_prints_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tradehook.toml");
    let config = path.display().to_string();
    let (ok, out, err) = tradehook(
        [
            "init",
            "--config",
            &config,
            "--domain",
            "Hooks.Example.com",
            "--tls",
            "proxy",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok, "{err}");
    // Only its owner can read it: it holds the token and the secrets.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("Admin API token: "))
        .unwrap()
        .to_owned();
    assert!(
        out.contains("https://hooks.example.com/in/tradingview\n"),
        "{out}"
    );
    let message = block_after(&out, "== and this as the alert's Message");
    let freqtrade: Value =
        serde_json::from_str(&format!("{{{}}}", block_after(&out, "== Freqtrade"))).unwrap();
    let freqtrade = &freqtrade["webhook"];
    assert_eq!(freqtrade["format"], "json");

    // A hub on the written file: the token it printed is the admin's.
    let app = hub_from(&path).await;
    let sources = app
        .client
        .get(app.url("/api/v1/sources"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(sources.status(), 200);
    let sources: Value = serde_json::from_str(&sources.text().await.unwrap()).unwrap();
    let names: Vec<&str> = sources["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{sources}");
    assert!(names.contains(&"tradingview") && names.contains(&"freqtrade"));

    // The alert message as TradingView fills it in, from TradingView's address as the proxy
    // forwards it.
    let alert = message
        .replace("{{exchange}}:{{ticker}}", "BINANCE:BTCUSDT.P")
        .replace("{{strategy.order.action}}", "buy")
        .replace("{{strategy.market_position}}", "long")
        .replace("{{close}}", "64000.5")
        .replace("{{strategy.order.contracts}}", "0.01")
        .replace(
            "{{timenow}}-{{strategy.order.id}}",
            "2026-12-04T01:00:00Z-Long",
        );
    let from = |xff: &'static str| {
        let (app, alert) = (&app, alert.clone());
        async move {
            app.post_raw("/in/tradingview", &[("x-forwarded-for", xff)], alert)
                .await
        }
    };
    let accepted = from("52.89.214.238").await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    // Anyone else behind the proxy is refused by the allow-list init wrote.
    assert_eq!(from("198.51.100.9").await.status, 403);

    // Freqtrade's entry, as its webhook sends it with the printed section.
    let url = freqtrade["url"].as_str().unwrap();
    let path_part = url.strip_prefix("https://hooks.example.com").unwrap();
    let mut entry = freqtrade["entry"].as_object().unwrap().clone();
    for (field, value) in [
        ("type", "entry"),
        ("trade_id", "7"),
        ("pair", "ETH/USDT"),
        ("direction", "Long"),
        ("open_rate", "3012.5"),
        ("amount", "0.5"),
        ("stake_amount", "1506.25"),
        ("stake_currency", "USDT"),
        ("enter_tag", "breakout"),
        ("open_date", "2026-12-04 01:00:00+00:00"),
    ] {
        assert!(entry.contains_key(field), "{field}");
        entry.insert(field.into(), json!(value));
    }
    let reply = app
        .post_raw(path_part, &[], Value::Object(entry).to_string())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let events = text_of(
        app.client
            .get(app.url("/api/v1/events"))
            .bearer_auth(&token),
    )
    .await;
    let events: Value = serde_json::from_str(&events).unwrap();
    let pairs: Vec<&Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["data"]["pair"])
        .collect();
    assert_eq!(pairs.len(), 2, "{events}");
    assert!(pairs.contains(&&json!("BTC/USDT")) && pairs.contains(&&json!("ETH/USDT")));
    // The passphrase is not stored with the signal.
    let passphrase: Value = serde_json::from_str(&message).unwrap();
    let passphrase = passphrase["passphrase"].as_str().unwrap();
    assert_eq!(passphrase.len(), 32);
    assert!(!events.to_string().contains(passphrase));

    // A second init keeps the file and says how to replace it.
    let before = std::fs::read_to_string(&path).unwrap();
    let (ok, _, err) = tradehook(["init", "--config", &config].map(String::from).to_vec()).await;
    assert!(!ok);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[tokio::test]
async fn init_with_certificate_files_writes_certbots_paths_and_port_443() {
    let (out, config) = init_for(&["--domain", "hooks.example.com", "--tls", "files"]).await;
    assert!(out.contains("certbot certonly --standalone -d hooks.example.com"));
    assert_eq!(config.listen, "0.0.0.0:443".parse().unwrap());
    // Certbot's standalone renewals need port 80: no redirect there unless asked for.
    assert_eq!(config.http_redirect, None);
    assert_eq!(
        config.tls,
        Some(TlsSource::Files {
            cert: "/etc/letsencrypt/live/hooks.example.com/fullchain.pem".into(),
            key: "/etc/letsencrypt/live/hooks.example.com/privkey.pem".into(),
        })
    );
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://hooks.example.com")
    );
    // Proxy mode without a domain cannot say where senders go.
    let (ok, _, err) = tradehook(
        ["init", "--config", "/dev/null/x", "--tls", "proxy"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!ok);
    assert!(err.contains("need --domain"), "{err}");
}

#[tokio::test]
async fn doctor_accepts_a_valid_certificate_and_names_tradingviews_port_as_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    authority.issue(dir.path(), 60);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &authority.pem).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let app = spawn_app_with(|c| c.tls = Some(TlsSource::Files { cert, key })).await;
    let url = format!("https://localhost:{}", app.addr.port());
    let doctor = |extra: &[&str]| {
        let mut args: Vec<String> = ["doctor", "--url", &url, "--token", TOKEN]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        tradehook(args)
    };

    // No TradingView source yet: nothing fails.
    let (ok, out, err) = doctor(&["--ca-file", &ca.display().to_string()]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("valid certificate"), "{out}");
    assert!(
        out.contains("in 59 days") || out.contains("in 60 days"),
        "{out}"
    );
    assert!(out.contains("ready: the database answers"), "{out}");

    // A TradingView source on a port TradingView never sends to.
    let created = authority
        .client()
        .post(format!("{url}/api/v1/sources"))
        .bearer_auth(TOKEN)
        .body(json!({"name": "tv", "format": "tradingview"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (ok, out, err) = doctor(&["--ca-file", &ca.display().to_string()]).await;
    assert!(!ok);
    let line = out
        .lines()
        .find(|l| l.contains("only to ports 80 and 443"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("FAIL") && line.contains(&app.addr.port().to_string()));
    assert!(out.contains("fix: listen on 443"), "{out}");
    assert!(err.contains("1 problem(s)"), "{err}");

    // Without the private authority, the certificate is what senders would refuse.
    let (ok, out, _) = doctor(&[]).await;
    assert!(!ok);
    assert!(
        out.contains("FAIL") && out.contains("certificate senders refuse"),
        "{out}"
    );
}

#[tokio::test]
async fn doctor_on_a_local_plain_hub_warns_and_reads_the_config_file() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        format!(
            "public_url = \"{}\"\napi_token = \"{TOKEN}\"\n",
            app.url("")
        ),
    )
    .unwrap();
    let (ok, out, err) = tradehook(
        ["doctor", "--config", &path.display().to_string()]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("warn") && out.contains("plain HTTP on this machine only"),
        "{out}"
    );
    assert!(!out.contains("no API token"), "{out}");

    // Nothing listening: said so, with what to do.
    std::fs::write(&path, "public_url = \"http://127.0.0.1:9\"\n").unwrap();
    let (ok, out, _) = tradehook(
        ["doctor", "--config", &path.display().to_string()]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("nothing answers at http://127.0.0.1:9"),
        "{out}"
    );
    assert!(out.contains("start `tradehook serve`"), "{out}");
}

/// `systemd-analyze`, which CI installs: without it, the unit is not checked (and under
/// `CI=true` that fails the run).
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "systemd-analyze is missing: .ci/run installs the systemd package"
        );
        eprintln!("systemd-analyze not installed: the unit was not checked");
        return None;
    }
    Some("systemd-analyze")
}

#[test]
fn the_systemd_unit_is_valid_and_hardened() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/tradehook.service"
    ))
    .unwrap();
    // What the README promises of it.
    for line in [
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "User=tradehook",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
    // Checked as systemd reads it, with the binary where the unit expects one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tradehook.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tradehook", env!("CARGO_BIN_EXE_tradehook")),
    )
    .unwrap();
    let verify = Command::new(analyze)
        .args(["verify", path.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // systemd's own exposure score, 0 (locked down) to 10: at most 2.
    let security = Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "{}",
        report.lines().last().unwrap_or_default()
    );
}

#[tokio::test]
async fn init_with_a_domain_serves_lets_encrypt_certificates_by_default() {
    let (out, config) = init_for(&[
        "--domain",
        "hooks.example.com",
        "--email",
        "ops@example.com",
    ])
    .await;
    assert!(
        out.contains("the certificate comes within seconds"),
        "{out}"
    );
    assert_eq!(config.listen, "0.0.0.0:443".parse().unwrap());
    let Some(TlsSource::Acme(acme)) = config.tls else {
        panic!("ACME expected: {:?}", config.tls)
    };
    assert_eq!(acme.domains, ["hooks.example.com"]);
    assert_eq!(acme.email, ["ops@example.com"]);
    // TradingView must trust the certificate: Let's Encrypt's real directory.
    assert_eq!(
        acme.directory,
        tradehook::tls::acme::LETS_ENCRYPT_PRODUCTION
    );
}

#[tokio::test]
async fn init_then_serve_with_the_file_alone_takes_the_printed_alert() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tradehook.toml");
    let port = crate::acme::free_port();
    let (ok, out, err) = tradehook(
        [
            "init",
            "--config",
            &path.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{port}/in/tradingview")),
        "{out}"
    );
    // Nothing but the file: no flag, no environment.
    let _hub = crate::acme::Running(
        Command::new(env!("CARGO_BIN_EXE_tradehook"))
            .args(["serve", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env_clear()
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = tradehook::app::http_client().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually(|| async {
        let r = client.get(format!("{base}/healthz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let alert = block_after(&out, "== and this as the alert's Message")
        .replace("{{exchange}}:{{ticker}}", "BINANCE:SOLUSDT")
        .replace("{{strategy.order.action}}", "sell")
        .replace("{{strategy.market_position}}", "short")
        .replace("{{close}}", "141.2")
        .replace("{{strategy.order.contracts}}", "3")
        .replace(
            "{{timenow}}-{{strategy.order.id}}",
            "2026-12-04T01:31:00Z-Short",
        );
    let reply = client
        .post(format!("{base}/in/tradingview"))
        .body(alert)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202, "{}", reply.text().await.unwrap());
    // The database and its key were made where the file says, beside it.
    assert!(dir.path().join("tradehook.db").exists());
    assert!(dir.path().join("tradehook.db.key").exists());
}

/// A stand-in for a hub in trouble: up, but not ready, refusing the token, and with a clock
/// ten minutes slow.
async fn troubled_hub() -> std::net::SocketAddr {
    use axum::routing::get;
    let slow_clock =
        httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(600));
    let router = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let date = slow_clock.clone();
                async move { ([(http::header::DATE, date)], "{\"status\":\"ok\"}") }
            }),
        )
        .route(
            "/readyz",
            get(|| async {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    r#"{"code":"not_ready","detail":"the store does not answer: disk I/O error"}"#,
                )
            }),
        )
        .route(
            "/api/v1/sources",
            get(|| async { http::StatusCode::UNAUTHORIZED }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

#[tokio::test]
async fn doctor_names_a_hub_not_ready_a_refused_token_and_a_skewed_clock_with_their_fixes() {
    let address = troubled_hub().await;
    let (ok, out, err) = tradehook(
        [
            "doctor",
            "--url",
            &format!("http://{address}"),
            "--token",
            "thk_not_the_right_one_0123",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(!ok);
    assert!(err.contains("3 problem(s)"), "{err}\n{out}");
    let fix_after = |marker: &str| {
        let lines: Vec<&str> = out.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{marker}: {out}"));
        assert!(lines[i].contains("FAIL"), "{}", lines[i]);
        lines[i + 1].trim().to_owned()
    };
    assert!(fix_after("not ready (503").contains("database's disk"));
    assert!(out.contains("disk I/O error"), "{out}");
    assert!(fix_after("the API refused the token").contains("api_token"));
    let clock = fix_after("differ by");
    assert!(clock.contains("NTP"), "{clock}");
    assert!(out.contains("timestamps will be refused"), "{out}");
}
