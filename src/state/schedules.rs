//! Replicated timers (schedules): their definitions, their occurrence cursor and their last
//! firings, as applied from the Raft log.
//!
//! Exactly once rests on one rule: a schedule's `cursor_ms` says which occurrences are already
//! accounted for (fired or skipped), and a [`Fire`] for an occurrence at or before the cursor is
//! a no-op. The leader proposes ONE `Fire` per (schedule, occurrence); its apply advances the
//! cursor and, in the same batch, enqueues the delivery into the target queue through the
//! queue's own apply logic, so "fired" and "enqueued" can never disagree, and a repeated
//! proposal (a retry after an unknown outcome, or a new leader re-planning) changes nothing.
//!
//! The overlap policy is decided here too, from replicated state only: the previous firing is
//! "in flight" while its queue message is live (not completed, expired or dead-lettered), or,
//! for a call target, while no outcome was recorded and its call timeout (stamped at firing)
//! has not passed. Occurrence times are computed by the leader (`crate::recurrence`); apply
//! never evaluates a calendar, a clock or a time zone.
//!
//! A call whose runner died (the leader was killed mid-call) never gets an outcome; the next
//! leader proposes [`Apply::call_lost`] once its timeout has passed (stamping its clock into
//! the command), which records `CallLost` and, for an idempotent method only and only once,
//! starts a retry firing of the same occurrence. A retry's message id is the original's plus
//! [`RETRY_SUFFIX`] (derived here, so every node derives the same; it also keeps the stored
//! firing layout unchanged), and a retry is never retried again.
//!
//! Layout (after the store's `s` prefix): `sc/<name>` -> [`ScheduleEntry`].

use serde::{Deserialize, Serialize};

use super::queue::{self, NewMessage, QueueResponse};
use super::{decode, encode};
use crate::store::{keys, Store, StoreError, WriteBatch};

/// Firings kept per schedule (newest last) for `GET /admin/schedules/{name}`.
pub const MAX_HISTORY: usize = 20;
/// Most fixed timestamps in one `times` schedule.
pub const MAX_TIMES: usize = 1_000;
/// Longest pause note (bytes).
pub const MAX_NOTE_BYTES: usize = 1_024;
/// Largest body a schedule delivers (bytes); the whole definition is replicated config.
pub const MAX_TARGET_BODY_BYTES: usize = 256 * 1024;

/// Header names the scheduler adds to every message it enqueues.
pub const HEADER_SCHEDULE: &str = "corral-schedule";
pub const HEADER_OCCURRENCE_MS: &str = "corral-occurrence-ms";
pub const HEADER_SKIPPED: &str = "corral-skipped";
pub const HEADER_MANUAL: &str = "corral-manual";
pub const HEADER_RETRY_OF: &str = "corral-retry-of";

/// A retry firing's message id is the lost firing's plus this.
pub const RETRY_SUFFIX: &str = ".retry";
/// Methods idempotent by HTTP semantics (RFC 9110 §9.2.2): only these calls are retried after
/// their outcome was lost (sending them twice has the effect of sending them once).
pub const IDEMPOTENT_METHODS: [&str; 5] = ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"];
/// What a lost call's outcome says.
pub const CALL_LOST_REASON: &str = "leader changed during the call; outcome unknown";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
    Months,
    Years,
}

/// When a schedule fires. Timestamps are resolved to UTC milliseconds when the definition is
/// validated (the time zone database is compiled into the binary, so every node agrees).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrence {
    /// Once, right after the definition is stored (CPI "On Deployment").
    OnCreate,
    /// Once at a timestamp.
    Once { at_ms: u64 },
    /// A list of fixed timestamps, ascending.
    Times { at_ms: Vec<u64> },
    /// Every `n` units; see `crate::recurrence` for the exact calendar rules.
    Every {
        n: u32,
        unit: Unit,
        /// Local weekdays the schedule may fire on, 0 = Sunday; empty = every day.
        weekdays: Vec<u8>,
        /// Local time of day (seconds after midnight) for day-sized and larger units.
        at_s: u32,
        /// Day of the month (months, years); a month without that day is skipped.
        day_of_month: u8,
        /// Month (years), 1..=12.
        month: u8,
    },
    /// A Quartz cron expression (seconds first, `? L W #`, optional year).
    Cron { expr: String },
}

/// What to do with occurrences that came due while no leader existed (or while the leader
/// could not commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missed {
    /// Fire only an occurrence that is still on time; late ones are skipped.
    Skip,
    /// Fire the latest due occurrence once; the others are counted as skipped.
    Once,
    /// Fire every due occurrence, oldest first, that lies within the catch-up window.
    All,
}

/// What to do when an occurrence is due while the previous firing is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// Skip the occurrence (CPI's behaviour).
    Skip,
    /// Wait until the previous firing is done, then fire (per the missed policy).
    Buffer,
    /// Fire anyway.
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Enqueue a message into a durable queue.
    Queue {
        queue: String,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Call a path on one tenant of the pool synchronously and record the outcome.
    Call {
        method: String,
        path: String,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        timeout_ms: u64,
    },
    /// Call through a named sync route of the proxy (its tenants, policy, timeouts, retries
    /// and auth mode) and record the outcome. `path` is what a client would send the ingress
    /// listener; `timeout_ms` bounds the firing (and caps the route's total timeout).
    RouteCall {
        route: String,
        method: String,
        path: String,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        timeout_ms: u64,
    },
}

impl Target {
    /// The method and timeout of a call target; `None` for a queue target.
    pub fn call(&self) -> Option<(&str, u64)> {
        match self {
            Target::Queue { .. } => None,
            Target::Call {
                method, timeout_ms, ..
            }
            | Target::RouteCall {
                method, timeout_ms, ..
            } => Some((method.as_str(), *timeout_ms)),
        }
    }
}

/// True for a method whose call may be sent again after its outcome was lost.
pub fn is_idempotent(method: &str) -> bool {
    IDEMPOTENT_METHODS.contains(&method)
}

/// The message id of the firing `message_id` retries, if it is a retry.
pub fn retry_of(message_id: &str) -> Option<&str> {
    message_id.strip_suffix(RETRY_SUFFIX)
}

/// A validated schedule definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub recurrence: Recurrence,
    /// IANA time zone name (checked against the compiled-in database).
    pub time_zone: String,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub target: Target,
    pub missed: Missed,
    pub catch_up_window_ms: u64,
    pub overlap: Overlap,
    /// Each occurrence fires up to this much later, by a delay derived from (name, occurrence)
    /// so every leader waits the same.
    pub jitter_ms: u64,
    /// The definition as the API shows it (canonical JSON with defaults filled in).
    pub document: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub note: String,
    pub at_ms: u64,
}

/// How one firing ended (as far as the state machine knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The message is in the target queue.
    Enqueued { sequence: u64, duplicate: bool },
    /// The target queue refused it (missing, being deleted, full); nothing was stored.
    EnqueueFailed { reason: String },
    /// Not fired: `reason` is `overlap` or `missed`.
    Skipped { reason: String },
    /// The call was started; its outcome is not recorded yet.
    CallStarted { timeout_ms: u64 },
    /// The tenant answered.
    Called {
        tenant: String,
        status: u16,
        latency_ms: u64,
    },
    /// No answer (no tenant, connect error, timeout, the named route is gone).
    CallFailed { error: String, latency_ms: u64 },
    /// No outcome was recorded by the call's deadline (its runner died); it may or may not
    /// have reached the tenant. `retry_message_id`: the retry firing started for it.
    CallLost {
        reason: String,
        retry_message_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    pub occurrence_ms: u64,
    /// The proposer's clock when it proposed this firing.
    pub fired_ms: u64,
    pub message_id: String,
    pub manual: bool,
    /// Earlier occurrences this entry accounts for without firing them.
    pub skipped: u32,
    pub outcome: Outcome,
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEntry {
    pub spec: ScheduleSpec,
    pub revision: u64,
    pub created_index: u64,
    pub updated_ms: u64,
    pub paused: Option<Pause>,
    /// Occurrences at or before this instant are accounted for (fired or skipped).
    pub cursor_ms: u64,
    /// The last firing that actually ran (for the overlap policy).
    pub last_run: Option<Firing>,
    /// Last firings, skips included, newest last, at most [`MAX_HISTORY`].
    pub history: Vec<Firing>,
    pub fired_total: u64,
    pub skipped_total: u64,
}

/// One firing (or one skip) of one occurrence, stamped by the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    pub name: String,
    /// The definition revision the proposer computed the occurrence from.
    pub revision: u64,
    pub occurrence_ms: u64,
    /// Earlier due occurrences this entry skips (accounted for, not fired).
    pub skipped: u32,
    /// Account for the occurrence without firing it (missed under `skip`).
    pub skip_only: bool,
    /// "Trigger now": fires outside the recurrence and leaves the cursor alone.
    pub manual: bool,
    pub message_id: String,
    pub now_ms: u64,
}

/// Answers of schedule commands (wrapped in [`super::Response::Schedule`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleResponse {
    Put {
        revision: u64,
        created: bool,
    },
    Deleted {
        existed: bool,
    },
    NotFound,
    Paused {
        paused: bool,
    },
    /// The firing ran (or was recorded as skipped, see `firing.outcome`).
    Fired {
        firing: Firing,
    },
    /// The occurrence was already accounted for: nothing changed.
    Duplicate,
    /// The definition changed since the proposer computed the occurrence: nothing changed.
    Stale,
    /// The schedule is paused: nothing changed.
    IsPaused,
    /// Overlap `buffer` and the previous firing is still in flight: nothing changed.
    Busy,
    /// A call outcome was recorded (false: no such firing).
    OutcomeRecorded {
        found: bool,
    },
    /// The call was recorded as lost; `retry` is the retry firing to run, if one started.
    CallLost {
        retry: Option<Firing>,
    },
    /// Not lost: no such firing, its outcome is recorded already, or its timeout has not
    /// passed at the proposer's `now_ms`. Nothing changed.
    NotLost,
}

fn key(name: &str) -> Vec<u8> {
    keys::state(format!("sc/{name}").as_bytes())
}

fn read_through(
    kv: &dyn Store,
    batch: &WriteBatch,
    name: &str,
) -> Result<Option<ScheduleEntry>, StoreError> {
    match batch.read_through(kv, &key(name))? {
        Some(b) => decode(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("schedule {name}: {e}"))),
        None => Ok(None),
    }
}

/// Reads one schedule from the local applied state (no consistency barrier).
pub fn read_schedule(kv: &dyn Store, name: &str) -> Result<Option<ScheduleEntry>, StoreError> {
    read_through(kv, &WriteBatch::default(), name)
}

/// Lists schedules by name, after `after`, at most `limit`.
pub fn list_schedules(
    kv: &dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, ScheduleEntry)>, StoreError> {
    super::list_named(kv, &key(""), after, limit, "schedule")
}

/// True while `run` (the last firing that ran) has not finished, judged at `now_ms`.
pub fn run_in_flight(
    kv: &dyn Store,
    batch: &WriteBatch,
    ix: &queue::Indexes,
    spec: &ScheduleSpec,
    run: &Firing,
    now_ms: u64,
) -> Result<bool, StoreError> {
    match (&run.outcome, &spec.target) {
        (Outcome::Enqueued { .. }, Target::Queue { queue, .. }) => {
            queue::is_live(kv, batch, ix, queue, &run.message_id)
        }
        (Outcome::CallStarted { timeout_ms }, _) => {
            Ok(now_ms < run.fired_ms.saturating_add(*timeout_ms))
        }
        _ => Ok(false),
    }
}

/// The headers of a message a firing enqueues: the definition's, then the scheduler's own.
pub fn message_headers(name: &str, f: &Fire, base: &[(String, String)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = base.to_vec();
    h.push((HEADER_SCHEDULE.into(), name.into()));
    h.push((HEADER_OCCURRENCE_MS.into(), f.occurrence_ms.to_string()));
    h.push((HEADER_SKIPPED.into(), f.skipped.to_string()));
    if f.manual {
        h.push((HEADER_MANUAL.into(), "true".into()));
    }
    h
}

/// Applies schedule commands against `kv` as seen through `batch`.
pub struct Apply<'a> {
    pub kv: &'a dyn Store,
    pub batch: &'a mut WriteBatch,
    /// The queue indexes (a firing enqueues; the overlap policy asks whether a run is live).
    pub ix: &'a mut queue::Indexes,
    /// Raft index of the command (a firing's enqueue is a queue command of that index).
    pub index: u64,
}

impl Apply<'_> {
    fn save(&mut self, name: &str, e: &ScheduleEntry) {
        self.batch.put(key(name), encode(e));
    }

    /// Creates or replaces a schedule. Occurrences before `now_ms` are never fired (a
    /// replacement keeps the cursor if it is later), and `on_create` fires after every put.
    pub fn put(
        &mut self,
        index: u64,
        name: &str,
        spec: ScheduleSpec,
        now_ms: u64,
    ) -> Result<ScheduleResponse, StoreError> {
        let existing = read_through(self.kv, self.batch, name)?;
        let floor = now_ms.saturating_sub(1);
        let entry = match existing.clone() {
            Some(old) => ScheduleEntry {
                spec,
                revision: index,
                updated_ms: now_ms,
                cursor_ms: old.cursor_ms.max(floor),
                ..old
            },
            None => ScheduleEntry {
                spec,
                revision: index,
                created_index: index,
                updated_ms: now_ms,
                paused: None,
                cursor_ms: floor,
                last_run: None,
                history: Vec::new(),
                fired_total: 0,
                skipped_total: 0,
            },
        };
        self.save(name, &entry);
        Ok(ScheduleResponse::Put {
            revision: index,
            created: existing.is_none(),
        })
    }

    pub fn delete(&mut self, name: &str) -> Result<ScheduleResponse, StoreError> {
        let existed = read_through(self.kv, self.batch, name)?.is_some();
        self.batch.delete(key(name));
        Ok(ScheduleResponse::Deleted { existed })
    }

    /// Pauses (with a note) or resumes. Occurrences that came due while paused are skipped:
    /// resuming moves the cursor to `now_ms`.
    pub fn set_paused(
        &mut self,
        name: &str,
        paused: bool,
        note: String,
        now_ms: u64,
    ) -> Result<ScheduleResponse, StoreError> {
        let Some(mut e) = read_through(self.kv, self.batch, name)? else {
            return Ok(ScheduleResponse::NotFound);
        };
        if paused {
            e.paused = Some(Pause {
                note,
                at_ms: now_ms,
            });
        } else if e.paused.take().is_some() {
            e.cursor_ms = e.cursor_ms.max(now_ms);
        }
        self.save(name, &e);
        Ok(ScheduleResponse::Paused { paused })
    }

    /// Fires (or skips) one occurrence; see the module comment for the exactly-once rule.
    pub fn fire(&mut self, f: Fire) -> Result<ScheduleResponse, StoreError> {
        let Some(mut e) = read_through(self.kv, self.batch, &f.name)? else {
            return Ok(ScheduleResponse::NotFound);
        };
        if !f.manual {
            if f.occurrence_ms <= e.cursor_ms {
                return Ok(ScheduleResponse::Duplicate);
            }
            if f.revision != e.revision {
                return Ok(ScheduleResponse::Stale);
            }
            if e.paused.is_some() {
                return Ok(ScheduleResponse::IsPaused);
            }
        }
        let busy = match &e.last_run {
            Some(run) if !f.manual && !f.skip_only => {
                run_in_flight(self.kv, self.batch, self.ix, &e.spec, run, f.now_ms)?
            }
            _ => false,
        };
        let outcome = if f.skip_only {
            Outcome::Skipped {
                reason: "missed".into(),
            }
        } else if busy && e.spec.overlap == Overlap::Buffer {
            return Ok(ScheduleResponse::Busy);
        } else if busy && e.spec.overlap == Overlap::Skip {
            Outcome::Skipped {
                reason: "overlap".into(),
            }
        } else {
            self.deliver(&e.spec, &f)?
        };
        let firing = Firing {
            occurrence_ms: f.occurrence_ms,
            fired_ms: f.now_ms,
            message_id: f.message_id.clone(),
            manual: f.manual,
            skipped: f.skipped,
            outcome,
        };
        let ran = !matches!(firing.outcome, Outcome::Skipped { .. });
        if ran {
            e.fired_total += 1;
            e.last_run = Some(firing.clone());
            e.skipped_total += u64::from(f.skipped);
        } else {
            e.skipped_total += u64::from(f.skipped) + 1;
        }
        if !f.manual {
            e.cursor_ms = e.cursor_ms.max(f.occurrence_ms);
        }
        push_history(&mut e.history, firing.clone());
        self.save(&f.name, &e);
        Ok(ScheduleResponse::Fired { firing })
    }

    /// Enqueues the delivery in this same batch (queue target), or marks the call started.
    fn deliver(&mut self, spec: &ScheduleSpec, f: &Fire) -> Result<Outcome, StoreError> {
        let (queue, content_type, headers, body) = match &spec.target {
            Target::Queue {
                queue,
                content_type,
                headers,
                body,
            } => (queue, content_type, headers, body),
            Target::Call { timeout_ms, .. } | Target::RouteCall { timeout_ms, .. } => {
                return Ok(Outcome::CallStarted {
                    timeout_ms: *timeout_ms,
                })
            }
        };
        let dedup = if f.manual {
            format!("schedule:{}:manual:{}", f.name, f.message_id)
        } else {
            format!("schedule:{}:{}", f.name, f.occurrence_ms)
        };
        let msg = NewMessage {
            id: f.message_id.clone(),
            dedup_key: Some(dedup),
            ordering_key: None,
            content_type: content_type.clone(),
            headers: message_headers(&f.name, f, headers),
            body: body.clone(),
        };
        let mut q = queue::Apply::new(self.kv, self.batch, self.ix, self.index);
        Ok(match q.enqueue(queue, f.now_ms, vec![msg])? {
            QueueResponse::Enqueued { results } => match results.first() {
                Some(r) => Outcome::Enqueued {
                    sequence: r.sequence,
                    duplicate: r.duplicate,
                },
                None => Outcome::EnqueueFailed {
                    reason: "no result".into(),
                },
            },
            QueueResponse::NotFound => Outcome::EnqueueFailed {
                reason: format!("queue `{queue}` does not exist"),
            },
            QueueResponse::Deleting => Outcome::EnqueueFailed {
                reason: format!("queue `{queue}` is being deleted"),
            },
            QueueResponse::Full { reason } => Outcome::EnqueueFailed { reason },
            other => Outcome::EnqueueFailed {
                reason: format!("unexpected answer {other:?}"),
            },
        })
    }

    /// Records how a call firing ended.
    pub fn record_outcome(
        &mut self,
        name: &str,
        message_id: &str,
        outcome: Outcome,
    ) -> Result<ScheduleResponse, StoreError> {
        let Some(mut e) = read_through(self.kv, self.batch, name)? else {
            return Ok(ScheduleResponse::NotFound);
        };
        let mut found = false;
        for h in e.history.iter_mut().filter(|h| h.message_id == message_id) {
            h.outcome = outcome.clone();
            found = true;
        }
        if let Some(run) = e.last_run.as_mut().filter(|r| r.message_id == message_id) {
            run.outcome = outcome;
            found = true;
        }
        if found {
            self.save(name, &e);
        }
        Ok(ScheduleResponse::OutcomeRecorded { found })
    }
}

impl Apply<'_> {
    /// Records that the call firing `message_id` lost its outcome, judged at the proposer's
    /// `now_ms`: only a firing still `CallStarted` whose timeout has passed. A retry firing of
    /// the same occurrence starts (once, never for a retry) when the schedule's current target
    /// is a call with an idempotent method and the schedule is not paused.
    pub fn call_lost(
        &mut self,
        name: &str,
        message_id: &str,
        now_ms: u64,
    ) -> Result<ScheduleResponse, StoreError> {
        let Some(mut e) = read_through(self.kv, self.batch, name)? else {
            return Ok(ScheduleResponse::NotLost);
        };
        let lost = e
            .history
            .iter()
            .chain(e.last_run.iter())
            .find(|f| f.message_id == message_id)
            .cloned();
        let Some(lost) = lost else {
            return Ok(ScheduleResponse::NotLost);
        };
        let Outcome::CallStarted { timeout_ms } = lost.outcome else {
            return Ok(ScheduleResponse::NotLost);
        };
        if now_ms < lost.fired_ms.saturating_add(timeout_ms) {
            return Ok(ScheduleResponse::NotLost);
        }
        let retry = match e.spec.target.call() {
            Some((method, timeout_ms))
                if is_idempotent(method)
                    && retry_of(message_id).is_none()
                    && e.paused.is_none() =>
            {
                Some(Firing {
                    occurrence_ms: lost.occurrence_ms,
                    fired_ms: now_ms,
                    message_id: format!("{message_id}{RETRY_SUFFIX}"),
                    manual: lost.manual,
                    skipped: 0,
                    outcome: Outcome::CallStarted { timeout_ms },
                })
            }
            _ => None,
        };
        let outcome = Outcome::CallLost {
            reason: CALL_LOST_REASON.into(),
            retry_message_id: retry.as_ref().map(|r| r.message_id.clone()),
        };
        for f in e
            .history
            .iter_mut()
            .chain(e.last_run.iter_mut())
            .filter(|f| f.message_id == message_id)
        {
            f.outcome = outcome.clone();
        }
        if let Some(r) = &retry {
            e.last_run = Some(r.clone());
            push_history(&mut e.history, r.clone());
        }
        self.save(name, &e);
        Ok(ScheduleResponse::CallLost { retry })
    }
}

fn push_history(history: &mut Vec<Firing>, f: Firing) {
    history.push(f);
    if history.len() > MAX_HISTORY {
        let extra = history.len() - MAX_HISTORY;
        history.drain(..extra);
    }
}

#[cfg(test)]
mod tests;
