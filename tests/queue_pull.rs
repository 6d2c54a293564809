//! Durable queue pull consumers over real processes: peek-lock receive, complete, lock expiry
//! redelivery, abandon past max deliveries into dead letters, redrive and purge, and two
//! consumers (on different nodes) never holding one message.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use common::{poll, Cluster};
use serde_json::{json, Value};

fn receive(c: &Cluster, node: u64, q: &str, body: Value) -> Option<Value> {
    let r = c
        .http
        .post(c.ingress_url(node, &format!("/queues/{q}/messages/head")))
        .json(&body)
        .send()
        .unwrap();
    match r.status().as_u16() {
        200 => Some(r.json().unwrap()),
        204 => None,
        s => panic!("receive: {s} {}", r.text().unwrap_or_default()),
    }
}

fn settle(c: &Cluster, node: u64, q: &str, id: &str, verb: &str, token: &str) -> u16 {
    c.http
        .post(c.ingress_url(node, &format!("/queues/{q}/messages/{id}:{verb}")))
        .json(&json!({"lock_token": token}))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn stats(c: &Cluster, q: &str) -> Value {
    c.get_json(1, &format!("/admin/queues/{q}")).unwrap()["stats"].clone()
}

fn enqueue(c: &Cluster, node: u64, q: &str, body: &str) -> String {
    let r = c
        .http
        .post(c.ingress_url(node, &format!("/queues/{q}/messages")))
        .header("content-type", "text/plain")
        .header("x-trace", "t1")
        .header("ordering-key", "cust-7")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn pull_consumers() {
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let r = c
        .http
        .put(c.url(1, "/admin/queues/work"))
        .bearer_auth(&c.token)
        .json(&json!({"max_deliveries": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let put_index = r.json::<Value>().unwrap()["revision"].as_u64().unwrap();

    // Empty queue: 204 after the wait, and an idle long poll proposes nothing.
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let commit = |c: &Cluster| {
        c.view(leader).unwrap()["node"]["last_index"]
            .as_u64()
            .unwrap()
    };
    let before = put_index;
    assert!(receive(&c, 2, "work", json!({"wait_ms": 1000})).is_none());
    assert_eq!(commit(&c), before, "an idle long poll wrote to the log");

    // Receive gets body, headers and a lock; complete removes it.
    let id = enqueue(&c, 1, "work", "hello");
    let m = receive(&c, 3, "work", json!({"lock_ms": 30000})).expect("a message");
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["delivery_count"], 1);
    assert_eq!(m["content_type"], "text/plain");
    assert_eq!(m["headers"]["x-trace"], "t1");
    assert_eq!(m["ordering_key"], "cust-7");
    let body = base64::engine::general_purpose::STANDARD
        .decode(m["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"hello");
    assert_eq!(stats(&c, "work")["in_flight"], 1);
    let token = m["lock_token"].as_str().unwrap();
    assert_eq!(settle(&c, 1, "work", &id, "complete", "wrong"), 410);
    assert_eq!(settle(&c, 1, "work", &id, "complete", token), 204);
    let s = stats(&c, "work");
    assert_eq!(
        (s["depth"].clone(), s["in_flight"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(settle(&c, 1, "work", &id, "complete", token), 404);

    // Long poll: a message enqueued while waiting is returned.
    let waiter = {
        let (url, http) = (
            c.ingress_url(2, "/queues/work/messages/head"),
            c.http.clone(),
        );
        std::thread::spawn(move || {
            http.post(url)
                .json(&json!({"wait_ms": 8000}))
                .send()
                .unwrap()
                .json::<Value>()
                .unwrap()
        })
    };
    let id2 = enqueue(&c, 3, "work", "later");
    let got = waiter.join().unwrap();
    assert_eq!(got["id"], id2.as_str());

    // Its lock (default 60 s) is held: nobody else gets it.
    assert!(receive(&c, 1, "work", json!({})).is_none());
    // A short lock expires and the message is redelivered (through another node).
    let tok = got["lock_token"].as_str().unwrap().to_string();
    assert_eq!(settle(&c, 2, "work", &id2, "abandon", &tok), 204);
    let m = receive(&c, 1, "work", json!({"lock_ms": 1000})).unwrap();
    assert_eq!(m["delivery_count"], 2);
    // Delivered twice = max_deliveries: after the lock expires it goes to the dead letters.
    poll(
        Duration::from_secs(10),
        "the expired message to be dead-lettered",
        || {
            assert!(receive(&c, 3, "work", json!({"wait_ms": 200})).is_none());
            (stats(&c, "work")["dead_letters"] == 1).then_some(())
        },
    );
    let dl = c.get_json(2, "/admin/queues/work/dead-letters").unwrap();
    assert_eq!(dl["items"][0]["id"], id2.as_str());
    let peek = c
        .get_json(2, &format!("/admin/queues/work/dead-letters/{id2}"))
        .unwrap();
    assert_eq!(peek["body"], "bGF0ZXI=");
    // Redrive all brings it back with the count reset; then dead-letter it explicitly; purge.
    let r = c
        .http
        .post(c.url(3, "/admin/queues/work/dead-letters/redrive"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["count"], 1);
    let m = receive(&c, 2, "work", json!({})).unwrap();
    assert_eq!(m["delivery_count"], 1);
    let tok = m["lock_token"].as_str().unwrap().to_string();
    assert_eq!(settle(&c, 2, "work", &id2, "renew-lock", &tok), 200);
    assert_eq!(settle(&c, 2, "work", &id2, "dead-letter", &tok), 204);
    assert_eq!(stats(&c, "work")["dead_letters"], 1);
    let r = c
        .http
        .delete(c.url(1, "/admin/queues/work/dead-letters"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["count"], 1);
    let s = stats(&c, "work");
    assert_eq!(
        (s["depth"].clone(), s["dead_letters"].clone()),
        (json!(0), json!(0))
    );

    // Many consumers on all nodes: every message is held by exactly one of them.
    let n = 30;
    let mut sent = HashSet::new();
    for i in 0..n {
        sent.insert(enqueue(&c, 1 + i % 3, "work", &format!("m{i}")));
    }
    let consumers: Vec<_> = (0..6u64)
        .map(|t| {
            let (url, http, base) = (
                c.ingress_url(1 + t % 3, "/queues/work/messages/head"),
                c.http.clone(),
                c.ingress_url(1 + t % 3, "/queues/work/messages/"),
            );
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let r = http
                        .post(&url)
                        .json(&json!({"wait_ms": 500, "lock_ms": 60000}))
                        .send()
                        .unwrap();
                    if r.status() == 204 {
                        return mine;
                    }
                    let m: Value = r.json().unwrap();
                    let id = m["id"].as_str().unwrap().to_string();
                    let done = http
                        .post(format!("{base}{id}:complete"))
                        .json(&json!({"lock_token": m["lock_token"]}))
                        .send()
                        .unwrap();
                    assert_eq!(done.status(), 204);
                    mine.push(id);
                }
            })
        })
        .collect();
    let all: Vec<String> = consumers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "a message was held by two consumers"
    );
    assert_eq!(unique, sent);
    let s = stats(&c, "work");
    assert_eq!(
        (s["depth"].clone(), s["in_flight"].clone()),
        (json!(0), json!(0))
    );
}
