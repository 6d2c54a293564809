//! The tenant pool on a real three-node cluster: tenants registered through the admin API with
//! the emulator's JSON line, every node probing them, no secret in any answer or any file.

mod common;

use std::time::Duration;

use common::{contains, files_under, poll, Cluster};
use corral::emulator::{spawn_tenant, TenantConfig};
use serde_json::Value;

/// Registers two emulated tenants via different nodes; every node's view shows both healthy;
/// GET answers never carry the client secret or password; validation names the field; after a
/// graceful stop, no file under any data dir holds the plaintext secret or password bytes; a
/// node started with another master key refuses to start and says why.
#[test]
fn tenants_register_probe_and_stay_sealed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tenants: Vec<_> = ["pt1", "pt2"]
        .iter()
        .map(|n| rt.block_on(spawn_tenant(TenantConfig::new(*n))).unwrap())
        .collect();
    let descs: Vec<_> = tenants.iter().map(|h| h.description()).collect();

    let mut c = Cluster::new(3, |t| t);
    c.start_all();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(15));

    for (i, d) in descs.iter().enumerate() {
        let via = 2 + i as u64;
        let r = c
            .http
            .put(c.url(via, &format!("/admin/tenants/{}", d.name)))
            .bearer_auth(&c.token)
            .json(d)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    }
    // Validation: a name mismatch and a bad weight name their field; nothing is written.
    for (body, field) in [
        (serde_json::json!({"name": "other"}), "name"),
        (serde_json::json!({"weight": 0}), "weight"),
    ] {
        let mut b = serde_json::to_value(&descs[0]).unwrap();
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = c
            .http
            .put(c.url(1, "/admin/tenants/pt1"))
            .bearer_auth(&c.token)
            .json(&b)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().unwrap()["error"]["field"], field);
    }

    // Every node probes every tenant; node 1 shows all three views as healthy.
    let list = poll(
        Duration::from_secs(20),
        "all nodes see both tenants healthy",
        || {
            let v = c.get_json(1, "/admin/tenants")?;
            let items = v["items"].as_array()?;
            let all = items.len() == 2
                && items.iter().all(|t| {
                    let by = &t["health_by_node"];
                    (1..=3).all(|n| by[n.to_string()]["status"] == "healthy")
                });
            all.then_some(v)
        },
    );
    let text = list.to_string();
    let one = c.get_json(3, "/admin/tenants/pt1").unwrap();
    assert_eq!(one["credentials"]["runtime"]["kind"], "oauth2");
    assert_eq!(
        one["credentials"]["runtime"]["client_id"],
        descs[0].client_id
    );
    let local = c.get_json(2, "/admin/pool/health").unwrap().to_string();
    for d in &descs {
        for secret in [&d.client_secret, &d.basic_password] {
            assert!(!text.contains(secret.as_str()), "list leaked a secret");
            assert!(
                !one.to_string().contains(secret.as_str()),
                "get leaked a secret"
            );
            assert!(!local.contains(secret.as_str()), "health leaked a secret");
        }
    }

    // Delete and re-put round trip.
    let r = c
        .http
        .delete(c.url(1, "/admin/tenants/pt2"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .http
        .get(c.url(1, "/admin/tenants/pt2"))
        .bearer_auth(&c.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    // No plaintext secret in any file, once every node has flushed and stopped.
    for id in 1..=3 {
        assert!(c.stop(id), "node {id} did not stop cleanly");
    }
    let mut files = Vec::new();
    for n in &c.nodes {
        files_under(&n.data_dir, &mut files);
    }
    assert!(!files.is_empty());
    let mut bytes_seen = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap_or_default();
        bytes_seen += data.len();
        for d in &descs {
            for secret in [&d.client_secret, &d.basic_password] {
                assert!(
                    !contains(&data, secret.as_bytes()),
                    "plaintext secret found in {}",
                    f.display()
                );
            }
        }
    }
    // The tenant records are there (client ids are not secret), so the search was meaningful.
    let all: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap_or_default())
        .collect();
    assert!(
        contains(&all, descs[0].client_id.as_bytes()),
        "searched {bytes_seen} bytes but found no tenant record"
    );

    // Another master key: the node refuses to start and says why.
    std::fs::write(c.dir.path().join("master.key"), "11".repeat(32)).unwrap();
    c.start(1);
    let code = poll(Duration::from_secs(20), "node 1 to refuse to start", || {
        c.nodes[0].child.as_mut()?.try_wait().ok().flatten()
    });
    assert!(!code.success());
    let log = c.log(1);
    assert!(log.contains("master key"), "no reason given: {log}");
    c.nodes[0].child = None;
    drop(tenants);
}
