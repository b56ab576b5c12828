//! When to try a failed delivery again.

use crate::domain::Millis;
use crate::model::NextStep;

/// The default delays between attempts: about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h,
/// 12 h and 24 h, so a delivery is retried for about two days before it fails.
pub const DEFAULT_SCHEDULE_MS: [u64; 10] = [
    5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 10_800_000, 21_600_000, 43_200_000,
    86_400_000,
];

/// The longest wait a receiver's `retry_after` can impose on one delivery (1 hour).
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// Reads a `Retry-After` header: seconds, or an HTTP date, as milliseconds from `now`.
///
/// ```
/// use tradehook::deliver::retry::parse_retry_after;
/// assert_eq!(parse_retry_after("30", 0), Some(30_000));
/// assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 0), Some(60_000));
/// assert_eq!(parse_retry_after("soon", 0), None);
/// ```
pub fn parse_retry_after(value: &str, now: Millis) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64);
    }
    let at = jiff::fmt::rfc2822::parse(value)
        .ok()?
        .timestamp()
        .as_millisecond();
    Some((at - now).max(0) as u64)
}

/// How far a delay may be moved at random (±10 %), so that many deliveries failing together
/// do not all come back at the same instant.
pub const JITTER: f64 = 0.1;

/// The next step after the `tries`-th failed attempt (counting from 1).
///
/// `jitter` is a random number in `[-1, 1]`.
///
/// ```
/// use tradehook::deliver::retry::next_after_failure;
/// use tradehook::model::NextStep;
/// let schedule = [5_000, 30_000];
/// assert_eq!(next_after_failure(1, &schedule, 1_000, 0.0), NextStep::RetryAt(6_000));
/// assert_eq!(next_after_failure(2, &schedule, 1_000, 1.0), NextStep::RetryAt(34_000));
/// assert_eq!(next_after_failure(3, &schedule, 1_000, 0.0), NextStep::Failed);
/// ```
pub fn next_after_failure(tries: u32, schedule: &[u64], now: Millis, jitter: f64) -> NextStep {
    let Some(&delay) = schedule.get(tries.saturating_sub(1) as usize) else {
        return NextStep::Failed;
    };
    let factor = 1.0 + JITTER * jitter.clamp(-1.0, 1.0);
    let delay = (delay as f64 * factor).round() as i64;
    NextStep::RetryAt(now.saturating_add(delay.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_retries_ten_times_then_fails() {
        for tries in 1..=10 {
            assert!(matches!(
                next_after_failure(tries, &DEFAULT_SCHEDULE_MS, 0, 0.0),
                NextStep::RetryAt(_)
            ));
        }
        assert_eq!(
            next_after_failure(11, &DEFAULT_SCHEDULE_MS, 0, 0.0),
            NextStep::Failed
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for j in [-1.0, -0.3, 0.0, 0.7, 1.0, 5.0] {
            let NextStep::RetryAt(at) = next_after_failure(1, &[10_000], 0, j) else {
                panic!("expected a retry");
            };
            assert!((9_000..=11_000).contains(&at), "{at}");
        }
    }

    #[test]
    fn an_empty_schedule_fails_after_the_first_attempt() {
        assert_eq!(next_after_failure(1, &[], 0, 0.0), NextStep::Failed);
    }
}
