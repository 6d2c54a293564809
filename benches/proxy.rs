//! Sync proxy overhead: the same 1 KiB echo call to an emulated tenant made directly, through
//! HAProxy (Debian package) and through a one-node corral, in one run, at concurrency 1
//! (added latency) and at `--concurrency` (throughput). HAProxy and corral are configured
//! alike: one backend, keep-alive to the tenant, the caller's Basic credentials passed
//! through, no retries needed.
//!
//! Run: `cargo bench --bench proxy` (options: `-- --seconds N --concurrency C`). Installs
//! haproxy with apt-get when missing. Prints a table and writes `bench-results/proxy.json`.
//! The load generator and the tenant share this process; all three paths pay that alike.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use corral::emulator::{spawn_tenant, TenantConfig};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_corral");
const BODY_BYTES: usize = 1024;
/// Loopback prefix of the bench's corral node and HAProxy (away from the tests' 127.1-250.x).
const NET: &str = "127.251.7";

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Kills the child (by the pid we started) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ensure_haproxy() -> String {
    let found = |p: &str| std::path::Path::new(p).exists().then(|| p.to_string());
    if let Some(p) = found("/usr/sbin/haproxy") {
        return p;
    }
    eprintln!("haproxy missing; installing the Debian package");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "haproxy"])
        .status();
    found("/usr/sbin/haproxy").expect("haproxy could not be installed")
}

fn haproxy(dir: &std::path::Path, listen: &str, tenant: &str) -> Proc {
    let cfg = format!(
        "global\n  maxconn 4096\n  nbthread 2\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
         frontend f\n  bind {listen}\n  default_backend b\n\
         backend b\n  http-reuse always\n  server t1 {tenant}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(ensure_haproxy())
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy");
    Proc(child)
}

/// A one-node corral cluster in `dir`; returns the process and its admin token.
fn corral(dir: &std::path::Path) -> (Proc, String) {
    let out = Command::new(BIN)
        .args([
            "init",
            "--nodes",
            "1",
            "--host-per-node",
            "--base-port",
            "7100",
            "--host",
        ])
        .arg(format!("{NET}.1"))
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(dir.join("node.log")).unwrap();
    let child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(dir.join("cluster.toml"))
        .args(["--id", "1"])
        .env("CORRAL_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (Proc(child), token)
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Row {
    name: &'static str,
    concurrency: usize,
    per_s: f64,
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

async fn load(name: &'static str, url: &str, auth: &str, concurrency: usize, seconds: f64) -> Row {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let body = bytes::Bytes::from(vec![b'x'; BODY_BYTES]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, auth, body) = (
                http.clone(),
                url.to_string(),
                auth.to_string(),
                body.clone(),
            );
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/octet-stream")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(b) if b.len() == BODY_BYTES => {
                                lat.push(t.elapsed().as_secs_f64() * 1000.0)
                            }
                            _ => errors += 1,
                        },
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Row {
        name,
        concurrency,
        per_s: all.len() as f64 / elapsed,
        p50_ms: pct(&all, 0.5),
        p99_ms: pct(&all, 0.99),
        errors,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() {
    let seconds: f64 = arg("--seconds", 5.0);
    let concurrency: usize = arg("--concurrency", 32);
    let _ = std::fs::create_dir_all("target");
    let dir = tempfile::tempdir_in("target").unwrap();
    let tenant = spawn_tenant(TenantConfig::new("bench1")).await.unwrap();
    let d = tenant.description();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", d.basic_user, d.basic_password))
    );
    let tenant_addr = d.runtime_url.trim_start_matches("http://").to_string();
    let hap_listen = format!("{NET}.9:7190");
    let _hap = haproxy(dir.path(), &hap_listen, &tenant_addr);
    let (_node, token) = corral(dir.path());
    let admin = format!("http://{NET}.1:7102");
    let http = reqwest::Client::new();
    until("the corral node", || {
        let (http, admin, token) = (http.clone(), admin.clone(), token.clone());
        async move {
            let v: Value = http
                .get(format!("{admin}/admin/cluster"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["node"]["leader"].as_u64()
        }
    })
    .await;
    let mut t = serde_json::to_value(&d).unwrap();
    t["health"] = json!({"interval_ms": 200, "fall": 1, "rise": 1});
    let r = http
        .put(format!("{admin}/admin/tenants/bench1"))
        .bearer_auth(&token)
        .json(&t)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = http
        .put(format!("{admin}/admin/routes/bench"))
        .bearer_auth(&token)
        .json(&json!({"auth": "passthrough"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let targets = [
        ("direct", format!("{}/http/echo", d.runtime_url)),
        ("haproxy", format!("http://{hap_listen}/http/echo")),
        ("corral", format!("http://{NET}.1:7101/http/echo")),
    ];
    for (name, url) in &targets {
        let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
        until(name, || {
            let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
            async move {
                let r = http
                    .post(&url)
                    .header("authorization", &auth)
                    .body("x")
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
    }
    println!("load average before: {}", loadavg());
    let mut rows = Vec::new();
    for c in [1, concurrency] {
        for (name, url) in &targets {
            load(name, url, &auth, c, 1.0).await; // warm-up
            rows.push(load(name, url, &auth, c, seconds).await);
        }
    }
    println!("load average after: {}", loadavg());
    println!("\n| path | concurrency | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | x direct req/s | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.name == "direct" && b.concurrency == r.concurrency)
            .unwrap();
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.2} | {} |",
            r.name,
            r.concurrency,
            r.per_s,
            r.p50_ms,
            r.p99_ms,
            r.p50_ms - base.p50_ms,
            r.p99_ms - base.p99_ms,
            r.per_s / base.per_s,
            r.errors
        );
        out.push(
            json!({"path": r.name, "concurrency": r.concurrency, "per_s": r.per_s,
            "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "added_p50_ms": r.p50_ms - base.p50_ms,
            "added_p99_ms": r.p99_ms - base.p99_ms, "errors": r.errors}),
        );
    }
    let _ = std::fs::create_dir_all("bench-results");
    let _ = std::fs::write(
        "bench-results/proxy.json",
        serde_json::to_string_pretty(
            &json!({"seconds": seconds, "rows": out, "loadavg": loadavg()}),
        )
        .unwrap(),
    );
}
