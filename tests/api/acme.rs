//! HTTPS with a certificate obtained by the hub itself over ACME (TLS-ALPN-01 on its own
//! HTTPS port), from a real ACME server: Debian's `pebble`, with its mock DNS server
//! answering 127.0.0.1 for every name.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tradehook::config::TlsSource;
use tradehook::tls::acme::AcmeSettings;

use crate::helpers::*;
use crate::https::Authority;

const DOMAIN: &str = "tradehook.test";

/// A child process, killed when dropped.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether pebble is installed; under `CI=true` it must be (`.ci/run` installs it).
fn pebble_installed() -> bool {
    let found = Command::new("pebble")
        .arg("-h")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "pebble is missing: .ci/run installs Debian's pebble package"
        );
        eprintln!("pebble is not installed: the ACME test did not run");
    }
    found
}

/// An ACME server for `hub_port`'s TLS-ALPN-01 checks: (its processes, directory URL,
/// management URL).
fn pebble(dir: &Path, authority: &Authority, hub_port: u16) -> (Vec<Running>, String, String) {
    let own = dir.join("pebble");
    std::fs::create_dir_all(&own).unwrap();
    authority.issue(&own, 30);
    let (wfe, management, dns) = (free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{wfe}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": own.join("cert.pem"),
        "privateKey": own.join("key.pem"),
        "httpPort": free_port(),
        "tlsPort": hub_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    let config_path = own.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let dns_server = Running(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server = Running(
        Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random pauses before validating, and no nonces refused at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (
        vec![dns_server, server],
        format!("https://127.0.0.1:{wfe}/dir"),
        format!("https://127.0.0.1:{management}"),
    )
}

/// A client that trusts only `root` and finds the test domain at `port` on loopback.
fn client_for(root: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve(DOMAIN, ([127, 0, 0, 1], port).into())
        .tls_info(true)
        .build()
        .unwrap()
}

fn settings(dir: &Path, directory: &str) -> AcmeSettings {
    AcmeSettings {
        domains: vec![DOMAIN.into()],
        email: vec!["ops@tradehook.test".into()],
        directory: directory.into(),
        cache: dir.join("acme"),
        ca_file: Some(dir.join("ca.pem")),
    }
}

#[tokio::test]
async fn a_certificate_from_an_acme_server_is_served_and_cached_for_the_next_start() {
    if !pebble_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    std::fs::write(dir.path().join("ca.pem"), &authority.pem).unwrap();
    let hub_port = free_port();
    let (servers, directory, management) = pebble(dir.path(), &authority, hub_port);
    // The ACME server is up before the hub asks it for anything.
    let trusting = authority.client();
    eventually(|| async {
        let r = trusting.get(&directory).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let acme = settings(dir.path(), &directory);
    let mut app = spawn_app_with(|c| {
        c.listen = ([127, 0, 0, 1], hub_port).into();
        c.tls = Some(TlsSource::Acme(acme.clone()));
    })
    .await;
    // The root of the chain the ACME server issues: what a sender would trust.
    let root = text_of(trusting.get(format!("{management}/roots/0"))).await;
    let client = client_for(&root, hub_port);
    let url = format!("https://{DOMAIN}:{hub_port}");
    // The order, the TLS-ALPN-01 check on the hub's own port, and the certificate, with no
    // step of the operator's.
    let served = eventually(|| async {
        let reply = client.get(format!("{url}/healthz")).send().await.ok()?;
        let cert = reply
            .extensions()
            .get::<reqwest::tls::TlsInfo>()?
            .peer_certificate()?
            .to_vec();
        (reply.status() == 200).then_some(cert)
    })
    .await;
    let not_after = tradehook::tls::not_after(&served.clone().into()).unwrap();
    assert!(not_after > tradehook::domain::now_ms() / 1000);
    let metrics = text_of(client.get(format!("{url}/metrics"))).await;
    assert!(
        metrics.contains(&format!(
            "tradehook_tls_certificate_expiry_seconds {not_after}"
        )),
        "{metrics}"
    );
    // The certificate may be served a moment before its copy reaches the cache: wait for
    // the file, not for a time.
    let cache = dir.path().join("acme");
    eventually_or(|| async {
        let cached = std::fs::read_dir(&cache).map_or(0, |d| d.count());
        match cached >= 2 {
            true => Ok(()),
            false => Err(format!(
                "the account and the certificate are kept: {cached} file(s) in the cache"
            )),
        }
    })
    .await;
    app.stop().await;

    // The ACME server is gone; a new start serves the cached certificate at once.
    drop(servers);
    let app = spawn_app_with(|c| c.tls = Some(TlsSource::Acme(acme.clone()))).await;
    let client = client_for(&root, app.addr.port());
    let reply = client
        .get(format!("https://{DOMAIN}:{}/readyz", app.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let again = reply
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec();
    assert_eq!(again, served);
}

#[test]
fn acme_settings_come_from_flags_and_file_with_staging_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let resolve = |text: &str| settings_from_file(dir.path(), text);
    let config = resolve(
        "database = \"sqlite:///var/lib/tradehook/hub.db\"\n\
         acme_domain = [\"Hooks.Example.com\"]\nacme_email = \"ops@example.com\"\n",
    )
    .unwrap();
    let Some(TlsSource::Acme(acme)) = config.tls else {
        panic!("ACME expected")
    };
    assert_eq!(acme.domains, ["hooks.example.com"]);
    assert_eq!(acme.directory, tradehook::tls::acme::LETS_ENCRYPT_STAGING);
    assert_eq!(acme.cache, Path::new("/var/lib/tradehook/acme"));
    assert_eq!(acme.email, ["ops@example.com"]);
    let production =
        resolve("acme_domain = [\"a.example.com\"]\nacme_production = true\n").unwrap();
    let Some(TlsSource::Acme(acme)) = production.tls else {
        panic!("ACME expected")
    };
    assert_eq!(
        acme.directory,
        tradehook::tls::acme::LETS_ENCRYPT_PRODUCTION
    );

    let error =
        resolve("acme_domain = [\"a.example.com\"]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n")
            .unwrap_err();
    assert!(error.contains("choose one"), "{error}");
    let error = resolve("acme_domain = [\"https://a.example.com\"]\n").unwrap_err();
    assert!(error.contains("a DNS name"), "{error}");
}
