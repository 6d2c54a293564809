//! Tier 3: real processes of the built binary on 127.0.0.x — elections, kill -9, restarts,
//! catch-up by log and by snapshot, wiped data dirs, mutual TLS and bad input.

mod common;

use std::time::{Duration, Instant};

use common::{poll, Cluster, Writers, BIN};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Three nodes elect a leader within 3 s, and `corral status` agrees with `/admin/cluster`.
#[test]
fn elects_a_leader_and_status_agrees() {
    let mut c = Cluster::new(3, |t| t);
    let started = Instant::now();
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "election took {:?}",
        started.elapsed()
    );
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&c.file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for row in rows.as_array().unwrap() {
        assert_eq!(
            row["status"]["node"]["leader"].as_u64(),
            Some(leader),
            "{row}"
        );
    }
    let table = std::process::Command::new(BIN)
        .args(["status", "--config"])
        .arg(&c.file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("leader"));
}

/// Leadership moves on request, even when the request is sent to a follower.
#[test]
fn transfer_leader_through_a_follower() {
    let c = Cluster::start_new(3);
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let via = (1..=3).find(|id| *id != leader && *id != target).unwrap();
    let r = c
        .http
        .post(c.url(via, "/admin/cluster/transfer-leader"))
        .bearer_auth(&c.token)
        .json(&json!({"to": target}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    poll(Duration::from_secs(10), "leadership to move", || {
        (c.agreed_leader(&[1, 2, 3]) == Some(target)).then_some(())
    });
}

/// kill -9 of the leader under a stream of writes: a new leader promptly (by its own clock,
/// as the frozen-leader test below), and every acknowledged write is on every survivor and,
/// after restart, on the killed node.
#[test]
fn leader_kill_loses_no_acknowledged_write() {
    let mut c = Cluster::start_new(3);
    let old = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let admins: Vec<String> = c.nodes.iter().map(|n| n.admin.clone()).collect();
    let writers = Writers::start(admins, &c.token, 8, "lk");
    writers.wait_more(300, Duration::from_secs(30));
    c.kill9(old);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = c.live_ids();
    let new = c.wait_leader(&survivors, Duration::from_secs(10));
    let took = killed_at.elapsed();
    let silent_ms = c.failover_ms(new, old);
    writers.wait_more(200, Duration::from_secs(30));
    let acked = writers.finish();
    assert!(
        silent_ms < 6_000,
        "new leader {new} took {silent_ms} ms by its own clock ({took:?} as polled)"
    );
    for id in &survivors {
        c.wait_has_all(*id, &acked, Duration::from_secs(20));
    }
    c.start(old);
    c.wait_has_all(old, &acked, Duration::from_secs(30));
}

/// A frozen leader (SIGSTOP: its sockets stay open, it just stops answering) is replaced
/// promptly. The new leader's own figure (last message from the old leader to winning) is
/// checked, not a time polled from outside. One round is the election timeout (0.8-1.6 s), a
/// pre-vote and a vote; on a loaded 2-core box with these twelve clusters and a disk hog, 32
/// of 34 failovers took one round (under 1.5 s) and two took two (1.9 s, 2.4 s). The bound is 6 s, room for a second
/// round and slow fsyncs on a CI box, because a timing bound here only catches a stall.
/// After SIGCONT it steps down, rejoins as a follower, and no acknowledged write is lost.
#[test]
fn frozen_leader_is_replaced_and_rejoins() {
    let mut c = Cluster::start_new(3);
    let old = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let admins: Vec<String> = others.iter().map(|id| c.node(*id).admin.clone()).collect();
    let writers = Writers::start(admins, &c.token, 4, "fz");
    writers.wait_more(100, Duration::from_secs(30));
    c.signal(old, libc::SIGSTOP);
    let frozen_at = Instant::now();
    let new = c.wait_leader(&others, Duration::from_secs(10));
    let took = frozen_at.elapsed();
    let silent_ms = c.failover_ms(new, old);
    writers.wait_more(100, Duration::from_secs(30));
    c.signal(old, libc::SIGCONT);
    let acked = writers.finish();
    assert!(
        silent_ms < 6_000,
        "new leader {new} took {silent_ms} ms by its own clock ({took:?} as polled)"
    );
    poll(
        Duration::from_secs(10),
        "the old leader to follow the new one",
        || (c.view(old)?["node"]["leader"].as_u64()? == new).then_some(()),
    );
    for id in 1..=3 {
        c.wait_has_all(id, &acked, Duration::from_secs(30));
    }
    c.kill9(old);
}

/// A write whose fate cannot be known (forwarded to a leader that froze before answering) is
/// answered 503 `outcome_unknown`, never as a failure. On a loaded box the follower may see
/// the freeze, and a new leader, before it handles the write: then the write was never
/// forwarded, goes to the new leader and is applied (201), which is also right, so the test
/// checks that such a write really is in the state and tries again, up to five times.
#[test]
fn unknown_outcome_is_reported_as_unknown() {
    let c = Cluster::start_new(3);
    for attempt in 0..5 {
        let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        c.put(follower, "before", &json!(attempt)).unwrap();
        c.signal(leader, libc::SIGSTOP);
        let key = format!("during-{attempt}");
        let r = c
            .http
            .put(c.url(follower, &format!("/admin/config/{key}")))
            .bearer_auth(&c.token)
            .json(&json!(2))
            .send()
            .unwrap();
        c.signal(leader, libc::SIGCONT);
        let status = r.status();
        let body: serde_json::Value = r.json().unwrap_or_default();
        if status == 503 {
            assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
            return;
        }
        assert_eq!(status, 201, "{body}");
        let entry = c.get_json(follower, &format!("/admin/config/{key}"));
        assert_eq!(entry.map(|e| e["value"].clone()), Some(json!(2)));
        eprintln!("attempt {attempt}: the write reached a new leader before it was forwarded");
    }
    panic!("in five attempts the write was never forwarded to the frozen leader");
}

/// 30 cycles of kill -9 of a random node during heavy writes, each followed by a restart:
/// every store reopens, no acknowledged write is missing, and all nodes converge.
#[test]
fn crash_cycles_keep_every_acknowledged_write() {
    let seed: u64 = std::env::var("CORRAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash_cycles seed: {seed} (set CORRAL_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Cluster::new(3, |t| {
        t.replace(
            "compact_every_entries = 20000",
            "compact_every_entries = 2000",
        )
        .replace("keep_entries = 5000", "keep_entries = 500")
    });
    c.start_all();
    c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let admins: Vec<String> = c.nodes.iter().map(|n| n.admin.clone()).collect();
    let writers = Writers::start(admins, &c.token, 8, "cc");
    for cycle in 0..30 {
        writers.wait_more(50, Duration::from_secs(30));
        let victim = rng.gen_range(1..=3u64);
        c.kill9(victim);
        writers.wait_more(20, Duration::from_secs(30));
        c.start(victim);
        poll(
            Duration::from_secs(20),
            &format!("cycle {cycle}: node {victim} back with a leader"),
            || c.view(victim)?["node"]["leader"].as_u64(),
        );
    }
    let acked = writers.finish();
    println!("acknowledged writes: {}", acked.len());
    for id in 1..=3 {
        c.wait_has_all(id, &acked, Duration::from_secs(60));
    }
    poll(
        Duration::from_secs(30),
        "all nodes to apply the same index",
        || {
            let idx: Vec<u64> = (1..=3)
                .filter_map(|id| c.view(id)?["node"]["applied_index"].as_u64())
                .collect();
            (idx.len() == 3 && idx.iter().all(|i| *i == idx[0])).then_some(())
        },
    );
    let keys: Vec<_> = (1..=3).map(|id| c.local_keys(id).unwrap()).collect();
    assert_eq!(keys[0], keys[1], "nodes 1 and 2 diverge");
    assert_eq!(keys[1], keys[2], "nodes 2 and 3 diverge");
}

/// Preallocated log segments under kill -9: with 256 KiB segments every node rolls onto
/// zero-filled spares many times while batches of messages are enqueued, and compacts every
/// 100 entries, so the files of compacted segments are kept and zeroed as later spares; the
/// leader is killed between two runs of batches and restarted (its active segment ends in
/// zeros, which its open cuts off; it has fallen behind the others' compacted logs, so it
/// catches up by snapshot), and every node ends holding every acknowledged message and none
/// that was never sent.
#[test]
fn preallocated_segments_survive_kill_and_restart() {
    let mut c = Cluster::new(3, |t| {
        t.replace("log_segment_bytes = 67108864", "log_segment_bytes = 262144")
            .replace(
                "compact_every_entries = 20000",
                "compact_every_entries = 100",
            )
            .replace("keep_entries = 5000", "keep_entries = 10")
    });
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let (status, _) = c.admin_put(leader, "/admin/queues/pre", &json!({}));
    assert!((200..300).contains(&status), "queue: {status}");
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"body": format!("{i:01000}")}))
        .collect();
    let (mut acked, mut sent) = (0u64, 0u64);
    let mut send_batches = |c: &Cluster, node: u64| {
        for _ in 0..60 {
            sent += 50;
            let r = c
                .http
                .post(c.ingress_url(node, "/queues/pre/messages:batch"))
                .json(&batch)
                .send();
            if matches!(r, Ok(r) if r.status() == 202) {
                acked += 50;
            }
        }
    };
    send_batches(&c, leader);
    c.kill9(leader);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let next = c.wait_leader(&survivors, Duration::from_secs(10));
    send_batches(&c, next);
    // The survivors compact (their compacted files are kept and zeroed as spares) before the
    // old leader returns, so it finds its log behind theirs.
    for id in &survivors {
        poll(
            Duration::from_secs(30),
            &format!("node {id} to compact its log"),
            || {
                c.metric(*id, "corral_raft_log_compactions_total")
                    .filter(|n| *n >= 1.0)
            },
        );
    }
    c.start(leader);
    assert!(
        acked >= 3_000,
        "only {acked} of {sent} messages acknowledged"
    );
    for id in 1..=3u64 {
        let depth = poll(
            Duration::from_secs(60),
            &format!("node {id} to hold the {acked} acknowledged messages"),
            || {
                let v = c.get_json(id, "/admin/queues/pre?consistency=local")?;
                v["stats"]["depth"].as_u64().filter(|d| *d >= acked)
            },
        );
        assert!(depth <= sent, "node {id} holds {depth} of {sent} sent");
        let mut files = Vec::new();
        common::files_under(&c.node(id).data_dir.join("raft-log"), &mut files);
        // Compaction deletes segments, so the newest one's number counts the rolls.
        let newest = files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "seg"))
            .filter_map(|f| f.file_stem()?.to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        assert!(newest > 4, "node {id} rolled its log only {newest} times");
    }
    // The restarted node, behind the survivors' compacted logs, caught up by snapshot.
    assert!(
        c.log(leader).contains("snapshot received and verified"),
        "node {leader} did not catch up by snapshot"
    );
}

/// A follower stopped (gracefully) for 10,000 writes catches up on restart, and a follower
/// whose data dir was wiped catches up by snapshot (the leader still counts the entries the
/// wiped node had acknowledged, the hard case).
#[test]
fn stopped_and_wiped_nodes_catch_up() {
    let mut c = Cluster::new(3, |t| {
        t.replace(
            "compact_every_entries = 20000",
            "compact_every_entries = 1000",
        )
        .replace("keep_entries = 5000", "keep_entries = 200")
    });
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (lagger, wiped) = (followers[0], followers[1]);
    assert!(
        c.stop(lagger),
        "node {lagger} did not shut down cleanly on SIGTERM"
    );
    let admins = vec![c.node(leader).admin.clone(), c.node(wiped).admin.clone()];
    let writers = Writers::start(admins, &c.token, 16, "lag");
    poll(
        Duration::from_secs(120),
        "10,000 acknowledged writes",
        || (writers.count() >= 10_000).then_some(()),
    );
    let acked = writers.finish();
    c.start(lagger);
    c.wait_has_all(lagger, &acked, Duration::from_secs(60));

    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let wiped = if wiped == leader { lagger } else { wiped };
    assert!(c.stop(wiped));
    std::fs::remove_dir_all(&c.node(wiped).data_dir).unwrap();
    c.start(wiped);
    c.wait_has_all(wiped, &acked, Duration::from_secs(60));
    let installed = c
        .metric(wiped, "corral_raft_snapshots_installed_total")
        .unwrap_or(0.0);
    assert!(installed >= 1.0, "wiped node caught up without a snapshot");
    // The cluster still takes writes with the rejoined node counted.
    c.put(wiped, "after-wipe", &json!(1)).unwrap();
}

/// A node holding a certificate from another CA cannot join: its peers refuse it and keep
/// working. Admin calls without the right token get 401 JSON.
#[test]
fn foreign_certificate_is_refused_and_admin_needs_token() {
    let mut c = Cluster::new(3, |t| t);
    let other = tempfile::tempdir().unwrap();
    common::init_cluster(other.path(), 3, &common::fresh_net());
    for f in ["node-3.pem", "node-3.key"] {
        std::fs::copy(other.path().join(f), c.dir.path().join(f)).unwrap();
    }
    c.start_all();
    let leader = c.wait_leader(&[1, 2], Duration::from_secs(10));
    assert_ne!(leader, 3);
    c.put(1, "after-foreign", &json!(1)).unwrap();
    poll(Duration::from_secs(10), "a logged refusal", || {
        c.log(1).contains("refused").then_some(())
    });
    let view = c.view(3).unwrap();
    assert!(view["node"]["leader"].is_null(), "node 3 joined: {view}");
    assert_eq!(view["node"]["applied_index"].as_u64(), Some(0));

    let r = c.http.get(c.url(1, "/admin/cluster")).send().unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = c
        .http
        .get(c.url(1, "/admin/cluster"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(c
        .http
        .get(c.url(1, "/healthz"))
        .send()
        .unwrap()
        .status()
        .is_success());
}

fn run_node(file: &std::path::Path, id: u64) -> (bool, String) {
    let mut child = std::process::Command::new(BIN)
        .args(["node", "--config"])
        .arg(file)
        .args(["--id", &id.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = poll(
        Duration::from_secs(10),
        "the node to refuse and exit",
        || child.try_wait().ok().flatten(),
    );
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
}

/// A malformed cluster file names the field and touches no data dir; a data dir of another
/// cluster, an unknown node id and a port in use are refused with clear messages.
#[test]
fn bad_config_and_foreign_data_dir_are_refused() {
    let c = Cluster::new(3, |t| t);
    let text = std::fs::read_to_string(&c.file).unwrap();

    let bad = c.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replacen("admin_addr = \"", "admin_addr = \"nowhere", 1),
    )
    .unwrap();
    let (ok, err) = run_node(&bad, 1);
    assert!(!ok);
    assert!(err.contains("node[0].admin_addr"), "{err}");
    assert!(
        !c.node(1).data_dir.exists(),
        "data dir touched before validation"
    );

    let (ok, err) = run_node(&c.file, 9);
    assert!(!ok);
    assert!(
        err.contains("node id 9 is not in the cluster file"),
        "{err}"
    );

    // Node 1 of another cluster used this data dir.
    std::fs::create_dir_all(&c.node(1).data_dir).unwrap();
    std::fs::write(
        c.node(1).data_dir.join("IDENTITY"),
        r#"{"cluster_id":"someothercluster","node_id":1}"#,
    )
    .unwrap();
    let (ok, err) = run_node(&c.file, 1);
    assert!(!ok);
    assert!(err.contains("belongs to cluster someothercluster"), "{err}");

    // Something else holds node 2's admin port.
    let _hold = std::net::TcpListener::bind(&c.node(2).admin).unwrap();
    let (ok, err) = run_node(&c.file, 2);
    assert!(!ok);
    assert!(
        err.contains("admin address") && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

/// A node started with another master key than the one its data dir was sealed with refuses
/// to start, saying why.
#[test]
fn wrong_master_key_is_refused() {
    let mut c = Cluster::new(1, |t| t);
    c.start(1);
    c.wait_leader(&[1], Duration::from_secs(10));
    assert!(c.stop(1));
    std::fs::write(c.dir.path().join("master.key"), "ab".repeat(32)).unwrap();
    let (ok, err) = run_node(&c.file, 1);
    assert!(!ok);
    assert!(err.contains("master key"), "{err}");
}

/// `corral init` writes secrets with mode 0600 and refuses to overwrite a cluster without
/// `--force`.
#[test]
fn init_protects_secrets_and_existing_clusters() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    common::init_cluster(dir.path(), 3, &common::fresh_net());
    for f in [
        "admin.token",
        "master.key",
        "ca.key",
        "node-1.key",
        "node-2.key",
        "node-3.key",
    ] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
    let again = std::process::Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = std::process::Command::new(BIN)
        .args(["init", "--force", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(forced.status.success());
}
