//! Token buckets: the dispatcher's per-endpoint rate limits and the inbound limits per source
//! and per client address.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::domain::Millis;
use crate::domain::RateLimit;

/// `count` requests per `per_ms`, refilled continuously, starting full.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Millis,
}

impl Bucket {
    pub fn full(limit: RateLimit, now: Millis) -> Self {
        Self {
            tokens: limit.count as f64,
            at: now,
        }
    }

    /// Takes a token if there is one; otherwise says how many milliseconds until there is.
    pub fn take(&mut self, limit: RateLimit, now: Millis) -> Result<(), u64> {
        let rate = limit.count as f64 / limit.per_ms as f64;
        let elapsed = (now - self.at).max(0) as f64;
        self.tokens = (self.tokens + elapsed * rate).min(limit.count as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate).ceil() as u64)
        }
    }

    fn is_full(&self, limit: RateLimit, now: Millis) -> bool {
        let rate = limit.count as f64 / limit.per_ms as f64;
        self.tokens + (now - self.at).max(0) as f64 * rate >= limit.count as f64
    }
}

/// Buckets by key (a source, a client address), shared between requests.
#[derive(Debug)]
pub struct Keyed<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K> Default for Keyed<K> {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

/// Keys kept before idle (full) buckets are dropped.
const MAX_KEYS: usize = 10_000;

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// Takes a token for `key`, or says how many milliseconds until there is one.
    pub fn take(&self, key: &K, limit: RateLimit, now: Millis) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .expect("a rate limiter lock is never poisoned");
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // A full bucket says nothing a new one would not: forget those.
            buckets.retain(|_, b| !b.is_full(limit, now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(limit, now))
            .take(limit, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit {
            count: 2,
            per_ms: 1000,
        };
        let mut b = Bucket::full(limit, 0);
        assert_eq!(b.take(limit, 0), Ok(()));
        assert_eq!(b.take(limit, 0), Ok(()));
        assert_eq!(b.take(limit, 0), Err(500));
        assert!(matches!(b.take(limit, 499), Err(1..=2)));
        assert_eq!(b.take(limit, 500), Ok(()));
        let keyed = Keyed::default();
        assert!(keyed.take(&"a", limit, 0).is_ok());
        assert!(keyed.take(&"a", limit, 0).is_ok());
        assert!(keyed.take(&"a", limit, 0).is_err());
        assert!(keyed.take(&"b", limit, 0).is_ok());
    }
}
