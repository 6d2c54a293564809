//! Replicated 1 KiB writes against a three-node cluster (in-process nodes, real mutual-TLS
//! transport on loopback, sled on this disk, fsync on), with 1, 16, 64 and 256 concurrent
//! writers; baseline in the same run: raw sled append + flush of 1 KiB entries, one at a time.
//!
//! Run: `cargo bench --bench cluster_write` (options: `-- --seconds N`). Prints a table and
//! writes `bench-results/cluster_write.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::state::Command;
use corral::store::{SledStore, Store, WriteBatch};

const VALUE_BYTES: usize = 1024;

fn arg_seconds() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(5)
}

/// The ceiling for a log that fsyncs every entry: append 1 KiB, flush, repeat.
fn sled_baseline(seconds: u64) -> f64 {
    let dir = tempfile::tempdir_in("target").expect("tempdir");
    let store = SledStore::open(dir.path()).expect("sled");
    let value = vec![7u8; VALUE_BYTES];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        let mut b = WriteBatch::default();
        b.put(n.to_be_bytes().to_vec(), value.clone());
        store.write(b).expect("write");
        store.flush().expect("flush");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Row {
    writers: usize,
    commits_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run_writers(client: Arc<corral::client::Client>, writers: usize, seconds: u64) -> Row {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let cmd = Command::ConfigPut {
                        key: format!("bench/{writers}/{w}/{}", i % 1000),
                        value: vec![b'x'; VALUE_BYTES],
                        now_ms: 0,
                    };
                    let t = Instant::now();
                    match client.write(&cmd).await {
                        Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("writer");
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Row {
        writers,
        commits_per_s: all.len() as f64 / elapsed,
        p50_ms: pct(&all, 0.50),
        p99_ms: pct(&all, 0.99),
        errors,
    }
}

fn arg_nodes() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3)
}

async fn cluster_rows(seconds: u64) -> Vec<Row> {
    let n_nodes = arg_nodes();
    let dir = tempfile::tempdir_in("target").expect("tempdir");
    let file = corral::init::run(&corral::init::InitArgs {
        nodes: n_nodes,
        dir: dir.path().to_path_buf(),
        host: "127.0.0.1".into(),
        host_per_node: false,
        base_port: 27100,
        name: "bench".into(),
        force: true,
    })
    .expect("init");
    let cluster = corral::config::ClusterFile::load(&file).expect("cluster file");
    let mut nodes = Vec::new();
    for id in 1..=n_nodes as u64 {
        nodes.push(
            corral::node::start(cluster.node(id).expect("node"))
                .await
                .expect("start"),
        );
    }
    let leader = loop {
        if let Some(l) = nodes[0].driver.status().leader {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let client = nodes[(leader - 1) as usize].client.clone();
    let mut rows = Vec::new();
    for writers in [1, 16, 64, 256] {
        rows.push(run_writers(client.clone(), writers, seconds).await);
    }
    if std::env::var("BENCH_METRICS").is_ok() {
        for l in corral::metrics::render()
            .lines()
            .filter(|l| l.contains("_sum") || l.contains("_count"))
        {
            eprintln!("{l}");
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
    rows
}

fn main() {
    corral::disable_transparent_huge_pages();
    let seconds = arg_seconds();
    let baseline = sled_baseline(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(cluster_rows(seconds));
    let one = rows[0].commits_per_s;
    println!("raw sled append+flush (1 KiB, one writer): {baseline:.0} flushes/s  [baseline]");
    println!(
        "{:>8} {:>12} {:>9} {:>9} {:>8} {:>14} {:>12}",
        "writers", "commits/s", "p50 ms", "p99 ms", "errors", "x sled flush", "x 1 writer"
    );
    for r in &rows {
        println!(
            "{:>8} {:>12.0} {:>9.2} {:>9.2} {:>8} {:>14.2} {:>12.2}",
            r.writers,
            r.commits_per_s,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.commits_per_s / baseline,
            r.commits_per_s / one
        );
    }
    let json = serde_json::json!({
        "baseline_sled_flushes_per_s": baseline,
        "rows": rows.iter().map(|r| serde_json::json!({
            "writers": r.writers, "commits_per_s": r.commits_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
            "ratio_vs_sled_flush": r.commits_per_s / baseline, "ratio_vs_1_writer": r.commits_per_s / one,
        })).collect::<Vec<_>>(),
    });
    let _ = std::fs::create_dir_all("bench-results");
    let _ = std::fs::write(
        "bench-results/cluster_write.json",
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}
