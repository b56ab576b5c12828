//! Endpoints declared in the TOML config file, including a pasted Freqtrade webhook section.

use serde_json::json;
use tradehook::app::Application;
use tradehook::config::ServeArgs;

use crate::helpers::{TOKEN, TestReceiver, spawn_app_with};

fn config_file(dir: &std::path::Path, text: &str) -> tradehook::config::Config {
    let path = dir.join("tradehook.toml");
    std::fs::write(&path, text).unwrap();
    ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap()
}

#[tokio::test]
async fn endpoints_declared_in_the_file_are_created_and_deliver() {
    let discord = TestReceiver::start().await;
    let relay = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let declared = config_file(
        dir.path(),
        &format!(
            r#"
[[endpoints]]
name = "alerts"
url = "{discord}"
preset = "discord"
event_types = ["entry*", "exit*"]

# The webhook section of a Freqtrade config, pasted as it is.
[[endpoints]]
name = "relay"
[endpoints.freqtrade.webhook]
enabled = true
url = "{relay}"
format = "json"
retries = 3
retry_delay = 0.5
[endpoints.freqtrade.webhook.entry]
text = "Buying {{pair}} at {{open_rate:.2f}}"
"#,
            discord = discord.url,
            relay = relay.url
        ),
    )
    .endpoints;
    let app = spawn_app_with(|c| c.endpoints = declared).await;

    let alerts = app.get("/api/v1/endpoints/ep_alerts").await;
    assert_eq!(alerts.status, 200, "{}", alerts.text);
    assert_eq!(alerts.json()["preset"], "discord");
    let relay_ep = app.get("/api/v1/endpoints/ep_relay").await.json();
    assert_eq!(relay_ep["event_types"], json!(["entry"]));
    assert_eq!(relay_ep["retry_schedule"], json!([0.5, 0.5, 0.5]));

    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "open_rate": 42000.123, "side": "long"}),
    )
    .await;
    let got = relay.wait_for(1).await;
    assert_eq!(
        &got[0].body[..],
        br#"{"text": "Buying BTC/USDT at 42000.12"}"#
    );
    let got = discord.wait_for(1).await;
    assert!(
        got[0].json()["content"]
            .as_str()
            .unwrap()
            .starts_with("**🟢 Entry long BTC/USDT**")
    );
}

#[tokio::test]
async fn a_restart_brings_declared_endpoints_up_to_date_and_keeps_their_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let start = |template: &str| {
        let mut config = config_file(
            dir.path(),
            &format!(
                "[[endpoints]]\nname = \"bot\"\nurl = \"https://bot.example/hook\"\n\
                 templates = {{ entry = {{ msg = \"{template}\" }} }}\n"
            ),
        );
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database = db.clone();
        config.api_token = Some(TOKEN.into());
        async move {
            let app = Application::build(config).await.unwrap();
            let store = app.store().clone();
            let endpoint = store
                .list_endpoints(tradehook::domain::Scope::Hub)
                .await
                .unwrap()
                .into_iter()
                .find(|e| e.id == "ep_bot")
                .unwrap();
            store.close().await;
            endpoint
        }
    };
    let first = start("{pair}").await;
    let second = start("{pair} {side}").await;
    assert_eq!(
        second.render.templates["entry"],
        json!({"msg": "{pair} {side}"})
    );
    assert_eq!(first.render.templates["entry"], json!({"msg": "{pair}"}));
    assert_eq!(first.secret, second.secret);
    assert_eq!(first.created_at, second.created_at);
}

#[tokio::test]
async fn a_bad_declared_endpoint_stops_the_start_with_its_name_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_file(
        dir.path(),
        "[[endpoints]]\nname = \"tg\"\nurl = \"https://api.telegram.org/botX/sendMessage\"\npreset = \"telegram\"\n",
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database = format!("sqlite://{}", dir.path().join("hub.db").display());
    let err = Application::build(config).await.err().unwrap().to_string();
    assert!(
        err.contains("endpoint \"tg\"") && err.contains("chat_id"),
        "{err}"
    );

    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[endpoints]]\nurl = \"https://x.test/\"\n").unwrap();
    let err = ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(format!("{err:#}").contains("needs a name"), "{err:#}");
}

#[tokio::test]
async fn a_declared_endpoint_with_a_nested_template_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let nested = format!("{}{{b}}{}", "{a:".repeat(2_000), "}".repeat(2_000));
    let mut config = config_file(
        dir.path(),
        &format!(
            "[[endpoints]]\nname = \"deep\"\nurl = \"https://bot.example/hook\"\nformat = \"raw\"\n\
             templates = {{ entry = \"{nested}\" }}\n"
        ),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database = format!("sqlite://{}", dir.path().join("hub.db").display());
    let err = Application::build(config).await.err().unwrap().to_string();
    assert!(
        err.contains("endpoint \"deep\"") && err.contains("Max string recursion exceeded"),
        "{err}"
    );
}

#[tokio::test]
async fn declared_sources_are_created_then_brought_up_to_date_and_keep_a_generated_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let start = |text: &str| {
        let mut config = config_file(dir.path(), text);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.database = db.clone();
        config.api_token = Some(TOKEN.into());
        async move {
            let app = Application::build(config).await?;
            let store = app.store().clone();
            let sources = store
                .list_sources(tradehook::domain::Scope::Hub)
                .await
                .unwrap();
            store.close().await;
            anyhow::Ok(sources)
        }
    };
    let declared = "[[sources]]\nname = \"tv\"\nformat = \"tradingview\"\n\
                    secret = \"first-secret-0123456789\"\n\
                    [[sources]]\nname = \"bot\"\nformat = \"freqtrade\"\n";
    let first = start(declared).await.unwrap();
    let tv = first.iter().find(|s| s.name == "tv").unwrap();
    assert_eq!(tv.secret.as_deref(), Some("first-secret-0123456789"));
    let bot = first.iter().find(|s| s.name == "bot").unwrap();
    assert_eq!(bot.secret.as_ref().unwrap().len(), 32, "a generated secret");

    // Changed in the file: the new secret and allow-list; the bot keeps its generated secret.
    let changed = "[[sources]]\nname = \"tv\"\nformat = \"tradingview\"\n\
                   secret = \"second-secret-0123456789\"\nip_allowlist = [\"tradingview\"]\n\
                   [[sources]]\nname = \"bot\"\nformat = \"freqtrade\"\n";
    let second = start(changed).await.unwrap();
    let tv2 = second.iter().find(|s| s.name == "tv").unwrap();
    assert_eq!(tv2.id, tv.id);
    assert_eq!(tv2.secret.as_deref(), Some("second-secret-0123456789"));
    assert_eq!(tv2.spec.ip_allowlist.len(), 4);
    let bot2 = second.iter().find(|s| s.name == "bot").unwrap();
    assert_eq!(bot2.secret, bot.secret);

    // A bad one stops the start with its name and field.
    let error = start("[[sources]]\nname = \"tv\"\nsecret = \"short\"\n")
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("source \"tv\"") && error.contains("secret"),
        "{error}"
    );
}
