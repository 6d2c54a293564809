//! Occurrence times of a schedule: a pure function of its definition (no clock).
//!
//! The leader's scheduler and the admin API's preview both call [`Compiled::next_after`]; the
//! state machine never does (it only compares the occurrence a proposer stamped with the
//! schedule's cursor). Quartz cron goes through `croner`; the "every N units" kinds, the fixed
//! timestamps and the bounds are computed here with chrono and the compiled-in tz database.
//!
//! Quartz's day-of-month `L-n` (the n-th day before the last) and `L-nW` (the weekday nearest
//! to it) are not croner syntax: [`parse_cron`] takes them out of the expression (croner then
//! matches every day) and [`Compiled::next_after`] keeps only the matching day of each month.
//!
//! Rules (documented in docs/schedules.md, tested below):
//! - Every N seconds / minutes / hours: fixed elapsed intervals counted from `start` (or from
//!   the Unix epoch), so a DST change neither adds nor drops a run. With weekdays, only
//!   occurrences on those local weekdays fire.
//! - Every N days / weeks / months / years: at local time `at` on matching local dates,
//!   counting N from the start date (or 1970-01-01). Weeks start on Sunday (CPI). A month
//!   without the day of month (31st, Feb 29th) is skipped.
//! - A local time that does not exist (spring forward) fires at the first instant after the
//!   gap (Europe/Berlin 02:30 -> 03:00 CEST); a local time that exists twice (fall back) fires
//!   once, at its first instance (CEST). Quartz cron follows croner's identical rule for fixed
//!   times; cron patterns with wildcards or steps in the time fields skip times in the gap
//!   and fire each matching wall-clock time in the repeated hour (both instances).

use std::str::FromStr as _;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike as _,
};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::state::schedules::{Recurrence, ScheduleSpec, Unit};

/// Days a calendar search looks ahead before declaring "no further occurrence" (about 110
/// years: enough for "every 4 years on Feb 29th" and any N the API accepts).
pub const MAX_DAY_SCAN: i64 = 40_200;
/// Local days a sub-daily search with a weekday filter skips before giving up.
const MAX_WEEKDAY_SKIPS: usize = 8;
/// Largest `n` of a Quartz `L-n` day of month (Quartz's own limit).
pub const MAX_LAST_DAY_OFFSET: u32 = 30;
/// croner lookups one cron search makes before declaring "no further occurrence" (an `L-n`
/// filter costs up to three per month: 5,000 covers more than a century).
const MAX_CRON_STEPS: usize = 5_000;
/// Position of day-of-month and day-of-week in a Quartz expression (0-based).
const DAY_OF_MONTH: usize = 3;
const DAY_OF_WEEK: usize = 5;
/// Quartz field names, by position (1-based in messages).
pub const CRON_FIELDS: [&str; 7] = [
    "seconds",
    "minutes",
    "hours",
    "day-of-month",
    "month",
    "day-of-week",
    "year",
];

/// A cron expression that does not parse, with the field at fault where it can be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    /// 1-based field position, when one field is at fault.
    pub position: Option<usize>,
    pub message: String,
}

fn quartz_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Optional)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build()
}

/// Quartz `L-n` / `L-nW` in day-of-month: the n-th day before the month's last day, or the
/// weekday (Monday to Friday) nearest to it within the month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastDayOffset {
    /// 1..=[`MAX_LAST_DAY_OFFSET`].
    pub n: u32,
    pub nearest_weekday: bool,
}

impl LastDayOffset {
    /// Reads `L-n` or `L-nW` (any case); `Ok(None)` for anything else.
    fn parse(field: &str) -> Result<Option<LastDayOffset>, String> {
        let upper = field.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("L-") else {
            return Ok(None);
        };
        let (digits, nearest_weekday) = match rest.strip_suffix('W') {
            Some(d) => (d, true),
            None => (rest, false),
        };
        match digits.parse::<u32>() {
            Ok(n) if (1..=MAX_LAST_DAY_OFFSET).contains(&n) => {
                Ok(Some(LastDayOffset { n, nearest_weekday }))
            }
            _ => Err(format!(
                "`L-n` needs n from 1 to {MAX_LAST_DAY_OFFSET} (optionally followed by W)"
            )),
        }
    }

    /// The day of `year-month` this names; `None` when the month is too short (`L-28` in a
    /// 28-day February: that month has no occurrence).
    pub fn day_in(&self, year: i32, month: u32) -> Option<u32> {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let last = first
            .checked_add_months(chrono::Months::new(1))?
            .pred_opt()?
            .day();
        let day = last.checked_sub(self.n).filter(|d| *d >= 1)?;
        if !self.nearest_weekday {
            return Some(day);
        }
        // Quartz `W`: never leaves the month (Saturday the 1st moves to Monday the 3rd).
        Some(match first.with_day(day)?.weekday() {
            chrono::Weekday::Sat if day == 1 => day + 2,
            chrono::Weekday::Sat => day - 1,
            chrono::Weekday::Sun if day == last => day - 2,
            chrono::Weekday::Sun => day + 1,
            _ => day,
        })
    }
}

/// A parsed Quartz expression: croner's pattern plus the `L-n` day filter croner lacks.
#[derive(Debug, Clone)]
pub struct QuartzCron {
    cron: Cron,
    last_day_offset: Option<LastDayOffset>,
}

impl QuartzCron {
    pub fn last_day_offset(&self) -> Option<LastDayOffset> {
        self.last_day_offset
    }
}

/// Parses a Quartz cron expression (6 or 7 fields, seconds first).
pub fn parse_cron(expr: &str) -> Result<QuartzCron, CronError> {
    let mut fields: Vec<&str> = expr.split_whitespace().collect();
    if !(6..=7).contains(&fields.len()) {
        return Err(CronError {
            position: None,
            message: format!(
                "expected 6 or 7 fields (seconds minutes hours day-of-month month day-of-week [year]), found {}",
                fields.len()
            ),
        });
    }
    let field_error = |i: usize, f: &str, m: &dyn std::fmt::Display| CronError {
        position: Some(i + 1),
        message: format!("field {} ({}) `{f}`: {m}", i + 1, CRON_FIELDS[i]),
    };
    let dom = fields[DAY_OF_MONTH];
    let last_day_offset =
        LastDayOffset::parse(dom).map_err(|m| field_error(DAY_OF_MONTH, dom, &m))?;
    if last_day_offset.is_some() {
        let dow = fields[DAY_OF_WEEK];
        if dow != "?" && dow != "*" {
            return Err(field_error(
                DAY_OF_WEEK,
                dow,
                &"must be `?` when day-of-month is `L-n`",
            ));
        }
        // croner matches every day; next_after keeps the one `L-n` names.
        fields[DAY_OF_MONTH] = "*";
        fields[DAY_OF_WEEK] = "?";
    }
    let parser = quartz_parser();
    let whole = match parser.parse(&fields.join(" ")) {
        Ok(cron) => {
            return Ok(QuartzCron {
                cron,
                last_day_offset,
            })
        }
        Err(e) => e.to_string(),
    };
    // Find the field at fault: each field alone, the others wildcards.
    for (i, f) in fields.iter().enumerate() {
        let mut probe: Vec<&str> = vec!["*"; fields.len()];
        probe[i] = f;
        if let Err(e) = parser.parse(&probe.join(" ")) {
            return Err(field_error(i, f, &e));
        }
    }
    Err(CronError {
        position: None,
        message: whole,
    })
}

/// Looks up an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| format!("`{name}` is not an IANA time zone name"))
}

/// The instant a local wall-clock time names: the first instance when it exists twice, the
/// first instant after the gap when it does not exist.
pub fn resolve_local(tz: &Tz, local: NaiveDateTime) -> Option<DateTime<Tz>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t),
        LocalResult::Ambiguous(a, b) => Some(a.min(b)),
        LocalResult::None => {
            // Gaps are whole minutes (at most a few hours): the first valid minute is the end.
            let mut probe = local
                .with_second(0)
                .map(|p| p + Duration::minutes(1))
                .unwrap_or(local);
            for _ in 0..(24 * 60) {
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return Some(t);
                }
                probe += Duration::minutes(1);
            }
            None
        }
    }
}

/// Parses a timestamp: RFC 3339 with an offset (`2026-12-01T10:00:00Z`), or a local date-time
/// without one (`2026-12-01T10:00:00`, read in `tz` by [`resolve_local`]).
pub fn parse_timestamp(s: &str, tz: &Tz) -> Result<u64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return to_ms(t.timestamp_millis());
    }
    let local = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .map_err(|_| {
            format!("`{s}` is not a timestamp (YYYY-MM-DDTHH:MM:SS, optionally with Z or +HH:MM)")
        })?;
    let t = resolve_local(tz, local).ok_or_else(|| format!("`{s}` has no instant in {tz}"))?;
    to_ms(t.timestamp_millis())
}

fn to_ms(ms: i64) -> Result<u64, String> {
    u64::try_from(ms).map_err(|_| "timestamps before 1970 are not supported".to_string())
}

/// RFC 3339 in the schedule's time zone, for humans (previews, GET).
pub fn format_local(ms: u64, tz: &Tz) -> String {
    match tz.timestamp_millis_opt(ms as i64).single() {
        Some(t) => t.to_rfc3339(),
        None => ms.to_string(),
    }
}

/// The delay (0..=jitter_ms) an occurrence waits, derived from (name, occurrence) with FNV-1a
/// so that every leader waits the same.
pub fn jitter_delay_ms(name: &str, occurrence_ms: u64, jitter_ms: u64) -> u64 {
    if jitter_ms == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(occurrence_ms.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % (jitter_ms + 1)
}

enum Kind {
    OnCreate,
    Times(Vec<u64>),
    Interval {
        period_ms: u64,
        weekdays: Vec<u8>,
    },
    Calendar {
        n: u32,
        unit: Unit,
        weekdays: Vec<u8>,
        at_s: u32,
        day_of_month: u8,
        month: u8,
    },
    Cron(Box<QuartzCron>),
}

/// A schedule definition ready to answer "when next?".
pub struct Compiled {
    kind: Kind,
    tz: Tz,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    /// `on_create` fires at this instant (the definition's update time).
    anchor_ms: u64,
    /// The local date N-unit counting starts from.
    anchor_date: NaiveDate,
}

impl Compiled {
    /// Compiles `spec`; `updated_ms` is when the definition was stored (for `on_create`).
    pub fn new(spec: &ScheduleSpec, updated_ms: u64) -> Result<Compiled, String> {
        let tz = parse_tz(&spec.time_zone)?;
        let anchor_date = spec
            .start_ms
            .and_then(|s| tz.timestamp_millis_opt(s as i64).single())
            .map(|t| t.date_naive())
            .unwrap_or(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default());
        let kind = match &spec.recurrence {
            Recurrence::OnCreate => Kind::OnCreate,
            Recurrence::Once { at_ms } => Kind::Times(vec![*at_ms]),
            Recurrence::Times { at_ms } => {
                let mut t = at_ms.clone();
                t.sort_unstable();
                t.dedup();
                Kind::Times(t)
            }
            Recurrence::Every {
                n,
                unit,
                weekdays,
                at_s,
                day_of_month,
                month,
            } => {
                let unit_ms = match unit {
                    Unit::Seconds => Some(1_000),
                    Unit::Minutes => Some(60_000),
                    Unit::Hours => Some(3_600_000),
                    _ => None,
                };
                match unit_ms {
                    Some(u) => Kind::Interval {
                        period_ms: u * u64::from((*n).max(1)),
                        weekdays: weekdays.clone(),
                    },
                    None => Kind::Calendar {
                        n: (*n).max(1),
                        unit: *unit,
                        weekdays: weekdays.clone(),
                        at_s: *at_s,
                        day_of_month: *day_of_month,
                        month: *month,
                    },
                }
            }
            Recurrence::Cron { expr } => {
                Kind::Cron(Box::new(parse_cron(expr).map_err(|e| e.message)?))
            }
        };
        Ok(Compiled {
            kind,
            tz,
            start_ms: spec.start_ms,
            end_ms: spec.end_ms,
            anchor_ms: updated_ms,
            anchor_date,
        })
    }

    pub fn time_zone(&self) -> &Tz {
        &self.tz
    }

    /// The first occurrence strictly after `after_ms` within the bounds; None when exhausted.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let after = match self.start_ms {
            Some(s) if after_ms < s => s.saturating_sub(1),
            _ => after_ms,
        };
        let next = match &self.kind {
            Kind::OnCreate => (self.anchor_ms > after).then_some(self.anchor_ms),
            Kind::Times(t) => t.iter().copied().find(|t| *t > after),
            Kind::Interval {
                period_ms,
                weekdays,
            } => self.next_interval(after, *period_ms, weekdays),
            Kind::Calendar { .. } => self.next_calendar(after),
            Kind::Cron(c) => self.next_cron(c, after),
        }?;
        match self.end_ms {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// Up to `n` occurrences after `after_ms`.
    pub fn upcoming(&self, after_ms: u64, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        let mut at = after_ms;
        while out.len() < n {
            match self.next_after(at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }

    fn local_weekday(&self, ms: u64) -> Option<u8> {
        let t = self.tz.timestamp_millis_opt(ms as i64).single()?;
        Some(t.weekday().num_days_from_sunday() as u8)
    }

    fn next_interval(&self, after: u64, period_ms: u64, weekdays: &[u8]) -> Option<u64> {
        let origin = self.start_ms.unwrap_or(0);
        let mut after = after;
        for _ in 0..=MAX_WEEKDAY_SKIPS {
            let next = if after < origin {
                origin
            } else {
                origin + ((after - origin) / period_ms + 1) * period_ms
            };
            let wd = self.local_weekday(next)?;
            if weekdays.is_empty() || weekdays.contains(&wd) {
                return Some(next);
            }
            // Jump to the end of that local day and search on from there.
            let t = self.tz.timestamp_millis_opt(next as i64).single()?;
            let next_day = t.date_naive().succ_opt()?.and_hms_opt(0, 0, 0)?;
            let midnight = resolve_local(&self.tz, next_day)?.timestamp_millis();
            after = u64::try_from(midnight).ok()?.saturating_sub(1);
        }
        None
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        let Kind::Calendar {
            n,
            unit,
            weekdays,
            day_of_month,
            month,
            ..
        } = &self.kind
        else {
            return false;
        };
        let n = i64::from(*n);
        let wd = d.weekday().num_days_from_sunday() as u8;
        if !weekdays.is_empty() && !weekdays.contains(&wd) {
            return false;
        }
        let a = self.anchor_date;
        match unit {
            Unit::Days => (d - a).num_days().rem_euclid(n) == 0,
            Unit::Weeks => {
                let sunday =
                    |x: NaiveDate| x - Duration::days(x.weekday().num_days_from_sunday().into());
                ((sunday(d) - sunday(a)).num_days() / 7).rem_euclid(n) == 0
            }
            Unit::Months => {
                let months = (i64::from(d.year()) * 12 + i64::from(d.month0()))
                    - (i64::from(a.year()) * 12 + i64::from(a.month0()));
                d.day() == u32::from(*day_of_month) && months.rem_euclid(n) == 0
            }
            Unit::Years => {
                d.month() == u32::from(*month)
                    && d.day() == u32::from(*day_of_month)
                    && i64::from(d.year() - a.year()).rem_euclid(n) == 0
            }
            Unit::Seconds | Unit::Minutes | Unit::Hours => false,
        }
    }

    fn next_calendar(&self, after: u64) -> Option<u64> {
        let Kind::Calendar { at_s, .. } = &self.kind else {
            return None;
        };
        let tod = chrono::NaiveTime::from_num_seconds_from_midnight_opt(*at_s, 0)?;
        let first = self
            .tz
            .timestamp_millis_opt(after as i64)
            .single()?
            .date_naive();
        for i in 0..MAX_DAY_SCAN {
            let d = first + Duration::days(i);
            if !self.day_matches(d) {
                continue;
            }
            let t = resolve_local(&self.tz, d.and_time(tod))?.timestamp_millis();
            match u64::try_from(t) {
                Ok(t) if t > after => return Some(t),
                _ => {}
            }
        }
        None
    }

    fn next_cron(&self, q: &QuartzCron, after: u64) -> Option<u64> {
        let mut from = self.tz.timestamp_millis_opt(after as i64).single()?;
        let mut inclusive = false;
        for _ in 0..MAX_CRON_STEPS {
            let t = q.cron.find_next_occurrence(&from, inclusive).ok()?;
            let ms = u64::try_from(t.timestamp_millis()).ok()?;
            if ms <= after {
                // croner works in whole seconds: step on until strictly after `after`.
                from = t;
                inclusive = false;
                continue;
            }
            let Some(offset) = q.last_day_offset else {
                return Some(ms);
            };
            let date = t.date_naive();
            let start_of = |d: NaiveDate| resolve_local(&self.tz, d.and_hms_opt(0, 0, 0)?);
            from = match offset.day_in(date.year(), date.month()) {
                Some(day) if day == date.day() => return Some(ms),
                // Before this month's day: search on from its start.
                Some(day) if day > date.day() => start_of(date.with_day(day)?)?,
                // Past it (or none this month): search on from the next month.
                _ => start_of(
                    date.with_day(1)?
                        .checked_add_months(chrono::Months::new(1))?,
                )?,
            };
            inclusive = true;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::schedules::{Missed, Overlap, Target};

    fn spec(rec: Recurrence, tz: &str) -> ScheduleSpec {
        ScheduleSpec {
            recurrence: rec,
            time_zone: tz.into(),
            start_ms: None,
            end_ms: None,
            target: Target::Queue {
                queue: "q".into(),
                content_type: None,
                headers: vec![],
                body: vec![],
            },
            missed: Missed::Once,
            catch_up_window_ms: 0,
            overlap: Overlap::Skip,
            jitter_ms: 0,
            document: String::new(),
        }
    }

    fn berlin(s: &str) -> u64 {
        parse_timestamp(s, &parse_tz("Europe/Berlin").unwrap()).unwrap()
    }

    fn utc(ms: u64) -> String {
        format_local(ms, &Tz::UTC)
    }

    fn daily_at(h: u32, m: u32) -> Recurrence {
        Recurrence::Every {
            n: 1,
            unit: Unit::Days,
            weekdays: vec![],
            at_s: h * 3600 + m * 60,
            day_of_month: 1,
            month: 1,
        }
    }

    /// Data-driven: each kind's next occurrences in UTC.
    #[test]
    fn kinds_give_documented_occurrences() {
        let t0 = parse_timestamp("2026-12-01T10:00:00.500Z", &Tz::UTC).unwrap();
        let every = |n, unit, weekdays: Vec<u8>| Recurrence::Every {
            n,
            unit,
            weekdays,
            at_s: 8 * 3600,
            day_of_month: 31,
            month: 2,
        };
        let cases: Vec<(Recurrence, Vec<&str>)> = vec![
            (
                every(15, Unit::Seconds, vec![]),
                vec!["2026-12-01T10:00:15+00:00", "2026-12-01T10:00:30+00:00"],
            ),
            (
                every(2, Unit::Hours, vec![]),
                vec!["2026-12-01T12:00:00+00:00", "2026-12-01T14:00:00+00:00"],
            ),
            // 2026-12-01 is a Tuesday; Mondays and Fridays only.
            (
                every(1, Unit::Weeks, vec![1, 5]),
                vec!["2026-12-04T08:00:00+00:00", "2026-12-07T08:00:00+00:00"],
            ),
            // Every 3 days counted from 1970-01-01 (day 20788 = 2026-12-01 is 1 mod 3).
            (
                every(3, Unit::Days, vec![]),
                vec!["2026-12-03T08:00:00+00:00", "2026-12-06T08:00:00+00:00"],
            ),
            // The 31st: months without one are skipped.
            (
                every(1, Unit::Months, vec![]),
                vec![
                    "2026-12-31T08:00:00+00:00",
                    "2027-01-31T08:00:00+00:00",
                    "2027-03-31T08:00:00+00:00",
                ],
            ),
            (
                Recurrence::Every {
                    n: 1,
                    unit: Unit::Years,
                    weekdays: vec![],
                    at_s: 0,
                    day_of_month: 29,
                    month: 2,
                },
                vec!["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
            ),
            // Quartz: last day of the month at 23:00; last Friday; nearest weekday to the 15th.
            (
                Recurrence::Cron {
                    expr: "0 0 23 L * ?".into(),
                },
                vec!["2026-12-31T23:00:00+00:00", "2027-01-31T23:00:00+00:00"],
            ),
            (
                Recurrence::Cron {
                    expr: "0 0 9 ? * 6L".into(),
                },
                vec!["2026-12-25T09:00:00+00:00", "2027-01-29T09:00:00+00:00"],
            ),
            (
                Recurrence::Cron {
                    expr: "0 0 9 15W * ?".into(),
                },
                vec!["2026-12-15T09:00:00+00:00", "2027-01-15T09:00:00+00:00"],
            ),
            // Second Monday (Quartz 2 = Monday); explicit year field.
            (
                Recurrence::Cron {
                    expr: "0 30 6 ? * 2#2 2027".into(),
                },
                vec!["2027-01-11T06:30:00+00:00", "2027-02-08T06:30:00+00:00"],
            ),
            // CPI's default: every 5th minute at second 0.
            (
                Recurrence::Cron {
                    expr: "0 0/5 * ? * * *".into(),
                },
                vec!["2026-12-01T10:05:00+00:00", "2026-12-01T10:10:00+00:00"],
            ),
            (
                Recurrence::Times {
                    at_ms: vec![t0 + 2_000, t0 - 5, t0 + 1_000],
                },
                vec![
                    "2026-12-01T10:00:01.500+00:00",
                    "2026-12-01T10:00:02.500+00:00",
                ],
            ),
        ];
        for (rec, want) in cases {
            let c = Compiled::new(&spec(rec.clone(), "UTC"), 0).unwrap();
            let got: Vec<String> = c.upcoming(t0, want.len()).into_iter().map(utc).collect();
            assert_eq!(got, want, "{rec:?}");
        }
    }

    /// Bounds: nothing before start or after end; once and on_create fire exactly once.
    #[test]
    fn bounds_and_one_shots() {
        let t0 = 1_000_000u64;
        let mut s = spec(
            Recurrence::Every {
                n: 1,
                unit: Unit::Seconds,
                weekdays: vec![],
                at_s: 0,
                day_of_month: 1,
                month: 1,
            },
            "UTC",
        );
        s.start_ms = Some(t0 + 10_500);
        s.end_ms = Some(t0 + 13_500);
        let c = Compiled::new(&s, 0).unwrap();
        // Counted from start: 10.5 s, 11.5 s, ... up to the end.
        assert_eq!(
            c.upcoming(t0, 10),
            vec![t0 + 10_500, t0 + 11_500, t0 + 12_500, t0 + 13_500]
        );
        let c = Compiled::new(&spec(Recurrence::OnCreate, "UTC"), t0).unwrap();
        assert_eq!(c.upcoming(t0 - 1, 5), vec![t0]);
        let c = Compiled::new(&spec(Recurrence::Once { at_ms: t0 }, "UTC"), 0).unwrap();
        assert_eq!(c.upcoming(0, 5), vec![t0]);
        assert_eq!(c.next_after(t0), None);
    }

    /// DST in Europe/Berlin, spring forward (2027-03-28, 02:00 CET -> 03:00 CEST) and fall
    /// back (2027-10-31, 03:00 CEST -> 02:00 CET), as docs/schedules.md documents.
    #[test]
    fn dst_in_berlin_fires_as_documented() {
        let tz = parse_tz("Europe/Berlin").unwrap();
        let show = |v: Vec<u64>| {
            v.into_iter()
                .map(|t| format_local(t, &tz))
                .collect::<Vec<_>>()
        };
        // Daily at 02:30: the missing 02:30 fires at 03:00 CEST; the doubled one once (CEST).
        let c = Compiled::new(&spec(daily_at(2, 30), "Europe/Berlin"), 0).unwrap();
        assert_eq!(
            show(c.upcoming(berlin("2027-03-27T00:00:00"), 3)),
            [
                "2027-03-27T02:30:00+01:00",
                "2027-03-28T03:00:00+02:00",
                "2027-03-29T02:30:00+02:00"
            ]
        );
        assert_eq!(
            show(c.upcoming(berlin("2027-10-30T00:00:00"), 3)),
            [
                "2027-10-30T02:30:00+02:00",
                "2027-10-31T02:30:00+02:00",
                "2027-11-01T02:30:00+01:00"
            ]
        );
        // Quartz cron at a fixed 02:30 agrees (croner's rule).
        let c = Compiled::new(
            &spec(
                Recurrence::Cron {
                    expr: "0 30 2 * * ?".into(),
                },
                "Europe/Berlin",
            ),
            0,
        )
        .unwrap();
        assert_eq!(
            show(c.upcoming(berlin("2027-03-27T12:00:00"), 1)),
            ["2027-03-28T03:00:00+02:00"]
        );
        assert_eq!(
            show(c.upcoming(berlin("2027-10-30T12:00:00"), 2)),
            ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]
        );
        // Every hour (elapsed time): no run lost or doubled; wall clock shows the shift.
        let c = Compiled::new(
            &spec(
                Recurrence::Every {
                    n: 1,
                    unit: Unit::Hours,
                    weekdays: vec![],
                    at_s: 0,
                    day_of_month: 1,
                    month: 1,
                },
                "Europe/Berlin",
            ),
            0,
        )
        .unwrap();
        assert_eq!(
            show(c.upcoming(berlin("2027-10-31T01:30:00"), 3)),
            [
                "2027-10-31T02:00:00+02:00",
                "2027-10-31T02:00:00+01:00",
                "2027-10-31T03:00:00+01:00"
            ]
        );
        // Cron with a wildcard hour: the repeated hour fires twice, the missing one not at all.
        let c = Compiled::new(
            &spec(
                Recurrence::Cron {
                    expr: "0 15 * * * ?".into(),
                },
                "Europe/Berlin",
            ),
            0,
        )
        .unwrap();
        assert_eq!(
            show(c.upcoming(berlin("2027-03-28T01:00:00"), 2)),
            ["2027-03-28T01:15:00+01:00", "2027-03-28T03:15:00+02:00"]
        );
        assert_eq!(
            show(c.upcoming(berlin("2027-10-31T01:30:00"), 3)),
            [
                "2027-10-31T02:15:00+02:00",
                "2027-10-31T02:15:00+01:00",
                "2027-10-31T03:15:00+01:00"
            ]
        );
        // A one-shot local timestamp inside the gap resolves to its end.
        assert_eq!(
            format_local(berlin("2027-03-28T02:30:00"), &tz),
            "2027-03-28T03:00:00+02:00"
        );
    }

    /// Quartz `L-n` (n-th day before the last) and `L-nW`, and croner's own `LW`, across month
    /// lengths: 31-, 30- and 28-day months and a leap February; a month too short for the
    /// offset has no occurrence; `W` never leaves the month; month and year fields still apply.
    #[test]
    fn last_day_offsets_follow_month_lengths() {
        let from = |s: &str| parse_timestamp(s, &Tz::UTC).unwrap();
        let cases: Vec<(&str, &str, Vec<&str>)> = vec![
            // Jan 31 - 3, Feb 28 - 3 (2027 is not a leap year), Mar 31 - 3, Apr 30 - 3.
            (
                "0 0 12 L-3 * ?",
                "2027-01-01T00:00:00Z",
                vec![
                    "2027-01-28T12:00:00+00:00",
                    "2027-02-25T12:00:00+00:00",
                    "2027-03-28T12:00:00+00:00",
                    "2027-04-27T12:00:00+00:00",
                ],
            ),
            // Leap February: 29 - 3.
            (
                "0 0 12 L-3 * ?",
                "2028-02-01T00:00:00Z",
                vec!["2028-02-26T12:00:00+00:00", "2028-03-28T12:00:00+00:00"],
            ),
            // Later on the day itself: still that day; past it: next month's.
            (
                "0 0 12 L-3 * ?",
                "2027-02-25T11:59:59Z",
                vec!["2027-02-25T12:00:00+00:00"],
            ),
            (
                "0 0 12 L-3 * ?",
                "2027-02-25T12:00:00Z",
                vec!["2027-03-28T12:00:00+00:00"],
            ),
            // L-28: the 3rd of a 31-day month, the 1st of a leap February, nothing in a
            // 28-day February.
            (
                "0 0 12 L-28 * ?",
                "2027-01-01T00:00:00Z",
                vec!["2027-01-03T12:00:00+00:00", "2027-03-03T12:00:00+00:00"],
            ),
            (
                "0 0 12 L-28 * ?",
                "2028-01-15T00:00:00Z",
                vec!["2028-02-01T12:00:00+00:00", "2028-03-03T12:00:00+00:00"],
            ),
            // L-30: only 31-day months have that day (the 1st).
            (
                "0 0 12 l-30 * ?",
                "2027-01-01T00:00:00Z",
                vec![
                    "2027-01-01T12:00:00+00:00",
                    "2027-03-01T12:00:00+00:00",
                    "2027-05-01T12:00:00+00:00",
                    "2027-07-01T12:00:00+00:00",
                ],
            ),
            // L-3W: Thu Jan 28 stays; Sun Mar 28 -> Mon 29; Sat Feb 26 2028 -> Fri 25.
            (
                "0 0 9 L-3W * ?",
                "2027-01-01T00:00:00Z",
                vec![
                    "2027-01-28T09:00:00+00:00",
                    "2027-02-25T09:00:00+00:00",
                    "2027-03-29T09:00:00+00:00",
                ],
            ),
            (
                "0 0 9 L-3W * ?",
                "2028-02-01T00:00:00Z",
                vec!["2028-02-25T09:00:00+00:00"],
            ),
            // L-30W on Saturday the 1st (May 2027, Jan 2028) moves forward to Monday the 3rd.
            (
                "0 0 9 L-30W * ?",
                "2027-04-15T00:00:00Z",
                vec!["2027-05-03T09:00:00+00:00", "2027-07-01T09:00:00+00:00"],
            ),
            // Month and year fields still filter: February 2028 only.
            (
                "0 0 12 L-3 2 ? 2028",
                "2027-01-01T00:00:00Z",
                vec!["2028-02-26T12:00:00+00:00"],
            ),
            // LW (croner): Sun Feb 28 2027 -> Fri 26; Tue Feb 29 2028 stays; Sat Jul 31 2027 -> Fri 30.
            (
                "0 0 9 LW * ?",
                "2027-02-01T00:00:00Z",
                vec!["2027-02-26T09:00:00+00:00", "2027-03-31T09:00:00+00:00"],
            ),
            (
                "0 0 9 LW * ?",
                "2028-02-01T00:00:00Z",
                vec!["2028-02-29T09:00:00+00:00"],
            ),
            (
                "0 0 9 LW * ?",
                "2027-07-01T00:00:00Z",
                vec!["2027-07-30T09:00:00+00:00"],
            ),
        ];
        for (expr, after, want) in cases {
            let c = Compiled::new(&spec(Recurrence::Cron { expr: expr.into() }, "UTC"), 0).unwrap();
            let got: Vec<String> = c
                .upcoming(from(after), want.len())
                .into_iter()
                .map(utc)
                .collect();
            assert_eq!(got, want, "{expr} after {after}");
        }
        // The offset's day lands on the spring-forward day in Berlin (L-3 of March 2027 is
        // the 28th): a fixed 02:30 in the gap fires at 03:00 CEST, as without the offset.
        let tz = parse_tz("Europe/Berlin").unwrap();
        let c = Compiled::new(
            &spec(
                Recurrence::Cron {
                    expr: "0 30 2 L-3 * ?".into(),
                },
                "Europe/Berlin",
            ),
            0,
        )
        .unwrap();
        let got: Vec<String> = c
            .upcoming(berlin("2027-03-01T00:00:00"), 2)
            .into_iter()
            .map(|t| format_local(t, &tz))
            .collect();
        assert_eq!(
            got,
            ["2027-03-28T03:00:00+02:00", "2027-04-27T02:30:00+02:00"]
        );
        // Data: the day a month's offset names, straight from the rule.
        let off = |n, nearest_weekday| LastDayOffset { n, nearest_weekday };
        assert_eq!(off(1, false).day_in(2027, 2), Some(27));
        assert_eq!(off(1, false).day_in(2028, 2), Some(28));
        assert_eq!(off(27, false).day_in(2027, 2), Some(1));
        assert_eq!(off(28, false).day_in(2027, 2), None);
        assert_eq!(off(28, false).day_in(2028, 2), Some(1));
        assert_eq!(off(29, false).day_in(2028, 2), None);
        assert_eq!(off(29, false).day_in(2027, 4), Some(1));
        assert_eq!(off(30, false).day_in(2027, 4), None);
        assert_eq!(off(30, false).day_in(2027, 12), Some(1));
    }

    /// `L-n` out of range, or with a day-of-week other than `?`, names the field at fault.
    #[test]
    fn last_day_offset_errors_name_the_field() {
        for (expr, position) in [
            ("0 0 12 L-0 * ?", 4),
            ("0 0 12 L-31 * ?", 4),
            ("0 0 12 L-x * ?", 4),
            ("0 0 12 L- * ?", 4),
            ("0 0 12 L-3X * ?", 4),
            ("0 0 12 L-3 * MON", 6),
            ("0 0 12 L-3 13 ?", 5),
        ] {
            let e = parse_cron(expr).unwrap_err();
            assert_eq!(e.position, Some(position), "{expr}: {e}");
        }
        let q = parse_cron("0 0 12 L-3W * ?").unwrap();
        assert_eq!(
            q.last_day_offset(),
            Some(LastDayOffset {
                n: 3,
                nearest_weekday: true
            })
        );
        assert_eq!(parse_cron("0 0 12 L * ?").unwrap().last_day_offset(), None);
    }

    /// Bad cron expressions name the field at fault.
    #[test]
    fn cron_errors_name_the_field() {
        let e = parse_cron("0 0 25 * * ?").unwrap_err();
        assert_eq!(e.position, Some(3), "{e}");
        assert!(e.message.contains("hours"), "{e}");
        let e = parse_cron("0 61 * * * ?").unwrap_err();
        assert_eq!(e.position, Some(2), "{e}");
        let e = parse_cron("0 0 * * 13 ?").unwrap_err();
        assert_eq!(e.position, Some(5), "{e}");
        let e = parse_cron("* * * *").unwrap_err();
        assert_eq!(e.position, None);
        assert!(parse_tz("Mars/Olympus").is_err());
    }

    /// Jitter is deterministic and bounded.
    #[test]
    fn jitter_is_a_function_of_name_and_occurrence() {
        for occ in [0u64, 1_000, 123_456_789] {
            let d = jitter_delay_ms("s", occ, 500);
            assert!(d <= 500);
            assert_eq!(d, jitter_delay_ms("s", occ, 500));
        }
        assert_eq!(jitter_delay_ms("s", 5, 0), 0);
    }
}
