//! Reachable by TradingView: HTTPS from certificate files (a renewal picked up without a
//! restart), plain HTTP redirected to HTTPS, and client addresses read from trusted proxies
//! only.

use std::path::Path;

use serde_json::json;
use tradehook::config::TlsSource;
use tradehook::domain::RateLimit;

use crate::helpers::*;

/// A certificate authority, and certificates for `localhost` and 127.0.0.1 it signs.
pub(crate) struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) pem: String,
}

impl Authority {
    pub(crate) fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tradehook test authority");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Writes a new key and a certificate valid for `days` into `dir`; returns its DER.
    pub(crate) fn issue(&self, dir: &Path, days: i64) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Written beside, then renamed over, as certbot's links change: never half a file.
        for (name, text) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
            let new = dir.join(format!("{name}.new"));
            std::fs::write(&new, text).unwrap();
            std::fs::rename(&new, dir.join(name)).unwrap();
        }
        cert.der().to_vec()
    }

    /// A client that trusts this authority only, on a new connection each time it is made.
    pub(crate) fn client(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()])
            .tls_info(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }
}

/// The certificate a new connection to `url` is served, and the answer's body.
async fn served(authority: &Authority, url: &str) -> (Vec<u8>, String) {
    let reply = authority.client().get(url).send().await.unwrap();
    let cert = reply
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec();
    assert_eq!(reply.status(), 200);
    (cert, reply.text().await.unwrap())
}

fn expiry_metric(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tradehook_tls_certificate_expiry_seconds "))
        .map(|v| v.parse().unwrap())
}

fn not_after(der: &[u8]) -> i64 {
    tradehook::tls::not_after(&der.to_vec().into()).unwrap()
}

#[tokio::test]
async fn https_from_certificate_files_picks_up_a_renewal_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let first = authority.issue(dir.path(), 60);
    let redirect = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redirect_addr = redirect.local_addr().unwrap();
    drop(redirect);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let app = spawn_app_with(|c| {
        c.tls = Some(TlsSource::Files { cert, key });
        c.http_redirect = Some(redirect_addr);
    })
    .await;
    let base = format!("https://localhost:{}", app.addr.port());

    // Served over HTTPS with the file's certificate, which the client verifies.
    let (cert, body) = served(&authority, &format!("{base}/readyz")).await;
    assert_eq!(cert, first);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"status": "ready"})
    );
    let (_, metrics) = served(&authority, &format!("{base}/metrics")).await;
    assert_eq!(expiry_metric(&metrics), Some(not_after(&first)));
    // The API works over it as over plain HTTP.
    let reply = authority
        .client()
        .get(format!("{base}/api/v1/endpoints"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    // Plain HTTP on the HTTPS port gets no answer in clear.
    assert!(app.client.get(app.url("/healthz")).send().await.is_err());

    // A renewal (new key, new certificate) is served to the next connection, with no restart.
    let renewed = authority.issue(dir.path(), 5);
    let (cert, _) = eventually(|| async {
        let (cert, body) = served(&authority, &format!("{base}/healthz")).await;
        (cert == renewed).then_some((cert, body))
    })
    .await;
    assert_eq!(cert, renewed);
    let (_, metrics) = served(&authority, &format!("{base}/metrics")).await;
    assert_eq!(expiry_metric(&metrics), Some(not_after(&renewed)));
    // Five days left: ready, with a warning that says when.
    let (_, body) = served(&authority, &format!("{base}/readyz")).await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    let warning = ready["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("expires in 4 day(s)") && warning.contains("renew"),
        "{warning}"
    );

    // Plain HTTP on the redirect address: a 308 to the same path over HTTPS.
    let reply = app
        .client
        .post(format!("http://{redirect_addr}/in/tv?x=1"))
        .header("host", "hooks.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 308);
    assert_eq!(
        reply.headers()["location"],
        format!("https://hooks.example.com:{}/in/tv?x=1", app.addr.port())
    );
}

#[tokio::test]
async fn without_a_certificate_nothing_says_tls() {
    let app = spawn_app().await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(expiry_metric(&metrics.text().await.unwrap()), None);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ready.text().await.unwrap()).unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_address_meets_the_allow_list_and_rate_limit() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies.networks = vec!["127.0.0.0/8".parse().unwrap()];
        c.inbound_rate = Some(RateLimit {
            count: 2,
            per_ms: 60_000,
        });
    })
    .await;
    app.create_source(json!({
        "name": "tv",
        "auth": {"type": "none"},
        "ip_allowlist": ["52.89.214.238", "34.212.75.30"],
    }))
    .await;
    let sent = std::sync::atomic::AtomicU32::new(0);
    let send = |xff: &'static str| {
        let (app, n) = (
            &app,
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        async move {
            let body = json!({"type": "entry", "n": n}).to_string();
            app.post_raw("/in/tv", &[("x-forwarded-for", xff)], body)
                .await
        }
    };
    // TradingView's address, forwarded by the proxy (the left part is the sender's own).
    assert_eq!(send("10.10.10.10, 52.89.214.238").await.status, 202);
    // Another address behind the same proxy is refused by the allow-list.
    let refused = send("1.2.3.4").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["code"], "address_not_allowed");
    assert!(refused.text.contains("1.2.3.4"), "{}", refused.text);
    // The rate limit is per client, not per proxy: each address has its own two.
    assert_eq!(send("52.89.214.238").await.status, 202);
    assert_eq!(send("52.89.214.238").await.status, 429);
    assert_eq!(send("34.212.75.30").await.status, 202);
    assert_eq!(app.events().await.len(), 3);
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_header_is_ignored() {
    let app = spawn_app().await;
    app.create_source(json!({
        "name": "tv",
        "auth": {"type": "none"},
        "ip_allowlist": ["52.89.214.238"],
    }))
    .await;
    for (name, value) in [
        ("x-forwarded-for", "52.89.214.238"),
        ("forwarded", "for=52.89.214.238"),
    ] {
        let reply = app
            .post_raw("/in/tv", &[(name, value)], r#"{"type":"entry"}"#)
            .await;
        assert_eq!(reply.status, 403, "{name}");
    }
    assert!(app.events().await.is_empty());
}

#[test]
fn tls_and_proxy_settings_come_from_the_file_and_bad_ones_are_named() {
    use tradehook::proxy::ForwardedHeader;
    let dir = tempfile::tempdir().unwrap();
    let resolve = |text: &str| settings_from_file(dir.path(), text);
    let config = resolve(
        "tls_cert = \"/etc/tradehook/cert.pem\"\ntls_key = \"/etc/tradehook/key.pem\"\n\
         http_redirect = \"0.0.0.0:80\"\ntrusted_proxy = [\"10.0.0.0/8\", \"::1\"]\n\
         forwarded_header = \"forwarded\"\n",
    )
    .unwrap();
    assert_eq!(
        config.tls,
        Some(TlsSource::Files {
            cert: "/etc/tradehook/cert.pem".into(),
            key: "/etc/tradehook/key.pem".into()
        })
    );
    assert_eq!(config.http_redirect, Some("0.0.0.0:80".parse().unwrap()));
    assert_eq!(config.trusted_proxies.networks.len(), 2);
    assert_eq!(config.trusted_proxies.header, ForwardedHeader::Forwarded);

    let error = resolve("tls_cert = \"/etc/tradehook/cert.pem\"\n").unwrap_err();
    assert!(
        error.contains("--tls-cert and --tls-key go together"),
        "{error}"
    );
    let error = resolve("http_redirect = \"0.0.0.0:80\"\n").unwrap_err();
    assert!(error.contains("needs --tls-cert"), "{error}");
    let error = resolve("trusted_proxy = [\"10.0.0.0/33\"]\n").unwrap_err();
    assert!(error.contains("--trusted-proxy"), "{error}");
}

#[tokio::test]
async fn a_certificate_file_that_cannot_be_read_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing-cert.pem");
    let mut config = tradehook::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", dir.path().join("hub.db").display()),
        ..Default::default()
    };
    config.tls = Some(TlsSource::Files {
        cert,
        key: dir.path().join("key.pem"),
    });
    let error = tradehook::app::Application::build(config)
        .await
        .err()
        .unwrap();
    let error = format!("{error:#}");
    assert!(error.contains("missing-cert.pem"), "{error}");
}

#[tokio::test]
async fn a_forwarded_header_from_a_peer_that_is_not_a_trusted_proxy_changes_nothing() {
    // The trusted proxy is elsewhere; this test's requests come from 127.0.0.1.
    let app = spawn_app_with(|c| {
        c.trusted_proxies.networks = vec!["10.0.0.5/32".parse().unwrap()];
    })
    .await;
    app.create_source(json!({
        "name": "tv",
        "auth": {"type": "none"},
        "ip_allowlist": ["tradingview"],
    }))
    .await;
    let spoofed = app
        .post_raw(
            "/in/tv",
            &[("x-forwarded-for", "52.89.214.238")],
            r#"{"type":"entry"}"#,
        )
        .await;
    assert_eq!(spoofed.status, 403);
    // Refused as what it is: the peer's own address.
    assert!(spoofed.text.contains("127.0.0.1"), "{}", spoofed.text);
    assert!(app.events().await.is_empty());
}
