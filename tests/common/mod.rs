//! Test harness for real processes of the built `corral` binary.
//!
//! Each cluster lives in its own temp dir and on its own loopback addresses (127.a.b.1..n, with
//! `a` from the test process id and `b` from a per-process counter), so tests run in parallel
//! without port clashes. A cluster kills only the processes it started, by pid, when dropped.
//! Nothing here sleeps to synchronise: every wait polls a condition against a deadline.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");
static NEXT_NET: AtomicU32 = AtomicU32::new(1);

/// Polls `f` every 20 ms until it returns Some or the deadline passes.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir`, recursively (for "no plaintext under the data dirs" checks).
pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files_under(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// True when `needle` occurs anywhere in `hay` (raw bytes).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A fresh loopback network prefix for one cluster: "127.a.b".
pub fn fresh_net() -> String {
    let a = 1 + std::process::id() % 250;
    let b = NEXT_NET.fetch_add(1, Ordering::Relaxed);
    format!("127.{a}.{b}")
}

pub struct Node {
    pub id: u64,
    pub admin: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub token: String,
    pub nodes: Vec<Node>,
    pub http: reqwest::blocking::Client,
}

/// Runs `corral init` for `n` nodes in `dir` on the loopback prefix `net`.
pub fn init_cluster(dir: &Path, n: usize, net: &str) {
    let out = Command::new(BIN)
        .args([
            "init",
            "--nodes",
            &n.to_string(),
            "--host-per-node",
            "--base-port",
            "7100",
            "--host",
        ])
        .arg(format!("{net}.1"))
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run corral init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Creates (does not start) a cluster; `tweak` may edit the cluster file's text.
    pub fn new(n: usize, tweak: impl FnOnce(String) -> String) -> Cluster {
        // CORRAL_KEEP_TEST_DIRS=1 keeps the cluster dir (logs, data) for a post-mortem.
        let keep = std::env::var_os("CORRAL_KEEP_TEST_DIRS").is_some();
        let dir = tempfile::Builder::new()
            .prefix("corral-test-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("tempdir");
        if keep {
            eprintln!("cluster dir kept: {}", dir.path().display());
        }
        let net = fresh_net();
        init_cluster(dir.path(), n, &net);
        let file = dir.path().join("cluster.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, tweak(text)).unwrap();
        let token = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let nodes = (1..=n as u64)
            .map(|id| Node {
                id,
                admin: format!("{net}.{id}:7102"),
                data_dir: dir.path().join(format!("data/node-{id}")),
                child: None,
            })
            .collect();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Cluster {
            dir,
            file,
            token,
            nodes,
            http,
        }
    }

    /// Creates and starts an n-node cluster with faster compaction for tests.
    pub fn start_new(n: usize) -> Cluster {
        let mut c = Cluster::new(n, |t| t);
        c.start_all();
        c
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.start(id);
        }
    }

    pub fn start(&mut self, id: u64) {
        self.start_with_env(id, &[]);
    }

    /// Starts node `id` with extra environment variables (e.g. a failpoint).
    pub fn start_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .unwrap();
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(&self.file)
            .args(["--id", &id.to_string()])
            .env("CORRAL_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.nodes[(id - 1) as usize].child = Some(child);
    }

    /// kill -9, by the pid we started.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.nodes[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to node `id`'s process (by the pid we started), e.g. SIGSTOP / SIGCONT.
    pub fn signal(&self, id: u64, signal: i32) {
        if let Some(c) = &self.nodes[(id - 1) as usize].child {
            // SAFETY: kill(2) on a child pid this harness spawned and has not yet reaped.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// SIGTERM and wait for a clean exit (graceful shutdown); returns its success.
    pub fn stop(&mut self, id: u64) -> bool {
        let Some(mut c) = self.nodes[(id - 1) as usize].child.take() else {
            return true;
        };
        // SAFETY: kill(2) on a child pid this harness spawned and has not yet reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = poll(Duration::from_secs(20), "graceful exit", || {
            c.try_wait().ok().flatten()
        });
        status.success()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.node(id).admin, path)
    }

    /// A URL on node `id`'s data-plane (ingress) listener: `{net}.{id}:7101`.
    pub fn ingress_url(&self, id: u64, path: &str) -> String {
        let admin = &self.node(id).admin;
        let host = admin.rsplit_once(':').map(|(h, _)| h).unwrap_or(admin);
        format!("http://{host}:7101{path}")
    }

    pub fn get_json(&self, id: u64, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(self.url(id, path))
            .bearer_auth(&self.token)
            .send()
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().ok()
    }

    pub fn view(&self, id: u64) -> Option<Value> {
        self.get_json(id, "/admin/cluster")
    }

    /// The leader every node in `ids` agrees on, if they agree.
    pub fn agreed_leader(&self, ids: &[u64]) -> Option<u64> {
        let mut leader = None;
        for id in ids {
            let l = self.view(*id)?["node"]["leader"].as_u64()?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader
    }

    /// Waits until the nodes in `ids` agree on a leader that is one of them: right after a
    /// kill -9 the survivors still name the dead leader until they elect another.
    pub fn wait_leader(&self, ids: &[u64], timeout: Duration) -> u64 {
        poll(timeout, "an agreed leader", || {
            self.agreed_leader(ids).filter(|l| ids.contains(l))
        })
    }

    /// How long the failover from `old` to `new` took by `new`'s own clock: from the last
    /// message it had from `old` to winning (`last_election` in `/admin/cluster`). Unlike
    /// a time polled from outside, it holds no HTTP or test-thread delay. Printed, so slow
    /// runs show whether the time went to ticks or to extra voting rounds. The same win must
    /// be in `/metrics` (`corral_raft_failover_seconds`).
    pub fn failover_ms(&self, new: u64, old: u64) -> u64 {
        let view = self.view(new).expect("the new leader answers");
        let e = &view["node"]["last_election"];
        eprintln!("node {new} won from node {old}: {e}");
        assert_eq!(e["previous_leader"].as_u64(), Some(old), "{e}");
        let counted = self.metric(new, "corral_raft_failover_seconds_count");
        assert!(
            counted.is_some_and(|n| n >= 1.0),
            "failover histogram: {counted:?}"
        );
        e["leader_silent_ms"].as_u64().expect("a measured failover")
    }

    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// PUT an admin document (a queue, a route...) at `path` through node `id`, with the admin
    /// token; the answer's status code and JSON body (`Null` when it has none).
    pub fn admin_put(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        self.admin_send(reqwest::Method::PUT, id, path, body)
    }

    /// POST a JSON body to an admin endpoint (an action: pause, trigger...), as `admin_put`.
    pub fn admin_post(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        self.admin_send(reqwest::Method::POST, id, path, body)
    }

    fn admin_send(
        &self,
        method: reqwest::Method,
        id: u64,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(id, path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().unwrap_or(Value::Null))
    }

    /// PUT a config document through node `id`; Ok on 200/201.
    pub fn put(&self, id: u64, key: &str, value: &Value) -> Result<(), String> {
        let r = self
            .http
            .put(self.url(id, &format!("/admin/config/{key}")))
            .bearer_auth(&self.token)
            .json(value)
            .send()
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} {}", r.status(), r.text().unwrap_or_default()))
        }
    }

    /// Every key in node `id`'s local (possibly stale) state.
    pub fn local_keys(&self, id: u64) -> Option<HashSet<String>> {
        let mut keys = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = "/admin/config?consistency=local&limit=1000".to_string();
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let page = self.get_json(id, &path)?;
            for item in page["items"].as_array()? {
                keys.insert(item["key"].as_str()?.to_string());
            }
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return Some(keys),
            }
        }
    }

    /// Waits until node `id` holds every key in `want`.
    pub fn wait_has_all(&self, id: u64, want: &HashSet<String>, timeout: Duration) {
        poll(
            timeout,
            &format!("node {id} to hold all {} acknowledged keys", want.len()),
            || {
                let have = self.local_keys(id)?;
                want.is_subset(&have).then_some(())
            },
        );
    }

    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url(id, "/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Background writers that PUT unique keys through rotating nodes and record what was acked.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<HashSet<String>>>,
    pub acked: std::sync::Arc<AtomicU32>,
}

impl Writers {
    pub fn start(admins: Vec<String>, token: &str, threads: usize, prefix: &str) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(AtomicU32::new(0));
        let handles = (0..threads)
            .map(|t| {
                let (stop, acked, admins, token, prefix) = (
                    stop.clone(),
                    acked.clone(),
                    admins.clone(),
                    token.to_string(),
                    prefix.to_string(),
                );
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(8))
                        .build()
                        .unwrap();
                    let mut mine = HashSet::new();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = format!("{prefix}/w{t}/{seq}");
                        let admin = &admins[(seq as usize + t) % admins.len()];
                        let r = http
                            .put(format!("http://{admin}/admin/config/{key}"))
                            .bearer_auth(&token)
                            .json(&serde_json::json!({"seq": seq}))
                            .send();
                        if matches!(&r, Ok(r) if r.status().is_success()) {
                            mine.insert(key);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    mine
                })
            })
            .collect();
        Writers {
            stop,
            handles,
            acked,
        }
    }

    pub fn count(&self) -> u32 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` more writes have been acknowledged than when called.
    pub fn wait_more(&self, n: u32, timeout: Duration) {
        let base = self.count();
        poll(timeout, &format!("{n} more acknowledged writes"), || {
            (self.count() >= base + n).then_some(())
        });
    }

    pub fn finish(self) -> HashSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    }
}
