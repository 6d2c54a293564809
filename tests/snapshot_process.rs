//! Chunked snapshots over real processes: a state larger than one peer transport frame
//! (64 MiB) reaches a wiped follower by snapshot, streamed in chunks; the follower then holds
//! exactly the leader's state; and a follower killed -9 in the middle of installing one
//! finishes the install from its staged file on restart.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{poll, Cluster};
use corral::store::{keys, SledStore, Store};
use serde_json::{json, Value};

/// Bytes of one queued message body, and messages per batch request (8 MiB per batch).
const MESSAGE_BYTES: usize = 64 * 1024;
const BATCH_MESSAGES: usize = 128;
/// Batches written: 12 x 8 MiB = 96 MiB of bodies, well over one 64 MiB transport frame.
const BATCHES: usize = 12;
/// Small config writes after the bulk, so the log is compacted past where the wiped node is.
const FILLER_WRITES: usize = 150;

fn cluster() -> Cluster {
    Cluster::new(3, |t| {
        t.replace(
            "compact_every_entries = 20000",
            "compact_every_entries = 100",
        )
        .replace("keep_entries = 5000", "keep_entries = 20")
    })
}

/// A body of printable bytes that differs per message (so nothing compresses or dedups).
fn body(batch: usize, i: usize) -> String {
    let mut x = (batch * 1_000_003 + i * 7919 + 1) as u64;
    (0..MESSAGE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

fn fill_queue(c: &Cluster, via: u64) {
    let limits = json!({"max_bytes": 1024u64 * 1024 * 1024, "max_messages": 1_000_000});
    let (status, _) = c.admin_put(via, "/admin/queues/bulk", &limits);
    assert!((200..300).contains(&status), "queue create: {status}");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for b in 0..BATCHES {
        let items: Vec<Value> = (0..BATCH_MESSAGES)
            .map(|i| json!({"body": body(b, i)}))
            .collect();
        let r = http
            .post(c.ingress_url(via, "/queues/bulk/messages:batch"))
            .json(&items)
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            202,
            "batch {b}: {}",
            r.text().unwrap_or_default()
        );
    }
}

fn depth(c: &Cluster, id: u64) -> Option<u64> {
    c.get_json(id, "/admin/queues/bulk?consistency=local")?["stats"]["depth"].as_u64()
}

fn applied(c: &Cluster, id: u64) -> Option<u64> {
    c.view(id)?["node"]["applied_index"].as_u64()
}

/// Value bytes and SHA-256 over every state key and value of a stopped node's store.
fn state_digest(data_dir: &Path) -> (u64, String) {
    let store = SledStore::open(&data_dir.join("store")).unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut n = 0;
    for item in store.scan_prefix(&[keys::STATE]) {
        let (k, v) = item.unwrap();
        ctx.update(&(k.len() as u32).to_be_bytes());
        ctx.update(&k);
        ctx.update(&(v.len() as u32).to_be_bytes());
        ctx.update(&v);
        n += v.len() as u64;
    }
    (n, hex::encode(ctx.finish().as_ref()))
}

/// The figure the follower logs for a received snapshot, if any: (MiB/s, bytes).
fn logged_transfer_rate(log: &str) -> Option<(f64, f64)> {
    let raw = log
        .lines()
        .rfind(|l| l.contains("snapshot received and verified"))?;
    // Drop terminal colour sequences (ESC [ ... m) the log may carry.
    let mut line = String::new();
    let mut in_escape = false;
    for ch in raw.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => line.push(c),
        }
    }
    let field = |name: &str| -> Option<f64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse()
            .ok()
    };
    Some((field("mib_per_s")?, field("bytes")?))
}

/// A follower wiped while the others took in ~96 MiB of queued messages catches up by a
/// chunked snapshot; killed -9 mid-install of a second one, it finishes that install from its
/// staged file on restart; afterwards all three nodes hold byte-identical state.
#[test]
fn large_state_reaches_wiped_follower_by_chunked_snapshot() {
    let mut c = cluster();
    c.start_all();
    let leader = c.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();

    // The follower goes away with its data; the others take in the bulk and move the log on.
    assert!(c.stop(follower));
    std::fs::remove_dir_all(&c.node(follower).data_dir).unwrap();
    let t = Instant::now();
    fill_queue(&c, leader);
    let mut keys_written = HashSet::new();
    for i in 0..FILLER_WRITES {
        let k = format!("filler-{i}");
        c.put(leader, &k, &json!(i)).unwrap();
        keys_written.insert(k);
    }
    eprintln!("wrote {} MiB in {:?}", BATCHES * 8, t.elapsed());
    let want_depth = (BATCHES * BATCH_MESSAGES) as u64;
    assert_eq!(depth(&c, leader), Some(want_depth));

    // 1. Back with an empty data dir: it can only catch up by snapshot.
    let t = Instant::now();
    c.start(follower);
    c.wait_has_all(follower, &keys_written, Duration::from_secs(180));
    poll(Duration::from_secs(30), "follower queue depth", || {
        (depth(&c, follower) == Some(want_depth)).then_some(())
    });
    eprintln!("wiped follower caught up in {:?}", t.elapsed());
    poll(Duration::from_secs(30), "a snapshot installed", || {
        let n = c.metric(follower, "corral_raft_snapshots_installed_total")?;
        (n >= 1.0).then_some(())
    });
    let log = c.log(follower);
    let (mib_per_s, bytes) = logged_transfer_rate(&log).expect("transfer figure in the log");
    assert!(
        bytes > 64.0 * 1024.0 * 1024.0,
        "the snapshot ({bytes} bytes) should exceed one transport frame"
    );
    // A figure, not an assertion: the chunked transfer against a plain copy of the same file.
    let checkpoint = (1..=3)
        .filter_map(|id| std::fs::read_dir(c.node(id).data_dir.join("snapshots/checkpoints")).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "snap"));
    if let Some(f) = checkpoint {
        let copy = c.dir.path().join("copy.snap");
        let t = Instant::now();
        if let Ok(n) = std::fs::copy(&f, &copy) {
            let file_mib_s = n as f64 / 1048576.0 / t.elapsed().as_secs_f64();
            eprintln!("snapshot transfer: {mib_per_s:.0} MiB/s; plain file copy of the same file: {file_mib_s:.0} MiB/s ({:.2}x)", mib_per_s / file_mib_s);
        }
        let _ = std::fs::remove_file(copy);
    } else {
        eprintln!("snapshot transfer: {mib_per_s:.0} MiB/s (no checkpoint file left to copy for a baseline)");
    }

    // 2. Wipe it again and kill -9 it in the middle of installing the next snapshot.
    assert!(c.stop(follower));
    std::fs::remove_dir_all(&c.node(follower).data_dir).unwrap();
    c.start_with_env(follower, &[("CORRAL_FAILPOINT", "snapshot-install-pause")]);
    poll(
        Duration::from_secs(180),
        "follower paused mid-install",
        || {
            c.log(follower)
                .contains("failpoint snapshot-install-pause")
                .then_some(())
        },
    );
    c.kill9(follower);
    c.start(follower);
    poll(
        Duration::from_secs(60),
        "interrupted install finished",
        || {
            c.log(follower)
                .contains("finishing a snapshot install interrupted by a crash")
                .then_some(())
        },
    );
    c.wait_has_all(follower, &keys_written, Duration::from_secs(120));

    // 3. It keeps up by log afterwards, and every node ends with identical state.
    for i in 0..20 {
        let k = format!("after-{i}");
        c.put(follower, &k, &json!(i)).unwrap();
        keys_written.insert(k);
    }
    let _ = others;
    let target = applied(&c, leader).unwrap();
    poll(
        Duration::from_secs(60),
        "all nodes applied the same",
        || {
            (1..=3)
                .all(|id| applied(&c, id).is_some_and(|a| a >= target))
                .then_some(())
        },
    );
    for id in 1..=3 {
        assert!(c.stop(id));
    }
    let digests: Vec<(u64, String)> = (1..=3)
        .map(|id| state_digest(&c.node(id).data_dir))
        .collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "state differs between nodes: {digests:?}"
    );
    // Every body is there (the state holds each batch's records and bodies as one group and
    // one blob, so its bytes, not its keys, are counted).
    assert!(digests[0].0 as usize >= BATCHES * 8 * 1024 * 1024);
}
