//! corral side by side with the brokers and proxies a user would pick instead, on this machine
//! and in one run (issue #9). Run: `cargo bench --bench peers [-- --quick | --seconds N |
//! --peers corral,nats,rabbitmq,haproxy,nginx | --no-install]`; see benches/README.md.
//!
//! Queue section (corral, NATS JetStream R3, RabbitMQ quorum queue, each a three-node cluster
//! on loopback, started one system at a time so idle clusters do not share the cores): durable
//! enqueue of 1 KiB messages by 64 producers, each acknowledged only once durable on a
//! majority (closed loop: maximum), consume-and-acknowledge of that backlog, and a fixed-rate
//! (open-loop) enqueue timed from each message's intended send time. Proxy section: one
//! in-process backend called directly, through HAProxy, nginx and corral's sync route.
//! Everything started is stopped by pid (process group) when done, on error and on ctrl-c.
//! Prints markdown tables with ratios against the peers and writes target/peers/peers.json.

mod corral;
#[path = "../support/http1.rs"]
mod http1;
mod load;
mod nats;
mod procs;
mod proxy;
mod rabbit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use load::Stats;

/// Every message body: 1 KiB.
const MESSAGE_BYTES: usize = 1024;
/// HTTP connections the load generator may keep per host (above any worker count used).
const HTTP_POOL_PER_HOST: usize = 1024;
/// One request's bound: a stuck server shows as errors, not a hung run.
const HTTP_TIMEOUT_MS: u64 = 30_000;
/// A consume phase ends when no message arrived for this long.
const CONSUME_IDLE_MS: u64 = 3_000;

const QUEUE_PEERS: [&str; 3] = ["corral", "nats", "rabbitmq"];
const PROXY_PEERS: [&str; 3] = ["haproxy", "nginx", "corral"];

#[derive(Clone, Debug, Serialize)]
struct Settings {
    seconds: u64,
    warmup_seconds: u64,
    producers: usize,
    consumers: usize,
    message_bytes: usize,
    queue_rate_per_s: f64,
    proxy_connections: usize,
    proxy_rate_per_s: f64,
    consume_max_seconds: u64,
    peers: Vec<String>,
    install: bool,
    keep: bool,
}

impl Settings {
    fn from_args() -> Settings {
        let args: Vec<String> = std::env::args().collect();
        let has = |f: &str| args.iter().any(|a| a == f);
        let val = |f: &str| {
            args.iter()
                .position(|a| a == f)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let num = |f: &str, d: f64| val(f).and_then(|v| v.parse().ok()).unwrap_or(d);
        let quick = has("--quick");
        let seconds = num("--seconds", if quick { 3.0 } else { 15.0 }) as u64;
        let peers = val("--peers")
            .map(|p| p.split(',').map(str::to_string).collect())
            .unwrap_or_else(|| {
                ["corral", "nats", "rabbitmq", "haproxy", "nginx"]
                    .map(String::from)
                    .to_vec()
            });
        Settings {
            seconds,
            warmup_seconds: if quick { 1 } else { 3 },
            producers: num("--producers", 64.0) as usize,
            consumers: num("--consumers", 64.0) as usize,
            message_bytes: MESSAGE_BYTES,
            queue_rate_per_s: num("--queue-rate", 1000.0),
            proxy_connections: num("--proxy-connections", 64.0) as usize,
            proxy_rate_per_s: num("--proxy-rate", 2000.0),
            consume_max_seconds: num("--consume-max-seconds", if quick { 15.0 } else { 90.0 })
                as u64,
            peers,
            install: !has("--no-install"),
            keep: has("--keep"),
        }
    }

    fn wants(&self, peer: &str) -> bool {
        self.peers.iter().any(|p| p == peer)
    }
}

#[derive(Debug, Serialize)]
struct QueueRow {
    system: String,
    enqueue: Stats,
    consume: Stats,
    open_loop: Stats,
    /// corral only: the open-loop backlog drained by push delivery to the backend tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    push_drain: Option<Stats>,
}

#[derive(Debug, Serialize)]
struct ProxyRow {
    target: String,
    closed_loop: Stats,
    open_loop: Stats,
}

#[derive(Debug, Serialize)]
struct Failure {
    system: String,
    section: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct Report {
    started_utc: String,
    cores: usize,
    loadavg_before: String,
    loadavg_after: String,
    settings: Settings,
    queue: Vec<QueueRow>,
    proxy: Vec<ProxyRow>,
    not_measured: Vec<Failure>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn main() {
    let s = Settings::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            r = run(s) => match r {
                Ok(()) => 0,
                Err(e) => { eprintln!("peers: {e}"); 1 }
            },
            // Dropping `run` drops every Proc it holds: each stops its process group.
            _ = tokio::signal::ctrl_c() => { eprintln!("interrupted: stopped everything started"); 130 }
            _ = term.recv() => { eprintln!("terminated: stopped everything started"); 143 }
        }
    });
    std::process::exit(code);
}

async fn run(s: Settings) -> Result<(), String> {
    let base = target_dir().join("peers");
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .disable_cleanup(s.keep)
        .tempdir_in(&base)
        .map_err(|e| e.to_string())?;
    eprintln!("peers: working in {} ({:?})", dir.path().display(), s);
    let mut report = Report {
        started_utc: chrono::Utc::now().to_rfc3339(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before: loadavg(),
        loadavg_after: String::new(),
        settings: s.clone(),
        queue: Vec::new(),
        proxy: Vec::new(),
        not_measured: Vec::new(),
    };
    let missing = install(&s).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(HTTP_POOL_PER_HOST)
        .timeout(Duration::from_millis(HTTP_TIMEOUT_MS))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let body = bytes::Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    // The one backend: corral's push tenant in the queue section, the proxies' upstream.
    proxy::start_backend()?;
    procs::wait_tcp(proxy::BACKEND, Duration::from_secs(5)).await?;
    for sys in QUEUE_PEERS.into_iter().filter(|p| s.wants(p)) {
        let sub = dir.path().join(format!("queue-{sys}"));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        eprintln!("== queue: {sys}");
        let r = match missing.get(sys) {
            Some(reason) => Err(reason.clone()),
            None => queue_system(sys, &s, &sub, http.clone(), body.clone()).await,
        };
        match r {
            Ok(row) => report.queue.push(row),
            Err(reason) => fail(&mut report, sys, "queue", reason),
        }
    }
    if PROXY_PEERS.iter().any(|p| s.wants(p)) {
        proxy_section(&s, dir.path(), &http, &missing, &mut report).await?;
    }
    report.loadavg_after = loadavg();
    print_report(&report);
    let out = base.join("peers.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&out, json).map_err(|e| e.to_string())?;
    eprintln!("peers: wrote {}", out.display());
    Ok(())
}

fn fail(report: &mut Report, system: &str, section: &str, reason: String) {
    eprintln!("peers: {system} ({section}) not measured: {reason}");
    report.not_measured.push(Failure {
        system: system.into(),
        section: section.into(),
        reason,
    });
}

/// Installs the chosen peers that are missing; answers, per peer, why it cannot run.
async fn install(s: &Settings) -> std::collections::HashMap<&'static str, String> {
    let mut missing = std::collections::HashMap::new();
    let mut apt: Vec<(&'static str, &'static str)> = Vec::new();
    if s.wants("rabbitmq") && !Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() {
        apt.push(("rabbitmq", "rabbitmq-server"));
    }
    for p in ["haproxy", "nginx"] {
        if s.wants(p) && procs::which(p).is_none() && !Path::new("/usr/sbin").join(p).exists() {
            apt.push((p, p));
        }
    }
    if !apt.is_empty() {
        let pkgs: Vec<&str> = apt.iter().map(|(_, pkg)| *pkg).collect();
        let r = if s.install {
            let pkgs: Vec<String> = pkgs.iter().map(|p| p.to_string()).collect();
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = pkgs.iter().map(String::as_str).collect();
                procs::apt_install(&refs)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        } else {
            Err(format!(
                "not installed ({}) and --no-install",
                pkgs.join(" ")
            ))
        };
        if let Err(e) = r {
            for (peer, _) in &apt {
                missing.insert(*peer, format!("install failed: {e}"));
            }
        }
    }
    if s.wants("nats") {
        let install = s.install;
        let r = tokio::task::spawn_blocking(move || procs::nats_server(install))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = r {
            missing.insert("nats", e);
        }
    }
    missing
}

/// Start one queue system, run the three phases, stop it (drop).
async fn queue_system(
    sys: &str,
    s: &Settings,
    dir: &Path,
    http: reqwest::Client,
    body: bytes::Bytes,
) -> Result<QueueRow, String> {
    let (enqueue, consume_op): (load::Op, load::ConsumeOp);
    let mut corral_node = None;
    // Each arm keeps its system alive in `_guard` until the phases are done.
    let _guard: Box<dyn std::any::Any + Send>;
    match sys {
        "corral" => {
            let c = corral::Corral::start(dir, http).await?;
            c.create_queue().await?;
            enqueue = c.enqueue_op(body);
            consume_op = c.consume_op();
            corral_node = Some(c);
            _guard = Box::new(());
        }
        "nats" => {
            let bin = procs::nats_server(false)?;
            let n = nats::Nats::start(&bin, dir).await?;
            enqueue = n.enqueue_op(body);
            consume_op = n.consume_op(s.consumers).await?;
            _guard = Box::new(n);
        }
        "rabbitmq" => {
            let r = rabbit::Rabbit::start(dir).await?;
            enqueue = r.enqueue_op(body, s.producers).await?;
            consume_op = r.consume_op(s.consumers).await?;
            _guard = Box::new(r);
        }
        other => return Err(format!("unknown queue system {other}")),
    }
    let dur = Duration::from_secs(s.seconds);
    eprintln!("   warm-up {} s", s.warmup_seconds);
    let warm = load::closed_loop(
        enqueue.clone(),
        s.producers,
        Duration::from_secs(s.warmup_seconds),
    )
    .await;
    eprintln!("   closed-loop enqueue, {} producers, {dur:?}", s.producers);
    let closed = load::closed_loop(enqueue.clone(), s.producers, dur).await;
    show(sys, "enqueue", &closed);
    let backlog = warm.ok + closed.ok;
    eprintln!(
        "   consume-and-ack of {backlog} messages, {} consumers",
        s.consumers
    );
    let consumed = load::consume(
        consume_op,
        s.consumers,
        backlog,
        Duration::from_millis(CONSUME_IDLE_MS),
        Duration::from_secs(s.consume_max_seconds),
    )
    .await;
    show(sys, "consume", &consumed);
    eprintln!("   open-loop enqueue at {}/s, {dur:?}", s.queue_rate_per_s);
    let open = load::open_loop(enqueue, s.queue_rate_per_s, dur).await;
    show(sys, "open loop", &open);
    let push_drain = match &corral_node {
        Some(c) => Some(corral_push(c, s).await),
        None => None,
    };
    Ok(QueueRow {
        system: sys.into(),
        enqueue: closed,
        consume: consumed,
        open_loop: open,
        push_drain,
    })
}

/// The open-loop backlog delivered by push to the backend tenant (errors, not a failed row,
/// when push cannot start).
async fn corral_push(c: &corral::Corral, s: &Settings) -> Stats {
    eprintln!("   push delivery of the open-loop backlog to the backend tenant");
    let r = match c.register_backend(proxy::BACKEND).await {
        Ok(()) => {
            c.push_drain(Duration::from_secs(s.consume_max_seconds))
                .await
        }
        Err(e) => Err(e),
    };
    let st = r.unwrap_or_else(|e| Stats {
        errors: 1,
        first_error: Some(e),
        ..Default::default()
    });
    show("corral", "push drain", &st);
    st
}

fn show(sys: &str, what: &str, st: &Stats) {
    eprintln!(
        "   {sys} {what}: {:.0}/s p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, {} ok, {} errors{}",
        st.per_s,
        st.p50_ms,
        st.p99_ms,
        st.p999_ms,
        st.ok,
        st.errors,
        st.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

/// Direct baseline, then each proxy: closed loop (maximum) and open loop (fixed rate).
async fn proxy_section(
    s: &Settings,
    dir: &Path,
    http: &reqwest::Client,
    missing: &std::collections::HashMap<&'static str, String>,
    report: &mut Report,
) -> Result<(), String> {
    eprintln!("== proxy: direct (baseline)");
    let row = proxy_target("direct", s, http, vec![proxy::direct_url()]).await;
    report.proxy.push(row);
    for target in PROXY_PEERS.into_iter().filter(|p| s.wants(p)) {
        eprintln!("== proxy: {target}");
        if let Some(reason) = missing.get(target) {
            fail(report, target, "proxy", reason.clone());
            continue;
        }
        let sub = dir.join(format!("proxy-{target}"));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        let r = match target {
            "haproxy" => match proxy::start_haproxy(&sub).await {
                Ok(_p) => Ok(proxy_target(target, s, http, vec![proxy::haproxy_url()]).await),
                Err(e) => Err(e),
            },
            "nginx" => match proxy::start_nginx(&sub).await {
                Ok(_p) => Ok(proxy_target(target, s, http, vec![proxy::nginx_url()]).await),
                Err(e) => Err(e),
            },
            _ => corral_proxy(s, &sub, http).await,
        };
        match r {
            Ok(row) => report.proxy.push(row),
            Err(reason) => fail(report, target, "proxy", reason),
        }
    }
    Ok(())
}

async fn corral_proxy(
    s: &Settings,
    dir: &Path,
    http: &reqwest::Client,
) -> Result<ProxyRow, String> {
    let c = corral::Corral::start(dir, http.clone()).await?;
    c.register_backend(proxy::BACKEND).await?;
    c.create_route().await?;
    c.wait_route().await?;
    let urls = (1..=3)
        .map(|id| format!("{}{}/ping", corral::ingress(id), corral::ROUTE_PREFIX))
        .collect();
    let row = proxy_target("corral", s, http, urls).await;
    drop(c);
    Ok(row)
}

async fn proxy_target(
    name: &str,
    s: &Settings,
    http: &reqwest::Client,
    urls: Vec<String>,
) -> ProxyRow {
    let op = proxy::get_op(http.clone(), urls);
    let dur = Duration::from_secs(s.seconds);
    let _ = load::closed_loop(
        op.clone(),
        s.proxy_connections,
        Duration::from_secs(s.warmup_seconds),
    )
    .await;
    let closed = load::closed_loop(op.clone(), s.proxy_connections, dur).await;
    show(name, "closed loop", &closed);
    let open = load::open_loop(op, s.proxy_rate_per_s, dur).await;
    show(name, "open loop", &open);
    ProxyRow {
        target: name.into(),
        closed_loop: closed,
        open_loop: open,
    }
}

/// `a / b`, or "-" when either is missing or zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn print_report(r: &Report) {
    let s = &r.settings;
    println!(
        "\n# corral vs peers ({} cores, load before {}, after {}; {} s per phase)\n",
        r.cores, r.loadavg_before, r.loadavg_after, s.seconds
    );
    let corral_q = r.queue.iter().find(|q| q.system == "corral");
    if !r.queue.is_empty() {
        println!(
            "## Durable enqueue, 1 KiB, {} producers, closed loop (acked when durable on a majority)\n",
            s.producers
        );
        println!(
            "| system | msgs/s | p50 ms | p99 ms | p99.9 ms | errors | corral ÷ system (msgs/s) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for q in &r.queue {
            let e = &q.enqueue;
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                q.system,
                e.per_s,
                e.p50_ms,
                e.p99_ms,
                e.p999_ms,
                e.errors,
                ratio(corral_q.map(|c| c.enqueue.per_s), Some(e.per_s))
            );
        }
        println!(
            "\n## Consume and acknowledge the backlog, {} consumers\n",
            s.consumers
        );
        println!("| system | messages | msgs/s | errors | corral ÷ system (msgs/s) |");
        println!("|---|---:|---:|---:|---:|");
        for q in &r.queue {
            let c = &q.consume;
            println!(
                "| {} | {} | {:.0} | {} | {} |",
                q.system,
                c.ok,
                c.per_s,
                c.errors,
                ratio(corral_q.map(|x| x.consume.per_s), Some(c.per_s))
            );
        }
        if let Some(p) = corral_q.and_then(|c| c.push_drain.as_ref()) {
            let vs: Vec<String> = r
                .queue
                .iter()
                .filter(|q| q.system != "corral")
                .map(|q| {
                    format!(
                        "{} {}",
                        q.system,
                        ratio(Some(p.per_s), Some(q.consume.per_s))
                    )
                })
                .collect();
            println!(
                "\ncorral push delivery of the open-loop backlog to the backend tenant: {} messages \
                 at {:.0} msgs/s, {} errors{}; corral push ÷ system: {}",
                p.ok,
                p.per_s,
                p.errors,
                p.first_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
                if vs.is_empty() { "-".into() } else { vs.join(", ") }
            );
        }
        println!(
            "\n## Durable enqueue at a fixed {:.0} msgs/s (open loop: latency from the intended send time)\n",
            s.queue_rate_per_s
        );
        println!("| system | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | corral p99 ÷ system p99 |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for q in &r.queue {
            let o = &q.open_loop;
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
                q.system,
                o.per_s,
                o.p50_ms,
                o.p99_ms,
                o.p999_ms,
                o.errors,
                ratio(corral_q.map(|c| c.open_loop.p99_ms), Some(o.p99_ms))
            );
        }
    }
    if !r.proxy.is_empty() {
        print_proxy(r);
    }
    if !r.not_measured.is_empty() {
        println!("\n## Not measured (no comparison printed)\n");
        for f in &r.not_measured {
            println!("- {} ({}): {}", f.system, f.section, f.reason);
        }
    }
}

fn print_proxy(r: &Report) {
    let s = &r.settings;
    let direct = r.proxy.iter().find(|p| p.target == "direct");
    let corral = r.proxy.iter().find(|p| p.target == "corral");
    println!(
        "\n## Sync proxy to one backend, {} connections, closed loop\n",
        s.proxy_connections
    );
    println!("| target | req/s | p50 ms | p99 ms | p99.9 ms | errors | ÷ direct (req/s) | corral ÷ target (req/s) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.proxy {
        let c = &p.closed_loop;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            p.target,
            c.per_s,
            c.p50_ms,
            c.p99_ms,
            c.p999_ms,
            c.errors,
            ratio(Some(c.per_s), direct.map(|d| d.closed_loop.per_s)),
            ratio(corral.map(|x| x.closed_loop.per_s), Some(c.per_s))
        );
    }
    println!(
        "\n## Sync proxy at a fixed {:.0} req/s (open loop): added latency over direct\n",
        s.proxy_rate_per_s
    );
    println!("| target | achieved/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.proxy {
        let o = &p.open_loop;
        let added = |f: fn(&Stats) -> f64| {
            direct.map_or("-".into(), |d| format!("{:.2}", f(o) - f(&d.open_loop)))
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            p.target,
            o.per_s,
            o.p50_ms,
            o.p99_ms,
            o.p999_ms,
            added(|x| x.p50_ms),
            added(|x| x.p99_ms),
            o.errors
        );
    }
}
