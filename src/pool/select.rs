//! Choosing a tenant for one call, as a pure function over a snapshot of candidates.
//!
//! 1. Only selectable tenants count: administratively `active`, healthy on this node, with
//!    readable credentials.
//! 2. The best priority group wins (lower `priority` value first). A group whose tenants are
//!    all at their concurrency limit spills to the next group; if every group is full the
//!    answer is [`NoPick::Saturated`].
//! 3. Within the group: a random draw with probability proportional to
//!    `weight / ((in_flight + 1) x latency)`, where weight is the configured weight x the
//!    slow-start factor and latency the peak-EWMA estimate. With equal latency and nothing in
//!    flight, shares follow the weights exactly (3:1 weights give 3:1 traffic even for one
//!    caller at a time); a tenant twice as slow, or with more calls outstanding, gets
//!    proportionally less. A strict least-cost choice (or power-of-two-choices, which with two
//!    tenants is the same thing) was tried first and dropped: it sends all sequential traffic
//!    to the heavier tenant, which does not honour weights.

//!
//! Routes may ask for another [`Policy`] (see [`choose_with`]); the above is `performance`.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How a route chooses among selectable tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Priority groups, then weighted least-outstanding x peak-EWMA latency ([`choose`]).
    #[default]
    Performance,
    /// Strict failover: the best priority group, and in it the heaviest tenant (ties: by
    /// name); the next one only takes work when the one before is unselectable or full.
    Priority,
    /// A random draw proportional to the configured weight over every selectable tenant
    /// (priorities ignored), blind to latency and load.
    Weighted,
    /// Every selectable tenant in turn (priorities and weights ignored).
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Why the tenant cannot take new work, or `None` if it can.
    pub excluded: Option<String>,
    pub priority: u32,
    /// Configured weight x slow-start factor (> 0).
    pub weight: f64,
    pub in_flight: u32,
    pub limit: u32,
    /// Latency estimate, seconds.
    pub latency_s: f64,
}

impl Candidate {
    fn cost(&self) -> f64 {
        (self.in_flight as f64 + 1.0) * self.latency_s.max(1e-6) / self.weight.max(1e-6)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPick {
    /// No tenant is selectable (none registered, or all draining, disabled or unhealthy).
    NoneSelectable,
    /// Selectable tenants exist but every one is at its concurrency limit.
    Saturated,
}

/// Returns the index of the chosen candidate.
pub fn choose(cands: &[Candidate], rng: &mut impl Rng) -> Result<usize, NoPick> {
    let mut groups: Vec<u32> = cands
        .iter()
        .filter(|c| c.excluded.is_none())
        .map(|c| c.priority)
        .collect();
    if groups.is_empty() {
        return Err(NoPick::NoneSelectable);
    }
    groups.sort_unstable();
    groups.dedup();
    for p in groups {
        let open: Vec<usize> = (0..cands.len())
            .filter(|&i| {
                let c = &cands[i];
                c.excluded.is_none() && c.priority == p && c.in_flight < c.limit
            })
            .collect();
        if open.is_empty() {
            continue;
        }
        let score = |i: usize| 1.0 / cands[i].cost();
        let total: f64 = open.iter().map(|&i| score(i)).sum();
        let mut x = rng.gen::<f64>() * total;
        for &i in &open {
            x -= score(i);
            if x < 0.0 {
                return Ok(i);
            }
        }
        return Ok(open[open.len() - 1]);
    }
    Err(NoPick::Saturated)
}

fn open(cands: &[Candidate]) -> Vec<usize> {
    (0..cands.len())
        .filter(|&i| cands[i].excluded.is_none() && cands[i].in_flight < cands[i].limit)
        .collect()
}

/// Like [`choose`] under another policy. `turn` drives round robin (a counter the caller
/// increments per pick); candidates must be in a stable order (the pool sorts by name).
pub fn choose_with(
    cands: &[Candidate],
    policy: Policy,
    turn: u64,
    rng: &mut impl Rng,
) -> Result<usize, NoPick> {
    if policy == Policy::Performance {
        return choose(cands, rng);
    }
    if cands.iter().all(|c| c.excluded.is_some()) {
        return Err(NoPick::NoneSelectable);
    }
    let open = open(cands);
    if open.is_empty() {
        return Err(NoPick::Saturated);
    }
    match policy {
        Policy::Priority => open
            .iter()
            .copied()
            .min_by(|&a, &b| {
                let (x, y) = (&cands[a], &cands[b]);
                x.priority
                    .cmp(&y.priority)
                    .then(y.weight.total_cmp(&x.weight))
                    .then(a.cmp(&b))
            })
            .ok_or(NoPick::Saturated),
        Policy::Weighted => {
            let total: f64 = open.iter().map(|&i| cands[i].weight.max(1e-6)).sum();
            let mut x = rng.gen::<f64>() * total;
            for &i in &open {
                x -= cands[i].weight.max(1e-6);
                if x < 0.0 {
                    return Ok(i);
                }
            }
            Ok(open[open.len() - 1])
        }
        Policy::RoundRobin | Policy::Performance => Ok(open[(turn % open.len() as u64) as usize]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn c(priority: u32, weight: f64, in_flight: u32, latency_ms: f64) -> Candidate {
        Candidate {
            excluded: None,
            priority,
            weight,
            in_flight,
            limit: 10,
            latency_s: latency_ms / 1000.0,
        }
    }

    fn shares(cands: &[Candidate], n: usize) -> Vec<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut out = vec![0; cands.len()];
        for _ in 0..n {
            out[choose(cands, &mut rng).unwrap()] += 1;
        }
        out
    }

    /// The best priority group takes everything while it has room; a full group spills over;
    /// all full is `Saturated`; nothing selectable is `NoneSelectable`.
    #[test]
    fn priority_groups() {
        let mut cands = vec![c(1, 1.0, 0, 10.0), c(0, 1.0, 0, 10.0), c(0, 1.0, 0, 10.0)];
        let s = shares(&cands, 1000);
        assert_eq!(s[0], 0);
        cands[1].in_flight = 10;
        cands[2].in_flight = 10;
        assert_eq!(shares(&cands, 10)[0], 10);
        cands[0].in_flight = 10;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(choose(&cands, &mut rng), Err(NoPick::Saturated));
        for x in &mut cands {
            x.excluded = Some("draining".into());
        }
        assert_eq!(choose(&cands, &mut rng), Err(NoPick::NoneSelectable));
        assert_eq!(choose(&[], &mut rng), Err(NoPick::NoneSelectable));
    }

    /// Draining, disabled or unhealthy tenants are never chosen.
    #[test]
    fn excluded_never_chosen() {
        let mut cands = vec![c(0, 1.0, 0, 10.0), c(0, 100.0, 0, 1.0)];
        cands[1].excluded = Some("draining".into());
        assert_eq!(shares(&cands, 500), vec![500, 0]);
    }

    /// With equal latency and nothing in flight, shares follow weights (3:1).
    #[test]
    fn weights_are_honoured() {
        let cands = vec![c(0, 3.0, 0, 10.0), c(0, 1.0, 0, 10.0)];
        let s = shares(&cands, 4000);
        let ratio = s[0] as f64 / s[1] as f64;
        assert!(ratio > 2.5 && ratio < 3.6, "{s:?}");
    }

    /// A 20x slower tenant gets about 1/21 of the calls; one with more outstanding gets
    /// less in proportion ((1+1) vs (8+1) in flight: about 18%).
    #[test]
    fn least_outstanding_times_latency() {
        let slow = vec![c(0, 1.0, 0, 10.0), c(0, 1.0, 0, 200.0)];
        let s = shares(&slow, 2000);
        assert!(s[1] > 40 && s[1] < 160, "{s:?}");
        let busy = vec![c(0, 1.0, 8, 10.0), c(0, 1.0, 1, 10.0)];
        let s = shares(&busy, 2000);
        assert!(s[0] > 250 && s[0] < 480, "{s:?}");
        let three = vec![c(0, 1.0, 0, 10.0), c(0, 1.0, 5, 10.0), c(0, 1.0, 5, 10.0)];
        let s = shares(&three, 3000);
        assert!(s[0] > 2100, "{s:?}");
    }

    /// Priority failover sends everything to the best group's heaviest tenant and moves on
    /// only when it is full; weighted ignores latency; round robin takes turns.
    #[test]
    fn other_policies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut cands = vec![c(1, 5.0, 0, 1.0), c(0, 1.0, 0, 10.0), c(0, 2.0, 0, 500.0)];
        assert_eq!(choose_with(&cands, Policy::Priority, 0, &mut rng), Ok(2));
        cands[2].in_flight = 10;
        assert_eq!(choose_with(&cands, Policy::Priority, 0, &mut rng), Ok(1));
        cands[2].in_flight = 0;
        let turns: Vec<usize> = (0..6)
            .map(|t| choose_with(&cands, Policy::RoundRobin, t, &mut rng).unwrap())
            .collect();
        assert_eq!(turns, [0, 1, 2, 0, 1, 2]);
        let mut s = [0usize; 3];
        for _ in 0..8000 {
            s[choose_with(&cands, Policy::Weighted, 0, &mut rng).unwrap()] += 1;
        }
        // 5:1:2 by weight although tenant 2 is 50x slower than tenant 1.
        assert!(
            s[0] > 4500 && s[0] < 5500 && s[2] > 1600 && s[2] < 2400,
            "{s:?}"
        );
        for x in &mut cands {
            x.in_flight = 10;
        }
        assert_eq!(
            choose_with(&cands, Policy::RoundRobin, 0, &mut rng),
            Err(NoPick::Saturated)
        );
    }
}
