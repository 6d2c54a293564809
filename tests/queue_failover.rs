//! Acknowledged messages survive the loss of the leader: every 202 was committed on a
//! majority, so the survivors hand out every message exactly once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{poll, Cluster};
use serde_json::{json, Value};

#[test]
fn acknowledged_messages_survive_leader_loss() {
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    assert_eq!(
        c.admin_put(leader, "/admin/queues/durable", &json!({})).0,
        201
    );
    let mut acked = HashSet::new();
    for i in 0..20u64 {
        let r = c
            .http
            .post(c.ingress_url(leader, "/queues/durable/messages"))
            .body(format!("m{i}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        acked.insert(
            r.json::<Value>().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    c.kill9(leader);
    let live: Vec<u64> = c.live_ids();
    c.wait_leader(&live, Duration::from_secs(20));
    let mut got = HashSet::new();
    poll(
        Duration::from_secs(20),
        "every acknowledged message",
        || {
            for id in &live {
                let r = c
                    .http
                    .post(c.ingress_url(*id, "/queues/durable/messages/head"))
                    .json(&json!({"wait_ms": 100}))
                    .send()
                    .ok()?;
                if r.status() != 200 {
                    continue;
                }
                let m: Value = r.json().ok()?;
                let id_s = m["id"].as_str()?.to_string();
                assert!(got.insert(id_s.clone()), "{id_s} handed out twice");
                let done = c
                    .http
                    .post(c.ingress_url(*id, &format!("/queues/durable/messages/{id_s}:complete")))
                    .json(&json!({"lock_token": m["lock_token"]}))
                    .send()
                    .ok()?;
                assert_eq!(done.status(), 204);
            }
            (got.len() == acked.len()).then_some(())
        },
    );
    assert_eq!(got, acked);
    let s = c.get_json(live[0], "/admin/queues/durable").unwrap()["stats"].clone();
    assert_eq!(s["depth"], 0);
    assert_eq!(s["completed_total"], 20);
}
