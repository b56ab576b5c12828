//! An account's results over a window, from the fills in its journal: the same report for a
//! live paper account and for a backtest of stored signals, so the two can be compared.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Millis;
use crate::model::{Order, OrderStatus};

/// At most this many points of the equity curve are reported; a longer one is thinned
/// evenly, keeping its first and last points.
pub const CURVE_POINTS: usize = 500;

/// One point of the equity curve: the balance after a fill.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Point {
    /// Unix milliseconds.
    pub at: Millis,
    pub balance: f64,
}

/// What an account made over a window. A trade is a fill that closed (part of) a position.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Performance {
    /// Closing fills in the window.
    pub trades: u32,
    /// Trades with a realised gain, and with a realised loss (before fees).
    pub wins: u32,
    pub losses: u32,
    /// `wins / trades`; null without trades.
    pub win_rate: Option<f64>,
    /// Profit and loss realised by the window's fills, before fees.
    pub realized_pnl: f64,
    /// Fees of every fill in the window, opening ones included.
    pub fees: f64,
    /// `realized_pnl - fees`.
    pub net_pnl: f64,
    /// Gross gains over gross losses; null without a losing trade.
    pub profit_factor: Option<f64>,
    /// The largest fall of the balance from a peak, in the quote currency and in percent of
    /// that peak.
    pub max_drawdown: f64,
    pub max_drawdown_percent: f64,
    /// The balance at the start of the window and after its last fill.
    pub start_balance: f64,
    pub end_balance: f64,
    /// The balance after each fill (positions counted at their entry price), oldest first.
    pub equity_curve: Vec<Point>,
}

/// The report of `orders` (any order) for an account that started with `starting_balance`,
/// over the fills settled at or after `since`; the fills before it make the start balance.
pub fn report(starting_balance: f64, orders: &[Order], since: Millis) -> Performance {
    let mut fills: Vec<&Order> = orders
        .iter()
        .filter(|o| o.status == OrderStatus::Filled && o.fill.is_some())
        .collect();
    // In the order they happened: settled time, then id (both increase with each order).
    fills.sort_by(|a, b| (a.updated_at, &a.id).cmp(&(b.updated_at, &b.id)));
    let mut balance = starting_balance;
    let mut out = Performance {
        trades: 0,
        wins: 0,
        losses: 0,
        win_rate: None,
        realized_pnl: 0.0,
        fees: 0.0,
        net_pnl: 0.0,
        profit_factor: None,
        max_drawdown: 0.0,
        max_drawdown_percent: 0.0,
        start_balance: starting_balance,
        end_balance: starting_balance,
        equity_curve: Vec::new(),
    };
    let (mut gains, mut lost) = (0.0, 0.0);
    let mut peak = f64::NEG_INFINITY;
    let mut curve = Vec::new();
    for order in fills {
        let fill = order.fill.as_ref().expect("filtered");
        let after = balance + fill.realized_pnl - fill.fee;
        if order.updated_at < since {
            balance = after;
            out.start_balance = balance;
            continue;
        }
        if peak == f64::NEG_INFINITY {
            peak = balance;
            curve.push(Point {
                at: order.updated_at,
                balance,
            });
        }
        balance = after;
        out.fees += fill.fee;
        out.realized_pnl += fill.realized_pnl;
        let closing =
            order.request.as_ref().is_some_and(|r| r.reduce_only) || fill.realized_pnl != 0.0;
        if closing {
            out.trades += 1;
            if fill.realized_pnl > 0.0 {
                out.wins += 1;
                gains += fill.realized_pnl;
            } else if fill.realized_pnl < 0.0 {
                out.losses += 1;
                lost -= fill.realized_pnl;
            }
        }
        peak = peak.max(balance);
        let fall = peak - balance;
        if fall > out.max_drawdown {
            out.max_drawdown = fall;
            out.max_drawdown_percent = if peak > 0.0 { fall / peak * 100.0 } else { 0.0 };
        }
        curve.push(Point {
            at: order.updated_at,
            balance,
        });
    }
    out.end_balance = balance;
    out.net_pnl = out.realized_pnl - out.fees;
    out.win_rate = (out.trades > 0).then(|| f64::from(out.wins) / f64::from(out.trades));
    out.profit_factor = (lost > 0.0).then(|| gains / lost);
    out.equity_curve = thin(curve, CURVE_POINTS);
    out
}

/// At most `n` points of `curve`, evenly spread, its first and last among them.
fn thin(curve: Vec<Point>, n: usize) -> Vec<Point> {
    if curve.len() <= n || n < 2 {
        return curve;
    }
    let last = curve.len() - 1;
    (0..n).map(|i| curve[i * last / (n - 1)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Fill, OrderKind, OrderRequest, Side};

    fn fill(n: i64, reduce_only: bool, pnl: f64, fee: f64) -> Order {
        let request = OrderRequest {
            client_order_id: format!("d{n}-0"),
            symbol: "BTC/USDT:USDT".into(),
            side: Side::Buy,
            quantity: 1.0,
            kind: OrderKind::Market,
            reduce_only,
            leverage: 1.0,
        };
        Order {
            id: format!("ord_{n:04}"),
            client_order_id: request.client_order_id.clone(),
            account_id: "acc_1".into(),
            endpoint_id: "ep_1".into(),
            delivery_id: format!("d{n}"),
            event_id: format!("e{n}"),
            fill: Some(Fill {
                client_order_id: request.client_order_id.clone(),
                symbol: request.symbol.clone(),
                side: Side::Buy,
                quantity: 1.0,
                price: 100.0,
                fee,
                realized_pnl: pnl,
            }),
            request: Some(request),
            status: OrderStatus::Filled,
            reason: None,
            created_at: n,
            updated_at: n,
        }
    }

    #[test]
    fn trades_win_rate_profit_factor_and_drawdown_come_from_the_closing_fills() {
        let orders = [
            fill(1, false, 0.0, 1.0),
            fill(2, true, 30.0, 1.0),
            fill(3, false, 0.0, 1.0),
            fill(4, true, -20.0, 1.0),
            fill(5, false, 0.0, 1.0),
            fill(6, true, -10.0, 1.0),
            fill(7, false, 0.0, 1.0),
            fill(8, true, 15.0, 1.0),
        ];
        let r = report(1000.0, &orders, 0);
        assert_eq!((r.trades, r.wins, r.losses), (4, 2, 2));
        assert_eq!(r.win_rate, Some(0.5));
        assert_eq!(r.realized_pnl, 15.0);
        assert_eq!(r.fees, 8.0);
        assert_eq!(r.net_pnl, 7.0);
        assert_eq!(r.profit_factor, Some(45.0 / 30.0));
        // Peak 1028 after the first win, trough 993 before the last: the fees count.
        assert_eq!(r.max_drawdown, 35.0);
        assert!((r.max_drawdown_percent - 35.0 / 1028.0 * 100.0).abs() < 1e-12);
        assert_eq!(r.end_balance, 1007.0);
        assert_eq!(r.equity_curve.len(), 9, "the start and each fill");
        assert_eq!(r.equity_curve[0].balance, 1000.0);
    }

    #[test]
    fn fills_before_the_window_make_its_start_balance() {
        let orders = [
            fill(1, false, 0.0, 1.0),
            fill(2, true, 30.0, 1.0),
            fill(3, false, 0.0, 0.0),
            fill(4, true, -5.0, 0.0),
        ];
        let r = report(1000.0, &orders, 3);
        assert_eq!(r.start_balance, 1028.0);
        assert_eq!((r.trades, r.losses), (1, 1));
        assert_eq!(r.profit_factor, Some(0.0));
        assert_eq!(r.end_balance, 1023.0);
        let none = report(1000.0, &[], 0);
        assert_eq!(
            (none.trades, none.win_rate, none.profit_factor),
            (0, None, None)
        );
        assert_eq!(none.end_balance, 1000.0);
    }

    #[test]
    fn a_long_curve_is_thinned_to_its_limit_keeping_both_ends() {
        let orders: Vec<Order> = (1..=2000).map(|n| fill(n, false, 0.0, 0.001)).collect();
        let r = report(1000.0, &orders, 0);
        assert_eq!(r.equity_curve.len(), CURVE_POINTS);
        assert_eq!(r.equity_curve[0].balance, 1000.0);
        assert_eq!(r.equity_curve.last().unwrap().at, 2000);
    }
}
