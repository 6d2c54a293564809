//! Durable queue over real processes: queue config, enqueue with dedup (header and JSON body
//! pointer, inside and outside the window), atomic batches, caps (429, nothing stored), 413.

mod common;

use std::time::Duration;

use common::{poll, Cluster};
use serde_json::{json, Value};

fn put_queue(c: &Cluster, node: u64, name: &str, body: Value) -> reqwest::blocking::Response {
    c.http
        .put(c.url(node, &format!("/admin/queues/{name}")))
        .bearer_auth(&c.token)
        .json(&body)
        .send()
        .unwrap()
}

fn stats(c: &Cluster, node: u64, name: &str) -> Value {
    c.get_json(node, &format!("/admin/queues/{name}"))
        .expect("queue readable")["stats"]
        .clone()
}

fn post(c: &Cluster, node: u64, q: &str, msg_id: Option<&str>, body: &str) -> (u16, Value) {
    let mut r = c
        .http
        .post(c.ingress_url(node, &format!("/queues/{q}/messages")))
        .header("content-type", "application/json")
        .header("x-app", "v1")
        .header("authorization", "Basic c2VjcmV0")
        .body(body.to_string());
    if let Some(id) = msg_id {
        r = r.header("message-id", id);
    }
    let r = r.send().unwrap();
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

#[test]
fn enqueue_dedup_batch_caps_and_limits() {
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(20));

    // Config: bad input names the field and stores nothing; good input round-trips.
    let r = put_queue(&c, 1, "orders", json!({"dedup": {"window_ms": 604800001}}));
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["field"],
        "dedup.window_ms"
    );
    assert!(c.get_json(1, "/admin/queues/orders").is_none());
    let r = put_queue(&c, 1, "orders", json!({"dedup": {"window_ms": 1500}}));
    assert_eq!(r.status(), 201);
    let q = c.get_json(2, "/admin/queues/orders").unwrap();
    assert_eq!(q["max_deliveries"], 10);
    assert_eq!(q["dedup"]["key"]["source"], "header");
    let listed = c.get_json(3, "/admin/queues").unwrap();
    assert_eq!(listed["items"][0]["name"], "orders");

    // A push queue stores its delivery settings and cannot be pulled from.
    let r = put_queue(
        &c,
        3,
        "pushq",
        json!({"delivery": {"mode": "push", "path": "/http/orders"}, "ordering": "per_key"}),
    );
    assert_eq!(r.status(), 201);
    let q = c.get_json(1, "/admin/queues/pushq").unwrap();
    assert_eq!(q["delivery"]["path"], "/http/orders");
    let r = c
        .http
        .post(c.ingress_url(1, "/queues/pushq/messages/head"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);

    // Unknown queue: 404 in the JSON shape.
    let (code, body) = post(&c, 1, "nope", None, "{}");
    assert_eq!(code, 404);
    assert_eq!(body["error"]["code"], "not_found");

    // Dedup by Message-Id header, posting through different nodes.
    let (code, first) = post(&c, 2, "orders", Some("m-1"), r#"{"n":1}"#);
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["duplicate"], false);
    let (code, dup) = post(&c, 3, "orders", Some("m-1"), r#"{"n":1}"#);
    assert_eq!(code, 202);
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["id"], first["id"]);
    assert_eq!(dup["sequence"], first["sequence"]);
    let dups = c.metric(
        3,
        r#"corral_queue_messages_total{op="enqueue",outcome="duplicate"}"#,
    );
    assert_eq!(dups, Some(1.0));
    let (_, other) = post(&c, 1, "orders", None, "x");
    assert_eq!(other["duplicate"], false);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(stats(&c, 1, "orders")["depth"], 2);
    // The same depth is exported to Prometheus on every node once applied there.
    poll(
        Duration::from_secs(10),
        "queue depth gauge on node 3",
        || (c.metric(3, r#"corral_queue_depth{queue="orders"}"#) == Some(2.0)).then_some(()),
    );
    // Outside the window (1.5 s) the same key is a new message.
    let again = poll(Duration::from_secs(10), "dedup window to pass", || {
        let (_, b) = post(&c, 1, "orders", Some("m-1"), r#"{"n":1}"#);
        (b["duplicate"] == false).then_some(b)
    });
    assert_ne!(again["id"], first["id"]);
    assert_eq!(stats(&c, 1, "orders")["depth"], 3);

    // Dedup by a JSON pointer into the body.
    let r = put_queue(
        &c,
        2,
        "bypointer",
        json!({"dedup": {"key": {"source": "json_pointer", "pointer": "/order/id"}}}),
    );
    assert_eq!(r.status(), 201);
    let (_, a) = post(&c, 1, "bypointer", None, r#"{"order":{"id":"A1"},"v":1}"#);
    let (_, b) = post(&c, 2, "bypointer", None, r#"{"order":{"id":"A1"},"v":2}"#);
    let (_, d) = post(&c, 3, "bypointer", None, r#"{"order":{"id":"B2"}}"#);
    assert_eq!(
        (a["duplicate"].clone(), b["duplicate"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(a["id"], b["id"]);
    assert_eq!(d["duplicate"], false);
    assert_eq!(stats(&c, 3, "bypointer")["depth"], 2);

    // Batch: atomic; a duplicate inside the batch answers with the first.
    let batch = json!([
        {"headers": {"Message-Id": "b-1"}, "body": "one"},
        {"headers": {"Message-Id": "b-1"}, "body": "one again"},
        {"body": "AAEC", "body_encoding": "base64", "content_type": "application/octet-stream"}
    ]);
    let r = c
        .http
        .post(c.ingress_url(2, "/queues/orders/messages:batch"))
        .json(&batch)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let items = r.json::<Value>().unwrap()["items"].clone();
    assert_eq!(items[1]["id"], items[0]["id"]);
    assert_eq!(items[1]["duplicate"], true);
    assert_eq!(items[2]["duplicate"], false);
    assert_eq!(stats(&c, 1, "orders")["depth"], 5);
    // A batch with one bad item stores nothing.
    let bad = json!([{"body": "fine"}, {"body": "!!", "body_encoding": "base64"}]);
    let r = c
        .http
        .post(c.ingress_url(1, "/queues/orders/messages:batch"))
        .json(&bad)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["field"], "[1].body");
    assert_eq!(stats(&c, 1, "orders")["depth"], 5);

    // Caps: 429 with Retry-After, and nothing stored.
    put_queue(&c, 1, "small", json!({"max_messages": 2, "max_bytes": 100}));
    let many = json!([{"body": "1"}, {"body": "2"}, {"body": "3"}]);
    let r = c
        .http
        .post(c.ingress_url(3, "/queues/small/messages:batch"))
        .json(&many)
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "queue_full");
    assert_eq!(stats(&c, 1, "small")["depth"], 0);
    let (code, _) = post(&c, 1, "small", None, &"x".repeat(101));
    assert_eq!(code, 429);
    assert_eq!(stats(&c, 1, "small")["bytes"], 0);

    // 413 beyond 16 MiB, in the JSON shape, nothing stored.
    let big = vec![b'a'; 16 * 1024 * 1024 + 1];
    let r = c
        .http
        .post(c.ingress_url(1, "/queues/orders/messages"))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "too_large");
    assert_eq!(stats(&c, 1, "orders")["depth"], 5);

    // Delete removes the queue and its messages.
    let r = c
        .http
        .delete(c.url(1, "/admin/queues/orders"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, _) = post(&c, 2, "orders", None, "x");
    assert_eq!(code, 404);
}

/// Concurrent single-message enqueues share commands (ingress coalescing) without changing
/// what each caller sees: 48 clients over a leader and a follower each get their own id and
/// sequence, every message is stored once, at least one command carried several messages,
/// and the follower's commands joined the leader's lane. Sixteen clients racing with one `Message-Id` store it once: all answer with the
/// same id and exactly one of them says `"duplicate": false`.
#[test]
fn concurrent_enqueues_coalesce_and_keep_their_answers() {
    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let r = put_queue(&c, 1, "burst", json!({"max_messages": 100000}));
    assert_eq!(r.status(), 201);
    let (clients, each) = (48u64, 40u64);
    let answers: Vec<Value> = std::thread::scope(|s| {
        let c = &c;
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                s.spawn(move || {
                    let node = if t % 2 == 0 { leader } else { follower };
                    (0..each)
                        .map(|i| {
                            let (code, v) = post(c, node, "burst", None, &format!("{t}/{i}"));
                            assert_eq!(code, 202, "{v}");
                            v
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let ids: std::collections::HashSet<&str> =
        answers.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let seqs: std::collections::HashSet<u64> = answers
        .iter()
        .map(|v| v["sequence"].as_u64().unwrap())
        .collect();
    let n = (clients * each) as usize;
    assert_eq!(
        (ids.len(), seqs.len()),
        (n, n),
        "ids and sequences are unique"
    );
    assert!(answers.iter().all(|v| v["duplicate"] == false));
    assert_eq!(stats(&c, follower, "burst")["depth"], n as u64);
    let shared = [leader, follower].iter().any(|id| {
        let count = c.metric(*id, "corral_enqueue_coalesced_messages_count");
        let sum = c.metric(*id, "corral_enqueue_coalesced_messages_sum");
        matches!((count, sum), (Some(k), Some(s)) if s > k)
    });
    assert!(shared, "no command carried more than one message");
    // The follower's commands joined the leader's lane rather than going to Raft alone.
    let merged = c.metric(leader, "corral_enqueue_forwarded_groups_total");
    assert!(merged.is_some_and(|m| m > 0.0), "{merged:?}");

    let same: Vec<Value> = std::thread::scope(|s| {
        let c = &c;
        let handles: Vec<_> = (0..16u64)
            .map(|t| {
                s.spawn(move || {
                    let node = if t % 2 == 0 { leader } else { follower };
                    let (code, v) = post(c, node, "burst", Some("race-1"), "same");
                    assert_eq!(code, 202, "{v}");
                    v
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = same.iter().filter(|v| v["duplicate"] == false).count();
    assert_eq!(first, 1, "exactly one stored: {same:?}");
    assert!(same.iter().all(|v| v["id"] == same[0]["id"]), "{same:?}");
    assert_eq!(stats(&c, leader, "burst")["depth"], n as u64 + 1);
}
