//! Data-driven tests of the schedules' apply functions through the real state machine.

use super::*;
use crate::state::harness::Harness;
use crate::state::queue::{QueueConfig, Settle};
use crate::state::{Command, Response};

type T = Harness;

/// The schedule tests' helpers on the shared harness.
trait Fixture {
    fn run(&mut self, cmd: Command) -> Response;
    fn run_batch(&mut self, cmds: Vec<Command>) -> Vec<Response>;
    fn sched(&mut self, cmd: Command) -> ScheduleResponse;
    fn entry(&self, name: &str) -> ScheduleEntry;
}

impl Fixture for Harness {
    fn run(&mut self, cmd: Command) -> Response {
        self.apply(cmd)
    }

    fn run_batch(&mut self, cmds: Vec<Command>) -> Vec<Response> {
        self.apply_batch(cmds)
    }

    fn sched(&mut self, cmd: Command) -> ScheduleResponse {
        match self.run(cmd) {
            Response::Schedule(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn entry(&self, name: &str) -> ScheduleEntry {
        read_schedule(&*self.kv, name).unwrap().unwrap()
    }
}

fn spec(overlap: Overlap, target: Target) -> ScheduleSpec {
    ScheduleSpec {
        recurrence: Recurrence::Cron {
            expr: "* * * ? * *".into(),
        },
        time_zone: "UTC".into(),
        start_ms: None,
        end_ms: None,
        target,
        missed: Missed::All,
        catch_up_window_ms: 60_000,
        overlap,
        jitter_ms: 0,
        document: "{}".into(),
    }
}

fn queue_target() -> Target {
    Target::Queue {
        queue: "q".into(),
        content_type: Some("text/plain".into()),
        headers: vec![("x-a".into(), "1".into())],
        body: b"tick".to_vec(),
    }
}

fn fire(name: &str, revision: u64, occ: u64, id: &str) -> Command {
    Command::ScheduleFire(Box::new(Fire {
        name: name.into(),
        revision,
        occurrence_ms: occ,
        skipped: 0,
        skip_only: false,
        manual: false,
        message_id: id.into(),
        now_ms: occ + 5,
    }))
}

fn put(name: &str, s: ScheduleSpec, now_ms: u64) -> Command {
    Command::SchedulePut {
        name: name.into(),
        spec: Box::new(s),
        now_ms,
    }
}

fn outcome(r: &ScheduleResponse) -> &Outcome {
    match r {
        ScheduleResponse::Fired { firing } => &firing.outcome,
        other => panic!("not fired: {other:?}"),
    }
}

/// One entry per occurrence: the first enqueues (in the same batch), a repeat or an older
/// occurrence is a no-op, and the message carries the occurrence in its headers.
#[test]
fn each_occurrence_fires_once_and_enqueues_in_the_same_entry() {
    let mut t = T::new();
    t.run(Command::QueuePut {
        name: "q".into(),
        config: QueueConfig::default(),
        now_ms: 0,
    });
    assert_eq!(
        t.sched(put("s", spec(Overlap::Allow, queue_target()), 1_000)),
        ScheduleResponse::Put {
            revision: 2,
            created: true
        }
    );
    // Fire and its repeat in ONE batch: the repeat sees the first through the batch.
    let r = t.run_batch(vec![
        fire("s", 2, 2_000, "m1"),
        fire("s", 2, 2_000, "m1-retry"),
        fire("s", 2, 1_500, "older"),
    ]);
    assert!(matches!(
        &r[0],
        Response::Schedule(ScheduleResponse::Fired { firing }) if matches!(firing.outcome, Outcome::Enqueued { duplicate: false, .. })
    ));
    assert_eq!(r[1], Response::Schedule(ScheduleResponse::Duplicate));
    assert_eq!(r[2], Response::Schedule(ScheduleResponse::Duplicate));
    let stats = crate::state::queue::read_stats(&*t.kv, "q").unwrap();
    assert_eq!(stats.depth, 1);
    let e = t.entry("s");
    assert_eq!((e.cursor_ms, e.fired_total, e.history.len()), (2_000, 1, 1));
    // The message: body, the definition's headers plus the scheduler's.
    let got = t.run(Command::QueueReceive {
        queue: "q".into(),
        now_ms: 3_000,
        lock_ms: 60_000,
        lock_token: "L".into(),
        consumer: "c".into(),
    });
    let Response::Queue(QueueResponse::Received { message: Some(m) }) = got else {
        panic!("{got:?}")
    };
    assert_eq!(m.body, b"tick");
    assert_eq!(m.meta.id, "m1");
    let h: std::collections::HashMap<_, _> = m.meta.headers.iter().cloned().collect();
    assert_eq!(h["x-a"], "1");
    assert_eq!(h[HEADER_SCHEDULE], "s");
    assert_eq!(h[HEADER_OCCURRENCE_MS], "2000");
}

/// Overlap: while the previous firing's message is live, `skip` records a skip and moves the
/// cursor, `buffer` changes nothing (Busy), `allow` fires; once the message is completed,
/// the next occurrence fires again.
#[test]
fn overlap_policies_judge_in_flight_by_the_queue() {
    for overlap in [Overlap::Skip, Overlap::Buffer, Overlap::Allow] {
        let mut t = T::new();
        t.run(Command::QueuePut {
            name: "q".into(),
            config: QueueConfig::default(),
            now_ms: 0,
        });
        t.sched(put("s", spec(overlap, queue_target()), 1_000));
        assert!(matches!(
            outcome(&t.sched(fire("s", 2, 2_000, "m1"))),
            Outcome::Enqueued { .. }
        ));
        let second = t.sched(fire("s", 2, 3_000, "m2"));
        match overlap {
            Overlap::Skip => {
                assert_eq!(
                    outcome(&second),
                    &Outcome::Skipped {
                        reason: "overlap".into()
                    }
                );
                assert_eq!(t.entry("s").cursor_ms, 3_000);
                assert_eq!(t.entry("s").skipped_total, 1);
            }
            Overlap::Buffer => {
                assert_eq!(second, ScheduleResponse::Busy);
                assert_eq!(t.entry("s").cursor_ms, 2_000);
            }
            Overlap::Allow => {
                assert!(matches!(outcome(&second), Outcome::Enqueued { .. }))
            }
        }
        if overlap == Overlap::Allow {
            continue;
        }
        // Receive and complete m1: no longer in flight.
        t.run(Command::QueueReceive {
            queue: "q".into(),
            now_ms: 3_100,
            lock_ms: 60_000,
            lock_token: "L".into(),
            consumer: "c".into(),
        });
        t.run(Command::QueueSettle {
            queue: "q".into(),
            id: "m1".into(),
            lock_token: "L".into(),
            now_ms: 3_200,
            action: Settle::Complete,
        });
        let third = t.sched(fire("s", 2, 4_000, "m3"));
        assert!(
            matches!(outcome(&third), Outcome::Enqueued { .. }),
            "{overlap:?}"
        );
    }
}

/// Paused schedules fire nothing; resuming skips what came due while paused; a firing
/// computed from an older revision is stale; a manual trigger ignores cursor and pause.
#[test]
fn pause_resume_stale_and_manual() {
    let mut t = T::new();
    t.run(Command::QueuePut {
        name: "q".into(),
        config: QueueConfig::default(),
        now_ms: 0,
    });
    t.sched(put("s", spec(Overlap::Allow, queue_target()), 1_000));
    let pause = |paused, now_ms| Command::SchedulePause {
        name: "s".into(),
        paused,
        note: "maintenance".into(),
        now_ms,
    };
    assert_eq!(
        t.sched(pause(true, 1_500)),
        ScheduleResponse::Paused { paused: true }
    );
    assert_eq!(t.entry("s").paused.unwrap().note, "maintenance");
    assert_eq!(
        t.sched(fire("s", 2, 2_000, "m1")),
        ScheduleResponse::IsPaused
    );
    let mut manual = Fire {
        name: "s".into(),
        revision: 0,
        occurrence_ms: 2_500,
        skipped: 0,
        skip_only: false,
        manual: true,
        message_id: "man".into(),
        now_ms: 2_500,
    };
    assert!(matches!(
        outcome(&t.sched(Command::ScheduleFire(Box::new(manual.clone())))),
        Outcome::Enqueued { .. }
    ));
    assert_eq!(
        t.entry("s").cursor_ms,
        999,
        "manual firings leave the cursor"
    );
    t.sched(pause(false, 5_000));
    assert_eq!(t.entry("s").cursor_ms, 5_000);
    assert_eq!(
        t.sched(fire("s", 2, 4_000, "m2")),
        ScheduleResponse::Duplicate
    );
    // Replace the definition: the old revision's occurrence is stale.
    t.sched(put("s", spec(Overlap::Allow, queue_target()), 5_500));
    assert_eq!(t.sched(fire("s", 2, 6_000, "m3")), ScheduleResponse::Stale);
    assert!(matches!(
        outcome(&t.sched(fire("s", 8, 6_000, "m3"))),
        Outcome::Enqueued { .. }
    ));
    // Missing queue: the occurrence is accounted for and the failure recorded.
    t.run(Command::QueueDelete { name: "q".into() });
    manual.message_id = "man2".into();
    assert!(matches!(
        outcome(&t.sched(Command::ScheduleFire(Box::new(manual)))),
        Outcome::EnqueueFailed { .. }
    ));
    assert_eq!(
        t.sched(Command::ScheduleDelete { name: "s".into() }),
        ScheduleResponse::Deleted { existed: true }
    );
    assert_eq!(
        t.sched(fire("s", 8, 9_000, "m4")),
        ScheduleResponse::NotFound
    );
}

/// Call targets: in flight until an outcome is recorded or the stamped timeout passes; a skip
/// covering missed occurrences counts them all.
#[test]
fn call_targets_and_skips() {
    let mut t = T::new();
    let call = Target::Call {
        method: "POST".into(),
        path: "/http/x".into(),
        content_type: None,
        headers: vec![],
        body: vec![],
        timeout_ms: 10_000,
    };
    t.sched(put("c", spec(Overlap::Skip, call), 0));
    assert_eq!(
        outcome(&t.sched(fire("c", 1, 1_000, "a"))),
        &Outcome::CallStarted { timeout_ms: 10_000 }
    );
    // 2 s later: still in flight, skipped.
    assert!(matches!(
        outcome(&t.sched(fire("c", 1, 2_000, "b"))),
        Outcome::Skipped { .. }
    ));
    let done = Outcome::Called {
        tenant: "t1".into(),
        status: 200,
        latency_ms: 12,
    };
    assert_eq!(
        t.sched(Command::ScheduleOutcome {
            name: "c".into(),
            message_id: "a".into(),
            outcome: done.clone(),
        }),
        ScheduleResponse::OutcomeRecorded { found: true }
    );
    assert_eq!(
        outcome(&t.sched(fire("c", 1, 3_000, "c1"))),
        &Outcome::CallStarted { timeout_ms: 10_000 }
    );
    // No outcome ever recorded (the leader died): in flight only until the timeout.
    assert!(matches!(
        outcome(&t.sched(fire("c", 1, 4_000, "d"))),
        Outcome::Skipped { .. }
    ));
    assert!(matches!(
        outcome(&t.sched(fire("c", 1, 13_000, "e"))),
        Outcome::CallStarted { .. }
    ));
    // A missed-skip accounting for 5 occurrences (4 earlier + this one).
    let mut f = Fire {
        name: "c".into(),
        revision: 1,
        occurrence_ms: 20_000,
        skipped: 4,
        skip_only: true,
        manual: false,
        message_id: "f".into(),
        now_ms: 30_000,
    };
    let before = t.entry("c").skipped_total;
    t.sched(Command::ScheduleFire(Box::new(f.clone())));
    assert_eq!(t.entry("c").skipped_total, before + 5);
    assert_eq!(t.entry("c").cursor_ms, 20_000);
    f.occurrence_ms = 20_000;
    assert_eq!(
        t.sched(Command::ScheduleFire(Box::new(f))),
        ScheduleResponse::Duplicate
    );
    let e = t.entry("c");
    assert_eq!(
        e.history
            .iter()
            .find(|h| h.message_id == "a")
            .unwrap()
            .outcome,
        done
    );
}

/// The same log applied twice gives the same state, byte for byte.
#[test]
fn replay_is_deterministic() {
    let run = || {
        let mut t = T::new();
        t.run(Command::QueuePut {
            name: "q".into(),
            config: QueueConfig::default(),
            now_ms: 0,
        });
        t.sched(put("s", spec(Overlap::Skip, queue_target()), 1_000));
        for i in 0..30u64 {
            t.sched(fire("s", 2, 2_000 + i * 1_000, &format!("m{i}")));
        }
        let e = t.entry("s");
        assert_eq!(e.history.len(), MAX_HISTORY);
        encode(&e)
    };
    assert_eq!(run(), run());
}

fn call_target(method: &str) -> Target {
    Target::Call {
        method: method.into(),
        path: "/http/x".into(),
        content_type: None,
        headers: vec![],
        body: vec![],
        timeout_ms: 5_000,
    }
}

fn lost(name: &str, id: &str, now_ms: u64) -> Command {
    Command::ScheduleCallLost {
        name: name.into(),
        message_id: id.into(),
        now_ms,
    }
}

/// Data-driven over methods: a call with no outcome is recorded `CallLost` only once its
/// stamped timeout has passed (at the proposer's clock); GET, HEAD, PUT, DELETE and OPTIONS
/// then start one retry of the same occurrence (id `<id>.retry`, in flight for overlap), POST
/// and PATCH do not; a retry that is lost too is never retried again; a repeat changes
/// nothing; and the same log replays to the same bytes.
#[test]
fn lost_call_is_recorded_and_an_idempotent_one_retried_once() {
    for (method, retried) in [
        ("GET", true),
        ("HEAD", true),
        ("PUT", true),
        ("DELETE", true),
        ("OPTIONS", true),
        ("POST", false),
        ("PATCH", false),
    ] {
        let run = || {
            let mut t = T::new();
            t.sched(put("c", spec(Overlap::Skip, call_target(method)), 0));
            // Fired at 1_005 (fire() stamps occurrence + 5) with a 5 s timeout.
            t.sched(fire("c", 1, 1_000, "a"));
            assert_eq!(t.sched(lost("c", "a", 6_004)), ScheduleResponse::NotLost);
            let r = t.sched(lost("c", "a", 6_005));
            let e = t.entry("c");
            let a = e.history.iter().find(|f| f.message_id == "a").unwrap();
            let ScheduleResponse::CallLost { retry } = r else {
                panic!("{method}: {r:?}")
            };
            assert_eq!(retry.is_some(), retried, "{method}");
            assert_eq!(
                a.outcome,
                Outcome::CallLost {
                    reason: CALL_LOST_REASON.into(),
                    retry_message_id: retried.then(|| "a.retry".to_string()),
                },
                "{method}"
            );
            assert_eq!(e.fired_total, 1, "a retry is not a new occurrence");
            // Recorded: a second proposal (another leader, a client retry) is a no-op.
            assert_eq!(t.sched(lost("c", "a", 9_000)), ScheduleResponse::NotLost);
            if let Some(r) = retry {
                assert_eq!(
                    (r.occurrence_ms, r.fired_ms, r.message_id.as_str()),
                    (1_000, 6_005, "a.retry")
                );
                assert_eq!(retry_of(&r.message_id), Some("a"));
                assert_eq!(r.outcome, Outcome::CallStarted { timeout_ms: 5_000 });
                assert_eq!(t.entry("c").last_run, Some(r));
                // The retry is in flight: the next occurrence is skipped for overlap.
                assert_eq!(
                    outcome(&t.sched(fire("c", 1, 7_000, "b"))),
                    &Outcome::Skipped {
                        reason: "overlap".into()
                    }
                );
                // Its own loss is recorded without a second retry.
                assert_eq!(
                    t.sched(lost("c", "a.retry", 11_005)),
                    ScheduleResponse::CallLost { retry: None }
                );
            } else {
                // Nothing in flight any more: the next occurrence fires.
                assert!(matches!(
                    outcome(&t.sched(fire("c", 1, 7_000, "b"))),
                    Outcome::CallStarted { .. }
                ));
            }
            encode(&t.entry("c"))
        };
        assert_eq!(run(), run(), "{method}: replay differs");
    }
}

/// Only a call still `CallStarted` can be lost: not one with a recorded outcome, not an
/// unknown firing or schedule, not a queue firing; a paused schedule records the loss but
/// starts no retry; an outcome arriving after the loss replaces it (the truth came late).
#[test]
fn call_lost_only_for_calls_without_outcome() {
    let mut t = T::new();
    t.run(Command::QueuePut {
        name: "q".into(),
        config: QueueConfig::default(),
        now_ms: 0,
    });
    t.sched(put("c", spec(Overlap::Allow, call_target("GET")), 0));
    t.sched(put("q", spec(Overlap::Allow, queue_target()), 0));
    t.sched(fire("c", 2, 1_000, "a"));
    t.sched(fire("c", 2, 2_000, "b"));
    t.sched(fire("q", 3, 1_000, "qa"));
    let called = Outcome::Called {
        tenant: "t1".into(),
        status: 200,
        latency_ms: 30,
    };
    t.sched(Command::ScheduleOutcome {
        name: "c".into(),
        message_id: "a".into(),
        outcome: called.clone(),
    });
    for (name, id) in [("c", "a"), ("c", "zz"), ("nope", "a"), ("q", "qa")] {
        assert_eq!(
            t.sched(lost(name, id, 60_000)),
            ScheduleResponse::NotLost,
            "{name}/{id}"
        );
    }
    t.sched(Command::SchedulePause {
        name: "c".into(),
        paused: true,
        note: String::new(),
        now_ms: 50_000,
    });
    assert_eq!(
        t.sched(lost("c", "b", 60_000)),
        ScheduleResponse::CallLost { retry: None }
    );
    // The old runner's outcome arrives after all: it replaces `CallLost`.
    t.sched(Command::ScheduleOutcome {
        name: "c".into(),
        message_id: "b".into(),
        outcome: called.clone(),
    });
    let e = t.entry("c");
    assert!(e.history.iter().all(|f| f.outcome == called));
}

/// A route call target fires like a pool call: `CallStarted` with its own timeout (the route
/// is resolved by the leader when it runs the call, not here), and the same loss rules.
#[test]
fn route_call_target_starts_a_call() {
    let mut t = T::new();
    let target = Target::RouteCall {
        route: "orders-sync".into(),
        method: "PUT".into(),
        path: "/http/orders/sync".into(),
        content_type: None,
        headers: vec![],
        body: b"{}".to_vec(),
        timeout_ms: 20_000,
    };
    assert_eq!(target.call(), Some(("PUT", 20_000)));
    t.sched(put("r", spec(Overlap::Skip, target), 0));
    assert_eq!(
        outcome(&t.sched(fire("r", 1, 1_000, "a"))),
        &Outcome::CallStarted { timeout_ms: 20_000 }
    );
    let ScheduleResponse::CallLost { retry: Some(r) } = t.sched(lost("r", "a", 21_005)) else {
        panic!("PUT through a route is retried once")
    };
    assert_eq!(r.outcome, Outcome::CallStarted { timeout_ms: 20_000 });
}
