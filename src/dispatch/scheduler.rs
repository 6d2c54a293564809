//! The leader-side scheduler: turns due occurrences of replicated schedules into
//! `ScheduleFire` entries, one per (schedule, occurrence), and runs call targets.
//!
//! It runs on every node but acts only while this node leads. After winning an election it
//! first waits for a ReadIndex barrier, so it plans from state that includes everything the
//! previous leader committed. Planning ([`plan`]) is a pure function of (schedule, applied
//! state, now); the state machine re-checks what matters (cursor, revision, pause, overlap),
//! so a proposal that races a leader change, or is retried after an unknown outcome, is a
//! no-op rather than a second firing.
//!
//! Policies (see docs/schedules.md): missed occurrences (several due at once, because no leader
//! could commit them in time) are skipped, fired once, or all fired within the catch-up
//! window; overlap `buffer` holds the plan back while the previous firing is in flight (the
//! state machine decides `skip` and `allow`); jitter delays each occurrence by a delay derived
//! from (name, occurrence), identical on every leader.
//!
//! Call targets run on the node that fired them ([`Calls`]: bounded, and remembering which
//! firings run here). A call whose node died never records an outcome: once its timeout plus
//! [`CALL_LOST_GRACE_MS`] has passed, and it is not running on this leader, the leader proposes
//! `ScheduleCallLost` with its clock stamped in; apply records `call_lost` and may start one
//! retry (idempotent methods only), which this leader then runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::now_ms;
use crate::client::Client;
use crate::ingress::proxy::{Proxy, RouteCall};
use crate::pool::{Pool, Selector, TenantRequest};
use crate::raft::Role;
use crate::recurrence::{jitter_delay_ms, Compiled};
use crate::state::queue::SharedIndex;
use crate::state::schedules::{
    self, Fire, Firing, Missed, Outcome, Overlap, ScheduleEntry, ScheduleResponse, Target,
};
use crate::state::{Command, Response};
use crate::store::{Store, WriteBatch};

/// How often the leader looks for due occurrences: the firing precision of a schedule.
pub const TICK: Duration = Duration::from_millis(100);
/// Under `missed: skip`, an occurrence proposed at most this long after it was due (plus its
/// jitter) is on time; a later one is skipped.
pub const ON_TIME_MS: u64 = 2_000;
/// Schedules read per page while scanning (all pages are scanned each tick).
pub const SCHEDULES_PER_PAGE: usize = 1_000;
/// Entries one schedule may propose per tick (catch-up under `missed: all` spreads further).
pub const MAX_FIRES_PER_TICK: usize = 100;
/// Due occurrences one plan enumerates; past it the plan skips that many and goes on next time
/// (bounds the work after a long outage of a 1-second schedule).
pub const MAX_DUE_SCAN: usize = 10_000;
/// Call targets running at once on one node; past it due calls wait for the next tick.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;
/// A call firing with no outcome this long after its timeout is declared lost: room for a
/// runner that finished just in time to get its outcome committed.
pub const CALL_LOST_GRACE_MS: u64 = 2_000;

/// Runs until the task is aborted (node shutdown).
pub async fn run(
    client: Arc<Client>,
    store: Arc<dyn Store>,
    queues: SharedIndex,
    calls: Arc<Calls>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced_term = None;
    loop {
        tick.tick().await;
        let status = client.driver().status();
        if status.role != Role::Leader {
            synced_term = None;
            continue;
        }
        if synced_term != Some(status.term) {
            if let Err(e) = client.read_barrier().await {
                tracing::debug!(error = %e, "scheduler: no read barrier yet");
                continue;
            }
            synced_term = Some(status.term);
        }
        let mut after: Option<String> = None;
        loop {
            let page =
                match schedules::list_schedules(&*store, after.as_deref(), SCHEDULES_PER_PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler: cannot list schedules");
                        break;
                    }
                };
            let full = page.len() == SCHEDULES_PER_PAGE;
            after = page.last().map(|(n, _)| n.clone());
            for (name, entry) in page {
                reap_lost(&client, &calls, &name, &entry).await;
                drive(&client, &*store, &queues, &calls, &name).await;
            }
            if !full {
                break;
            }
        }
    }
}

/// Proposes what is due for one schedule, re-reading the applied entry after each write.
async fn drive(
    client: &Arc<Client>,
    store: &dyn Store,
    queues: &SharedIndex,
    calls: &Arc<Calls>,
    name: &str,
) {
    for _ in 0..MAX_FIRES_PER_TICK {
        let Ok(Some(entry)) = schedules::read_schedule(store, name) else {
            return;
        };
        let Ok(compiled) = Compiled::new(&entry.spec, entry.updated_ms) else {
            return;
        };
        let now = now_ms();
        let busy = match &entry.last_run {
            Some(run) => {
                let ix = queues.read();
                schedules::run_in_flight(store, &WriteBatch::default(), &ix, &entry.spec, run, now)
                    .unwrap_or(true)
            }
            None => false,
        };
        let Some(fire) = plan(name, &entry, &compiled, now, busy) else {
            return;
        };
        let permit = match entry.spec.target.call() {
            Some(_) if !fire.skip_only => match calls.try_permit() {
                Some(p) => Some(p),
                None => return,
            },
            _ => None,
        };
        match client.write(&Command::ScheduleFire(Box::new(fire))).await {
            Ok(Response::Schedule(ScheduleResponse::Fired { firing })) => {
                count(outcome_label(&firing.outcome));
                if let Outcome::CallStarted { .. } = firing.outcome {
                    calls.spawn(permit, name, &entry.spec.target, firing);
                }
            }
            Ok(other) => {
                count(match other {
                    Response::Schedule(ScheduleResponse::Duplicate) => "duplicate",
                    _ => "not_fired",
                });
                tracing::debug!(schedule = name, answer = ?other, "scheduler: nothing fired");
                return;
            }
            Err(e) => {
                tracing::debug!(schedule = name, error = %e, "scheduler: fire not applied");
                return;
            }
        }
    }
}

/// Message ids of the call firings of `e` that are lost at `now`: still `call_started`, past
/// their timeout plus [`CALL_LOST_GRACE_MS`], and not running on this node.
pub fn lost_calls(e: &ScheduleEntry, now: u64, running: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in e.history.iter().chain(e.last_run.iter()) {
        let Outcome::CallStarted { timeout_ms } = f.outcome else {
            continue;
        };
        let deadline = f
            .fired_ms
            .saturating_add(timeout_ms)
            .saturating_add(CALL_LOST_GRACE_MS);
        if now >= deadline && !running(&f.message_id) && !out.contains(&f.message_id) {
            out.push(f.message_id.clone());
        }
    }
    out
}

/// Records the lost calls of one schedule and runs the retries apply starts.
async fn reap_lost(client: &Arc<Client>, calls: &Arc<Calls>, name: &str, e: &ScheduleEntry) {
    for message_id in lost_calls(e, now_ms(), |id| calls.is_running(id)) {
        // A retry may start: hold a slot for it first (none free: try again next tick).
        let Some(permit) = calls.try_permit() else {
            return;
        };
        let cmd = Command::ScheduleCallLost {
            name: name.to_string(),
            message_id: message_id.clone(),
            now_ms: now_ms(),
        };
        match client.write(&cmd).await {
            Ok(Response::Schedule(ScheduleResponse::CallLost { retry })) => {
                count("call_lost");
                tracing::warn!(schedule = name, message_id = %message_id, retried = retry.is_some(),
                    "scheduler: call lost (no outcome by its deadline)");
                if let Some(r) = retry {
                    count("call_retried");
                    calls.spawn(Some(permit), name, &e.spec.target, r);
                }
            }
            Ok(other) => {
                tracing::debug!(schedule = name, answer = ?other, "scheduler: call not lost")
            }
            Err(e) => {
                tracing::debug!(schedule = name, error = %e, "scheduler: call_lost not applied");
                return;
            }
        }
    }
}

fn count(outcome: &str) {
    crate::metrics::M
        .schedule_firings
        .with_label_values(&[outcome])
        .inc();
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Enqueued { .. } => "enqueued",
        Outcome::EnqueueFailed { .. } => "enqueue_failed",
        Outcome::Skipped { .. } => "skipped",
        Outcome::CallStarted { .. } => "call_started",
        Outcome::Called { .. } => "called",
        Outcome::CallFailed { .. } => "call_failed",
        Outcome::CallLost { .. } => "call_lost",
    }
}

/// What to propose for `e` at `now`, if anything. `busy`: the previous firing is in flight.
pub fn plan(name: &str, e: &ScheduleEntry, c: &Compiled, now: u64, busy: bool) -> Option<Fire> {
    if e.paused.is_some() {
        return None;
    }
    let spec = &e.spec;
    let due_at = |t: u64| t.saturating_add(jitter_delay_ms(name, t, spec.jitter_ms));
    let mut due = Vec::new();
    let mut at = e.cursor_ms;
    while due.len() < MAX_DUE_SCAN {
        match c.next_after(at) {
            Some(t) if due_at(t) <= now => {
                due.push(t);
                at = t;
            }
            _ => break,
        }
    }
    let last = *due.last()?;
    if busy && spec.overlap == Overlap::Buffer {
        return None;
    }
    let fire = |occurrence_ms: u64, skipped: usize, skip_only: bool| Fire {
        name: name.to_string(),
        revision: e.revision,
        occurrence_ms,
        skipped: u32::try_from(skipped).unwrap_or(u32::MAX),
        skip_only,
        manual: false,
        message_id: crate::init::random_hex(16),
        now_ms: now,
    };
    if due.len() == MAX_DUE_SCAN {
        // Too far behind to enumerate: account for this stretch without firing it.
        return Some(fire(last, due.len() - 1, true));
    }
    Some(match spec.missed {
        Missed::All => match due
            .iter()
            .position(|t| now.saturating_sub(*t) <= spec.catch_up_window_ms)
        {
            Some(i) => fire(due[i], i, false),
            None => fire(last, due.len() - 1, true),
        },
        Missed::Once => fire(last, due.len() - 1, false),
        Missed::Skip => {
            let on_time = now.saturating_sub(due_at(last)) <= ON_TIME_MS;
            fire(last, due.len() - 1, !on_time)
        }
    })
}

/// Runs call targets on this node (the scheduler's, and trigger-now's): at most
/// [`MAX_CALLS_IN_FLIGHT`] at once, each recording its outcome when done. Remembers which
/// firings run here, so a leader never declares its own running call lost.
pub struct Calls {
    client: Arc<Client>,
    pool: Arc<Pool>,
    proxy: Arc<Proxy>,
    permits: Arc<Semaphore>,
    running: Mutex<HashSet<String>>,
}

impl Calls {
    pub fn new(client: Arc<Client>, pool: Arc<Pool>, proxy: Arc<Proxy>) -> Arc<Calls> {
        Arc::new(Calls {
            client,
            pool,
            proxy,
            permits: Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// A slot for one call, if one is free.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_running(&self, message_id: &str) -> bool {
        self.running().contains(message_id)
    }

    /// Runs the call of `firing` in the background (holding `permit` until done) and records
    /// its outcome.
    pub fn spawn(
        self: &Arc<Self>,
        permit: Option<OwnedSemaphorePermit>,
        name: &str,
        target: &Target,
        firing: Firing,
    ) {
        self.running().insert(firing.message_id.clone());
        let (me, name, target) = (self.clone(), name.to_string(), target.clone());
        tokio::spawn(async move {
            let outcome = me.call(&name, &target, &firing).await;
            let cmd = Command::ScheduleOutcome {
                name: name.clone(),
                message_id: firing.message_id.clone(),
                outcome,
            };
            if let Err(e) = me.client.write(&cmd).await {
                tracing::warn!(schedule = %name, error = %e, "scheduler: call outcome not recorded");
            }
            me.running().remove(&firing.message_id);
            drop(permit);
        });
    }

    /// Calls a tenant for a call firing: through the pool, or through the named route.
    async fn call(&self, name: &str, target: &Target, firing: &Firing) -> Outcome {
        let started = Instant::now();
        let result = match target {
            Target::Queue { .. } => {
                return Outcome::CallFailed {
                    error: "the schedule's target is a queue now".into(),
                    latency_ms: 0,
                }
            }
            Target::Call {
                method,
                path,
                content_type,
                headers,
                body,
                timeout_ms,
            } => {
                let mut req = TenantRequest::new(
                    method.parse().unwrap_or(reqwest::Method::POST),
                    path.clone(),
                )
                .body(body.clone());
                req.timeout = Some(Duration::from_millis(*timeout_ms));
                req.headers = call_headers(name, firing, content_type.as_deref(), headers);
                self.pool
                    .call(&Selector::default(), &req)
                    .await
                    .map(|(tenant, r)| (tenant, r.status))
                    .map_err(|e| e.to_string())
            }
            Target::RouteCall {
                route,
                method,
                path,
                content_type,
                headers,
                body,
                timeout_ms,
            } => {
                let call = RouteCall {
                    route,
                    method: method.parse().unwrap_or(reqwest::Method::POST),
                    path,
                    headers: call_headers(name, firing, content_type.as_deref(), headers),
                    body: body.clone().into(),
                    request_id: &firing.message_id,
                    timeout: Duration::from_millis(*timeout_ms),
                };
                self.proxy.call_route(call).await.map_err(|e| e.to_string())
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((tenant, status)) => Outcome::Called {
                tenant,
                status,
                latency_ms,
            },
            Err(error) => Outcome::CallFailed { error, latency_ms },
        }
    }
}

fn call_headers(
    name: &str,
    firing: &Firing,
    content_type: Option<&str>,
    base: &[(String, String)],
) -> HeaderMap {
    let mut h = HeaderMap::new();
    let fire = Fire {
        name: name.to_string(),
        revision: 0,
        occurrence_ms: firing.occurrence_ms,
        skipped: firing.skipped,
        skip_only: false,
        manual: firing.manual,
        message_id: firing.message_id.clone(),
        now_ms: firing.fired_ms,
    };
    let mut all = schedules::message_headers(name, &fire, base);
    all.push(("message-id".into(), firing.message_id.clone()));
    if let Some(of) = schedules::retry_of(&firing.message_id) {
        all.push((schedules::HEADER_RETRY_OF.into(), of.to_string()));
    }
    for (k, v) in all {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            h.insert(k, v);
        }
    }
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert(CONTENT_TYPE, ct);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::schedules::{Recurrence, ScheduleSpec, Unit};

    fn entry(missed: Missed, overlap: Overlap, cursor_ms: u64) -> ScheduleEntry {
        ScheduleEntry {
            spec: ScheduleSpec {
                recurrence: Recurrence::Every {
                    n: 1,
                    unit: Unit::Seconds,
                    weekdays: vec![],
                    at_s: 0,
                    day_of_month: 1,
                    month: 1,
                },
                time_zone: "UTC".into(),
                start_ms: None,
                end_ms: None,
                target: Target::Queue {
                    queue: "q".into(),
                    content_type: None,
                    headers: vec![],
                    body: vec![],
                },
                missed,
                catch_up_window_ms: 5_000,
                overlap,
                jitter_ms: 0,
                document: String::new(),
            },
            revision: 3,
            created_index: 3,
            updated_ms: 0,
            paused: None,
            cursor_ms,
            last_run: None,
            history: vec![],
            fired_total: 0,
            skipped_total: 0,
        }
    }

    /// Data-driven: after an outage (cursor at 100 s, now 110.2 s: ten occurrences due) each
    /// missed policy proposes what docs/schedules.md says; on time, all fire the one due.
    #[test]
    fn missed_policies_plan_as_documented() {
        // (policy, now, busy, overlap) -> (occurrence, skipped, skip_only) or nothing
        let cases = [
            (
                Missed::All,
                110_200,
                false,
                Overlap::Skip,
                Some((106_000, 5, false)),
            ),
            (
                Missed::Once,
                110_200,
                false,
                Overlap::Skip,
                Some((110_000, 9, false)),
            ),
            (
                Missed::Skip,
                110_200,
                false,
                Overlap::Skip,
                Some((110_000, 9, false)),
            ),
            (
                Missed::Skip,
                113_500,
                false,
                Overlap::Skip,
                Some((113_000, 12, false)),
            ),
            (
                Missed::All,
                101_050,
                false,
                Overlap::Skip,
                Some((101_000, 0, false)),
            ),
            (Missed::Once, 100_500, false, Overlap::Skip, None),
            // Buffer holds back while the previous firing is in flight; skip/allow propose
            // (the state machine decides).
            (Missed::Once, 101_050, true, Overlap::Buffer, None),
            (
                Missed::Once,
                101_050,
                true,
                Overlap::Skip,
                Some((101_000, 0, false)),
            ),
        ];
        for (missed, now, busy, overlap, want) in cases {
            let e = entry(missed, overlap, 100_000);
            let c = Compiled::new(&e.spec, 0).unwrap();
            let got =
                plan("s", &e, &c, now, busy).map(|f| (f.occurrence_ms, f.skipped, f.skip_only));
            assert_eq!(got, want, "{missed:?} at {now} busy={busy} {overlap:?}");
        }
        // All, everything older than the window: account for it without firing.
        let mut e = entry(Missed::All, Overlap::Skip, 100_000);
        e.spec.catch_up_window_ms = 0;
        let c = Compiled::new(&e.spec, 0).unwrap();
        let f = plan("s", &e, &c, 110_200, false).unwrap();
        assert_eq!(
            (f.occurrence_ms, f.skipped, f.skip_only),
            (110_000, 9, true)
        );
    }

    /// A call firing counts as lost only past its timeout plus the grace, only while still
    /// `call_started`, and never while it runs on this node; each id is proposed once even
    /// when it is both in the history and the last run.
    #[test]
    fn lost_calls_wait_for_timeout_and_grace() {
        let firing = |id: &str, outcome: Outcome| Firing {
            occurrence_ms: 1_000,
            fired_ms: 1_000,
            message_id: id.into(),
            manual: false,
            skipped: 0,
            outcome,
        };
        let started = Outcome::CallStarted { timeout_ms: 5_000 };
        let mut e = entry(Missed::Once, Overlap::Skip, 0);
        e.history = vec![
            firing("a", started.clone()),
            firing(
                "b",
                Outcome::Called {
                    tenant: "t".into(),
                    status: 200,
                    latency_ms: 1,
                },
            ),
            firing("c", started.clone()),
        ];
        e.last_run = Some(firing("c", started));
        let deadline = 1_000 + 5_000 + CALL_LOST_GRACE_MS;
        assert!(lost_calls(&e, deadline - 1, |_| false).is_empty());
        assert_eq!(lost_calls(&e, deadline, |_| false), ["a", "c"]);
        assert_eq!(lost_calls(&e, deadline, |id| id == "a"), ["c"]);
    }

    /// Missed `skip`: an occurrence found later than ON_TIME_MS is skipped, not fired.
    #[test]
    fn late_occurrence_is_skipped_under_skip() {
        let mut e = entry(Missed::Skip, Overlap::Skip, 100_000);
        e.spec.recurrence = Recurrence::Every {
            n: 1,
            unit: Unit::Minutes,
            weekdays: vec![],
            at_s: 0,
            day_of_month: 1,
            month: 1,
        };
        let c = Compiled::new(&e.spec, 0).unwrap();
        let f = plan("s", &e, &c, 120_000 + ON_TIME_MS + 1, false).unwrap();
        assert_eq!(
            (f.occurrence_ms, f.skipped, f.skip_only),
            (120_000, 0, true)
        );
        e.paused = Some(schedules::Pause {
            note: String::new(),
            at_ms: 0,
        });
        assert!(plan("s", &e, &c, 130_000, false).is_none());
    }
}
