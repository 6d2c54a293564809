//! Authentication on an emulated tenant: the token endpoint's three request shapes, 401 on bad
//! credentials and on expired tokens (API and runtime), Basic auth, and 403 for missing roles.

mod emulator_support;

use corral::emulator::TenantConfig;
use emulator_support::*;
use serde_json::{json, Value};

/// The token endpoint accepts grant in the query with Basic client auth (Logic App), a form body
/// with client_id/client_secret (figaf), and GET with Basic (cikraft); the response has CPI's shape.
#[tokio::test]
async fn token_endpoint_accepts_all_three_forms() {
    let (_h, d) = start(TenantConfig::new("auth1")).await;
    let c = client();
    let r = c
        .post(format!("{}?grant_type=client_credentials", d.token_url))
        .basic_auth(&d.client_id, Some(&d.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "bearer");
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    assert!(v["scope"].as_str().unwrap().contains("ESBMessaging.send"));
    assert!(v["jti"].is_string());

    let r = c
        .post(&d.token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", ""),
            ("client_id", d.client_id.as_str()),
            ("client_secret", d.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = c
        .get(format!("{}?grant_type=client_credentials", d.token_url))
        .basic_auth(&d.client_id, Some(&d.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tok = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .get(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// Wrong client secret gets 401 from the token endpoint; no credentials gets 401 from API and runtime.
#[tokio::test]
async fn bad_credentials_get_401() {
    let (_h, d) = start(TenantConfig::new("auth2")).await;
    let c = client();
    let r = c
        .post(format!("{}?grant_type=client_credentials", d.token_url))
        .basic_auth(&d.client_id, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/UserCredentials", d.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/UserCredentials", d.api_url))
        .basic_auth(&d.basic_user, Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A token stops working once its lifetime has passed: 401 on both API and runtime.
#[tokio::test]
async fn tokens_expire_and_then_get_401() {
    let mut cfg = TenantConfig::new("auth3");
    cfg.token_lifetime_s = 1;
    let (_h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let r = c
        .get(format!("{}/UserCredentials", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    poll("token expiry on the API", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let url = format!("{}/UserCredentials", d.api_url);
        let tok = tok.clone();
        async move {
            let r = c.get(url).bearer_auth(tok).send().await.ok()?;
            (r.status() == 401).then_some(())
        }
    })
    .await;
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
}

/// The control API can expire all tokens at once (to exercise clients' refetch-on-401).
#[tokio::test]
async fn control_expires_tokens() {
    let (_h, d) = start(TenantConfig::new("auth4")).await;
    let c = client();
    let tok = token(&c, &d).await;
    let r = c
        .post(format!("{}/tokens/expire", d.control_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{}/UserCredentials", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Basic auth with the tenant user, and with clientid:clientsecret, is accepted on the API.
#[tokio::test]
async fn basic_auth_accepted_on_api() {
    let (_h, d) = start(TenantConfig::new("auth5")).await;
    let c = client();
    for (u, p) in [
        (&d.basic_user, &d.basic_password),
        (&d.client_id, &d.client_secret),
    ] {
        let r = c
            .get(format!("{}/UserCredentials", d.api_url))
            .basic_auth(u, Some(p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A client without ESBMessaging.send gets 403 on the runtime; without MonitoringDataRead, 403 on MPLs.
#[tokio::test]
async fn missing_roles_get_403() {
    let (_h, d) = start(TenantConfig::new("auth6")).await;
    let c = client();
    let r = c
        .put(format!("{}/clients/limited", d.control_url))
        .json(&json!({"client_secret": "s3cret", "roles": ["WorkspacePackagesRead"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .post(format!("{}?grant_type=client_credentials", d.token_url))
        .basic_auth("limited", Some("s3cret"))
        .send()
        .await
        .unwrap();
    let tok = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{}/http/echo", d.runtime_url))
        .bearer_auth(&tok)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/MessageProcessingLogs", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Chaos "token server down": the token endpoint answers 503 until switched back.
#[tokio::test]
async fn token_server_down_switch() {
    let (_h, d) = start(TenantConfig::new("auth7")).await;
    let c = client();
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"token_down": true}))
        .send()
        .await
        .unwrap();
    let r = c
        .post(format!("{}?grant_type=client_credentials", d.token_url))
        .basic_auth(&d.client_id, Some(&d.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"token_down": false}))
        .send()
        .await
        .unwrap();
    token(&c, &d).await;
}
