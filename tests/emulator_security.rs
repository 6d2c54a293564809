//! Security Content on an emulated tenant: CPI's status codes, validation, secrets never echoed,
//! DEPLOYING -> DEPLOYED after the deploy delay, and the control read-back of deployed values.

mod emulator_support;

use corral::emulator::TenantConfig;
use emulator_support::*;
use serde_json::{json, Value};

async fn setup(
    delay_ms: u64,
) -> (
    corral::emulator::TenantHandle,
    corral::emulator::TenantDescription,
    reqwest::Client,
    String,
) {
    let mut cfg = TenantConfig::new("sec");
    cfg.deploy_delay_ms = delay_ms;
    let (h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    (h, d, c, tok)
}

/// UserCredentials: POST 202, duplicate 409, PUT 202, PUT missing 409, PUT key mismatch 400,
/// DELETE 202, DELETE missing 404, and GET always shows `Password: null`.
#[tokio::test]
async fn user_credentials_status_codes() {
    let (_h, d, c, tok) = setup(0).await;
    let set = format!("{}/UserCredentials", d.api_url);
    let one = |n: &str| format!("{}/UserCredentials('{}')", d.api_url, n);
    let body = json!({"Name": "CPI-AUTH-SHARED", "Kind": "default", "User": "svc", "Password": "pw1", "Description": "d"});
    let r = c
        .post(&set)
        .bearer_auth(&tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(&set)
        .bearer_auth(&tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["message"]["value"],
        "Entity with specified name already exists."
    );

    let r = c.put(one("CPI-AUTH-SHARED")).bearer_auth(&tok).json(&json!({"Name": "CPI-AUTH-SHARED", "Kind": "default", "User": "svc", "Password": "pw2"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .put(one("missing"))
        .bearer_auth(&tok)
        .json(&json!({"Name": "missing", "Kind": "default"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = c
        .put(one("CPI-AUTH-SHARED"))
        .bearer_auth(&tok)
        .json(&json!({"Name": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["message"]["value"],
        "Entity key specified in URI does not match to name from payload."
    );

    let (s, v) = get_json(&c, &one("CPI-AUTH-SHARED"), &tok).await;
    assert_eq!(s, 200);
    assert_eq!(v["d"]["User"], "svc");
    assert!(v["d"]["Password"].is_null());
    assert_eq!(
        v["d"]["__metadata"]["type"],
        "com.sap.hci.api.UserCredential"
    );
    let (_, list) = get_json(&c, &set, &tok).await;
    assert!(list["d"]["results"][0]["Password"].is_null());
    assert!(!list.to_string().contains("pw2"), "password never echoed");

    let r = c
        .delete(one("CPI-AUTH-SHARED"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .delete(one("CPI-AUTH-SHARED"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, _) = get_json(&c, &one("CPI-AUTH-SHARED"), &tok).await;
    assert_eq!(s, 404);
}

/// Validation as CPI does it: unknown Kind 500, successfactors without CompanyId 500, missing Name 400,
/// unknown property 400.
#[tokio::test]
async fn user_credentials_validation() {
    let (_h, d, c, tok) = setup(0).await;
    let set = format!("{}/UserCredentials", d.api_url);
    for (body, code) in [
        (
            json!({"Name": "a", "Kind": "weird", "User": "u", "Password": "p"}),
            500,
        ),
        (
            json!({"Name": "a", "Kind": "successfactors", "User": "u", "Password": "p"}),
            500,
        ),
        (
            json!({"Kind": "default", "User": "u", "Password": "p"}),
            400,
        ),
        (json!({"Name": "a", "Kind": "default", "Bogus": "x"}), 400),
        (
            json!({"Name": "a", "Kind": "successfactors", "User": "u", "Password": "p", "CompanyId": "c1"}),
            202,
        ),
    ] {
        let r = c
            .post(&set)
            .bearer_auth(&tok)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code, "{body}");
    }
}

/// Keys with quotes use the OData `''` escape and percent-encoding.
#[tokio::test]
async fn quoted_keys_round_trip() {
    let (_h, d, c, tok) = setup(0).await;
    // Names only allow [A-Za-z0-9_.-]; the quote appears in the *escaped* URL form of a lookup.
    let r = c
        .get(format!("{}/UserCredentials('it''s')", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{}/UserCredentials('unterminated)", d.api_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// After a 202 the descriptor shows DEPLOYING, then DEPLOYED once the deploy delay passed; the
/// control API returns the deployed plaintext only from then on.
#[tokio::test]
async fn deploy_delay_then_deployed_and_readable_via_control() {
    let (_h, d, c, tok) = setup(300).await;
    let r = c
        .post(format!("{}/UserCredentials", d.api_url))
        .bearer_auth(&tok)
        .json(&json!({"Name": "shared", "Kind": "default", "User": "shared", "Password": "v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, v) = get_json(
        &c,
        &format!("{}/UserCredentials('shared')", d.api_url),
        &tok,
    )
    .await;
    assert_eq!(v["d"]["SecurityArtifactDescriptor"]["Status"], "DEPLOYING");
    let ctl: Value = c
        .get(format!("{}/secrets/UserCredentials/shared", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ctl["deployed"].is_null());
    poll("DEPLOYED", POLL_DEADLINE_MS, || {
        let c = c.clone();
        let url = format!("{}/UserCredentials('shared')", d.api_url);
        let tok = tok.clone();
        async move {
            let (_, v) = get_json(&c, &url, &tok).await;
            (v["d"]["SecurityArtifactDescriptor"]["Status"] == "DEPLOYED").then_some(())
        }
    })
    .await;
    let ctl: Value = c
        .get(format!("{}/secrets/UserCredentials/shared", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ctl["deployed"]["Password"], "v1");
    assert_eq!(ctl["status"], "DEPLOYED");
}

/// Chaos deploy_stuck keeps a pushed credential in DEPLOYING until it is switched off.
#[tokio::test]
async fn deploy_stuck_keeps_deploying() {
    let (_h, d, c, tok) = setup(0).await;
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"deploy_stuck": true}))
        .send()
        .await
        .unwrap();
    c.post(format!("{}/SecureParameters", d.api_url))
        .bearer_auth(&tok)
        .json(&json!({"Name": "sp", "SecureParam": "s"}))
        .send()
        .await
        .unwrap();
    let (_, v) = get_json(&c, &format!("{}/SecureParameters('sp')", d.api_url), &tok).await;
    assert_eq!(v["d"]["Status"], "DEPLOYING");
    c.put(format!("{}/chaos", d.control_url))
        .json(&json!({"deploy_stuck": false}))
        .send()
        .await
        .unwrap();
    let (_, v) = get_json(&c, &format!("{}/SecureParameters('sp')", d.api_url), &tok).await;
    assert_eq!(v["d"]["Status"], "DEPLOYED");
}

/// SecureParameters: 202/409/409/400/202/404, the secret is never echoed, `$filter`/`$select` get 501.
#[tokio::test]
async fn secure_parameters_status_codes() {
    let (_h, d, c, tok) = setup(0).await;
    let set = format!("{}/SecureParameters", d.api_url);
    let one = format!("{}/SecureParameters('sp1')", d.api_url);
    assert_eq!(
        c.post(&set)
            .bearer_auth(&tok)
            .json(&json!({"Name": "sp1", "SecureParam": "top"}))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.post(&set)
            .bearer_auth(&tok)
            .json(&json!({"Name": "sp1", "SecureParam": "top"}))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        c.post(&set)
            .bearer_auth(&tok)
            .json(&json!({"Name": "sp2"}))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        c.put(format!("{}/SecureParameters('nope')", d.api_url))
            .bearer_auth(&tok)
            .json(&json!({"SecureParam": "x"}))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        c.put(&one)
            .bearer_auth(&tok)
            .json(&json!({"Name": "x", "SecureParam": "x"}))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        c.put(&one)
            .bearer_auth(&tok)
            .json(&json!({"Name": "sp1", "SecureParam": "new"}))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let (_, v) = get_json(&c, &one, &tok).await;
    assert!(v["d"]["SecureParam"].is_null());
    assert!(v["d"]["DeployedOn"].as_str().unwrap().starts_with("/Date("));
    let r = c
        .get(format!("{set}?$filter=Name eq 'sp1'"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let r = c
        .get(format!("{set}?$select=Name"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let ctl: Value = c
        .get(format!("{}/secrets/SecureParameters/sp1", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ctl["deployed"]["SecureParam"], "new");
    assert_eq!(
        c.delete(&one)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.delete(&one)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// OAuth2ClientCredentials: same codes, defaults for ClientAuthentication, ClientSecret never echoed.
#[tokio::test]
async fn oauth2_client_credentials() {
    let (_h, d, c, tok) = setup(0).await;
    let set = format!("{}/OAuth2ClientCredentials", d.api_url);
    let body = json!({"Name": "o1", "TokenServiceUrl": "https://x/oauth/token", "ClientId": "cid", "ClientSecret": "sec"});
    assert_eq!(
        c.post(&set)
            .bearer_auth(&tok)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.post(&set)
            .bearer_auth(&tok)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        c.post(&set).bearer_auth(&tok).json(&json!({"Name": "o2", "TokenServiceUrl": "u", "ClientId": "c", "ClientSecret": "s", "ClientAuthentication": "cookie"})).send().await.unwrap().status(),
        400
    );
    let (_, v) = get_json(&c, &format!("{set}('o1')"), &tok).await;
    assert_eq!(v["d"]["ClientAuthentication"], "body");
    assert!(v["d"]["ClientSecret"].is_null());
    assert_eq!(v["d"]["SecurityArtifactDescriptor"]["Status"], "DEPLOYED");
    assert_eq!(
        c.put(format!("{set}('zz')"))
            .bearer_auth(&tok)
            .json(&json!({"ClientSecret": "x"}))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        c.delete(format!("{set}('o1')"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
}

/// The upsert a secret pusher does (GET 404 -> POST; else PUT) works with Basic + CSRF end to end.
#[tokio::test]
async fn upsert_with_basic_and_csrf() {
    let (_h, d, c, _tok) = setup(0).await;
    let f = c
        .head(format!("{}/", d.api_url))
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .header("X-CSRF-Token", "Fetch")
        .send()
        .await
        .unwrap();
    let ct = f.headers()["x-csrf-token"].to_str().unwrap().to_string();
    let cookie: String = f
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let one = format!("{}/UserCredentials('up')", d.api_url);
    let r = c
        .get(&one)
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for (i, pw) in ["a", "b"].iter().enumerate() {
        let body = json!({"Name": "up", "Kind": "default", "User": "up", "Password": pw});
        let rb = if i == 0 {
            c.post(format!("{}/UserCredentials", d.api_url))
        } else {
            c.put(&one)
        };
        let r = rb
            .basic_auth(&d.basic_user, Some(&d.basic_password))
            .header("X-CSRF-Token", &ct)
            .header("Cookie", &cookie)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let ctl: Value = c
        .get(format!("{}/secrets/UserCredentials/up", d.control_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ctl["deployed"]["Password"], "b");
}
