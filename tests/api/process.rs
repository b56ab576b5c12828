//! The real `tradehook` binary as a child process: first start, graceful stop, and a crash
//! under load that loses nothing.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::postgres::TestDatabase;

/// A hub process on its own port and database.
pub(crate) struct Hub {
    pub(crate) child: Child,
    pub(crate) url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Hub {
    fn start(db: &Path, token: Option<&str>) -> Self {
        Self::start_on(&format!("sqlite://{}", db.display()), token, &[])
    }

    /// A hub on any database URL, with more `serve` arguments.
    pub(crate) fn start_on(database: &str, token: Option<&str>, args: &[&str]) -> Self {
        Self::start_with(database, token, args, |_| {})
    }

    /// A hub whose command `adjust` changes before it starts.
    pub(crate) fn start_with(
        database: &str,
        token: Option<&str>,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tradehook"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(database)
            .args(args)
            .arg("--allow-target")
            .arg("127.0.0.0/8")
            .env_remove("TRADEHOOK_API_TOKEN")
            .env_remove("TRADEHOOK_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            cmd.env("TRADEHOOK_API_TOKEN", t);
        }
        adjust(&mut cmd);
        Self {
            child: cmd.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until the hub answers its health check.
    pub(crate) async fn ready(&self, client: &reqwest::Client) {
        eventually(|| async {
            let r = client.get(format!("{}/healthz", self.url)).send().await;
            r.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Eight senders publishing `per_sender` events each as fast as they can, to the given hubs in
/// turn. A sender stops at its first refusal or broken connection (its hub is gone).
struct Load {
    accepted: Arc<Mutex<Vec<String>>>,
    enough: Arc<tokio::sync::Notify>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `enough`: how many accepted events [`Load::reached`] waits for.
    fn start(client: &reqwest::Client, hubs: &[String], per_sender: usize, enough: usize) -> Self {
        let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
        let reached = Arc::new(tokio::sync::Notify::new());
        let senders = (0..8)
            .map(|s| {
                let client = client.clone();
                let url = format!("{}/api/v1/events", hubs[s % hubs.len()]);
                let (accepted, reached) = (accepted.clone(), reached.clone());
                tokio::spawn(async move {
                    for i in 0..per_sender {
                        let body = json!({"type": "entry", "data": {"sender": s, "i": i}});
                        let sent = client
                            .post(&url)
                            .bearer_auth(TOKEN)
                            .body(body.to_string())
                            .send()
                            .await;
                        let Ok(reply) = sent else { return };
                        if reply.status() != 202 {
                            return;
                        }
                        let Ok(text) = reply.text().await else { return };
                        let receipt: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let mut all = accepted.lock().unwrap();
                        all.push(receipt["id"].as_str().unwrap().to_owned());
                        if all.len() == enough {
                            reached.notify_one();
                        }
                    }
                })
            })
            .collect();
        Self {
            accepted,
            enough: reached,
            senders,
        }
    }

    async fn reached(&self) {
        self.enough.notified().await;
    }

    /// Waits for every sender to stop; the ids of the events accepted.
    async fn finish(self) -> HashSet<String> {
        for sender in self.senders {
            sender.await.unwrap();
        }
        self.accepted.lock().unwrap().iter().cloned().collect()
    }
}

async fn api(
    client: &reqwest::Client,
    hub: &Hub,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", hub.url))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let reply = req.send().await.unwrap();
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Creates an endpoint through `hub`'s API and returns it.
async fn create_endpoint(
    client: &reqwest::Client,
    hub: &Hub,
    body: serde_json::Value,
) -> serde_json::Value {
    let (status, endpoint) = api(client, hub, TOKEN, "POST", "/api/v1/endpoints", Some(body)).await;
    assert_eq!(status, 201, "{endpoint}");
    endpoint
}

#[tokio::test]
async fn a_first_start_creates_the_database_and_prints_an_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/dir/hub.db");
    let client = tradehook::app::http_client().unwrap();

    let mut hub = Hub::start(&db, None);
    let stdout = hub.child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let token = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(token.starts_with("thk_"), "{line}");
    hub.ready(&client).await;
    assert!(db.exists());
    let (status, _) = api(&client, &hub, &token, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(status, 200);
    hub.signal(Signal::SIGTERM);
    assert!(hub.child.wait().unwrap().success());

    // The second start prints nothing and the first token still works.
    let mut again = Hub::start(&db, None);
    again.ready(&client).await;
    let (status, _) = api(&client, &again, &token, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(status, 200);
    again.signal(Signal::SIGTERM);
    assert!(again.child.wait().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut again.child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(!out.contains("thk_"), "{out}");
}

/// One SQLite file has one hub: a second `serve` on it, or a `migrate` under it, stops with an
/// error that says so, and the first goes on serving.
#[tokio::test]
async fn a_second_hub_on_the_same_sqlite_file_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let client = tradehook::app::http_client().unwrap();
    let hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;

    let database = format!("sqlite://{}", db.display());
    let listen = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["serve", "--listen", &listen, "--database", &database],
        vec!["migrate", "--database", &database],
    ] {
        let refused = Command::new(env!("CARGO_BIN_EXE_tradehook"))
            .args(&args)
            .env("TRADEHOOK_API_TOKEN", TOKEN)
            .env_remove("TRADEHOOK_CONFIG")
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{args:?} ran");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("is in use by another tradehook process"),
            "{args:?}: {stderr}"
        );
    }
    let (status, _) = api(&client, &hub, TOKEN, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(status, 200, "the first hub still serves");
}

#[tokio::test]
async fn sigterm_lets_an_attempt_in_flight_finish_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Hang(std::time::Duration::from_millis(800))]);

    let mut hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;
    create_endpoint(&client, &hub, json!({"url": receiver.url})).await;
    let (status, receipt) = api(
        &client,
        &hub,
        TOKEN,
        "POST",
        "/api/v1/events",
        Some(json!({"type": "entry"})),
    )
    .await;
    assert_eq!(status, 202);
    receiver.wait_for(1).await; // the attempt is now in flight
    hub.signal(Signal::SIGTERM);
    let exit = tokio::task::spawn_blocking(move || {
        let status = hub.child.wait().unwrap();
        (hub, status)
    })
    .await
    .unwrap();
    assert!(exit.1.success());

    let hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;
    let id = receipt["id"].as_str().unwrap();
    let (_, event) = api(
        &client,
        &hub,
        TOKEN,
        "GET",
        &format!("/api/v1/events/{id}"),
        None,
    )
    .await;
    assert_eq!(event["deliveries"][0]["status"], "succeeded", "{event}");
    assert_eq!(receiver.received().len(), 1, "nothing is sent twice");
}

#[tokio::test]
async fn a_hub_killed_under_load_delivers_every_accepted_event_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    // A slow receiver, so that deliveries lag behind ingest when the hub dies.
    receiver.set_delay(Some(std::time::Duration::from_millis(100)));

    let hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;
    create_endpoint(
        &client,
        &hub,
        json!({"url": receiver.url, "retry_schedule": [0.1]}),
    )
    .await;

    // Eight senders publish as fast as they can; the hub is killed once 150 were accepted.
    let load = Load::start(&client, std::slice::from_ref(&hub.url), 200, 150);
    load.reached().await;
    hub.signal(Signal::SIGKILL);
    let accepted = load.finish().await;
    drop(hub);
    assert!(accepted.len() >= 150);
    let before_restart: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        !accepted.is_subset(&before_restart),
        "the crash must leave accepted events undelivered for this test to mean anything"
    );
    receiver.set_delay(None);

    let restarted = Hub::start(&db, Some(TOKEN));
    restarted.ready(&client).await;
    let delivered = eventually(|| async {
        let ids: HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("webhook-id").unwrap().to_owned())
            .collect();
        accepted.is_subset(&ids).then_some(ids)
    })
    .await;
    assert!(accepted.is_subset(&delivered));
    drop(restarted);
}

#[tokio::test]
async fn sigterm_under_load_leaves_every_delivery_done_or_pending_and_nothing_leased() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    // Slow answers keep many attempts in flight and many deliveries queued.
    receiver.set_delay(Some(std::time::Duration::from_millis(50)));

    let mut hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;
    for _ in 0..3 {
        create_endpoint(&client, &hub, json!({"url": receiver.url})).await;
    }
    let accepted = Arc::new(Mutex::new(0usize));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut senders = Vec::new();
    for s in 0..8 {
        let client = client.clone();
        let url = format!("{}/api/v1/events", hub.url);
        let (accepted, enough) = (accepted.clone(), enough.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..100 {
                let body = json!({"type": "entry", "data": {"sender": s, "i": i}});
                let Ok(reply) = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .body(body.to_string())
                    .send()
                    .await
                else {
                    return;
                };
                if reply.status() != 202 {
                    return;
                }
                let mut n = accepted.lock().unwrap();
                *n += 1;
                if *n == 200 {
                    enough.notify_one();
                }
            }
        }));
    }
    enough.notified().await;
    hub.signal(Signal::SIGTERM);
    for s in senders {
        s.await.unwrap();
    }
    let status = tokio::task::spawn_blocking(move || hub.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());

    // The database as the next start finds it: no delivery half-way, none held by anyone.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let statuses: Vec<(String, i64)> = conn
        .prepare("select status, count(*) from deliveries group by status")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        statuses
            .iter()
            .all(|(s, _)| s == "succeeded" || s == "pending"),
        "{statuses:?}"
    );
    let total: i64 = statuses.iter().map(|(_, n)| n).sum();
    assert_eq!(
        total as usize,
        *accepted.lock().unwrap() * 3,
        "{statuses:?}"
    );
    let leased: i64 = conn
        .query_row(
            "select count(*) from deliveries where lease_owner is not null",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leased, 0, "{statuses:?}");
}

#[test]
fn the_sign_command_signs_what_the_verify_command_accepts() {
    use std::io::Write as _;
    let run = |args: &[String], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tradehook"))
            .args(args)
            .env_remove("TRADEHOOK_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
    let body = br#"{"type":"entry","pair":"BTC/USDT"}"#;
    let signed = run(&["sign".into(), "--secret".into(), secret.clone()], body);
    assert!(signed.status.success());
    let mut verify = vec!["verify".to_owned(), "--secret".into(), secret];
    for line in String::from_utf8(signed.stdout).unwrap().lines() {
        verify.push("-H".into());
        verify.push(line.to_owned());
    }
    let ok = run(&verify, body);
    assert!(ok.status.success());
    assert_eq!(String::from_utf8(ok.stdout).unwrap(), "valid\n");
    let bad = run(&verify, br#"{"type":"exit"}"#);
    assert!(!bad.status.success());
    let why = String::from_utf8(bad.stderr).unwrap();
    assert!(
        why.contains("invalid: the signature does not match the body"),
        "{why}"
    );
}

#[tokio::test]
async fn the_send_command_posts_a_payload_signed_as_the_source_expects() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let client = tradehook::app::http_client().unwrap();
    let mut hub = Hub::start(&dir.path().join("hub.db"), Some(TOKEN));
    hub.ready(&client).await;
    let (_, signed) = api(
        &client,
        &hub,
        TOKEN,
        "POST",
        "/api/v1/sources",
        Some(json!({"name": "bot", "auth": {"type": "standard_webhooks"}})),
    )
    .await;
    let (_, tokened) = api(
        &client,
        &hub,
        TOKEN,
        "POST",
        "/api/v1/sources",
        Some(json!({"name": "tv", "format": "tradingview"})),
    )
    .await;
    let send = |args: Vec<String>, body: &'static [u8]| {
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_tradehook"))
                .arg("send")
                .args(args)
                .env_remove("TRADEHOOK_SECRET")
                .env_remove("TRADEHOOK_URL")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(body).unwrap();
            child.wait_with_output().unwrap()
        })
    };
    let out = send(
        vec![
            "--url".into(),
            hub.url.clone(),
            "--source".into(),
            "bot".into(),
            "--auth".into(),
            "standard".into(),
            "--secret".into(),
            signed["secret"].as_str().unwrap().into(),
        ],
        br#"{"type":"entry","pair":"BTC/USDT"}"#,
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("202 "));

    let out = send(
        vec![
            "--url".into(),
            hub.url.clone(),
            "--source".into(),
            "tv".into(),
            "--secret".into(),
            tokened["secret"].as_str().unwrap().into(),
            "--content-type".into(),
            "text/plain".into(),
        ],
        b"buy BTCUSDT 0.01",
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong secret: the hub's answer is shown and the exit is non-zero.
    let out = send(
        vec![
            "--url".into(),
            hub.url.clone(),
            "--source".into(),
            "bot".into(),
            "--auth".into(),
            "standard".into(),
            "--secret".into(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        ],
        br#"{"type":"entry"}"#,
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("invalid_signature"));

    hub.signal(Signal::SIGTERM);
    let _ = tokio::task::spawn_blocking(move || hub.child.wait()).await;

    let completions = Command::new(env!("CARGO_BIN_EXE_tradehook"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("_tradehook"));
}

/// Runs the command line against the hub at `url` with the admin token, off the test's
/// runtime; answers whether it succeeded, its output and its errors.
fn cli(url: &str, args: Vec<&'static str>) -> tokio::task::JoinHandle<(bool, String, String)> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_tradehook"))
            .args(&args)
            .env("TRADEHOOK_URL", &url)
            .env("TRADEHOOK_API_TOKEN", TOKEN)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
}

#[tokio::test]
async fn the_apps_commands_make_applications_keys_and_portal_links() {
    let dir = tempfile::tempdir().unwrap();
    let client = tradehook::app::http_client().unwrap();
    let hub = Hub::start(&dir.path().join("hub.db"), Some(TOKEN));
    hub.ready(&client).await;
    let run = |args: Vec<&'static str>| cli(&hub.url, args);
    let (ok, out, err) = run(vec![
        "apps",
        "create",
        "--name",
        "Acme",
        "--uid",
        "acme",
        "--max-endpoints",
        "5",
        "--rate-limit",
        "600/min",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["quotas"]["max_endpoints"], 5);
    let (ok, out, _) = run(vec!["apps", "list"]).await.unwrap();
    assert!(ok);
    assert!(out.lines().nth(1).unwrap().contains("acme"), "{out}");

    let (ok, out, err) = run(vec![
        "apps",
        "keys",
        "acme",
        "--create",
        "ci",
        "--read-only",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let key: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(key["scope"], "read_only");
    let secret = key["token"].as_str().unwrap().to_owned();
    let (status, _) = api(&client, &hub, &secret, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(status, 200);
    let (ok, out, _) = run(vec!["apps", "keys", "acme"]).await.unwrap();
    assert!(ok && out.contains("read_only"), "{out}");

    let (ok, out, err) = run(vec!["apps", "portal-link", "acme", "--expiry", "120"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let url = out.trim();
    assert!(url.contains("/portal#token=ptl_"), "{url}");
    assert!(err.contains("opens once"), "{err}");
    let token = url.rsplit_once("token=").unwrap().1;
    let (status, _) = api(
        &client,
        &hub,
        TOKEN,
        "POST",
        "/portal/sessions",
        Some(json!({"token": token})),
    )
    .await;
    assert_eq!(status, 201);

    let (ok, _, err) = run(vec!["apps", "show", "nobody"]).await.unwrap();
    assert!(!ok);
    assert!(err.starts_with("error: not_found (404)"), "{err}");
    let (ok, out, _) = run(vec!["apps", "delete", "acme"]).await.unwrap();
    assert!(ok);
    assert_eq!(out.trim(), "deleted acme");
    let (status, _) = api(&client, &hub, &secret, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_management_commands_print_tables_json_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let client = tradehook::app::http_client().unwrap();
    let mut hub = Hub::start(&dir.path().join("hub.db"), Some(TOKEN));
    hub.ready(&client).await;
    let run = |args: Vec<&'static str>| cli(&hub.url, args);
    let (ok, out, err) = run(vec![
        "endpoints",
        "create",
        "http://127.0.0.1:9/hook",
        "--preset",
        "slack",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));

    let (ok, out, _) = run(vec!["endpoints", "list"]).await.unwrap();
    assert!(ok);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("ID"));
    let row = lines.next().unwrap();
    assert!(
        row.contains("http://127.0.0.1:9/hook") && row.contains("slack"),
        "{row}"
    );

    let (ok, out, _) = run(vec!["endpoints", "list", "--json"]).await.unwrap();
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["data"][0]["id"], created["id"]);

    let (ok, _, err) = run(vec!["endpoints", "show", "ep_nope"]).await.unwrap();
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: not_found (404): no endpoint"),
        "{err}"
    );

    let (ok, _, err) = run(vec![
        "sources",
        "create",
        "--name",
        "tv",
        "--format",
        "tradingview",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let (ok, out, err) = run(vec![
        "sources",
        "update",
        "tv",
        "--rate-limit",
        "10/s",
        "--ip-allowlist",
        "127.0.0.1, 10.0.0.0/8",
        "--json",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let updated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(updated["rate_limit"], "10/s");
    assert_eq!(
        updated["ip_allowlist"],
        json!(["127.0.0.1/32", "10.0.0.0/8"])
    );
    assert_eq!(updated["format"], "tradingview", "left as it was");
    let (_, shown) = api(&client, &hub, TOKEN, "GET", "/api/v1/sources/tv", None).await;
    assert_eq!(shown["rate_limit"], "10/s", "stored, not only answered");
    let (ok, _, err) = run(vec!["sources", "update", "tv"]).await.unwrap();
    assert!(!ok);
    assert!(err.starts_with("error: nothing to change"), "{err}");
    let (ok, _, err) = run(vec!["sources", "update", "tv", "--rate-limit", "fast"])
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.starts_with("error: validation_failed (422)"), "{err}");
    let (status, _) = api(
        &client,
        &hub,
        TOKEN,
        "POST",
        "/api/v1/events",
        Some(json!({"type": "entry", "data": {"pair": "BTC/USDT"}})),
    )
    .await;
    assert_eq!(status, 202);
    let (ok, out, _) = run(vec!["events", "list"]).await.unwrap();
    assert!(ok && out.contains("entry"), "{out}");
    let (ok, out, _) = run(vec!["deliveries", "list", "--json"]).await.unwrap();
    assert!(ok);
    let deliveries: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deliveries["data"].as_array().unwrap().len(), 1);
    let (ok, out, err) = run(vec!["replay", "--since", "0"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1 events replayed, 1 deliveries created");

    // Trading accounts and their kill switch.
    let (ok, out, err) = run(vec![
        "accounts",
        "create",
        "--name",
        "paper-main",
        "--balance",
        "2500",
        "--leverage-max",
        "5",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let account: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(account["paper"]["balance"], 2500.0);
    assert_eq!(account["paper"]["leverage_max"], 5.0);
    let (ok, _, err) = run(vec![
        "accounts",
        "halt",
        "paper-main",
        "--reason",
        "news at 14:30",
        "--block-exits",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let (_, shown) = api(
        &client,
        &hub,
        TOKEN,
        "GET",
        "/api/v1/accounts/paper-main",
        None,
    )
    .await;
    assert_eq!(shown["halted"]["reason"], "news at 14:30");
    assert_eq!(shown["halted"]["exits_allowed"], false);
    let (ok, out, _) = run(vec!["accounts", "list"]).await.unwrap();
    assert!(ok);
    assert!(out.lines().next().unwrap().contains("LIVE"), "{out}");
    let row = out.lines().nth(1).unwrap();
    assert!(row.contains("paper-main") && row.contains("false"), "{out}");
    // A paper account has no key to check: the refusal, as the API says it.
    let (ok, _, err) = run(vec!["accounts", "check", "paper-main"]).await.unwrap();
    assert!(!ok && err.contains("not_an_exchange_account"), "{err}");
    let (ok, _, err) = run(vec!["accounts", "resume", "paper-main"]).await.unwrap();
    assert!(ok, "{err}");
    let (ok, out, err) = run(vec!["accounts", "positions", "paper-main"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    let book: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(book["balance"], 2500.0);
    assert_eq!(book["positions"], json!([]));
    let (ok, out, err) = run(vec!["accounts", "orders", "paper-main"]).await.unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!([])
    );
    let (ok, out, err) = run(vec![
        "accounts",
        "mark",
        "paper-main",
        "BTC/USDT:USDT",
        "64000",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({"orders": []})
    );
    let (ok, out, err) = run(vec![
        "accounts",
        "performance",
        "paper-main",
        "--since",
        "0",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&report["trades"], &report["end_balance"]),
        (&json!(0), &json!(2500.0))
    );
    let (_, shown) = api(
        &client,
        &hub,
        TOKEN,
        "GET",
        "/api/v1/accounts/paper-main",
        None,
    )
    .await;
    assert_eq!(shown["halted"], json!(null));
    let (ok, _, err) = run(vec!["accounts", "create", "--name", "x", "--fee-rate", "2"])
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.starts_with("error: validation_failed (422)"), "{err}");

    hub.signal(Signal::SIGTERM);
    let _ = tokio::task::spawn_blocking(move || hub.child.wait()).await;
}

/// Waits until `hub` knows the endpoint `id`: created through another node, it reaches this
/// one's registry through the database's notifications.
async fn known_to(client: &reqwest::Client, hub: &Hub, id: &str) {
    eventually(|| async {
        let (status, _) = api(
            client,
            hub,
            TOKEN,
            "GET",
            &format!("/api/v1/endpoints/{id}"),
            None,
        )
        .await;
        (status == 200).then_some(())
    })
    .await;
}

/// Two hubs with default settings on one PostgreSQL database, both ready.
async fn two_nodes(db: &TestDatabase, client: &reqwest::Client) -> (Hub, Hub) {
    two_nodes_with(db, client, &[]).await
}

/// As [`two_nodes`], both started with more `serve` arguments.
async fn two_nodes_with(db: &TestDatabase, client: &reqwest::Client, more: &[&str]) -> (Hub, Hub) {
    let mut args = vec![
        "--secret-key",
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
    ];
    args.extend(more);
    let a = Hub::start_on(&db.url, Some(TOKEN), &args);
    a.ready(client).await;
    let b = Hub::start_on(&db.url, Some(TOKEN), &args);
    b.ready(client).await;
    (a, b)
}

/// Nodes started at the same moment on a new database with the same configured token, as an
/// orchestrator starts them, all start: the first stores the token and the others find it.
#[tokio::test]
async fn nodes_started_together_with_one_token_all_start() {
    let client = tradehook::app::http_client().unwrap();
    for _ in 0..10 {
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let args = [
            "--secret-key",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ];
        let mut hubs: Vec<Hub> = (0..4)
            .map(|_| Hub::start_on(&db.url, Some(TOKEN), &args))
            .collect();
        for hub in &mut hubs {
            hub.ready(&client).await;
            assert!(hub.child.try_wait().unwrap().is_none(), "every node runs");
            let (status, _) = api(&client, hub, TOKEN, "GET", "/api/v1/endpoints", None).await;
            assert_eq!(status, 200, "the token works on every node");
        }
    }
}

#[tokio::test]
async fn two_nodes_on_postgres_deliver_everything_when_one_is_killed() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    receiver.set_delay(Some(std::time::Duration::from_millis(50)));
    // Default settings: the takeover time measured is the one users get.
    let (a, b) = two_nodes(&db, &client).await;

    // Created through one node, known to the other through the database's notifications.
    // One request at a time, each answered after 50 ms, while the load runs: when node B is
    // killed it surely holds accepted events it has not delivered, however fast it runs.
    let endpoint = create_endpoint(
        &client,
        &a,
        json!({"url": receiver.url, "retry_schedule": [0.1], "max_concurrency": 1}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    known_to(&client, &b, &id).await;

    // Senders publish through both nodes; node B is killed once 200 events were accepted.
    let load = Load::start(&client, &[a.url.clone(), b.url.clone()], 100, 200);
    load.reached().await;
    b.signal(Signal::SIGKILL);
    let killed_at = std::time::Instant::now();
    let accepted = load.finish().await;
    drop(b);
    assert!(accepted.len() >= 200);
    let before: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        !accepted.is_subset(&before),
        "the kill must leave accepted events undelivered for this test to mean anything"
    );
    receiver.set_delay(None);

    // Node A takes over node B's work once B's heartbeats stop.
    let received = eventually(|| async {
        let received = receiver.received();
        let ids: HashSet<String> = received
            .iter()
            .map(|r| r.header("webhook-id").unwrap().to_owned())
            .collect();
        accepted.is_subset(&ids).then_some(received)
    })
    .await;
    // Only what node B had in flight when it died (sent, its result not yet committed) can
    // arrive twice, and never three times. B sent the first copy before it died: it reaches the
    // receiver at most moments after the kill (a request already on the wire). Node A can only
    // send B's work once B has been silent for 6 s; a copy of its own work sent twice would not
    // be bound to the kill at all.
    let last = received.iter().map(|r| r.at).max().unwrap();
    let takeover = last.saturating_duration_since(killed_at);
    eprintln!("the last of the killed node's deliveries arrived {takeover:?} after the kill");
    assert!(
        takeover < std::time::Duration::from_secs(10),
        "the killed node's work was taken over after {takeover:?}"
    );
    let mut copies = std::collections::HashMap::<String, Vec<std::time::Instant>>::new();
    for r in &received {
        copies
            .entry(r.header("webhook-id").unwrap().to_owned())
            .or_default()
            .push(r.at);
    }
    for (id, times) in &copies {
        assert!(times.len() <= 2, "{id} arrived {} times", times.len());
        if times.len() == 2 {
            let first = *times.iter().min().unwrap();
            let second = *times.iter().max().unwrap();
            assert!(
                first < killed_at + std::time::Duration::from_millis(500),
                "{id} was sent twice, not by the killed node: copies {:?} and {:?} after the kill",
                first.saturating_duration_since(killed_at),
                second.saturating_duration_since(killed_at),
            );
        }
    }
    drop(a);
}

#[tokio::test]
async fn a_live_node_in_a_long_exchange_keeps_its_delivery() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    // Longer than a node may be silent before the others take it for dead.
    receiver.set_delay(Some(std::time::Duration::from_secs(8)));
    let (a, b) = two_nodes(&db, &client).await;
    let endpoint = create_endpoint(&client, &a, json!({"url": receiver.url, "timeout": 20})).await;
    // Node B routes what it accepts by the endpoints it knows: wait until it knows this one.
    known_to(&client, &b, endpoint["id"].as_str().unwrap()).await;

    // Published through B, which sends it at once and waits 8 s for the answer.
    let (status, receipt) = api(
        &client,
        &b,
        TOKEN,
        "POST",
        "/api/v1/events",
        Some(json!({"type": "entry", "data": {"pair": "BTC/USDT"}})),
    )
    .await;
    assert_eq!(status, 202);
    let event = receipt["id"].as_str().unwrap().to_owned();
    eventually_or(|| async {
        let (_, list) = api(
            &client,
            &a,
            TOKEN,
            "GET",
            &format!("/api/v1/deliveries?event_id={event}"),
            None,
        )
        .await;
        let status = list["data"][0]["status"].as_str().unwrap_or("").to_owned();
        (status == "succeeded")
            .then_some(())
            .ok_or(format!("the delivery is {status}"))
    })
    .await;
    assert_eq!(
        receiver.received().len(),
        1,
        "node A took over a live node's delivery"
    );
}

/// A node with a backlog several leases long keeps it: with a 2 s lease and a receiver that
/// takes one request at a time, the work published through node A takes about three times the
/// lease to send. A's leases are renewed while its work waits, so node B (live, claiming ended
/// leases) never takes any of it: every event arrives once, and never while another request
/// of this endpoint is still being answered.
#[tokio::test]
async fn a_backlog_longer_than_a_short_lease_stays_with_its_node_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    let answer_after = std::time::Duration::from_millis(25);
    receiver.set_delay(Some(answer_after));
    let (a, b) = two_nodes_with(&db, &client, &["--lease", "2s"]).await;
    let endpoint = create_endpoint(
        &client,
        &a,
        json!({"url": receiver.url, "max_concurrency": 1}),
    )
    .await;
    known_to(&client, &b, endpoint["id"].as_str().unwrap()).await;

    // 240 events at 25 ms or more each: 6 s of sending, three leases.
    let load = Load::start(&client, std::slice::from_ref(&a.url), 30, 240);
    let accepted = load.finish().await;
    assert_eq!(accepted.len(), 240, "every event is accepted");
    let received = receiver.wait_for(240).await;

    let ids: Vec<&str> = received
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    let once: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), once.len(), "an event arrived twice");
    assert!(accepted.iter().all(|id| once.contains(id.as_str())));
    // One request at a time: each arrives after the one before was answered, so a second
    // node sending work it took over would show as two arrivals closer than an answer takes.
    let mut times: Vec<std::time::Instant> = received.iter().map(|r| r.at).collect();
    times.sort();
    let closest = times.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        closest >= answer_after,
        "two requests of the endpoint were in flight at once ({closest:?} apart)"
    );
    let first = *times.first().unwrap();
    let took = *times.last().unwrap() - first;
    assert!(
        took > std::time::Duration::from_secs(4),
        "the backlog must outlast the lease twice for this test to mean anything (it took {took:?})"
    );
    // Nothing was attempted twice, by either node (each attempt's record is written after
    // its answer arrives: wait for the last).
    let path = format!(
        "/api/v1/deliveries?endpoint_id={}&limit=500",
        endpoint["id"].as_str().unwrap()
    );
    let deliveries = eventually_or(|| async {
        let (_, list) = api(&client, &b, TOKEN, "GET", &path, None).await;
        let deliveries = list["data"].as_array().cloned().unwrap_or_default();
        let done = deliveries
            .iter()
            .filter(|d| d["status"] == "succeeded")
            .count();
        (done == 240)
            .then_some(deliveries)
            .ok_or(format!("{done} of 240 recorded as succeeded"))
    })
    .await;
    for d in &deliveries {
        assert_eq!(d["attempt_count"], 1, "{d}");
    }
    drop((a, b));
}

#[tokio::test]
async fn an_api_only_node_stores_and_a_worker_only_node_delivers() {
    // On SQLite there is one node: splitting the roles is refused.
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_tradehook"))
        .args(["serve", "--no-worker", "--database"])
        .arg(format!("sqlite://{}", dir.path().join("hub.db").display()))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PostgreSQL"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    let key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let api_node = Hub::start_on(&db.url, Some(TOKEN), &["--secret-key", key, "--no-worker"]);
    api_node.ready(&client).await;
    let worker = Hub::start_on(&db.url, Some(TOKEN), &["--secret-key", key, "--no-api"]);
    worker.ready(&client).await;

    let (status, _) = api(&client, &worker, TOKEN, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(status, 404, "a worker-only node serves no API");
    let ready = client
        .get(format!("{}/readyz", worker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready = client
        .get(format!("{}/readyz", api_node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "an API-only node is ready without workers"
    );

    create_endpoint(&client, &api_node, json!({"url": receiver.url})).await;
    let mut published = HashSet::new();
    for i in 0..20 {
        let (status, receipt) = api(
            &client,
            &api_node,
            TOKEN,
            "POST",
            "/api/v1/events",
            Some(json!({"type": "entry", "data": {"i": i}})),
        )
        .await;
        assert_eq!(status, 202);
        published.insert(receipt["id"].as_str().unwrap().to_owned());
    }
    let received = receiver.wait_for(20).await;
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(
        ids, published,
        "the worker delivered what the API node stored"
    );
}

/// A hub with one paper account trading BTC, its order destination and a TradingView
/// source, started with `TRADEHOOK_FAULT=<fault>` and sent one alert, which kills it at that
/// point. Returns the data directory, the database URL, the ingest path and the alert.
async fn order_hub_killed_at(
    fault: &str,
    settings: Value,
) -> (tempfile::TempDir, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let client = tradehook::app::http_client().unwrap();
    let mut first = Hub::start_with(&db, Some(TOKEN), &[], |cmd| {
        cmd.env("TRADEHOOK_FAULT", fault);
    });
    first.ready(&client).await;
    let (status, _) = api(
        &client,
        &first,
        TOKEN,
        "POST",
        "/api/v1/accounts",
        Some(json!({"name": "main"})),
    )
    .await;
    assert_eq!(status, 201);
    let mut destination = json!({"url": "account:main", "event_types": ["entry", "exit"],
           "orders": {"symbols": {"BINANCE:BTCUSDT.P": "BTC/USDT:USDT"},
                      "size": {"base": 0.01}}});
    for (k, v) in settings.as_object().unwrap() {
        destination[k] = v.clone();
    }
    create_endpoint(&client, &first, destination).await;
    let (status, source) = api(
        &client,
        &first,
        TOKEN,
        "POST",
        "/api/v1/sources",
        Some(json!({"name": "tv", "format": "tradingview"})),
    )
    .await;
    assert_eq!(status, 201);
    let ingest = source["ingest_url"].as_str().unwrap();
    let path = ingest[ingest.find("/in/").unwrap()..].to_owned();
    let alert = json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
                       "client_ref": "k-1"})
    .to_string();
    // The hub answers once the alert is on disk; it may die before or after the answer.
    let _ = client
        .post(format!("{}{path}", first.url))
        .header("content-type", "application/json")
        .body(alert.clone())
        .send()
        .await;
    let died = tokio::task::spawn_blocking(move || first.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!died.success(), "the hub aborted at {fault}");
    (dir, db, path, alert)
}

/// Exactly one order per signal, proven by killing the process after the order was decided
/// and executed on the book in memory, before either was written: the restarted hub decides
/// and executes it once; a resent alert adds nothing.
#[tokio::test]
async fn a_crash_between_an_orders_execution_and_its_write_still_places_it_exactly_once() {
    let (dir, db, path, alert) = order_hub_killed_at("before_settle", json!({})).await;
    let client = tradehook::app::http_client().unwrap();
    // What the crash left: the signal's delivery, pending, and no order or book.
    let file = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let orders: i64 = file
        .query_row("select count(*) from orders", [], |r| r.get(0))
        .unwrap();
    let books: i64 = file
        .query_row("select count(*) from paper_books", [], |r| r.get(0))
        .unwrap();
    assert_eq!((orders, books), (0, 0), "nothing written");
    let delivery: String = file
        .query_row(
            "select id from deliveries where status = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let left = [(format!("{delivery}-0"), ())];
    drop(file);

    let second = Hub::start_on(&db, Some(TOKEN), &[]);
    second.ready(&client).await;
    let orders = eventually(|| async {
        let (_, orders) = api(
            &client,
            &second,
            TOKEN,
            "GET",
            "/api/v1/accounts/main/orders",
            None,
        )
        .await;
        orders
            .as_array()
            .filter(|o| o.iter().any(|o| o["status"] == "filled"))
            .cloned()
    })
    .await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(
        orders[0]["client_order_id"],
        left[0].0.as_str(),
        "the same order"
    );
    // TradingView resends the same alert: still one order.
    let resent = client
        .post(format!("{}{path}", second.url))
        .header("content-type", "application/json")
        .body(alert)
        .send()
        .await
        .unwrap();
    assert!(resent.status().is_success());
    let (_, events) = api(&client, &second, TOKEN, "GET", "/api/v1/events", None).await;
    let signals = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "entry")
        .count();
    assert_eq!(signals, 1, "a duplicate");
    let (_, book) = api(
        &client,
        &second,
        TOKEN,
        "GET",
        "/api/v1/accounts/main/positions",
        None,
    )
    .await;
    assert_eq!(book["positions"][0]["size"], 0.01);
    let (_, orders) = api(
        &client,
        &second,
        TOKEN,
        "GET",
        "/api/v1/accounts/main/orders",
        None,
    )
    .await;
    assert_eq!(orders.as_array().unwrap().len(), 1);
    second.signal(Signal::SIGTERM);
}

/// Killed after the order's outcome is written and before the delivery's attempt is: the
/// restarted hub attempts the delivery again, finds the order settled, and places nothing.
#[tokio::test]
async fn a_crash_after_an_orders_fill_before_its_delivery_is_recorded_places_nothing_more() {
    let (dir, db, _path, _alert) = order_hub_killed_at("after_settle", json!({})).await;
    let file = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let status: String = file
        .query_row("select status from orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(status, "filled");
    let pending: i64 = file
        .query_row(
            "select count(*) from deliveries where status = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 1, "the delivery's attempt was not recorded");
    drop(file);

    let client = tradehook::app::http_client().unwrap();
    let second = Hub::start_on(&db, Some(TOKEN), &[]);
    second.ready(&client).await;
    // The delivery is attempted again and succeeds on the order already settled.
    eventually(|| async {
        let (_, deliveries) = api(
            &client,
            &second,
            TOKEN,
            "GET",
            "/api/v1/deliveries?status=succeeded",
            None,
        )
        .await;
        (!deliveries["data"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    let (_, orders) = api(
        &client,
        &second,
        TOKEN,
        "GET",
        "/api/v1/accounts/main/orders",
        None,
    )
    .await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders:?}");
    let (_, book) = api(
        &client,
        &second,
        TOKEN,
        "GET",
        "/api/v1/accounts/main/positions",
        None,
    )
    .await;
    assert_eq!(book["positions"][0]["size"], 0.01, "bought once");
    second.signal(Signal::SIGTERM);
}

/// An order decided in time but not written before a crash is not placed once its signal is
/// older than the destination's max_age: an outage must not turn into a stale order.
#[tokio::test]
async fn an_order_cut_short_by_a_crash_is_blocked_once_past_max_age_never_placed_late() {
    let (dir, db, _path, _alert) =
        order_hub_killed_at("before_settle", json!({"max_age": 1})).await;
    let client = tradehook::app::http_client().unwrap();
    let file = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let accepted_at: i64 = file
        .query_row("select created_at from events", [], |r| r.get(0))
        .unwrap();
    drop(file);
    // The outage lasts past max_age: the restart comes more than 1 s after the signal.
    let past = accepted_at + 1_100 - tradehook::domain::now_ms();
    if past > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(past as u64)).await;
    }
    let second = Hub::start_on(&db, Some(TOKEN), &[]);
    second.ready(&client).await;
    let orders = eventually(|| async {
        let (_, orders) = api(
            &client,
            &second,
            TOKEN,
            "GET",
            "/api/v1/accounts/main/orders",
            None,
        )
        .await;
        orders
            .as_array()
            // The restarted hub has settled the order: it is there, and no longer an intent.
            .filter(|o| !o.is_empty() && o.iter().all(|o| o["status"] != "intent"))
            .cloned()
    })
    .await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["status"], "blocked");
    assert_eq!(orders[0]["reason"]["code"], "max_age", "{:?}", orders[0]);
    assert_eq!(orders[0]["fill"], Value::Null);
    let (_, book) = api(
        &client,
        &second,
        TOKEN,
        "GET",
        "/api/v1/accounts/main/positions",
        None,
    )
    .await;
    assert_eq!(book["positions"], json!([]), "nothing was placed");
    // Said as a hub event too.
    eventually(|| async {
        let (_, events) = api(&client, &second, TOKEN, "GET", "/api/v1/events", None).await;
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "risk.blocked" && e["data"]["reason"]["code"] == "max_age")
            .then_some(())
    })
    .await;
    second.signal(Signal::SIGTERM);
}

/// A signal stored while no node was placing orders, older than the destination's max_age
/// when one starts: blocked with its reason, never placed late.
#[tokio::test]
async fn a_signal_that_waited_past_max_age_for_a_worker_is_blocked_with_its_reason() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let api_node = Hub::start_on(&db.url, Some(TOKEN), &["--secret-key", key, "--no-worker"]);
    api_node.ready(&client).await;
    let (status, _) = api(
        &client,
        &api_node,
        TOKEN,
        "POST",
        "/api/v1/accounts",
        Some(json!({"name": "late"})),
    )
    .await;
    assert_eq!(status, 201);
    create_endpoint(
        &client,
        &api_node,
        json!({"url": "account:late", "event_types": ["entry"], "max_age": 1,
               "orders": {"symbols": {"BTC/USDT": "BTC/USDT:USDT"}, "size": {"base": 0.01}}}),
    )
    .await;
    let (status, _) = api(
        &client,
        &api_node,
        TOKEN,
        "POST",
        "/api/v1/events",
        Some(json!({"type": "entry", "data": {"pair": "BTC/USDT", "side": "long", "price": 100}})),
    )
    .await;
    assert_eq!(status, 202);
    // No worker for longer than max_age.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let worker = Hub::start_on(&db.url, Some(TOKEN), &["--secret-key", key, "--no-api"]);
    worker.ready(&client).await;
    let orders = eventually(|| async {
        let (_, orders) = api(
            &client,
            &api_node,
            TOKEN,
            "GET",
            "/api/v1/accounts/late/orders",
            None,
        )
        .await;
        orders.as_array().filter(|o| !o.is_empty()).cloned()
    })
    .await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["status"], "blocked");
    assert_eq!(orders[0]["reason"]["code"], "max_age");
    assert!(
        orders[0]["reason"]["detail"]
            .as_str()
            .unwrap()
            .contains("past this destination's max_age of 1 s"),
        "{:?}",
        orders[0]
    );
    let (_, book) = api(
        &client,
        &api_node,
        TOKEN,
        "GET",
        "/api/v1/accounts/late/positions",
        None,
    )
    .await;
    assert_eq!(book["positions"], json!([]));
}

#[tokio::test]
async fn two_nodes_on_postgres_share_applications_keys_and_label_filters() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    let (a, b) = two_nodes(&db, &client).await;

    let mut keys = Vec::new();
    for uid in ["acme", "other"] {
        let (status, made) = api(
            &client,
            &a,
            TOKEN,
            "POST",
            "/api/v1/applications",
            Some(json!({"name": uid, "uid": uid})),
        )
        .await;
        assert_eq!(status, 201, "{made}");
        let (status, key) = api(
            &client,
            &a,
            TOKEN,
            "POST",
            &format!("/api/v1/applications/{uid}/keys"),
            Some(json!({"name": "k", "scope": "admin"})),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        keys.push(key["token"].as_str().unwrap().to_owned());
    }
    let (acme, other) = (&keys[0], &keys[1]);
    // A key made through node A works on node B once B has heard of it.
    eventually(|| async {
        let (status, _) = api(&client, &b, acme, "GET", "/api/v1/endpoints", None).await;
        (status == 200).then_some(())
    })
    .await;
    let (status, endpoint) = api(
        &client,
        &b,
        acme,
        "POST",
        "/api/v1/endpoints",
        Some(
            json!({"url": receiver.url, "event_types": ["trade.new"], "labels": {"wallet": "W1"}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["id"].as_str().unwrap().to_owned();
    known_to(&client, &a, &id).await;

    // Published through node A: the follower of W1 gets W1's trade only.
    for wallet in ["W2", "W1"] {
        let (status, _) = api(
            &client,
            &a,
            TOKEN,
            "POST",
            "/api/v1/events",
            Some(json!({"type": "trade.new", "labels": {"wallet": wallet}, "data": {"owner": wallet}})),
        )
        .await;
        assert_eq!(status, 202);
    }
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["data"]["owner"], "W1");
    // On either node, the other application sees none of it.
    for node in [&a, &b] {
        let (status, _) = api(
            &client,
            node,
            other,
            "GET",
            &format!("/api/v1/endpoints/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 404);
        let (status, events) = api(&client, node, other, "GET", "/api/v1/events", None).await;
        assert_eq!(status, 200);
        assert!(events["data"].as_array().unwrap().is_empty(), "{events}");
    }
    let (status, events) = api(&client, &b, acme, "GET", "/api/v1/events", None).await;
    assert_eq!(status, 200);
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
}

/// The application `trial` (two events a day) and its endpoint to `url`, made through `hub`;
/// returns the endpoint.
async fn trial_with_endpoint(client: &reqwest::Client, hub: &Hub, url: &str) -> serde_json::Value {
    let (status, made) = api(
        client,
        hub,
        TOKEN,
        "POST",
        "/api/v1/applications",
        Some(json!({"name": "trial", "uid": "trial", "quotas": {"events_per_day": 2}})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let (status, endpoint) = api(
        client,
        hub,
        TOKEN,
        "POST",
        "/api/v1/endpoints?application=trial",
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    endpoint
}

#[tokio::test]
async fn two_nodes_on_postgres_hold_an_application_to_one_daily_quota() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    let (a, b) = two_nodes(&db, &client).await;
    let endpoint = trial_with_endpoint(&client, &a, &receiver.url).await;
    known_to(&client, &b, endpoint["id"].as_str().unwrap()).await;
    // Both nodes must know the quota before the events: B learns of the application with it.
    eventually(|| async {
        let (status, _) = api(
            &client,
            &b,
            TOKEN,
            "GET",
            "/api/v1/applications/trial",
            None,
        )
        .await;
        (status == 200).then_some(())
    })
    .await;

    // Four events through two nodes: the application gets two, whichever node took them.
    for (node, n) in [(&a, 1), (&b, 2), (&a, 3), (&b, 4)] {
        let (status, _) = api(
            &client,
            node,
            TOKEN,
            "POST",
            "/api/v1/events",
            Some(json!({"type": "entry", "data": {"n": n}})),
        )
        .await;
        assert_eq!(status, 202);
    }
    receiver.wait_for(2).await;
    let (status, events) = api(
        &client,
        &b,
        TOKEN,
        "GET",
        "/api/v1/events?application=trial",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events["data"].as_array().unwrap().len(), 2, "{events}");
}

/// Publishes an `entry` event through the hub's API and returns its id.
async fn publish(client: &reqwest::Client, hub: &Hub, n: u32) -> String {
    let (status, event) = api(
        client,
        hub,
        TOKEN,
        "POST",
        "/api/v1/events",
        Some(json!({"type": "entry", "data": {"n": n}})),
    )
    .await;
    assert_eq!(status, 202, "{event}");
    event["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_restarted_hub_on_sqlite_keeps_an_applications_daily_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let client = tradehook::app::http_client().unwrap();
    let receiver = TestReceiver::start().await;
    let hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;
    trial_with_endpoint(&client, &hub, &receiver.url).await;
    publish(&client, &hub, 1).await;
    receiver.wait_for(1).await;
    hub.signal(Signal::SIGTERM);
    drop(hub);

    // The day's first event was sent before the restart: one more reaches the application,
    // and the next is stored with no delivery to it.
    let hub = Hub::start(&db, Some(TOKEN));
    hub.ready(&client).await;
    let second = publish(&client, &hub, 2).await;
    let third = publish(&client, &hub, 3).await;
    for (id, deliveries) in [(second, 1), (third, 0)] {
        let (status, event) = api(
            &client,
            &hub,
            TOKEN,
            "GET",
            &format!("/api/v1/events/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            event["deliveries"].as_array().unwrap().len(),
            deliveries,
            "{event}"
        );
    }
    receiver.wait_for(2).await;
}

/// A hub started with `TRADEHOOK_FAULT=fault`, given the account `account` (named `bn`), an
/// order destination on it with `orders`, and a TradingView entry alert (`client_ref`),
/// polled until it aborts at the fault: the database it leaves, and a client.
async fn killed_at(
    fault: &str,
    account: Value,
    orders: Value,
    client_ref: &str,
) -> (tempfile::TempDir, String, reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let client = tradehook::app::http_client().unwrap();
    let mut first = Hub::start_with(&db, Some(TOKEN), &[], |cmd| {
        cmd.env("TRADEHOOK_FAULT", fault);
    });
    first.ready(&client).await;
    let (status, account) = api(
        &client,
        &first,
        TOKEN,
        "POST",
        "/api/v1/accounts",
        Some(account),
    )
    .await;
    assert_eq!(status, 201, "{account}");
    create_endpoint(
        &client,
        &first,
        json!({"url": "account:bn", "event_types": ["entry"], "retry_schedule": vec![0.2; 40],
               "orders": orders}),
    )
    .await;
    let (_, source) = api(
        &client,
        &first,
        TOKEN,
        "POST",
        "/api/v1/sources",
        Some(json!({"name": "tv", "format": "tradingview"})),
    )
    .await;
    let ingest = source["ingest_url"].as_str().unwrap();
    let path = ingest[ingest.find("/in/").unwrap()..].to_owned();
    let _ = client
        .post(format!("{}{path}", first.url))
        .header("content-type", "application/json")
        .body(
            json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
                   "client_ref": client_ref})
            .to_string(),
        )
        .send()
        .await;
    // Polled, so that a hub that never reaches the fault fails the test (and is killed).
    let died = eventually(|| {
        let exited = first.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(!died.success(), "the hub aborted at {fault}");
    (dir, db, client)
}

/// The hub started again on `db`, and account `bn`'s orders once `n` of them are settled.
async fn restarted(db: &str, client: &reqwest::Client, n: usize) -> (Hub, Vec<Value>) {
    let hub = Hub::start_on(db, Some(TOKEN), &[]);
    hub.ready(client).await;
    let orders = eventually(|| async {
        let (_, orders) = api(
            client,
            &hub,
            TOKEN,
            "GET",
            "/api/v1/accounts/bn/orders",
            None,
        )
        .await;
        orders
            .as_array()
            .filter(|o| o.len() >= n && o.iter().all(|o| o["status"] != "intent"))
            .cloned()
    })
    .await;
    (hub, orders)
}

/// Where the kill test's orders go: an exchange's simulator, or a real Freqtrade bot
/// behind a proxy that counts its entries.
enum Target {
    Sim(crate::venue_sim::VenueSim),
    Bot(
        crate::freqtrade_bot::Bot,
        crate::freqtrade_bot::Proxy,
        String,
    ),
}

impl Target {
    async fn start(venue: &str) -> Target {
        use crate::venue_sim;
        use crate::venues::{KEY, PASSPHRASE, SECRET};
        match venue {
            "freqtrade" => {
                let market = crate::freqtrade_bot::market().await;
                let mut bot = crate::freqtrade_bot::Bot::start(market, true);
                bot.ready().await;
                let (proxy, url) = crate::freqtrade_bot::Proxy::start(&bot.url).await;
                Target::Bot(bot, proxy, url)
            }
            "bybit" => Target::Sim(venue_sim::bybit(KEY, SECRET).await),
            "okx" => Target::Sim(venue_sim::okx(KEY, SECRET, PASSPHRASE).await),
            _ => Target::Sim(venue_sim::binance(KEY, SECRET).await),
        }
    }

    /// The account on it, and the symbols its destination trades.
    fn account(&self, venue: &str) -> (Value, Value) {
        use crate::venues::{KEY, PASSPHRASE, SECRET};
        match self {
            Target::Sim(sim) => (
                json!({"name": "bn", "venue": venue, "api_key": KEY, "api_secret": SECRET,
                       "base_url": sim.url, "passphrase": (venue == "okx").then_some(PASSPHRASE),
                       "recv_window_ms": 1000, "timeout_ms": 500}),
                json!({"BINANCE:BTCUSDT.P": "BTC/USDT:USDT"}),
            ),
            Target::Bot(_, _, url) => (
                json!({"name": "bn", "venue": "freqtrade", "url": url,
                       "api_key": crate::freqtrade_bot::USER,
                       "api_secret": crate::freqtrade_bot::PASSWORD, "timeout_ms": 500}),
                json!({"BINANCE:BTCUSDT.P": "BTC/USDT"}),
            ),
        }
    }

    /// How many orders were sent to it.
    fn requests(&self) -> usize {
        match self {
            Target::Sim(sim) => sim.order_requests(),
            Target::Bot(_, proxy, _) => proxy.entries.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// The client order ids of the orders it holds, as it writes them.
    async fn placed(&self) -> Vec<String> {
        match self {
            Target::Sim(sim) => sim
                .orders()
                .into_iter()
                .map(|o| o.client_order_id)
                .collect(),
            Target::Bot(bot, _, _) => bot
                .get("/api/v1/status")
                .await
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["enter_tag"].as_str().unwrap().to_owned())
                .collect(),
        }
    }
}

/// Exactly one order per intent on an exchange or a Freqtrade bot, proven by killing the
/// hub: once right after the intent is written, before it is sent (the venue never saw it),
/// and once right after the venue took the order, before its answer was written. The
/// restarted hub asks the venue for the client order id (a bot: its entry tag) first: it
/// takes the order the venue has, or sends the one it never got once the venue can no
/// longer take the first request. The venue holds one order either way.
#[tokio::test]
async fn a_hub_killed_around_an_exchange_order_places_it_exactly_once() {
    let cases = [
        ("binance_usdm", "after_intent", 0),
        ("binance_usdm", "after_send", 1),
        ("bybit", "after_intent", 0),
        ("bybit", "after_send", 1),
        ("okx", "after_intent", 0),
        ("okx", "after_send", 1),
        ("freqtrade", "after_intent", 0),
        ("freqtrade", "after_send", 1),
    ];
    for (venue, fault, sent_before_restart) in cases {
        let target = Target::start(venue).await;
        let (account, symbols) = target.account(venue);
        let (dir, db, client) = killed_at(
            fault,
            account,
            json!({"symbols": symbols, "size": {"base": 0.01}}),
            "kill-1",
        )
        .await;
        assert_eq!(target.requests(), sent_before_restart, "{venue} {fault}");
        let file = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
        let (client_order_id, status): (String, String) = file
            .query_row("select client_order_id, status from orders", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(status, "intent", "{fault}: the intent was written first");
        drop(file);

        let (second, orders) = restarted(&db, &client, 1).await;
        assert_eq!(orders.len(), 1, "{fault}: {orders:?}");
        assert_eq!(
            orders[0]["status"], "filled",
            "{venue} {fault}: {}",
            orders[0]
        );
        assert_eq!(orders[0]["client_order_id"], client_order_id.as_str());
        let at_venue = match venue {
            "okx" => tradehook::exchange::okx::client_id(&client_order_id),
            _ => client_order_id.clone(),
        };
        assert_eq!(
            target.placed().await,
            [at_venue],
            "{venue} {fault}: one order at the venue"
        );
        assert_eq!(target.requests(), 1, "{venue} {fault}: sent once in all");
        second.signal(Signal::SIGTERM);
    }
}

/// Exactly one stop per entry, proven by killing the hub between an entry's fill (written
/// with its stop-loss and take-profit as intents) and their placing at the venue. The
/// restarted hub retries the entry's delivery, finds the entry filled and its legs still
/// intents, and places them: the venue holds one stop and one take-profit, and one order.
#[tokio::test]
async fn a_hub_killed_between_a_fill_and_its_stop_places_the_stop_after_restart() {
    let target = Target::start("binance_usdm").await;
    let Target::Sim(sim) = &target else {
        unreachable!("a simulator")
    };
    let (account, symbols) = target.account("binance_usdm");
    let (_dir, db, client) = killed_at(
        "before_protect",
        account,
        json!({"symbols": symbols, "size": {"base": 0.01},
               "brackets": {"stop_loss_percent": 2, "take_profit_percent": 4}}),
        "kill-stop",
    )
    .await;
    assert_eq!(sim.orders().len(), 1, "the entry filled");
    assert!(sim.protections().is_empty(), "no stop yet");

    let (second, orders) = restarted(&db, &client, 3).await;
    let mut statuses: Vec<&str> = orders
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["filled", "resting", "resting"], "{orders:?}");
    let placed = sim.protections();
    assert_eq!(placed.len(), 2, "one stop and one take-profit: {placed:?}");
    assert!(placed.iter().all(|p| p.state == "live"));
    assert_eq!(sim.orders().len(), 1, "still one order");
    second.signal(Signal::SIGTERM);
}
