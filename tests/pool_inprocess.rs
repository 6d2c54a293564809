//! The tenant pool in-process against in-process emulated tenants: ejection and readmission
//! under load, draining, latency-aware shares, token refresh and the CSRF dance.
//!
//! Every wait polls a condition against a deadline; load loops run for a bounded count or
//! until told to stop, never to synchronise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral::emulator::{spawn_tenant, TenantConfig, TenantDescription, TenantHandle};
use corral::pool::health::Status;
use corral::pool::{Pool, PoolError, PoolOptions, Selector, TenantRequest};
use reqwest::Method;
use serde_json::{json, Value};

fn pool() -> Arc<Pool> {
    Pool::new(&[7; 32], PoolOptions::default())
}

async fn tenant(cfg: TenantConfig) -> (TenantHandle, TenantDescription) {
    let h = spawn_tenant(cfg).await.expect("spawn tenant");
    let d = h.description();
    (h, d)
}

/// Registers a tenant from its emulator JSON line, with `extra` fields merged in.
fn register(pool: &Arc<Pool>, d: &TenantDescription, extra: Value, revision: u64) {
    let mut body = serde_json::to_value(d).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (spec, creds) =
        corral::pool::spec::parse_tenant(&d.name, &serde_json::to_vec(&body).unwrap()).unwrap();
    pool.upsert(&d.name, spec, Ok(creds), revision);
}

async fn chaos(d: &TenantDescription, body: Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/chaos", d.control_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn control_post(d: &TenantDescription, path: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", d.control_url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

async fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(pool: &Pool, name: &str) -> Status {
    pool.stats(name)
        .map(|s| s.status)
        .unwrap_or(Status::Unknown)
}

fn echo() -> TenantRequest {
    TenantRequest::new(Method::POST, "/http/echo").body("hello")
}

type Picks = Arc<Mutex<Vec<(Instant, String)>>>;

/// Background callers through the pool, recording which tenant each pick chose and when.
fn load(pool: &Arc<Pool>, workers: usize) -> (Picks, Arc<std::sync::atomic::AtomicBool>) {
    let picks: Picks = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..workers {
        let (pool, picks, stop) = (pool.clone(), picks.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let lease = match pool.pick(&Selector::default()) {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                picks
                    .lock()
                    .unwrap()
                    .push((Instant::now(), lease.tenant().to_string()));
                let req = TenantRequest {
                    timeout: Some(Duration::from_secs(2)),
                    ..echo()
                };
                match pool.runtime_request(&lease, &req).await {
                    Ok(r) => lease.complete(corral::pool::Outcome::Status(r.status)),
                    Err(e) => lease.complete(e.outcome()),
                }
            }
        });
    }
    (picks, stop)
}

/// A tenant switched down under load is ejected within 3 s and gets no pick afterwards; once
/// it is back up it is readmitted and picked again (slow start lets it in gradually).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_tenant_is_ejected_and_readmitted() {
    let pool = pool();
    let (_h1, d1) = tenant(TenantConfig::new("k1")).await;
    let (_h2, d2) = tenant(TenantConfig::new("k2")).await;
    register(&pool, &d1, json!({}), 1);
    register(&pool, &d2, json!({}), 1);
    wait_for(Duration::from_secs(5), "both healthy", || {
        status(&pool, "k1") == Status::Healthy && status(&pool, "k2") == Status::Healthy
    })
    .await;
    let (picks, stop) = load(&pool, 6);
    wait_for(Duration::from_secs(5), "load on both", || {
        let p = picks.lock().unwrap();
        p.iter().any(|(_, t)| t == "k1") && p.iter().any(|(_, t)| t == "k2")
    })
    .await;

    chaos(&d1, json!({"down": true})).await;
    let took = wait_for(Duration::from_secs(3), "k1 ejected", || {
        status(&pool, "k1") == Status::Unhealthy
    })
    .await;
    let ejected_at = Instant::now();
    println!(
        "ejected after {took:?}: {}",
        pool.stats("k1").unwrap().reason
    );
    let before = picks.lock().unwrap().len();
    wait_for(Duration::from_secs(5), "more load after ejection", || {
        picks.lock().unwrap().len() > before + 200
    })
    .await;
    assert!(
        !picks
            .lock()
            .unwrap()
            .iter()
            .any(|(at, t)| t == "k1" && *at > ejected_at),
        "an ejected tenant was picked"
    );

    chaos(&d1, json!({"down": false})).await;
    wait_for(Duration::from_secs(6), "k1 readmitted", || {
        status(&pool, "k1") == Status::Healthy
    })
    .await;
    let readmitted_at = Instant::now();
    wait_for(Duration::from_secs(10), "k1 picked again", || {
        picks
            .lock()
            .unwrap()
            .iter()
            .any(|(at, t)| t == "k1" && *at > readmitted_at)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Draining: calls already out on the tenant finish (200), and no new call goes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_finishes_in_flight_and_gets_no_new_work() {
    let pool = pool();
    let (_h1, d1) = tenant(TenantConfig::new("d1")).await;
    let (_h2, d2) = tenant(TenantConfig::new("d2")).await;
    register(&pool, &d1, json!({}), 1);
    register(&pool, &d2, json!({}), 1);
    wait_for(Duration::from_secs(5), "both healthy", || {
        status(&pool, "d1") == Status::Healthy && status(&pool, "d2") == Status::Healthy
    })
    .await;
    chaos(&d1, json!({"slow_ms": 700})).await;
    let only_d1 = Selector {
        exclude: vec!["d2".into()],
    };
    let mut calls = Vec::new();
    for _ in 0..4 {
        let (pool, sel) = (pool.clone(), only_d1.clone());
        calls.push(tokio::spawn(async move { pool.call(&sel, &echo()).await }));
    }
    wait_for(Duration::from_secs(5), "4 calls in flight on d1", || {
        pool.stats("d1").unwrap().in_flight == 4
    })
    .await;
    register(&pool, &d1, json!({"state": "draining"}), 2);
    for _ in 0..200 {
        let lease = pool.pick(&Selector::default()).unwrap();
        assert_eq!(lease.tenant(), "d2", "a draining tenant was picked");
    }
    match pool.pick(&only_d1) {
        Err(PoolError::NoTenant { reasons }) => assert!(reasons.contains("draining"), "{reasons}"),
        other => panic!(
            "expected NoTenant, got {:?}",
            other.map(|l| l.tenant().to_string())
        ),
    }
    for c in calls {
        let (name, resp) = c.await.unwrap().expect("in-flight call finished");
        assert_eq!((name.as_str(), resp.status), ("d1", 200));
    }
    assert_eq!(pool.stats("d1").unwrap().in_flight, 0);
}

/// A tenant that answers 100 ms slower gets a much smaller share than a fast one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slower_tenant_gets_smaller_share() {
    let pool = pool();
    let (_h1, d1) = tenant(TenantConfig::new("s1")).await;
    let (_h2, d2) = tenant(TenantConfig::new("s2")).await;
    register(&pool, &d1, json!({}), 1);
    register(&pool, &d2, json!({}), 1);
    wait_for(Duration::from_secs(5), "both healthy", || {
        status(&pool, "s1") == Status::Healthy && status(&pool, "s2") == Status::Healthy
    })
    .await;
    chaos(&d1, json!({"slow_ms": 100})).await;
    let counts: Arc<Mutex<[usize; 2]>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (pool, counts) = (pool.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..60 {
                let (name, r) = pool.call(&Selector::default(), &echo()).await.unwrap();
                assert_eq!(r.status, 200);
                counts.lock().unwrap()[(name == "s2") as usize] += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let [slow, fast] = *counts.lock().unwrap();
    println!("slow {slow} fast {fast}");
    assert!(
        slow * 4 < fast,
        "slow tenant share too large: slow {slow}, fast {fast}"
    );
}

/// Tokens are refreshed before they expire (1 s lifetime: several fetches, no 401 retries),
/// and once on a 401 after the tenant invalidated them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_on_expiry_and_on_401() {
    let pool = pool();
    let mut cfg = TenantConfig::new("tok1");
    cfg.token_lifetime_s = 1;
    let (_h1, d1) = tenant(cfg).await;
    let (_h2, d2) = tenant(TenantConfig::new("tok2")).await;
    register(&pool, &d1, json!({}), 1);
    register(&pool, &d2, json!({}), 1);
    wait_for(Duration::from_secs(5), "healthy", || {
        status(&pool, "tok1") == Status::Healthy && status(&pool, "tok2") == Status::Healthy
    })
    .await;
    let only = |n: &str| Selector {
        exclude: vec![if n == "tok1" { "tok2" } else { "tok1" }.into()],
    };
    // Expiry: call for 2.5 s across more than two token lifetimes.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let (_, r) = pool.call(&only("tok1"), &echo()).await.unwrap();
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = pool.stats("tok1").unwrap();
    assert!(s.token_fetches >= 3, "{s:?}");
    assert_eq!(
        s.unauthorized_retries, 0,
        "refresh happened only after a 401: {s:?}"
    );

    // 401: the tenant drops every token; the next call retries once with a new one.
    let (_, r) = pool.call(&only("tok2"), &echo()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(pool.stats("tok2").unwrap().token_fetches, 1);
    control_post(&d2, "/tokens/expire").await;
    let (_, r) = pool.call(&only("tok2"), &echo()).await.unwrap();
    assert_eq!(r.status, 200);
    let s = pool.stats("tok2").unwrap();
    assert_eq!((s.token_fetches, s.unauthorized_retries), (2, 1), "{s:?}");
}

fn user_credential(name: &str) -> TenantRequest {
    TenantRequest::new(Method::POST, "/UserCredentials")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(
                &json!({"Name": name, "Kind": "default", "User": "u", "Password": "p"}),
            )
            .unwrap(),
        )
}

/// Management writes do the CSRF dance: the token and cookies are fetched once and reused;
/// after the tenant drops its sessions, the 403 `X-CSRF-Token: Required` is answered by one
/// refetch and retry. Checked with bearer auth in strict mode and with Basic auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_refetch_on_403() {
    let pool = pool();
    let mut cfg = TenantConfig::new("c1");
    cfg.strict_csrf = true;
    let (_h1, d1) = tenant(cfg).await;
    let (_h2, d2) = tenant(TenantConfig::new("c2")).await;
    register(&pool, &d1, json!({}), 1);
    register(
        &pool,
        &d2,
        json!({"management_auth": {"kind": "basic", "user": d2.basic_user, "password": d2.basic_password}}),
        1,
    );
    for d in [&d1, &d2] {
        let r = pool
            .management_request(&d.name, &user_credential("a"))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let r = pool
            .management_request(&d.name, &user_credential("b"))
            .await
            .unwrap();
        assert_eq!(r.status, 202);
        let s = pool.stats(&d.name).unwrap();
        assert_eq!((s.csrf_fetches, s.csrf_retries), (1, 0), "{s:?}");
        control_post(d, "/csrf/expire").await;
        let r = pool
            .management_request(&d.name, &user_credential("c"))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let s = pool.stats(&d.name).unwrap();
        assert_eq!((s.csrf_fetches, s.csrf_retries), (2, 1), "{s:?}");
        // Reads need no CSRF token.
        let r = pool
            .management_request(
                &d.name,
                &TenantRequest::new(Method::GET, "/UserCredentials"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
}

/// The pool's headroom (what the push dispatcher reads before choosing candidates) is the sum
/// of limit minus in flight over the tenants that can take work: held leases lower it, a
/// draining tenant leaves it, a released lease gives its call back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headroom_counts_free_calls_of_selectable_tenants() {
    let pool = pool();
    let (_h1, d1) = tenant(TenantConfig::new("r1")).await;
    let (_h2, d2) = tenant(TenantConfig::new("r2")).await;
    register(&pool, &d1, json!({"max_in_flight": 3}), 1);
    register(&pool, &d2, json!({"max_in_flight": 3}), 1);
    wait_for(Duration::from_secs(5), "both healthy", || {
        status(&pool, "r1") == Status::Healthy && status(&pool, "r2") == Status::Healthy
    })
    .await;
    assert_eq!(pool.headroom(), 6);
    let first = pool.acquire("r1").expect("r1 has room");
    let _second = pool.acquire("r1").expect("r1 has room");
    assert_eq!(pool.headroom(), 4);
    register(
        &pool,
        &d2,
        json!({"max_in_flight": 3, "state": "draining"}),
        2,
    );
    assert_eq!(pool.headroom(), 1, "a draining tenant takes no new work");
    drop(first);
    assert_eq!(pool.headroom(), 2);
}
