//! One node's health verdict on one tenant: active probes (fall/rise), passive ejection on
//! consecutive failures of real traffic, and slow start after readmission.
//!
//! Pure state machine (time is passed in), so the rules are unit-tested without a network.
//! The probe loop that feeds it lives in `pool/mod.rs`.
//!
//! Rules:
//! - A new tenant is `unknown` (not selectable) until its first probe: a good one admits it at
//!   once (no slow start), a bad one marks it unhealthy.
//! - Healthy -> unhealthy after `fall` consecutive failed probes, or after
//!   [`PASSIVE_EJECT_AFTER`] consecutive failed calls (connection error, timeout or 5xx).
//! - Unhealthy -> healthy after `rise` consecutive good probes; traffic never readmits (an
//!   ejected tenant gets none). Readmission starts a slow start of [`SLOW_START`].

use std::time::{Duration, Instant};

use serde::Serialize;

/// Consecutive failed calls (connection error, timeout, 5xx) that eject a tenant.
pub const PASSIVE_EJECT_AFTER: u32 = 3;
/// After readmission a tenant's weight ramps linearly from [`SLOW_START_FLOOR`] to full over this.
pub const SLOW_START: Duration = Duration::from_secs(10);
/// Share of its weight a just-readmitted tenant starts with.
pub const SLOW_START_FLOOR: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub fall: u32,
    pub rise: u32,
    pub passive: u32,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub status: Status,
    /// Why the status is what it is (last transition or last probe failure).
    pub reason: String,
    pub changed_at: Instant,
    pub readmitted_at: Option<Instant>,
    pub changes: u64,
    ok_streak: u32,
    fail_streak: u32,
    passive_streak: u32,
    pub last_probe: Option<(Instant, bool, String)>,
}

impl Health {
    pub fn new(now: Instant) -> Health {
        Health {
            status: Status::Unknown,
            reason: "not probed yet".into(),
            changed_at: now,
            readmitted_at: None,
            changes: 0,
            ok_streak: 0,
            fail_streak: 0,
            passive_streak: 0,
            last_probe: None,
        }
    }

    fn set(&mut self, to: Status, reason: String, now: Instant) -> Option<Status> {
        if to == Status::Healthy && self.status == Status::Unhealthy {
            self.readmitted_at = Some(now);
        }
        if to == Status::Unhealthy {
            self.readmitted_at = None;
        }
        self.status = to;
        self.reason = reason;
        self.changed_at = now;
        self.changes += 1;
        self.ok_streak = 0;
        self.fail_streak = 0;
        self.passive_streak = 0;
        Some(to)
    }

    /// Records one active probe; returns the new status if it changed.
    pub fn on_probe(
        &mut self,
        ok: bool,
        detail: String,
        th: Thresholds,
        now: Instant,
    ) -> Option<Status> {
        self.last_probe = Some((now, ok, detail.clone()));
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        match self.status {
            Status::Unknown if ok => self.set(Status::Healthy, "first probe passed".into(), now),
            Status::Unknown => self.set(Status::Unhealthy, format!("probe failed: {detail}"), now),
            Status::Healthy if !ok && self.fail_streak >= th.fall => self.set(
                Status::Unhealthy,
                format!("{} consecutive probes failed: {detail}", th.fall),
                now,
            ),
            Status::Unhealthy if ok && self.ok_streak >= th.rise => self.set(
                Status::Healthy,
                format!("{} consecutive probes passed", th.rise),
                now,
            ),
            Status::Unhealthy if !ok => {
                self.reason = format!("probe failed: {detail}");
                None
            }
            _ => None,
        }
    }

    /// Records one call of real traffic; returns the new status if it changed.
    pub fn on_call(
        &mut self,
        failed: bool,
        detail: &str,
        th: Thresholds,
        now: Instant,
    ) -> Option<Status> {
        if !failed {
            self.passive_streak = 0;
            return None;
        }
        self.passive_streak += 1;
        if self.status == Status::Healthy && self.passive_streak >= th.passive {
            return self.set(
                Status::Unhealthy,
                format!(
                    "ejected after {} consecutive failed calls: {detail}",
                    th.passive
                ),
                now,
            );
        }
        None
    }

    /// Weight multiplier in `SLOW_START_FLOOR..=1.0` while slow start runs.
    pub fn slow_start_factor(&self, now: Instant, window: Duration) -> f64 {
        match self.readmitted_at {
            Some(t) if !window.is_zero() => {
                let f = now.saturating_duration_since(t).as_secs_f64() / window.as_secs_f64();
                f.clamp(SLOW_START_FLOOR, 1.0)
            }
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds {
        fall: 2,
        rise: 2,
        passive: 3,
    };

    /// Data-driven fall/rise walk: each step is (probe ok?, expected status after it).
    #[test]
    fn fall_and_rise() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        let steps = [
            (true, Status::Healthy), // first good probe admits
            (false, Status::Healthy),
            (true, Status::Healthy), // a good probe resets the fall count
            (false, Status::Healthy),
            (false, Status::Unhealthy), // fall = 2
            (true, Status::Unhealthy),
            (false, Status::Unhealthy), // resets the rise count
            (true, Status::Unhealthy),
            (true, Status::Healthy), // rise = 2
        ];
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            h.on_probe(ok, "x".into(), TH, t0 + Duration::from_secs(i as u64));
            assert_eq!(h.status, want, "step {i}");
        }
        assert_eq!(h.changes, 3);
        assert!(h.readmitted_at.is_some());
    }

    /// A first failed probe marks a new tenant unhealthy; it is not selectable before a probe.
    #[test]
    fn unknown_until_probed() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        assert_eq!(h.status, Status::Unknown);
        h.on_probe(false, "refused".into(), TH, t0);
        assert_eq!(h.status, Status::Unhealthy);
        assert!(h.reason.contains("refused"));
    }

    /// Consecutive failed calls eject; a success in between resets the count; traffic never
    /// readmits.
    #[test]
    fn passive_ejection() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        h.on_probe(true, String::new(), TH, t0);
        h.on_call(true, "502", TH, t0);
        h.on_call(true, "502", TH, t0);
        h.on_call(false, "", TH, t0);
        h.on_call(true, "502", TH, t0);
        h.on_call(true, "502", TH, t0);
        assert_eq!(h.status, Status::Healthy);
        assert_eq!(h.on_call(true, "502", TH, t0), Some(Status::Unhealthy));
        h.on_call(false, "", TH, t0);
        assert_eq!(h.status, Status::Unhealthy);
    }

    /// After readmission the weight ramps from the floor to full over the window.
    #[test]
    fn slow_start_ramps() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        h.on_probe(true, String::new(), TH, t0);
        assert_eq!(
            h.slow_start_factor(t0, SLOW_START),
            1.0,
            "no slow start at first admission"
        );
        h.on_probe(false, String::new(), TH, t0);
        h.on_probe(false, String::new(), TH, t0);
        h.on_probe(true, String::new(), TH, t0);
        h.on_probe(true, String::new(), TH, t0);
        assert_eq!(h.status, Status::Healthy);
        assert_eq!(h.slow_start_factor(t0, SLOW_START), SLOW_START_FLOOR);
        let half = h.slow_start_factor(t0 + SLOW_START / 2, SLOW_START);
        assert!((half - 0.5).abs() < 1e-9);
        assert_eq!(h.slow_start_factor(t0 + SLOW_START * 2, SLOW_START), 1.0);
    }
}
