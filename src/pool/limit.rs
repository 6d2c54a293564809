//! Adaptive per-tenant concurrency limit (AIMD) and the peak-EWMA latency estimate.
//!
//! The limit caps requests outstanding from this node to one tenant. It starts at the
//! configured `max_in_flight` (the operator's statement of what the tenant takes) and:
//! - decreases multiplicatively ([`DECREASE_FACTOR`]) when the tenant answers 429 or 503, or
//!   when a call's latency climbs above [`LATENCY_TOLERANCE`] x the observed minimum plus
//!   [`LATENCY_SLACK`]; at most once per [`DECREASE_COOLDOWN`], so one burst of bad answers
//!   counts once;
//! - increases additively (+1 per `limit` good calls) otherwise;
//! - never leaves `MIN_LIMIT..=max_in_flight`.
//!
//! The minimum latency is re-learned every [`MIN_RTT_WINDOW`] so a tenant that became slower
//! for good does not keep its limit pinned low forever.

use std::time::{Duration, Instant};

/// The limit never goes below this many requests in flight.
pub const MIN_LIMIT: u32 = 1;
/// Multiplier applied on a decrease.
pub const DECREASE_FACTOR: f64 = 0.8;
/// Shortest time between two decreases.
pub const DECREASE_COOLDOWN: Duration = Duration::from_millis(100);
/// Latency above `LATENCY_TOLERANCE * min_rtt + LATENCY_SLACK` counts as "climbing".
pub const LATENCY_TOLERANCE: f64 = 2.0;
pub const LATENCY_SLACK: Duration = Duration::from_millis(20);
/// How long a learned minimum latency is trusted.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(30);
/// Time constant of the latency EWMA.
pub const EWMA_TAU: Duration = Duration::from_secs(2);
/// Without samples, the estimate drifts back to [`DEFAULT_LATENCY`] with this time constant,
/// so a tenant that once was slow gets tried again.
pub const EWMA_FORGET: Duration = Duration::from_secs(10);
/// Latency assumed for a tenant with no samples.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    limit: f64,
    max: u32,
    min_rtt: Option<(Duration, Instant)>,
    last_decrease: Option<Instant>,
}

impl AdaptiveLimit {
    pub fn new(max: u32) -> AdaptiveLimit {
        AdaptiveLimit {
            limit: max.max(MIN_LIMIT) as f64,
            max: max.max(MIN_LIMIT),
            min_rtt: None,
            last_decrease: None,
        }
    }

    pub fn current(&self) -> u32 {
        (self.limit.floor() as u32).clamp(MIN_LIMIT, self.max)
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// The configured maximum changed; the limit follows it down, never up past it.
    pub fn set_max(&mut self, max: u32) {
        self.max = max.max(MIN_LIMIT);
        self.limit = self.limit.min(self.max as f64);
    }

    /// Records one completed call. `overload`: the tenant answered 429 or 503.
    pub fn on_sample(&mut self, rtt: Duration, overload: bool, now: Instant) {
        let min = match self.min_rtt {
            Some((m, at)) if rtt >= m && now.saturating_duration_since(at) < MIN_RTT_WINDOW => m,
            _ => {
                self.min_rtt = Some((rtt, now));
                rtt
            }
        };
        let climbing = rtt > min.mul_f64(LATENCY_TOLERANCE) + LATENCY_SLACK;
        if overload || climbing {
            let cooled = self
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_COOLDOWN);
            if cooled {
                self.limit = (self.limit * DECREASE_FACTOR).max(MIN_LIMIT as f64);
                self.last_decrease = Some(now);
            }
        } else {
            self.limit = (self.limit + 1.0 / self.limit.max(1.0)).min(self.max as f64);
        }
    }
}

/// Peak-EWMA latency: jumps up to a worse sample at once, decays towards better ones.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    value_s: f64,
    at: Option<Instant>,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            value_s: DEFAULT_LATENCY.as_secs_f64(),
            at: None,
        }
    }
}

impl PeakEwma {
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_secs_f64();
        let current = self.estimate(now);
        self.value_s = if rtt > current {
            rtt
        } else {
            let dt = self
                .at
                .map(|t| now.saturating_duration_since(t).as_secs_f64())
                .unwrap_or(0.0);
            let w = (-dt / EWMA_TAU.as_secs_f64()).exp();
            current * w + rtt * (1.0 - w)
        };
        self.at = Some(now);
    }

    /// The estimate now, drifting back to the default when samples stop.
    pub fn estimate(&self, now: Instant) -> f64 {
        match self.at {
            None => self.value_s,
            Some(t) => {
                let idle = now.saturating_duration_since(t).as_secs_f64();
                let w = (-idle / EWMA_FORGET.as_secs_f64()).exp();
                self.value_s * w + DEFAULT_LATENCY.as_secs_f64() * (1.0 - w)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Healthy calls keep the limit at the maximum; overload answers lower it (once per
    /// cooldown), good calls raise it again, and it never passes the configured maximum.
    #[test]
    fn aimd_bounds_and_cooldown() {
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(10);
        for _ in 0..100 {
            l.on_sample(MS(5), false, t0);
        }
        assert_eq!(l.current(), 10);
        l.on_sample(MS(5), true, t0);
        assert_eq!(l.current(), 8);
        l.on_sample(MS(5), true, t0 + MS(10));
        assert_eq!(
            l.current(),
            8,
            "second overload within the cooldown counts once"
        );
        let mut t = t0;
        for _ in 0..20 {
            t += MS(200);
            l.on_sample(MS(5), true, t);
        }
        assert_eq!(l.current(), MIN_LIMIT);
        for _ in 0..1000 {
            l.on_sample(MS(5), false, t);
        }
        assert_eq!(l.current(), 10);
        l.set_max(4);
        assert_eq!(l.current(), 4);
    }

    /// Latency climbing well above the learned minimum lowers the limit.
    #[test]
    fn latency_climb_lowers_limit() {
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(20);
        l.on_sample(MS(10), false, t0);
        l.on_sample(MS(25), false, t0 + MS(1));
        assert_eq!(l.current(), 20, "within tolerance");
        l.on_sample(MS(200), false, t0 + MS(2));
        assert_eq!(l.current(), 16);
    }

    /// Peak EWMA follows a worse sample at once, recovers gradually, forgets when idle.
    #[test]
    fn peak_ewma() {
        let t0 = Instant::now();
        let mut e = PeakEwma::default();
        e.observe(MS(100), t0);
        assert!((e.estimate(t0) - 0.1).abs() < 1e-9);
        e.observe(MS(10), t0 + MS(100));
        let v = e.estimate(t0 + MS(100));
        assert!(v > 0.05 && v < 0.1, "{v}");
        let idle = e.estimate(t0 + Duration::from_secs(120));
        assert!((idle - DEFAULT_LATENCY.as_secs_f64()).abs() < 1e-3);
    }
}
