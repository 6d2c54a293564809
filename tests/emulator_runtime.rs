//! The runtime host of an emulated tenant: routing `/http/...` case-insensitively, the flow
//! behaviours (echo, status, delay, fail with CPI's text, overload), the worker-slot 503, the
//! idempotent process call with per-message-id counters (exactly-once across a pool), and the
//! chaos switches down / slow / runtime errors.

mod emulator_support;

use std::time::{Duration, Instant};

use corral::emulator::{FlowSpec, TenantConfig};
use emulator_support::*;
use serde_json::{json, Value};

/// Echo returns the body and `SAP_MessageProcessingLogID`; paths match case-insensitively;
/// an address nobody deployed gets 404.
#[tokio::test]
async fn echo_routing_and_404() {
    let (_h, d) = start(TenantConfig::new("rt1")).await;
    let c = client();
    let tok = token(&c, &d).await;
    let r = c
        .post(format!("{}/http/ECHO", d.runtime_url))
        .bearer_auth(&tok)
        .header("content-type", "application/json")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mpl = r.headers()["sap_messageprocessinglogid"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(mpl.len(), 28);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), "{\"a\":1}");
    let r = c
        .post(format!("{}/http/nothing-here", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Flows registered through the control API: fixed status, fail (500 with CPI's exact text and the
/// MPL id), overload (503), wildcard paths; deleting a flow gives 404 again.
#[tokio::test]
async fn control_registered_behaviours() {
    let (_h, d) = start(TenantConfig::new("rt2")).await;
    let c = client();
    let tok = token(&c, &d).await;
    let put = |name: &str, spec: Value| {
        let c = c.clone();
        let url = format!("{}/flows/{name}", d.control_url);
        async move {
            c.put(url)
                .json(&spec)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        put(
            "teapot",
            json!({"path": "/teapot", "behaviour": "status", "status": 418})
        )
        .await,
        201
    );
    assert_eq!(
        put(
            "broken",
            json!({"path": "/http/broken", "behaviour": "fail", "message": "boom"})
        )
        .await,
        201
    );
    assert_eq!(
        put("busy", json!({"path": "/busy", "behaviour": "overload"})).await,
        201
    );
    assert_eq!(
        put("wild", json!({"path": "/wild/*", "behaviour": "echo"})).await,
        201
    );
    assert_eq!(
        put("bad", json!({"path": "/a b", "behaviour": "echo"})).await,
        400
    );

    let r = c
        .post(format!("{}/http/teapot", d.runtime_url))
        .bearer_auth(&tok)
        .body("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    let r = c
        .post(format!("{}/http/broken", d.runtime_url))
        .bearer_auth(&tok)
        .body("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let id = r.headers()["sap_messageprocessinglogid"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        r.text().await.unwrap(),
        format!("An internal server error occured: boom. The MPL ID for the failed message is : {id}\nFor more details please check tail log.")
    );
    let r = c
        .post(format!("{}/http/busy", d.runtime_url))
        .bearer_auth(&tok)
        .body("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = c
        .post(format!("{}/http/Wild/deep/er", d.runtime_url))
        .bearer_auth(&tok)
        .body("w")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.delete(format!("{}/flows/teapot", d.control_url))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let r = c
        .post(format!("{}/http/teapot", d.runtime_url))
        .bearer_auth(&tok)
        .body("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// With one worker slot busy in a slow flow, a second concurrent request gets 503 and is counted
/// as rejected; once the slot frees, requests succeed again.
#[tokio::test]
async fn worker_slot_cap_gives_503() {
    let mut cfg = TenantConfig::new("rt3");
    cfg.worker_slots = 1;
    let mut slow = FlowSpec::echo("/slow");
    slow.behaviour = corral::emulator::Behaviour::Delay;
    slow.delay_ms = Some(1500);
    cfg.flows.push(("slow".into(), slow));
    let (h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let first = {
        let c = c.clone();
        let url = format!("{}/http/slow", d.runtime_url);
        let tok = tok.clone();
        tokio::spawn(async move {
            c.post(url)
                .bearer_auth(tok)
                .body("1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Wait until the first request holds the only slot, then try a second.
    poll("first run holds the slot", POLL_DEADLINE_MS, || {
        let t = h.tenant().clone();
        async move { (t.busy_worker_slots() == 1).then_some(()) }
    })
    .await;
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(first.await.unwrap(), 200);
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = c
        .get(format!("{}/counters", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["totals"]["rejected"], 1);
}

/// Idempotent process call: the second request with the same X-Message-ID is skipped; counters
/// show received 2, processed 1, duplicates_skipped 1; reset clears them.
#[tokio::test]
async fn idempotent_skip_and_counters() {
    let mut cfg = TenantConfig::new("rt4");
    let mut orders = FlowSpec::echo("/orders");
    orders.idempotent = true;
    cfg.flows.push(("orders".into(), orders));
    let (_h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    for _ in 0..2 {
        let r = c
            .post(format!("{}/http/orders", d.runtime_url))
            .bearer_auth(&tok)
            .header("X-Message-ID", "m-1")
            .body("o")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let v: Value = c
        .get(format!("{}/counters/m-1", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["counters"],
        json!({"received": 2, "processed": 1, "duplicates_skipped": 1, "failed": 0, "rejected": 0})
    );
    assert_eq!(
        c.post(format!("{}/reset", d.control_url))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let v: Value = c
        .get(format!("{}/counters/m-1", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["counters"]["received"], 0);
}

/// Concurrent duplicates of one message id on an idempotent flow are processed exactly once; a
/// non-idempotent flow processes each.
#[tokio::test]
async fn concurrent_duplicates_processed_once() {
    let mut cfg = TenantConfig::new("rt5");
    let mut orders = FlowSpec::echo("/orders");
    orders.idempotent = true;
    orders.behaviour = corral::emulator::Behaviour::Delay;
    orders.delay_ms = Some(50);
    cfg.flows.push(("orders".into(), orders));
    let (_h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        let url = format!("{}/http/orders", d.runtime_url);
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .bearer_auth(tok)
                .header("X-Message-ID", "dup")
                .body("o")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let v: Value = c
        .get(format!("{}/counters/dup", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["counters"]["processed"], 1);
    assert_eq!(v["counters"]["duplicates_skipped"], 7);
}

/// Exactly-once across a pool: the same message delivered to two tenants with idempotent flows is
/// processed once per tenant, so the pool-wide sum tells the caller how many deliveries ran.
#[tokio::test]
async fn counters_sum_across_pool() {
    let mut tenants = Vec::new();
    for i in 0..2 {
        let mut cfg = TenantConfig::new(format!("pool{i}"));
        let mut orders = FlowSpec::echo("/orders");
        orders.idempotent = true;
        cfg.flows.push(("orders".into(), orders));
        tenants.push(start(cfg).await);
    }
    let c = client();
    // Deliver m-a to tenant 0 twice (a retry), m-b to tenant 1 once.
    let (_, d0) = &tenants[0];
    let (_, d1) = &tenants[1];
    let t0 = token(&c, d0).await;
    let t1 = token(&c, d1).await;
    for (d, t, id) in [(d0, &t0, "m-a"), (d0, &t0, "m-a"), (d1, &t1, "m-b")] {
        c.post(format!("{}/http/orders", d.runtime_url))
            .bearer_auth(t)
            .header("X-Message-ID", id)
            .body("x")
            .send()
            .await
            .unwrap();
    }
    let mut sum = 0;
    for (_, d) in &tenants {
        let v: Value = c
            .get(format!("{}/counters", d.control_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sum += v["messages"]["m-a"]["processed"].as_u64().unwrap_or(0);
    }
    assert_eq!(sum, 1);
}

/// Chaos down: connections are refused until switched up, then the same port serves again.
#[tokio::test]
async fn down_refuses_connections_and_comes_back() {
    let (h, d) = start(TenantConfig::new("rt6")).await;
    let c = client();
    let tok = token(&c, &d).await;
    let v: Value = c
        .put(format!("{}/chaos", d.control_url))
        .json(&json!({"down": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["down"], true);
    let err = std::net::TcpStream::connect(h.addr()).expect_err("connection must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let fresh = client();
    assert!(fresh
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .is_err());
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"down": false}))
        .send()
        .await
        .unwrap();
    let r = fresh
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "state (tokens) survives down/up");
}

/// Chaos slow adds latency; runtime error rate 1.0 fails every call with the chosen status.
#[tokio::test]
async fn slow_and_runtime_errors() {
    let (_h, d) = start(TenantConfig::new("rt7")).await;
    let c = client();
    let tok = token(&c, &d).await;
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"slow_ms": 300}))
        .send()
        .await
        .unwrap();
    let t0 = Instant::now();
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"slow_ms": 0, "runtime_error_rate": 1.0, "runtime_error_status": 502}))
        .send()
        .await
        .unwrap();
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"runtime_error_rate": 0.0, "api_error_rate": 1.0, "api_error_status": 429}))
        .send()
        .await
        .unwrap();
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/UserCredentials", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

/// A flow run completes even when the caller disconnects mid-flight (as on a real worker).
#[tokio::test]
async fn run_survives_client_disconnect() {
    let mut cfg = TenantConfig::new("rt8");
    let mut slow = FlowSpec::echo("/slow");
    slow.behaviour = corral::emulator::Behaviour::Delay;
    slow.delay_ms = Some(400);
    cfg.flows.push(("slow".into(), slow));
    let (_h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/http/slow", d.runtime_url))
        .bearer_auth(&tok)
        .header("X-Message-ID", "gone")
        .body("x")
        .send()
        .await;
    assert!(r.is_err());
    poll("processed after disconnect", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let url = format!("{}/counters/gone", d.control_url);
        async move {
            let v: Value = c.get(url).send().await.ok()?.json().await.ok()?;
            (v["counters"]["processed"] == 1).then_some(())
        }
    })
    .await;
}
