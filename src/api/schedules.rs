//! Admin handlers for replicated timers: `PUT/GET/DELETE /admin/schedules/{name}`,
//! `GET /admin/schedules`, pause / resume / trigger, and `POST /admin/schedules:preview`.
//!
//! A definition is validated here into a typed [`ScheduleSpec`] (400 naming the field; a bad
//! cron expression names the field position too) and replicated with `SchedulePut`. GET
//! computes the next occurrences with `crate::recurrence` from the applied state, and lists the
//! last firings the state machine kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{barrier, next_cursor, now_ms, parse_json, AdminState, ApiError, ListOpts, ReadOpts};
use crate::dispatch::scheduler::MAX_CALLS_IN_FLIGHT;
use crate::ingress::route::{self, Mode, RouteSpec};
use crate::recurrence::{self, format_local, Compiled};
use crate::state::queue::{MAX_HEADERS, MAX_HEADER_BYTES};
use crate::state::schedules::{
    self, Fire, Firing, Missed, Outcome, Overlap, Recurrence, ScheduleEntry, ScheduleResponse,
    ScheduleSpec, Target, Unit, MAX_NOTE_BYTES, MAX_TARGET_BODY_BYTES, MAX_TIMES,
};
use crate::state::{Command, Response as SmResponse};

type Shared = State<Arc<AdminState>>;

/// Occurrences GET and preview show.
pub const PREVIEW_OCCURRENCES: usize = 10;
/// Largest N of "every N units".
pub const MAX_EVERY_N: u32 = 100_000;
/// Default and largest catch-up window under `missed: all` (1 hour, 7 days).
pub const DEFAULT_CATCH_UP_WINDOW_MS: u64 = 3_600_000;
pub const MAX_CATCH_UP_WINDOW_MS: u64 = 7 * 24 * 3_600_000;
/// Largest jitter (1 hour).
pub const MAX_JITTER_MS: u64 = 3_600_000;
/// Default and allowed call timeouts.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 60_000;
pub const MIN_CALL_TIMEOUT_MS: u64 = 1_000;
pub const MAX_CALL_TIMEOUT_MS: u64 = 600_000;
/// Longest call path.
pub const MAX_CALL_PATH_BYTES: usize = 512;
/// Methods a call target may use (those in `schedules::IDEMPOTENT_METHODS` are retried once
/// after a lost outcome).
pub const CALL_METHODS: [&str; 7] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EveryInput {
    #[serde(default = "one")]
    n: u32,
    unit: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    weekdays: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day_of_month: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    month: Option<u8>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RecurrenceInput {
    OnCreate {},
    Once(String),
    Times(Vec<String>),
    Every(EveryInput),
    Cron(String),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct QueueTargetInput {
    name: String,
    #[serde(default)]
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CallTargetInput {
    /// A sync route of the proxy to call through; none: any tenant of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    path: String,
    #[serde(default = "post")]
    method: String,
    #[serde(default)]
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    /// Filled in when absent: [`DEFAULT_CALL_TIMEOUT_MS`], or the route's total timeout.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn post() -> String {
    "POST".into()
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TargetInput {
    Queue(QueueTargetInput),
    Call(CallTargetInput),
}

/// The schedule document as PUT (and as GET shows it, with defaults filled in).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ScheduleInput {
    schedule: RecurrenceInput,
    #[serde(default = "utc")]
    time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    target: TargetInput,
    #[serde(default = "default_missed")]
    missed: String,
    #[serde(default = "default_window")]
    catch_up_window_ms: u64,
    #[serde(default = "default_overlap")]
    overlap: String,
    #[serde(default)]
    jitter_ms: u64,
}

fn utc() -> String {
    "UTC".into()
}
fn default_missed() -> String {
    "once".into()
}
fn default_overlap() -> String {
    "skip".into()
}
fn default_window() -> u64 {
    DEFAULT_CATCH_UP_WINDOW_MS
}

const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn parse_unit(s: &str) -> Option<Unit> {
    Some(match s {
        "seconds" => Unit::Seconds,
        "minutes" => Unit::Minutes,
        "hours" => Unit::Hours,
        "days" => Unit::Days,
        "weeks" => Unit::Weeks,
        "months" => Unit::Months,
        "years" => Unit::Years,
        _ => return None,
    })
}

fn parse_time_of_day(s: &str) -> Option<u32> {
    let t = chrono::NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()?;
    Some(chrono::Timelike::num_seconds_from_midnight(&t))
}

fn every(e: &EveryInput) -> Result<Recurrence, ApiError> {
    let f = |name: &str| format!("schedule.every.{name}");
    if e.n == 0 || e.n > MAX_EVERY_N {
        return Err(ApiError::invalid(
            f("n"),
            format!("must be 1 to {MAX_EVERY_N}"),
        ));
    }
    let unit = parse_unit(&e.unit).ok_or_else(|| {
        ApiError::invalid(
            f("unit"),
            "must be one of seconds, minutes, hours, days, weeks, months, years",
        )
    })?;
    let mut weekdays = Vec::new();
    for (i, w) in e.weekdays.iter().enumerate() {
        let d = WEEKDAYS
            .iter()
            .position(|x| x.eq_ignore_ascii_case(w))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("{}[{i}]", f("weekdays")),
                    "must be one of SUN MON TUE WED THU FRI SAT",
                )
            })?;
        weekdays.push(d as u8);
    }
    if unit == Unit::Weeks && weekdays.is_empty() {
        return Err(ApiError::invalid(
            f("weekdays"),
            "weekly schedules name their weekdays",
        ));
    }
    let sub_daily = matches!(unit, Unit::Seconds | Unit::Minutes | Unit::Hours);
    let at_s = match &e.at {
        Some(_) if sub_daily => {
            return Err(ApiError::invalid(
                f("at"),
                "applies to days, weeks, months and years",
            ))
        }
        Some(a) => parse_time_of_day(a)
            .ok_or_else(|| ApiError::invalid(f("at"), "must be HH:MM or HH:MM:SS"))?,
        None => 0,
    };
    let day_of_month = e.day_of_month.unwrap_or(1);
    if !(1..=31).contains(&day_of_month) {
        return Err(ApiError::invalid(f("day_of_month"), "must be 1 to 31"));
    }
    let month = e.month.unwrap_or(1);
    if !(1..=12).contains(&month) {
        return Err(ApiError::invalid(f("month"), "must be 1 to 12"));
    }
    Ok(Recurrence::Every {
        n: e.n,
        unit,
        weekdays,
        at_s,
        day_of_month,
        month,
    })
}

fn timestamp(field: &str, s: &str, tz: &Tz) -> Result<u64, ApiError> {
    recurrence::parse_timestamp(s, tz).map_err(|m| ApiError::invalid(field, m))
}

fn recurrence_of(r: &RecurrenceInput, tz: &Tz) -> Result<Recurrence, ApiError> {
    Ok(match r {
        RecurrenceInput::OnCreate {} => Recurrence::OnCreate,
        RecurrenceInput::Once(s) => Recurrence::Once {
            at_ms: timestamp("schedule.once", s, tz)?,
        },
        RecurrenceInput::Times(list) => {
            if list.is_empty() || list.len() > MAX_TIMES {
                return Err(ApiError::invalid(
                    "schedule.times",
                    format!("must hold 1 to {MAX_TIMES} timestamps"),
                ));
            }
            let mut at_ms = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                at_ms.push(timestamp(&format!("schedule.times[{i}]"), s, tz)?);
            }
            at_ms.sort_unstable();
            at_ms.dedup();
            Recurrence::Times { at_ms }
        }
        RecurrenceInput::Every(e) => every(e)?,
        RecurrenceInput::Cron(expr) => {
            recurrence::parse_cron(expr).map_err(|e| ApiError::Invalid {
                field: Some(match e.position {
                    Some(p) => format!("schedule.cron[{}:{}]", p, recurrence::CRON_FIELDS[p - 1]),
                    None => "schedule.cron".into(),
                }),
                message: e.message,
            })?;
            Recurrence::Cron { expr: expr.clone() }
        }
    })
}

fn body_of(field: &str, body: &str, encoding: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let bytes = match encoding.unwrap_or("text") {
        "text" => body.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| ApiError::invalid(format!("{field}.body"), format!("not base64: {e}")))?,
        _ => {
            return Err(ApiError::invalid(
                format!("{field}.body_encoding"),
                "must be text or base64",
            ))
        }
    };
    if bytes.len() > MAX_TARGET_BODY_BYTES {
        return Err(ApiError::invalid(
            format!("{field}.body"),
            format!("at most {MAX_TARGET_BODY_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn headers_of(
    field: &str,
    h: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ApiError> {
    let bytes: usize = h.iter().map(|(k, v)| k.len() + v.len()).sum();
    if h.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError::invalid(
            format!("{field}.headers"),
            format!("at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let mut out = Vec::new();
    for (k, v) in h {
        let ok = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(v).is_ok();
        if !ok {
            return Err(ApiError::invalid(
                format!("{field}.headers.{k}"),
                "is not a valid HTTP header",
            ));
        }
        out.push((k.to_ascii_lowercase(), v.clone()));
    }
    Ok(out)
}

/// Routes a definition may name, by name (those the handler found in the applied state).
pub type KnownRoutes = BTreeMap<String, RouteSpec>;

/// The route name a schedule document's call target names, if any (read before validating,
/// so the handler can look the route up).
pub fn named_route(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("target")?
        .get("call")?
        .get("route")?
        .as_str()
        .map(str::to_string)
}

fn target_of(t: &mut TargetInput, routes: &KnownRoutes) -> Result<Target, ApiError> {
    Ok(match t {
        TargetInput::Queue(q) => {
            if !crate::state::is_resource_name(&q.name) {
                return Err(ApiError::invalid(
                    "target.queue.name",
                    "must be a queue name (A-Z a-z 0-9 . _ -)",
                ));
            }
            Target::Queue {
                queue: q.name.clone(),
                content_type: q.content_type.clone(),
                headers: headers_of("target.queue", &q.headers)?,
                body: body_of("target.queue", &q.body, q.body_encoding.as_deref())?,
            }
        }
        TargetInput::Call(c) => {
            if !c.path.starts_with('/')
                || c.path.len() > MAX_CALL_PATH_BYTES
                || c.path.parse::<axum::http::Uri>().is_err()
            {
                return Err(ApiError::invalid(
                    "target.call.path",
                    format!(
                        "must be a path starting with / of at most {MAX_CALL_PATH_BYTES} bytes"
                    ),
                ));
            }
            c.method = c.method.to_ascii_uppercase();
            if !CALL_METHODS.contains(&c.method.as_str()) {
                return Err(ApiError::invalid(
                    "target.call.method",
                    format!("must be one of {}", CALL_METHODS.join(", ")),
                ));
            }
            let route = match &c.route {
                Some(name) => Some((name.clone(), route_of(name, &c.path, routes)?)),
                None => None,
            };
            // Default: the route's own total timeout (within the schedule's bounds).
            let timeout_ms = *c.timeout_ms.get_or_insert(match &route {
                Some((_, r)) => r
                    .total_timeout_ms
                    .clamp(MIN_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS),
                None => DEFAULT_CALL_TIMEOUT_MS,
            });
            if !(MIN_CALL_TIMEOUT_MS..=MAX_CALL_TIMEOUT_MS).contains(&timeout_ms) {
                return Err(ApiError::invalid(
                    "target.call.timeout_ms",
                    format!("must be {MIN_CALL_TIMEOUT_MS} to {MAX_CALL_TIMEOUT_MS}"),
                ));
            }
            let (method, path) = (c.method.clone(), c.path.clone());
            let content_type = c.content_type.clone();
            let headers = headers_of("target.call", &c.headers)?;
            let body = body_of("target.call", &c.body, c.body_encoding.as_deref())?;
            match route {
                Some((route, _)) => Target::RouteCall {
                    route,
                    method,
                    path,
                    content_type,
                    headers,
                    body,
                    timeout_ms,
                },
                None => Target::Call {
                    method,
                    path,
                    content_type,
                    headers,
                    body,
                    timeout_ms,
                },
            }
        }
    })
}

/// The sync route `name` a call target names, checked against `path` (400 naming the field).
fn route_of<'a>(
    name: &str,
    path: &str,
    routes: &'a KnownRoutes,
) -> Result<&'a RouteSpec, ApiError> {
    let field = "target.call.route";
    if !crate::state::is_resource_name(name) {
        return Err(ApiError::invalid(field, "must be a route name"));
    }
    let r = routes.get(name).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("no route `{name}` (define it with PUT /admin/routes/{name})"),
        )
    })?;
    if r.mode != Mode::Sync {
        return Err(ApiError::invalid(
            field,
            format!(
                "route `{name}` is async (it enqueues); a schedule enqueues with a queue target"
            ),
        ));
    }
    if !path.starts_with(r.prefix.as_str()) {
        return Err(ApiError::invalid(
            "target.call.path",
            format!("must start with route `{name}`'s prefix `{}`", r.prefix),
        ));
    }
    Ok(r)
}

fn choice<T: Copy>(field: &str, v: &str, options: &[(&str, T)]) -> Result<T, ApiError> {
    options
        .iter()
        .find(|(k, _)| *k == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
            ApiError::invalid(field, format!("must be one of {}", names.join(", ")))
        })
}

/// Validates a schedule document into its stored form. `routes`: the routes it may name
/// (see [`named_route`]).
pub fn parse_spec(body: &[u8], routes: &KnownRoutes) -> Result<ScheduleSpec, ApiError> {
    let mut input: ScheduleInput = parse_json(body)?;
    let tz =
        recurrence::parse_tz(&input.time_zone).map_err(|m| ApiError::invalid("time_zone", m))?;
    let start_ms = input
        .start
        .as_deref()
        .map(|s| timestamp("start", s, &tz))
        .transpose()?;
    let end_ms = input
        .end
        .as_deref()
        .map(|s| timestamp("end", s, &tz))
        .transpose()?;
    if let (Some(s), Some(e)) = (start_ms, end_ms) {
        if e <= s {
            return Err(ApiError::invalid("end", "must be after start"));
        }
    }
    let missed = choice(
        "missed",
        &input.missed,
        &[
            ("skip", Missed::Skip),
            ("once", Missed::Once),
            ("all", Missed::All),
        ],
    )?;
    let overlap = choice(
        "overlap",
        &input.overlap,
        &[
            ("skip", Overlap::Skip),
            ("buffer", Overlap::Buffer),
            ("allow", Overlap::Allow),
        ],
    )?;
    if input.catch_up_window_ms > MAX_CATCH_UP_WINDOW_MS {
        return Err(ApiError::invalid(
            "catch_up_window_ms",
            format!("at most {MAX_CATCH_UP_WINDOW_MS}"),
        ));
    }
    if input.jitter_ms > MAX_JITTER_MS {
        return Err(ApiError::invalid(
            "jitter_ms",
            format!("at most {MAX_JITTER_MS}"),
        ));
    }
    let recurrence = recurrence_of(&input.schedule, &tz)?;
    let target = target_of(&mut input.target, routes)?;
    Ok(ScheduleSpec {
        recurrence,
        time_zone: input.time_zone.clone(),
        start_ms,
        end_ms,
        target,
        missed,
        catch_up_window_ms: input.catch_up_window_ms,
        overlap,
        jitter_ms: input.jitter_ms,
        document: serde_json::to_string(&input).unwrap_or_default(),
    })
}

fn occurrences(c: &Compiled, after_ms: u64) -> Vec<Value> {
    c.upcoming(after_ms, PREVIEW_OCCURRENCES)
        .into_iter()
        .map(|t| json!({"at_ms": t, "at": format_local(t, c.time_zone())}))
        .collect()
}

fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Enqueued {
            sequence,
            duplicate,
        } => json!({"result": "enqueued", "sequence": sequence, "duplicate": duplicate}),
        Outcome::EnqueueFailed { reason } => json!({"result": "enqueue_failed", "reason": reason}),
        Outcome::Skipped { reason } => json!({"result": "skipped", "reason": reason}),
        Outcome::CallStarted { timeout_ms } => {
            json!({"result": "call_started", "timeout_ms": timeout_ms})
        }
        Outcome::Called {
            tenant,
            status,
            latency_ms,
        } => {
            json!({"result": "called", "tenant": tenant, "status": status, "latency_ms": latency_ms})
        }
        Outcome::CallFailed { error, latency_ms } => {
            json!({"result": "call_failed", "error": error, "latency_ms": latency_ms})
        }
        Outcome::CallLost {
            reason,
            retry_message_id,
        } => json!({"result": "call_lost", "reason": reason, "retried": retry_message_id.is_some(),
                   "retry_message_id": retry_message_id}),
    }
}

fn firing_json(f: &Firing, tz: &Tz) -> Value {
    json!({
        "occurrence_ms": f.occurrence_ms,
        "occurrence": format_local(f.occurrence_ms, tz),
        "fired_ms": f.fired_ms,
        "message_id": f.message_id,
        "manual": f.manual,
        "skipped_before": f.skipped,
        "retry_of": schedules::retry_of(&f.message_id),
        "outcome": outcome_json(&f.outcome),
    })
}

fn entry_json(name: &str, e: &ScheduleEntry, detail: bool) -> Value {
    let definition: Value = serde_json::from_str(&e.spec.document).unwrap_or(Value::Null);
    let compiled = Compiled::new(&e.spec, e.updated_ms).ok();
    let tz = compiled.as_ref().map(|c| *c.time_zone()).unwrap_or(Tz::UTC);
    // Active: from the cursor, so a due-but-not-yet-fired occurrence shows; paused: from now
    // (what came due while paused will be skipped).
    let from = match e.paused {
        Some(_) => e.cursor_ms.max(now_ms()),
        None => e.cursor_ms,
    };
    let next = compiled
        .as_ref()
        .map(|c| occurrences(c, from))
        .unwrap_or_default();
    let state = match (&e.paused, next.is_empty()) {
        (Some(_), _) => "paused",
        (None, true) => "expired",
        (None, false) => "active",
    };
    let mut v = json!({
        "name": name,
        "definition": definition,
        "revision": e.revision,
        "updated_ms": e.updated_ms,
        "state": state,
        "paused": e.paused.as_ref().map(|p| json!({"note": p.note, "at_ms": p.at_ms})),
        "cursor_ms": e.cursor_ms,
        "fired_total": e.fired_total,
        "skipped_total": e.skipped_total,
        "next": if detail { Value::from(next) } else { Value::from(next.into_iter().take(1).collect::<Vec<_>>()) },
    });
    if detail {
        v["last_firings"] = e
            .history
            .iter()
            .rev()
            .map(|f| firing_json(f, &tz))
            .collect();
    }
    v
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    if crate::state::is_resource_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            "must be 1 to 64 of A-Z a-z 0-9 . _ - and not start with . or -",
        ))
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("schedule `{name}`"))
}

fn answer(r: SmResponse) -> Result<ScheduleResponse, ApiError> {
    match r {
        SmResponse::Schedule(s) => Ok(s),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// The route a definition names, looked up after a read barrier (so a route just defined on
/// any node is found).
async fn known_routes(st: &AdminState, body: &[u8]) -> Result<KnownRoutes, ApiError> {
    let mut out = KnownRoutes::new();
    let Some(name) = named_route(body).filter(|n| crate::state::is_resource_name(n)) else {
        return Ok(out);
    };
    st.client.read_barrier().await?;
    if let Some(r) = route::read_route(&*st.store, &name)? {
        out.insert(name, r);
    }
    Ok(out)
}

/// `POST /admin/schedules:preview`: validates and shows the next occurrences; stores nothing.
pub(crate) async fn preview(State(st): Shared, body: Bytes) -> Result<Json<Value>, ApiError> {
    let spec = parse_spec(&body, &known_routes(&st, &body).await?)?;
    let now = now_ms();
    let c = Compiled::new(&spec, now).map_err(|m| ApiError::invalid("schedule", m))?;
    let definition: Value = serde_json::from_str(&spec.document).unwrap_or(Value::Null);
    Ok(Json(json!({
        "valid": true,
        "definition": definition,
        "next": occurrences(&c, now.saturating_sub(1)),
    })))
}

pub(crate) async fn put(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let spec = parse_spec(&body, &known_routes(&st, &body).await?)?;
    let now = now_ms();
    let c = Compiled::new(&spec, now).map_err(|m| ApiError::invalid("schedule", m))?;
    if c.next_after(now.saturating_sub(1)).is_none() {
        return Err(ApiError::invalid(
            "schedule",
            "never fires: every occurrence is in the past or after `end`",
        ));
    }
    let cmd = Command::SchedulePut {
        name: name.clone(),
        spec: Box::new(spec),
        now_ms: now,
    };
    match answer(st.client.write(&cmd).await?)? {
        ScheduleResponse::Put { revision, created } => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({"name": name, "revision": revision, "created": created, "next": occurrences(&c, now.saturating_sub(1))});
            Ok((code, Json(body)).into_response())
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn get_one(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    validate_name(&name)?;
    barrier(&st, &opts).await?;
    match schedules::read_schedule(&*st.store, &name)? {
        Some(e) => Ok(Json(entry_json(&name, &e, true))),
        None => Err(not_found(&name)),
    }
}

pub(crate) async fn list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.prepare(&st).await?;
    let items = schedules::list_schedules(&*st.store, q.after.as_deref(), limit)?;
    let next = next_cursor(&items, limit);
    let items: Vec<Value> = items.iter().map(|(n, e)| entry_json(n, e, false)).collect();
    Ok(Json(json!({"items": items, "next": next})))
}

pub(crate) async fn delete(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let cmd = Command::ScheduleDelete { name: name.clone() };
    match answer(st.client.write(&cmd).await?)? {
        ScheduleResponse::Deleted { existed: true } => Ok(StatusCode::NO_CONTENT.into_response()),
        ScheduleResponse::Deleted { existed: false } => Err(not_found(&name)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    note: Option<String>,
}

async fn set_paused(
    st: &AdminState,
    name: &str,
    paused: bool,
    note: String,
) -> Result<Json<Value>, ApiError> {
    validate_name(name)?;
    let cmd = Command::SchedulePause {
        name: name.to_string(),
        paused,
        note,
        now_ms: now_ms(),
    };
    match answer(st.client.write(&cmd).await?)? {
        ScheduleResponse::Paused { paused } => Ok(Json(json!({"name": name, "paused": paused}))),
        ScheduleResponse::NotFound => Err(not_found(name)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn pause(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: PauseBody = if body.is_empty() {
        PauseBody::default()
    } else {
        parse_json(&body)?
    };
    let note = b.note.unwrap_or_default();
    if note.len() > MAX_NOTE_BYTES {
        return Err(ApiError::invalid(
            "note",
            format!("at most {MAX_NOTE_BYTES} bytes"),
        ));
    }
    set_paused(&st, &name, true, note).await
}

pub(crate) async fn resume(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&st, &name, false, String::new()).await
}

/// "Trigger now": one firing outside the recurrence (whatever the pause or overlap state).
/// A call target runs in the background; its outcome shows in GET.
pub(crate) async fn trigger(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    // A call needs one of this node's call slots: take it before firing. Read after a
    // barrier, so a schedule just defined through another node is seen with its target.
    st.client.read_barrier().await?;
    let before = schedules::read_schedule(&*st.store, &name)?;
    let permit = match &before {
        Some(e) if e.spec.target.call().is_some() => {
            Some(st.calls.try_permit().ok_or_else(|| {
                ApiError::NotApplied(format!(
                    "all {MAX_CALLS_IN_FLIGHT} call slots of this node are busy"
                ))
            })?)
        }
        _ => None,
    };
    let now = now_ms();
    let fire = Fire {
        name: name.clone(),
        revision: 0,
        occurrence_ms: now,
        skipped: 0,
        skip_only: false,
        manual: true,
        message_id: crate::init::random_hex(16),
        now_ms: now,
    };
    match answer(
        st.client
            .write(&Command::ScheduleFire(Box::new(fire)))
            .await?,
    )? {
        ScheduleResponse::Fired { firing } => {
            let spec = schedules::read_schedule(&*st.store, &name)?
                .or(before)
                .map(|e| e.spec);
            if let (Outcome::CallStarted { .. }, Some(spec)) = (&firing.outcome, &spec) {
                st.calls.spawn(permit, &name, &spec.target, firing.clone());
            }
            let tz = spec
                .and_then(|s| recurrence::parse_tz(&s.time_zone).ok())
                .unwrap_or(Tz::UTC);
            Ok((StatusCode::ACCEPTED, Json(firing_json(&firing, &tz))).into_response())
        }
        ScheduleResponse::NotFound => Err(not_found(&name)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes the tests' definitions may name: a sync one and an async one.
    fn routes() -> KnownRoutes {
        let mut r = KnownRoutes::new();
        r.insert(
            "orders-sync".into(),
            RouteSpec {
                prefix: "/http/orders".into(),
                total_timeout_ms: 20_000,
                ..RouteSpec::default()
            },
        );
        r.insert(
            "orders-async".into(),
            RouteSpec {
                mode: Mode::Async,
                queue: Some("q".into()),
                ..RouteSpec::default()
            },
        );
        r
    }

    fn field_of(body: Value) -> Option<String> {
        match parse_spec(body.to_string().as_bytes(), &routes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("expected 400, got {:?}", other.map(|s| s.document)),
        }
    }

    /// Data-driven: each bad definition answers 400 naming its field (and cron position).
    #[test]
    fn bad_definitions_name_the_field() {
        let q = json!({"queue": {"name": "q"}});
        let cases = [
            (
                json!({"schedule": {"cron": "0 0 25 * * ?"}, "target": q}),
                "schedule.cron[3:hours]",
            ),
            (
                json!({"schedule": {"cron": "0 0 *"}, "target": q}),
                "schedule.cron",
            ),
            (
                json!({"schedule": {"cron": "0 * * * * ?"}, "time_zone": "Europe/Nowhere", "target": q}),
                "time_zone",
            ),
            (
                json!({"schedule": {"once": "tomorrow"}, "target": q}),
                "schedule.once",
            ),
            (
                json!({"schedule": {"times": ["2030-01-01T00:00:00", "x"]}, "target": q}),
                "schedule.times[1]",
            ),
            (
                json!({"schedule": {"every": {"n": 0, "unit": "seconds"}}, "target": q}),
                "schedule.every.n",
            ),
            (
                json!({"schedule": {"every": {"unit": "fortnights"}}, "target": q}),
                "schedule.every.unit",
            ),
            (
                json!({"schedule": {"every": {"unit": "weeks", "weekdays": ["MON", "XYZ"]}}, "target": q}),
                "schedule.every.weekdays[1]",
            ),
            (
                json!({"schedule": {"every": {"unit": "weeks"}}, "target": q}),
                "schedule.every.weekdays",
            ),
            (
                json!({"schedule": {"every": {"unit": "days", "at": "25:00"}}, "target": q}),
                "schedule.every.at",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"queue": {"name": "-bad"}}}),
                "target.queue.name",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"path": "x"}}}),
                "target.call.path",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"path": "/http/x", "method": "TRACE"}}}),
                "target.call.method",
            ),
            // A named route must exist, be sync, and the path must be under its prefix.
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"route": "nope", "path": "/http/orders/1"}}}),
                "target.call.route",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"route": "a b", "path": "/http/orders/1"}}}),
                "target.call.route",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"route": "orders-async", "path": "/http/x"}}}),
                "target.call.route",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"route": "orders-sync", "path": "/http/other"}}}),
                "target.call.path",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": {"call": {"route": "orders-sync", "path": "/http/orders", "timeout_ms": 10}}}),
                "target.call.timeout_ms",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": q, "missed": "sometimes"}),
                "missed",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": q, "overlap": "queue"}),
                "overlap",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": q, "start": "2030-01-02T00:00:00", "end": "2030-01-01T00:00:00"}),
                "end",
            ),
            (
                json!({"schedule": {"on_create": {}}, "target": q, "colour": 1}),
                "colour",
            ),
        ];
        for (body, want) in cases {
            let got = field_of(body.clone());
            let want = (want != ".").then(|| want.to_string());
            assert_eq!(got, want, "{body}");
        }
    }

    /// A good definition keeps its canonical document with defaults filled in.
    #[test]
    fn good_definition_round_trips() {
        let s = parse_spec(
            json!({"schedule": {"every": {"unit": "weeks", "weekdays": ["mon", "FRI"], "at": "08:30"}},
                   "time_zone": "Europe/Berlin", "target": {"queue": {"name": "q", "body": "hi"}}})
            .to_string()
            .as_bytes(),
            &routes(),
        )
        .unwrap();
        assert!(
            matches!(&s.recurrence, Recurrence::Every { weekdays, at_s: 30600, .. } if weekdays == &vec![1, 5])
        );
        let doc: Value = serde_json::from_str(&s.document).unwrap();
        assert_eq!(doc["missed"], "once");
        assert_eq!(doc["overlap"], "skip");
        assert_eq!(parse_spec(s.document.as_bytes(), &routes()).unwrap(), s);
    }

    /// A call naming a sync route becomes a route call whose timeout defaults to the route's
    /// total timeout (a pool call's to 60 s); the canonical document shows the filled-in value
    /// and parses back to the same definition.
    #[test]
    fn route_call_target_round_trips() {
        let body = json!({"schedule": {"on_create": {}},
                          "target": {"call": {"route": "orders-sync", "path": "/http/orders/sync?full=1",
                                              "method": "get"}}});
        assert_eq!(
            named_route(body.to_string().as_bytes()).as_deref(),
            Some("orders-sync")
        );
        let s = parse_spec(body.to_string().as_bytes(), &routes()).unwrap();
        assert_eq!(
            s.target,
            Target::RouteCall {
                route: "orders-sync".into(),
                method: "GET".into(),
                path: "/http/orders/sync?full=1".into(),
                content_type: None,
                headers: vec![],
                body: vec![],
                timeout_ms: 20_000,
            }
        );
        let doc: Value = serde_json::from_str(&s.document).unwrap();
        assert_eq!(doc["target"]["call"]["timeout_ms"], 20_000);
        assert_eq!(doc["target"]["call"]["method"], "GET");
        assert_eq!(parse_spec(s.document.as_bytes(), &routes()).unwrap(), s);
        let pool = parse_spec(
            json!({"schedule": {"on_create": {}}, "target": {"call": {"path": "/http/x"}}})
                .to_string()
                .as_bytes(),
            &KnownRoutes::new(),
        )
        .unwrap();
        assert!(
            matches!(pool.target, Target::Call { timeout_ms: DEFAULT_CALL_TIMEOUT_MS, ref method, .. } if method == "POST")
        );
        assert_eq!(named_route(pool.document.as_bytes()), None);
    }
}
