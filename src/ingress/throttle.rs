//! Rate limiting of the proxy: token buckets per route, per API key and per client, and the
//! retry budget.
//!
//! Cluster-wide limits without a round trip per request: each node enforces `rate x share`
//! with `share = 1 / live nodes`, live meaning this node plus the peers its transport is
//! connected to right now (see [`Share`]). How exact that is:
//! - load spread evenly over the nodes (a load balancer in front, or callers rotating): the
//!   cluster admits `rate` (+ each node's burst share once), within a fraction of a percent;
//! - load on fewer nodes than are live: those nodes admit only their shares, so the cluster
//!   admits less than `rate` (never more) - a known gap, see docs/proxy.md;
//! - a node that loses its peers counts itself alone and admits the full rate, so during a
//!   partition the cluster may admit up to `rate x partitions` (availability over precision).
//!
//! Buckets live in one bounded map ([`MAX_BUCKETS`]); when it is full, idle (refilled) buckets
//! are dropped, and if none is idle a new client is refused (429) rather than growing memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::ingress::route::Rate;

/// Most buckets (route, key and client) one node keeps.
pub const MAX_BUCKETS: usize = 100_000;

/// Retry tokens a route starts with (and never holds more than [`MAX_RETRY_TOKENS`]): lets
/// a quiet route retry the odd failure although its 20 % of few requests is small.
pub const MIN_RETRY_TOKENS: f64 = 10.0;
pub const MAX_RETRY_TOKENS: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The answer of one admission check, with what the RateLimit headers say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub admitted: bool,
    /// The configured (cluster-wide) requests per second.
    pub limit: f64,
    /// Estimated cluster-wide requests left in the bucket now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
    /// Seconds until one more request would be admitted (0 when admitted).
    pub retry_after_s: u64,
}

/// This node's share of a cluster-wide rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub live_nodes: usize,
}

impl Share {
    pub fn fraction(&self) -> f64 {
        1.0 / self.live_nodes.max(1) as f64
    }
}

#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Throttle {
    /// Takes one token from bucket `key` (created full), limited to `rate x share`.
    pub fn take(&self, key: &str, rate: &Rate, share: Share, now: Instant) -> Verdict {
        let f = share.fraction();
        let per_s = rate.per_second * f;
        let burst = (rate.burst() * f).max(1.0);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(key) && map.len() >= MAX_BUCKETS {
            // Idle buckets are those that would be full by now; dropping them loses nothing.
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_s < burst
            });
            if map.len() >= MAX_BUCKETS {
                return Verdict {
                    admitted: false,
                    limit: rate.per_second,
                    remaining: 0,
                    reset_s: 1,
                    retry_after_s: 1,
                };
            }
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * per_s).min(burst);
        b.at = now;
        let admitted = b.tokens >= 1.0;
        if admitted {
            b.tokens -= 1.0;
        }
        let retry_after_s = if admitted {
            0
        } else {
            ((1.0 - b.tokens) / per_s).ceil().max(1.0) as u64
        };
        Verdict {
            admitted,
            limit: rate.per_second,
            remaining: (b.tokens / f).floor().max(0.0) as u64,
            reset_s: ((burst - b.tokens) / per_s).ceil().max(0.0) as u64,
            retry_after_s,
        }
    }
}

/// A route's retry budget: every request deposits `percent / 100` of a token, every retry
/// withdraws one; between [`MIN_RETRY_TOKENS`] (start) and [`MAX_RETRY_TOKENS`].
pub struct RetryBudget {
    tokens: Mutex<f64>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            tokens: Mutex::new(MIN_RETRY_TOKENS),
        }
    }
}

impl RetryBudget {
    pub fn deposit(&self, percent: u32) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *t = (*t + percent as f64 / 100.0).min(MAX_RETRY_TOKENS);
    }

    /// True (and a token spent) if a retry is allowed now.
    pub fn withdraw(&self) -> bool {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A bucket admits its burst at once, then `rate` per second; a 1/3 share admits a third;
    /// a refusal says when to come back.
    #[test]
    fn buckets_refill_at_their_share() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let rate = Rate {
            per_second: 30.0,
            burst: Some(30),
        };
        let one = Share { live_nodes: 1 };
        let three = Share { live_nodes: 3 };
        let admitted = |share, from: Instant, key: &str| {
            (0..1000)
                .filter(|i| {
                    t.take(key, &rate, share, from + Duration::from_millis(*i))
                        .admitted
                })
                .count()
        };
        // One second at full share: burst 30 + 30 refilled (give or take one).
        let n = admitted(one, t0, "a");
        assert!((59..=61).contains(&n), "{n}");
        let n = admitted(three, t0, "b");
        assert!((19..=21).contains(&n), "{n}");
        let v = t.take("b", &rate, three, t0 + Duration::from_millis(999));
        assert!(!v.admitted);
        assert_eq!(v.limit, 30.0);
        assert_eq!(v.retry_after_s, 1);
    }

    /// The budget allows its floor of retries, then one per 1/percent requests.
    #[test]
    fn retry_budget() {
        let b = RetryBudget::default();
        let n = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(n, MIN_RETRY_TOKENS as usize);
        for _ in 0..10 {
            b.deposit(20);
        }
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }
}
