//! The management commands of the CLI: `tradehook endpoints|sources|events|deliveries|replay`,
//! thin calls to a hub's API that print readable tables, or JSON with `--json`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Where the hub is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The hub
    #[arg(
        long,
        env = "TRADEHOOK_URL",
        default_value = "http://127.0.0.1:8787",
        global = true
    )]
    pub url: String,
    /// An API token
    #[arg(
        long,
        env = "TRADEHOOK_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum EndpointCmd {
    /// List endpoints
    List,
    /// Show one endpoint
    Show { id: String },
    /// Create an endpoint: `create https://… [--preset …]`, or from a JSON body (`--body`)
    Create {
        /// Where deliveries go
        target: Option<String>,
        /// discord, slack, telegram, dingtalk, wecom or generic
        #[arg(long)]
        preset: Option<String>,
        /// Comma-separated event types or patterns
        #[arg(long, value_delimiter = ',')]
        event_types: Vec<String>,
        /// The whole request body (any setting of POST /api/v1/endpoints)
        #[arg(long)]
        body: Option<std::path::PathBuf>,
    },
    /// Change settings: a JSON body with the fields to change
    Update {
        id: String,
        body: std::path::PathBuf,
    },
    /// Delete an endpoint (its pending deliveries are cancelled)
    Delete { id: String },
    /// Send a ping through the pipeline and show the attempt
    Test { id: String },
    /// Give the endpoint a new signing secret (both sign during the overlap)
    RotateSecret {
        id: String,
        /// Seconds the previous secret keeps signing
        #[arg(long)]
        overlap: Option<f64>,
    },
    /// Enable an endpoint (its pending deliveries are due again)
    Enable { id: String },
    /// Disable an endpoint (deliveries wait; new events are not delivered to it)
    Disable { id: String },
    /// Retry failed deliveries since a time and deliver what was missed while disabled
    Recover {
        id: String,
        #[arg(long)]
        since: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SourceCmd {
    /// List sources
    List,
    /// Show one source
    Show { id: String },
    /// Create a source: a name and a format (json, freqtrade, tradingview, copytrade, envelope)
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Change a source: the settings given as flags, or a JSON body of the API's fields
    Update {
        /// Source id or name
        id: String,
        /// A new name (the ingest URL changes with it)
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        format: Option<String>,
        /// Requests accepted per window, e.g. 10/s, 60/min
        #[arg(long)]
        rate_limit: Option<String>,
        /// Allowed sender addresses or networks, comma-separated ("" clears, "tradingview"
        /// stands for TradingView's addresses)
        #[arg(long)]
        ip_allowlist: Option<String>,
        /// The payload field holding the sender's own event id
        #[arg(long)]
        dedupe_field: Option<String>,
        /// A file with a JSON body (`-` for standard input); flags given as well win
        #[arg(long)]
        body: Option<std::path::PathBuf>,
    },
    /// Delete a source
    Delete { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum AppCmd {
    /// List applications (a provider's customers)
    List,
    /// Show one application (by id or uid)
    Show { id: String },
    /// Create an application
    Create {
        #[arg(long)]
        name: String,
        /// Your own id for this customer, usable wherever the id is
        #[arg(long)]
        uid: Option<String>,
        /// Most endpoints it may have
        #[arg(long)]
        max_endpoints: Option<u32>,
        /// Events delivered to it per UTC day
        #[arg(long)]
        events_per_day: Option<u64>,
        /// Seconds its deliveries are kept (86400 is a day)
        #[arg(long)]
        retention: Option<u64>,
        /// Rate of its API calls, such as 600/min
        #[arg(long)]
        rate_limit: Option<String>,
    },
    /// List an application's API keys, or make one with --create NAME
    Keys {
        /// Application id or uid
        id: String,
        /// Make a key with this name; it is printed this once
        #[arg(long)]
        create: Option<String>,
        /// The new key may only read
        #[arg(long, requires = "create")]
        read_only: bool,
    },
    /// Make a one-time link into an application's customer portal
    PortalLink {
        /// Application id or uid
        id: String,
        /// Seconds the link may be opened in (default 3600)
        #[arg(long)]
        expiry: Option<f64>,
        /// The portal may only read
        #[arg(long)]
        read_only: bool,
    },
    /// Delete an application with its endpoints, deliveries and keys
    Delete { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum AccountCmd {
    /// List trading accounts
    List,
    /// Show one account (by id or name)
    Show { id: String },
    /// Create a paper account
    Create {
        #[arg(long)]
        name: String,
        /// Starting balance, in the quote currency (default 10000)
        #[arg(long)]
        balance: Option<f64>,
        /// Quote currency (default USDT)
        #[arg(long)]
        quote: Option<String>,
        /// Fee of each fill as a fraction of its notional (default 0.0005)
        #[arg(long)]
        fee_rate: Option<f64>,
        /// Slippage of market orders, in basis points (default 0)
        #[arg(long)]
        slippage_bps: Option<f64>,
        /// Most leverage a position may use (default 1)
        #[arg(long)]
        leverage_max: Option<f64>,
    },
    /// Kill switch: the account takes no new entries until it is resumed
    Halt {
        /// Account id or name
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// Refuse exits too (by default exits still go out, so no position is trapped)
        #[arg(long)]
        block_exits: bool,
    },
    /// Turn the kill switch off
    Resume { id: String },
    /// Check an exchange account's key with a signed read-only call: balance, permission
    /// to trade, clock offset
    Check { id: String },
    /// The account's orders, newest first, each with its signal and outcome
    Orders {
        id: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The account's balance, equity and open positions
    Positions { id: String },
    /// What the account made: trades, win rate, PnL, fees, profit factor, drawdown
    Performance {
        id: String,
        /// From this time: RFC 3339 or Unix seconds (default: since it opened)
        #[arg(long)]
        since: Option<String>,
    },
    /// A price for one of the account's symbols (as the venue names it): resting orders it
    /// reaches execute
    Mark {
        id: String,
        symbol: String,
        price: f64,
    },
    /// Delete an account
    Delete { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum EventCmd {
    /// Events, newest first
    List {
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one event with its deliveries
    Show { id: String },
    /// Follow new events as they arrive (Ctrl-C to stop)
    Tail,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeliveryCmd {
    /// Deliveries, newest first
    List {
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One delivery with every attempt
    Show { id: String },
    /// Try again now
    Retry { id: String },
}

struct Hub {
    conn: Conn,
    client: reqwest::Client,
}

impl Hub {
    fn new(conn: Conn) -> anyhow::Result<Self> {
        if conn.token.is_none() {
            bail!("give an API token with --token or TRADEHOOK_API_TOKEN");
        }
        Ok(Self {
            conn,
            client: crate::app::http_client()?,
        })
    }

    /// Calls the API; a refusal becomes one clear error line.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.conn.url.trim_end_matches('/'));
        let mut request = self
            .client
            .request(method.parse()?, &url)
            .bearer_auth(self.conn.token.as_deref().unwrap_or_default());
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {}", self.conn.url))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!(
                "{} ({}): {}",
                body["code"].as_str().unwrap_or("error"),
                status.as_u16(),
                body["detail"].as_str().unwrap_or(&text)
            );
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn print(&self, value: &Value, columns: &[&str]) {
        if self.conn.json || columns.is_empty() {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
            return;
        }
        let rows: Vec<&Value> = match value.get("data").and_then(Value::as_array) {
            Some(rows) => rows.iter().collect(),
            None => vec![value],
        };
        print_table(&rows, columns);
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_table(rows: &[&Value], columns: &[&str]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for row in cells {
        println!("{}", line(row));
    }
}

const ENDPOINT_COLUMNS: &[&str] = &["id", "url", "event_types", "enabled", "preset"];
const SOURCE_COLUMNS: &[&str] = &["id", "name", "format", "ingest_url"];
const ACCOUNT_COLUMNS: &[&str] = &["id", "name", "venue", "live", "halted"];
const APP_COLUMNS: &[&str] = &["id", "uid", "name", "created_at"];
const KEY_COLUMNS: &[&str] = &["id", "name", "scope", "expires_at", "created_at"];
const EVENT_COLUMNS: &[&str] = &["id", "type", "source", "created_at"];
const DELIVERY_COLUMNS: &[&str] = &[
    "id",
    "event_id",
    "endpoint_id",
    "status",
    "attempt_count",
    "last_error",
];

/// Reads a JSON file, or standard input for `-`.
fn read_json(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

pub async fn endpoints(conn: Conn, cmd: EndpointCmd) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    let one = |id: &str| format!("/endpoints/{id}");
    let (value, columns) = match cmd {
        EndpointCmd::List => (
            hub.call("GET", "/endpoints?limit=500", None).await?,
            ENDPOINT_COLUMNS,
        ),
        EndpointCmd::Show { id } => (hub.call("GET", &one(&id), None).await?, &[][..]),
        EndpointCmd::Create {
            target,
            preset,
            event_types,
            body,
        } => {
            let mut request = match body {
                Some(path) => read_json(&path)?,
                None => json!({}),
            };
            if let Some(target) = target {
                request["url"] = target.into();
            }
            if let Some(preset) = preset {
                request["preset"] = preset.into();
            }
            if !event_types.is_empty() {
                request["event_types"] = event_types.into();
            }
            (
                hub.call("POST", "/endpoints", Some(request)).await?,
                &[][..],
            )
        }
        EndpointCmd::Update { id, body } => (
            hub.call("PATCH", &one(&id), Some(read_json(&body)?))
                .await?,
            &[][..],
        ),
        EndpointCmd::Delete { id } => {
            hub.call("DELETE", &one(&id), None).await?;
            println!("deleted {id}");
            return Ok(());
        }
        EndpointCmd::Test { id } => (
            hub.call("POST", &format!("{}/test", one(&id)), Some(json!({})))
                .await?,
            &[][..],
        ),
        EndpointCmd::RotateSecret { id, overlap } => {
            let body = match overlap {
                Some(o) => json!({"overlap": o}),
                None => json!({}),
            };
            (
                hub.call("POST", &format!("{}/rotate-secret", one(&id)), Some(body))
                    .await?,
                &[][..],
            )
        }
        EndpointCmd::Enable { id } => (
            hub.call("POST", &format!("{}/enable", one(&id)), None)
                .await?,
            ENDPOINT_COLUMNS,
        ),
        EndpointCmd::Disable { id } => (
            hub.call("POST", &format!("{}/disable", one(&id)), None)
                .await?,
            ENDPOINT_COLUMNS,
        ),
        EndpointCmd::Recover { id, since } => (
            hub.call(
                "POST",
                &format!("{}/recover", one(&id)),
                Some(json!({"since": since})),
            )
            .await?,
            &["requeued", "created"][..],
        ),
    };
    hub.print(&value, columns);
    Ok(())
}

pub async fn accounts(conn: Conn, cmd: AccountCmd) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    let (value, columns) = match cmd {
        AccountCmd::List => (
            hub.call("GET", "/accounts?limit=500", None).await?,
            ACCOUNT_COLUMNS,
        ),
        AccountCmd::Show { id } => (
            hub.call("GET", &format!("/accounts/{id}"), None).await?,
            &[][..],
        ),
        AccountCmd::Create {
            name,
            balance,
            quote,
            fee_rate,
            slippage_bps,
            leverage_max,
        } => {
            let mut paper = serde_json::Map::new();
            let given = [
                ("balance", balance.map(Value::from)),
                ("quote", quote.map(Value::from)),
                ("fee_rate", fee_rate.map(Value::from)),
                ("slippage_bps", slippage_bps.map(Value::from)),
                ("leverage_max", leverage_max.map(Value::from)),
            ];
            for (field, value) in given {
                if let Some(value) = value {
                    paper.insert(field.to_owned(), value);
                }
            }
            let body = json!({"name": name, "venue": "paper", "paper": paper});
            (hub.call("POST", "/accounts", Some(body)).await?, &[][..])
        }
        AccountCmd::Halt {
            id,
            reason,
            block_exits,
        } => {
            let body = json!({"reason": reason, "exits_allowed": !block_exits});
            (
                hub.call("POST", &format!("/accounts/{id}/halt"), Some(body))
                    .await?,
                &[][..],
            )
        }
        AccountCmd::Resume { id } => (
            hub.call("POST", &format!("/accounts/{id}/resume"), None)
                .await?,
            &[][..],
        ),
        AccountCmd::Orders { id, limit } => (
            hub.call("GET", &format!("/accounts/{id}/orders?limit={limit}"), None)
                .await?,
            &[][..],
        ),
        AccountCmd::Positions { id } => (
            hub.call("GET", &format!("/accounts/{id}/positions"), None)
                .await?,
            &[][..],
        ),
        AccountCmd::Performance { id, since } => (
            hub.call(
                "GET",
                &format!("/accounts/{id}/performance{}", query(&[("since", since)])),
                None,
            )
            .await?,
            &[][..],
        ),
        AccountCmd::Check { id } => (
            hub.call("POST", &format!("/accounts/{id}/check"), None)
                .await?,
            &[][..],
        ),
        AccountCmd::Mark { id, symbol, price } => (
            hub.call(
                "POST",
                &format!("/accounts/{id}/marks"),
                Some(json!({"symbol": symbol, "price": price})),
            )
            .await?,
            &[][..],
        ),
        AccountCmd::Delete { id } => {
            hub.call("DELETE", &format!("/accounts/{id}"), None).await?;
            println!("deleted {id}");
            return Ok(());
        }
    };
    hub.print(&value, columns);
    Ok(())
}

pub async fn apps(conn: Conn, cmd: AppCmd) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    let (value, columns) = match cmd {
        AppCmd::List => (
            hub.call("GET", "/applications?limit=500", None).await?,
            APP_COLUMNS,
        ),
        AppCmd::Show { id } => (
            hub.call("GET", &format!("/applications/{id}"), None)
                .await?,
            &[][..],
        ),
        AppCmd::Create {
            name,
            uid,
            max_endpoints,
            events_per_day,
            retention,
            rate_limit,
        } => {
            let mut quotas = serde_json::Map::new();
            let given = [
                ("max_endpoints", max_endpoints.map(Value::from)),
                ("events_per_day", events_per_day.map(Value::from)),
                ("retention", retention.map(Value::from)),
            ];
            for (field, value) in given {
                if let Some(value) = value {
                    quotas.insert(field.to_owned(), value);
                }
            }
            let mut body = json!({"name": name, "quotas": quotas});
            if let Some(uid) = uid {
                body["uid"] = uid.into();
            }
            if let Some(rate) = rate_limit {
                body["rate_limit"] = rate.into();
            }
            (
                hub.call("POST", "/applications", Some(body)).await?,
                &[][..],
            )
        }
        AppCmd::Keys {
            id,
            create: Some(name),
            read_only,
        } => {
            let scope = if read_only { "read_only" } else { "admin" };
            (
                hub.call(
                    "POST",
                    &format!("/applications/{id}/keys"),
                    Some(json!({"name": name, "scope": scope})),
                )
                .await?,
                &[][..],
            )
        }
        AppCmd::Keys {
            id, create: None, ..
        } => (
            hub.call("GET", &format!("/applications/{id}/keys?limit=500"), None)
                .await?,
            KEY_COLUMNS,
        ),
        AppCmd::PortalLink {
            id,
            expiry,
            read_only,
        } => {
            let mut body = json!({"read_only": read_only});
            if let Some(expiry) = expiry {
                body["expiry"] = expiry.into();
            }
            let link = hub
                .call(
                    "POST",
                    &format!("/applications/{id}/portal-access"),
                    Some(body),
                )
                .await?;
            if hub.conn.json {
                (link, &[][..])
            } else {
                println!("{}", link["url"].as_str().unwrap_or_default());
                eprintln!(
                    "opens once, until {}",
                    link["expires_at"].as_str().unwrap_or_default()
                );
                return Ok(());
            }
        }
        AppCmd::Delete { id } => {
            hub.call("DELETE", &format!("/applications/{id}"), None)
                .await?;
            println!("deleted {id}");
            return Ok(());
        }
    };
    hub.print(&value, columns);
    Ok(())
}

pub async fn sources(conn: Conn, cmd: SourceCmd) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    let (value, columns) = match cmd {
        SourceCmd::List => (
            hub.call("GET", "/sources?limit=500", None).await?,
            SOURCE_COLUMNS,
        ),
        SourceCmd::Show { id } => (
            hub.call("GET", &format!("/sources/{id}"), None).await?,
            &[][..],
        ),
        SourceCmd::Create { name, format } => (
            hub.call(
                "POST",
                "/sources",
                Some(json!({"name": name, "format": format})),
            )
            .await?,
            &[][..],
        ),
        SourceCmd::Update {
            id,
            name,
            format,
            rate_limit,
            ip_allowlist,
            dedupe_field,
            body,
        } => {
            let mut patch = match body {
                Some(path) => read_json(&path)?,
                None => json!({}),
            };
            let Some(fields) = patch.as_object_mut() else {
                bail!("the body must be a JSON object");
            };
            let flags = [
                ("name", name.map(Value::from)),
                ("format", format.map(Value::from)),
                ("rate_limit", rate_limit.map(Value::from)),
                ("dedupe_field", dedupe_field.map(Value::from)),
                (
                    "ip_allowlist",
                    ip_allowlist.map(|list| {
                        list.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect::<Vec<_>>()
                            .into()
                    }),
                ),
            ];
            for (field, value) in flags {
                if let Some(value) = value {
                    fields.insert(field.to_owned(), value);
                }
            }
            if fields.is_empty() {
                bail!("nothing to change: give a flag such as --rate-limit, or --body");
            }
            (
                hub.call("PATCH", &format!("/sources/{id}"), Some(patch))
                    .await?,
                &[][..],
            )
        }
        SourceCmd::Delete { id } => {
            hub.call("DELETE", &format!("/sources/{id}"), None).await?;
            println!("deleted {id}");
            return Ok(());
        }
    };
    hub.print(&value, columns);
    Ok(())
}

pub async fn events(conn: Conn, cmd: EventCmd) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    match cmd {
        EventCmd::List { event_type, limit } => {
            let q = query(&[
                ("type", event_type),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let value = hub.call("GET", &format!("/events{q}"), None).await?;
            hub.print(&value, EVENT_COLUMNS);
        }
        EventCmd::Show { id } => {
            let value = hub.call("GET", &format!("/events/{id}"), None).await?;
            hub.print(&value, &[]);
        }
        EventCmd::Tail => {
            // Start from what is there now, then print what arrives, oldest first.
            let latest = hub.call("GET", "/events?limit=1", None).await?;
            let mut last = latest["data"][0]["id"].as_str().unwrap_or("").to_owned();
            if !hub.conn.json {
                print_table(&[], EVENT_COLUMNS);
            }
            loop {
                let page = hub.call("GET", "/events?limit=500", None).await?;
                let mut new: Vec<Value> = page["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["id"].as_str().is_some_and(|id| id > last.as_str()))
                    .cloned()
                    .collect();
                new.reverse();
                for event in &new {
                    if hub.conn.json {
                        println!("{event}");
                    } else {
                        let cells: Vec<String> =
                            EVENT_COLUMNS.iter().map(|c| cell(&event[*c])).collect();
                        println!("{}", cells.join("  "));
                    }
                }
                if let Some(newest) = new.last().and_then(|e| e["id"].as_str()) {
                    last = newest.to_owned();
                }
                let _ = std::io::stdout().flush();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}

pub async fn deliveries(conn: Conn, cmd: DeliveryCmd) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    let (value, columns) = match cmd {
        DeliveryCmd::List {
            endpoint,
            status,
            limit,
        } => {
            let q = query(&[
                ("endpoint_id", endpoint),
                ("status", status),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            (
                hub.call("GET", &format!("/deliveries{q}"), None).await?,
                DELIVERY_COLUMNS,
            )
        }
        DeliveryCmd::Show { id } => (
            hub.call("GET", &format!("/deliveries/{id}"), None).await?,
            &[][..],
        ),
        DeliveryCmd::Retry { id } => (
            hub.call("POST", &format!("/deliveries/{id}/retry"), None)
                .await?,
            DELIVERY_COLUMNS,
        ),
    };
    hub.print(&value, columns);
    Ok(())
}

/// `tradehook replay --since T`: delivers again every event since a time to the endpoints
/// subscribed now, with a progress line; with `--endpoint`, catches that endpoint up instead.
pub async fn replay(conn: Conn, since: String, endpoint: Option<String>) -> anyhow::Result<()> {
    let hub = Hub::new(conn)?;
    if let Some(id) = endpoint {
        let value = hub
            .call(
                "POST",
                &format!("/endpoints/{id}/recover"),
                Some(json!({"since": since})),
            )
            .await?;
        hub.print(&value, &["requeued", "created"]);
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = query(&[
            ("since", Some(since.clone())),
            ("limit", Some("500".into())),
            ("cursor", cursor.clone()),
        ]);
        let page = hub.call("GET", &format!("/events{q}"), None).await?;
        for e in page["data"].as_array().into_iter().flatten() {
            ids.extend(e["id"].as_str().map(str::to_owned));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    let total = ids.len();
    let mut deliveries = 0;
    for (i, id) in ids.iter().enumerate() {
        let reply = hub
            .call("POST", &format!("/events/{id}/replay"), None)
            .await?;
        deliveries += reply["deliveries"].as_array().map_or(0, Vec::len);
        eprint!("\rreplayed {}/{total} events", i + 1);
    }
    if total > 0 {
        eprintln!();
    }
    if hub.conn.json {
        println!("{}", json!({"events": total, "deliveries": deliveries}));
    } else {
        println!("{total} events replayed, {deliveries} deliveries created");
    }
    Ok(())
}

/// What `tradehook backtest` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct BacktestArgs {
    /// The order destination (endpoint id) whose settings trade; needed when there are
    /// several
    #[arg(long)]
    pub destination: Option<String>,
    /// Only the signals of this source (id or name)
    #[arg(long)]
    pub source: Option<String>,
    /// The first signal's time: RFC 3339 or Unix seconds
    #[arg(long)]
    pub since: Option<String>,
    /// The last signal's time: RFC 3339 or Unix seconds
    #[arg(long)]
    pub until: Option<String>,
    /// The starting balance (default: the destination's account's)
    #[arg(long)]
    pub balance: Option<f64>,
}

/// `tradehook backtest`: reads the stored signals through the API, oldest first, and runs
/// them through [`crate::orders::backtest::Backtest`] here, with the destination's and its
/// account's settings. The hub is only read.
pub async fn backtest(conn: Conn, args: BacktestArgs) -> anyhow::Result<()> {
    use crate::domain::{EventType, EventTypePattern};
    use crate::orders::backtest::{Backtest, Signal};

    let hub = Hub::new(conn)?;
    let destination = match &args.destination {
        Some(id) => hub.call("GET", &format!("/endpoints/{id}"), None).await?,
        None => {
            let all = hub.call("GET", "/endpoints?limit=500", None).await?;
            let mut found: Vec<Value> = all["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["orders"].is_object())
                .cloned()
                .collect();
            match found.len() {
                1 => found.remove(0),
                0 => bail!("no order destination to take the settings of: create one first"),
                _ => bail!(
                    "several order destinations: name one with --destination ({})",
                    found
                        .iter()
                        .filter_map(|e| e["id"].as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let Some(account_id) = destination["url"]
        .as_str()
        .and_then(|u| u.strip_prefix(crate::model::endpoint::ACCOUNT_SCHEME))
    else {
        bail!(
            "{} is not an order destination",
            destination["id"].as_str().unwrap_or_default()
        );
    };
    let route: crate::model::OrderRoute = serde_json::from_value(destination["orders"].clone())
        .context("reading the destination's order settings")?;
    let account = hub
        .call("GET", &format!("/accounts/{account_id}"), None)
        .await?;
    let mut paper: crate::model::PaperSettings =
        serde_json::from_value(account["paper"].clone()).context("reading the paper settings")?;
    if let Some(balance) = args.balance {
        if !(balance.is_finite() && balance > 0.0) {
            bail!("--balance must be more than 0");
        }
        paper.balance = balance;
    }
    let risk: crate::model::RiskLimits =
        serde_json::from_value(account["risk"].clone()).context("reading the risk limits")?;
    let patterns: Vec<EventTypePattern> = destination["event_types"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().and_then(|p| EventTypePattern::parse(p).ok()))
        .collect();
    let subscribed = |t: &str| {
        patterns.is_empty()
            || EventType::parse(t).is_ok_and(|t| patterns.iter().any(|p| p.matches(&t)))
    };

    // The signals, newest first page by page, then run oldest first.
    let progress = !hub.conn.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut signals = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = query(&[
            ("source", args.source.clone()),
            ("since", args.since.clone()),
            ("until", args.until.clone()),
            ("limit", Some("500".into())),
            ("cursor", cursor.clone()),
        ]);
        let page = hub.call("GET", &format!("/events{q}"), None).await?;
        for e in page["data"].as_array().into_iter().flatten() {
            let event_type = e["type"].as_str().unwrap_or_default();
            if !subscribed(event_type) {
                continue;
            }
            signals.push(Signal {
                id: e["id"].as_str().unwrap_or_default().to_owned(),
                event_type: event_type.to_owned(),
                source: e["source"].as_str().unwrap_or_default().to_owned(),
                data: e["data"].clone(),
                created_at: e["created_at"]
                    .as_str()
                    .and_then(crate::domain::parse_time)
                    .unwrap_or_default(),
            });
        }
        if progress {
            eprint!("\rreading signals: {}", signals.len());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    signals.reverse();
    let mut run = Backtest::new(route, paper, risk);
    let total = signals.len();
    for (n, signal) in signals.iter().enumerate() {
        run.run(signal);
        if progress && (n + 1 == total || (n + 1) % 500 == 0) {
            let done = (n + 1) * 40 / total.max(1);
            eprint!(
                "\r[{}{}] {}/{total} signals",
                "#".repeat(done),
                " ".repeat(40 - done),
                n + 1
            );
        }
    }
    if progress {
        eprintln!();
    }
    let report = run.report();
    let book = run.book();
    if hub.conn.json {
        let mut out = serde_json::to_value(&report)?;
        out["signals"] = json!(total);
        out["orders"] = json!(run.orders().len());
        out["open_positions"] = json!(book.positions.values().collect::<Vec<_>>());
        println!("{out}");
        return Ok(());
    }
    let quote = account["paper"]["quote"].as_str().unwrap_or_default();
    let rate = report
        .win_rate
        .map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
    let factor = report
        .profit_factor
        .map_or("-".into(), |f| format!("{f:.2}"));
    println!("signals        {total}");
    println!("orders         {}", run.orders().len());
    println!(
        "trades         {} ({} won, {} lost, win rate {rate})",
        report.trades, report.wins, report.losses
    );
    println!("realised PnL   {:.2} {quote}", report.realized_pnl);
    println!("fees           {:.2} {quote}", report.fees);
    println!("net PnL        {:.2} {quote}", report.net_pnl);
    println!("profit factor  {factor}");
    println!(
        "max drawdown   {:.2} {quote} ({:.2}%)",
        report.max_drawdown, report.max_drawdown_percent
    );
    println!(
        "balance        {:.2} → {:.2} {quote}",
        report.start_balance, report.end_balance
    );
    println!("open positions {}", book.positions.len());
    Ok(())
}
