//! Shared helpers for the emulator integration tests: spawning tenants on ephemeral ports,
//! fetching tokens, the CSRF fetch, and polling with deadlines instead of sleeping.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use corral::emulator::{spawn_tenant, TenantConfig, TenantDescription, TenantHandle};
use serde_json::Value;

/// Default deadline for polls, ms.
pub const POLL_DEADLINE_MS: u64 = 10_000;

pub async fn start(cfg: TenantConfig) -> (TenantHandle, TenantDescription) {
    let h = spawn_tenant(cfg).await.expect("spawn tenant");
    let d = h.description();
    (h, d)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub async fn token(c: &reqwest::Client, d: &TenantDescription) -> String {
    let r = c
        .post(format!("{}?grant_type=client_credentials", d.token_url))
        .basic_auth(&d.client_id, Some(&d.client_secret))
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("token json");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// CSRF fetch with HEAD; returns (token, cookie header value).
pub async fn csrf_fetch(
    c: &reqwest::Client,
    d: &TenantDescription,
    bearer: &str,
) -> (String, String) {
    let r = c
        .head(format!("{}/", d.api_url))
        .bearer_auth(bearer)
        .header("X-CSRF-Token", "Fetch")
        .send()
        .await
        .expect("csrf fetch");
    assert_eq!(r.status(), 200);
    let tok = r.headers()["x-csrf-token"]
        .to_str()
        .expect("token")
        .to_string();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("; ");
    (tok, cookie)
}

/// Poll `f` until it returns `Some`, or panic after `deadline_ms`.
pub async fn poll<T, F, Fut>(what: &str, deadline_ms: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_millis(deadline_ms);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn get_json(c: &reqwest::Client, url: &str, bearer: &str) -> (u16, Value) {
    let r = c.get(url).bearer_auth(bearer).send().await.expect("get");
    let s = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (s, v)
}
