//! The dashboard in a real browser: Debian's Chromium, driven through ChromeDriver's W3C
//! WebDriver protocol (plain JSON over HTTP), against a real hub. Screenshots of each page
//! are written to `target/ui-screenshots/`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp, spawn_app, tradingview_source};

/// The key W3C WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session, both ended when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

fn chromedriver() -> PathBuf {
    let found = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    found.expect(
        "ChromeDriver is not installed: apt-get install chromium chromium-driver \
         (.ci/run installs them)",
    )
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // In a process group of its own, so that the browser it starts ends with it.
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = tradehook::app::http_client().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(body) = r.bytes().await
                && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("/usr/bin/chromium");
        let created = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": binary,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,900"]
                    }
                }}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let value: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    async fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), json!({"url": url}))
            .await;
    }

    async fn url(&self) -> String {
        self.call("GET", &self.at("/url"), Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The element `css` names on the page.
    async fn find(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                &self.at("/element"),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    /// How many elements `css` names on the page.
    async fn count(&self, css: &str) -> usize {
        self.call(
            "POST",
            &self.at("/elements"),
            json!({"using": "css selector", "value": css}),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            "POST",
            &self.at(&format!("/element/{element}/value")),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            "POST",
            &self.at(&format!("/element/{element}/click")),
            json!({}),
        )
        .await;
    }

    /// The text the page shows.
    async fn text(&self) -> String {
        let body = self.find("body").await;
        self.call(
            "GET",
            &self.at(&format!("/element/{body}/text")),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// Writes what the browser shows to `target/ui-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.call("GET", &self.at("/screenshot"), Value::Null).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// Waits until the browser is at a URL ending in `suffix` (a form's answer may still be
    /// loading when its click returns); what it shows if it never gets there.
    async fn arrive(&self, suffix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.url().await.ends_with(suffix) {
            assert!(
                Instant::now() < deadline,
                "not at {suffix} but {}: {}",
                self.url().await,
                self.text().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The serious and critical accessibility violations axe-core (vendored in
    /// `tests/fixtures/axe`) finds on the page, against WCAG 2 A and AA.
    async fn accessibility_violations(&self) -> Vec<Value> {
        let axe = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/axe/axe.min.js"),
        )
        .unwrap();
        let script = format!(
            "{axe}\nconst done = arguments[arguments.length - 1];\n\
             axe.run(document, {{runOnly: ['wcag2a', 'wcag2aa']}})\n\
               .then(r => done(r.violations.filter(v => v.impact === 'serious' || \
                                                        v.impact === 'critical')\n\
                 .map(v => ({{id: v.id, impact: v.impact, help: v.help,\n\
                             nodes: v.nodes.map(n => n.html)}}))))\n\
               .catch(e => done([{{id: 'axe-error', help: String(e)}}]));"
        );
        let found = self
            .call(
                "POST",
                &self.at("/execute/async"),
                json!({"script": script, "args": []}),
            )
            .await;
        found.as_array().cloned().unwrap_or_default()
    }

    /// Screenshots the page as `name` and checks its accessibility.
    async fn check_page(&self, name: &str) {
        self.screenshot(name).await;
        let violations = self.accessibility_violations().await;
        assert!(
            violations.is_empty(),
            "{name}: accessibility violations: {}",
            serde_json::to_string_pretty(&violations).unwrap()
        );
    }

    /// Signs in through the form with `token`.
    async fn sign_in(&self, app: &TestApp, token: &str) {
        self.goto(&app.url("/ui/login")).await;
        self.type_into("#token", token).await;
        self.click("button[type=submit]").await;
        self.arrive("/ui").await;
    }
}

impl Drop for Browser {
    /// Ends ChromeDriver and the browsers it started (its process group): killing ChromeDriver
    /// alone left Chromium running after the tests.
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn a_trader_signs_in_and_finds_an_alert_in_a_real_browser() {
    let app = spawn_app().await;
    let path = tradingview_source(&app, "tv").await;
    let chat = crate::helpers::TestReceiver::start().await;
    app.create_endpoint(json!({"url": chat.url})).await;
    let browser = Browser::start().await;

    browser.goto(&app.url("/ui")).await;
    assert!(browser.url().await.ends_with("/ui/login"), "signed out");
    browser.check_page("login").await;
    browser.sign_in(&app, TOKEN).await;
    assert!(
        browser.url().await.ends_with("/ui"),
        "{}",
        browser.url().await
    );
    assert!(browser.text().await.contains("events received"));
    browser.check_page("overview").await;

    crate::helpers::alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
               "client_ref": "ui-1"}),
    )
    .await;
    browser.goto(&app.url("/ui/events")).await;
    // Searched by the source's name, as the trader knows it.
    browser.type_into("#source", "tv").await;
    browser.click("form[role=search] button").await;
    browser.arrive("&type=&source=tv").await;
    let shown = browser.text().await;
    assert!(
        shown.contains("BTC/USDT") && shown.contains("entry") && shown.contains(" tv "),
        "{shown}"
    );
    browser.check_page("events").await;

    // The live tail: an alert sent while the page is open appears on it, without a reload.
    browser.goto(&app.url("/ui/events")).await;
    let sent = Instant::now();
    crate::helpers::alert(
        &app,
        &path,
        json!({"ticker": "BYBIT:ETHUSDT.P", "action": "sell", "price": "2500",
               "client_ref": "ui-2"}),
    )
    .await;
    let deadline = sent + Duration::from_secs(10);
    while !browser.text().await.contains("ETH/USDT") {
        assert!(
            Instant::now() < deadline,
            "the alert never appeared in the live tail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the alert appeared in the live tail {} ms after it was sent",
        sent.elapsed().as_millis()
    );
    assert_eq!(browser.count("tr.fresh").await, 1);
    browser.click("tbody a").await;
    browser
        .arrive(&format!(
            "/ui/events/{}",
            app.events().await[0]["id"].as_str().unwrap()
        ))
        .await;
    let event = browser.text().await;
    // The newest, at the top: the alert the tail brought.
    assert!(
        event.contains("2500") && event.contains("ETH/USDT"),
        "{event}"
    );
    browser.check_page("event").await;
    browser.goto(&app.url("/ui/endpoints")).await;
    browser.check_page("endpoints").await;
    chat.wait_for(2).await;
    browser.goto(&app.url("/ui/deliveries")).await;
    browser.check_page("deliveries").await;
    browser.click("tbody a").await;
    let attempts = browser.text().await;
    assert!(attempts.contains("HTTP 200"), "{attempts}");
    browser.check_page("delivery").await;
    browser.goto(&app.url("/ui/sources")).await;
    browser.check_page("sources").await;
    // On a phone, at 3 a.m.: the wide tables scroll, and stay reachable by keyboard.
    browser
        .call(
            "POST",
            &browser.at("/window/rect"),
            json!({"width": 390, "height": 844}),
        )
        .await;
    browser.goto(&app.url("/ui/events")).await;
    browser.check_page("events-phone").await;
    browser.goto(&app.url("/ui")).await;
    browser.check_page("overview-phone").await;
    browser
        .call(
            "POST",
            &browser.at("/window/rect"),
            json!({"width": 1280, "height": 900}),
        )
        .await;
    app.post("/api/v1/accounts", &json!({"name": "paper-main"}))
        .await;
    browser.goto(&app.url("/ui/accounts")).await;
    browser.check_page("accounts").await;
    browser.click("tbody a").await;
    assert!(browser.text().await.contains("No open positions"));
    browser.check_page("account").await;

    // A read-only token's session, in a browser of its own, has no write controls.
    let reader = app.read_only_token().await;
    let watcher = Browser::start().await;
    watcher.sign_in(&app, &reader).await;
    assert!(watcher.text().await.contains("read-only"));
    watcher.goto(&browser.url().await).await;
    assert_eq!(watcher.count("form[action*='/retry']").await, 0);
}

/// Waits until the page, reloaded, shows `text`.
async fn shows_after_reload(browser: &Browser, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        browser
            .call("POST", &browser.at("/refresh"), json!({}))
            .await;
        if browser.text().await.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {text:?}: {}",
            browser.text().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failed_delivery_is_seen_and_retried_and_a_secret_is_rotated_in_a_real_browser() {
    let app = spawn_app().await;
    let receiver = crate::helpers::TestReceiver::start().await;
    receiver.script([crate::helpers::Answer::Status(500)]);
    app.create_endpoint(json!({"url": receiver.url, "retry_schedule": []}))
        .await;
    let id = app
        .publish("entry", json!({"pair": "BTC/USDT", "side": "long"}))
        .await;
    app.await_delivery_status(&id, "failed").await;

    let browser = Browser::start().await;
    browser.sign_in(&app, TOKEN).await;
    // The failure is on the overview, with its reason.
    let overview = browser.text().await;
    assert!(
        overview.contains("HTTP 500") && overview.contains(&id),
        "{overview}"
    );
    browser.check_page("overview-failure").await;

    // The receiver is back: retried from the event's page, the delivery succeeds.
    receiver.clear_script();
    browser.click(&format!("a[href='/ui/events/{id}']")).await;
    browser.arrive(&format!("/ui/events/{id}")).await;
    browser.click("form[action$='/retry'] button").await;
    browser.arrive(&format!("/ui/events/{id}")).await;
    shows_after_reload(&browser, "succeeded").await;
    assert_eq!(receiver.received().len(), 2);

    // A POST without the session's CSRF token is refused, even from the hub's own page.
    let delivery = app.delivery_of(&id).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = browser
        .call(
            "POST",
            &browser.at("/execute/async"),
            json!({"script": format!(
                "const done = arguments[arguments.length - 1];\
                 fetch('/ui/deliveries/{delivery}/retry', {{method: 'POST', \
                   headers: {{'content-type': 'application/x-www-form-urlencoded'}}, \
                   body: 'csrf=forged', redirect: 'manual'}}).then(r => done(r.status));"
            ), "args": []}),
        )
        .await;
    assert_eq!(status, 403, "a forged form is refused");

    // The delivery's timeline: the failure, then the retry's success.
    browser
        .goto(&app.url(&format!("/ui/deliveries/{delivery}")))
        .await;
    let timeline = browser.text().await;
    assert!(
        timeline.contains("HTTP 500") && timeline.contains("HTTP 200"),
        "{timeline}"
    );
    browser.check_page("delivery-retried").await;

    // A replay of the endpoint's failures, and its progress page.
    let endpoint = app.delivery_of(&id).await["endpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .goto(&app.url(&format!("/ui/deliveries?endpoint={endpoint}")))
        .await;
    browser.click("form[action$='/recover'] button").await;
    browser.arrive("&total=0").await;
    let progress = browser.text().await;
    assert!(progress.contains("The replay is over"), "{progress}");
    browser.check_page("replay").await;

    // A rotated secret is shown once.
    browser.goto(&app.url("/ui/endpoints")).await;
    browser.click("form[action$='/rotate'] button").await;
    browser.arrive("/rotate").await;
    let shown = browser.text().await;
    let at = shown.find("whsec_").expect("the new secret is shown");
    let secret: String = shown[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    browser.check_page("secret").await;
    browser.goto(&app.url("/ui/endpoints")).await;
    assert!(!browser.text().await.contains(&secret), "shown once only");

    // Send a test from the endpoints page: its first attempt is shown.
    browser.click("form[action$='/test'] button").await;
    browser.arrive("/test").await;
    assert!(browser.text().await.contains("HTTP 200"));
    browser.check_page("tested").await;
    browser.goto(&app.url("/ui/endpoints")).await;
    browser.click("a[href$='/templates']").await;
    browser.arrive("/templates").await;
    browser.click("button[value=preview]").await;
    browser.arrive("/templates").await;
    // The newest event it takes is the test's ping, sent as it is stored.
    let preview = browser.text().await;
    assert!(
        preview.contains("From the newest event it takes") && preview.contains("\"ping\""),
        "{preview}"
    );
    // Typed, the preview follows without a click.
    let field = browser.find("#templates").await;
    browser
        .call(
            "POST",
            &browser.at(&format!("/element/{field}/clear")),
            json!({}),
        )
        .await;
    browser
        .type_into("#templates", r#"{"*": {"text": "typed live"}}"#)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !browser.text().await.contains("typed live\"") {
        assert!(
            Instant::now() < deadline,
            "the preview did not follow the typing: {}",
            browser.text().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.check_page("templates").await;
}

impl Browser {
    /// Makes the page follow a dark (`true`) or light system theme, as the operating system's
    /// setting would.
    async fn prefer_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.call(
            "POST",
            &self.at("/goog/cdp/execute"),
            json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]}}),
        )
        .await;
    }

    /// The page's background colour, as computed.
    async fn background(&self) -> String {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            json!({"script": "return getComputedStyle(document.body).backgroundColor;",
                   "args": []}),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }
}

#[tokio::test]
async fn a_portal_link_shows_one_applications_endpoints_in_a_real_browser_light_and_dark() {
    let app = spawn_app().await;
    let receiver = crate::helpers::TestReceiver::start().await;
    let mut endpoints = Vec::new();
    for name in ["Acme Signals", "Other Desk"] {
        let made = app
            .post("/api/v1/applications", &json!({"name": name}))
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
        let application = made.json()["id"].as_str().unwrap().to_owned();
        let endpoint = app
            .post(
                &format!("/api/v1/endpoints?application={application}"),
                &json!({"url": receiver.url}),
            )
            .await;
        assert_eq!(endpoint.status, 201, "{}", endpoint.text);
        endpoints.push((
            application,
            endpoint.json()["id"].as_str().unwrap().to_owned(),
        ));
    }
    let [(a, endpoint_a), (_, endpoint_b)] = <[_; 2]>::try_from(endpoints).unwrap();
    let link = app
        .post(
            &format!("/api/v1/applications/{a}/portal-access"),
            &json!({"expiry": 600}),
        )
        .await;
    assert_eq!(link.status, 201, "{}", link.text);
    let token = link.json()["token"].as_str().unwrap().to_owned();
    let url = app.url(&format!("/portal#token={token}"));

    let browser = Browser::start().await;
    // The link signs in by itself, and the token leaves the address bar.
    browser.goto(&url).await;
    browser.arrive("/ui/endpoints").await;
    let shown = browser.text().await;
    assert!(shown.contains(&endpoint_a), "{shown}");
    assert!(!shown.contains(&endpoint_b), "{shown}");
    assert!(shown.contains("Acme Signals"), "{shown}");
    assert_eq!(browser.count("a[href='/ui/sources']").await, 0);
    assert_eq!(browser.count("a[href='/ui/events']").await, 0);
    browser.check_page("portal-endpoints").await;
    let light = browser.background().await;

    browser.goto(&app.url("/ui/deliveries")).await;
    assert!(!browser.text().await.contains(&endpoint_b));
    browser.check_page("portal-deliveries").await;

    // The system's dark theme, followed; every page still passes.
    browser.prefer_dark(true).await;
    browser.goto(&app.url("/ui/endpoints")).await;
    let dark = browser.background().await;
    assert_ne!(light, dark, "the page follows the dark setting");
    browser.check_page("portal-endpoints-dark").await;

    // Opened again, the link is refused and says why.
    browser.goto(&url).await;
    browser.arrive("/ui/portal").await;
    let refused = browser.text().await;
    assert!(refused.contains("used already"), "{refused}");
    browser.check_page("portal-link-used-dark").await;

    // Signed out, the portal asks for a new link.
    browser.goto(&app.url("/ui/endpoints")).await;
    browser.click("form.signout button").await;
    browser.arrive("/portal").await;
    browser.check_page("portal-signed-out-dark").await;

    // The operator's pages, dark.
    browser.sign_in(&app, TOKEN).await;
    browser.check_page("overview-dark").await;
    for (path, name) in [
        ("/ui/events", "events-dark"),
        ("/ui/deliveries", "deliveries-dark"),
        ("/ui/endpoints", "endpoints-dark"),
        ("/ui/sources", "sources-dark"),
        ("/ui/accounts", "accounts-dark"),
    ] {
        browser.goto(&app.url(path)).await;
        browser.check_page(name).await;
    }
}
