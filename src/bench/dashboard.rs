//! The dashboard workload (U1): a hub holding 100,000 events, and each dashboard page fetched
//! by a signed-in browser session. It reports what each page weighs with the assets it loads,
//! and how long the hub takes to answer it.
//!
//! The time is measured by the benchmark on loopback, from sending the request to the last
//! byte of the answer: the hub's rendering plus one local round trip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::json;

use super::{Arrivals, BenchArgs, create, serve_receiver, start_hub, wait_ready};

/// Events stored before the pages are measured.
const EVENTS: u64 = 100_000;
/// Of them, exits to an endpoint that is down: failures for the pages to show. (A failing
/// endpoint is probed once a second, so they are few.)
const FAILING: u64 = 20;
/// Timed fetches of each page (after one that warms it).
const FETCHES: usize = 20;
/// Pairs the events are about.
const PAIRS: [&str; 8] = [
    "BTC/USDT",
    "ETH/USDT",
    "SOL/USDT",
    "XRP/USDT",
    "ADA/USDT",
    "DOGE/USDT",
    "BNB/USDT",
    "LINK/USDT",
];
/// The targets: at most this many bytes a page, its assets included…
pub const MAX_BYTES: usize = 150 * 1024;
/// …and its answer within this many milliseconds.
pub const MAX_MS: f64 = 100.0;

/// One page: what it weighs and how long it took.
#[derive(Debug, Serialize)]
pub struct PageFigures {
    pub page: String,
    /// The HTML.
    pub bytes: usize,
    /// The HTML and every stylesheet and script it loads.
    pub with_assets: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    pub events: u64,
    pub deliveries: u64,
    pub fetches_per_page: usize,
    pub pages: Vec<PageFigures>,
}

impl DashboardReport {
    /// Pages over either target.
    pub fn over_target(&self) -> Vec<&str> {
        self.pages
            .iter()
            .filter(|p| p.with_assets > MAX_BYTES || p.max_ms > MAX_MS)
            .map(|p| p.page.as_str())
            .collect()
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "U1 dashboard: {} events and {} deliveries stored; each page fetched {} times\n\
             {:<34} {:>9} {:>12} {:>8} {:>8} {:>8}\n",
            self.events,
            self.deliveries,
            self.fetches_per_page,
            "page",
            "bytes",
            "with assets",
            "p50 ms",
            "p99 ms",
            "max ms"
        );
        for p in &self.pages {
            out += &format!(
                "{:<34} {:>9} {:>12} {:>8.2} {:>8.2} {:>8.2}\n",
                p.page, p.bytes, p.with_assets, p.p50_ms, p.p99_ms, p.max_ms
            );
        }
        out += &format!(
            "targets: at most {} KB a page with its assets, answered within {MAX_MS} ms\n",
            MAX_BYTES / 1024
        );
        out
    }
}

/// Runs U1 on a hub it starts on a temporary database.
pub async fn run(args: &BenchArgs) -> anyhow::Result<DashboardReport> {
    if args.url.is_some() {
        bail!("the dashboard workload starts its own hub: leave out --url");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let token = crate::domain::new_token("bench_");
    let (_hub, url) = start_hub(&token)?;
    wait_ready(&client, &url).await?;
    let arrivals = Arc::new(Arrivals::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver: SocketAddr = listener.local_addr()?;
    tokio::spawn(serve_receiver(listener, arrivals.clone()));

    // What a trader's hub holds: a chat endpoint that answers, one that is down, a
    // TradingView source and a paper account.
    let api = (url.as_str(), token.as_str());
    let endpoint = create(
        &client,
        api,
        "endpoints",
        json!({"url": format!("http://{receiver}/hook/0"), "event_types": ["entry"]}),
        "an endpoint",
    )
    .await?;
    create(
        &client,
        api,
        "endpoints",
        json!({"url": format!("http://{receiver}/down/1"), "event_types": ["exit"],
               "retry_schedule": []}),
        "an endpoint that is down",
    )
    .await?;
    create(
        &client,
        api,
        "sources",
        json!({"name": "tv", "format": "tradingview", "auth": {"type": "token"}}),
        "a source",
    )
    .await?;
    let account = create(
        &client,
        api,
        "accounts",
        json!({"name": "paper-main"}),
        "an account",
    )
    .await?;

    let began = Instant::now();
    publish(&client, &url, &token).await?;
    let deliveries = settle(&client, &url, &token).await?;
    eprintln!(
        "{EVENTS} events stored and {deliveries} deliveries made in {:.1} s",
        began.elapsed().as_secs_f64()
    );

    let cookie = sign_in(&client, &url, &token).await?;
    let newest = |path: &'static str| {
        let (client, url, token) = (&client, &url, &token);
        async move {
            let reply = client
                .get(format!("{url}/api/v1/{path}?limit=1"))
                .bearer_auth(token)
                .send()
                .await?
                .bytes()
                .await?;
            let reply: serde_json::Value = serde_json::from_slice(&reply)?;
            reply["data"][0]["id"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {path}"))
        }
    };
    let event = newest("events").await?;
    let delivery = newest("deliveries").await?;
    let endpoint_id = endpoint["id"].as_str().context("an endpoint id")?;
    let account_id = account["id"].as_str().context("an account id")?;
    let pages = [
        "/ui".to_owned(),
        "/ui/events".to_owned(),
        "/ui/events?pair=LINK%2FUSDT&type=entry".to_owned(),
        format!("/ui/events/{event}"),
        "/ui/deliveries".to_owned(),
        "/ui/deliveries?status=failed".to_owned(),
        format!("/ui/deliveries/{delivery}"),
        "/ui/endpoints".to_owned(),
        format!("/ui/endpoints/{endpoint_id}/templates"),
        "/ui/sources".to_owned(),
        "/ui/accounts".to_owned(),
        format!("/ui/accounts/{account_id}"),
    ];
    let mut figures = Vec::new();
    for page in pages {
        figures.push(measure(&client, &url, &cookie, &page).await?);
    }
    Ok(DashboardReport {
        events: EVENTS,
        deliveries,
        fetches_per_page: FETCHES,
        pages: figures,
    })
}

/// Publishes the events, 32 at a time.
async fn publish(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<()> {
    let sent = futures_util::stream::iter(0..EVENTS)
        .map(|i| async move {
            // The last few are the exits that fail.
            let kind = if i >= EVENTS - FAILING {
                "exit"
            } else {
                "entry"
            };
            let body = json!({"type": kind, "data": {
                "pair": PAIRS[i as usize % PAIRS.len()], "side": "long",
                "price": 100.0 + (i % 1000) as f64, "seq": i}});
            let reply = client
                .post(format!("{url}/api/v1/events"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?;
            anyhow::ensure!(reply.status() == 202, "publishing: {}", reply.status());
            Ok(())
        })
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
    sent.into_iter().collect()
}

/// Waits until no delivery is pending; how many were made.
async fn settle(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = client
            .get(format!("{url}/api/v1/stats?window=24h"))
            .bearer_auth(token)
            .send()
            .await?
            .bytes()
            .await?;
        let stats: serde_json::Value = serde_json::from_slice(&stats)?;
        let d = &stats["deliveries"];
        let count = |k: &str| d[k].as_u64().unwrap_or(0);
        if count("pending") == 0 && count("succeeded") + count("failed") >= EVENTS {
            return Ok(count("succeeded") + count("failed"));
        }
        anyhow::ensure!(Instant::now() < deadline, "deliveries still pending: {d}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Signs in through the form as a browser does; the session cookie.
async fn sign_in(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<String> {
    let form = client.get(format!("{url}/ui/login")).send().await?;
    let login_cookie = set_cookie(&form, "tradehook_login").context("the sign-in cookie")?;
    let csrf = login_cookie.split_once('=').map(|(_, v)| v.to_owned());
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("csrf", &csrf.unwrap_or_default())
        .finish();
    let signed = client
        .post(format!("{url}/ui/login"))
        .header("cookie", login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    set_cookie(&signed, "tradehook_session").context("signing in to the dashboard failed")
}

/// The `name=value` of a cookie an answer sets.
fn set_cookie(answer: &reqwest::Response, name: &str) -> Option<String> {
    answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .find(|pair| pair.starts_with(&format!("{name}=")))
}

/// Fetches `page` once to warm it, then [`FETCHES`] times, timed; weighs it with its assets.
async fn measure(
    client: &reqwest::Client,
    url: &str,
    cookie: &str,
    page: &str,
) -> anyhow::Result<PageFigures> {
    let fetch = |path: String| async move {
        let reply = client
            .get(format!("{url}{path}"))
            .header("cookie", cookie)
            .send()
            .await?;
        let status = reply.status();
        let body = reply.bytes().await?;
        anyhow::ensure!(status == 200, "{path}: {status}");
        anyhow::Ok(body)
    };
    let html = fetch(page.to_owned()).await?;
    // Microseconds.
    let mut times = Vec::with_capacity(FETCHES);
    for _ in 0..FETCHES {
        let at = Instant::now();
        fetch(page.to_owned()).await?;
        times.push(at.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    let text = String::from_utf8_lossy(&html);
    let mut with_assets = html.len();
    for asset in assets(&text) {
        with_assets += fetch(asset).await?.len();
    }
    let ms = |q: f64| super::stats::percentile(&times, q) as f64 / 1000.0;
    Ok(PageFigures {
        page: page.to_owned(),
        bytes: html.len(),
        with_assets,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
    })
}

/// The stylesheets and scripts a page loads, each once.
fn assets(html: &str) -> Vec<String> {
    let mut found: Vec<String> = ["href=\"", "src=\""]
        .iter()
        .flat_map(|attr| html.match_indices(attr).map(move |(at, _)| at + attr.len()))
        .filter_map(|start| {
            let rest = &html[start..];
            let path = &rest[..rest.find('"')?];
            // The templates escape `/`.
            let path = path.replace("&#x2f;", "/");
            path.starts_with("/ui/assets/").then_some(path)
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_assets_are_its_stylesheet_and_scripts_once() {
        let html = r#"<link rel="stylesheet" href="&#x2f;ui&#x2f;assets&#x2f;app.css">
            <a href="/ui/events">x</a><script src="/ui/assets/tail.js" defer></script>
            <script src="/ui/assets/tail.js"></script>"#;
        assert_eq!(assets(html), ["/ui/assets/app.css", "/ui/assets/tail.js"]);
    }
}
