//! Snapshot files: how fast a checkpoint of the state is built, hashed and installed, against a
//! plain copy of the same file on the same disk in the same run (the baseline).
//!
//!     cargo bench --bench snapshot -- [MiB of state, default 256]
//!
//! The state is 1 KiB values (a queue backlog's shape). The network part of a transfer is
//! measured by `tests/snapshot_process.rs`, which prints MiB/s for a real chunked transfer
//! beside a file copy.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use corral::raft::snapfile::{self, SnapshotDescriptor};
use corral::raft::storage::{LogPosition, RaftStorage, NO_PIN};
use corral::store::{keys, SledStore, Store, WriteBatch};
use raft::Storage as _;

const VALUE_BYTES: usize = 1024;

fn open(dir: &Path) -> RaftStorage {
    let kv: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("store")).expect("store"));
    let pin = Arc::new(AtomicU64::new(NO_PIN));
    RaftStorage::open(
        kv,
        &[1, 2, 3],
        &dir.join("snapshots"),
        &dir.join("log"),
        corral::raft::log::SEGMENT_BYTES,
        pin,
    )
    .expect("open")
}

fn fill(s: &mut RaftStorage, mib: usize) {
    let n = mib * 1024 * 1024 / VALUE_BYTES;
    let mut batch = WriteBatch::default();
    for i in 0..n as u64 {
        let mut v = vec![0u8; VALUE_BYTES];
        v[..8].copy_from_slice(&i.to_be_bytes());
        batch.put(keys::state(&i.to_be_bytes()), v);
        if batch.bytes > 16 * 1024 * 1024 {
            s.store().write(std::mem::take(&mut batch)).expect("write");
        }
    }
    s.set_applied(
        LogPosition {
            index: 100,
            term: 1,
        },
        &mut batch,
    );
    s.store().write(batch).expect("write");
    s.store().flush().expect("flush");
}

fn row(what: &str, secs: f64, bytes: u64, base: f64) {
    let mib_s = bytes as f64 / 1048576.0 / secs;
    println!("| {what} | {secs:.2} | {mib_s:.0} | {:.2} |", mib_s / base);
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir_in("target").expect("tempdir");
    let (a, b) = (dir.path().join("leader"), dir.path().join("follower"));
    let mut leader = open(&a);
    let t = Instant::now();
    fill(&mut leader, mib);
    let write = t.elapsed().as_secs_f64();

    // Second baseline: only reading the state range out of sled.
    let t = Instant::now();
    let mut scanned = 0u64;
    for item in leader
        .store()
        .scan_range(&[keys::STATE], &[keys::STATE + 1])
    {
        let (k, v) = item.expect("scan");
        scanned += (k.len() + v.len()) as u64;
    }
    let scan = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let _ = leader.snapshot(0, 2);
    while leader.checkpoint_work() {}
    let build = t.elapsed().as_secs_f64();
    let snap = leader.snapshot(0, 2).expect("checkpoint ready");
    let desc = SnapshotDescriptor::decode(snap.get_data()).expect("descriptor");
    let file = snapfile::checkpoint_dir(&a.join("snapshots")).join(desc.file_name());

    // Baseline: copy the same file (what a transfer cannot beat on one disk).
    let staging = snapfile::staging_dir(&b.join("snapshots"));
    std::fs::create_dir_all(&staging).expect("staging");
    let t = Instant::now();
    std::fs::copy(&file, staging.join(desc.file_name())).expect("copy");
    std::fs::File::open(staging.join(desc.file_name()))
        .and_then(|f| f.sync_all())
        .expect("sync");
    let copy = t.elapsed().as_secs_f64();
    let base = desc.bytes as f64 / 1048576.0 / copy;

    let t = Instant::now();
    snapfile::hash_file(&file).expect("hash");
    let hash = t.elapsed().as_secs_f64();

    let mut follower = open(&b);
    let t = Instant::now();
    follower.install_snapshot(&snap).expect("install");
    let install = t.elapsed().as_secs_f64();

    println!(
        "\nsnapshot of {} MiB of state ({} keys, file {} bytes)\n",
        mib, desc.keys, desc.bytes
    );
    println!("| step | seconds | MiB/s | x file copy |\n|---|---:|---:|---:|");
    row("file copy + fsync (baseline)", copy, desc.bytes, base);
    row("sled scan of the state range only", scan, scanned, base);
    row(
        "checkpoint build (scan + write + fsync)",
        build,
        desc.bytes,
        base,
    );
    row("SHA-256 of the file (verification)", hash, desc.bytes, base);
    row(
        "install (clear, stream in, flush)",
        install,
        desc.bytes,
        base,
    );
    row(
        "writing the same state into sled (reference)",
        write,
        desc.bytes,
        base,
    );
}
