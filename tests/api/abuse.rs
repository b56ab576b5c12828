//! The hub process under abuse, as attackers and broken clients would treat it: floods of
//! connections that never become requests, headers trickled a byte at a time, idle keep-alive
//! connections, and templates built to take all the memory.

use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::process::Hub;

fn start(args: &[&str], soft_file_limit: Option<u64>) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let hub = Hub::start_with(&db, Some(TOKEN), args, |cmd| {
        if let Some(soft) = soft_file_limit {
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    });
    (hub, dir)
}

/// A client that opens a new connection for every request and gives up after TradingView's
/// three seconds.
fn impatient_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A TradingView-style source; returns its ingest URL.
async fn tradingview_source(hub: &Hub) -> String {
    let reply = tradehook::app::http_client()
        .unwrap()
        .post(format!("{}/api/v1/sources", hub.url))
        .bearer_auth(TOKEN)
        .body(json!({"name": "tv", "format": "tradingview"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let source: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    source["ingest_url"].as_str().unwrap().to_owned()
}

/// Sends a signal, the health check and an API call, each on a new connection, and expects
/// every answer within three seconds.
async fn honest_requests_are_answered(hub: &Hub, ingest_url: &str, n: usize) {
    let client = impatient_client();
    let signal = json!({"action": "buy", "ticker": "BTCUSDT", "price": 50000, "client_ref": format!("flood-{n}")});
    let reply = client
        .post(ingest_url)
        .body(signal.to_string())
        .send()
        .await
        .expect("the signal is answered within 3 s");
    assert_eq!(reply.status(), 202);
    let health = client
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .expect("the health check is answered within 3 s");
    assert_eq!(health.status(), 200);
    let events = client
        .get(format!("{}/api/v1/events", hub.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the API is answered within 3 s");
    assert_eq!(events.status(), 200);
}

async fn metric(hub: &Hub, name: &str) -> u64 {
    let text = tradehook::app::http_client()
        .unwrap()
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .parse()
        .unwrap()
}

async fn silent_connections(hub: &Hub, n: usize) -> Vec<TcpStream> {
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(&addr).await.unwrap());
    }
    conns
}

/// Reads until the hub closes the connection; what it sent before.
async fn until_closed(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut got))
        .await
        .expect("the hub closes the connection")
        .ok();
    got
}

fn soft_file_limit_of(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn two_thousand_silent_connections_cost_honest_senders_nothing() {
    tradehook::server::raise_file_limit().unwrap();
    // A long header timeout keeps the whole flood open: the files are what is tested.
    let (hub, _dir) = start(&["--header-timeout", "60s"], Some(1024));
    let client = tradehook::app::http_client().unwrap();
    hub.ready(&client).await;
    assert!(
        soft_file_limit_of(hub.child.id()) > 1024,
        "the hub raises its soft file limit"
    );
    let ingest_url = tradingview_source(&hub).await;

    let _flood = silent_connections(&hub, 2_000).await;
    honest_requests_are_answered(&hub, &ingest_url, 1).await;
    let open = metric(&hub, "tradehook_connections_open").await;
    assert!(open >= 2_000, "{open} open");
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let (hub, _dir) = start(&["--max-connections", "50"], None);
    hub.ready(&tradehook::app::http_client().unwrap()).await;
    let ingest_url = tradingview_source(&hub).await;

    let mut flood = silent_connections(&hub, 200).await;
    for n in 0..3 {
        honest_requests_are_answered(&hub, &ingest_url, n).await;
    }
    // The oldest silent connections were closed to make room, without an answer.
    assert_eq!(until_closed(&mut flood[0]).await, b"");
    assert!(metric(&hub, "tradehook_connections_evicted_total").await >= 150);
    assert!(metric(&hub, "tradehook_connections_open").await <= 50);
}

#[tokio::test]
async fn when_every_connection_is_inside_a_request_a_newcomer_gets_503_at_once() {
    let (hub, _dir) = start(&["--max-connections", "16", "--body-timeout", "60s"], None);
    hub.ready(&tradehook::app::http_client().unwrap()).await;
    let ingest_url = tradingview_source(&hub).await;
    let path = ingest_url.trim_start_matches(&hub.url).to_owned();
    let addr = hub.url.trim_start_matches("http://").to_owned();
    // Requests whose bodies never come: each holds its connection inside a request. One
    // more each round, until the sixteen slots are all inside requests (a connection still
    // sending its headers may itself be closed to make room for the next one).
    let busy = std::sync::Mutex::new(Vec::new());
    let answer = eventually(|| async {
        let mut conn = TcpStream::connect(&addr).await.ok()?;
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n");
        conn.write_all(head.as_bytes()).await.ok()?;
        busy.lock().unwrap().push(conn);
        let mut conn = TcpStream::connect(&addr).await.ok()?;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .ok()?;
        let mut got = vec![0; 4096];
        let n = conn.read(&mut got).await.ok()?;
        let text = String::from_utf8_lossy(&got[..n]).into_owned();
        text.starts_with("HTTP/1.1 503").then_some(text)
    })
    .await;
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "overloaded");
    drop(busy);
    // Once the requests are gone, the hub answers again.
    eventually(|| async {
        let r = impatient_client()
            .get(format!("{}/healthz", hub.url))
            .send()
            .await;
        r.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    assert!(metric(&hub, "tradehook_connections_refused_total").await >= 1);
}

#[tokio::test]
async fn silent_trickling_and_idle_connections_are_closed_after_their_timeouts() {
    let (hub, _dir) = start(&["--header-timeout", "1s", "--idle-timeout", "3s"], None);
    hub.ready(&tradehook::app::http_client().unwrap()).await;
    let addr = hub.url.trim_start_matches("http://").to_owned();

    // A connection that sends nothing: closed once its first headers are overdue.
    let began = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(until_closed(&mut silent).await, b"");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Headers trickled a byte at a time: cut off by the header timeout, never answered.
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    let began = Instant::now();
    let (mut reader, mut writer) = trickle.split();
    let feeding = async {
        for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if writer.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut got = Vec::new();
    let (_, read) = tokio::join!(feeding, reader.read_to_end(&mut got));
    assert!(read.is_ok() || got.is_empty());
    assert_eq!(got, b"", "a trickled request is never answered");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );

    // A keep-alive connection: answered, then kept for the idle timeout, not the header one.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0; 4096];
    let n = idle.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let began = Instant::now();
    assert_eq!(until_closed(&mut idle).await, b"");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(2_800) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert!(metric(&hub, "tradehook_connections_timed_out_total").await >= 3);
}

#[tokio::test]
async fn malformed_http_gets_the_json_error_body() {
    let (hub, _dir) = start(&[], None);
    hub.ready(&tradehook::app::http_client().unwrap()).await;
    let addr = hub.url.trim_start_matches("http://").to_owned();
    for request in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let answer = String::from_utf8(until_closed(&mut conn).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains("content-type: application/json"),
            "{answer}"
        );
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["code"], "malformed_request");
    }
}

/// The peak memory of a process, in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn template_bombs_are_refused_and_rendering_stays_within_its_memory_bound() {
    let receiver = TestReceiver::start().await;
    let (hub, _dir) = start(&[], None);
    let client = tradehook::app::http_client().unwrap();
    hub.ready(&client).await;
    let post = |body: serde_json::Value| {
        client
            .post(format!("{}/api/v1/endpoints", hub.url))
            .bearer_auth(TOKEN)
            .body(body.to_string())
            .send()
    };
    // 1.95 MB of template, and 65 KB rendering to 50 MB: both refused.
    for template in [
        "{pair:>10000}".repeat(150_000),
        "{pair:>10000}".repeat(5_000),
    ] {
        let reply =
            post(json!({"url": receiver.url, "format": "raw", "templates": {"entry": template}}))
                .await
                .unwrap();
        assert_eq!(reply.status(), 422);
    }
    // The largest body a template may render (just under 1 MiB), delivered.
    let template = "{pair:>10000}".repeat(104);
    let reply =
        post(json!({"url": receiver.url, "format": "raw", "templates": {"entry": template}}))
            .await
            .unwrap();
    assert_eq!(reply.status(), 201);
    let published = client
        .post(format!("{}/api/v1/events", hub.url))
        .bearer_auth(TOKEN)
        .body(json!({"type": "entry", "data": {"pair": "BTC/USDT"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    assert_eq!(receiver.wait_for(1).await[0].body.len(), 1_040_000);
    let peak = peak_memory(hub.child.id());
    assert!(peak < 150 << 20, "the hub peaked at {} MB", peak >> 20);
}

#[tokio::test]
async fn a_hub_whose_disk_is_full_says_it_is_not_ready() {
    // A file system of its own, 12 MiB, 10 of them taken: the hub starts, with 2 MiB left.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = format!(
        "mount -t tmpfs -o size=12m tmpfs {disk} && \
         dd if=/dev/zero of={disk}/filler bs=1M count=10 2>/dev/null && \
         exec {hub} serve --listen 127.0.0.1:{port} --database sqlite://{disk}/hub.db",
        hub = env!("CARGO_BIN_EXE_tradehook"),
    );
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("TRADEHOOK_API_TOKEN", TOKEN)
        .env_remove("TRADEHOOK_CONFIG")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("unshare (util-linux) runs the hub on a file system of its own; tests run as root");
    let client = tradehook::app::http_client().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let health = eventually(|| async {
        let r = client.get(format!("{url}/healthz")).send().await.ok()?;
        Some(r.status())
    })
    .await;
    assert_eq!(health, 200, "alive");
    let ready = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "not_ready");
    assert!(body["detail"].as_str().unwrap().contains("full"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_connection_trickling_its_headers_does_not_hold_up_a_stop() {
    let (mut hub, _dir) = start(&["--header-timeout", "1s"], None);
    hub.ready(&tradehook::app::http_client().unwrap()).await;
    let addr = hub.url.trim_start_matches("http://").to_owned();
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nx-slow: a")
        .await
        .unwrap();
    let began = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = hub.child.wait().unwrap();
        (hub, status)
    })
    .await
    .unwrap()
    .1;
    assert!(status.success(), "{status}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    drop(trickle);
}
