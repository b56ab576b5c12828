//! Trading accounts: where orders go. The settings a client writes ([`AccountIn`],
//! [`AccountPatch`]), the rules they must keep, and the kill switch: a halted account takes no
//! new entries until it is resumed.

use serde::Deserialize;
use utoipa::ToSchema;

use super::{Error, Result, Scope, Services, check_name, checked};
use crate::domain::{self, FieldError, prefix};
use crate::exchange::paper::PaperBook;
use crate::model::{
    Account, ExchangeSettings, Halt, Order, PaperSettings, PositionMode, RiskLimits, VenueKind,
};
use crate::orders::performance::{self, Performance};

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountIn {
    /// Lowercase letters, digits, `-` and `_`: how the CLI and inbound commands name it.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$", example = "paper-main")]
    pub name: String,
    /// `paper` (the default), an exchange (`binance_usdm`, `bybit` or `okx`), or
    /// `freqtrade`: a Freqtrade bot through its REST API, whose API username and password are
    /// the `api_key` and `api_secret`, and whose address is `url`.
    #[serde(default = "paper")]
    pub venue: VenueKind,
    /// An exchange account's API key: write-only, sealed at rest, shown only as its last
    /// four characters.
    #[schema(max_length = 256)]
    pub api_key: Option<String>,
    /// An exchange account's API secret: write-only, sealed at rest, never shown.
    #[schema(max_length = 256)]
    pub api_secret: Option<String>,
    /// The key's passphrase, which OKX keys have (and only they): write-only, sealed.
    #[schema(max_length = 256)]
    pub passphrase: Option<String>,
    /// Real money. An exchange account trades on the venue's testnet unless this is set.
    pub live: Option<bool>,
    /// The venue's REST address when not its usual one (a mirror or a local simulator), and
    /// a Freqtrade bot's API address (also written `url`): https, or http to an address
    /// `--allow-target` allows.
    #[serde(alias = "url")]
    #[schema(max_length = 2048, example = "https://testnet.binancefuture.com")]
    pub base_url: Option<String>,
    /// How long after its timestamp the venue may still accept a request, 1000 to 60000 ms
    /// (default 5000).
    #[schema(minimum = 1000, maximum = 60000)]
    pub recv_window_ms: Option<u64>,
    /// How long one request to the venue may take before its outcome counts as unknown,
    /// 500 to 60000 ms (default 10000).
    #[schema(minimum = 500, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    /// `one_way` (the default) or `hedge`: as the account is set on the exchange. In hedge
    /// mode orders name the position side they open or close.
    pub position_mode: Option<PositionMode>,
    /// The paper exchange's settings; what is left out takes its default (10,000 USDT, a fee
    /// of 0.05 %, no slippage, no leverage).
    #[serde(default, deserialize_with = "super::object")]
    pub paper: Option<PaperIn>,
    /// The risk gate's limits; each is off when left out.
    #[serde(default, deserialize_with = "super::object")]
    pub risk: Option<RiskLimits>,
}

fn paper() -> VenueKind {
    VenueKind::Paper
}

/// A paper account's settings as a client writes them.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaperIn {
    /// The starting balance, in `quote` (fixed once the account exists).
    #[schema(exclusive_minimum = 0.0, maximum = 1e12)]
    pub balance: Option<f64>,
    /// `USDT`, `USDC`, `USD`, …
    #[schema(pattern = r"^[A-Z0-9]{2,10}$")]
    pub quote: Option<String>,
    /// Each fill's fee as a fraction of its notional, 0 to 0.01.
    #[schema(minimum = 0.0, maximum = 0.01)]
    pub fee_rate: Option<f64>,
    /// How far market orders fill against the trader, 0 to 500 basis points.
    #[schema(minimum = 0.0, maximum = 500.0)]
    pub slippage_bps: Option<f64>,
    /// The most leverage a position may use, 1 to 125.
    #[schema(minimum = 1.0, maximum = 125.0)]
    pub leverage_max: Option<f64>,
}

/// Changes to an account: what is left out is unchanged.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub name: Option<String>,
    /// Fee, slippage and leverage; the balance and quote are fixed.
    #[serde(default, deserialize_with = "super::object")]
    pub paper: Option<PaperPatch>,
    /// The risk gate's limits, all of them: what is left out is off.
    #[serde(default, deserialize_with = "super::object")]
    pub risk: Option<RiskLimits>,
    /// A new API key of an exchange account, with its secret.
    #[schema(max_length = 256)]
    pub api_key: Option<String>,
    #[schema(max_length = 256)]
    pub api_secret: Option<String>,
    /// A new passphrase, for an OKX key.
    #[schema(max_length = 256)]
    pub passphrase: Option<String>,
    /// Moves an exchange account between its venue's testnet (`false`) and real money.
    pub live: Option<bool>,
    /// The venue's REST address (a Freqtrade bot's `url`); an empty string goes back to the
    /// usual one.
    #[serde(alias = "url")]
    #[schema(max_length = 2048)]
    pub base_url: Option<String>,
    #[schema(minimum = 1000, maximum = 60000)]
    pub recv_window_ms: Option<u64>,
    #[schema(minimum = 500, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    /// `one_way` or `hedge`, as the account is set on the exchange.
    pub position_mode: Option<PositionMode>,
}

/// Changes to a paper account's settings.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaperPatch {
    #[schema(minimum = 0.0, maximum = 0.01)]
    pub fee_rate: Option<f64>,
    #[schema(minimum = 0.0, maximum = 500.0)]
    pub slippage_bps: Option<f64>,
    #[schema(minimum = 1.0, maximum = 125.0)]
    pub leverage_max: Option<f64>,
}

/// Turning the kill switch on.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaltIn {
    /// Why; shown with the account and in every order it refuses.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
    /// Whether exits (orders that only reduce a position) still go out; default true, so that
    /// a halt never traps an open position.
    pub exits_allowed: Option<bool>,
}

/// `value` within `range`, or a problem for `field`.
fn within(
    field: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    errors: &mut Vec<FieldError>,
) {
    if !value.is_finite() || !range.contains(&value) {
        errors.push(FieldError::new(
            field,
            format!("must be between {} and {}", range.start(), range.end()),
        ));
    }
}

/// Checks a paper account's settings; every problem is reported.
fn check_paper(p: &PaperSettings, errors: &mut Vec<FieldError>) {
    if !(p.balance.is_finite() && p.balance > 0.0 && p.balance <= 1e12) {
        errors.push(FieldError::new(
            "paper.balance",
            "must be more than 0 and at most 1e12",
        ));
    }
    if !(2..=10).contains(&p.quote.len())
        || !p
            .quote
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        errors.push(FieldError::new(
            "paper.quote",
            "2 to 10 uppercase letters or digits, such as USDT",
        ));
    }
    within("paper.fee_rate", p.fee_rate, 0.0..=0.01, errors);
    within("paper.slippage_bps", p.slippage_bps, 0.0..=500.0, errors);
    within("paper.leverage_max", p.leverage_max, 1.0..=125.0, errors);
}

/// Checks an exchange account's settings; every problem is reported.
fn check_exchange(
    venue: VenueKind,
    e: &ExchangeSettings,
    rules: &super::Rules,
    errors: &mut Vec<FieldError>,
) {
    match (venue, &e.passphrase) {
        (VenueKind::Okx, None) => errors.push(FieldError::new(
            "passphrase",
            "an OKX key has a passphrase: give it",
        )),
        (VenueKind::Okx, Some(p)) if p.is_empty() || p.len() > 256 => {
            errors.push(FieldError::new("passphrase", "1 to 256 characters"))
        }
        (VenueKind::Okx, Some(_)) | (_, None) => {}
        (_, Some(_)) => errors.push(FieldError::new(
            "passphrase",
            "only an OKX key has a passphrase",
        )),
    }
    if venue == VenueKind::Freqtrade && e.position_mode == PositionMode::Hedge {
        errors.push(FieldError::new(
            "position_mode",
            "a Freqtrade bot keeps its own positions: hedge mode is an exchange's setting",
        ));
    }
    if venue == VenueKind::Freqtrade && e.base_url.is_none() {
        errors.push(FieldError::new(
            "url",
            "a Freqtrade account needs its bot's API address, such as http://127.0.0.1:8080",
        ));
    }
    for (field, value) in [("api_key", &e.api_key), ("api_secret", &e.api_secret)] {
        if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_control()) {
            errors.push(FieldError::new(
                field,
                "1 to 256 characters, as the venue issued it",
            ));
        }
    }
    if !(1_000..=60_000).contains(&e.recv_window_ms) {
        errors.push(FieldError::new("recv_window_ms", "between 1000 and 60000"));
    }
    if !(500..=60_000).contains(&e.timeout_ms) {
        errors.push(FieldError::new("timeout_ms", "between 500 and 60000"));
    }
    if let Some(url) = &e.base_url {
        match reqwest::Url::parse(url) {
            Ok(u) => {
                let guard = crate::deliver::guard::Guard::new(rules.allow_targets.clone());
                let allowed_plain = match u.host() {
                    Some(url::Host::Ipv4(ip)) => guard.permits(ip.into()),
                    Some(url::Host::Ipv6(ip)) => guard.permits(ip.into()),
                    _ => false,
                };
                if u.scheme() != "https" && !(u.scheme() == "http" && allowed_plain) {
                    errors.push(FieldError::new(
                        "base_url",
                        "must be https (plain http only to an address --allow-target allows)",
                    ));
                } else if let Err(blocked) = guard.check_url(&u) {
                    errors.push(FieldError::new("base_url", blocked.0));
                }
                if u.query().is_some() || u.username() != "" || u.password().is_some() {
                    errors.push(FieldError::new(
                        "base_url",
                        "the venue's address alone, without a query or credentials",
                    ));
                }
            }
            Err(err) => errors.push(FieldError::new("base_url", format!("not a URL: {err}"))),
        }
    }
}

/// Checks the risk limits: each given one more than 0.
fn check_risk(r: &RiskLimits, errors: &mut Vec<FieldError>) {
    let amounts = [
        ("risk.max_order_notional", r.max_order_notional),
        ("risk.max_position_notional", r.max_position_notional),
        ("risk.daily_loss_limit", r.daily_loss_limit),
    ];
    for (field, value) in amounts {
        if value.is_some_and(|v| !(v.is_finite() && v > 0.0 && v <= 1e12)) {
            errors.push(FieldError::new(field, "more than 0 and at most 1e12"));
        }
    }
    let counts = [
        ("risk.max_open_positions", r.max_open_positions),
        ("risk.max_orders_per_minute", r.max_orders_per_minute),
    ];
    for (field, value) in counts {
        if value.is_some_and(|v| !(1..=100_000).contains(&v)) {
            errors.push(FieldError::new(field, "between 1 and 100000"));
        }
    }
}

impl Services {
    /// Creates an account.
    pub async fn create_account(&self, scope: Scope, input: AccountIn) -> Result<Account> {
        super::operator_only(&scope, "account", &input.name)?;
        let mut errors = Vec::new();
        check_name(&input.name, prefix::ACCOUNT, &mut errors);
        let (paper, exchange) = match input.venue {
            VenueKind::Paper => {
                let given = input.paper.unwrap_or_default();
                let defaults = PaperSettings::default();
                let paper = PaperSettings {
                    balance: given.balance.unwrap_or(defaults.balance),
                    quote: given.quote.unwrap_or(defaults.quote),
                    fee_rate: given.fee_rate.unwrap_or(defaults.fee_rate),
                    slippage_bps: given.slippage_bps.unwrap_or(defaults.slippage_bps),
                    leverage_max: given.leverage_max.unwrap_or(defaults.leverage_max),
                };
                check_paper(&paper, &mut errors);
                let exchange_only = [
                    ("api_key", input.api_key.is_some()),
                    ("api_secret", input.api_secret.is_some()),
                    ("passphrase", input.passphrase.is_some()),
                    ("live", input.live.is_some()),
                    ("base_url", input.base_url.is_some()),
                    ("recv_window_ms", input.recv_window_ms.is_some()),
                    ("timeout_ms", input.timeout_ms.is_some()),
                    ("position_mode", input.position_mode.is_some()),
                ];
                for (field, _) in exchange_only.iter().filter(|(_, given)| *given) {
                    errors.push(FieldError::new(
                        *field,
                        "only an exchange account has this; a paper account needs no key",
                    ));
                }
                (Some(paper), None)
            }
            _ => {
                if input.paper.is_some() {
                    errors.push(FieldError::new(
                        "paper",
                        "only a paper account has paper settings",
                    ));
                }
                let exchange = ExchangeSettings {
                    api_key: input.api_key.unwrap_or_default(),
                    api_secret: input.api_secret.unwrap_or_default(),
                    passphrase: input.passphrase,
                    live: input.live.unwrap_or(false),
                    base_url: input.base_url.filter(|u| !u.is_empty()),
                    recv_window_ms: input.recv_window_ms.unwrap_or(DEFAULT_RECV_WINDOW_MS),
                    timeout_ms: input.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
                    position_mode: input.position_mode.unwrap_or_default(),
                };
                check_exchange(input.venue, &exchange, &self.rules, &mut errors);
                (None, Some(exchange))
            }
        };
        if let Some(risk) = &input.risk {
            check_risk(risk, &mut errors);
        }
        checked(errors)?;
        let accounts = self.store.list_accounts(scope.clone()).await?;
        if accounts.iter().any(|a| a.name == input.name) {
            return Err(Error::conflict(
                "conflict",
                format!("an account named {:?} already exists", input.name),
            ));
        }
        let now = domain::now_ms();
        let account = Account {
            id: domain::new_id(prefix::ACCOUNT),
            name: input.name,
            venue: input.venue,
            paper,
            exchange,
            halted: None,
            risk: input.risk.unwrap_or_default(),
            losses_from: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_account(scope, account.clone()).await?;
        tracing::info!(
            account = %account.id,
            name = %account.name,
            venue = account.venue.as_str(),
            live = account.live(),
            "account created"
        );
        Ok(account)
    }

    /// Every account, by id.
    pub async fn accounts(&self, scope: Scope) -> Result<Vec<Account>> {
        if scope != Scope::Hub {
            return Ok(Vec::new());
        }
        Ok(self.store.list_accounts(scope).await?)
    }

    /// An account by id or by name.
    pub async fn account(&self, scope: Scope, id_or_name: &str) -> Result<Account> {
        super::operator_only(&scope, "account", id_or_name)?;
        self.store
            .list_accounts(scope)
            .await?
            .into_iter()
            .find(|a| a.id == id_or_name || a.name == id_or_name)
            .ok_or_else(|| Error::not_found("account", id_or_name))
    }

    /// Changes an account's name or paper settings.
    pub async fn update_account(
        &self,
        scope: Scope,
        id_or_name: &str,
        patch: AccountPatch,
    ) -> Result<Account> {
        let mut a = self.account(scope.clone(), id_or_name).await?;
        let mut errors = Vec::new();
        if let Some(name) = patch.name {
            check_name(&name, prefix::ACCOUNT, &mut errors);
            if name != a.name && self.account(scope.clone(), &name).await.is_ok() {
                errors.push(FieldError::new("name", "another account has this name"));
            }
            a.name = name;
        }
        if let (Some(change), Some(paper)) = (patch.paper, a.paper.as_mut()) {
            if let Some(v) = change.fee_rate {
                paper.fee_rate = v;
            }
            if let Some(v) = change.slippage_bps {
                paper.slippage_bps = v;
            }
            if let Some(v) = change.leverage_max {
                paper.leverage_max = v;
            }
        }
        if let Some(risk) = patch.risk {
            check_risk(&risk, &mut errors);
            a.risk = risk;
        }
        if let Some(paper) = &a.paper {
            check_paper(paper, &mut errors);
        }
        let was_live = a.live();
        match a.exchange.as_mut() {
            Some(e) => {
                match (patch.api_key, patch.api_secret) {
                    (Some(key), Some(secret)) => {
                        e.api_key = key;
                        e.api_secret = secret;
                    }
                    (None, None) => {}
                    _ => errors.push(FieldError::new(
                        "api_secret",
                        "a new key is written with its secret: give both",
                    )),
                }
                if let Some(passphrase) = patch.passphrase {
                    e.passphrase = Some(passphrase);
                }
                if let Some(live) = patch.live {
                    e.live = live;
                }
                if let Some(url) = patch.base_url {
                    e.base_url = Some(url).filter(|u| !u.is_empty());
                }
                if let Some(v) = patch.recv_window_ms {
                    e.recv_window_ms = v;
                }
                if let Some(v) = patch.timeout_ms {
                    e.timeout_ms = v;
                }
                if let Some(mode) = patch.position_mode {
                    e.position_mode = mode;
                }
                check_exchange(a.venue, e, &self.rules, &mut errors);
            }
            None => {
                let exchange_only = [
                    ("api_key", patch.api_key.is_some()),
                    ("api_secret", patch.api_secret.is_some()),
                    ("passphrase", patch.passphrase.is_some()),
                    ("live", patch.live.is_some()),
                    ("base_url", patch.base_url.is_some()),
                    ("recv_window_ms", patch.recv_window_ms.is_some()),
                    ("timeout_ms", patch.timeout_ms.is_some()),
                    ("position_mode", patch.position_mode.is_some()),
                ];
                for (field, _) in exchange_only.iter().filter(|(_, given)| *given) {
                    errors.push(FieldError::new(*field, "only an exchange account has this"));
                }
            }
        }
        checked(errors)?;
        a.updated_at = domain::now_ms();
        self.save_account(scope, &a).await?;
        if a.live() != was_live {
            tracing::warn!(
                account = %a.id,
                live = a.live(),
                "{}",
                if a.live() {
                    "account moved to LIVE trading: its orders now use real money"
                } else {
                    "account moved to its venue's testnet"
                }
            );
        }
        Ok(a)
    }

    /// Deletes an account; not while an order destination places orders with it.
    pub async fn delete_account(&self, scope: Scope, id_or_name: &str) -> Result<()> {
        let a = self.account(scope.clone(), id_or_name).await?;
        let users: Vec<String> = self
            .registry
            .endpoints()
            .iter()
            .filter(|e| e.account_id() == Some(a.id.as_str()))
            .map(|e| e.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(Error::conflict(
                "account_in_use",
                format!(
                    "order destinations place orders with this account: {}; delete them first",
                    users.join(", ")
                ),
            ));
        }
        if !self.store.delete_account(scope, &a.id).await? {
            return Err(Error::not_found("account", id_or_name));
        }
        tracing::info!(account = %a.id, "account deleted");
        Ok(())
    }

    /// Turns an account's kill switch on: no new entries until it is resumed. Halting a
    /// halted account replaces its reason and exit rule, keeping since when it is halted.
    pub async fn halt_account(
        &self,
        scope: Scope,
        id_or_name: &str,
        input: HaltIn,
    ) -> Result<Account> {
        let reason = input
            .reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "halted by an operator".into());
        if reason.chars().count() > 500 {
            return Err(Error::invalid("reason", "at most 500 characters"));
        }
        let mut a = self.account(scope.clone(), id_or_name).await?;
        let now = domain::now_ms();
        a.halted = Some(Halt {
            reason,
            since: a.halted.as_ref().map_or(now, |h| h.since),
            exits_allowed: input.exits_allowed.unwrap_or(true),
            until: None,
        });
        a.updated_at = now;
        self.save_account(scope, &a).await?;
        tracing::warn!(account = %a.id, "account halted");
        Ok(a)
    }

    /// Turns an account's kill switch off.
    pub async fn resume_account(&self, scope: Scope, id_or_name: &str) -> Result<Account> {
        let mut a = self.account(scope.clone(), id_or_name).await?;
        if a.halted.take().is_some() {
            let now = domain::now_ms();
            a.updated_at = now;
            // The operator says go on: today's losses so far no longer count against the
            // daily limit.
            a.losses_from = Some(now);
            self.save_account(scope, &a).await?;
            tracing::info!(account = %a.id, "account resumed");
        }
        Ok(a)
    }

    async fn save_account(&self, scope: Scope, a: &Account) -> Result<()> {
        if !self.store.update_account(scope, a.clone()).await? {
            return Err(Error::not_found("account", &a.id));
        }
        Ok(())
    }
}

/// An account's book: balance, positions, resting orders.
pub struct Book {
    pub account: Account,
    pub book: PaperBook,
}

impl Services {
    /// An account's orders, newest first.
    pub async fn account_orders(
        &self,
        scope: Scope,
        id_or_name: &str,
        limit: u32,
    ) -> Result<Vec<Order>> {
        let account = self.account(scope.clone(), id_or_name).await?;
        Ok(self.store.list_orders(scope, &account.id, limit).await?)
    }

    /// An account's book as it stands: its starting one until it has traded.
    pub async fn account_book(&self, scope: Scope, id_or_name: &str) -> Result<Book> {
        let account = self.account(scope, id_or_name).await?;
        let book = match self.store.paper_book(&account.id).await? {
            Some(book) => book,
            None => PaperBook::new(account.book_settings()),
        };
        Ok(Book { account, book })
    }

    /// What an account made since `since` (Unix ms), from the fills in its journal.
    pub async fn account_performance(
        &self,
        scope: Scope,
        id_or_name: &str,
        since: domain::Millis,
    ) -> Result<Performance> {
        let account = self.account(scope.clone(), id_or_name).await?;
        let orders = self
            .store
            .list_orders(scope, &account.id, JOURNAL_LIMIT)
            .await?;
        let start = account.paper.as_ref().map_or(0.0, |p| p.balance);
        Ok(performance::report(start, &orders, since))
    }

    /// A price for one of an account's symbols, as the venue names it: resting orders it
    /// reaches execute. Answers the orders that filled or were cancelled.
    pub async fn mark_account(
        &self,
        scope: Scope,
        id_or_name: &str,
        input: MarkIn,
    ) -> Result<Vec<Order>> {
        let symbol = input.symbol.trim();
        let mut errors = Vec::new();
        if symbol.is_empty() || symbol.len() > 64 {
            errors.push(FieldError::new("symbol", "1 to 64 characters"));
        }
        if !(input.price.is_finite() && input.price > 0.0) {
            errors.push(FieldError::new("price", "more than 0"));
        }
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        let account = self.account(scope, id_or_name).await?;
        Ok(self.orders.mark(&account.id, symbol, input.price).await?)
    }
}

impl Services {
    /// Checks an exchange account's key with a signed read-only call to its venue.
    pub async fn check_account(&self, scope: Scope, id_or_name: &str) -> Result<AccountCheckOut> {
        let account = self.account(scope, id_or_name).await?;
        if account.exchange.is_none() {
            return Err(Error::conflict(
                "not_an_exchange_account",
                "a paper account has no key to check",
            ));
        }
        let answer = self.orders.check(&account).await;
        tracing::info!(
            account = %account.id,
            live = account.live(),
            ok = answer.is_ok(),
            "account checked"
        );
        Ok(AccountCheckOut {
            venue: account.venue,
            live: account.live(),
            answer,
        })
    }
}

/// What a check of an exchange account found.
pub struct AccountCheckOut {
    pub venue: VenueKind,
    pub live: bool,
    pub answer: std::result::Result<crate::exchange::AccountCheck, crate::exchange::VenueError>,
}

/// An exchange account's receive window and request timeout when not given.
pub const DEFAULT_RECV_WINDOW_MS: u64 = 5_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The most orders a performance report reads: years of busy trading.
const JOURNAL_LIMIT: u32 = 1_000_000;

/// A price for an account's symbol.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkIn {
    /// The venue's symbol (`BTC/USDT:USDT`), as the account's positions name it.
    pub symbol: String,
    pub price: f64,
}

/// A command from a signed command source, its accounts found and nothing changed yet.
#[derive(Debug)]
pub struct AccountCommand {
    halt: bool,
    accounts: Vec<Account>,
    reason: Option<String>,
    exits_allowed: Option<bool>,
}

impl Services {
    /// Reads a command event (`command.halt` or `command.resume`, as the `command` format
    /// makes them) and finds its accounts: one by name or id, or every one for `"*"`.
    pub async fn account_command(
        &self,
        scope: Scope,
        event_type: &str,
        data: &serde_json::Value,
    ) -> Result<AccountCommand> {
        let named = data["account"].as_str().unwrap_or_default();
        let accounts = if named == "*" {
            self.accounts(scope).await?
        } else {
            vec![self.account(scope, named).await?]
        };
        Ok(AccountCommand {
            halt: event_type == "command.halt",
            accounts,
            reason: data["reason"].as_str().map(str::to_owned),
            exits_allowed: data["exits_allowed"].as_bool(),
        })
    }

    /// Carries out a command read by [`Services::account_command`].
    pub async fn run_account_command(
        &self,
        scope: Scope,
        command: AccountCommand,
        source: &str,
    ) -> Result<Vec<Account>> {
        let mut done = Vec::new();
        for account in command.accounts {
            let changed = if command.halt {
                let input = HaltIn {
                    reason: Some(
                        command
                            .reason
                            .clone()
                            .unwrap_or_else(|| format!("halted by a command from {source}")),
                    ),
                    exits_allowed: command.exits_allowed,
                };
                self.halt_account(scope.clone(), &account.id, input).await?
            } else {
                self.resume_account(scope.clone(), &account.id).await?
            };
            tracing::warn!(account = %changed.id, source, halt = command.halt, "account command carried out");
            done.push(changed);
        }
        Ok(done)
    }
}
