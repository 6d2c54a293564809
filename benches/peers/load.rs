//! The load generator: closed-loop (N workers, each sends its next request when the last one
//! was acknowledged: the maximum throughput) and open-loop (requests scheduled at a fixed
//! rate, latency measured from each request's intended send time, so a stalled server is
//! charged for every request it delayed: no coordinated omission).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One operation against a system: `op(worker, seq)` resolves when the system acknowledged it.
pub type Op = Arc<
    dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

/// Open-loop requests in flight at once. When reached, the schedule keeps running and new
/// requests wait for a slot; their latency still counts from the intended send time.
pub const OPEN_LOOP_MAX_IN_FLIGHT: usize = 1024;
/// After the run's duration, how long in-flight requests may still finish before the harness
/// stops waiting (they count as errors).
pub const DRAIN_TIMEOUT_MS: u64 = 30_000;

/// What one run measured. Latencies in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Open loop only: the rate asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Latency samples (µs) and errors shared by the workers of one run.
#[derive(Default)]
struct Recorder {
    lat_us: Mutex<Vec<u64>>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Recorder {
    fn record(&self, since: Instant, r: Result<(), String>) {
        match r {
            Ok(()) => {
                let us = since.elapsed().as_micros() as u64;
                self.lat_us.lock().expect("lat").push(us);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().expect("err").get_or_insert(e);
            }
        }
    }

    fn stats(&self, seconds: f64, target_per_s: Option<f64>) -> Stats {
        let mut lat = std::mem::take(&mut *self.lat_us.lock().expect("lat"));
        lat.sort_unstable();
        let ms = |p: f64| percentile(&lat, p) as f64 / 1000.0;
        Stats {
            ok: lat.len() as u64,
            errors: self.errors.load(Ordering::Relaxed),
            seconds,
            per_s: lat.len() as f64 / seconds.max(1e-9),
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            target_per_s,
            first_error: self.first_error.lock().expect("err").clone(),
        }
    }
}

/// The `p` quantile of sorted samples (nearest rank), 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `workers` loops, each sending its next operation when the last one returned, for `dur`.
/// The rate counts acknowledged operations over the time until the last worker stopped.
pub async fn closed_loop(op: Op, workers: usize, dur: Duration) -> Stats {
    let rec = Arc::new(Recorder::default());
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (op, rec) = (op.clone(), rec.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    rec.record(t, op(w, seq).await);
                    seq += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    rec.stats(start.elapsed().as_secs_f64(), None)
}

/// Operations scheduled every 1/`rate` s for `dur`, each timed from its intended send time.
/// A request that cannot start on time (all slots busy) waits and is charged for the wait.
pub async fn open_loop(op: Op, rate_per_s: f64, dur: Duration) -> Stats {
    let rec = Arc::new(Recorder::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_MAX_IN_FLIGHT));
    let interval = Duration::from_secs_f64(1.0 / rate_per_s.max(1e-3));
    let start = Instant::now();
    let total = (dur.as_secs_f64() * rate_per_s) as u64;
    let mut handles = Vec::with_capacity(total as usize);
    for seq in 0..total {
        let intended = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(intended.into()).await;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (op, rec) = (op.clone(), rec.clone());
        handles.push(tokio::spawn(async move {
            let r = op((seq % 64) as usize, seq).await;
            rec.record(intended, r);
            drop(permit);
        }));
    }
    let drained = tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), async {
        for h in handles.iter_mut() {
            let _ = h.await;
        }
    })
    .await;
    if drained.is_err() {
        let late = handles.iter().filter(|h| !h.is_finished()).count() as u64;
        for h in &handles {
            h.abort();
        }
        rec.errors.fetch_add(late, Ordering::Relaxed);
        rec.first_error
            .lock()
            .expect("err")
            .get_or_insert_with(|| format!("{late} requests unfinished after the drain timeout"));
    }
    // Over the schedule, not the drain: the rate achieved against the rate asked.
    rec.stats(dur.as_secs_f64(), Some(rate_per_s))
}

/// Consumers that receive-and-acknowledge until `target` messages are done, no message
/// arrives for `idle`, or `max` passes. `op(worker)` returns Ok(true) for one message
/// acknowledged, Ok(false) when none was there.
pub type ConsumeOp =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>> + Send + Sync>;

pub async fn consume(
    op: ConsumeOp,
    workers: usize,
    target: u64,
    idle: Duration,
    max: Duration,
) -> Stats {
    let rec = Arc::new(Recorder::default());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_msg = Arc::new(Mutex::new(Instant::now()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (op, rec, done, stop, last_msg) = (
                op.clone(),
                rec.clone(),
                done.clone(),
                stop.clone(),
                last_msg.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match op(w).await {
                        Ok(true) => {
                            rec.record(t, Ok(()));
                            *last_msg.lock().expect("last") = Instant::now();
                            if done.fetch_add(1, Ordering::Relaxed) + 1 >= target {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(false) => {
                            let quiet = last_msg.lock().expect("last").elapsed();
                            if quiet > idle || start.elapsed() > max {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => rec.record(t, Err(e)),
                    }
                    if start.elapsed() > max {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    // The rate over the time the messages took, not the idle tail that proved the end.
    let busy = last_msg
        .lock()
        .expect("last")
        .duration_since(start)
        .as_secs_f64();
    rec.stats(busy, None)
}
