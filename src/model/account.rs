//! Trading accounts: where orders go. An account names its venue and that venue's settings;
//! the built-in paper exchange needs no credentials, live venues (a later addition) will carry
//! credentials that are write-only and sealed at rest like every other secret.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::Millis;

/// Where an account's orders are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VenueKind {
    /// The hub's own simulated exchange: fills at the signal's or the last seen price, with
    /// fees and slippage.
    Paper,
    /// Binance USDⓈ-M futures, on its testnet unless the account is `live`.
    BinanceUsdm,
    /// Bybit v5 linear perpetuals, on its testnet unless the account is `live`.
    Bybit,
    /// OKX v5 USDT-margined swaps, in its demo trading unless the account is `live`.
    Okx,
    /// A Freqtrade bot, through its REST API: in dry-run unless the account is `live`.
    Freqtrade,
}

impl VenueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VenueKind::Paper => "paper",
            VenueKind::BinanceUsdm => "binance_usdm",
            VenueKind::Bybit => "bybit",
            VenueKind::Okx => "okx",
            VenueKind::Freqtrade => "freqtrade",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "paper" => Some(VenueKind::Paper),
            "binance_usdm" => Some(VenueKind::BinanceUsdm),
            "bybit" => Some(VenueKind::Bybit),
            "okx" => Some(VenueKind::Okx),
            "freqtrade" => Some(VenueKind::Freqtrade),
            _ => None,
        }
    }
}

/// The settings of an account on an exchange: its API key and where to reach it. The key and
/// its secret are sealed at rest and never shown again after they are written.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeSettings {
    pub api_key: String,
    pub api_secret: String,
    /// The key's passphrase, for the venues that have one (OKX); sealed like the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// Real money: the venue's live address. Off (its testnet) unless set explicitly.
    pub live: bool,
    /// Where the venue's REST API is, when not at its usual address (a regional or testnet
    /// mirror, or a local simulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// How long after its timestamp the venue may still accept a request, in ms.
    pub recv_window_ms: u64,
    /// How long one request to the venue may take before its outcome counts as unknown.
    pub timeout_ms: u64,
    /// How the venue account holds positions: as set on the venue, which refuses orders
    /// written for the other mode.
    #[serde(default)]
    pub position_mode: PositionMode,
}

/// How an exchange account holds positions on its venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PositionMode {
    /// One net position per symbol (Binance one-way, Bybit one-way, OKX net mode).
    #[default]
    OneWay,
    /// A long and a short per symbol (Binance hedge mode, Bybit hedge mode, OKX long/short
    /// mode). Orders name the side they open or close; the hub still holds one side at a time.
    Hedge,
}

/// Which side of a hedge-mode account an order opens or closes: the side it buys for, or
/// for a reduce-only order the side it sells out of.
pub fn position_side(side: crate::model::Side, reduce_only: bool) -> PositionSide {
    match (side, reduce_only) {
        (crate::model::Side::Buy, false) | (crate::model::Side::Sell, true) => PositionSide::Long,
        _ => PositionSide::Short,
    }
}

/// One side of a hedge-mode account's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionSide {
    Long,
    Short,
}

impl ExchangeSettings {
    /// How long one request to the venue may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }

    /// The last four characters of the API key: enough to tell keys apart, too little to use.
    pub fn key_hint(&self) -> String {
        let chars: Vec<char> = self.api_key.chars().collect();
        let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
        format!("…{tail}")
    }
}

impl std::fmt::Debug for ExchangeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeSettings")
            .field("api_key", &self.key_hint())
            .field("api_secret", &"[redacted]")
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[redacted]"),
            )
            .field("live", &self.live)
            .field("base_url", &self.base_url)
            .field("recv_window_ms", &self.recv_window_ms)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The settings of a paper account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PaperSettings {
    /// The starting balance, in `quote`.
    pub balance: f64,
    /// The currency balances, fees and PnL are counted in.
    pub quote: String,
    /// The fee of each fill, as a fraction of its notional (`0.0005` is 0.05 %).
    pub fee_rate: f64,
    /// How far a market order fills from its price against the trader, in basis points.
    pub slippage_bps: f64,
    /// The most leverage a position may use.
    pub leverage_max: f64,
}

impl Default for PaperSettings {
    fn default() -> Self {
        Self {
            balance: 10_000.0,
            quote: "USDT".into(),
            fee_rate: 0.0005,
            slippage_bps: 0.0,
            leverage_max: 1.0,
        }
    }
}

/// An account stopped by its kill switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    /// Why, as the operator (or the risk gate) said it.
    pub reason: String,
    pub since: Millis,
    /// Whether orders that only reduce a position (exits) still go out.
    pub exits_allowed: bool,
    /// When it lifts by itself (the daily loss limit's halt lasts until 00:00 UTC); `None`
    /// until an operator resumes the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
}

/// The risk gate's limits of one account; each is off when absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskLimits {
    /// The most notional one order may have, in the quote currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<f64>,
    /// The most notional one position may reach, at entry prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_notional: Option<f64>,
    /// The most positions open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_positions: Option<u32>,
    /// The most entries placed in any minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_orders_per_minute: Option<u32>,
    /// Realised losses plus fees since 00:00 UTC (or since the last resume) that halt the
    /// account's entries until the next UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_loss_limit: Option<f64>,
}

/// A trading account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub id: String,
    /// Unique; what the CLI and inbound commands name the account by.
    pub name: String,
    pub venue: VenueKind,
    /// For [`VenueKind::Paper`].
    pub paper: Option<PaperSettings>,
    /// For the exchanges.
    pub exchange: Option<ExchangeSettings>,
    /// While set (and not past its `until`), new entries are refused.
    pub halted: Option<Halt>,
    pub risk: RiskLimits,
    /// The daily loss counts from here when it is later than 00:00 UTC: the last resume.
    pub losses_from: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Account {
    /// The settings of the account's book: a paper account's own; an exchange account keeps
    /// a book of the positions its fills made, whose money the venue holds.
    pub fn book_settings(&self) -> PaperSettings {
        self.paper.clone().unwrap_or(PaperSettings {
            balance: 0.0,
            quote: "USDT".into(),
            fee_rate: 0.0,
            slippage_bps: 0.0,
            leverage_max: 125.0,
        })
    }

    /// Whether orders go to a venue with real money.
    pub fn live(&self) -> bool {
        self.exchange.as_ref().is_some_and(|e| e.live)
    }

    /// The halt in force at `now`: one whose `until` has passed is over.
    pub fn halt_at(&self, now: Millis) -> Option<&Halt> {
        self.halted
            .as_ref()
            .filter(|h| h.until.is_none_or(|until| now < until))
    }
}
