//! What endpoints receive: chat-service presets, templates, Freqtrade's own bodies, and the
//! services' ways of saying no.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::helpers::{Answer, TestApp, TestReceiver, spawn_app};

/// A Freqtrade source; returns its ingest path.
async fn freqtrade_source(app: &TestApp) -> String {
    let s = app
        .create_source(json!({"name": "ft", "format": "freqtrade"}))
        .await;
    format!("/in/ft/{}", s["secret"].as_str().unwrap())
}

async fn send_json(app: &TestApp, path: &str, body: Value) -> String {
    let reply = app
        .post_raw(
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn entry() -> Value {
    json!({
        "type": "entry", "exchange": "binance", "pair": "BTC/USDT", "direction": "Long",
        "trade_id": "42", "open_rate": "42150.5", "amount": "0.002", "stake_amount": "84.3",
        "stake_currency": "USDT", "leverage": "3.0", "enter_tag": "rsi<30 & vol",
        "open_date": "2024-01-15 08:00:00+00:00"
    })
}

fn exit_fill(profit_ratio: &str) -> Value {
    json!({
        "type": "exit_fill", "pair": "ETH/USDT", "direction": "Short", "trade_id": "7",
        "close_rate": "3100.0", "amount": "1.5", "profit_ratio": profit_ratio,
        "profit_amount": "-12.5", "stake_currency": "USDT", "exit_reason": "stop_loss",
        "close_date": "2024-01-15 14:00:00+00:00"
    })
}

#[tokio::test]
async fn discord_gets_content_or_an_embed_with_colour_and_fields() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let discord = TestReceiver::start().await;
    let embed = TestReceiver::start().await;
    app.create_endpoint(json!({"url": discord.url, "preset": "discord", "username": "Bot"}))
        .await;
    app.create_endpoint(json!({"url": embed.url, "preset": "discord", "embed": true}))
        .await;

    send_json(&app, &path, entry()).await;
    let got = discord.wait_for(1).await[0].json();
    assert_eq!(
        got,
        json!({
            "content": "**🟢 Entry long BTC/USDT**\nPrice: 42150.5\nAmount: 0.002\n\
                        Stake: 84.3 USDT\nLeverage: 3.0x\nTag: rsi<30 & vol\nExchange: binance",
            "username": "Bot"
        })
    );
    let got = embed.wait_for(1).await[0].json();
    let e = &got["embeds"][0];
    assert_eq!(e["title"], "🟢 Entry long BTC/USDT");
    assert_eq!(e["color"], 0x2ecc71);
    assert_eq!(
        e["fields"][0],
        json!({"name": "Pair", "value": "BTC/USDT", "inline": true})
    );

    // A losing short exit is red, with its profit in the fields.
    send_json(&app, &path, exit_fill("-0.0123")).await;
    let got = embed.wait_for(2).await[1].json();
    let e = &got["embeds"][0];
    assert_eq!(e["title"], "🏁 Exit filled short ETH/USDT");
    assert_eq!(e["color"], 0xe74c3c);
    let profit = e["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Profit")
        .unwrap();
    assert_eq!(profit["value"], "-1.23% (-12.5 USDT)");
}

#[tokio::test]
async fn telegram_messages_escape_values_and_are_cut_to_4096_characters() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let telegram = TestReceiver::start().await;
    let ep = app
        .create_endpoint(json!({
            "url": format!("{}/bot123456:AAH-secret-token/sendMessage", telegram.url),
            "preset": "telegram", "chat_id": "-100123"
        }))
        .await;
    // The bot token in the URL is not shown again.
    assert!(
        ep["url"]
            .as_str()
            .unwrap()
            .ends_with("/hook/bot***/sendMessage"),
        "{}",
        ep["url"]
    );
    let shown = app
        .get(&format!("/api/v1/endpoints/{}", ep["id"].as_str().unwrap()))
        .await;
    assert!(!shown.text.contains("AAH-secret-token"), "{}", shown.text);

    send_json(&app, &path, entry()).await;
    let got = telegram.wait_for(1).await[0].json();
    assert_eq!(got["chat_id"], "-100123");
    assert_eq!(got["parse_mode"], "HTML");
    let text = got["text"].as_str().unwrap();
    assert!(
        text.starts_with("<b>🟢 Entry long BTC/USDT</b>\n"),
        "{text}"
    );
    assert!(text.contains("Tag: rsi&lt;30 &amp; vol"), "{text}");

    let long = "x".repeat(5000);
    send_json(&app, &path, json!({"type": "status", "status": long})).await;
    let got = telegram.wait_for(2).await[1].json();
    let text = got["text"].as_str().unwrap();
    assert!(text.chars().count() <= 4096, "{}", text.chars().count());
    assert!(text.ends_with("…</b>"), "{}", &text[text.len() - 20..]);
}

fn dingtalk_sign(secret: &str, timestamp: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn dingtalk_is_signed_and_its_errcodes_decide_retry_or_failure() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let dingtalk = TestReceiver::start().await;
    let ep = app
        .create_endpoint(json!({
            "url": format!("{}?access_token=abc", dingtalk.url),
            "preset": "dingtalk", "sign_secret": "SEC0123456789"
        }))
        .await;
    assert_eq!(ep["sign_secret"], "***");
    assert!(!ep.to_string().contains("access_token=abc"), "{ep}");

    // A bad signature (310000) fails at once; sending too fast (130101) is retried later
    // and pauses the robot, so the next message waits in the store instead of being refused.
    dingtalk.script([
        Answer::Json(200, r#"{"errcode":310000,"errmsg":"sign not match"}"#),
        Answer::Json(200, r#"{"errcode":130101,"errmsg":"send too fast"}"#),
    ]);
    let first = send_json(&app, &path, entry()).await;
    let received = dingtalk.wait_for(1).await;
    let query: Vec<(String, String)> = url_query(&received[0].uri);
    let get = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("access_token"), "abc");
    assert_eq!(
        get("sign"),
        dingtalk_sign("SEC0123456789", &get("timestamp"))
    );
    let body = received[0].json();
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(body["markdown"]["title"], "🟢 Entry long BTC/USDT");
    assert!(
        body["markdown"]["text"]
            .as_str()
            .unwrap()
            .starts_with("#### 🟢 Entry long BTC/USDT\n\nPrice: 42150.5\n\n"),
        "{body}"
    );
    let d = app.await_delivery_status(&first, "failed").await;
    assert_eq!(d["attempt_count"], 1);
    assert!(
        d["last_error"].as_str().unwrap().contains("sign not match"),
        "{d}"
    );

    let second = send_json(&app, &path, exit_fill("0.01")).await;
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(50);
    let d = crate::helpers::eventually(|| async {
        let d = app.delivery_of(&second).await;
        (d["attempt_count"] == 1).then_some(d)
    })
    .await;
    assert!(d["last_error"].as_str().unwrap().contains("130101"), "{d}");
    let next: jiff::Timestamp = d["next_attempt_at"].as_str().unwrap().parse().unwrap();
    assert!(next > later, "{d}");

    // The robot is paused: a third message is not sent now, it waits in the store.
    let third = send_json(&app, &path, exit_fill("0.02")).await;
    let d = crate::helpers::eventually(|| async {
        let d = app.delivery_of(&third).await;
        let next: jiff::Timestamp = d["next_attempt_at"].as_str()?.parse().ok()?;
        (next > later).then_some(d)
    })
    .await;
    assert_eq!(d["attempt_count"], 0);
    assert_eq!(dingtalk.received().len(), 2);
}

fn url_query(uri: &str) -> Vec<(String, String)> {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn wecom_and_slack_get_their_own_shapes_and_wecom_is_cut_to_4096_bytes() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let wecom = TestReceiver::start().await;
    let slack = TestReceiver::start().await;
    app.create_endpoint(json!({"url": wecom.url, "preset": "wecom"}))
        .await;
    app.create_endpoint(json!({"url": slack.url, "preset": "slack"}))
        .await;

    send_json(&app, &path, exit_fill("0.0287")).await;
    let got = wecom.wait_for(1).await[0].json();
    assert_eq!(got["msgtype"], "markdown");
    assert_eq!(
        got["markdown"]["content"],
        "**🏁 Exit filled short ETH/USDT**\nPrice: 3100.0\nProfit: 2.87%\n\
         Profit amount: -12.5 USDT\nReason: stop_loss\nAmount: 1.5"
    );
    let got = slack.wait_for(1).await[0].json();
    assert!(
        got["text"]
            .as_str()
            .unwrap()
            .starts_with("*🏁 Exit filled short ETH/USDT*\n")
    );

    // Chinese text is three bytes a character: the cut is counted in bytes.
    send_json(
        &app,
        &path,
        json!({"type": "warning", "status": "仓位".repeat(1000)}),
    )
    .await;
    let got = wecom.wait_for(2).await[1].json();
    let content = got["markdown"]["content"].as_str().unwrap();
    assert!(content.len() <= 4096, "{}", content.len());
    assert!(content.ends_with('…'));
}

#[tokio::test]
async fn a_429_with_retry_after_delays_the_next_attempt_as_asked() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let discord = TestReceiver::start().await;
    app.create_endpoint(json!({"url": discord.url, "preset": "discord", "retry_schedule": [0.1]}))
        .await;
    discord.script([Answer::Json(
        429,
        r#"{"message":"You are being rate limited.","retry_after":30.5,"global":false}"#,
    )]);
    let id = send_json(&app, &path, entry()).await;
    discord.wait_for(1).await;
    let d = crate::helpers::eventually(|| async {
        let d = app.delivery_of(&id).await;
        (d["attempt_count"] == 1).then_some(d)
    })
    .await;
    assert_eq!(d["status"], "pending");
    let next = d["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    // The schedule says 0.1 s; Discord said 30.5 s.
    assert!(
        next > jiff::Timestamp::now() + jiff::SignedDuration::from_secs(25),
        "{d}"
    );
}

#[tokio::test]
async fn templates_render_json_form_and_raw_bodies_and_a_bad_template_fails_the_attempt() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let json_rx = TestReceiver::start().await;
    let form_rx = TestReceiver::start().await;
    let raw_rx = TestReceiver::start().await;
    app.create_endpoint(json!({
        "url": json_rx.url,
        "templates": {"exit_fill": {"msg": "{pair} {profit_ratio:.2%}", "price": "{close_rate:,.2f}",
                                     "at": "{close_date:%Y-%m-%d %H:%M}", "n": 1,
                                     "legs": [{"side": "{side:>6}"}]}}
    }))
    .await;
    app.create_endpoint(json!({
        "url": form_rx.url, "format": "form",
        "templates": {"*": {"chat_id": "99", "text": "{type}: {pair} ({exit_reason})"}}
    }))
    .await;
    app.create_endpoint(json!({
        "url": raw_rx.url, "format": "raw", "event_types": ["exit_fill"],
        "templates": {"exit_fill": "{{\"pair\": \"{pair}\", \"why\": \"{enter_tag}\"}}"}
    }))
    .await;

    let id = send_json(&app, &path, exit_fill("0.0287")).await;
    let got = json_rx.wait_for(1).await;
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(
        std::str::from_utf8(&got[0].body).unwrap(),
        r#"{"msg":"ETH/USDT 2.87%","price":"3,100.00","at":"2024-01-15 14:00","n":1,"legs":[{"side":" short"}]}"#
    );
    let got = form_rx.wait_for(1).await;
    assert_eq!(
        got[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        &got[0].body[..],
        b"chat_id=99&text=exit_fill%3A+ETH%2FUSDT+%28stop_loss%29"
    );

    // enter_tag is not in an exit_fill event: nothing is sent, the attempt says why.
    let failed = crate::helpers::eventually(|| async {
        let event = app.get(&format!("/api/v1/events/{id}")).await.json();
        event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == "failed")
            .cloned()
    })
    .await;
    let detail = app
        .get(&format!(
            "/api/v1/deliveries/{}",
            failed["id"].as_str().unwrap()
        ))
        .await
        .json();
    let attempt = &detail["attempts"][0];
    assert_eq!(attempt["error_kind"], "render");
    assert_eq!(
        attempt["error"],
        "template for exit_fill: no field named 'enter_tag'"
    );
    assert_eq!(detail["attempt_count"], 1);
    assert!(raw_rx.received().is_empty());
}

#[tokio::test]
async fn bad_render_settings_are_refused_when_the_endpoint_is_created() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"url": "https://api.telegram.org/botX/sendMessage", "preset": "telegram"}),
            "chat_id",
        ),
        (
            json!({"url": "https://x.test/", "templates": {"entry": {"a": "{pair"}}}),
            "templates.entry",
        ),
        (
            json!({"url": "https://x.test/", "format": "form", "templates": {"entry": {"a": {"b": "c"}}}}),
            "templates.entry",
        ),
        (
            json!({"url": "https://x.test/", "preset": "slack", "format": "raw"}),
            "format",
        ),
        (json!({"url": "https://x.test/", "chat_id": "1"}), "chat_id"),
        (
            json!({"url": "https://x.test/", "templates": {"no such type!": {}}}),
            "templates.no such type!",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post("/api/v1/endpoints", &body).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        let fields: Vec<String> = reply.json()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect();
        assert!(fields.iter().any(|f| f == field), "{body}: {fields:?}");
    }
}

/// Renders Freqtrade's message with Freqtrade's own code path: `recursive_format` over the
/// section's template, then the body `requests` builds for the format. Also returns the form
/// body an upstream Freqtrade sends when each field is templated as `{field}`.
const FREQTRADE_ORACLE: &str = r#"
import sys, json, base64, datetime, requests
from urllib.parse import urlencode
case = json.load(sys.stdin)
msg = case["msg"]
for k in ("open_date", "close_date"):
    if k in msg:
        msg[k] = datetime.datetime.fromisoformat(msg[k])
def recursive_format(obj):
    if isinstance(obj, dict):
        return {k: recursive_format(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [recursive_format(i) for i in obj]
    if isinstance(obj, str):
        return obj.format(**msg)
    return obj
out = {"inbound": urlencode({k: str(v) for k, v in msg.items()}), "bodies": {}}
for fmt, section in case["sections"].items():
    payload = recursive_format(section[msg["type"]])
    if fmt == "form":
        req = requests.Request("POST", "http://x/", data=payload)
    elif fmt == "json":
        req = requests.Request("POST", "http://x/", json=payload)
    else:
        req = requests.Request("POST", "http://x/", data=payload["data"], headers={"Content-Type": "text/plain"})
    body = req.prepare().body
    if isinstance(body, str):
        body = body.encode("utf-8")
    out["bodies"][fmt] = base64.b64encode(body).decode()
json.dump(out, sys.stdout)
"#;

fn freqtrade_oracle(msg: &Value, sections: &Value) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(FREQTRADE_ORACLE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with requests must be installed (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            json!({"msg": msg, "sections": sections})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Freqtrade oracle failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn an_imported_freqtrade_webhook_section_sends_the_bytes_freqtrade_would() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let templates = json!({
        "entry": {
            "text": "📈 Buying {pair} ({direction}) x{leverage}",
            "rate": "{open_rate:.8f}", "stake": "{stake_amount:,.2f} {stake_currency}",
            "amount": "{amount}", "when": "{open_date:%Y-%m-%d %H:%M}", "raw_date": "{open_date}",
            "tag": "{enter_tag}", "id": "{trade_id:05d}", "kept": 7,
            "nested": {"list": ["{pair}", 1.5, true, null]}
        },
        "exit_fill": {
            "profit": "{profit_ratio:.2%}", "abs": "{profit_amount:+.3f}", "reason": "{exit_reason}",
            "closed": "{close_date}", "final": "{is_final_exit}", "rate": "{close_rate}"
        }
    });
    let mut sections = serde_json::Map::new();
    let mut rx = Vec::new();
    for format in ["json", "form", "raw"] {
        let receiver = TestReceiver::start().await;
        let section = if format == "raw" {
            json!({"url": receiver.url, "format": "raw",
                   "entry": {"data": "{pair} {open_rate} {open_date}"},
                   "exit_fill": {"data": "{pair} {profit_ratio:.2%}"}})
        } else {
            let mut s =
                json!({"url": receiver.url, "format": format, "retries": 2, "retry_delay": 0.2});
            s["entry"] = templates["entry"].clone();
            s["exit_fill"] = templates["exit_fill"].clone();
            if format == "form" {
                // A form cannot nest.
                s["entry"].as_object_mut().unwrap().remove("nested");
            }
            s
        };
        let ep = app
            .create_endpoint(json!({"freqtrade": {"webhook": section.clone()}}))
            .await;
        assert_eq!(ep["event_types"], json!(["entry", "exit_fill"]));
        assert_eq!(ep["signing"], "none");
        if format == "json" {
            assert_eq!(ep["retry_schedule"], json!([0.2, 0.2]));
        }
        sections.insert(format.to_owned(), section);
        rx.push((format, receiver));
    }
    let messages = [
        json!({
            "type": "entry", "trade_id": 42, "exchange": "binance", "pair": "BTC/USDT",
            "direction": "Long", "leverage": 1.0, "open_rate": 42150.5, "amount": 0.00012345,
            "stake_amount": 1234.5678, "stake_currency": "USDT", "enter_tag": null,
            "open_date": "2024-01-15T08:00:00.123456+00:00"
        }),
        json!({
            "type": "exit_fill", "trade_id": 42, "pair": "BTC/USDT", "profit_ratio": -0.0123456,
            "profit_amount": -1.5, "exit_reason": "trailing_stop_loss", "is_final_exit": true,
            "close_rate": 1e-05, "close_date": "2024-01-15T14:00:00+00:00"
        }),
    ];
    for (i, msg) in messages.iter().enumerate() {
        let oracle = freqtrade_oracle(msg, &Value::Object(sections.clone()));
        // The upstream Freqtrade sends every field as text in a form.
        let reply = app
            .post_raw(
                &path,
                &[("content-type", "application/x-www-form-urlencoded")],
                oracle["inbound"].as_str().unwrap(),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        for (format, receiver) in &rx {
            let got = receiver.wait_for(i + 1).await;
            let expected = base64::engine::general_purpose::STANDARD
                .decode(oracle["bodies"][*format].as_str().unwrap())
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got[i].body),
                String::from_utf8_lossy(&expected),
                "{format} body of {}",
                msg["type"]
            );
        }
    }
    assert_eq!(
        rx[2].1.received()[0].header("content-type"),
        Some("text/plain")
    );
}

#[tokio::test]
async fn a_freqtrade_section_with_keys_freqtrade_ignores_is_refused_with_a_hint() {
    let app = spawn_app().await;
    // The seed's section: Freqtrade reads none of these keys and would send nothing.
    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({"freqtrade": {"webhook": {
                "enabled": true, "url": "https://hooks.example.com/trade",
                "webhook_entry": {"value": "开仓信号触发"},
                "webhook_exit_fill": {"value": "平仓已成交"}
            }}}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["errors"][0]["field"], "freqtrade.webhook_entry");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("\"entry\"")
    );
}

#[tokio::test]
async fn a_template_nesting_fields_deeper_than_python_allows_is_refused_and_nothing_changes() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let nested = format!("{}{{b}}{}", "{a:".repeat(2_000), "}".repeat(2_000));
    let refused = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": receiver.url, "format": "raw", "templates": {"entry": nested}}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("Max string recursion exceeded"));
    assert_eq!(app.get("/api/v1/endpoints").await.json()["data"], json!([]));

    let endpoint = app
        .create_endpoint(
            json!({"url": receiver.url, "format": "raw", "templates": {"entry": "{pair:{w}}"}}),
        )
        .await;
    let path = format!("/api/v1/endpoints/{}", endpoint["id"].as_str().unwrap());
    let refused = app
        .send(
            "PATCH",
            &path,
            Some(&json!({"templates": {"entry": "{a:{b:{c}}}"}})),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(
        app.get(&path).await.json()["templates"],
        json!({"entry": "{pair:{w}}"})
    );
    // The hub is alive and still delivers with the template it kept.
    app.publish("entry", json!({"pair": "BTC/USDT", "w": 10}))
        .await;
    assert_eq!(&receiver.wait_for(1).await[0].body[..], b"BTC/USDT  ");
}

#[tokio::test]
async fn a_template_too_large_or_rendering_too_large_is_refused_with_its_limit() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    // 1.95 MB of template text: over the template limit.
    let huge = "{pair:>10000}".repeat(150_000);
    let refused = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": receiver.url, "format": "raw", "templates": {"entry": huge}}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("at most 65536"), "{}", refused.text);
    // Under the template limit, but rendering to 50 MB: over the rendered limit.
    let wide = "{pair:>10000}".repeat(5_000);
    let refused = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": receiver.url, "format": "raw", "templates": {"entry": wide}}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(
        refused.text.contains("longer than 1048576 bytes"),
        "{}",
        refused.text
    );
    assert_eq!(app.get("/api/v1/endpoints").await.json()["data"], json!([]));
}

#[tokio::test]
async fn a_429_asking_for_less_than_the_schedules_step_is_retried_as_soon_as_asked() {
    let app = spawn_app().await;
    let path = freqtrade_source(&app).await;
    let discord = TestReceiver::start().await;
    app.create_endpoint(json!({"url": discord.url, "preset": "discord", "retry_schedule": [10]}))
        .await;
    discord.script([Answer::Json(
        429,
        r#"{"message":"You are being rate limited.","retry_after":0.3,"global":false}"#,
    )]);
    send_json(&app, &path, entry()).await;
    let got = discord.wait_for(2).await;
    let waited = got[1].at - got[0].at;
    // The schedule says 10 s; Discord said 0.3 s.
    assert!(
        waited >= std::time::Duration::from_millis(250)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
}
