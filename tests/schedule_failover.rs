//! Replicated timers on real processes: one-second schedules keep firing through leader kills
//! (kill -9) exactly as their missed-occurrence policy says; skip-overlap, pause, resume and
//! trigger-now behave as documented (docs/schedules.md).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{poll, Cluster};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn put(c: &Cluster, id: u64, path: &str, body: &Value) -> Value {
    let (code, v) = c.admin_put(id, path, body);
    assert!((200..300).contains(&code), "PUT {path}: {code}");
    v
}

fn every_second(queue: &str, missed: &str, overlap: &str) -> Value {
    json!({
        "schedule": {"every": {"n": 1, "unit": "seconds"}},
        "target": {"queue": {"name": queue, "body": "tick", "headers": {"x-test": queue}}},
        "missed": missed,
        "overlap": overlap,
    })
}

fn enqueued_total(c: &Cluster, id: u64, queue: &str) -> Option<u64> {
    c.get_json(id, &format!("/admin/queues/{queue}"))?["stats"]["enqueued_total"].as_u64()
}

/// Receives and completes every message of `queue` on node `id`: (occurrence_ms, skipped,
/// enqueued_ms) per message.
fn drain(c: &Cluster, id: u64, queue: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    loop {
        let r = c
            .http
            .post(c.ingress_url(id, &format!("/queues/{queue}/messages/head")))
            .json(&json!({"wait_ms": 0}))
            .send()
            .unwrap();
        if r.status() == 204 {
            return out;
        }
        assert_eq!(r.status(), 200);
        let m: Value = r.json().unwrap();
        let mid = m["id"].as_str().unwrap().to_string();
        assert!(ids.insert(mid.clone()), "message {mid} delivered twice");
        let h = &m["headers"];
        let num = |k: &str| h[k].as_str().unwrap().parse::<u64>().unwrap();
        out.push((
            num("corral-occurrence-ms"),
            num("corral-skipped"),
            m["enqueued_ms"].as_u64().unwrap(),
        ));
        let done = c
            .http
            .post(c.ingress_url(id, &format!("/queues/{queue}/messages/{mid}:complete")))
            .json(&json!({"lock_token": m["lock_token"]}))
            .send()
            .unwrap();
        assert_eq!(done.status(), 204);
    }
}

/// Restarts the killed nodes and waits until all three agree on a leader.
fn restart_and_follow(c: &mut Cluster, killed: &[u64]) {
    for id in killed {
        c.start(*id);
    }
    poll(
        Duration::from_secs(30),
        "all three following one leader",
        // The restarted node may win the election itself (it can be back before the others'
        // election timeout); either way the old leadership ended with the kill.
        || c.agreed_leader(&[1, 2, 3]),
    );
}

/// Three one-second schedules (missed: all / once / skip) into three pull queues, through
/// six leader kills (kill -9) over about a minute, three of them taking a follower down
/// too so that no leader exists for 3.5 s. Afterwards, from the queues:
/// - all: every occurrence from the first to the last exactly once, no gap;
/// - once: no occurrence twice, and each message's skipped count covers every gap;
/// - skip: no occurrence twice, and every fired one was on time;
///
/// and for all three, fired + skipped accounts for every occurrence up to the cursor.
#[test]
fn one_second_schedules_fire_exactly_once_through_leader_kills() {
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    let mut leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let policies = [("all", "t-all"), ("once", "t-once"), ("skip", "t-skip")];
    for (missed, q) in policies {
        put(&c, leader, &format!("/admin/queues/{q}"), &json!({}));
        // overlap allow: the messages stay in the queue (live) until the end.
        put(
            &c,
            leader,
            &format!("/admin/schedules/{q}"),
            &every_second(q, missed, "allow"),
        );
    }
    for round in 0..6 {
        let before = enqueued_total(&c, leader, "t-all").unwrap_or(0);
        poll(Duration::from_secs(30), "schedules firing", || {
            (enqueued_total(&c, leader, "t-all")? >= before + 6).then_some(())
        });
        if round % 2 == 1 {
            // A plain leader kill: a new leader takes over within about a second.
            eprintln!("round {round}: kill -9 leader {leader}");
            c.kill9(leader);
            restart_and_follow(&mut c, &[leader]);
        } else {
            // Leader and a follower: no quorum, so no leader at all for about 3.5 s; the
            // occurrences of that stretch are "missed" and handled per policy.
            let other = (1..=3).find(|i| *i != leader).unwrap();
            eprintln!("round {round}: kill -9 leader {leader} and node {other}");
            c.kill9(leader);
            c.kill9(other);
            let down_at = now_ms();
            poll(Duration::from_secs(10), "an outage of 3.5 s", || {
                (now_ms() > down_at + 3_500).then_some(())
            });
            restart_and_follow(&mut c, &[leader, other]);
        }
        leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    }
    let before = enqueued_total(&c, leader, "t-all").unwrap_or(0);
    poll(
        Duration::from_secs(30),
        "firing after the last kill",
        || (enqueued_total(&c, leader, "t-all")? >= before + 3).then_some(()),
    );
    for (_, q) in policies {
        let (s, _) = c.admin_post(
            leader,
            &format!("/admin/schedules/{q}/pause"),
            &json!({"note": "check"}),
        );
        assert_eq!(s, 200);
    }
    for (missed, q) in policies {
        let got = drain(&c, leader, q);
        let s = c
            .get_json(leader, &format!("/admin/schedules/{q}"))
            .unwrap();
        let occ: Vec<u64> = got.iter().map(|m| m.0).collect();
        let unique: BTreeSet<u64> = occ.iter().copied().collect();
        assert_eq!(
            unique.len(),
            occ.len(),
            "{missed}: an occurrence fired twice"
        );
        assert!(occ.iter().all(|t| t % 1000 == 0));
        let first_due = (s["updated_ms"].as_u64().unwrap() - 1) / 1000 * 1000 + 1000;
        let cursor = s["cursor_ms"].as_u64().unwrap();
        let accounted = s["fired_total"].as_u64().unwrap() + s["skipped_total"].as_u64().unwrap();
        assert_eq!(
            accounted,
            (cursor - first_due) / 1000 + 1,
            "{missed}: fired + skipped must cover every occurrence up to the cursor: {s}"
        );
        assert_eq!(
            s["fired_total"].as_u64().unwrap(),
            occ.len() as u64,
            "{missed}"
        );
        let (lo, hi) = (*unique.first().unwrap(), *unique.last().unwrap());
        eprintln!(
            "{missed}: {} fired of {} occurrences",
            occ.len(),
            (cursor - first_due) / 1000 + 1
        );
        let late = got.iter().filter(|(o, _, enq)| enq - o > 1_500).count();
        match missed {
            "all" => {
                assert!(
                    late >= 2,
                    "all: the outages' occurrences were caught up late"
                );
                assert_eq!(lo, first_due, "all: the first occurrence fired");
                assert_eq!(hi, cursor);
                assert_eq!(unique.len() as u64, (hi - lo) / 1000 + 1, "all: a gap");
            }
            "once" => {
                let covered: u64 = got.iter().map(|m| 1 + m.1).sum();
                assert_eq!(
                    covered,
                    (hi - first_due) / 1000 + 1,
                    "once: skips cover the gaps"
                );
                assert!(covered > occ.len() as u64, "once: the outages skipped some");
            }
            _ => {
                assert!(
                    accounted > occ.len() as u64,
                    "skip: the outages skipped some"
                );
                for (o, _, enq) in &got {
                    assert!(
                        enq.saturating_sub(*o) <= 2_000 + 500,
                        "skip: {o} fired late at {enq}"
                    );
                }
            }
        }
    }
}

/// One node: skip-overlap holds while a pulled message is not completed; pause fires nothing
/// and resume starts from now; trigger now fires at once; preview and bad input answer as
/// documented.
#[test]
fn overlap_pause_resume_trigger_and_preview() {
    let mut c = Cluster::new(1, |t| t);
    c.start(1);
    c.wait_leader(&[1], Duration::from_secs(20));
    put(&c, 1, "/admin/queues/slow", &json!({}));
    put(
        &c,
        1,
        "/admin/schedules/slow",
        &every_second("slow", "once", "skip"),
    );
    let get = |c: &Cluster| c.get_json(1, "/admin/schedules/slow").unwrap();
    // The first message arrives and is held (received, not completed): in flight.
    let first = poll(Duration::from_secs(10), "first firing", || {
        let r = c
            .http
            .post(c.ingress_url(1, "/queues/slow/messages/head"))
            .json(&json!({"wait_ms": 500, "lock_ms": 60000}))
            .send()
            .ok()?;
        (r.status() == 200).then(|| r.json::<Value>().unwrap())
    });
    // While it is in flight the next occurrences are skipped for overlap, not enqueued.
    poll(Duration::from_secs(10), "two overlap skips", || {
        let s = get(&c);
        let skips = s["last_firings"]
            .as_array()?
            .iter()
            .filter(|f| f["outcome"]["reason"] == "overlap")
            .count();
        (skips >= 2).then_some(())
    });
    assert_eq!(enqueued_total(&c, 1, "slow"), Some(1));
    let id = first["id"].as_str().unwrap();
    let done = c
        .http
        .post(c.ingress_url(1, &format!("/queues/slow/messages/{id}:complete")))
        .json(&json!({"lock_token": first["lock_token"]}))
        .send()
        .unwrap();
    assert_eq!(done.status(), 204);
    poll(
        Duration::from_secs(10),
        "firing again once completed",
        || (enqueued_total(&c, 1, "slow")? >= 2).then_some(()),
    );

    // Pause with a note: nothing fires while paused (watched over three occurrences).
    let (s, _) = c.admin_post(
        1,
        "/admin/schedules/slow/pause",
        &json!({"note": "maintenance"}),
    );
    assert_eq!(s, 200);
    let g = get(&c);
    assert_eq!(g["state"], "paused");
    assert_eq!(g["paused"]["note"], "maintenance");
    let paused_total = enqueued_total(&c, 1, "slow").unwrap();
    let paused_at = now_ms();
    let fired = g["fired_total"].clone();
    poll(Duration::from_secs(10), "three occurrences' time", || {
        (now_ms() > paused_at + 3_000).then_some(())
    });
    assert_eq!(get(&c)["fired_total"], fired);
    assert_eq!(enqueued_total(&c, 1, "slow"), Some(paused_total));
    // Drain what is there so overlap does not hold the resumed schedule back.
    drain(&c, 1, "slow");
    let (s, _) = c.admin_post(1, "/admin/schedules/slow/resume", &json!({}));
    assert_eq!(s, 200);
    let resumed_at = now_ms();
    let m = poll(Duration::from_secs(10), "firing after resume", || {
        let got = drain(&c, 1, "slow");
        got.first().copied()
    });
    assert!(m.0 + 1_000 > resumed_at, "resume must not back-fill: {m:?}");
    assert_eq!(get(&c)["state"], "active");
    assert_eq!(get(&c)["next"].as_array().unwrap().len(), 10);

    // Trigger now fires a manual message at once.
    let (s, f) = c.admin_post(1, "/admin/schedules/slow/trigger", &json!({}));
    assert_eq!(s, 202, "{f}");
    assert_eq!(f["manual"], true);
    assert_eq!(f["outcome"]["result"], "enqueued");

    // Preview stores nothing; bad input names the field.
    let (s, p) = c.admin_post(
        1,
        "/admin/schedules:preview",
        &json!({"schedule": {"cron": "0 30 2 * * ?"}, "time_zone": "Europe/Berlin",
                "target": {"queue": {"name": "slow"}}}),
    );
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["next"].as_array().unwrap().len(), 10);
    let (s, e) = c.admin_post(
        1,
        "/admin/schedules:preview",
        &json!({"schedule": {"cron": "0 30 25 * * ?"}, "target": {"queue": {"name": "slow"}}}),
    );
    assert_eq!(s, 400);
    assert_eq!(e["error"]["field"], "schedule.cron[3:hours]");
    let r = c
        .http
        .get(c.url(1, "/admin/schedules"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    let list: Value = r.json().unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let r = c
        .http
        .delete(c.url(1, "/admin/schedules/slow"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// Call targets: each firing calls a flow on an emulated tenant through the pool and records
/// the tenant, status and latency; while a slow call is still running, the next occurrences
/// are skipped for overlap (the sync call is "in flight").
#[test]
fn call_target_records_outcome_and_skips_while_running() {
    use corral::emulator::{spawn_tenant, Behaviour, FlowSpec, TenantConfig};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = TenantConfig::new("st1");
    cfg.flows.push(("tick".into(), FlowSpec::echo("/tick")));
    cfg.flows.push((
        "slow".into(),
        FlowSpec {
            behaviour: Behaviour::Delay,
            delay_ms: Some(3_000),
            ..FlowSpec::echo("/slow")
        },
    ));
    let tenant = rt.block_on(spawn_tenant(cfg)).unwrap();
    let mut c = Cluster::new(1, |t| t);
    c.start(1);
    c.wait_leader(&[1], Duration::from_secs(20));
    let d = tenant.description();
    put(
        &c,
        1,
        "/admin/tenants/st1",
        &serde_json::to_value(&d).unwrap(),
    );
    let call = |path: &str| {
        json!({
            "schedule": {"every": {"n": 1, "unit": "seconds"}},
            "target": {"call": {"path": path, "body": "{}", "content_type": "application/json",
                                 "timeout_ms": 10000}},
        })
    };
    put(&c, 1, "/admin/schedules/fast", &call("/http/tick"));
    put(&c, 1, "/admin/schedules/slow", &call("/http/slow"));
    let firings = |name: &str| -> Vec<Value> {
        c.get_json(1, &format!("/admin/schedules/{name}"))
            .and_then(|s| s["last_firings"].as_array().cloned())
            .unwrap_or_default()
    };
    let called = poll(Duration::from_secs(30), "a recorded 200 call", || {
        firings("fast")
            .into_iter()
            .find(|f| f["outcome"]["result"] == "called" && f["outcome"]["status"] == 200)
    });
    assert_eq!(called["outcome"]["tenant"], "st1");
    assert!(called["outcome"]["latency_ms"].as_u64().is_some());
    // The slow flow takes 3 s: the occurrences meanwhile are skipped, then it is recorded.
    poll(
        Duration::from_secs(30),
        "overlap skips and a slow call recorded",
        || {
            let f = firings("slow");
            let skips = f
                .iter()
                .filter(|f| f["outcome"]["reason"] == "overlap")
                .count();
            let done = f.iter().any(|f| {
                f["outcome"]["result"] == "called"
                    && f["outcome"]["latency_ms"].as_u64().unwrap_or(0) >= 3_000
            });
            (skips >= 2 && done).then_some(())
        },
    );
    rt.block_on(tenant.shutdown());
}

/// Registers emulated tenants on node `at` and waits until every node in `nodes` sees each
/// of them healthy (a call before that would find no tenant).
fn add_tenants(c: &Cluster, at: u64, nodes: &[u64], tenants: &[&corral::emulator::TenantHandle]) {
    for t in tenants {
        let d = t.description();
        put(
            c,
            at,
            &format!("/admin/tenants/{}", d.name),
            &serde_json::to_value(&d).unwrap(),
        );
    }
    poll(
        Duration::from_secs(30),
        "tenants healthy everywhere",
        || {
            let v = c.get_json(at, "/admin/tenants")?;
            let items = v["items"].as_array()?;
            let ok = items.len() == tenants.len()
                && items.iter().all(|t| {
                    nodes
                        .iter()
                        .all(|n| t["health_by_node"][n.to_string()]["status"] == "healthy")
                });
            ok.then_some(())
        },
    );
}

fn firings(c: &Cluster, id: u64, name: &str) -> Vec<Value> {
    c.get_json(id, &format!("/admin/schedules/{name}"))
        .and_then(|s| s["last_firings"].as_array().cloned())
        .unwrap_or_default()
}

/// Route call targets (issue #6 routes): a call naming a sync route goes through that
/// route's tenant set (only rt2 serves `orders-sync`), its path rewrite (`/api/orders` ->
/// `/http/orders`) and its auth mode (tenant auth drops the schedule's bogus Authorization
/// and authenticates as the tenant: 200; passthrough forwards it: the tenant answers 401);
/// the timeout defaults to the route's total timeout. Naming an unknown route, or a path
/// outside the route's prefix, is a 400 naming the field; once the route is deleted, the
/// firings record a `call_failed` saying so.
#[test]
fn route_call_target_goes_through_the_route() {
    use corral::emulator::{spawn_tenant, FlowSpec, TenantConfig};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let flow = FlowSpec {
        idempotency_header: Some("message-id".into()),
        ..FlowSpec::echo("/orders/*")
    };
    let tenant = |name: &str| {
        let mut cfg = TenantConfig::new(name);
        cfg.flows.push(("orders".into(), flow.clone()));
        rt.block_on(spawn_tenant(cfg)).unwrap()
    };
    let (rt1, rt2) = (tenant("rt1"), tenant("rt2"));
    let mut c = Cluster::new(1, |t| t);
    c.start(1);
    c.wait_leader(&[1], Duration::from_secs(20));
    add_tenants(&c, 1, &[1], &[&rt1, &rt2]);
    put(
        &c,
        1,
        "/admin/routes/orders-sync",
        &json!({"prefix": "/api/orders", "target_prefix": "/http/orders", "tenants": ["rt2"],
                "try_timeout_ms": 5000, "total_timeout_ms": 15000}),
    );
    put(
        &c,
        1,
        "/admin/routes/orders-pass",
        &json!({"prefix": "/pass/orders", "target_prefix": "/http/orders", "tenants": ["rt1"],
                "auth": "passthrough"}),
    );
    let bogus = "Basic Ym9ndXM6Ym9ndXM=";
    let via = |route: &str, path: &str| {
        json!({
            "schedule": {"every": {"n": 1, "unit": "seconds"}},
            "target": {"call": {"route": route, "path": path, "method": "GET",
                                 "headers": {"authorization": bogus}}},
        })
    };
    // Bad input names the field; nothing is stored.
    for (body, field) in [
        (via("nope", "/api/orders/sync"), "target.call.route"),
        (via("orders-sync", "/http/orders/sync"), "target.call.path"),
    ] {
        let r = c
            .http
            .put(c.url(1, "/admin/schedules/bad"))
            .bearer_auth(&c.token)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().unwrap();
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    put(
        &c,
        1,
        "/admin/schedules/via-route",
        &via("orders-sync", "/api/orders/sync?full=1"),
    );
    put(
        &c,
        1,
        "/admin/schedules/via-pass",
        &via("orders-pass", "/pass/orders/sync"),
    );
    let s = c.get_json(1, "/admin/schedules/via-route").unwrap();
    assert_eq!(s["definition"]["target"]["call"]["timeout_ms"], 15000);
    // Tenant auth through rt2 only: 200, and the flow at the rewritten path ran once per firing.
    let called = poll(Duration::from_secs(30), "a 200 through orders-sync", || {
        firings(&c, 1, "via-route")
            .into_iter()
            .find(|f| f["outcome"]["result"] == "called")
    });
    // The echo flow answers 204 to an empty body.
    assert_eq!(called["outcome"]["status"], 204, "{called}");
    assert_eq!(called["outcome"]["tenant"], "rt2");
    let id = called["message_id"].as_str().unwrap();
    assert_eq!(rt2.tenant().counters_for(id).processed, 1);
    assert_eq!(rt1.tenant().counters_for(id).received, 0);
    // Passthrough through rt1 only: the bogus credentials reach the tenant, which refuses.
    let refused = poll(Duration::from_secs(30), "a 401 through orders-pass", || {
        firings(&c, 1, "via-pass")
            .into_iter()
            .find(|f| f["outcome"]["result"] == "called")
    });
    assert_eq!(refused["outcome"]["status"], 401, "{refused}");
    assert_eq!(refused["outcome"]["tenant"], "rt1");
    // Every answered firing of each schedule came from its route's tenant.
    for (name, tenant) in [("via-route", "rt2"), ("via-pass", "rt1")] {
        for f in firings(&c, 1, name) {
            if f["outcome"]["result"] == "called" {
                assert_eq!(f["outcome"]["tenant"], tenant, "{name}: {f}");
            }
        }
    }
    // The route is deleted: the next firings fail, naming the route.
    let r = c
        .http
        .delete(c.url(1, "/admin/routes/orders-pass"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let failed = poll(
        Duration::from_secs(30),
        "a call_failed naming the route",
        || {
            firings(&c, 1, "via-pass")
                .into_iter()
                .find(|f| f["outcome"]["result"] == "call_failed")
        },
    );
    let error = failed["outcome"]["error"].as_str().unwrap();
    assert!(
        error.contains("orders-pass") && error.contains("does not exist"),
        "{error}"
    );
    rt.block_on(rt1.shutdown());
    rt.block_on(rt2.shutdown());
}

/// A leader killed (kill -9) while its calls are running on a slow flow: the new leader,
/// once each call's timeout (plus the grace) has passed with no outcome, records
/// `call_lost`; the GET is retried exactly once (message id `<id>.retry`, recorded `called`,
/// received once by the tenant), the POST is not retried.
#[test]
fn leader_killed_mid_call_records_call_lost_and_retries_a_get_once() {
    use corral::emulator::{spawn_tenant, Behaviour, FlowSpec, TenantConfig};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let slow = |path: &str| FlowSpec {
        behaviour: Behaviour::Delay,
        delay_ms: Some(60_000),
        idempotency_header: Some("message-id".into()),
        ..FlowSpec::echo(path)
    };
    let mut cfg = TenantConfig::new("lt1");
    cfg.flows.push(("lost-get".into(), slow("/lost/get")));
    cfg.flows.push(("lost-post".into(), slow("/lost/post")));
    let tenant = rt.block_on(spawn_tenant(cfg)).unwrap();
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    add_tenants(&c, leader, &[1, 2, 3], &[&tenant]);
    let call = |method: &str, path: &str| {
        json!({
            "schedule": {"on_create": {}},
            "target": {"call": {"path": path, "method": method, "timeout_ms": 3000}},
        })
    };
    put(
        &c,
        leader,
        "/admin/schedules/lost-get",
        &call("GET", "/http/lost/get"),
    );
    put(
        &c,
        leader,
        "/admin/schedules/lost-post",
        &call("POST", "/http/lost/post"),
    );
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    // Both calls started and reached the tenant (which holds them for 60 s).
    let started: Vec<Value> = ["lost-get", "lost-post"]
        .iter()
        .map(|name| {
            poll(
                Duration::from_secs(20),
                "call started at the tenant",
                || {
                    let f = firings(&c, follower, name).into_iter().next()?;
                    let id = f["message_id"].as_str()?;
                    let arrived = f["outcome"]["result"] == "call_started"
                        && tenant.tenant().counters_for(id).received == 1;
                    arrived.then_some(f)
                },
            )
        })
        .collect();
    eprintln!("kill -9 leader {leader} mid-call");
    c.kill9(leader);
    // The retry should answer: the flow is fast from now on.
    let r = c
        .http
        .put(format!(
            "http://{}/_emulator/flows/lost-get",
            tenant.control_addr()
        ))
        .json(&FlowSpec {
            idempotency_header: Some("message-id".into()),
            ..FlowSpec::echo("/lost/get")
        })
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    // Right after the kill the survivors still name the dead leader: wait for a new one.
    let new_leader = poll(Duration::from_secs(20), "a new leader", || {
        c.agreed_leader(&rest).filter(|l| *l != leader)
    });
    let by_id = |name: &str, id: &str| {
        firings(&c, new_leader, name)
            .into_iter()
            .find(|f| f["message_id"] == id)
    };
    // GET: lost, then retried once, and the retry answered.
    let get_id = started[0]["message_id"].as_str().unwrap().to_string();
    let retry_id = format!("{get_id}.retry");
    let lost = poll(Duration::from_secs(30), "GET recorded call_lost", || {
        by_id("lost-get", &get_id).filter(|f| f["outcome"]["result"] == "call_lost")
    });
    assert_eq!(lost["outcome"]["retried"], true, "{lost}");
    assert_eq!(lost["outcome"]["retry_message_id"], retry_id.as_str());
    assert!(lost["outcome"]["reason"]
        .as_str()
        .unwrap()
        .contains("outcome unknown"));
    let retry = poll(Duration::from_secs(30), "the GET retry answered", || {
        by_id("lost-get", &retry_id).filter(|f| f["outcome"]["result"] == "called")
    });
    // The echo flow answers 204 to an empty body.
    assert_eq!(retry["outcome"]["status"], 204, "{retry}");
    assert_eq!(retry["retry_of"], get_id.as_str());
    assert_eq!(retry["occurrence_ms"], started[0]["occurrence_ms"]);
    // Declared lost only after the timeout (3 s) and the grace (2 s) since it started.
    let (fired, retried) = (
        started[0]["fired_ms"].as_u64().unwrap(),
        retry["fired_ms"].as_u64().unwrap(),
    );
    assert!(
        retried >= fired + 5_000,
        "retried at {retried}, fired at {fired}"
    );
    assert_eq!(tenant.tenant().counters_for(&retry_id).received, 1);
    assert_eq!(tenant.tenant().counters_for(&get_id).received, 1);
    // POST: lost, not retried.
    let post_id = started[1]["message_id"].as_str().unwrap().to_string();
    let lost = poll(Duration::from_secs(30), "POST recorded call_lost", || {
        by_id("lost-post", &post_id).filter(|f| f["outcome"]["result"] == "call_lost")
    });
    assert_eq!(lost["outcome"]["retried"], false, "{lost}");
    assert_eq!(
        firings(&c, new_leader, "lost-post").len(),
        1,
        "no retry firing"
    );
    assert_eq!(tenant.tenant().counters_for(&post_id).received, 1);
    assert_eq!(
        tenant
            .tenant()
            .counters_for(&format!("{post_id}.retry"))
            .received,
        0
    );
    rt.block_on(tenant.shutdown());
}
