//! The durable queue end to end on a three-node cluster (in-process nodes, real mutual-TLS
//! transport on loopback, sled on this disk, fsync on every Ready):
//! - enqueue over HTTP keep-alive (1 KiB bodies) with 1, 16, 64 and 256 concurrent clients:
//!   acknowledged messages/s and p50/p99 latency;
//! - push deliveries/s to two emulated CPI tenants with zero-delay idempotent flows, draining
//!   a backlog (enqueued while the queue was pull, then switched to push);
//! - baseline in the same run, on the same cluster: the cluster-core replicated write
//!   (1 KiB `ConfigPut` through the Raft client, no HTTP) with 64 writers.
//!
//! The enqueue rows' load comes from a lean keep-alive HTTP/1.1 client (`support/http1.rs`),
//! since the load generator shares the two cores with the nodes; `--client reqwest` measures
//! with reqwest as before, `--client both` does each row with both.
//!
//! Run: `cargo bench --bench queue` (options: `-- --seconds N --backlog N --clients
//! 1,16,64,256 --client raw|reqwest|both`). Prints a table and writes
//! `target/bench-results/queue.json`. Each row also prints, on stderr, where its time went
//! inside the nodes (proposal latency, fsyncs, entries per Ready, messages per coalesced
//! command) and the process's CPU per acknowledged op. Like the node binary, the bench turns
//! transparent huge pages off for itself; `BENCH_KEEP_THP=1` leaves them on, to compare.

#[path = "support/http1.rs"]
mod http1;

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::emulator::{spawn_tenant, FlowSpec, TenantConfig};
use corral::state::Command;
use serde_json::{json, Value};

const BODY_BYTES: usize = 1024;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Row {
    what: String,
    clients: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Closed-loop load: `clients` tasks each repeating `op` until the deadline.
async fn closed_loop<F, Fut>(what: &str, clients: usize, seconds: u64, op: F) -> Row
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let before = Internals::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
                while Instant::now() < deadline {
                    i += 1;
                    let t = Instant::now();
                    if op(c, i).await {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await.expect("client task");
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Internals::now()
        .since(&before)
        .print(what, clients, all.len() as u64);
    all.sort_by(|a, b| a.total_cmp(b));
    Row {
        what: what.into(),
        clients,
        per_s: all.len() as f64 / elapsed,
        p50_ms: pct(&all, 0.50),
        p99_ms: pct(&all, 0.99),
        errors,
    }
}

/// Sums of the nodes' shared histograms, to say where a row's time went: Raft proposal
/// latency on the leader, log write + fdatasync per Ready, entries per Ready, messages per
/// coalesced enqueue command; and what the row wrote to disk per acknowledged operation, in
/// all (the device's count: the three nodes' Raft logs and their zero-filled segments ahead,
/// value logs, sled, the file system's journal) and into the Raft logs alone.
#[derive(Clone, Copy)]
struct Internals {
    proposals: (f64, u64),
    fsyncs: (f64, u64),
    entries: (f64, u64),
    coalesced: (f64, u64),
    log_bytes: u64,
    disk_bytes: u64,
    /// CPU time of this whole process (nodes and load generator), seconds.
    cpu_s: f64,
}

/// User + system CPU time of this process so far (`/proc/self/stat`), seconds; 0 if unknown.
/// Per acknowledged op it is steadier than a rate on a box whose speed drifts between runs.
fn process_cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks.map_or(0.0, |t| t as f64 / hz)
}

/// Bytes the block device holding the bench's data (`target/`) has written, from
/// `/proc/diskstats` (sectors written x 512); 0 if unknown (no block device, say tmpfs).
///
/// Not `/proc/self/io`'s `write_bytes`: that is charged when a page-cache folio is dirtied,
/// in whole folios, and with the kernel's large folios a small append into a folio already
/// written back is charged the whole folio again. 2026-12-04 on this box, enqueue at 64
/// clients: `write_bytes` said 430 MB/s while the device wrote 86 MB/s. The device count
/// includes other processes' writes; nothing else writes much while the bench runs.
fn disk_written_bytes() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::metadata("target").map(|m| m.dev()) else {
        return 0;
    };
    // glibc's gnu_dev_major / gnu_dev_minor.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let (major, minor) = (major.to_string(), minor.to_string());
    std::fs::read_to_string("/proc/diskstats")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&major.as_str()) && f.get(1) == Some(&minor.as_str()))
                    .then(|| f.get(9)?.parse::<u64>().ok())
                    .flatten()
            })
        })
        .map_or(0, |sectors| sectors * 512)
}

impl Internals {
    fn now() -> Internals {
        let m = &corral::metrics::M;
        let h = |h: &prometheus::Histogram| (h.get_sample_sum(), h.get_sample_count());
        Internals {
            proposals: h(&m.proposal_seconds),
            fsyncs: h(&m.fsync_seconds),
            entries: h(&m.ready_entries),
            coalesced: h(&m.enqueue_coalesced),
            log_bytes: m.log_written_bytes.get(),
            disk_bytes: disk_written_bytes(),
            cpu_s: process_cpu_seconds(),
        }
    }

    fn since(&self, b: &Internals) -> Internals {
        let d = |a: (f64, u64), b: (f64, u64)| (a.0 - b.0, a.1 - b.1);
        Internals {
            proposals: d(self.proposals, b.proposals),
            fsyncs: d(self.fsyncs, b.fsyncs),
            entries: d(self.entries, b.entries),
            coalesced: d(self.coalesced, b.coalesced),
            log_bytes: self.log_bytes - b.log_bytes,
            disk_bytes: self.disk_bytes.saturating_sub(b.disk_bytes),
            cpu_s: self.cpu_s - b.cpu_s,
        }
    }

    fn print(&self, what: &str, clients: usize, acked: u64) {
        let mean = |v: (f64, u64)| v.0 / v.1.max(1) as f64;
        let kb_per_op = |b: u64| b as f64 / 1000.0 / acked.max(1) as f64;
        eprintln!(
            "  {what} ({clients} clients): proposal {:.2} ms mean over {}; fsync {:.2} ms over {}; {:.1} entries/Ready; {:.1} msgs/command; device writes {:.1} KB per op, Raft logs {:.1} KB; CPU {:.0} us per op (whole process)",
            mean(self.proposals) * 1000.0,
            self.proposals.1,
            mean(self.fsyncs) * 1000.0,
            self.fsyncs.1,
            mean(self.entries),
            mean(self.coalesced),
            kb_per_op(self.disk_bytes),
            kb_per_op(self.log_bytes),
            self.cpu_s * 1e6 / acked.max(1) as f64,
        );
    }
}

struct Bench {
    nodes: Vec<corral::node::RunningNode>,
    admin: String,
    token: String,
    ingress: Vec<String>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start() -> Bench {
        let dir = tempfile::tempdir_in("target").expect("tempdir");
        let file = corral::init::run(&corral::init::InitArgs {
            nodes: 3,
            dir: dir.path().to_path_buf(),
            host: "127.0.0.1".into(),
            host_per_node: false,
            base_port: 27300,
            name: "bench".into(),
            force: true,
        })
        .expect("init");
        let cluster = corral::config::ClusterFile::load(&file).expect("cluster file");
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let cfg = cluster.node(id).expect("node");
            nodes.push(corral::node::start(cfg).await.expect("start"));
        }
        while nodes[0].driver.status().leader.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token");
        Bench {
            admin: nodes[0].admin_addr.to_string(),
            ingress: nodes.iter().map(|n| n.ingress_addr.to_string()).collect(),
            nodes,
            token: token.trim().to_string(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http"),
            _dir: dir,
        }
    }

    async fn put(&self, path: &str, body: &Value) {
        let r = self
            .http
            .put(format!("http://{}{path}", self.admin))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("admin put");
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("http://{}{path}", self.admin))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("admin get")
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    fn leader_client(&self) -> Arc<corral::client::Client> {
        let l = self.nodes[0].driver.status().leader.unwrap_or(1);
        self.nodes[(l - 1) as usize].client.clone()
    }
}

/// Each tenant's name and health as the busiest node sees it (the leader dispatches;
/// followers send nothing).
fn busiest_views(tenants: &Value) -> Vec<(String, Value)> {
    let items = tenants["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .map(|t| {
            let views = t["health_by_node"].as_object().cloned().unwrap_or_default();
            let busiest = views
                .values()
                .max_by_key(|h| h["in_flight"].as_u64().unwrap_or(0))
                .cloned()
                .unwrap_or(Value::Null);
            (t["name"].as_str().unwrap_or("?").to_string(), busiest)
        })
        .collect()
}

/// Each tenant's in-flight count, adaptive limit and latency estimate.
fn pool_view(tenants: &Value) -> String {
    busiest_views(tenants)
        .iter()
        .map(|(name, h)| {
            format!(
                "{name} in flight {} of limit {}, latency {} ms",
                h["in_flight"], h["limit"], h["latency_ms"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Calls in flight at all tenants, as the busiest node's pool counts them.
fn pool_in_flight(tenants: &Value) -> u64 {
    busiest_views(tenants)
        .iter()
        .map(|(_, h)| h["in_flight"].as_u64().unwrap_or(0))
        .sum()
}

/// The disk's own floor, measured in the same run: `fdatasync` after appending 1 KiB to a
/// file in `target/` (what any fsync-per-commit system pays at least once per commit).
fn disk_fdatasync(samples: usize) -> Row {
    use std::io::Write;
    let path = std::path::Path::new("target").join("bench-fdatasync.tmp");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let mut lat = Vec::with_capacity(samples);
    let started = Instant::now();
    for _ in 0..samples {
        f.write_all(&[b'x'; BODY_BYTES]).expect("probe write");
        let t = Instant::now();
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    lat.sort_by(|a, b| a.total_cmp(b));
    Row {
        what: "disk fdatasync (floor)".into(),
        clients: 1,
        per_s: samples as f64 / elapsed,
        p50_ms: pct(&lat, 0.50),
        p99_ms: pct(&lat, 0.99),
        errors: 0,
    }
}

/// This process's peak resident memory (all three nodes and the load generator), MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Mean time the nodes spent per Ready flush so far (all in-process nodes share the metric).
/// Mean and count of state store flushes (one per compaction, off the driver thread), all nodes.
fn state_flushes() -> (f64, u64) {
    let h = &corral::metrics::M.state_flush_seconds;
    let n = h.get_sample_count();
    (h.get_sample_sum() / (n.max(1) as f64) * 1000.0, n)
}

fn mean_flush_ms() -> f64 {
    let h = &corral::metrics::M.fsync_seconds;
    h.get_sample_sum() / (h.get_sample_count().max(1) as f64) * 1000.0
}

/// Baseline: replicated 1 KiB writes through the Raft client (no HTTP, no queue logic).
async fn raft_baseline(b: &Bench, seconds: u64) -> Row {
    let client = b.leader_client();
    closed_loop("raft write (baseline)", 64, seconds, move |c, i| {
        let client = client.clone();
        async move {
            let cmd = Command::ConfigPut {
                key: format!("bench/{c}/{}", i % 1000),
                value: vec![b'x'; BODY_BYTES],
                now_ms: 0,
            };
            client.write(&cmd).await.is_ok()
        }
    })
    .await
}

/// The client counts of the enqueue rows: `--clients 1,16,64,256` (the default), or fewer to
/// profile one row.
fn enqueue_clients() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--clients")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64, 256])
}

/// Which HTTP client the enqueue rows load the nodes with: `--client raw` (the default, the
/// lean keep-alive client of `support/http1.rs`), `reqwest` (the rows as measured up to
/// 2026-12-04), or `both` (each row twice, reqwest first, to compare in one run).
fn enqueue_client_kinds() -> Vec<&'static str> {
    let args: Vec<String> = std::env::args().collect();
    let kind = args
        .iter()
        .position(|a| a == "--client")
        .and_then(|i| args.get(i + 1))
        .map_or("raw", String::as_str);
    match kind {
        "reqwest" => vec!["reqwest"],
        "both" => vec!["reqwest", "raw"],
        _ => vec!["raw"],
    }
}

/// The queue the enqueue rows fill, created anew before each row.
async fn reset_enqueue_queue(b: &Bench) {
    let _ = b
        .http
        .delete(format!("http://{}/admin/queues/bench-in", b.admin))
        .bearer_auth(&b.token)
        .send()
        .await;
    b.put(
        "/admin/queues/bench-in",
        &json!({"dedup": {"window_ms": 0}, "max_messages": 10_000_000, "max_bytes": 1_073_741_824}),
    )
    .await;
}

/// One enqueue row through reqwest: client `c` posts to ingress `c % 3`.
async fn enqueue_row_reqwest(b: &Bench, clients: usize, seconds: u64) -> Row {
    let urls: Arc<Vec<String>> = Arc::new(
        b.ingress
            .iter()
            .map(|a| format!("http://{a}/queues/bench-in/messages"))
            .collect(),
    );
    let http = b.http.clone();
    let body = bytes::Bytes::from(vec![b'o'; BODY_BYTES]);
    closed_loop(
        "enqueue over HTTP (reqwest)",
        clients,
        seconds,
        move |c, _| {
            let (http, urls, body) = (http.clone(), urls.clone(), body.clone());
            async move {
                let url = &urls[c % urls.len()];
                matches!(http.post(url).body(body).send().await, Ok(r) if r.status() == 202)
            }
        },
    )
    .await
}

/// One enqueue row through the lean client: client `c` keeps one connection to ingress
/// `c % 3` (its own; the mutex is never contended).
async fn enqueue_row_raw(b: &Bench, clients: usize, seconds: u64) -> Row {
    let addrs: Vec<std::net::SocketAddr> = b.nodes.iter().map(|n| n.ingress_addr).collect();
    let body = vec![b'o'; BODY_BYTES];
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        addrs
            .iter()
            .map(|a| http1::post(*a, "/queues/bench-in/messages", None, &body))
            .collect(),
    );
    let conns: Arc<Vec<tokio::sync::Mutex<http1::Conn>>> = Arc::new(
        (0..clients)
            .map(|c| tokio::sync::Mutex::new(http1::Conn::new(addrs[c % addrs.len()])))
            .collect(),
    );
    closed_loop("enqueue over HTTP", clients, seconds, move |c, _| {
        let (conns, requests) = (conns.clone(), requests.clone());
        async move {
            let mut conn = conns[c].lock().await;
            let request = &requests[c % requests.len()];
            matches!(conn.roundtrip(request).await, Ok(202))
        }
    })
    .await
}

/// Enqueue over HTTP keep-alive, clients spread over the three nodes' ingress listeners.
async fn enqueue_rows(b: &Bench, seconds: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    for clients in enqueue_clients() {
        for kind in enqueue_client_kinds() {
            // Each row starts from an empty queue, so no row pays for another's backlog.
            reset_enqueue_queue(b).await;
            rows.push(match kind {
                "reqwest" => enqueue_row_reqwest(b, clients, seconds).await,
                _ => enqueue_row_raw(b, clients, seconds).await,
            });
        }
    }
    reset_enqueue_queue(b).await;
    rows
}

/// Push deliveries/s: a backlog enqueued while the queue is pull, then switched to push to two
/// emulated tenants; timed from the switch until the queue is empty.
async fn delivery_row(b: &Bench, backlog: u64) -> (Row, u64) {
    let mut tenants = Vec::new();
    for name in ["bench-t1", "bench-t2"] {
        let mut cfg = TenantConfig::new(name);
        cfg.worker_slots = 512;
        cfg.flows.push((
            "orders".into(),
            FlowSpec {
                idempotent: true,
                ..FlowSpec::echo("/orders")
            },
        ));
        let h = spawn_tenant(cfg).await.expect("tenant");
        let mut d = serde_json::to_value(h.description()).expect("desc");
        d["max_in_flight"] = json!(256);
        b.put(&format!("/admin/tenants/{name}"), &d).await;
        tenants.push(h);
    }
    let queue =
        json!({"dedup": {"window_ms": 0}, "max_messages": 10_000_000, "max_bytes": 1_073_741_824});
    b.put("/admin/queues/bench-out", &queue).await;
    let batch: Vec<Value> = (0..500)
        .map(|_| json!({"body": "o".repeat(BODY_BYTES)}))
        .collect();
    let batch = serde_json::to_vec(&batch).expect("batch");
    let mut sent = 0;
    let loading = Instant::now();
    while sent < backlog {
        let r = b
            .http
            .post(format!(
                "http://{}/queues/bench-out/messages:batch",
                b.ingress[0]
            ))
            .body(batch.clone())
            .send()
            .await
            .expect("batch");
        assert_eq!(r.status(), 202);
        sent += 500;
    }
    println!(
        "backlog: {sent} messages enqueued in {:.1} s by batches of 500 ({:.0}/s); peak RSS {} MiB",
        loading.elapsed().as_secs_f64(),
        sent as f64 / loading.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    // Wait until every node's pool sees both tenants healthy.
    loop {
        let v = b.get("/admin/tenants").await;
        let ok = v["items"].as_array().is_some_and(|items| {
            items.len() == 2
                && items.iter().all(|t| {
                    t["health_by_node"]
                        .as_object()
                        .is_some_and(|m| m.values().all(|h| h["status"] == "healthy"))
                })
        });
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut push = queue.clone();
    push["delivery"] = json!({"mode": "push", "path": "/http/orders"});
    let started = Instant::now();
    b.put("/admin/queues/bench-out", &push).await;
    let mut last = 0;
    let mut next_sample = Duration::from_secs(2);
    // (samples, sum of the pool's in-flight calls, samples with none in flight)
    let mut samples = (0u64, 0u64, 0u64);
    loop {
        let s = b.get("/admin/queues/bench-out?consistency=local").await;
        let depth = s["stats"]["depth"].as_u64().unwrap_or(u64::MAX);
        last = s["stats"]["dead_letters"].as_u64().unwrap_or(last);
        if depth == 0 {
            break;
        }
        // At least 600 s, and 2 ms per message for big backlogs.
        let limit_s = 600.max(backlog / 500);
        if started.elapsed() > Duration::from_secs(limit_s) {
            eprintln!("delivery did not finish in {limit_s} s; depth {depth}");
            break;
        }
        let pool = b.get("/admin/tenants").await;
        let in_flight = pool_in_flight(&pool);
        samples.0 += 1;
        samples.1 += in_flight;
        samples.2 += u64::from(in_flight == 0);
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(2);
            eprintln!(
                "  drain at {:.0} s: depth {depth}; {}; since the last line: {:.0} in flight on average, none in {:.0}% of {} samples",
                started.elapsed().as_secs_f64(),
                pool_view(&pool),
                samples.1 as f64 / samples.0.max(1) as f64,
                100.0 * samples.2 as f64 / samples.0.max(1) as f64,
                samples.0
            );
            samples = (0, 0, 0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut processed = 0;
    for t in &tenants {
        let url = format!("{}/counters", t.description().control_url);
        let v: Value = b
            .http
            .get(url)
            .send()
            .await
            .expect("counters")
            .json()
            .await
            .unwrap_or(Value::Null);
        processed += v["totals"]["processed"].as_u64().unwrap_or(0);
    }
    (
        Row {
            what: "push delivery (backlog drain)".into(),
            clients: 2,
            per_s: sent as f64 / elapsed,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            errors: last,
        },
        processed,
    )
}

fn main() {
    if std::env::var_os("BENCH_KEEP_THP").is_none() {
        corral::disable_transparent_huge_pages();
    }
    let seconds = arg("--seconds", 5);
    let backlog = arg("--backlog", 50_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let disk = disk_fdatasync(200);
    let (baseline, rows, delivery, processed) = rt.block_on(async {
        let b = Bench::start().await;
        let baseline = raft_baseline(&b, seconds).await;
        let rows = enqueue_rows(&b, seconds).await;
        let (delivery, processed) = delivery_row(&b, backlog).await;
        for n in b.nodes {
            n.shutdown().await;
        }
        (baseline, rows, delivery, processed)
    });
    println!(
        "{:<30} {:>8} {:>10} {:>9} {:>9} {:>7} {:>12}",
        "workload", "clients", "per s", "p50 ms", "p99 ms", "errors", "x baseline"
    );
    let all: Vec<&Row> = std::iter::once(&disk)
        .chain(std::iter::once(&baseline))
        .chain(rows.iter())
        .chain(std::iter::once(&delivery))
        .collect();
    for r in &all {
        println!(
            "{:<30} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>12.2}",
            r.what,
            r.clients,
            r.per_s,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.per_s / baseline.per_s
        );
    }
    println!(
        "log write + fdatasync per Ready, mean over the run: {:.2} ms (disk fdatasync p50 {:.2} ms)",
        mean_flush_ms(),
        disk.p50_ms
    );
    let (flush_ms, flushes) = state_flushes();
    println!(
        "state store flushes (one per log compaction, off the driver thread): {flushes}, mean {flush_ms:.1} ms"
    );
    println!(
        "push: {backlog} messages delivered, {processed} processed by the tenants (dead letters in the errors column); peak RSS {} MiB",
        peak_rss_mib()
    );
    let json = json!({
        "baseline": {"what": baseline.what, "per_s": baseline.per_s, "p50_ms": baseline.p50_ms, "p99_ms": baseline.p99_ms},
        "rows": all.iter().map(|r| json!({
            "what": r.what, "clients": r.clients, "per_s": r.per_s, "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms, "errors": r.errors, "ratio_vs_baseline": r.per_s / baseline.per_s,
        })).collect::<Vec<_>>(),
        "backlog": backlog, "processed": processed, "mean_flush_ms": mean_flush_ms(),
    });
    let _ = std::fs::create_dir_all("target/bench-results");
    let _ = std::fs::write(
        "target/bench-results/queue.json",
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}
