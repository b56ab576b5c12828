//! `tradehook bench`: a load benchmark of a hub, end to end.
//!
//! It starts a local receiver, creates endpoints on a hub (one given by `--url`, or one it
//! starts itself as a child process on a temporary database), publishes trade events through
//! the publisher API over `C` keep-alive connections, waits for every delivery to arrive, and
//! reports throughput, latencies, losses, duplicates and the hub's CPU, memory and disk use.
//!
//! Closed loop (`--rate` absent): each connection sends as fast as the hub answers. Open loop
//! (`--rate N`): request `i` is due at `start + i/N`, and its latencies are measured from that
//! due time, so a stall of the hub shows as latency instead of hiding as fewer requests
//! (coordinated omission).

pub mod ceiling;
pub mod dashboard;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use stats::{Latency, Report};

/// The standard workloads: keep them exactly so, other hubs are measured on the same terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 1 endpoint, 32 connections, max rate for 20 s.
    W1,
    /// 1 endpoint, fixed 500 events/s for 30 s.
    W2,
    /// 10 endpoints, 20,000 events at max rate.
    W3,
    /// 100 events/s for 60 s; the receiver answers 500 for the first 30 s.
    W4,
    /// Orders: 500 signals/s for 20 s (entries and their exits on 20 symbols, each symbol's
    /// sent once the one before is answered) to an order destination on a paper account;
    /// measured to each fill's `order.filled` at the receiver.
    O1,
    /// Copy trading: 10 entry signals, 1 a second, each to 1,000 follower accounts; measured
    /// to each of the 10,000 fills' `order.filled`.
    O2,
    /// Provider mode: 10,000 applications with one endpoint each, following wallets; 2,000
    /// events, each labelled with a wallet 100 applications follow, at max rate.
    P1,
    /// Copy-trading fan-out: one leader's 100 signals at 10 a second, each to 1,000 follower
    /// endpoints; measured to each signal's last follower.
    W5,
    /// The dashboard: 100,000 events stored, each page fetched 20 times by a signed-in
    /// session; its weight with its assets and its answer time.
    U1,
}

/// `tradehook bench` options. A workload sets them all; flags given beside it override it.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A standard workload
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// A running hub to measure; without it, one is started on a temporary database
    #[arg(long, env = "TRADEHOOK_URL")]
    pub url: Option<String>,
    /// The admin API token of the hub given by --url
    #[arg(long, env = "TRADEHOOK_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Process id of the hub given by --url, to report its CPU and memory
    #[arg(long)]
    pub hub_pid: Option<u32>,
    /// Endpoints to create (every event goes to each)
    #[arg(long)]
    pub endpoints: Option<usize>,
    /// Concurrent keep-alive connections
    #[arg(long)]
    pub connections: Option<usize>,
    /// Send for this many seconds
    #[arg(long)]
    pub duration: Option<f64>,
    /// Send this many events (instead of a duration)
    #[arg(long)]
    pub events: Option<u64>,
    /// Open loop at this many events per second (default: closed loop, max rate)
    #[arg(long)]
    pub rate: Option<f64>,
    /// The receiver answers 500 for this many seconds from the start
    #[arg(long)]
    pub fail_for: Option<f64>,
    /// Also create this many endpoints that always answer 503 (down): their deliveries pile
    /// up while the others are measured
    #[arg(long, default_value_t = 0)]
    pub down_endpoints: usize,
    /// Order mode: this many paper accounts, each with an order destination; the events are
    /// entry signals they trade, and the receiver gets the `order.filled` of each fill
    #[arg(long)]
    pub followers: Option<usize>,
    /// Provider mode: this many applications, each with one endpoint following a wallet;
    /// every event is labelled with a wallet that --reach of them follow
    #[arg(long)]
    pub applications: Option<usize>,
    /// Provider mode: how many applications each event reaches
    #[arg(long)]
    pub reach: Option<usize>,
    /// Give up waiting for deliveries after this many seconds once sending has ended
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,
    /// Trust this PEM authority for an https:// hub given with --url (a private one)
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Send every event on a new connection (with its TLS handshake, over https), as
    /// TradingView's alerts arrive, instead of keep-alive connections
    #[arg(long)]
    pub new_connections: bool,
    /// Measure the machine's ceiling (loopback HTTP, fdatasync) for this many seconds each,
    /// just before the workload; 0 skips it
    #[arg(long, default_value_t = 3.0)]
    pub ceiling_seconds: f64,
    /// Where to probe fdatasync: the database's directory (default: the temporary database's
    /// for a hub the benchmark starts, the system's temporary directory for --url)
    #[arg(long)]
    pub probe_dir: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Resolved run parameters.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    endpoints: usize,
    connections: usize,
    duration: Option<Duration>,
    events: Option<u64>,
    rate: Option<f64>,
    fail_for: Option<Duration>,
    /// Order mode: the number of follower accounts.
    followers: Option<usize>,
    /// Provider mode: (applications, applications each event reaches).
    provider: Option<(usize, usize)>,
}

impl BenchArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        let (name, endpoints, connections, duration, events, rate, fail_for) = match self.workload {
            Some(Workload::W1) => ("W1", 1, 32, Some(20.0), None, None, None),
            Some(Workload::W2) => ("W2", 1, 32, Some(30.0), None, Some(500.0), None),
            Some(Workload::W3) => ("W3", 10, 32, None, Some(20_000), None, None),
            Some(Workload::W4) => ("W4", 1, 32, Some(60.0), None, Some(100.0), Some(30.0)),
            Some(Workload::O1) => ("O1", 1, 32, Some(20.0), None, Some(500.0), None),
            Some(Workload::O2) => ("O2", 1, 32, None, Some(10), Some(1.0), None),
            Some(Workload::P1) => ("P1", 1, 32, None, Some(2_000), None, None),
            Some(Workload::W5) => ("W5", 1000, 32, None, Some(100), Some(10.0), None),
            Some(Workload::U1) => bail!("U1 is run by bench::dashboard::run"),
            None => ("custom", 1, 32, Some(10.0), None, None, None),
        };
        let followers = match self.workload {
            Some(Workload::O1) => Some(1),
            Some(Workload::O2) => Some(1000),
            _ => None,
        };
        let events = self.events.or(events);
        let duration = match (self.duration, self.events) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => duration,
        };
        if duration.is_none() && events.is_none() {
            bail!("give --duration or --events");
        }
        let plan = Plan {
            name: if self.workload.is_some()
                && (self.endpoints.is_some()
                    || self.connections.is_some()
                    || self.duration.is_some()
                    || self.events.is_some()
                    || self.rate.is_some()
                    || self.fail_for.is_some()
                    || self.followers.is_some()
                    || self.applications.is_some()
                    || self.reach.is_some()
                    || self.down_endpoints > 0)
            {
                format!("{name} (modified)")
            } else {
                name.to_owned()
            },
            endpoints: self.endpoints.unwrap_or(endpoints),
            connections: self.connections.unwrap_or(connections).max(1),
            duration: duration.map(Duration::from_secs_f64),
            events,
            rate: self.rate.or(rate),
            fail_for: self.fail_for.or(fail_for).map(Duration::from_secs_f64),
            followers: self.followers.or(followers),
            provider: match (self.workload, self.applications, self.reach) {
                (_, Some(n), reach) => Some((n, reach.unwrap_or(n.min(100)))),
                (Some(Workload::P1), None, reach) => Some((10_000, reach.unwrap_or(100))),
                (_, None, Some(_)) => bail!("--reach needs --applications"),
                _ => None,
            },
        };
        if let Some((n, reach)) = plan.provider
            && (reach == 0 || reach > n || n % reach != 0)
        {
            bail!("--reach must be at least 1 and divide --applications");
        }
        if plan.endpoints == 0 {
            bail!("--endpoints must be at least 1");
        }
        if plan.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            bail!("--rate must be a positive number");
        }
        Ok(plan)
    }
}

/// A trade event of about 410 bytes once wrapped as `{"type", "data"}`; `seq` makes every
/// body unique so that none is a duplicate. Written out rather than built as a JSON value: the
/// load generator shares the machine with the hub it measures, and should take little of it.
pub fn payload(run: &str, seq: u64) -> String {
    format!(
        concat!(
            r#"{{"type":"entry_fill","data":{{"exchange":"binance","pair":"BTC/USDT:USDT","#,
            r#""side":"long","trade_id":{trade_id},"order_type":"limit","open_rate":64123.45,"#,
            r#""amount":0.0125,"stake_amount":801.54,"stake_currency":"USDT","leverage":3.0,"#,
            r#""enter_tag":"supertrend_long","strategy":"SupertrendSniperPro","#,
            r#""open_date":"2026-01-29T10:30:00.123456+00:00","sl":62200.0,"tp":67300.0,"#,
            r#""client_ref":"bench-{run}-{seq:010}"}}}}"#
        ),
        trade_id = 100_000 + seq,
        run = run,
        seq = seq,
    )
}

/// An event of the provider workload: a trade of wallet `seq % wallets`, labelled with it.
pub fn provider_payload(run: &str, seq: u64, wallets: u64) -> String {
    format!(
        concat!(
            r#"{{"type":"entry_fill","labels":{{"wallet":"W{wallet}"}},"data":{{"#,
            r#""owner":"W{wallet}","marketSymbol":"SOL-PERP","side":"long","sizeUsd":15000.5,"#,
            r#""leverage":5.2,"entryPrice":185.42,"client_ref":"bench-{run}-{seq:010}"}}}}"#
        ),
        wallet = seq % wallets,
        run = run,
        seq = seq,
    )
}

/// Provider mode: `n` applications, each with one endpoint at the receiver following wallet
/// `W{i % (n / reach)}`, made `CONCURRENTLY` at a time as a provider's sign-ups would be.
async fn create_applications(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    n: usize,
    reach: usize,
    receiver: SocketAddr,
) -> anyhow::Result<()> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    const CONCURRENTLY: usize = 16;
    let wallets = n / reach;
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let hub = (url, token);
            let made = create(
                client,
                hub,
                "applications",
                json!({"name": format!("bench customer {i}")}),
                "an application",
            )
            .await?;
            let id = made["id"].as_str().unwrap_or_default();
            create(
                client,
                hub,
                &format!("endpoints?application={id}"),
                json!({"url": format!("http://{receiver}/hook/{i}"), "event_types": ["entry_fill"],
                       "labels": {"wallet": format!("W{}", i % wallets)},
                       "description": "tradehook bench"}),
                "an endpoint",
            )
            .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(CONCURRENTLY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Creates a record through the hub's API (`POST /api/v1/{path}`) and answers it; `what` names
/// it in the error when the hub does not answer 201.
async fn create(
    client: &reqwest::Client,
    (url, token): (&str, &str),
    path: &str,
    body: serde_json::Value,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let reply = client
        .post(format!("{url}/api/v1/{path}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = reply.status();
    let text = reply.text().await?;
    if status != 201 {
        bail!("creating {what} failed: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Symbols an order workload trades: a book of this many positions, as an active account
/// has.
const ORDER_SYMBOLS: u64 = 20;

/// A signal of the order workloads: on symbol `seq % ORDER_SYMBOLS`, an entry of 0.001 (long)
/// and then, one round later, its exit; each fills.
pub fn order_payload(run: &str, seq: u64) -> String {
    let kind = if (seq / ORDER_SYMBOLS).is_multiple_of(2) {
        "entry"
    } else {
        "exit"
    };
    format!(
        concat!(
            r#"{{"type":"{kind}","data":{{"pair":"S{symbol}/USDT","side":"long","#,
            r#""price":100.5,"client_ref":"bench-{run}-{seq:010}"}}}}"#
        ),
        kind = kind,
        symbol = seq % ORDER_SYMBOLS,
        run = run,
        seq = seq,
    )
}

/// Order mode: a symbol's signals leave one after another, each once the one before it is
/// answered (or failed), as one strategy's alerts do. Sent side by side on two connections,
/// an exit could be stored before its entry (whose request was slower), find no position and
/// place nothing: a fill the hub would rightly never make, counted as missing.
struct Turns(Vec<tokio::sync::watch::Sender<u64>>);

impl Turns {
    /// Each symbol's first signal is the next to go.
    fn new() -> Self {
        Self(
            (0..ORDER_SYMBOLS)
                .map(tokio::sync::watch::Sender::new)
                .collect(),
        )
    }

    fn of(&self, seq: u64) -> &tokio::sync::watch::Sender<u64> {
        &self.0[(seq % ORDER_SYMBOLS) as usize]
    }

    /// Waits until signal `seq` is the next of its symbol.
    async fn wait(&self, seq: u64) {
        let _ = self.of(seq).subscribe().wait_for(|next| *next == seq).await;
    }

    /// Signal `seq` is answered: its symbol's next may go.
    fn done(&self, seq: u64) {
        self.of(seq).send_replace(seq + ORDER_SYMBOLS);
    }
}

/// Posts events to the hub for one sender task. For an `http://` hub it keeps one HTTP/1.1
/// connection of its own, without a client library's pool and layers: the load generator
/// shares the machine with the hub it measures, and reqwest's request machinery alone was a
/// fifth of its CPU. Other hubs (`https://`) go through reqwest.
struct Publisher {
    url: String,
    authorization: http::HeaderValue,
    client: reqwest::Client,
    /// Address, `Host` header and path, for a plain `http://` hub.
    plain: Option<(String, http::HeaderValue, http::Uri)>,
    connection: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
    /// A new connection for every event.
    fresh: bool,
}

/// The part of the hub's answer the benchmark reads.
#[derive(serde::Deserialize)]
struct Accepted {
    id: String,
}

impl Publisher {
    fn new(client: reqwest::Client, url: String, token: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(&url)?;
        let plain = match (
            parsed.scheme(),
            parsed.host_str(),
            parsed.port_or_known_default(),
        ) {
            ("http", Some(host), Some(port)) => {
                let authority = match parsed.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                Some((
                    format!("{host}:{port}"),
                    http::HeaderValue::from_str(&authority)?,
                    http::Uri::try_from(parsed.path())?,
                ))
            }
            _ => None,
        };
        Ok(Self {
            authorization: http::HeaderValue::from_str(&format!("Bearer {token}"))?,
            url,
            client,
            plain,
            connection: None,
            fresh: false,
        })
    }

    /// Publishes one event; its id if the hub accepted it (202).
    async fn publish(&mut self, body: String) -> Option<String> {
        let Some((address, host, path)) = &self.plain else {
            let sent = self
                .client
                .post(&self.url)
                .header(http::header::AUTHORIZATION, self.authorization.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .ok()?;
            let status = sent.status();
            return accepted_id(status, &sent.bytes().await.ok()?);
        };
        if self.connection.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = tokio::net::TcpStream::connect(address.as_str())
                .await
                .ok()?;
            stream.set_nodelay(true).ok()?;
            let (send, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(connection);
            self.connection = Some(send);
        }
        let request = http::Request::post(path.clone())
            .header(http::header::HOST, host.clone())
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .ok()?;
        let send = self.connection.as_mut()?;
        let answer = async {
            send.ready().await.ok()?;
            let response = send.send_request(request).await.ok()?;
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .ok()?;
            Some((status, body.to_bytes()))
        }
        .await;
        if self.fresh {
            self.connection = None;
        }
        match answer {
            Some((status, body)) => accepted_id(status, &body),
            None => {
                // The connection failed: the next event starts on a fresh one.
                self.connection = None;
                None
            }
        }
    }
}

/// The event id in an answer, if the hub accepted the event.
fn accepted_id(status: http::StatusCode, body: &[u8]) -> Option<String> {
    if status != http::StatusCode::ACCEPTED {
        return None;
    }
    serde_json::from_slice::<Accepted>(body).ok().map(|a| a.id)
}

/// One delivery as the receiver saw it: event id, endpoint id, arrival time.
type Arrival = (Box<str>, Box<str>, Instant);

/// What the receiver saw.
#[derive(Default)]
struct Arrivals {
    seen: Mutex<Vec<Arrival>>,
    /// Order mode: each fill's time after its signal was accepted, in µs, by the hub's clock
    /// (both times in milliseconds).
    fills_us: Mutex<Vec<u64>>,
    fail_until: Mutex<Option<Instant>>,
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

/// Answers one delivery: 503 for a `down` endpoint, 500 while the receiver is failing, 200
/// otherwise, noting which event reached which endpoint and when.
fn receive(arrivals: &Arrivals, path: &str, headers: &http::HeaderMap) -> http::StatusCode {
    if path.starts_with("/down/") {
        return http::StatusCode::SERVICE_UNAVAILABLE;
    }
    let now = Instant::now();
    if arrivals
        .fail_until
        .lock()
        .expect("lock")
        .is_some_and(|t| now < t)
    {
        return http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .into()
    };
    arrivals
        .seen
        .lock()
        .expect("lock")
        .push((header("webhook-id"), header("x-webhook-id"), now));
    arrivals.count.fetch_add(1, Ordering::Release);
    *arrivals.last.lock().expect("lock") = Some(now);
    http::StatusCode::OK
}

/// Notes an `order.filled` as the arrival of its signal (`data.event_id`) at its account
/// (`data.account_id`).
fn receive_fill(arrivals: &Arrivals, body: &[u8], at: Instant) {
    #[derive(serde::Deserialize)]
    struct Notice {
        data: NoticeData,
    }
    #[derive(serde::Deserialize)]
    struct NoticeData {
        event_id: String,
        account_id: String,
        at: String,
    }
    let Ok(notice) = serde_json::from_slice::<Notice>(body) else {
        return;
    };
    // The signal's id says when the hub accepted it, to the millisecond.
    if let (Some(accepted), Some(filled)) = (
        crate::domain::id_time(&notice.data.event_id),
        crate::domain::parse_time(&notice.data.at),
    ) {
        let us = (filled - accepted).max(0) as u64 * 1000;
        arrivals.fills_us.lock().expect("lock").push(us);
    }
    arrivals.seen.lock().expect("lock").push((
        notice.data.event_id.into(),
        notice.data.account_id.into(),
        at,
    ));
    arrivals.count.fetch_add(1, Ordering::Release);
    *arrivals.last.lock().expect("lock") = Some(at);
}

/// The receiver: a plain HTTP/1.1 server (the hub delivers over HTTP/1.1), without a web
/// framework's routing and protocol detection, for the same reason as [`Publisher`].
async fn serve_receiver(listener: tokio::net::TcpListener, arrivals: Arc<Arrivals>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |request: http::Request<_>| {
                let fills = request.uri().path().starts_with("/fills/");
                let status = if fills {
                    http::StatusCode::OK
                } else {
                    receive(&arrivals, request.uri().path(), request.headers())
                };
                let arrivals = arrivals.clone();
                async move {
                    let at = Instant::now();
                    // Read to its end, so that the connection stays open for the next one.
                    let body = http_body_util::BodyExt::collect(request.into_body()).await;
                    if fills && let Ok(body) = body {
                        receive_fill(&arrivals, &body.to_bytes(), at);
                    }
                    let mut response =
                        http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                .await;
        });
    }
}

/// A hub started by the benchmark, stopped when dropped.
struct ChildHub {
    child: Child,
    /// The temporary database's directory.
    dir: tempfile::TempDir,
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open loop: a thread that releases request `i` at `start + i/rate`, as tickets of
/// (sequence number, due time), until the plan's duration or event count is reached.
///
/// A thread that sleeps to each due time, rather than a tokio timer: tokio's timer rounds
/// every wait up to the next millisecond, so requests would leave up to 1 ms after their due
/// time, and since latency is measured from the due time, the load generator's own lateness
/// would be reported as the hub's. A ticket waits in the channel when every connection is
/// busy, and its latency still counts from its due time.
fn pace(
    start: Instant,
    rate: f64,
    plan: &Plan,
) -> tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (events, duration) = (plan.events, plan.duration);
    std::thread::spawn(move || {
        for seq in 0.. {
            let due = start + Duration::from_secs_f64(seq as f64 / rate);
            if events.is_some_and(|n| seq >= n) || duration.is_some_and(|d| due > start + d) {
                break;
            }
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if tx.send((seq, due)).is_err() {
                break;
            }
        }
    });
    rx
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_hub(token: &str) -> anyhow::Result<(ChildHub, String)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let db: PathBuf = dir.path().join("bench.db");
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database")
        .arg(format!("sqlite://{}", db.display()))
        .arg("--allow-target")
        .arg("127.0.0.0/8")
        .env("TRADEHOOK_API_TOKEN", token)
        .env_remove("TRADEHOOK_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a hub")?;
    Ok((ChildHub { child, dir }, format!("http://127.0.0.1:{port}")))
}

/// CPU seconds (user + system), peak RSS in bytes, and bytes written to disk by a process.
fn process_usage(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let written = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    // Linux reports CPU time in clock ticks of 1/100 s.
    Some((ticks / 100.0, hwm_kb * 1024, written))
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the hub at {url} did not become ready within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Order mode: `n` paper accounts (balance 1e9, no fees), each with an order destination
/// trading every benchmark symbol at 0.001 a signal, in order per pair (an exit never
/// overtakes its entry), and one endpoint that sends every `order.filled` to the receiver.
async fn create_followers(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    n: usize,
    receiver: SocketAddr,
) -> anyhow::Result<()> {
    let symbols: serde_json::Map<String, serde_json::Value> = (0..ORDER_SYMBOLS)
        .map(|k| (format!("S{k}/USDT"), json!(format!("S{k}/USDT:USDT"))))
        .collect();
    let hub = (url, token);
    for i in 0..n {
        let name = format!("bench-{i}");
        create(
            client,
            hub,
            "accounts",
            json!({"name": name, "paper": {"balance": 1e9, "fee_rate": 0}}),
            "an account",
        )
        .await?;
        create(
            client,
            hub,
            "endpoints",
            json!({"url": format!("account:{name}"), "event_types": ["entry", "exit"],
                   "description": "tradehook bench", "ordering": "pair",
                   "orders": {"symbols": symbols, "size": {"base": 0.001}}}),
            "an order destination",
        )
        .await?;
    }
    create(
        client,
        hub,
        "endpoints",
        json!({"url": format!("http://{receiver}/fills/"), "event_types": ["order.filled"],
               "description": "tradehook bench"}),
        "the fills endpoint",
    )
    .await?;
    Ok(())
}

/// Runs a benchmark and returns its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let plan = args.plan()?;
    // Setting up, and publishing: trusting --ca-file; publishing without a pool with
    // --new-connections.
    let build = |pooled: bool| -> anyhow::Result<reqwest::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10));
        if !pooled {
            builder = builder.pool_max_idle_per_host(0);
        }
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder.build()?)
    };
    let client = build(true)?;
    let publishing = build(!args.new_connections)?;
    let (hub, url, token) = match &args.url {
        Some(url) => {
            let token = args
                .token
                .clone()
                .context("--url needs --token (or TRADEHOOK_API_TOKEN)")?;
            (None, url.trim_end_matches('/').to_owned(), token)
        }
        None => {
            let token = crate::domain::new_token("bench_");
            let (hub, url) = start_hub(&token)?;
            (Some(hub), url, token)
        }
    };
    wait_ready(&client, &url).await?;
    let hub_pid = hub.as_ref().map(|h| h.child.id()).or(args.hub_pid);

    // The receiver.
    let arrivals = Arc::new(Arrivals::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_addr: SocketAddr = listener.local_addr()?;
    let receiver = tokio::spawn(serve_receiver(listener, arrivals.clone()));

    if let Some(followers) = plan.followers {
        create_followers(&client, &url, &token, followers, receiver_addr).await?;
    }
    if let Some((n, reach)) = plan.provider {
        let began = Instant::now();
        create_applications(&client, &url, &token, n, reach, receiver_addr).await?;
        eprintln!(
            "{n} applications and their endpoints made in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
    let endpoints = if plan.followers.is_some() || plan.provider.is_some() {
        0
    } else {
        plan.endpoints
    };
    for i in 0..endpoints + args.down_endpoints {
        let path = if i < endpoints {
            format!("hook/{i}")
        } else {
            format!("down/{i}")
        };
        create(
            &client,
            (&url, &token),
            "endpoints",
            json!({
                "url": format!("http://{receiver_addr}/{path}"),
                "event_types": ["entry_fill"],
                "description": "tradehook bench",
                "signing": "standard",
            }),
            "an endpoint",
        )
        .await?;
    }

    // The machine's ceiling, now that the hub is set up and idle.
    let ceiling = if args.ceiling_seconds > 0.0 {
        let dir = match (&args.probe_dir, &hub) {
            (Some(dir), _) => dir.clone(),
            (None, Some(hub)) => hub.dir.path().to_owned(),
            (None, None) => std::env::temp_dir(),
        };
        Some(ceiling::measure(plan.connections, args.ceiling_seconds, &dir).await?)
    } else {
        None
    };

    let usage_before = hub_pid.and_then(process_usage);
    let run_id = crate::domain::new_token("");
    let start = Instant::now();
    if let Some(f) = plan.fail_for {
        *arrivals.fail_until.lock().expect("lock") = Some(start + f);
    }

    // The senders.
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tickets = plan
        .rate
        .map(|rate| Arc::new(tokio::sync::Mutex::new(pace(start, rate, &plan))));
    let turns = plan.followers.map(|_| Arc::new(Turns::new()));
    let mut senders = Vec::new();
    for _ in 0..plan.connections {
        let mut publisher =
            Publisher::new(publishing.clone(), format!("{url}/api/v1/events"), &token)?;
        publisher.fresh = args.new_connections;
        let run_id = run_id.clone();
        let (tickets, turns) = (tickets.clone(), turns.clone());
        let (next, errors, plan) = (next.clone(), errors.clone(), plan.clone());
        senders.push(tokio::spawn(async move {
            // (event id, reference instant, ingest latency in µs)
            let mut done: Vec<(String, Instant, u64)> = Vec::new();
            loop {
                let (seq, due) = match &tickets {
                    Some(tickets) => match tickets.lock().await.recv().await {
                        Some(ticket) => ticket,
                        None => break,
                    },
                    None => {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if plan.events.is_some_and(|n| seq >= n)
                            || plan.duration.is_some_and(|d| start.elapsed() > d)
                        {
                            break;
                        }
                        (seq, Instant::now())
                    }
                };
                let body = if plan.followers.is_some() {
                    order_payload(&run_id, seq)
                } else if let Some((n, reach)) = plan.provider {
                    provider_payload(&run_id, seq, (n / reach) as u64)
                } else {
                    payload(&run_id, seq)
                };
                if let Some(turns) = &turns {
                    turns.wait(seq).await;
                }
                let id = publisher.publish(body).await;
                let answered = Instant::now();
                if let Some(turns) = &turns {
                    turns.done(seq);
                }
                match id {
                    Some(id) => {
                        // Open loop measures from the due time; closed loop from the answer.
                        let reference = if plan.rate.is_some() { due } else { answered };
                        done.push((id, reference, (answered - due).as_micros() as u64));
                    }
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            done
        }));
    }
    let mut accepted: HashMap<String, Instant> = HashMap::new();
    let mut ingest_us = Vec::new();
    for s in senders {
        for (id, reference, latency) in s.await? {
            accepted.insert(id, reference);
            ingest_us.push(latency);
        }
    }
    let send_seconds = start.elapsed().as_secs_f64();

    // Wait for every delivery.
    let reach = match plan.provider {
        Some((_, reach)) => reach,
        None => plan.followers.unwrap_or(plan.endpoints),
    };
    let expected = accepted.len() as u64 * reach as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    while arrivals.count.load(Ordering::Acquire) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let usage_after = hub_pid.and_then(process_usage);
    receiver.abort();

    let seen = std::mem::take(&mut *arrivals.seen.lock().expect("lock"));
    let recovery = plan.fail_for.map(|f| start + f);
    let mut pairs: HashMap<(Box<str>, Box<str>), u32> = HashMap::with_capacity(seen.len());
    let mut e2e_us = Vec::with_capacity(seen.len());
    // Each event's last first-time arrival: when its last endpoint got it.
    let mut last_of: HashMap<Box<str>, Instant> = HashMap::with_capacity(accepted.len());
    let mut last = start;
    // The last arrival of an event accepted while the receiver was failing: the backlog.
    let mut backlog_done: Option<Instant> = None;
    for (event, endpoint, at) in seen {
        last = last.max(at);
        let n = pairs.entry((event.clone(), endpoint)).or_default();
        *n += 1;
        if *n == 1
            && let Some(reference) = accepted.get(&*event)
        {
            e2e_us.push(at.saturating_duration_since(*reference).as_micros() as u64);
            let latest = last_of.entry(event.clone()).or_insert(at);
            *latest = (*latest).max(at);
            if recovery.is_some_and(|r| *reference < r) {
                backlog_done = Some(backlog_done.map_or(at, |b| b.max(at)));
            }
        }
    }
    let last_delivery_us: Vec<u64> = last_of
        .iter()
        .filter_map(|(event, at)| {
            let reference = accepted.get(&**event)?;
            Some(at.saturating_duration_since(*reference).as_micros() as u64)
        })
        .collect();
    let unique = pairs.len() as u64;
    let duplicates = pairs.values().map(|n| u64::from(n - 1)).sum();
    let total_seconds = (last - start).as_secs_f64();
    let mut report = Report {
        workload: plan.name.clone(),
        endpoints: match plan.provider {
            Some((n, _)) => n,
            None => plan.followers.map_or(plan.endpoints, |n| n + 1),
        },
        applications: plan.provider.map(|(n, _)| n),
        followers: plan.followers,
        connections: plan.connections,
        events_sent: accepted.len() as u64 + errors.load(Ordering::Relaxed),
        events_accepted: accepted.len() as u64,
        send_errors: errors.load(Ordering::Relaxed),
        send_seconds,
        accepted_per_second: accepted.len() as f64 / send_seconds,
        ingest_latency: Latency::of(ingest_us),
        deliveries_expected: expected,
        deliveries_received: unique,
        duplicates,
        missing: expected.saturating_sub(unique),
        total_seconds,
        deliveries_per_second: if total_seconds > 0.0 {
            unique as f64 / total_seconds
        } else {
            0.0
        },
        end_to_end_latency: Latency::of(e2e_us),
        last_delivery_latency: (reach > 1).then(|| Latency::of(last_delivery_us)),
        fill_latency: plan.followers.map(|_| {
            Latency::of(std::mem::take(
                &mut *arrivals.fills_us.lock().expect("lock"),
            ))
        }),
        drained_after_recovery_seconds: recovery.map(|r| {
            backlog_done.map_or(0.0, |done| done.saturating_duration_since(r).as_secs_f64())
        }),
        ..Report::default()
    };
    if let Some(ceiling) = ceiling {
        let http = ceiling.http_requests_per_second;
        report.accepted_fraction_of_ceiling = Some(report.accepted_per_second / http);
        report.deliveries_fraction_of_ceiling = Some(report.deliveries_per_second / http);
        report.ceiling = Some(ceiling);
    }
    if let (Some((cpu0, _, w0)), Some((cpu1, rss, w1))) = (usage_before, usage_after) {
        let elapsed = start.elapsed().as_secs_f64();
        report.hub_cpu_seconds = Some(cpu1 - cpu0);
        report.hub_cpu_percent = Some(100.0 * (cpu1 - cpu0) / elapsed);
        report.hub_peak_rss_mb = Some(rss as f64 / 1_048_576.0);
        if report.events_accepted > 0 {
            report.disk_bytes_per_event = Some((w1 - w0) as f64 / report.events_accepted as f64);
        }
    }
    if let Some(mut hub) = hub {
        // A graceful stop, so the temporary database is closed cleanly.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(hub.child.id().to_string())
            .status();
        let _ = hub.child.wait();
        drop(hub);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_workloads_trade_event() {
        let body = payload("r1", 7);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({
                "type": "entry_fill",
                "data": {
                    "exchange": "binance",
                    "pair": "BTC/USDT:USDT",
                    "side": "long",
                    "trade_id": 100_007,
                    "order_type": "limit",
                    "open_rate": 64_123.45,
                    "amount": 0.0125,
                    "stake_amount": 801.54,
                    "stake_currency": "USDT",
                    "leverage": 3.0,
                    "enter_tag": "supertrend_long",
                    "strategy": "SupertrendSniperPro",
                    "open_date": "2026-01-29T10:30:00.123456+00:00",
                    "sl": 62_200.0,
                    "tp": 67_300.0,
                    "client_ref": "bench-r1-0000000007",
                }
            })
        );
        // About 410 bytes with a run id as the benchmark makes them.
        let full = payload(&crate::domain::new_token(""), 7);
        assert!((400..=430).contains(&full.len()), "{} bytes", full.len());
    }

    /// A symbol's exit does not leave before its entry is answered; other symbols' signals
    /// are not held up by it.
    #[test]
    fn a_symbols_signals_leave_one_after_another() {
        use futures_util::FutureExt as _;
        let turns = Turns::new();
        assert!(turns.wait(0).now_or_never().is_some());
        assert!(turns.wait(1).now_or_never().is_some(), "another symbol");
        assert!(
            turns.wait(ORDER_SYMBOLS).now_or_never().is_none(),
            "the exit waits for its entry"
        );
        turns.done(0);
        assert!(turns.wait(ORDER_SYMBOLS).now_or_never().is_some());
        assert!(turns.wait(2 * ORDER_SYMBOLS).now_or_never().is_none());
    }

    #[test]
    fn the_order_workloads_enter_each_symbol_then_exit_it_a_round_later() {
        let signal =
            |seq| serde_json::from_str::<serde_json::Value>(&order_payload("r", seq)).unwrap();
        let entry = signal(3);
        assert_eq!(
            (
                &entry["type"],
                &entry["data"]["pair"],
                &entry["data"]["side"]
            ),
            (&json!("entry"), &json!("S3/USDT"), &json!("long"))
        );
        let exit = signal(3 + ORDER_SYMBOLS);
        assert_eq!(
            (&exit["type"], &exit["data"]["pair"]),
            (&json!("exit"), &json!("S3/USDT"))
        );
        assert_eq!(signal(3 + 2 * ORDER_SYMBOLS)["type"], "entry");
        assert_ne!(
            signal(3)["data"]["client_ref"],
            signal(4)["data"]["client_ref"]
        );
    }

    #[test]
    fn an_accepted_id_needs_a_202() {
        let body = br#"{"id":"evt_1","status":"accepted"}"#;
        assert_eq!(
            accepted_id(http::StatusCode::ACCEPTED, body).as_deref(),
            Some("evt_1")
        );
        assert_eq!(accepted_id(http::StatusCode::OK, body), None);
        assert_eq!(accepted_id(http::StatusCode::ACCEPTED, b"not json"), None);
    }
}
