//! The dashboard at `/ui` over real HTTP, as a browser uses it: cookies, forms and redirects
//! by hand, so that each header the hub sends is checked.

use serde_json::json;

use crate::helpers::{Answer, TOKEN, TestApp, TestReceiver, spawn_app};

/// A browser's view of the hub: it keeps the cookies the hub sets and follows nothing.
struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

/// One answer: status, headers, body.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The value of the hidden `csrf` field of the page's first form.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form") + 19;
        self.body[at..at + self.body[at..].find('"').unwrap()].to_owned()
    }
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            http: {
                let _ = tradehook::app::http_client();
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap()
            },
            cookies: Default::default(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let answer = request
            .header("cookie", cookie.join("; "))
            .send()
            .await
            .unwrap();
        for set in answer.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if set.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status: answer.status().as_u16(),
            headers: answer.headers().clone(),
            // As a browser shows it: the templates escape `/` too.
            body: answer.text().await.unwrap().replace("&#x2f;", "/"),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(self.app.url(path));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = self
            .http
            .post(self.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    /// Signs in with `token` through the form; the answer to the form.
    async fn sign_in(&mut self, token: &str) -> Page {
        let form = self.get("/ui/login").await;
        let csrf = form.csrf();
        self.post("/ui/login", &[("token", token), ("csrf", &csrf)])
            .await
    }
}

#[tokio::test]
async fn a_token_signs_in_to_pages_that_show_the_events_and_send_strict_headers() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    let first = browser.get("/ui").await;
    assert_eq!(
        (first.status, first.location()),
        (303, "/ui/login"),
        "signed out"
    );

    let form = browser.get("/ui/login").await;
    assert_eq!(form.status, 200);
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(form.headers["x-content-type-options"], "nosniff");
    // A form without its cookie's CSRF value is refused, and so is a wrong token.
    let forged = browser
        .post("/ui/login", &[("token", TOKEN), ("csrf", "forged")])
        .await;
    assert_eq!(forged.status, 403);
    let wrong = browser.sign_in("not-a-token-of-this-hub").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not one of the hub"), "{}", wrong.body);

    let signed = browser.sign_in(TOKEN).await;
    assert_eq!((signed.status, signed.location()), (303, "/ui"));
    let cookie = signed
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("tradehook_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    let id = app
        .publish(
            "entry",
            json!({"pair": "BTC/USDT", "side": "long", "price": 64000, "enter_tag": "<b>x</b>"}),
        )
        .await;
    let overview = browser.get("/ui").await;
    assert_eq!(overview.status, 200);
    assert!(
        overview.body.contains("events received"),
        "{}",
        overview.body
    );
    // The per-minute charts, drawn by the hub as SVG: the event is in this minute's bar.
    assert!(
        overview
            .body
            .contains("Events received per minute, last hour: 1<"),
        "{}",
        overview.body
    );
    assert_eq!(overview.body.matches("<rect ").count(), 1, "one bar");
    let events = browser.get("/ui/events?type=entry").await;
    assert_eq!(events.status, 200);
    assert!(events.body.contains(&id) && events.body.contains("BTC/USDT"));
    let none = browser.get("/ui/events?type=exit").await;
    assert!(!none.body.contains(&id));
    let event = browser.get(&format!("/ui/events/{id}")).await;
    assert_eq!(event.status, 200);
    // Values are escaped, never markup.
    assert!(
        event.body.contains("&lt;b&gt;x&lt;/b&gt;"),
        "{}",
        event.body
    );
    assert!(!event.body.contains("<b>x</b>"));
    assert!(event.body.contains("Published through the API"));
    // The body as stored and delivered, beside the normalised data.
    assert!(
        event.body.contains("Body, as stored and delivered")
            && event
                .body
                .contains(&format!("{{&quot;id&quot;:&quot;{id}&quot;")),
        "{}",
        event.body
    );
    for page in [&overview, &events, &event] {
        assert!(!page.body.contains(TOKEN), "no token on a page");
        assert!(page.headers.contains_key("content-security-policy"));
    }
    let missing = browser.get("/ui/events/evt_nope").await;
    assert_eq!(missing.status, 404);

    // Signing out ends the session.
    let csrf = overview.csrf();
    let out = browser.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (303, "/ui/login"));
    let after = browser.get("/ui/events").await;
    assert_eq!(after.status, 303);
    let tail = browser.get("/ui/events/stream").await;
    assert_eq!(tail.status, 401, "no live tail without a session");
}

#[tokio::test]
async fn a_read_only_session_sees_no_retry_and_a_forged_form_is_refused() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(500)]);
    app.create_endpoint(json!({"url": receiver.url, "retry_schedule": []}))
        .await;
    let id = app.publish("entry", json!({"pair": "ETH/USDT"})).await;
    let failed = app.await_delivery_status(&id, "failed").await;
    let delivery = failed["id"].as_str().unwrap().to_owned();

    let reader = app
        .post(
            "/api/v1/tokens",
            &json!({"name": "night-watch", "scope": "read_only"}),
        )
        .await
        .json();
    let mut watcher = Browser::new(&app);
    assert_eq!(
        watcher
            .sign_in(reader["token"].as_str().unwrap())
            .await
            .status,
        303
    );
    let page = watcher.get(&format!("/ui/events/{id}")).await;
    assert!(page.body.contains("read-only") && page.body.contains("failed"));
    assert!(
        !page.body.contains(">Retry<"),
        "no write control: {}",
        page.body
    );
    let endpoints = watcher.get("/ui/endpoints").await;
    assert!(endpoints.body.contains("HTTP 500"), "{}", endpoints.body);
    assert!(!endpoints.body.contains("Rotate secret") && !endpoints.body.contains("Disable"));
    let csrf = page.csrf();
    let refused = watcher
        .post(
            &format!("/ui/deliveries/{delivery}/retry"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, 403);

    // The operator's session has the button; a form from elsewhere is refused, its own works.
    let mut operator = Browser::new(&app);
    operator.sign_in(TOKEN).await;
    let page = operator.get(&format!("/ui/events/{id}")).await;
    assert!(page.body.contains(">Retry<"));
    let forged = operator
        .post(
            &format!("/ui/deliveries/{delivery}/retry"),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let csrf = page.csrf();
    let retried = operator
        .post(
            &format!("/ui/deliveries/{delivery}/retry"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        (retried.status, retried.location()),
        (303, format!("/ui/events/{id}").as_str())
    );
    // The receiver answers 200 now: the retried delivery succeeds.
    app.await_delivery_status(&id, "succeeded").await;

    // Deleting the token ends the sessions opened with it.
    let deleted = app
        .send(
            "DELETE",
            &format!("/api/v1/tokens/{}", reader["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(deleted.status < 300, "{}", deleted.text);
    let ended = watcher.get("/ui").await;
    assert_eq!((ended.status, ended.location()), (303, "/ui/login"));
}

#[tokio::test]
async fn endpoints_show_their_health_and_are_disabled_enabled_and_rotated_from_the_dashboard() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(503), Answer::Status(503)]);
    let endpoint = app
        .create_endpoint(json!({"url": receiver.url, "retry_schedule": []}))
        .await;
    let endpoint_id = endpoint["id"].as_str().unwrap().to_owned();
    let mut id = String::new();
    for pair in ["SOL/USDT", "ADA/USDT"] {
        id = app.publish("entry", json!({"pair": pair})).await;
        app.await_delivery_status(&id, "failed").await;
    }

    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let list = browser.get("/ui/endpoints").await;
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains(&endpoint_id) && list.body.contains("HTTP 503"),
        "{}",
        list.body
    );
    assert!(list.body.contains("enabled"));
    // Two failures in a row, and since when.
    assert!(
        list.body
            .contains("<span class=\"status failed\">2</span><br><span class=\"hint\">since "),
        "{}",
        list.body
    );
    assert!(list.body.contains("p50 / p95 / p99"));

    let csrf = list.csrf();
    let path = format!("/ui/endpoints/{endpoint_id}/enabled");
    let off = browser
        .post(&path, &[("csrf", &csrf), ("enabled", "false")])
        .await;
    assert_eq!((off.status, off.location()), (303, "/ui/endpoints"));
    let shown = app
        .get(&format!("/api/v1/endpoints/{endpoint_id}"))
        .await
        .json();
    assert_eq!(shown["enabled"], false);
    let list = browser.get("/ui/endpoints").await;
    assert!(
        list.body.contains("disabled by an operator"),
        "{}",
        list.body
    );
    browser
        .post(&path, &[("csrf", &csrf), ("enabled", "true")])
        .await;
    let shown = app
        .get(&format!("/api/v1/endpoints/{endpoint_id}"))
        .await
        .json();
    assert_eq!(shown["enabled"], true);

    // A new secret is shown once, on the answer to the form, and nowhere after.
    let healthy = TestReceiver::start().await;
    let other = app.create_endpoint(json!({"url": healthy.url})).await;
    let other_id = other["id"].as_str().unwrap();
    let rotated = browser
        .post(
            &format!("/ui/endpoints/{other_id}/rotate"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(rotated.status, 200);
    let at = rotated.body.find("whsec_").expect("the new secret");
    let secret = &rotated.body[at..at + rotated.body[at..].find('<').unwrap()];
    assert_eq!(rotated.headers["cache-control"], "no-store");
    let list = browser.get("/ui/endpoints").await;
    assert!(!list.body.contains(secret));
    let event = browser.get(&format!("/ui/events/{id}")).await;
    assert!(!event.body.contains(secret));
    // The hub signs with it from now on.
    app.publish("entry", json!({"pair": "ETH/USDT"})).await;
    let signed = healthy.wait_for(1).await;
    let last = signed.last().unwrap();
    assert!(last.header("webhook-signature").is_some());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let check = tradehook::security::sign::verify_standard(
        secret,
        last.header("webhook-id").unwrap(),
        last.header("webhook-timestamp").unwrap(),
        last.header("webhook-signature").unwrap(),
        &last.body,
        now,
        300,
    );
    assert!(check.is_ok(), "signed with the secret shown: {check:?}");

    // Send a test: a ping through the pipeline, and its first attempt shown.
    let tested = browser
        .post(
            &format!("/ui/endpoints/{other_id}/test"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(tested.status, 200, "{}", tested.body);
    assert!(
        tested.body.contains("Delivered") && tested.body.contains("HTTP 200"),
        "{}",
        tested.body
    );
    assert_eq!(healthy.wait_for(2).await[1].json()["type"], "ping");
}

#[tokio::test]
async fn deliveries_show_their_attempts_and_an_endpoints_failures_are_replayed_from_the_dashboard()
{
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(500), Answer::Status(500)]);
    let endpoint = app
        .create_endpoint(json!({"url": receiver.url, "retry_schedule": []}))
        .await;
    let endpoint_id = endpoint["id"].as_str().unwrap().to_owned();
    let first = app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    let second = app.publish("exit", json!({"pair": "BTC/USDT"})).await;
    let failed = app.await_delivery_status(&first, "failed").await;
    app.await_delivery_status(&second, "failed").await;
    receiver.clear_script();

    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let list = browser
        .get(&format!(
            "/ui/deliveries?endpoint={endpoint_id}&status=failed"
        ))
        .await;
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains(&first) && list.body.contains(&second),
        "{}",
        list.body
    );
    let bad = browser.get("/ui/deliveries?status=lost").await;
    assert_eq!(bad.status, 400);

    let delivery = failed["id"].as_str().unwrap();
    let timeline = browser.get(&format!("/ui/deliveries/{delivery}")).await;
    assert_eq!(timeline.status, 200);
    assert!(
        timeline.body.contains("HTTP 500") && timeline.body.contains(" ms"),
        "{}",
        timeline.body
    );

    // Both failures replayed at once, in event order, now that the receiver answers.
    let csrf = list.csrf();
    let replay = browser
        .post(
            &format!("/ui/endpoints/{endpoint_id}/recover"),
            &[("csrf", &csrf), ("hours", "1")],
        )
        .await;
    assert_eq!(replay.status, 303, "{}", replay.body);
    let progress_at = replay.location().to_owned();
    assert!(
        progress_at.starts_with(&format!("/ui/endpoints/{endpoint_id}/replay?"))
            && progress_at.ends_with("&total=2"),
        "{progress_at}"
    );
    app.await_delivery_status(&first, "succeeded").await;
    app.await_delivery_status(&second, "succeeded").await;
    // The progress page counts both delivered and stops following.
    let progress = browser.get(&progress_at).await;
    assert_eq!(progress.status, 200);
    assert!(
        progress.body.contains("2 of 2 done") && progress.body.contains("The replay is over"),
        "{}",
        progress.body
    );
    assert!(!progress.body.contains("http-equiv=\"refresh\""));
    let heard = receiver.wait_for(4).await;
    let order: Vec<String> = heard[2..]
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, [first.clone(), second.clone()], "in event order");
}

#[tokio::test]
async fn sources_show_what_to_paste_and_an_account_is_halted_and_resumed_from_the_dashboard() {
    let app = spawn_app().await;
    let source = app
        .create_source(json!({"name": "tv", "format": "tradingview",
                              "auth": {"type": "token"}}))
        .await;
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let sources = browser.get("/ui/sources").await;
    assert_eq!(sources.status, 200);
    assert!(sources.body.contains("/in/tv") && sources.body.contains("{{strategy.order.action}}"));
    if let Some(secret) = source["secret"].as_str() {
        assert!(!sources.body.contains(secret), "no secret on the page");
    }

    // A message tried on the source shows what it becomes; nothing is stored.
    let csrf = sources.csrf();
    let message = json!({"ticker": "BINANCE:ETHUSDT.P", "action": "buy", "price": "2500",
                         "passphrase": "do-not-show-me", "client_ref": "try-9"});
    let tried = browser
        .post(
            "/ui/sources/tv/try",
            &[("csrf", &csrf), ("message", &message.to_string())],
        )
        .await;
    assert_eq!(tried.status, 200);
    assert!(
        tried.body.contains("Understood as <code>entry</code>") && tried.body.contains("ETH/USDT"),
        "{}",
        tried.body
    );
    assert!(!tried.body.contains("do-not-show-me"));
    let broken = browser
        .post(
            "/ui/sources/tv/try",
            &[("csrf", &csrf), ("message", "{\"ticker\": ")],
        )
        .await;
    assert!(
        broken
            .body
            .contains("Refused with 400 <code>malformed_body</code>"),
        "{}",
        broken.body
    );
    let unknown = browser
        .post(
            "/ui/sources/nowhere/try",
            &[("csrf", &csrf), ("message", "{}")],
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert!(app.events().await.is_empty(), "trying stores nothing");

    let created = app
        .post("/api/v1/accounts", &json!({"name": "paper-main"}))
        .await
        .json();
    let account = created["id"].as_str().unwrap().to_owned();
    app.create_endpoint(
        json!({"url": "account:paper-main", "event_types": ["entry", "exit"],
                               "orders": {"symbols": {"BINANCE:BTCUSDT": "BTC/USDT"},
                                          "size": {"base": 0.05}}}),
    )
    .await;
    let path = crate::helpers::tradingview_source(&app, "tv2").await;
    crate::helpers::alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT", "action": "buy", "price": "64000",
               "client_ref": "d-1"}),
    )
    .await;
    crate::helpers::settled_orders(&app, "paper-main", 1).await;
    // The alert's page shows what TradingView sent, as it arrived.
    let alert_id = app
        .events()
        .await
        .into_iter()
        .find(|e| e["type"] == "entry")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = browser.get(&format!("/ui/events/{alert_id}")).await;
    let received = &page.body[page.body.find("<h2>Received</h2>").unwrap()..];
    assert!(
        received.contains("&quot;ticker&quot;:&quot;BINANCE:BTCUSDT&quot;")
            && received.contains("&quot;client_ref&quot;:&quot;d-1&quot;"),
        "{received}"
    );
    let list = browser.get("/ui/accounts").await;
    assert!(list.body.contains("paper-main") && list.body.contains("trading"));
    let page = browser.get(&format!("/ui/accounts/{account}")).await;
    assert!(
        page.body.contains("BTC/USDT") && page.body.contains("long"),
        "{}",
        page.body
    );
    assert!(page.body.contains("filled"));

    // The kill switch, from the page: the next entry is blocked with the reason.
    let csrf = page.csrf();
    let halted = browser
        .post(
            &format!("/ui/accounts/{account}/halt"),
            &[("csrf", &csrf), ("reason", "exchange outage")],
        )
        .await;
    assert_eq!(halted.status, 303);
    let page = browser.get(&format!("/ui/accounts/{account}")).await;
    assert!(page.body.contains("halted") && page.body.contains("exchange outage"));
    assert!(page.body.contains("Resume trading"));
    crate::helpers::alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT", "action": "buy", "price": "64000",
               "client_ref": "d-2"}),
    )
    .await;
    let orders = crate::helpers::settled_orders(&app, "paper-main", 2).await;
    assert_eq!(orders[0]["status"], "blocked", "{}", orders[0]);
    let resumed = browser
        .post(
            &format!("/ui/accounts/{account}/resume"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(resumed.status, 303);
    let shown = app.get(&format!("/api/v1/accounts/{account}")).await.json();
    assert!(shown["halted"].is_null(), "{shown}");

    // Closed at a gain, the trade is on the equity curve.
    crate::helpers::alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT", "action": "sell", "market_position": "flat",
               "price": "66000", "client_ref": "d-3"}),
    )
    .await;
    let orders = crate::helpers::settled_orders(&app, "paper-main", 3).await;
    assert_eq!(orders[0]["status"], "filled", "{}", orders[0]);
    let page = browser.get(&format!("/ui/accounts/{account}")).await;
    assert!(
        page.body.contains("<polyline points=\"0.0,")
            && page
                .body
                .contains("The balance after each fill, from 10000.0 to 100"),
        "{}",
        page.body
    );
    assert!(page.body.contains("1, 100.0 % won"), "{}", page.body);
}

#[tokio::test]
async fn templates_are_previewed_from_a_stored_event_and_saved_from_the_dashboard() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let endpoint = app
        .create_endpoint(json!({"url": receiver.url, "event_types": ["entry"]}))
        .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    app.publish("entry", json!({"pair": "BTC/USDT", "price": 64000}))
        .await;
    receiver.wait_for(1).await;

    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let path = format!("/ui/endpoints/{id}/templates");
    let form = browser.get(&path).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("<textarea"));
    let csrf = form.csrf();
    let template = r#"{"entry": {"text": "{pair} at {price}"}}"#;
    let preview = browser
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("templates", template),
                ("action", "preview"),
            ],
        )
        .await;
    assert!(
        preview.body.contains("BTC/USDT at 64000"),
        "{}",
        preview.body
    );
    let shown = app.get(&format!("/api/v1/endpoints/{id}")).await.json();
    assert!(
        shown.get("templates").is_none(),
        "a preview saves nothing: {shown}"
    );
    let broken = browser
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("templates", r#"{"entry": {"text": "{nowhere}"}}"#),
                ("action", "preview"),
            ],
        )
        .await;
    assert!(broken.body.contains("nowhere"), "{}", broken.body);
    let garbled = browser
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("templates", "{entry"),
                ("action", "preview"),
            ],
        )
        .await;
    assert!(
        garbled.body.contains("not a JSON object"),
        "{}",
        garbled.body
    );

    let saved = browser
        .post(
            &path,
            &[("csrf", &csrf), ("templates", template), ("action", "save")],
        )
        .await;
    assert!(saved.body.contains("Saved"), "{}", saved.body);
    app.publish("entry", json!({"pair": "ETH/USDT", "price": 2500}))
        .await;
    let heard = receiver.wait_for(2).await;
    assert_eq!(heard[1].json(), json!({"text": "ETH/USDT at 2500"}));

    // A read-only session previews, and may not save.
    let reader = app.read_only_token().await;
    let mut watcher = Browser::new(&app);
    watcher.sign_in(&reader).await;
    let form = watcher.get(&path).await;
    assert!(!form.body.contains("value=\"save\""), "{}", form.body);
    let csrf = form.csrf();
    let other = r#"{"entry": {"text": "{pair} only"}}"#;
    let previewed = watcher
        .post(
            &path,
            &[("csrf", &csrf), ("templates", other), ("action", "preview")],
        )
        .await;
    assert_eq!(previewed.status, 200);
    assert!(
        previewed.body.contains("ETH/USDT only"),
        "{}",
        previewed.body
    );
    let refused = watcher
        .post(
            &path,
            &[("csrf", &csrf), ("templates", other), ("action", "save")],
        )
        .await;
    assert_eq!(refused.status, 403);
    let forged = watcher
        .post(
            &path,
            &[
                ("csrf", "forged"),
                ("templates", other),
                ("action", "preview"),
            ],
        )
        .await;
    assert_eq!(forged.status, 403);
}

/// An application made by the operator, with one endpoint: (application id, endpoint id).
async fn application_with_endpoint(app: &TestApp, name: &str, url: &str) -> (String, String) {
    let made = app
        .post("/api/v1/applications", &json!({"name": name}))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let endpoint = app
        .post(
            &format!("/api/v1/endpoints?application={id}"),
            &json!({"url": url}),
        )
        .await;
    assert_eq!(endpoint.status, 201, "{}", endpoint.text);
    (id, endpoint.json()["id"].as_str().unwrap().to_owned())
}

/// A portal link of `application`: its token.
async fn portal_link(app: &TestApp, application: &str, read_only: bool) -> String {
    let link = app
        .post(
            &format!("/api/v1/applications/{application}/portal-access"),
            &json!({"read_only": read_only}),
        )
        .await;
    assert_eq!(link.status, 201, "{}", link.text);
    link.json()["token"].as_str().unwrap().to_owned()
}

impl Browser<'_> {
    /// Opens a portal link as its landing page does: the answer to its form.
    async fn open_portal(&mut self, token: &str) -> Page {
        let landing = self.get("/portal").await;
        assert_eq!(landing.status, 200);
        assert!(
            landing.body.contains("src=\"/ui/assets/portal.js\""),
            "{}",
            landing.body
        );
        let csrf = landing.csrf();
        self.post("/ui/portal", &[("token", token), ("csrf", &csrf)])
            .await
    }
}

#[tokio::test]
async fn a_portal_link_opens_its_applications_pages_once_and_none_of_the_operators() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (a, endpoint_a) = application_with_endpoint(&app, "Acme Signals", &receiver.url).await;
    let (_b, endpoint_b) = application_with_endpoint(&app, "Other Desk", &receiver.url).await;
    let token = portal_link(&app, &a, false).await;

    let mut browser = Browser::new(&app);
    let opened = browser.open_portal(&token).await;
    assert_eq!(
        (opened.status, opened.location()),
        (303, "/ui/endpoints"),
        "{}",
        opened.body
    );
    let home = browser.get("/ui").await;
    assert_eq!((home.status, home.location()), (303, "/ui/endpoints"));
    let endpoints = browser.get("/ui/endpoints").await;
    assert_eq!(endpoints.status, 200);
    assert!(endpoints.body.contains(&endpoint_a), "{}", endpoints.body);
    assert!(!endpoints.body.contains(&endpoint_b), "{}", endpoints.body);
    assert!(endpoints.body.contains("Acme Signals"));
    // The operator's navigation is not there, and neither are the operator's pages.
    assert!(!endpoints.body.contains("href=\"/ui/sources\""));
    for path in ["/ui/events", "/ui/sources", "/ui/accounts"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 403, "{path}");
        assert!(
            page.body.contains("this page is the operator"),
            "{}",
            page.body
        );
    }
    assert_eq!(browser.get("/ui/events/stream").await.status, 401);
    let deliveries = browser.get("/ui/deliveries").await;
    assert!(
        !deliveries.body.contains(&endpoint_b),
        "{}",
        deliveries.body
    );

    // Its own endpoint's secret is rotated and shown once; another application's is not
    // there at all.
    let csrf = endpoints.csrf();
    let other = browser
        .post(
            &format!("/ui/endpoints/{endpoint_b}/rotate"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(other.status, 404, "{}", other.body);
    let rotated = browser
        .post(
            &format!("/ui/endpoints/{endpoint_a}/rotate"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert!(rotated.body.contains("whsec_"));

    // The link opened once.
    let mut second = Browser::new(&app);
    let again = second.open_portal(&token).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("used already"), "{}", again.body);
    assert!(!again.headers.contains_key("location"));

    // An expired link is refused the same way.
    let late = portal_link(&app, &a, false).await;
    rusqlite::Connection::open(&app.db_path)
        .unwrap()
        .execute(
            "update portal_links set expires_at = 1 where used_at is null",
            [],
        )
        .unwrap();
    assert_eq!(second.open_portal(&late).await.status, 409);

    // Expiring the application's portal access ends the open session.
    let expired = app
        .post(
            &format!("/api/v1/applications/{a}/portal-access/expire-all"),
            &json!({}),
        )
        .await;
    assert_eq!(expired.status, 200, "{}", expired.text);
    let after = browser.get("/ui/endpoints").await;
    assert_eq!((after.status, after.location()), (303, "/ui/login"));
}

#[tokio::test]
async fn a_read_only_portal_link_shows_no_write_controls_and_refuses_writes() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (a, endpoint) = application_with_endpoint(&app, "Acme Signals", &receiver.url).await;
    let mut browser = Browser::new(&app);
    let opened = browser
        .open_portal(&portal_link(&app, &a, true).await)
        .await;
    assert_eq!(opened.status, 303, "{}", opened.body);
    let page = browser.get("/ui/endpoints").await;
    assert!(page.body.contains(&endpoint));
    assert!(page.body.contains("read-only"));
    assert!(!page.body.contains("/rotate"), "{}", page.body);
    let csrf = page.csrf();
    let refused = browser
        .post(
            &format!("/ui/endpoints/{endpoint}/rotate"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(refused.status, 403);
    let signed_out = browser.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!((signed_out.status, signed_out.location()), (303, "/portal"));
}

#[tokio::test]
async fn events_are_found_by_id_pair_dedupe_key_and_time_in_the_api_and_the_dashboard() {
    let app = spawn_app().await;
    let auth = format!("Bearer {TOKEN}");
    let mut ids = Vec::new();
    for (pair, key) in [("BTC/USDT", "sig-btc"), ("ETH/USDT", "sig-eth")] {
        let reply = app
            .post_raw(
                "/api/v1/events",
                &[("authorization", &auth), ("idempotency-key", key)],
                json!({"type": "entry", "data": {"pair": pair, "side": "long"}}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        app.ids("/api/v1/events?pair=ETH%2FUSDT").await,
        [ids[1].clone()]
    );
    assert_eq!(
        app.ids("/api/v1/events?dedupe_key=sig-btc").await,
        [ids[0].clone()]
    );
    assert!(app.ids("/api/v1/events?pair=SOL%2FUSDT").await.is_empty());

    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let by_pair = browser.get("/ui/events?pair=ETH%2FUSDT").await;
    assert_eq!(by_pair.status, 200);
    assert!(by_pair.body.contains(&ids[1]) && !by_pair.body.contains(&ids[0]));
    // The live tail follows the same search.
    assert!(by_pair.body.contains("pair=ETH%2FUSDT"), "{}", by_pair.body);
    let by_key = browser.get("/ui/events?key=sig-btc").await;
    assert!(by_key.body.contains(&ids[0]) && !by_key.body.contains(&ids[1]));
    let by_id = browser.get(&format!("/ui/events?id={}", ids[1])).await;
    assert_eq!(
        (by_id.status, by_id.location()),
        (303, format!("/ui/events/{}", ids[1]).as_str())
    );
    // A browser's datetime field, taken as UTC: tomorrow on holds nothing yet.
    let tomorrow = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24))
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M")
        .to_string();
    let later = browser.get(&format!("/ui/events?from={tomorrow}")).await;
    assert_eq!(later.status, 200);
    assert!(!later.body.contains(&ids[0]) && later.body.contains("No events match"));
    let until_tomorrow = browser.get(&format!("/ui/events?to={tomorrow}")).await;
    assert!(until_tomorrow.body.contains(&ids[0]) && until_tomorrow.body.contains(&ids[1]));
    let bad = browser.get("/ui/events?from=yesterday").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("2026-12-04T09:30"), "{}", bad.body);
}

#[tokio::test]
async fn the_endpoints_page_shows_a_hundred_at_a_time() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let mut ids = Vec::new();
    for _ in 0..101 {
        let made = app.create_endpoint(json!({"url": receiver.url})).await;
        ids.push(made["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let first = browser.get("/ui/endpoints").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.matches("<code>ep_").count(), 100);
    assert!(first.body.contains(&ids[99]) && !first.body.contains(&ids[100]));
    assert!(first.body.contains("101 endpoints in all"));
    let next = format!("/ui/endpoints?after={}", ids[99]);
    assert!(
        first.body.contains(&format!("href=\"{next}\"")),
        "{}",
        first.body
    );
    let second = browser.get(&next).await;
    assert_eq!(second.body.matches("<code>ep_").count(), 1);
    assert!(second.body.contains(&ids[100]));
    assert!(second.body.contains("First page") && !second.body.contains("Next page"));
}
