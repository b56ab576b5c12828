//! The paper exchange: one account's balance, positions and resting orders, and what an
//! order does to them. Pure and deterministic: the same orders and prices in the same order
//! give the same book to the last bit, so a backtest over stored signals and the live paper
//! account that received them agree.
//!
//! Accounting is that of a linear (quote-margined) perpetual: the balance moves only by
//! realised profit and loss and by fees; a position holds margin (its entry notional over its
//! leverage); equity is the balance plus the unrealised PnL at the last price seen.

use std::collections::BTreeMap;

use crate::model::{Fill, OrderKind, OrderRequest, PaperSettings, Position, Rejection, Side};

/// Quantities below this are nothing (what is left of a position after float arithmetic).
const DUST: f64 = 1e-12;

/// What became of an order handed to the book.
#[derive(Debug, Clone, PartialEq)]
pub enum Execution {
    Filled(Fill),
    /// A limit or stop order waiting for its price.
    Resting,
}

/// One account's book.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PaperBook {
    settings: PaperSettings,
    /// Starting balance, plus realised PnL, minus fees.
    pub balance: f64,
    pub positions: BTreeMap<String, Position>,
    /// Limit and stop orders waiting for their price, oldest first.
    pub resting: Vec<OrderRequest>,
    /// The last price seen per symbol.
    pub marks: BTreeMap<String, f64>,
    pub fees_paid: f64,
    pub realized_pnl: f64,
    /// How many times the book was written: one more with each order that changes it.
    #[serde(default)]
    pub revision: u64,
}

impl PaperBook {
    pub fn new(settings: PaperSettings) -> Self {
        Self {
            balance: settings.balance,
            settings,
            positions: BTreeMap::new(),
            resting: Vec::new(),
            marks: BTreeMap::new(),
            fees_paid: 0.0,
            realized_pnl: 0.0,
            revision: 0,
        }
    }

    /// Balance plus the unrealised PnL of every position at its last price.
    pub fn equity(&self) -> f64 {
        self.balance
            + self
                .positions
                .values()
                .map(|p| p.unrealized_pnl(self.price_of(p)))
                .sum::<f64>()
    }

    /// Margin held by open positions.
    pub fn used_margin(&self) -> f64 {
        self.positions.values().map(Position::margin).sum()
    }

    fn price_of(&self, p: &Position) -> f64 {
        self.marks.get(&p.symbol).copied().unwrap_or(p.entry_price)
    }

    /// Hands an order to the book. A market order fills at `price` (the signal's), or else at
    /// the last price seen for its symbol, moved against the trader by the slippage; with
    /// neither it is refused (`no_price`). A limit or stop order rests until
    /// [`PaperBook::mark`] sees its price. A refused order changes nothing.
    pub fn submit(
        &mut self,
        order: OrderRequest,
        price: Option<f64>,
    ) -> Result<Execution, Rejection> {
        if !(order.quantity.is_finite() && order.quantity > 0.0) {
            return Err(Rejection::new(
                "invalid_quantity",
                format!("the quantity must be more than 0, not {}", order.quantity),
            ));
        }
        if let Some(p) = price.filter(|p| p.is_finite() && *p > 0.0) {
            self.marks.insert(order.symbol.clone(), p);
        }
        match order.kind {
            OrderKind::Market => {
                let Some(mark) = self.marks.get(&order.symbol).copied() else {
                    return Err(Rejection::new(
                        "no_price",
                        format!(
                            "no price for {}: the signal has none and none has been seen",
                            order.symbol
                        ),
                    ));
                };
                let slip = self.settings.slippage_bps / 10_000.0;
                let fill_price = mark * (1.0 + order.side.sign() * slip);
                self.execute(&order, fill_price).map(Execution::Filled)
            }
            OrderKind::Limit { price: p } | OrderKind::Stop { trigger: p } => {
                if !(p.is_finite() && p > 0.0) {
                    return Err(Rejection::new(
                        "invalid_price",
                        format!("the order's price must be more than 0, not {p}"),
                    ));
                }
                self.check(&order, p)?;
                self.resting.push(order);
                Ok(Execution::Resting)
            }
        }
    }

    /// Takes a cancelled resting order off the book; `false` when there is none by that id.
    pub fn cancel(&mut self, client_order_id: &str) -> bool {
        let before = self.resting.len();
        self.resting
            .retain(|o| o.client_order_id != client_order_id);
        self.resting.len() < before
    }

    /// A new price for `symbol`: resting orders it reaches execute, oldest first. A limit
    /// fills at its own price; a stop at `price` (a gap past the trigger fills at the gap).
    /// When a fill closes the position, the reduce-only orders left for it are cancelled
    /// (they leave the book without an answer here). Returns each order that executed, or
    /// was refused, with what became of it.
    pub fn mark(
        &mut self,
        symbol: &str,
        price: f64,
    ) -> Vec<(OrderRequest, Result<Fill, Rejection>)> {
        if !(price.is_finite() && price > 0.0) {
            return Vec::new();
        }
        self.marks.insert(symbol.to_owned(), price);
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resting)
            .into_iter()
            .partition(|o| o.symbol == symbol && reached(o, price));
        self.resting = waiting;
        let mut done = Vec::new();
        for order in due {
            if order.reduce_only && !self.positions.contains_key(&order.symbol) {
                // Reached at the same price as the order that closed its position: cancelled
                // with the rest.
                continue;
            }
            let at = match order.kind {
                OrderKind::Limit { price: limit } => limit,
                _ => price,
            };
            let outcome = self.execute(&order, at);
            done.push((order, outcome));
        }
        done
    }

    /// Whether `order` may execute at `price`; changes nothing.
    fn check(&self, order: &OrderRequest, price: f64) -> Result<f64, Rejection> {
        let position = self.positions.get(&order.symbol);
        let held = position.map_or(0.0, |p| p.size);
        let opposite = held * order.side.sign() < 0.0;
        let closing = if opposite {
            order.quantity.min(held.abs())
        } else {
            0.0
        };
        if order.reduce_only {
            if closing <= DUST {
                return Err(Rejection::new(
                    "no_position",
                    format!(
                        "a reduce-only {} of {} has no position to reduce",
                        side_name(order.side),
                        order.symbol
                    ),
                ));
            }
            return Ok(closing);
        }
        let opening = order.quantity - closing;
        if opening > DUST {
            if !(1.0..=self.settings.leverage_max).contains(&order.leverage) {
                return Err(Rejection::new(
                    "leverage_above_max",
                    format!(
                        "leverage {} is outside 1 to the account's {}",
                        order.leverage, self.settings.leverage_max
                    ),
                ));
            }
            let freed = position.map_or(0.0, |p| p.margin() * closing / held.abs());
            let available = self.equity() - (self.used_margin() - freed);
            let needed =
                opening * price / order.leverage + order.quantity * price * self.settings.fee_rate;
            if needed > available {
                return Err(Rejection::new(
                    "insufficient_margin",
                    format!(
                        "the order needs {needed:.2} {} of margin and fees; {:.2} is available",
                        self.settings.quote,
                        available.max(0.0)
                    ),
                ));
            }
        }
        Ok(order.quantity)
    }

    /// Executes `order` at `price`: the checks, then the position, balance and fees.
    fn execute(&mut self, order: &OrderRequest, price: f64) -> Result<Fill, Rejection> {
        let quantity = self.check(order, price)?;
        let fee = quantity * price * self.settings.fee_rate;
        Ok(self.record(order, quantity, price, fee))
    }

    /// Books a fill a venue made of `order`: `quantity` at `price` for `fee`. The venue did
    /// the checks; this only moves the position, the balance and the fees.
    pub fn record(&mut self, order: &OrderRequest, quantity: f64, price: f64, fee: f64) -> Fill {
        let signed = quantity * order.side.sign();
        let mut realized = 0.0;
        let held = self.positions.get(&order.symbol).cloned();
        let after = match held {
            None => Some(Position {
                symbol: order.symbol.clone(),
                size: signed,
                entry_price: price,
                leverage: order.leverage,
                entries: 1,
            }),
            Some(p) if p.size * signed > 0.0 => {
                // Adding: the entry price is the average, the margins add up.
                let size = p.size + signed;
                let entry_price = (p.size.abs() * p.entry_price + quantity * price) / size.abs();
                let margin = p.margin() + quantity * price / order.leverage;
                Some(Position {
                    leverage: size.abs() * entry_price / margin,
                    size,
                    entry_price,
                    symbol: p.symbol,
                    entries: p.entries + 1,
                })
            }
            Some(p) => {
                let closing = quantity.min(p.size.abs());
                realized = closing * (price - p.entry_price) * p.size.signum();
                let size = p.size + signed;
                if size.abs() <= DUST {
                    None
                } else if size * p.size > 0.0 {
                    // Partly closed: what is left keeps its entry price and leverage.
                    Some(Position { size, ..p })
                } else {
                    // Turned the other way: the rest opens at this price.
                    Some(Position {
                        symbol: p.symbol,
                        size,
                        entry_price: price,
                        leverage: order.leverage,
                        entries: 1,
                    })
                }
            }
        };
        match after {
            Some(p) => {
                self.positions.insert(order.symbol.clone(), p);
            }
            None => {
                self.positions.remove(&order.symbol);
                // What was left to reduce the position (the other leg of a bracket) has
                // nothing to reduce any more.
                self.resting
                    .retain(|o| !(o.symbol == order.symbol && o.reduce_only));
            }
        }
        self.balance += realized - fee;
        self.realized_pnl += realized;
        self.fees_paid += fee;
        Fill {
            client_order_id: order.client_order_id.clone(),
            symbol: order.symbol.clone(),
            side: order.side,
            quantity,
            price,
            fee,
            realized_pnl: realized,
        }
    }
}

/// Whether `price` reaches a resting order.
fn reached(order: &OrderRequest, price: f64) -> bool {
    match (order.kind, order.side) {
        (OrderKind::Limit { price: limit }, Side::Buy) => price <= limit,
        (OrderKind::Limit { price: limit }, Side::Sell) => price >= limit,
        (OrderKind::Stop { trigger }, Side::Buy) => price >= trigger,
        (OrderKind::Stop { trigger }, Side::Sell) => price <= trigger,
        (OrderKind::Market, _) => true,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(fee_rate: f64, slippage_bps: f64, leverage_max: f64) -> PaperBook {
        PaperBook::new(PaperSettings {
            balance: 10_000.0,
            quote: "USDT".into(),
            fee_rate,
            slippage_bps,
            leverage_max,
        })
    }

    fn order(id: &str, side: Side, quantity: f64) -> OrderRequest {
        OrderRequest {
            client_order_id: id.into(),
            symbol: "BTC/USDT:USDT".into(),
            side,
            quantity,
            kind: OrderKind::Market,
            reduce_only: false,
            leverage: 1.0,
        }
    }

    fn exit(id: &str, side: Side, quantity: f64) -> OrderRequest {
        OrderRequest {
            reduce_only: true,
            ..order(id, side, quantity)
        }
    }

    fn filled(e: Result<Execution, Rejection>) -> Fill {
        match e {
            Ok(Execution::Filled(f)) => f,
            other => panic!("not filled: {other:?}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn an_order_without_any_price_is_refused_and_changes_nothing() {
        let mut b = book(0.001, 0.0, 1.0);
        let before = b.clone();
        let refused = b.submit(order("o1", Side::Buy, 1.0), None).unwrap_err();
        assert_eq!(refused.code, "no_price");
        assert_eq!(b, before);
        // A price seen before (any event with a pair and a price) is enough.
        b.mark("BTC/USDT:USDT", 100.0);
        assert_eq!(
            filled(b.submit(order("o1", Side::Buy, 1.0), None)).price,
            100.0
        );
    }

    #[test]
    fn a_reduce_only_order_never_opens_or_turns_a_position() {
        let mut b = book(0.0, 0.0, 1.0);
        let before = b.clone();
        let refused = b
            .submit(exit("x1", Side::Sell, 1.0), Some(100.0))
            .unwrap_err();
        assert_eq!(refused.code, "no_position");
        assert_eq!(b.positions, before.positions);
        assert_eq!(b.balance, before.balance);

        filled(b.submit(order("e1", Side::Buy, 2.0), Some(100.0)));
        // Same side as the position: nothing to reduce.
        let same = b
            .submit(exit("x2", Side::Buy, 1.0), Some(100.0))
            .unwrap_err();
        assert_eq!(same.code, "no_position");
        // Larger than the position: it closes it, and no more.
        let f = filled(b.submit(exit("x3", Side::Sell, 5.0), Some(110.0)));
        assert_eq!(f.quantity, 2.0);
        assert!(b.positions.is_empty());
        assert!(close(b.balance, 10_020.0));
    }

    #[test]
    fn an_entry_beyond_the_margin_or_the_leverage_is_refused() {
        let mut b = book(0.001, 0.0, 5.0);
        let too_big = b
            .submit(order("o1", Side::Buy, 101.0), Some(100.0))
            .unwrap_err();
        assert_eq!(too_big.code, "insufficient_margin");
        let mut levered = order("o2", Side::Buy, 101.0);
        levered.leverage = 10.0;
        let refused = b.submit(levered.clone(), Some(100.0)).unwrap_err();
        assert_eq!(refused.code, "leverage_above_max");
        levered.leverage = 5.0;
        let f = filled(b.submit(levered, Some(100.0)));
        assert_eq!(f.quantity, 101.0);
        assert!(close(b.used_margin(), 101.0 * 100.0 / 5.0));
        assert_eq!(b.balance, 10_000.0 - f.fee);
    }

    #[test]
    fn a_round_trip_realises_pnl_net_of_slippage_and_fees() {
        let mut b = book(0.001, 10.0, 1.0);
        let entry = filled(b.submit(order("e", Side::Buy, 2.0), Some(100.0)));
        assert!(close(entry.price, 100.1), "bought 10 bps above");
        assert!(close(entry.fee, 2.0 * 100.1 * 0.001));
        b.mark("BTC/USDT:USDT", 105.0);
        assert!(close(
            b.equity(),
            10_000.0 - entry.fee + 2.0 * (105.0 - 100.1)
        ));
        let out = filled(b.submit(exit("x", Side::Sell, 2.0), Some(110.0)));
        assert!(close(out.price, 109.89), "sold 10 bps below");
        assert!(close(out.realized_pnl, 2.0 * (109.89 - 100.1)));
        assert!(close(
            b.balance,
            10_000.0 + out.realized_pnl - entry.fee - out.fee
        ));
        assert!(close(b.fees_paid, entry.fee + out.fee));
        assert!(b.positions.is_empty());
    }

    #[test]
    fn a_short_gains_when_the_price_falls_and_adding_averages_the_entry() {
        let mut b = book(0.0, 0.0, 1.0);
        filled(b.submit(order("s1", Side::Sell, 1.0), Some(100.0)));
        filled(b.submit(order("s2", Side::Sell, 1.0), Some(110.0)));
        let p = &b.positions["BTC/USDT:USDT"];
        assert_eq!((p.size, p.entries), (-2.0, 2));
        assert!(close(p.entry_price, 105.0));
        // Half closed: the rest keeps its entry price.
        let f = filled(b.submit(exit("c1", Side::Buy, 1.0), Some(95.0)));
        assert!(close(f.realized_pnl, 10.0));
        assert!(close(b.positions["BTC/USDT:USDT"].entry_price, 105.0));
        assert!(close(b.balance, 10_010.0));
    }

    #[test]
    fn an_order_larger_than_the_opposite_position_turns_it_at_its_price() {
        let mut b = book(0.0, 0.0, 1.0);
        filled(b.submit(order("l", Side::Buy, 1.0), Some(100.0)));
        let f = filled(b.submit(order("s", Side::Sell, 3.0), Some(120.0)));
        assert!(close(f.realized_pnl, 20.0));
        let p = &b.positions["BTC/USDT:USDT"];
        assert_eq!((p.size, p.entry_price), (-2.0, 120.0));
    }

    #[test]
    fn a_stop_rests_until_the_price_crosses_it_and_fills_at_the_gap() {
        let mut b = book(0.0, 0.0, 1.0);
        filled(b.submit(order("e", Side::Buy, 1.0), Some(100.0)));
        let mut stop = exit("sl", Side::Sell, 1.0);
        stop.kind = OrderKind::Stop { trigger: 95.0 };
        assert_eq!(b.submit(stop, None), Ok(Execution::Resting));
        let mut take = exit("tp", Side::Sell, 1.0);
        take.kind = OrderKind::Limit { price: 110.0 };
        assert_eq!(b.submit(take, None), Ok(Execution::Resting));

        assert!(b.mark("BTC/USDT:USDT", 97.0).is_empty());
        assert!(b.mark("ETH/USDT:USDT", 1.0).is_empty(), "another symbol");
        let done = b.mark("BTC/USDT:USDT", 93.0);
        assert_eq!(done.len(), 1);
        let fill = done[0].1.clone().unwrap();
        assert_eq!((fill.client_order_id.as_str(), fill.price), ("sl", 93.0));
        assert!(b.positions.is_empty());
        // The take-profit had nothing left to reduce: it left the book with the position.
        assert!(b.resting.is_empty());
        assert!(b.mark("BTC/USDT:USDT", 111.0).is_empty());
    }

    #[test]
    fn closing_a_position_cancels_what_was_left_to_reduce_it_and_nothing_else() {
        let mut b = book(0.0, 0.0, 1.0);
        filled(b.submit(order("e", Side::Buy, 1.0), Some(100.0)));
        for (id, price) in [("sl1", 95.0), ("sl2", 95.0)] {
            let mut stop = exit(id, Side::Sell, 1.0);
            stop.kind = OrderKind::Stop { trigger: price };
            b.submit(stop, None).unwrap();
        }
        let mut buy = order("lb", Side::Buy, 1.0);
        buy.kind = OrderKind::Limit { price: 80.0 };
        b.submit(buy, None).unwrap();
        // Both stops are reached at once: the first closes the position, the second is
        // cancelled with it; the limit entry stays.
        let done = b.mark("BTC/USDT:USDT", 94.0);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0.client_order_id, "sl1");
        let left: Vec<_> = b
            .resting
            .iter()
            .map(|o| o.client_order_id.as_str())
            .collect();
        assert_eq!(left, ["lb"]);
        // An exit by market order cancels them too.
        filled(b.submit(order("e2", Side::Buy, 1.0), Some(100.0)));
        let mut stop = exit("sl3", Side::Sell, 1.0);
        stop.kind = OrderKind::Stop { trigger: 90.0 };
        b.submit(stop, None).unwrap();
        filled(b.submit(exit("x", Side::Sell, 1.0), Some(101.0)));
        let left: Vec<_> = b
            .resting
            .iter()
            .map(|o| o.client_order_id.as_str())
            .collect();
        assert_eq!(left, ["lb"]);
    }

    #[test]
    fn a_limit_fills_at_its_own_price_and_a_cancelled_one_never_does() {
        let mut b = book(0.0, 0.0, 1.0);
        let mut buy = order("lb", Side::Buy, 1.0);
        buy.kind = OrderKind::Limit { price: 90.0 };
        b.submit(buy.clone(), Some(100.0)).unwrap();
        let done = b.mark("BTC/USDT:USDT", 85.0);
        assert_eq!(done[0].1.clone().unwrap().price, 90.0);
        buy.client_order_id = "lb2".into();
        b.submit(buy, None).unwrap();
        assert!(b.cancel("lb2"));
        assert!(!b.cancel("lb2"));
        assert!(b.mark("BTC/USDT:USDT", 80.0).is_empty());
    }

    #[test]
    fn the_same_orders_and_prices_give_the_same_book() {
        let run = || {
            let mut b = book(0.0004, 3.0, 10.0);
            for i in 0..200 {
                let price = 100.0 + (i as f64 * 0.37).sin() * 7.0;
                let mut o = order(&format!("o{i}"), [Side::Buy, Side::Sell][i % 2], 0.3);
                o.leverage = 3.0;
                let _ = b.submit(o, Some(price));
                b.mark("BTC/USDT:USDT", price * 1.001);
            }
            b
        };
        assert_eq!(run(), run());
    }
}
