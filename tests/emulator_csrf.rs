//! The X-CSRF-Token dance on `/api/v1`: fetch returns a token and session cookies; Basic-auth
//! writes without a matching token+cookie get 403 `X-CSRF-Token: Required`; bearer writes are
//! exempt unless strict mode is on; expiring sessions forces a refetch.

mod emulator_support;

use corral::emulator::TenantConfig;
use emulator_support::*;
use serde_json::json;

fn cred(name: &str) -> serde_json::Value {
    json!({"Name": name, "Kind": "default", "User": "u", "Password": "p"})
}

/// GET and HEAD with `X-CSRF-Token: Fetch` give 200, a token, and JSESSIONID + __VCAP_ID__ cookies.
#[tokio::test]
async fn fetch_returns_token_and_session_cookies() {
    let (_h, d) = start(TenantConfig::new("csrf1")).await;
    let c = client();
    for head in [false, true] {
        let rb = if head {
            c.head(format!("{}/", d.api_url))
        } else {
            c.get(format!("{}/", d.api_url))
        };
        let r = rb
            .basic_auth(&d.basic_user, Some(&d.basic_password))
            .header("X-CSRF-Token", "Fetch")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers()["x-csrf-token"].is_empty());
        let cookies: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(cookies.iter().any(|c| c.starts_with("JSESSIONID=")));
        assert!(cookies.iter().any(|c| c.starts_with("__VCAP_ID__=")));
    }
}

/// A Basic-auth POST without a token, or with a token but without the session cookie, gets 403
/// with `X-CSRF-Token: Required`; with both it succeeds (202).
#[tokio::test]
async fn basic_auth_write_needs_token_and_cookie() {
    let (_h, d) = start(TenantConfig::new("csrf2")).await;
    let c = client();
    let url = format!("{}/UserCredentials", d.api_url);
    let r = c
        .post(&url)
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .json(&cred("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-csrf-token"], "Required");

    let f = c
        .get(format!("{}/", d.api_url))
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .header("X-CSRF-Token", "Fetch")
        .send()
        .await
        .unwrap();
    let tok = f.headers()["x-csrf-token"].to_str().unwrap().to_string();
    let cookie = f
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let r = c
        .post(&url)
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .header("X-CSRF-Token", &tok)
        .json(&cred("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "token without its session cookie is rejected"
    );
    assert_eq!(r.headers()["x-csrf-token"], "Required");
    let r = c
        .post(&url)
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .header("X-CSRF-Token", "WRONG")
        .header("Cookie", &cookie)
        .json(&cred("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "wrong token is rejected");
    let r = c
        .post(&url)
        .basic_auth(&d.basic_user, Some(&d.basic_password))
        .header("X-CSRF-Token", &tok)
        .header("Cookie", &cookie)
        .json(&cred("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// Bearer-token writes skip CSRF by default (observed behaviour) but need it in strict mode.
#[tokio::test]
async fn bearer_writes_exempt_unless_strict() {
    let (_h, d) = start(TenantConfig::new("csrf3")).await;
    let c = client();
    let tok = token(&c, &d).await;
    let r = c
        .post(format!("{}/UserCredentials", d.api_url))
        .bearer_auth(&tok)
        .json(&cred("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let mut cfg = TenantConfig::new("csrf4");
    cfg.strict_csrf = true;
    let (_h2, d2) = start(cfg).await;
    let tok2 = token(&c, &d2).await;
    let url = format!("{}/UserCredentials", d2.api_url);
    let r = c
        .post(&url)
        .bearer_auth(&tok2)
        .json(&cred("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-csrf-token"], "Required");
    let (ct, cookie) = csrf_fetch(&c, &d2, &tok2).await;
    let r = c
        .post(&url)
        .bearer_auth(&tok2)
        .header("X-CSRF-Token", ct)
        .header("Cookie", cookie)
        .json(&cred("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// Expiring CSRF sessions makes a cached token fail with 403 Required; a refetch then works.
#[tokio::test]
async fn expired_session_forces_refetch() {
    let mut cfg = TenantConfig::new("csrf5");
    cfg.strict_csrf = true;
    let (_h, d) = start(cfg).await;
    let c = client();
    let tok = token(&c, &d).await;
    let (ct, cookie) = csrf_fetch(&c, &d, &tok).await;
    c.post(format!("{}/csrf/expire", d.control_url))
        .send()
        .await
        .unwrap();
    let url = format!("{}/UserCredentials", d.api_url);
    let r = c
        .post(&url)
        .bearer_auth(&tok)
        .header("X-CSRF-Token", &ct)
        .header("Cookie", &cookie)
        .json(&cred("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-csrf-token"], "Required");
    let (ct, cookie) = csrf_fetch(&c, &d, &tok).await;
    let r = c
        .post(&url)
        .bearer_auth(&tok)
        .header("X-CSRF-Token", &ct)
        .header("Cookie", &cookie)
        .json(&cred("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
