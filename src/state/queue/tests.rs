//! Data-driven tests of the queue's apply functions through the real state machine.

use super::*;
use crate::state::harness::Harness;
use crate::state::{Command, Response};

type T = Harness;

/// The queue tests' helpers on the shared harness.
trait Fixture {
    fn run(&mut self, cmd: Command) -> QueueResponse;
    fn run_batch(&mut self, cmds: Vec<Command>) -> Vec<QueueResponse>;
    fn put(&mut self, name: &str, cfg: QueueConfig);
    fn stats(&self, q: &str) -> QueueStats;
    fn state_keys(&self) -> usize;
}

impl Fixture for Harness {
    fn run(&mut self, cmd: Command) -> QueueResponse {
        self.run_batch(vec![cmd]).pop().unwrap()
    }

    /// Applies several commands into one batch (as one Ready does).
    fn run_batch(&mut self, cmds: Vec<Command>) -> Vec<QueueResponse> {
        self.apply_batch(cmds)
            .into_iter()
            .map(|r| match r {
                Response::Queue(r) => r,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn put(&mut self, name: &str, cfg: QueueConfig) {
        let r = self.run(Command::QueuePut {
            name: name.into(),
            config: cfg,
            now_ms: 0,
        });
        assert!(matches!(r, QueueResponse::Put { .. }), "{r:?}");
    }

    fn stats(&self, q: &str) -> QueueStats {
        read_stats(&*self.kv, q).unwrap()
    }

    /// Every key under the state prefix, for "nothing left behind" checks.
    fn state_keys(&self) -> usize {
        self.kv
            .range(&keys::state(b"q"), &keys::state(b"r"), 1_000_000)
            .unwrap()
            .len()
    }
}

fn msg(id: &str, dedup: Option<&str>, body: &[u8]) -> NewMessage {
    NewMessage {
        id: id.into(),
        dedup_key: dedup.map(String::from),
        ordering_key: None,
        content_type: Some("text/plain".into()),
        headers: vec![("x-a".into(), "1".into())],
        body: body.to_vec(),
    }
}

/// A message with an optional ordering key.
fn keyed(id: &str, k: Option<&str>) -> NewMessage {
    NewMessage {
        ordering_key: k.map(String::from),
        ..msg(id, None, b"x")
    }
}

fn enqueue(q: &str, now_ms: u64, messages: Vec<NewMessage>) -> Command {
    Command::QueueEnqueue {
        queue: q.into(),
        now_ms,
        messages,
    }
}

fn receive(q: &str, now_ms: u64, token: &str) -> Command {
    Command::QueueReceive {
        queue: q.into(),
        now_ms,
        lock_ms: 1_000,
        lock_token: token.into(),
        consumer: "c".into(),
    }
}

fn settle(q: &str, id: &str, token: &str, now_ms: u64, action: Settle) -> Command {
    Command::QueueSettle {
        queue: q.into(),
        id: id.into(),
        lock_token: token.into(),
        now_ms,
        action,
    }
}

fn received(r: QueueResponse) -> Option<Box<Received>> {
    match r {
        QueueResponse::Received { message } => message,
        other => panic!("not a receive answer: {other:?}"),
    }
}

fn enqueued(r: QueueResponse) -> Vec<Enqueued> {
    match r {
        QueueResponse::Enqueued { results } => results,
        other => panic!("not an enqueue answer: {other:?}"),
    }
}

#[test]
fn unknown_queue_answers_not_found() {
    let mut t = T::new();
    assert_eq!(
        t.run(enqueue("nope", 1, vec![msg("a", None, b"x")])),
        QueueResponse::NotFound
    );
    assert_eq!(t.run(receive("nope", 1, "t")), QueueResponse::NotFound);
    assert_eq!(t.state_keys(), 0);
}

#[test]
fn dedup_inside_and_outside_the_window() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            dedup_window_ms: 100,
            ..QueueConfig::default()
        },
    );
    let cases: &[(u64, &str, bool, u64)] = &[
        // (now, id, duplicate?, expected sequence)
        (1000, "a", false, 1),
        (1050, "b", true, 1),  // inside the window: the original
        (1099, "c", true, 1),  // still inside
        (1100, "d", false, 2), // window over: enqueued anew
        (1150, "e", true, 2),
    ];
    for (now, id, dup, seq) in cases {
        let r = enqueued(t.run(enqueue("q", *now, vec![msg(id, Some("K"), b"x")])));
        assert_eq!(r[0].duplicate, *dup, "at {now}");
        assert_eq!(r[0].sequence, *seq, "at {now}");
        assert_eq!(r[0].id, if *seq == 1 { "a" } else { "d" });
    }
    assert_eq!(t.stats("q").depth, 2);
    assert_eq!(t.stats("q").duplicates_total, 3);
}

#[test]
fn batch_is_atomic_and_caps_store_nothing() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            max_messages: 3,
            max_bytes: 10,
            ..QueueConfig::default()
        },
    );
    let before = t.state_keys();
    let full = t.run(enqueue(
        "q",
        1,
        (0..4).map(|i| msg(&format!("m{i}"), None, b"x")).collect(),
    ));
    assert!(matches!(full, QueueResponse::Full { .. }), "{full:?}");
    assert_eq!(t.state_keys(), before, "a refused batch left something");
    let full = t.run(enqueue("q", 1, vec![msg("big", None, &[0; 11])]));
    assert!(matches!(full, QueueResponse::Full { .. }));
    assert_eq!(t.state_keys(), before);
    // A batch with a repeated dedup key: the second is a duplicate of the first.
    let r = enqueued(t.run(enqueue(
        "q",
        1,
        vec![
            msg("a", Some("k1"), b"1"),
            msg("b", Some("k1"), b"2"),
            msg("c", None, b"3"),
        ],
    )));
    assert_eq!(
        r.iter()
            .map(|e| (e.id.as_str(), e.sequence, e.duplicate))
            .collect::<Vec<_>>(),
        [("a", 1, false), ("a", 1, true), ("c", 2, false)]
    );
    let s = t.stats("q");
    assert_eq!((s.depth, s.bytes), (2, 2));
}

#[test]
fn receive_leases_once_and_lock_expiry_redelivers() {
    let mut t = T::new();
    t.put("q", QueueConfig::default());
    t.run(enqueue("q", 10, vec![msg("a", None, b"hello")]));
    // Two receives in one Ready (one batch): only one gets the message.
    let r = t.run_batch(vec![receive("q", 20, "t1"), receive("q", 20, "t2")]);
    let first = received(r[0].clone()).expect("first receive gets it");
    assert!(
        received(r[1].clone()).is_none(),
        "two consumers hold one message"
    );
    assert_eq!(first.body, b"hello");
    assert_eq!(first.meta.delivery_count, 1);
    assert_eq!(first.locked_until_ms, 1020);
    assert!(!has_visible(&*t.kv, &t.ix, "q", &QueueConfig::default(), 1019).unwrap());
    assert!(received(t.run(receive("q", 1019, "t3"))).is_none());
    assert_eq!(t.stats("q").in_flight, 1);
    // The lock expires: redelivered with the count raised; the old token is refused.
    assert!(has_visible(&*t.kv, &t.ix, "q", &QueueConfig::default(), 1020).unwrap());
    let again = received(t.run(receive("q", 1020, "t4"))).unwrap();
    assert_eq!(again.meta.delivery_count, 2);
    assert_eq!(
        t.run(settle("q", "a", "t1", 1021, Settle::Complete)),
        QueueResponse::LockLost
    );
    assert_eq!(t.stats("q").in_flight, 1);
    // Complete removes it and everything but the (empty) stats and config.
    assert!(matches!(
        t.run(settle("q", "a", "t4", 1021, Settle::Complete)),
        QueueResponse::Settled { .. }
    ));
    let s = t.stats("q");
    assert_eq!(
        (s.depth, s.bytes, s.in_flight, s.completed_total),
        (0, 0, 0, 1)
    );
    // Config and stats remain, plus the retained trace (its expiry is in memory).
    assert_eq!(t.state_keys(), 3, "completed message left keys behind");
}

#[test]
fn abandon_renew_and_max_deliveries_dead_letter() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            max_deliveries: 2,
            ..QueueConfig::default()
        },
    );
    t.run(enqueue("q", 0, vec![msg("a", None, b"x")]));
    received(t.run(receive("q", 1, "t1"))).unwrap();
    // Renew extends the lock.
    assert_eq!(
        t.run(settle(
            "q",
            "a",
            "t1",
            500,
            Settle::Renew { lock_ms: 2_000 }
        )),
        QueueResponse::Settled {
            locked_until_ms: Some(2_500)
        }
    );
    assert!(received(t.run(receive("q", 2_000, "t2"))).is_none());
    // Abandon makes it visible at once.
    t.run(settle("q", "a", "t1", 2_001, Settle::Abandon));
    let r = received(t.run(receive("q", 2_002, "t3"))).unwrap();
    assert_eq!(r.meta.delivery_count, 2);
    // Second abandon reaches max_deliveries: dead-lettered.
    t.run(settle("q", "a", "t3", 2_003, Settle::Abandon));
    let s = t.stats("q");
    assert_eq!((s.depth, s.in_flight, s.dead_letters), (0, 0, 1));
    assert!(received(t.run(receive("q", 9_999, "t4"))).is_none());
    let dl = list_dead_letters(&*t.kv, "q", None, 10).unwrap();
    assert_eq!(dl.len(), 1);
    assert!(dl[0]
        .dead_reason
        .as_deref()
        .unwrap()
        .contains("max_deliveries"));
    assert_eq!(
        peek_dead_letter(&*t.kv, &t.ix, "q", "a")
            .unwrap()
            .unwrap()
            .1,
        b"x"
    );
    // Redrive: live again with the count reset.
    assert_eq!(
        t.run(Command::QueueRedrive {
            queue: "q".into(),
            id: Some("a".into()),
            now_ms: 10_000
        }),
        QueueResponse::DeadLetters {
            count: 1,
            done: true
        }
    );
    let r = received(t.run(receive("q", 10_000, "t5"))).unwrap();
    assert_eq!(r.meta.delivery_count, 1);
    // Explicit dead-letter, then purge: nothing left but config and stats.
    t.run(settle(
        "q",
        "a",
        "t5",
        10_001,
        Settle::DeadLetter {
            reason: "bad".into(),
        },
    ));
    assert_eq!(t.stats("q").dead_letters, 1);
    t.run(Command::QueuePurgeDead {
        queue: "q".into(),
        id: None,
    });
    let s = t.stats("q");
    assert_eq!((s.depth, s.dead_letters, s.dead_bytes), (0, 0, 0));
    // Only the lease-expiry index key of the renewed lock may remain until swept.
    t.run(Command::QueueSweep { now_ms: 20_000 });
    assert_eq!(t.state_keys(), 2);
}

#[test]
fn expired_over_delivered_lease_goes_to_dead_letters_on_receive() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            max_deliveries: 1,
            ..QueueConfig::default()
        },
    );
    t.run(enqueue(
        "q",
        0,
        vec![msg("a", None, b"x"), msg("b", None, b"y")],
    ));
    let a = received(t.run(receive("q", 0, "t1"))).unwrap();
    assert_eq!(a.meta.id, "a");
    // b is ahead of a (visible since 0); then a's expired lock is found at the head, and a,
    // delivered max times already, goes to the dead letters instead of out again.
    let b = received(t.run(receive("q", 1_000, "t2"))).unwrap();
    assert_eq!(b.meta.id, "b");
    assert!(received(t.run(receive("q", 1_000, "t3"))).is_none());
    let s = t.stats("q");
    assert_eq!((s.depth, s.in_flight, s.dead_letters), (1, 1, 1));
}

#[test]
fn sweep_removes_expired_dedup_and_leases() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            dedup_window_ms: 100,
            ..QueueConfig::default()
        },
    );
    t.run(enqueue("q", 0, vec![msg("a", Some("k"), b"x")]));
    received(t.run(receive("q", 0, "t1"))).unwrap();
    assert!(!sweep_due(&t.ix, 50));
    assert!(sweep_due(&t.ix, 101));
    assert_eq!(
        t.run(Command::QueueSweep { now_ms: 2_000 }),
        QueueResponse::Swept {
            dedup_expired: 1,
            leases_expired: 1
        }
    );
    assert!(!sweep_due(&t.ix, 10_000));
    assert_eq!(t.stats("q").in_flight, 0);
    // The message is still there and visible.
    assert!(received(t.run(receive("q", 2_000, "t2"))).is_some());
}

#[test]
fn ttl_expired_messages_are_dropped_on_receive() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            ttl_ms: Some(100),
            ..QueueConfig::default()
        },
    );
    t.run(enqueue("q", 0, vec![msg("a", None, b"x")]));
    assert!(received(t.run(receive("q", 100, "t"))).is_none());
    let s = t.stats("q");
    assert_eq!((s.depth, s.expired_total), (0, 1));
}

#[test]
fn delete_removes_everything_in_chunks() {
    let mut t = T::new();
    t.put("other", QueueConfig::default());
    t.run(enqueue("other", 0, vec![msg("o", None, b"keep")]));
    let kept = t.state_keys();
    t.put("q", QueueConfig::default());
    let many: Vec<NewMessage> = (0..CHUNK_LIMIT + 1)
        .map(|i| NewMessage {
            ordering_key: Some("K".into()),
            ..msg(&format!("m{i}"), Some(&format!("k{i}")), b"x")
        })
        .collect();
    assert!(matches!(
        t.run(enqueue("q", 0, many)),
        QueueResponse::Enqueued { .. }
    ));
    received(t.run(receive("q", 0, "t"))).unwrap();
    t.run(settle(
        "q",
        "m0",
        "t",
        1,
        Settle::DeadLetter { reason: "x".into() },
    ));
    assert_eq!(
        t.run(Command::QueueDelete { name: "q".into() }),
        QueueResponse::Deleted {
            existed: true,
            done: false
        }
    );
    // The in-memory copy of the configuration (what ingress and apply read) says deleting,
    // exactly as a rebuild from the store would.
    assert!(t.ix.read().queue_entry("q").is_some_and(|e| e.deleting));
    assert_eq!(t.ix.read().configs, load_indexes(&*t.kv).unwrap().configs);
    // While deleting, the queue takes nothing.
    assert_eq!(
        t.run(enqueue("q", 2, vec![msg("late", None, b"x")])),
        QueueResponse::Deleting
    );
    assert_eq!(
        t.run(Command::QueueDelete { name: "q".into() }),
        QueueResponse::Deleted {
            existed: true,
            done: true
        }
    );
    assert!(read_queue(&*t.kv, "q").unwrap().is_none());
    assert!(t.ix.read().queue_entry("q").is_none());
    // Only global expiry index keys remain, and the sweep clears them.
    t.run(Command::QueueSweep {
        now_ms: u64::MAX - 1,
    });
    t.run(Command::QueueSweep {
        now_ms: u64::MAX - 1,
    });
    t.run(Command::QueueSweep {
        now_ms: u64::MAX - 1,
    });
    assert_eq!(t.state_keys(), kept);
}

/// Replaying the same commands gives the same answers and the same state.
#[test]
fn replay_is_deterministic() {
    let run = || {
        let mut t = T::new();
        t.put("q", QueueConfig::default());
        let mut answers = vec![];
        for i in 0..20u64 {
            answers.push(t.run(enqueue(
                "q",
                i,
                vec![msg(&format!("m{i}"), Some(&format!("k{}", i % 7)), b"x")],
            )));
            answers.push(t.run(receive("q", i * 300, &format!("t{i}"))));
        }
        let dump =
            t.kv.range(&keys::state(b""), &keys::state(b"\xff"), 100_000)
                .unwrap();
        (answers, dump)
    };
    assert_eq!(run(), run());
}

#[test]
fn per_key_ordering_holds_back_later_messages_of_a_key() {
    let mut t = T::new();
    let cfg = QueueConfig {
        ordering: Ordering::PerKey,
        ..QueueConfig::default()
    };
    t.put("q", cfg.clone());
    t.run(enqueue(
        "q",
        0,
        vec![
            keyed("a1", Some("A")),
            keyed("a2", Some("A")),
            keyed("b1", Some("B")),
            keyed("n", None),
        ],
    ));
    let ids =
        |t: &mut T, now: u64, tok: &str| received(t.run(receive("q", now, tok))).map(|m| m.meta.id);
    assert_eq!(ids(&mut t, 1, "t1").as_deref(), Some("a1"));
    // a2 waits for a1: the next receives skip it.
    assert_eq!(ids(&mut t, 1, "t2").as_deref(), Some("b1"));
    assert_eq!(ids(&mut t, 1, "t3").as_deref(), Some("n"));
    assert!(
        !has_visible(&*t.kv, &t.ix, "q", &cfg, 1).unwrap(),
        "a blocked message counts as visible"
    );
    assert_eq!(ids(&mut t, 1, "t4"), None);
    // a1 completes: a2 may go.
    t.run(settle("q", "a1", "t1", 2, Settle::Complete));
    assert!(has_visible(&*t.kv, &t.ix, "q", &cfg, 2).unwrap());
    assert_eq!(ids(&mut t, 2, "t5").as_deref(), Some("a2"));
    // Without per-key ordering the same messages go out in sequence order regardless.
    let mut u = T::new();
    u.put("q", QueueConfig::default());
    u.run(enqueue(
        "q",
        0,
        vec![keyed("a1", Some("A")), keyed("a2", Some("A"))],
    ));
    assert_eq!(ids(&mut u, 1, "t1").as_deref(), Some("a1"));
    assert_eq!(ids(&mut u, 1, "t2").as_deref(), Some("a2"));
}

fn push_cfg(max_deliveries: u32) -> QueueConfig {
    QueueConfig {
        delivery: Delivery::Push {
            path: "/http/orders".into(),
        },
        max_deliveries,
        lock_ms: 1_000,
        ..QueueConfig::default()
    }
}

fn lease(seq: u64, token: &str, tenant: &str) -> PushLease {
    PushLease {
        seq,
        lock_token: token.into(),
        tenant: tenant.into(),
        note: None,
    }
}

fn dispatch(now_ms: u64, leases: Vec<PushLease>, defers: Vec<Defer>) -> Command {
    Command::QueueDispatch {
        queue: "p".into(),
        now_ms,
        lock_ms: 1_000,
        leases,
        defers,
    }
}

/// One push outcome recorded at `now_ms`.
fn result(
    now_ms: u64,
    seq: u64,
    token: &str,
    tenant: &str,
    status: Option<u16>,
    verdict: Verdict,
) -> Command {
    Command::QueueRecord {
        queue: "p".into(),
        now_ms,
        results: vec![DeliveryResult {
            seq,
            lock_token: token.into(),
            tenant: tenant.into(),
            status,
            error: None,
            latency_ms: 5,
            verdict,
        }],
    }
}

fn leased(r: QueueResponse) -> Vec<Received> {
    match r {
        QueueResponse::Dispatched { leased, .. } => leased,
        other => panic!("expected Dispatched, got {other:?}"),
    }
}

fn enqueue_p(t: &mut T, n: u64) {
    let msgs = (0..n)
        .map(|i| msg(&format!("m{i}"), None, format!("body {i}").as_bytes()))
        .collect();
    t.run(Command::QueueEnqueue {
        queue: "p".into(),
        now_ms: 100,
        messages: msgs,
    });
}

/// A dispatch leases each visible message once, to the tenant the leader chose, and marks the
/// attempt uncertain until its outcome is recorded; a second lease of the same message in the
/// same or a later command (before the lock expires) is skipped; a 2xx completes it, leaves
/// only its retained trace, and the trace names the tenant, status and latency.
#[test]
fn push_lease_once_complete_and_trace() {
    let mut t = T::new();
    t.put("p", push_cfg(3));
    enqueue_p(&mut t, 2);
    let got = leased(t.run(dispatch(
        200,
        vec![
            lease(1, "t1", "A"),
            lease(1, "t2", "B"),
            lease(2, "t3", "B"),
        ],
        vec![],
    )));
    assert_eq!(got.len(), 2, "seq 1 leased twice");
    assert_eq!(got[0].meta.last_tenant.as_deref(), Some("A"));
    assert!(got[0].meta.uncertain);
    assert!(got[0].body.is_empty(), "the dispatcher reads bodies itself");
    assert_eq!(
        message_body(&*t.kv, &t.ix, "p", 1).unwrap().as_deref(),
        Some(&b"body 0"[..])
    );
    assert!(leased(t.run(dispatch(500, vec![lease(1, "t4", "B")], vec![]))).is_empty());
    assert_eq!(t.stats("p").in_flight, 2);
    let r = t.run(result(300, 1, "t1", "A", Some(200), Verdict::Completed));
    assert!(
        matches!(r, QueueResponse::Recorded { completed: 1, .. }),
        "{r:?}"
    );
    match find_message(&*t.kv, &t.ix, "m0", 10).unwrap() {
        Some(Whereabouts::Finished(tr)) => {
            assert_eq!(tr.outcome, Final::Completed);
            assert_eq!(tr.meta.attempts.len(), 1);
            let a = &tr.meta.attempts[0];
            assert_eq!(
                (a.tenant.as_str(), a.status, a.latency_ms),
                ("A", Some(200), Some(5))
            );
        }
        other => panic!("no finished trace: {other:?}"),
    }
    match find_message(&*t.kv, &t.ix, "m1", 10).unwrap() {
        Some(Whereabouts::Live { lease: Some(l), .. }) => assert_eq!(l.consumer, "B"),
        other => panic!("m1 should be live and leased: {other:?}"),
    }
}

/// Tenant trouble (429/503, connection errors, timeouts) does not count toward
/// max_deliveries; other failures do, and past the limit the message is dead-lettered with the
/// reason, last status and a body excerpt. A retry is not visible before its backoff.
#[test]
fn push_retries_count_only_real_failures() {
    let mut t = T::new();
    t.put("p", push_cfg(2));
    enqueue_p(&mut t, 1);
    let mut now = 200;
    for i in 0..5 {
        let tok = format!("x{i}");
        assert_eq!(
            leased(t.run(dispatch(now, vec![lease(1, &tok, "A")], vec![]))).len(),
            1
        );
        let v = Verdict::Retry {
            visible_at_ms: now + 50,
            counted: false,
            uncertain: false,
        };
        t.run(result(now + 10, 1, &tok, "A", Some(503), v));
        assert!(leased(t.run(dispatch(now + 40, vec![lease(1, "early", "A")], vec![]))).is_empty());
        now += 50;
    }
    let live = match find_message(&*t.kv, &t.ix, "m0", 10).unwrap() {
        Some(Whereabouts::Live { meta, .. }) => meta,
        other => panic!("{other:?}"),
    };
    assert_eq!((live.delivery_count, live.attempts_total), (0, 5));
    assert!(!live.uncertain);
    for i in 0..2 {
        let tok = format!("f{i}");
        assert_eq!(
            leased(t.run(dispatch(now, vec![lease(1, &tok, "A")], vec![]))).len(),
            1
        );
        let v = Verdict::Retry {
            visible_at_ms: now + 10,
            counted: true,
            uncertain: false,
        };
        t.run(result(now + 5, 1, &tok, "A", Some(500), v));
        now += 10;
    }
    let s = t.stats("p");
    assert_eq!((s.depth, s.dead_letters, s.in_flight), (0, 1, 0));
    let dead = list_dead_letters(&*t.kv, "p", None, 10).unwrap();
    let reason = dead[0].dead_reason.clone().unwrap();
    assert!(
        reason.contains("max_deliveries 2") && reason.contains("500"),
        "{reason}"
    );
    assert_eq!(dead[0].dead_excerpt.as_deref(), Some("body 0"));
    assert_eq!(dead[0].last_status, Some(500));
}

/// A lost lease (the lock expired and another attempt took over) cannot retry or count, but a
/// 2xx from the old attempt still completes the message: the tenant did process it. A lease
/// not settled becomes visible again exactly at its deadline, still marked uncertain with its
/// tenant, so the next dispatch can send it back there.
#[test]
fn push_lost_leases_and_expiry() {
    let mut t = T::new();
    t.put("p", push_cfg(5));
    enqueue_p(&mut t, 1);
    assert_eq!(
        leased(t.run(dispatch(200, vec![lease(1, "a", "A")], vec![]))).len(),
        1
    );
    assert!(
        visible_candidates(&*t.kv, &t.ix, "p", &push_cfg(5), 1_199, 10, 0, |_| false)
            .unwrap()
            .is_empty()
    );
    let c = visible_candidates(&*t.kv, &t.ix, "p", &push_cfg(5), 1_200, 10, 0, |_| false).unwrap();
    assert_eq!(c.len(), 1);
    assert!(c[0].uncertain && c[0].last_tenant.as_deref() == Some("A"));
    assert_eq!(
        leased(t.run(dispatch(1_200, vec![lease(1, "b", "A")], vec![]))).len(),
        1
    );
    let retry = Verdict::Retry {
        visible_at_ms: 0,
        counted: true,
        uncertain: false,
    };
    let r = t.run(result(1_300, 1, "a", "A", Some(500), retry));
    assert!(
        matches!(r, QueueResponse::Recorded { lost: 1, .. }),
        "{r:?}"
    );
    let r = t.run(result(1_301, 1, "a", "A", Some(200), Verdict::Completed));
    assert!(
        matches!(r, QueueResponse::Recorded { completed: 1, .. }),
        "{r:?}"
    );
    let s = t.stats("p");
    assert_eq!((s.depth, s.in_flight, s.completed_total), (0, 0, 1));
    let r = t.run(result(1_302, 1, "b", "A", Some(200), Verdict::Completed));
    assert!(
        matches!(r, QueueResponse::Recorded { lost: 1, .. }),
        "{r:?}"
    );
}

/// A deferral holds a message back until its time; traces go after their retention, and the
/// sweep keeps their count right.
#[test]
fn push_defer_and_trace_retention() {
    let mut t = T::new();
    t.put("p", push_cfg(5));
    enqueue_p(&mut t, 1);
    let r = t.run(dispatch(
        200,
        vec![],
        vec![Defer {
            seq: 1,
            until_ms: 900,
        }],
    ));
    assert!(matches!(r, QueueResponse::Dispatched { deferred: 1, .. }));
    assert!(leased(t.run(dispatch(899, vec![lease(1, "a", "A")], vec![]))).is_empty());
    assert_eq!(
        leased(t.run(dispatch(900, vec![lease(1, "a", "A")], vec![]))).len(),
        1
    );
    t.run(result(950, 1, "a", "A", Some(201), Verdict::Completed));
    assert!(sweep_due(&t.ix, 951 + TRACE_RETENTION_MS));
    t.run(Command::QueueSweep {
        now_ms: 951 + TRACE_RETENTION_MS,
    });
    assert!(find_message(&*t.kv, &t.ix, "m0", 10).unwrap().is_none());
    assert_eq!(t.state_keys(), 2, "config and stats remain");
    assert!(!sweep_due(&t.ix, 951 + TRACE_RETENTION_MS));
}

/// Enqueues `n` messages to `p`, leases them all in one dispatch and completes them all in
/// one record command at 300 ms.
fn complete_in_one_command(t: &mut T, n: u64) -> QueueResponse {
    enqueue_p(t, n);
    let leases = (1..=n).map(|s| lease(s, &format!("t{s}"), "A")).collect();
    assert_eq!(
        leased(t.run(dispatch(200, leases, vec![]))).len(),
        n as usize
    );
    let results = (1..=n)
        .map(|s| DeliveryResult {
            seq: s,
            lock_token: format!("t{s}"),
            tenant: "A".into(),
            status: Some(200),
            error: None,
            latency_ms: 5,
            verdict: Verdict::Completed,
        })
        .collect();
    t.run(Command::QueueRecord {
        queue: "p".into(),
        now_ms: 300,
        results,
    })
}

/// The messages one command finishes share one trace record (`qf/<index><part>`): each trace is
/// found by its id, the indexes match a rebuild, and the sweep removes the record, and every
/// trace in it, once their retention has passed.
#[test]
fn traces_of_one_command_share_one_record() {
    let mut t = T::new();
    t.put("p", push_cfg(5));
    let r = complete_in_one_command(&mut t, 3);
    assert!(
        matches!(r, QueueResponse::Recorded { completed: 3, .. }),
        "{r:?}"
    );
    assert_eq!(t.state_keys(), 3, "config, stats and one trace record");
    for id in ["m0", "m1", "m2"] {
        match find_message(&*t.kv, &t.ix, id, 10).unwrap() {
            Some(Whereabouts::Finished(tr)) => assert_eq!(tr.meta.id, id),
            other => panic!("{id}: no finished trace: {other:?}"),
        }
    }
    same_traces_as_a_rebuild(&t);
    assert!(!sweep_due(&t.ix, 300 + TRACE_RETENTION_MS));
    t.run(Command::QueueSweep {
        now_ms: 301 + TRACE_RETENTION_MS,
    });
    assert_eq!(t.state_keys(), 2, "config and stats remain");
    assert!(find_message(&*t.kv, &t.ix, "m1", 10).unwrap().is_none());
    same_traces_as_a_rebuild(&t);
}

/// A command that finishes more than `MAX_TRACES_PER_RECORD` messages writes its traces in
/// several parts, each found by id and swept.
#[test]
fn many_traces_of_one_command_are_split_into_parts() {
    let mut t = T::new();
    t.put("p", push_cfg(5));
    let n = MAX_TRACES_PER_RECORD as u64 + 6;
    complete_in_one_command(&mut t, n);
    assert_eq!(t.state_keys(), 4, "config, stats and two trace records");
    for id in ["m0", &format!("m{}", n - 1)] {
        assert!(
            matches!(
                find_message(&*t.kv, &t.ix, id, 10).unwrap(),
                Some(Whereabouts::Finished(_))
            ),
            "{id}"
        );
    }
    same_traces_as_a_rebuild(&t);
    t.run(Command::QueueSweep {
        now_ms: 301 + TRACE_RETENTION_MS,
    });
    assert_eq!(t.state_keys(), 2, "config and stats remain");
}

fn same_traces_as_a_rebuild(t: &T) {
    let rebuilt = load_indexes(&*t.kv).unwrap();
    let live = t.ix.read();
    assert_eq!(
        (&live.traced, &live.trace_expiry),
        (&rebuilt.traced, &rebuilt.trace_expiry)
    );
}

/// A trace stored alone at `qh/<id>` (the layout before trace records) is still found after
/// the node reopens, keeps a second trace of the same id from being written, and is swept
/// after its retention like a record.
#[test]
fn single_traces_of_the_old_layout_are_read_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
    let old = FinishedTrace {
        queue: "p".into(),
        meta: MessageMeta {
            id: "old".into(),
            ..MessageMeta::default()
        },
        outcome: Final::Completed,
        finished_ms: 1_000,
    };
    let mut b = WriteBatch::default();
    b.put(trace_key("old"), encode(&old));
    kv.write(b).unwrap();
    let sm = crate::state::CorralState::new(kv.clone()).unwrap();
    let ix = sm.queue_index();
    match find_message(&*kv, &ix, "old", 10).unwrap() {
        Some(Whereabouts::Finished(tr)) => assert_eq!(tr, old),
        other => panic!("old trace not found: {other:?}"),
    }
    let mut batch = WriteBatch::default();
    {
        let mut w = ix.write();
        let mut a = Apply::new(&*kv, &mut batch, &mut w, 7);
        a.keep_trace("p", old.meta.clone(), Final::Completed, 2_000)
            .unwrap();
        a.finish();
    }
    assert!(batch.is_empty(), "a retained id gets no second trace");
    {
        let mut w = ix.write();
        let mut a = Apply::new(&*kv, &mut batch, &mut w, 8);
        a.sweep_traces(1_000 + TRACE_RETENTION_MS);
    }
    kv.write(batch).unwrap();
    assert!(kv.get(&trace_key("old")).unwrap().is_none());
    assert!(ix.read().traced.is_empty());
    assert_eq!(*ix.read(), load_indexes(&*kv).unwrap());
}

/// A batch receive leases distinct messages in queue order in one command, holds per-key
/// order within the batch, and stops at the end of what is visible; a batch settle judges
/// each item alone (a wrong token loses only its own item) and leaves nothing behind.
#[test]
fn batch_receive_and_settle() {
    let mut t = T::new();
    t.put(
        "q",
        QueueConfig {
            ordering: Ordering::PerKey,
            ..QueueConfig::default()
        },
    );
    t.run(enqueue(
        "q",
        0,
        vec![
            keyed("a1", Some("A")),
            keyed("a2", Some("A")),
            keyed("b1", None),
            keyed("c1", None),
        ],
    ));
    let many = |n: usize| Command::QueueReceiveMany {
        queue: "q".into(),
        now_ms: 1,
        lock_ms: 1_000,
        lock_tokens: (0..n).map(|i| format!("t{i}")).collect(),
        consumer: "c".into(),
    };
    let got = match t.run(many(8)) {
        QueueResponse::ReceivedMany { messages } => messages,
        other => panic!("{other:?}"),
    };
    let ids: Vec<&str> = got.iter().map(|m| m.meta.id.as_str()).collect();
    assert_eq!(
        ids,
        ["a1", "b1", "c1"],
        "a2 waits for a1 even within one batch"
    );
    assert_eq!(got[1].lock_token, "t1");
    assert_eq!(t.stats("q").in_flight, 3);
    assert_eq!(
        t.run(many(2)),
        QueueResponse::ReceivedMany { messages: vec![] }
    );
    let r = t.run(Command::QueueSettleMany {
        queue: "q".into(),
        now_ms: 2,
        items: vec![
            ("a1".into(), "t0".into()),
            ("b1".into(), "wrong".into()),
            ("c1".into(), "t2".into()),
            ("zz".into(), "t9".into()),
        ],
        action: Settle::Complete,
    });
    let settled = QueueResponse::Settled {
        locked_until_ms: None,
    };
    assert_eq!(
        r,
        QueueResponse::SettledMany {
            results: vec![
                settled.clone(),
                QueueResponse::LockLost,
                settled,
                QueueResponse::MessageNotFound
            ]
        }
    );
    let s = t.stats("q");
    assert_eq!((s.depth, s.in_flight, s.completed_total), (2, 1, 2));
    // a2 is free now that a1 is done.
    match t.run(many(4)) {
        QueueResponse::ReceivedMany { messages } => {
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0].meta.id, "a2");
        }
        other => panic!("{other:?}"),
    }
}

/// A small deterministic generator for the randomised test (its seed is printed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The in-memory indexes are a pure function of the stored records: after any mix of
/// enqueues (dedup keys, ordering keys, small and large bodies), batch receives, settles of
/// every kind, sweeps, redrives, purges and TTL expiry, rebuilding them from the store gives
/// exactly what apply maintained, and the counters agree with the records (depth = live
/// records, in flight = records holding a lease, dead letters = dead records).
#[test]
fn indexes_rebuilt_from_the_store_match_the_live_ones() {
    let seed = std::env::var("CORRAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(7)
        });
    println!("seed {seed} (CORRAL_TEST_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let mut t = T::new();
    t.put(
        "r",
        QueueConfig {
            max_deliveries: 3,
            dedup_window_ms: 500,
            ordering: Ordering::PerKey,
            ttl_ms: Some(4_000),
            ..QueueConfig::default()
        },
    );
    let (mut now, mut next_id) = (0u64, 0u64);
    let mut held: Vec<(String, String)> = Vec::new();
    for step in 0..600 {
        now += rng.below(120);
        let cmd = match rng.below(7) {
            0 | 1 => {
                let msgs = (0..1 + rng.below(3))
                    .map(|_| {
                        next_id += 1;
                        let body = vec![b'b'; if rng.below(5) == 0 { 9_000 } else { 20 }];
                        let dk = format!("k{}", rng.below(40));
                        let mut m = msg(&format!("m{next_id}"), Some(&dk), &body);
                        m.ordering_key = ["A", "B", ""][rng.below(3) as usize].to_string().into();
                        m.ordering_key.take_if(|k| k.is_empty());
                        m
                    })
                    .collect();
                enqueue("r", now, msgs)
            }
            2 => Command::QueueReceiveMany {
                queue: "r".into(),
                now_ms: now,
                lock_ms: 1_000 + rng.below(2_000),
                lock_tokens: (0..1 + rng.below(3))
                    .map(|i| format!("t{step}.{i}"))
                    .collect(),
                consumer: "c".into(),
            },
            3 | 4 if !held.is_empty() => {
                let (id, token) = held.swap_remove(rng.below(held.len() as u64) as usize);
                let action = match rng.below(4) {
                    0 => Settle::Abandon,
                    1 => Settle::DeadLetter { reason: "r".into() },
                    2 => Settle::Renew { lock_ms: 1_500 },
                    _ => Settle::Complete,
                };
                settle("r", &id, &token, now, action)
            }
            5 => Command::QueueSweep { now_ms: now },
            _ => match rng.below(3) {
                0 => Command::QueueRedrive {
                    queue: "r".into(),
                    id: None,
                    now_ms: now,
                },
                1 => Command::QueuePurgeDead {
                    queue: "r".into(),
                    id: Some(format!("m{}", 1 + rng.below(next_id.max(1)))),
                },
                _ => Command::QueueSweep { now_ms: now },
            },
        };
        match t.run(cmd) {
            QueueResponse::ReceivedMany { messages } => {
                held.extend(messages.into_iter().map(|m| (m.meta.id, m.lock_token)))
            }
            QueueResponse::Settled {
                locked_until_ms: Some(_),
            } => {}
            _ => {}
        }
        if step % 30 == 29 {
            assert_eq!(
                *t.ix.read(),
                load_indexes(&*t.kv).unwrap(),
                "seed {seed}, step {step}: indexes differ from a rebuild"
            );
            let live = live_records(&t, "r");
            let s = t.stats("r");
            assert_eq!(s.depth, live.len() as u64, "seed {seed}: depth");
            assert_eq!(
                s.in_flight,
                live.iter().filter(|r| r.lease.is_some()).count() as u64,
                "seed {seed}: in flight"
            );
            let dead = t.kv.range(
                &keys::state(b"qx/r\0"),
                &prefix_end(&keys::state(b"qx/r\0")),
                1 << 20,
            );
            assert_eq!(
                s.dead_letters,
                dead.unwrap().len() as u64,
                "seed {seed}: dead"
            );
        }
    }
    // The run went through the interesting paths, not only enqueues.
    let s = t.stats("r");
    println!("{s:?}");
    assert!(s.completed_total > 0 && s.dead_lettered_total > 0 && s.duplicates_total > 0);
}

/// The live messages of queue `q` as stored, read without the indexes: their own records,
/// and the group copies of group members that have none and have not left their group.
fn live_records(t: &T, q: &str) -> Vec<Stored> {
    let all = |kind: &str| {
        let from = qk(kind, q, &[]);
        t.kv.range(&from, &prefix_end(&from), 1 << 20).unwrap()
    };
    let seq_of = |k: &[u8]| be_u64(&k[k.len() - 8..]).unwrap();
    let mut own = HashSet::new();
    let mut live = Vec::new();
    for (k, v) in all("n") {
        own.insert(seq_of(&k));
        live.push(decode_record(&v).unwrap());
    }
    let left: HashMap<u64, Vec<u8>> = all("u").into_iter().map(|(k, v)| (seq_of(&k), v)).collect();
    for (k, v) in all("g") {
        let first = seq_of(&k);
        let bits = left.get(&first).cloned().unwrap_or_default();
        for (i, (_, record)) in GroupValue::decode(&v).unwrap().into_iter().enumerate() {
            let gone = bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
            if !own.contains(&(first + i as u64)) && !gone {
                live.push(Stored::decode(record).unwrap());
            }
        }
    }
    live
}

/// A data dir written by the first layout (metadata at `qm`, lease at `ql`, one key per
/// index) is upgraded in place when the state machine opens: one record per message, the
/// old keys gone, and the message still leased, settled and traced as before.
#[test]
fn first_layout_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let kv: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
    {
        let mut b = WriteBatch::default();
        let entry = QueueEntry {
            config: QueueConfig::default(),
            revision: 1,
            created_index: 1,
            updated_ms: 0,
            deleting: false,
        };
        b.put(k("c", "q"), encode(&entry));
        let stats = QueueStats {
            next_seq: 2,
            depth: 2,
            bytes: 4,
            in_flight: 1,
            enqueued_total: 2,
            ..QueueStats::default()
        };
        b.put(k("s", "q"), encode(&stats));
        for (seq, id, leased) in [(1u64, "a", true), (2, "b", false)] {
            let meta = MessageMeta {
                id: id.into(),
                sequence: seq,
                enqueued_ms: 0,
                expires_at_ms: None,
                visible_at_ms: if leased { 60_000 } else { 0 },
                delivery_count: u32::from(leased),
                dedup_key: None,
                ordering_key: None,
                content_type: None,
                headers: vec![],
                body_len: 2,
                dead_reason: None,
                dead_excerpt: None,
                attempts: vec![],
                attempts_total: u32::from(leased),
                last_tenant: None,
                uncertain: leased,
                last_status: None,
            };
            b.put(seq_key("m", "q", seq), encode(&meta));
            b.put(seq_key("b", "q", seq), id.repeat(2).into_bytes());
            b.put(qk("i", "q", id.as_bytes()), seq.to_be_bytes().to_vec());
            let mut ready = meta.visible_at_ms.to_be_bytes().to_vec();
            ready.extend_from_slice(&seq.to_be_bytes());
            b.put(qk("r", "q", &ready), vec![]);
            if leased {
                let lease = Lease {
                    lock_token: "old".into(),
                    deadline_ms: 60_000,
                    consumer: "c".into(),
                };
                b.put(seq_key("l", "q", seq), encode(&lease));
            }
        }
        b.put(keys::state(b"qz"), 0u64.to_be_bytes().to_vec());
        kv.write(b).unwrap();
    }
    let sm = crate::state::CorralState::new(kv.clone()).unwrap();
    let ix = sm.queue_index();
    for old in [&b"qm/"[..], b"qr/", b"ql/", b"qi/", b"qb/", b"qz"] {
        let from = keys::state(old);
        assert!(
            kv.range(&from, &prefix_end(&from), 10).unwrap().is_empty(),
            "{} keys remain",
            String::from_utf8_lossy(old)
        );
    }
    assert_eq!(*ix.read(), load_indexes(&*kv).unwrap());
    let mut batch = WriteBatch::default();
    let mut w = ix.write();
    let mut a = Apply::new(&*kv, &mut batch, &mut w, 1);
    // The held lock still holds; the other message is at the head, body intact.
    let got = match a
        .receive("q", 1_000, 30_000, "t".into(), "c".into())
        .unwrap()
    {
        QueueResponse::Received { message: Some(m) } => m,
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(
        (got.meta.id.as_str(), got.body.as_slice()),
        ("b", &b"bb"[..])
    );
    assert_eq!(
        a.settle("q", "a", "old", 1_000, Settle::Complete).unwrap(),
        QueueResponse::Settled {
            locked_until_ms: None
        }
    );
}

/// The state keys of queue `q` of one kind (`b`: bodies and blobs), for layout checks.
fn kind_keys(t: &T, kind: &str, q: &str) -> Vec<Vec<u8>> {
    let from = qk(kind, q, &[]);
    t.kv.range(&from, &prefix_end(&from), 1_000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The bodies of one command's new messages share one blob key: each message reads its own
/// body out of it (checked against its CRC), a dead letter takes a copy to its own key, and
/// the last message to leave deletes the blob. The indexes' reader counts match a rebuild at
/// every step. A lone message keeps its body at its own key, as before.
#[test]
fn bodies_of_one_command_share_one_blob_until_the_last_leaves() {
    let mut t = T::new();
    t.put("q", QueueConfig::default());
    let rebuilt = |t: &T| assert_eq!(*t.ix.read(), load_indexes(&*t.kv).unwrap());
    let bodies: [&[u8]; 3] = [b"first", b"", b"third body"];
    let ids = ["a", "b", "c"];
    let msgs = ids
        .iter()
        .zip(bodies)
        .map(|(id, b)| msg(id, None, b))
        .collect();
    t.run(enqueue("q", 10, msgs));
    assert_eq!(
        kind_keys(&t, "b", "q"),
        vec![blob_key("q", 1)],
        "one blob, no body keys"
    );
    rebuilt(&t);
    let mut got = Vec::new();
    for token in ["t1", "t2", "t3"] {
        got.push(received(t.run(receive("q", 20, token))).expect("a message"));
    }
    let mut seen: Vec<(&str, &[u8])> = got.iter().map(|r| (&r.meta.id[..], &r.body[..])).collect();
    seen.sort();
    assert_eq!(seen, ids.iter().copied().zip(bodies).collect::<Vec<_>>());
    let token = |id: &str| {
        got.iter()
            .find(|r| r.meta.id == id)
            .unwrap()
            .lock_token
            .clone()
    };
    t.run(settle("q", "a", &token("a"), 30, Settle::Complete));
    t.run(settle(
        "q",
        "c",
        &token("c"),
        30,
        Settle::DeadLetter {
            reason: "no".into(),
        },
    ));
    rebuilt(&t);
    assert_eq!(
        kind_keys(&t, "b", "q"),
        vec![blob_key("q", 1), seq_key("b", "q", 3)],
        "the dead letter's copy, and the blob its last live message still reads"
    );
    let (meta, body) = peek_dead_letter(&*t.kv, &t.ix, "q", "c").unwrap().unwrap();
    assert_eq!(
        (meta.id.as_str(), body.as_slice()),
        ("c", &b"third body"[..])
    );
    t.run(settle("q", "b", &token("b"), 30, Settle::Complete));
    assert_eq!(
        kind_keys(&t, "b", "q"),
        vec![seq_key("b", "q", 3)],
        "the blob went with b"
    );
    rebuilt(&t);
    // A lone message: its own key, no blob.
    t.run(enqueue("q", 40, vec![msg("d", None, b"alone")]));
    assert!(kind_keys(&t, "b", "q").contains(&seq_key("b", "q", 4)));
    assert_eq!(
        received(t.run(receive("q", 50, "t4"))).unwrap().body,
        b"alone"
    );
}

/// The records of one command's new messages are one group key, not a key each: a message
/// gets a record of its own only once it changes, a finished one is marked as gone in the
/// group's bits (its own record deleted), and the last one out deletes the group, its blob and
/// the bits. A dead letter redriven while its group lives keeps its own record past the
/// group's end. The indexes match a rebuild from the store at every step, and nothing is left
/// behind.
#[test]
fn one_command_writes_one_group_until_the_last_leaves() {
    let mut t = T::new();
    t.put("q", QueueConfig::default());
    let rebuilt = |t: &T| assert_eq!(*t.ix.read(), load_indexes(&*t.kv).unwrap());
    let empty = t.state_keys();
    let msgs = ["a", "b", "c"]
        .iter()
        .map(|id| msg(id, None, id.as_bytes()))
        .collect();
    t.run(enqueue("q", 10, msgs));
    assert_eq!(kind_keys(&t, "g", "q"), vec![group_key("q", 1)]);
    assert!(
        kind_keys(&t, "n", "q").is_empty(),
        "no record of its own yet"
    );
    assert_eq!(live_records(&t, "q").len(), 3);
    rebuilt(&t);
    let a = received(t.run(receive("q", 20, "ta"))).unwrap();
    assert_eq!((a.meta.id.as_str(), a.body.as_slice()), ("a", &b"a"[..]));
    assert_eq!(
        kind_keys(&t, "n", "q"),
        vec![seq_key("n", "q", 1)],
        "leased: its own"
    );
    rebuilt(&t);
    t.run(settle("q", "a", "ta", 30, Settle::Complete));
    assert!(kind_keys(&t, "n", "q").is_empty(), "its own record went");
    let bits = t.kv.get(&left_key("q", 1)).unwrap();
    assert_eq!(bits.as_deref(), Some(&[0b001][..]), "a left the group");
    assert_eq!(live_records(&t, "q").len(), 2);
    assert!(!is_live(&*t.kv, &WriteBatch::default(), &t.ix.read(), "q", "a").unwrap());
    rebuilt(&t);
    // b goes to the dead letters and comes back; c completes; the group is gone, b is not.
    let b = received(t.run(receive("q", 40, "tb"))).unwrap();
    let dead = Settle::DeadLetter {
        reason: "no".into(),
    };
    t.run(settle("q", "b", &b.lock_token, 41, dead));
    rebuilt(&t);
    t.run(Command::QueueRedrive {
        queue: "q".into(),
        id: Some("b".into()),
        now_ms: 42,
    });
    rebuilt(&t);
    let c = received(t.run(receive("q", 50, "tc"))).unwrap();
    assert_eq!(c.meta.id, "c");
    t.run(settle("q", "c", "tc", 51, Settle::Complete));
    assert!(
        kind_keys(&t, "g", "q").is_empty(),
        "the group went with its last message"
    );
    assert_eq!(
        kind_keys(&t, "n", "q"),
        vec![seq_key("n", "q", 2)],
        "b kept its own record"
    );
    assert!(kind_keys(&t, "u", "q").is_empty(), "the bits went too");
    rebuilt(&t);
    let b = received(t.run(receive("q", 60, "tb2"))).unwrap();
    assert_eq!((b.meta.id.as_str(), b.body.as_slice()), ("b", &b"b"[..]));
    t.run(settle("q", "b", "tb2", 61, Settle::Complete));
    assert!(live_records(&t, "q").is_empty());
    for kind in ["n", "g", "u", "b", "x", "d"] {
        assert!(
            kind_keys(&t, kind, "q").is_empty(),
            "q{kind} keys left behind"
        );
    }
    assert_eq!(
        t.state_keys(),
        empty + 4,
        "new: the queue's stats and three traces"
    );
}

/// Queue `q` holding messages `a` and `b` of one command (one group, one blob).
fn one_command_of_two(a: &[u8], b: &[u8]) -> T {
    let mut t = T::new();
    t.put("q", QueueConfig::default());
    t.run(enqueue("q", 10, vec![msg("a", None, a), msg("b", None, b)]));
    t
}

/// Message 1 of [`one_command_of_two`] still reads; message 2 is reported as corrupt.
fn first_reads_second_is_corrupt(t: &T) {
    assert!(message_body(&*t.kv, &t.ix, "q", 1).unwrap().is_some());
    assert!(matches!(
        message_body(&*t.kv, &t.ix, "q", 2),
        Err(StoreError::Corrupt(_))
    ));
}

/// A group record whose bytes no longer match its CRC is reported as corrupt, not used.
#[test]
fn a_group_record_failing_its_crc_is_an_error() {
    let t = one_command_of_two(b"1", b"2");
    let key = group_key("q", 1);
    let mut v = t.kv.get(&key).unwrap().unwrap();
    let last = v.len() - 1;
    v[last] ^= 0xff;
    let mut b = WriteBatch::default();
    b.put(key, v);
    t.kv.write(b).unwrap();
    first_reads_second_is_corrupt(&t);
}

/// A blob whose bytes no longer match a body's CRC is reported as corrupt, not delivered.
#[test]
fn a_body_failing_its_crc_is_an_error() {
    let t = one_command_of_two(b"one", b"two");
    let mut b = WriteBatch::default();
    b.put(blob_key("q", 1), b"oneTWO".to_vec());
    t.kv.write(b).unwrap();
    first_reads_second_is_corrupt(&t);
}

/// Records written before blobs (no `blob` field) still decode, and their bodies are read
/// from their own keys after the node reopens.
#[test]
fn records_from_before_blobs_are_read() {
    #[derive(Serialize)]
    struct Old {
        meta: MessageMeta,
        lease: Option<Lease>,
        #[serde(with = "serde_bytes")]
        body: Option<Vec<u8>>,
    }
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
    {
        let mut t = T::new();
        t.put("q", QueueConfig::default());
        t.run(enqueue("q", 10, vec![msg("a", None, b"old body")]));
        // Copy the state over, with the record in the old layout.
        let mut b = WriteBatch::default();
        for (k, v) in
            t.kv.range(&keys::state(b""), &keys::state(b"\xff"), 1_000)
                .unwrap()
        {
            if k == seq_key("n", "q", 1) {
                let s = Stored::decode(&v).unwrap();
                let old = Old {
                    meta: s.meta,
                    lease: s.lease,
                    body: s.body,
                };
                b.put(k, encode(&old));
            } else {
                b.put(k, v);
            }
        }
        kv.write(b).unwrap();
    }
    let old = kv.get(&seq_key("n", "q", 1)).unwrap().unwrap();
    assert!(decode::<Stored>(&old).is_err(), "the old layout is shorter");
    assert_eq!(Stored::decode(&old).unwrap().blob, None);
    let sm = crate::state::CorralState::new(kv.clone()).unwrap();
    assert_eq!(
        message_body(&*kv, &sm.queue_index(), "q", 1)
            .unwrap()
            .unwrap(),
        b"old body"
    );
    assert_eq!(*sm.queue_index().read(), load_indexes(&*kv).unwrap());
}
