//! Push dispatch on a real three-node cluster with emulated CPI tenants: each acknowledged
//! message is processed exactly once across the pool (emulator counters summed per id)
//! through a leader kill, a tenant going down, and all tenants going down; a flow that always
//! fails dead-letters after max deliveries and redrives; per-key order survives a leader
//! change.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{poll, Cluster};
use corral::emulator::{spawn_tenant, Behaviour, FlowSpec, TenantConfig, TenantHandle};
use serde_json::{json, Value};

/// The flow every tenant serves at `/http/orders`: 200, skipping ids it already processed
/// (an Idempotent Process Call keyed by X-Message-ID).
fn orders_flow() -> FlowSpec {
    FlowSpec {
        idempotent: true,
        ..FlowSpec::echo("/orders")
    }
}

struct Pool {
    rt: tokio::runtime::Runtime,
    tenants: Vec<TenantHandle>,
}

impl Pool {
    fn start(names: &[&str]) -> Pool {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let tenants = names
            .iter()
            .map(|n| {
                let mut cfg = TenantConfig::new(*n);
                cfg.flows.push(("orders".into(), orders_flow()));
                rt.block_on(spawn_tenant(cfg)).unwrap()
            })
            .collect();
        Pool { rt, tenants }
    }

    /// Sum over tenants of runs that processed message `id`.
    fn processed(&self, id: &str) -> u64 {
        self.tenants
            .iter()
            .map(|t| t.tenant().counters_for(id).processed)
            .sum()
    }

    fn processed_by(&self, i: usize, id: &str) -> u64 {
        self.tenants[i].tenant().counters_for(id).processed
    }

    /// Flips the emulator's `down` switch (the runtime listener closes; counters stay).
    fn set_down(&self, i: usize, down: bool) {
        let url = format!("{}/chaos", self.tenants[i].description().control_url);
        let r = reqwest::blocking::Client::new()
            .put(url)
            .json(&json!({ "down": down }))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Replaces the `orders` flow on tenant `i`.
    fn set_flow(&self, i: usize, spec: &FlowSpec) {
        let url = format!("{}/flows/orders", self.tenants[i].description().control_url);
        let r = reqwest::blocking::Client::new()
            .put(url)
            .json(spec)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    }
}

/// A cluster with both tenants registered (fast health checks) and one push queue.
fn setup(pool: &Pool, queue: &Value) -> Cluster {
    let _guard = pool.rt.enter();
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    for h in &pool.tenants {
        let mut d = serde_json::to_value(h.description()).unwrap();
        d["health"] = json!({"interval_ms": 200, "fall": 2, "rise": 2});
        let name = d["name"].as_str().unwrap().to_string();
        let r = c
            .http
            .put(c.url(1, &format!("/admin/tenants/{name}")))
            .bearer_auth(&c.token)
            .json(&d)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    }
    let r = c
        .http
        .put(c.url(2, "/admin/queues/orders"))
        .bearer_auth(&c.token)
        .json(queue)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    poll(
        Duration::from_secs(20),
        "every node sees both tenants healthy",
        || {
            let v = c.get_json(1, "/admin/tenants")?;
            let items = v["items"].as_array()?;
            let ok = items.len() == pool.tenants.len()
                && items.iter().all(|t| {
                    (1..=3).all(|n| t["health_by_node"][n.to_string()]["status"] == "healthy")
                });
            ok.then_some(())
        },
    );
    c
}

/// Posts `n` messages (Message-Id `{prefix}{i}`) from `threads` producers, each trying the
/// next node when one fails; a retry is safe because the Message-Id dedups it. Returns the
/// ids answered 202, and calls `at_half` once half are acknowledged.
fn produce(
    c: &Cluster,
    prefix: &str,
    n: u32,
    threads: u32,
    at_half: impl FnOnce(),
) -> HashSet<String> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicU32::new(0));
    let urls: Vec<String> = (1..=3)
        .map(|id| c.ingress_url(id, "/queues/orders/messages"))
        .collect();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (acked, count, urls) = (acked.clone(), count.clone(), urls.clone());
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for i in (t..n).step_by(threads as usize) {
                    let key = format!("{prefix}{i}");
                    let mut done = false;
                    for attempt in 0..300usize {
                        let url = &urls[(i as usize + attempt) % urls.len()];
                        let r = http
                            .post(url)
                            .header("message-id", &key)
                            .body(format!("order {i}"))
                            .send();
                        if let Ok(r) = r {
                            if r.status() == 202 {
                                let v: Value = r.json().unwrap();
                                acked
                                    .lock()
                                    .unwrap()
                                    .insert(v["id"].as_str().unwrap().to_string());
                                count.fetch_add(1, Ordering::Relaxed);
                                done = true;
                                break;
                            }
                        }
                        // Backoff before retrying a refused or unknown-outcome enqueue.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    assert!(done, "message {key} was never acknowledged");
                }
            })
        })
        .collect();
    poll(
        Duration::from_secs(120),
        "half the messages acknowledged",
        || (count.load(Ordering::Relaxed) >= n / 2).then_some(()),
    );
    at_half();
    for h in handles {
        h.join().unwrap();
    }
    let ids = acked.lock().unwrap().clone();
    assert_eq!(ids.len(), n as usize, "every message has one id");
    ids
}

fn stats(c: &Cluster, via: u64) -> Option<Value> {
    Some(c.get_json(via, "/admin/queues/orders")?["stats"].clone())
}

/// Waits until the queue is empty with no dead letters; returns every id not processed
/// exactly once across the pool, with its count.
fn drain_and_count(
    c: &Cluster,
    pool: &Pool,
    ids: &HashSet<String>,
    via: u64,
    timeout: Duration,
) -> Vec<(String, u64)> {
    poll(timeout, "the queue drained", || {
        let s = stats(c, via)?;
        (s["depth"] == 0).then_some(())
    });
    let s = stats(c, via).unwrap();
    assert_eq!(s["dead_letters"], 0, "{s}");
    ids.iter()
        .map(|id| (id.clone(), pool.processed(id)))
        .filter(|(_, n)| *n != 1)
        .collect()
}

/// Waits until every id was processed exactly once across the pool and the queue is empty
/// with no dead letters.
fn assert_exactly_once(
    c: &Cluster,
    pool: &Pool,
    ids: &HashSet<String>,
    via: u64,
    timeout: Duration,
) {
    let wrong = drain_and_count(c, pool, ids, via, timeout);
    assert!(
        wrong.is_empty(),
        "{} of {} messages not processed exactly once, e.g. {:?}",
        wrong.len(),
        ids.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// 10,000 messages with the leader killed (kill -9) halfway through producing: every message
/// answered 202 is processed exactly once across the two tenants, none lost, none
/// dead-lettered; both tenants took a share.
#[test]
fn leader_kill_mid_run_processes_each_message_once() {
    let pool = Pool::start(&["pa", "pb"]);
    let mut c = setup(
        &pool,
        &json!({"delivery": {"mode": "push", "path": "/http/orders"}}),
    );
    let leader = c.agreed_leader(&[1, 2, 3]).unwrap();
    let ids = produce(&c, "k", 10_000, 8, || c.signal(leader, libc::SIGKILL));
    c.kill9(leader); // reaps the process killed above
    let live = c.live_ids();
    let via = live[0];
    c.wait_leader(&live, Duration::from_secs(20));
    assert_exactly_once(&c, &pool, &ids, via, Duration::from_secs(180));
    let share: u64 = ids.iter().map(|id| pool.processed_by(0, id)).sum();
    assert!(
        share > 0 && share < ids.len() as u64,
        "one tenant did all: {share}"
    );
}

/// A tenant goes down (its runtime listener closes, aborting requests in flight) while
/// messages flow: its messages complete on the other tenant once the first has been unhealthy
/// for `failover_after_ms`; nothing is lost or dead-lettered. A request aborted after the
/// tenant processed it but before it answered is an uncertain outcome: no broker can know, so
/// the message may run once on each tenant. The test allows exactly that and nothing more:
/// every other message runs exactly once, and each duplicate ran once per tenant, is one of
/// the few in flight at the cut, and its trace says it moved after an uncertain attempt.
#[test]
fn tenant_down_mid_run_moves_its_messages() {
    let pool = Pool::start(&["qa", "qb"]);
    let c = setup(
        &pool,
        &json!({"delivery": {"mode": "push", "path": "/http/orders"},
                "failover_after_ms": 1000, "retry": {"initial_ms": 100, "max_ms": 1000}}),
    );
    let ids = produce(&c, "t", 2_000, 4, || pool.set_down(0, true));
    let twice = drain_and_count(&c, &pool, &ids, 1, Duration::from_secs(120));
    // The pool's concurrency limit bounds what can be in flight at the cut.
    assert!(twice.len() <= 64, "too many duplicates: {}", twice.len());
    for (id, _) in &twice {
        assert_eq!(
            (pool.processed_by(0, id), pool.processed_by(1, id)),
            (1, 1),
            "{id} ran more than once per tenant"
        );
        let t = c.get_json(1, &format!("/admin/messages/{id}")).unwrap();
        assert!(
            t["attempts"]
                .to_string()
                .contains("after an uncertain attempt"),
            "a duplicate without an uncertain attempt: {t}"
        );
    }
    let on_b: u64 = ids.iter().map(|id| pool.processed_by(1, id)).sum();
    assert!(on_b >= 1_000, "the surviving tenant took the rest: {on_b}");
    // Any message with more than one attempt ended on the live tenant.
    let moved = ids.iter().find_map(|id| {
        let t = c.get_json(1, &format!("/admin/messages/{id}"))?;
        let notes = t["attempts"]
            .as_array()?
            .iter()
            .any(|a| a["note"].is_string());
        notes.then_some(t)
    });
    if let Some(t) = moved {
        assert_eq!(t["state"], "completed", "{t}");
        assert!(t["attempts"].to_string().contains("moved from"), "{t}");
    }
}

/// All tenants down for 30 s: nothing is dead-lettered (connection failures are tenant
/// trouble, and unhealthy tenants get no work), and every message is delivered once they
/// return.
#[test]
fn all_tenants_down_then_back_delivers_everything() {
    let pool = Pool::start(&["ra", "rb"]);
    let c = setup(
        &pool,
        &json!({"delivery": {"mode": "push", "path": "/http/orders"}, "max_deliveries": 2,
                "retry": {"initial_ms": 200, "max_ms": 2000}}),
    );
    pool.set_down(0, true);
    pool.set_down(1, true);
    let ids = produce(&c, "d", 300, 4, || {});
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Throughout the outage nothing is dead-lettered and nothing is lost.
    while std::time::Instant::now() < deadline {
        let s = stats(&c, 1).unwrap();
        assert_eq!(s["dead_letters"], 0, "{s}");
        assert_eq!(s["depth"], 300, "{s}");
        std::thread::sleep(Duration::from_millis(500));
    }
    pool.set_down(0, false);
    pool.set_down(1, false);
    assert_exactly_once(&c, &pool, &ids, 2, Duration::from_secs(60));
}

/// A flow that always fails (500) dead-letters each message after max_deliveries, with the
/// reason, last status and a body excerpt; once the flow is fixed, a redrive delivers them.
#[test]
fn failing_flow_dead_letters_then_redrive_delivers() {
    let pool = Pool::start(&["fa", "fb"]);
    let failing = FlowSpec {
        behaviour: Behaviour::Fail,
        ..orders_flow()
    };
    for i in 0..2 {
        pool.set_flow(i, &failing);
    }
    let c = setup(
        &pool,
        &json!({"delivery": {"mode": "push", "path": "/http/orders"}, "max_deliveries": 3,
                "retry": {"initial_ms": 50, "max_ms": 200}}),
    );
    let ids = produce(&c, "f", 20, 2, || {});
    poll(Duration::from_secs(60), "all dead-lettered", || {
        let s = stats(&c, 3)?;
        (s["dead_letters"] == 20 && s["depth"] == 0).then_some(())
    });
    let dead = c.get_json(1, "/admin/queues/orders/dead-letters").unwrap();
    let first = &dead["items"][0];
    assert_eq!(first["delivery_count"], 3, "{first}");
    assert_eq!(first["last_status"], 500, "{first}");
    assert!(first["dead_letter_reason"]
        .as_str()
        .unwrap()
        .contains("max_deliveries 3"));
    assert!(first["dead_letter_excerpt"]
        .as_str()
        .unwrap()
        .starts_with("order "));
    let id = first["id"].as_str().unwrap();
    let trace = c.get_json(2, &format!("/admin/messages/{id}")).unwrap();
    assert_eq!(trace["state"], "dead_lettered");
    assert_eq!(trace["attempts"].as_array().unwrap().len(), 3, "{trace}");
    for i in 0..2 {
        pool.set_flow(i, &orders_flow());
    }
    let r = c
        .http
        .post(c.url(1, "/admin/queues/orders/dead-letters/redrive"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["count"], 20);
    assert_exactly_once(&c, &pool, &ids, 1, Duration::from_secs(60));
}

/// Per-key ordering holds across a leader change: a pull consumer sees each ordering key's
/// messages strictly in enqueue order, one at a time, while the leader is killed midway.
#[test]
fn per_key_order_holds_across_leader_change() {
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let r = c
        .http
        .put(c.url(1, "/admin/queues/ordered"))
        .bearer_auth(&c.token)
        .json(&json!({"ordering": "per_key", "lock_duration_ms": 2000}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let keys = ["k1", "k2", "k3"];
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    let via = if leader == 1 { 2 } else { 1 };
    for i in 0..60 {
        let k = keys[i % 3];
        let r = c
            .http
            .post(c.ingress_url(via, "/queues/ordered/messages"))
            .header("ordering-key", k)
            .body(format!("{k}-{i}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        sent.entry(k).or_default().push(format!("{k}-{i}"));
    }
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let mut received = 0;
    let mut killed = false;
    poll(
        Duration::from_secs(90),
        "every message received in order",
        || {
            if received >= 30 && !killed {
                c.signal(leader, libc::SIGKILL);
                killed = true;
            }
            let node = c.live_ids().into_iter().find(|n| *n != leader || !killed)?;
            let r = c
                .http
                .post(c.ingress_url(node, "/queues/ordered/messages/head"))
                .json(&json!({"wait_ms": 200}))
                .send()
                .ok()?;
            if r.status() == 200 {
                let m: Value = r.json().ok()?;
                let body = String::from_utf8(
                    base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        m["body"].as_str()?,
                    )
                    .ok()?,
                )
                .ok()?;
                let key = m["ordering_key"].as_str()?.to_string();
                let id = m["id"].as_str()?;
                let token = m["lock_token"].as_str()?;
                let done = c
                    .http
                    .post(c.ingress_url(node, &format!("/queues/ordered/messages/{id}:complete")))
                    .json(&json!({"lock_token": token}))
                    .send()
                    .ok()?;
                let list = got.entry(key).or_default();
                // A redelivery after an unknown outcome may repeat the last one; never go back.
                if list.last() != Some(&body) {
                    list.push(body);
                }
                if done.status() == 204 {
                    received += 1;
                }
            }
            let all = keys.iter().all(|k| got.get(*k).map(Vec::len) == Some(20));
            all.then_some(())
        },
    );
    c.kill9(leader);
    for k in keys {
        assert_eq!(&got[k], &sent[k], "order of key {k}");
    }
}
