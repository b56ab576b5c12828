//! Test harness: the hub on a free port with a temporary database, a receiver that records
//! what it is sent and answers as told, and small helpers to await state without sleeping.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tradehook::app::Application;
use tradehook::config::Config;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// A hub running in this test process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The database file.
    pub db_path: std::path::PathBuf,
    /// Holds the database until the test ends.
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts a hub on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a hub on a fresh database, after `adjust` has changed its configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}", dir.path().join("hub.db").display()),
        api_token: Some(TOKEN.into()),
        // The test receivers listen on loopback, which deliveries may not reach by default.
        allow_targets: vec!["127.0.0.0/8".parse().unwrap()],
        ..Config::default()
    };
    config.dispatch.scan_interval = Duration::from_millis(50);
    adjust(&mut config);
    let app = Application::build(config).await.expect("the hub builds");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        addr,
        client: tradehook::app::http_client().unwrap(),
        db_path: dir.path().join("hub.db"),
        _dir: dir,
        shutdown,
        running: Some(running),
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The ids of a list's `data`, in its order.
    pub fn ids(&self) -> Vec<String> {
        self.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

async fn read(response: reqwest::Response) -> Reply {
    Reply {
        status: response.status().as_u16(),
        text: response.text().await.unwrap(),
    }
}

impl TestApp {
    /// Stops the hub as a signal would, and waits until it has let go of its database.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        read(
            self.client
                .get(self.url(path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        read(req.send().await.unwrap()).await
    }

    /// Calls the API with `token` (an application's key, say) in `Authorization: Bearer`.
    pub async fn send_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(body)).await
    }

    /// POSTs raw bytes to a path with the given headers, without the API token.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        let mut req = self.client.post(self.url(path)).body(body.into());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send().await.unwrap()).await
    }

    /// The ids of a list's `data`, in its order.
    pub async fn ids(&self, path: &str) -> Vec<String> {
        let reply = self.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        reply.ids()
    }

    /// A new read-only API token (a night watch's).
    pub async fn read_only_token(&self) -> String {
        let reply = self
            .post(
                "/api/v1/tokens",
                &serde_json::json!({"name": "night-watch", "scope": "read_only"}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    /// Creates an endpoint; returns its reply body (with the secret).
    pub async fn create_endpoint(&self, body: Value) -> Value {
        let reply = self.post("/api/v1/endpoints", &body).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json()
    }

    pub async fn create_source(&self, body: Value) -> Value {
        let reply = self.post("/api/v1/sources", &body).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json()
    }

    /// Publishes an event through the publisher API; returns its id.
    pub async fn publish(&self, event_type: &str, data: Value) -> String {
        let reply = self
            .post(
                "/api/v1/events",
                &serde_json::json!({"type": event_type, "data": data}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    /// Every stored event (up to 500).
    pub async fn events(&self) -> Vec<Value> {
        let reply = self.get("/api/v1/events?limit=500").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()["data"].as_array().unwrap().clone()
    }

    /// The only delivery of an event.
    pub async fn delivery_of(&self, event_id: &str) -> Value {
        let reply = self.get(&format!("/api/v1/events/{event_id}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let deliveries = reply.json()["deliveries"].as_array().unwrap().clone();
        assert_eq!(deliveries.len(), 1, "{deliveries:?}");
        let id = deliveries[0]["id"].as_str().unwrap().to_owned();
        self.get(&format!("/api/v1/deliveries/{id}")).await.json()
    }

    /// Waits until the delivery of `event_id` has `status`, and returns it.
    pub async fn await_delivery_status(&self, event_id: &str, status: &str) -> Value {
        // A delivery that never gets there is shown, attempts and all.
        eventually_or(|| async {
            let d = self.delivery_of(event_id).await;
            if d["status"] == status {
                Ok(d)
            } else {
                Err(format!("status {status}; the delivery: {d}"))
            }
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` (every 20 ms, up to 15 s) until it yields a value. For state that is only
/// visible through the API, where no event can be awaited directly.
pub async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(move || {
        let next = check();
        async move { next.await.ok_or_else(|| "the expected state".to_owned()) }
    })
    .await
}

/// As [`eventually`], but while not there `check` says what it waits for and where things
/// stand, and the last of that is shown if the time runs out.
pub async fn eventually_or<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(waiting) => assert!(
                tokio::time::Instant::now() < deadline,
                "not reached within 15 s: {waiting}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: std::time::Instant,
    /// The path and query the request was sent to.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// Waits this long, then answers 200.
    Hang(Duration),
    /// 302 to another place.
    Redirect,
    /// This status with this JSON body (a chat service's answer).
    Json(u16, &'static str),
    /// This status with this `Retry-After` header.
    RetryAfter(u16, &'static str),
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    /// How long unscripted requests wait before their 200.
    delay: Mutex<Option<Duration>>,
    arrived: Notify,
}

/// A local HTTP server standing in for Discord, a bot or a copy-trading follower.
#[derive(Clone)]
pub struct TestReceiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

impl TestReceiver {
    /// Starts a receiver that answers 200 unless a scripted answer is queued.
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    /// Queues answers for the next requests, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// Drops the answers still queued: from now on the receiver answers 200 (it recovers).
    pub fn clear_script(&self) {
        self.state.script.lock().unwrap().clear();
    }

    /// Makes every unscripted answer wait this long (a slow receiver), or not at all.
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.state.delay.lock().unwrap() = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits (up to 15 s) until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let arrived = self.state.arrived.notified();
            {
                let got = self.state.received.lock().unwrap();
                if got.len() >= n {
                    return got.clone();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "expected {n} requests, the receiver got {}",
                    self.received().len()
                );
            }
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let answer = state.script.lock().unwrap().pop_front();
    state.received.lock().unwrap().push(Received {
        at: std::time::Instant::now(),
        uri: uri.to_string(),
        headers,
        body,
    });
    state.arrived.notify_waiters();
    let mut out = HeaderMap::new();
    let delay = *state.delay.lock().unwrap();
    match answer {
        None => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            (StatusCode::OK, out, "ok".into())
        }
        Some(Answer::Status(code)) => (
            StatusCode::from_u16(code).unwrap(),
            out,
            format!("answer {code}"),
        ),
        Some(Answer::Hang(d)) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, out, "late".into())
        }
        Some(Answer::RetryAfter(code, value)) => {
            out.insert("retry-after", value.parse().unwrap());
            (StatusCode::from_u16(code).unwrap(), out, "slow down".into())
        }
        Some(Answer::Json(code, body)) => {
            out.insert("content-type", "application/json".parse().unwrap());
            (StatusCode::from_u16(code).unwrap(), out, body.into())
        }
        Some(Answer::Redirect) => {
            out.insert("location", "http://127.0.0.1:9/elsewhere".parse().unwrap());
            (StatusCode::FOUND, out, "moved".into())
        }
    }
}

/// The settings `serve --config` takes from a file holding `text`, written into `dir`; the
/// error with its causes.
pub fn settings_from_file(dir: &std::path::Path, text: &str) -> Result<Config, String> {
    let path = dir.join("tradehook.toml");
    std::fs::write(&path, text).unwrap();
    tradehook::config::ServeArgs {
        config: Some(path),
        ..Default::default()
    }
    .resolve()
    .map_err(|e| format!("{e:#}"))
}

/// The body of the answer to `request`, which must be answered.
pub async fn text_of(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// Posts a TradingView alert's JSON `body` to the ingest `path`, which must take it.
pub async fn alert(app: &TestApp, path: &str, body: Value) {
    let reply = app
        .post_raw(
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    assert!(reply.status < 300, "{} {}", reply.status, reply.text);
}

/// A TradingView source named `name`; its ingest path (`/in/…`).
pub async fn tradingview_source(app: &TestApp, name: &str) -> String {
    let source = app
        .create_source(json!({"name": name, "format": "tradingview"}))
        .await;
    let url = source["ingest_url"].as_str().unwrap();
    url[url.find("/in/").unwrap()..].to_owned()
}

/// `account`'s orders once `n` of them are settled (no intent left), newest first.
pub async fn settled_orders(app: &TestApp, account: &str, n: usize) -> Vec<Value> {
    eventually(|| async {
        let orders = app
            .get(&format!("/api/v1/accounts/{account}/orders"))
            .await
            .json();
        let orders = orders.as_array().unwrap().clone();
        (orders.len() == n && orders.iter().all(|o| o["status"] != "intent")).then_some(orders)
    })
    .await
}
