//! Backtests: stored signals run through a fresh paper account with an order destination's
//! settings, by the same decisions ([`super::decide`]) and the same paper exchange
//! ([`super::execute`], [`super::apply_mark`]) as the live executor, at each signal's own
//! time. Nothing is stored: the journal and the book live in memory.

use std::collections::HashMap;

use serde_json::Value;

use super::performance::{self, Performance};
use super::{
    Decision, apply_mark, decide, execute, halt_for_the_day, leg_id, recent_of, signal_price,
};
use crate::domain::{self, Millis, prefix};
use crate::exchange::paper::PaperBook;
use crate::model::{Account, Order, OrderRoute, OrderStatus, PaperSettings, RiskLimits, VenueKind};

/// A stored signal, as the event log holds it.
#[derive(Debug, Clone)]
pub struct Signal {
    pub id: String,
    pub event_type: String,
    /// The source's id or name; the hub's own events (`hub`) are not signals.
    pub source: String,
    pub data: Value,
    pub created_at: Millis,
}

/// A fresh paper account trading stored signals.
pub struct Backtest {
    route: OrderRoute,
    account: Account,
    book: PaperBook,
    /// Every order, oldest first.
    orders: Vec<Order>,
    /// Where each order is in `orders`, by client order id.
    index: HashMap<String, usize>,
    /// The resting orders, by client order id.
    resting: HashMap<String, Order>,
}

impl Backtest {
    pub fn new(route: OrderRoute, paper: PaperSettings, risk: RiskLimits) -> Self {
        Self {
            route,
            account: Account {
                id: "backtest".into(),
                name: "backtest".into(),
                venue: VenueKind::Paper,
                paper: Some(paper.clone()),
                exchange: None,
                halted: None,
                risk,
                losses_from: None,
                created_at: 0,
                updated_at: 0,
            },
            book: PaperBook::new(paper),
            orders: Vec::new(),
            index: HashMap::new(),
            resting: HashMap::new(),
        }
    }

    /// Runs one signal, at its own time, as the order destination would have.
    pub fn run(&mut self, signal: &Signal) {
        if signal.source == domain::HUB_SOURCE {
            return;
        }
        let now = signal.created_at;
        let data = &signal.data;
        if !matches!(
            signal.event_type.as_str(),
            "entry" | "exit" | "liquidation_warning"
        ) {
            if let (Some(symbol), Some(price)) = (self.route.symbol_of(data), signal_price(data)) {
                let symbol = symbol.clone();
                let moved = apply_mark(&mut self.book, &symbol, price, &self.resting, now);
                self.absorb(moved);
            }
            return;
        }
        let client_order_id = leg_id(&signal.id, super::Leg::Signal);
        let recent = recent_of(&self.account, &self.orders, now);
        let decision = decide(
            &self.route,
            &self.account,
            &self.book,
            &signal.event_type,
            data,
            &client_order_id,
            recent,
            now,
        );
        if let Decision::Block(why) | Decision::Cut(_, why) = &decision
            && why.code == "daily_loss_limit"
        {
            halt_for_the_day(&mut self.account, &why.detail, now);
        }
        let (request, status, reason) = match decision {
            Decision::Place(request) => (Some(request), OrderStatus::Intent, None),
            Decision::Cut(request, why) => (Some(request), OrderStatus::Intent, Some(why)),
            Decision::Block(why) => (None, OrderStatus::Blocked, Some(why)),
            Decision::Skip(why) => (None, OrderStatus::Skipped, Some(why)),
        };
        let order = Order {
            id: domain::new_id(prefix::ORDER),
            client_order_id,
            account_id: self.account.id.clone(),
            endpoint_id: String::new(),
            delivery_id: signal.id.clone(),
            event_id: signal.id.clone(),
            request,
            status,
            fill: None,
            reason,
            created_at: now,
            updated_at: now,
        };
        if order.status != OrderStatus::Intent {
            self.absorb(vec![order]);
            return;
        }
        let (settled, others) = execute(
            &mut self.book,
            order,
            Some(&self.route),
            data,
            &self.resting,
            now,
        );
        self.absorb(vec![settled]);
        self.absorb(others);
    }

    /// Writes orders into the journal: new ones added, known ones replaced.
    fn absorb(&mut self, orders: Vec<Order>) {
        for order in orders {
            if order.status == OrderStatus::Resting {
                self.resting
                    .insert(order.client_order_id.clone(), order.clone());
            } else {
                self.resting.remove(&order.client_order_id);
            }
            match self.index.get(&order.client_order_id) {
                Some(&at) => self.orders[at] = order,
                None => {
                    self.index
                        .insert(order.client_order_id.clone(), self.orders.len());
                    self.orders.push(order);
                }
            }
        }
    }

    pub fn book(&self) -> &PaperBook {
        &self.book
    }

    /// Every order the signals made, oldest first.
    pub fn orders(&self) -> &[Order] {
        &self.orders
    }

    /// The results, as `GET /accounts/{id}/performance` reports a live account's.
    pub fn report(&self) -> Performance {
        let start = self.account.paper.as_ref().map_or(0.0, |p| p.balance);
        performance::report(start, &self.orders, Millis::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sizing;
    use serde_json::json;

    fn signal(n: i64, event_type: &str, data: Value) -> Signal {
        Signal {
            id: format!("evt_{n:04}"),
            event_type: event_type.into(),
            source: "src_tv".into(),
            data,
            created_at: 1_000_000 + n * 1000,
        }
    }

    #[test]
    fn signals_trade_a_fresh_account_with_brackets_and_marks() {
        let route: OrderRoute = serde_json::from_value(json!({
            "symbols": {"BTC/USDT": "BTC/USDT:USDT"}, "size": {"base": 1},
            "brackets": {"stop_loss_percent": 10}}))
        .unwrap();
        assert_eq!(route.size, Sizing::Base(1.0));
        let paper = PaperSettings {
            fee_rate: 0.0,
            ..PaperSettings::default()
        };
        let mut bt = Backtest::new(route, paper, RiskLimits::default());
        let run = [
            signal(
                1,
                "entry",
                json!({"pair": "BTC/USDT", "side": "long", "price": 100}),
            ),
            signal(2, "price", json!({"pair": "BTC/USDT", "price": 95})),
            signal(
                3,
                "exit",
                json!({"pair": "BTC/USDT", "side": "long", "price": 110}),
            ),
            signal(
                4,
                "entry",
                json!({"pair": "BTC/USDT", "side": "long", "price": 100}),
            ),
            signal(5, "price", json!({"pair": "BTC/USDT", "price": 89})),
            // The hub's own events and other symbols change nothing.
            Signal {
                source: "hub".into(),
                ..signal(6, "price", json!({"pair": "BTC/USDT", "price": 1}))
            },
            signal(7, "price", json!({"pair": "ETH/USDT", "price": 1})),
        ];
        for s in &run {
            bt.run(s);
        }
        let statuses: Vec<(&str, &str)> = bt
            .orders()
            .iter()
            .map(|o| (o.client_order_id.as_str(), o.status.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("evt_0001-0", "filled"),
                ("evt_0001-1", "cancelled"),
                ("evt_0003-0", "filled"),
                ("evt_0004-0", "filled"),
                ("evt_0004-1", "filled"),
            ]
        );
        let report = bt.report();
        assert_eq!((report.trades, report.wins, report.losses), (2, 1, 1));
        // +10 on the exit, -11 on the stop at the price that crossed it.
        assert_eq!(report.realized_pnl, -1.0);
        assert_eq!(bt.book().balance, 9_999.0);
        assert!(bt.book().positions.is_empty());
    }
}
