//! Shared secrets on real three-node clusters with emulated CPI tenants: versions reach every
//! tenant (read back through the emulator's control API), rollback pushes the older value, a
//! tenant that was down or registered later catches up, a leader killed mid-push does not lose
//! the push, strict CSRF is handled, reveal needs the reveal token and is audited, and no
//! plaintext value ever lands in a data dir.

mod common;

use std::time::Duration;

use common::{contains, files_under, poll, Cluster};
use corral::emulator::{spawn_tenant, TenantConfig, TenantDescription, TenantHandle};
use serde_json::{json, Value};

const PUSH_TIMEOUT: Duration = Duration::from_secs(40);

fn tenants(rt: &tokio::runtime::Runtime, cfgs: Vec<TenantConfig>) -> Vec<TenantHandle> {
    cfgs.into_iter()
        .map(|c| rt.block_on(spawn_tenant(c)).unwrap())
        .collect()
}

fn register(c: &Cluster, via: u64, d: &TenantDescription) {
    let r = c
        .http
        .put(c.url(via, &format!("/admin/tenants/{}", d.name)))
        .bearer_auth(&c.token)
        .json(d)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
}

/// PUT a secret through node `via`; returns (status, body).
fn put_secret(c: &Cluster, via: u64, name: &str, body: &Value) -> (u16, Value) {
    let r = c
        .http
        .put(c.url(via, &format!("/admin/secrets/{name}")))
        .bearer_auth(&c.token)
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn post(c: &Cluster, via: u64, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = c
        .http
        .post(c.url(via, path))
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn user_secret(password: &str) -> Value {
    json!({"kind": "user_credential", "value": {"user": "svc-shared", "password": password}})
}

/// The deployed properties of an artifact on an emulated tenant, once nothing is pending.
fn deployed(c: &Cluster, d: &TenantDescription, set: &str, name: &str) -> Option<Value> {
    let v: Value = c
        .http
        .get(format!("{}/secrets/{set}/{name}", d.control_url))
        .send()
        .ok()?
        .json()
        .ok()?;
    (v["pending"] == false).then(|| v["deployed"].clone())
}

fn wait_deployed(
    c: &Cluster,
    d: &TenantDescription,
    set: &str,
    name: &str,
    field: &str,
    want: &str,
) {
    poll(
        PUSH_TIMEOUT,
        &format!("{set}/{name} {field}={want} deployed on {}", d.name),
        || (deployed(c, d, set, name)?[field] == want).then_some(()),
    );
}

/// Waits until corral's own push state says every listed tenant holds `version`.
fn wait_push_state(c: &Cluster, via: u64, name: &str, tenants: &[&str], version: u64) -> Value {
    poll(
        PUSH_TIMEOUT,
        &format!("push state of {name} at version {version}"),
        || {
            let v = c.get_json(via, &format!("/admin/secrets/{name}"))?;
            tenants
                .iter()
                .all(|t| {
                    v["push"][*t]["state"] == "deployed" && v["push"][*t]["version"] == version
                })
                .then_some(v)
        },
    )
}

/// A new version reaches both tenants (one of them in strict CSRF mode), rollback pushes the
/// older value again, other kinds (secure parameter, OAuth2 client credentials) deploy too;
/// answers never hold a value; reveal refuses the admin token, works with the reveal token and
/// is audited; near-expiry shows in the listing and the metric; bad input names its field; after
/// a stop no data file holds any value; a node with another master key refuses to start.
#[test]
fn versions_reach_every_tenant_and_stay_sealed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut strict = TenantConfig::new("st2");
    strict.strict_csrf = true;
    let hs = tenants(&rt, vec![TenantConfig::new("st1"), strict]);
    let ds: Vec<_> = hs.iter().map(|h| h.description()).collect();
    let mut c = Cluster::start_new(3);
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15));
    for d in &ds {
        register(&c, 1, d);
    }
    let reveal_token = std::fs::read_to_string(c.dir.path().join("reveal.token"))
        .unwrap()
        .trim()
        .to_string();

    let v1 = "pw-one-5f1c9a7e";
    let v2 = "pw-two-9b3d2c11";
    let (s, b) = put_secret(&c, 2, "shared", &user_secret(v1));
    assert_eq!((s, b["version"].as_u64()), (201, Some(1)), "{b}");
    for d in &ds {
        wait_deployed(&c, d, "UserCredentials", "shared", "Password", v1);
    }
    wait_push_state(&c, 3, "shared", &["st1", "st2"], 1);

    let (s, b) = put_secret(&c, 3, "shared", &user_secret(v2));
    assert_eq!((s, b["version"].as_u64()), (200, Some(2)), "{b}");
    for d in &ds {
        wait_deployed(&c, d, "UserCredentials", "shared", "Password", v2);
    }
    wait_push_state(&c, 1, "shared", &["st1", "st2"], 2);

    // Rollback makes version 1 current and pushes its value again.
    let (s, b) = post(
        &c,
        1,
        "/admin/secrets/shared/rollback",
        &c.token,
        &json!({"version": 1}),
    );
    assert_eq!((s, b["current_version"].as_u64()), (200, Some(1)), "{b}");
    for d in &ds {
        wait_deployed(&c, d, "UserCredentials", "shared", "Password", v1);
    }
    let one = wait_push_state(&c, 2, "shared", &["st1", "st2"], 1);
    assert_eq!(one["summary"]["user"], "svc-shared");
    let versions = c.get_json(2, "/admin/secrets/shared/versions").unwrap();
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);

    // Other kinds: a secure parameter and an OAuth2 client credential, to one named tenant.
    let sp = "sp-value-77aa21";
    let (s, _) = put_secret(
        &c,
        1,
        "param",
        &json!({"kind": "secure_parameter", "value": {"value": sp}, "targets": ["st2"]}),
    );
    assert_eq!(s, 201);
    let cs = "client-secret-3e8f";
    let soon = corral::api::now_ms() + 3_600_000;
    let (s, _) = put_secret(
        &c,
        1,
        "oauth",
        &json!({"kind": "oauth2_client_credential", "expires_ms": soon,
                "value": {"token_service_url": "https://idp.example/token", "client_id": "cid", "client_secret": cs}}),
    );
    assert_eq!(s, 201);
    wait_deployed(&c, &ds[1], "SecureParameters", "param", "SecureParam", sp);
    for d in &ds {
        wait_deployed(
            &c,
            d,
            "OAuth2ClientCredentials",
            "oauth",
            "ClientSecret",
            cs,
        );
    }
    assert!(deployed(&c, &ds[0], "SecureParameters", "param").is_none());

    // Near expiry: listed and in the metric (default warning window 14 days).
    let list = c.get_json(1, "/admin/secrets").unwrap();
    assert_eq!(list["expiring"], json!(["oauth"]), "{list}");
    let m = poll(Duration::from_secs(5), "expiry metric", || {
        c.metric(1, "corral_secret_expiring{secret=\"oauth\"}")
    });
    assert_eq!(m, 1.0);

    // No answer carries a value.
    let text = format!(
        "{list}{}{}",
        c.get_json(3, "/admin/secrets/shared").unwrap(),
        versions
    );
    for secret in [v1, v2, sp, cs] {
        assert!(!text.contains(secret), "an answer leaked {secret}");
    }

    // Reveal: the admin token lacks the right; the reveal token has it. Only the successful
    // reveal is audited (a refused one never reaches the state).
    let (s, b) = post(&c, 2, "/admin/secrets/shared/reveal", &c.token, &json!({}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    let (s, b) = post(
        &c,
        2,
        "/admin/secrets/shared/reveal",
        &reveal_token,
        &json!({"version": 2}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"]["Password"], v2);
    let audit = c.get_json(1, "/admin/audit/secrets").unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["secret"] == "shared")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["created", "new_version", "rolled_back", "revealed"]
    );

    // Bad input names the field and writes nothing.
    for (body, field) in [
        (
            json!({"kind": "user_credential", "value": {"user": "u"}}),
            "value",
        ),
        (
            json!({"kind": "user_credential", "value": {"user": "u", "password": ""}}),
            "value.password",
        ),
        (json!({"kind": "nope", "value": {}}), "kind"),
        (
            json!({"kind": "secure_parameter", "value": {"value": "x"}, "targets": ["bad name"]}),
            "targets[0]",
        ),
        (
            json!({"kind": "secure_parameter", "value": {"value": "x"}, "max_versions": 0}),
            "max_versions",
        ),
    ] {
        let (s, b) = put_secret(&c, 1, "rejected", &body);
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["field"], field, "{b}");
    }
    let r = c
        .http
        .get(c.url(1, "/admin/secrets/rejected"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    // Soft delete, restore, delete again, purge.
    let r = c
        .http
        .delete(c.url(1, "/admin/secrets/param"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        c.get_json(1, "/admin/secrets/param").unwrap()["state"],
        "deleted"
    );
    let (s, _) = post(&c, 1, "/admin/secrets/param/restore", &c.token, &json!({}));
    assert_eq!(s, 200);
    let r = c
        .http
        .delete(c.url(1, "/admin/secrets/param"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .http
        .delete(c.url(1, "/admin/secrets/param?purge=true"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .http
        .get(c.url(1, "/admin/secrets/param"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    // No plaintext value in any file once every node has flushed and stopped.
    for id in 1..=3 {
        assert!(c.stop(id), "node {id} did not stop cleanly");
    }
    let mut files = Vec::new();
    for n in &c.nodes {
        files_under(&n.data_dir, &mut files);
    }
    let mut all = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_default();
        for secret in [v1, v2, sp, cs] {
            assert!(
                !contains(&data, secret.as_bytes()),
                "plaintext {secret} found in {}",
                f.display()
            );
        }
        all.extend(data);
    }
    // The records are there (user names are not secret), so the search was meaningful.
    assert!(
        contains(&all, b"svc-shared"),
        "no secret record found in the data dirs"
    );

    // Another master key: the node refuses to start and says why.
    std::fs::write(c.dir.path().join("master.key"), "22".repeat(32)).unwrap();
    c.start(1);
    let code = poll(Duration::from_secs(20), "node 1 to refuse to start", || {
        c.nodes[0].child.as_mut()?.try_wait().ok().flatten()
    });
    assert!(!code.success());
    assert!(
        c.log(1).contains("master key"),
        "no reason given: {}",
        c.log(1)
    );
    c.nodes[0].child = None;
    drop(hs);
}

/// A tenant that is down during a rotation shows the failed attempts and gets the version when
/// it returns; a tenant registered after the secret was written receives it too.
#[test]
fn down_and_late_tenants_catch_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hs = tenants(
        &rt,
        vec![
            TenantConfig::new("dt1"),
            TenantConfig::new("dt2"),
            TenantConfig::new("dt3"),
        ],
    );
    let ds: Vec<_> = hs.iter().map(|h| h.description()).collect();
    let c = Cluster::start_new(3);
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15));
    register(&c, 1, &ds[0]);
    register(&c, 2, &ds[1]);
    let r = c
        .http
        .put(format!("{}/chaos", ds[1].control_url))
        .json(&json!({"down": true}))
        .send()
        .unwrap();
    assert!(r.status().is_success());

    let pw = "rotated-4c2b8e";
    let (s, _) = put_secret(&c, 3, "rot", &user_secret(pw));
    assert_eq!(s, 201);
    wait_deployed(&c, &ds[0], "UserCredentials", "rot", "Password", pw);
    poll(PUSH_TIMEOUT, "failed attempts on the down tenant", || {
        let v = c.get_json(1, "/admin/secrets/rot")?;
        let p = &v["push"]["dt2"];
        (p["state"] == "retrying" && p["attempts"].as_u64()? >= 2 && p["last_error"].is_string())
            .then_some(())
    });
    wait_push_state(&c, 1, "rot", &["dt1"], 1);

    let r = c
        .http
        .put(format!("{}/chaos", ds[1].control_url))
        .json(&json!({"down": false}))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    wait_deployed(&c, &ds[1], "UserCredentials", "rot", "Password", pw);

    register(&c, 3, &ds[2]);
    wait_deployed(&c, &ds[2], "UserCredentials", "rot", "Password", pw);
    let v = wait_push_state(&c, 2, "rot", &["dt1", "dt2", "dt3"], 1);
    assert!(v["push"]["dt2"]["last_error"].is_null());
    drop(hs);
}

/// The leader is killed (-9) while a push waits for the tenant's deployment; the new leader sees
/// the pair still pending in the replicated state and finishes the push.
#[test]
fn leader_killed_mid_push_still_completes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let slow = |n: &str| {
        let mut t = TenantConfig::new(n);
        t.deploy_delay_ms = 4_000;
        t
    };
    let hs = tenants(&rt, vec![slow("lt1"), slow("lt2")]);
    let ds: Vec<_> = hs.iter().map(|h| h.description()).collect();
    let mut c = Cluster::start_new(3);
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(15));
    let other = if leader == 1 { 2 } else { 1 };
    for d in &ds {
        register(&c, other, d);
    }
    let pw = "failover-8d7e6f";
    let (s, _) = put_secret(&c, other, "fo", &user_secret(pw));
    assert_eq!(s, 201);
    // The push has started (the tenant holds the artifact, still deploying): kill the leader.
    poll(PUSH_TIMEOUT, "the push to reach lt1", || {
        let v: Value = c
            .http
            .get(format!("{}/secrets/UserCredentials/fo", ds[0].control_url))
            .send()
            .ok()?
            .json()
            .ok()?;
        (v["pending"] == true).then_some(())
    });
    let before = c.get_json(other, "/admin/secrets/fo").unwrap();
    assert_ne!(before["push"]["lt1"]["state"], "deployed", "{before}");
    c.kill9(leader);
    let live: Vec<u64> = c.live_ids();
    let new_leader = poll(Duration::from_secs(20), "a new leader", || {
        c.agreed_leader(&live).filter(|l| *l != leader)
    });
    for d in &ds {
        wait_deployed(&c, d, "UserCredentials", "fo", "Password", pw);
    }
    wait_push_state(&c, new_leader, "fo", &["lt1", "lt2"], 1);
    drop(hs);
}
