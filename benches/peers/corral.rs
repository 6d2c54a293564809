//! corral as a peer: a three-node cluster of the built release binary on 127.0.0.1-3, the
//! durable queue over its HTTP ingress (pull consumers, and push delivery to the bench's
//! backend registered as the pool's tenant), and (once issue #6 lands) the sync proxy through a
//! route the harness creates with `PUT /admin/routes/{name}`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http1;
use crate::load::{ConsumeOp, Op, Stats};
use crate::procs::{poll, ports_free, run, Proc};

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");
/// Ports on each of 127.0.0.1..3: peer, ingress, admin (away from the tests' 7100).
const BASE_PORT: u16 = 27300;
pub const QUEUE: &str = "bench";
/// Long-poll wait of one receive: short, so consumers notice the end of the backlog.
const RECEIVE_WAIT_MS: u64 = 500;
/// Messages one receive leases (the peers' pull batch and prefetch are 16 too).
const RECEIVE_BATCH: usize = 16;

/// One node's ingress address, the enqueue request's bytes for it, and its idle connections.
type EnqueueTarget = (SocketAddr, Vec<u8>, Mutex<Vec<http1::Conn>>);

/// Messages each consumer worker has leased and not yet completed: (id, lock token).
type Held = Mutex<HashMap<usize, VecDeque<(String, String)>>>;

/// One batch receive: the (id, lock token) of each message leased, none when empty.
async fn receive_batch(
    http: &reqwest::Client,
    base: &str,
) -> Result<Vec<(String, String)>, String> {
    let r = http
        .post(format!("{base}/head"))
        .json(&json!({"wait_ms": RECEIVE_WAIT_MS, "max_messages": RECEIVE_BATCH}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        204 => return Ok(Vec::new()),
        200 => {}
        s => return Err(format!("receive: {s}")),
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .map(|m| match (m["id"].as_str(), m["lock_token"].as_str()) {
            (Some(id), Some(lock)) => Ok((id.to_string(), lock.to_string())),
            _ => Err(format!("receive: no id/lock_token in {m}")),
        })
        .collect()
}
/// The route the sync-proxy section calls through: `/http/bench/...` on every ingress.
pub const ROUTE: &str = "bench";
pub const ROUTE_PREFIX: &str = "/http/bench";
/// Where push delivery POSTs each message on the backend tenant (it answers 200 to any path).
const PUSH_PATH: &str = "/http/push";
const NODES: u64 = 3;

pub struct Corral {
    _procs: Vec<Proc>,
    token: String,
    http: reqwest::Client,
}

fn host(id: u64) -> String {
    format!("127.0.0.{id}")
}

pub fn ingress(id: u64) -> String {
    format!("http://{}:{}", host(id), BASE_PORT + 1)
}

fn admin(id: u64) -> String {
    format!("http://{}:{}", host(id), BASE_PORT + 2)
}

impl Corral {
    /// `corral init` a three-node cluster under `dir`, start every node, wait for a leader.
    pub async fn start(dir: &Path, http: reqwest::Client) -> Result<Corral, String> {
        let addrs: Vec<SocketAddr> = (1..=NODES)
            .flat_map(|id| {
                (0..3).map(move |p| {
                    format!("{}:{}", host(id), BASE_PORT + p)
                        .parse()
                        .expect("addr")
                })
            })
            .collect();
        ports_free(&addrs)?;
        run(Command::new(BIN)
            .args([
                "init",
                "--nodes",
                "3",
                "--host-per-node",
                "--host",
                "127.0.0.1",
            ])
            .args([
                "--base-port",
                &BASE_PORT.to_string(),
                "--name",
                "bench",
                "--force",
            ])
            .arg("--dir")
            .arg(dir))?;
        let token = std::fs::read_to_string(dir.join("admin.token"))
            .map_err(|e| format!("admin.token: {e}"))?
            .trim()
            .to_string();
        let mut procs = Vec::new();
        for id in 1..=NODES {
            let mut cmd = Command::new(BIN);
            cmd.args(["node", "--config"])
                .arg(dir.join("cluster.toml"))
                .args(["--id", &id.to_string()])
                .env("CORRAL_LOG", "warn");
            procs.push(Proc::spawn(
                &format!("corral node {id}"),
                cmd,
                &dir.join(format!("node-{id}.log")),
            )?);
        }
        let c = Corral {
            _procs: procs,
            token,
            http,
        };
        poll(Duration::from_secs(30), "a corral leader", || c.leader()).await?;
        Ok(c)
    }

    async fn leader(&self) -> Option<u64> {
        let v = self.get(1, "/admin/cluster").await.ok()?;
        v["node"]["leader"].as_u64()
    }

    async fn get(&self, id: u64, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", admin(id)))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("GET {path}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// PUT an admin document; Ok(status) for any answer, Err only when nothing answered.
    async fn put(&self, path: &str, body: &Value) -> Result<(u16, String), String> {
        let r = self
            .http
            .put(format!("{}{path}", admin(1)))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    }

    /// A pull queue large enough for the whole closed-loop backlog (caps at their maxima).
    pub async fn create_queue(&self) -> Result<(), String> {
        match self
            .put(&format!("/admin/queues/{QUEUE}"), &queue_document())
            .await?
        {
            (200 | 201, _) => Ok(()),
            (s, text) => Err(format!("PUT /admin/queues/{QUEUE}: {s} {text}")),
        }
    }

    /// Enqueue 1 KiB on the node `worker % 3` picks; acknowledged by 202 (majority commit).
    /// Sent with the lean keep-alive client of `support/http1.rs` (the peers' own clients are
    /// lean too): each node has a pool of idle connections, a request takes one or opens
    /// one, and puts it back after a complete answer, so closed and open loops both work.
    pub fn enqueue_op(&self, body: bytes::Bytes) -> Op {
        let path = format!("/queues/{QUEUE}/messages");
        let nodes: Arc<Vec<EnqueueTarget>> = Arc::new(
            (1..=NODES)
                .map(|id| {
                    let addr = SocketAddr::from(([127, 0, 0, id as u8], BASE_PORT + 1));
                    let request = http1::post(addr, &path, Some("application/octet-stream"), &body);
                    (addr, request, Mutex::new(Vec::new()))
                })
                .collect(),
        );
        Arc::new(move |w, _| {
            let nodes = nodes.clone();
            Box::pin(async move {
                let (addr, request, idle) = &nodes[w % nodes.len()];
                let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let mut conn = pooled.unwrap_or_else(|| http1::Conn::new(*addr));
                let status = conn
                    .roundtrip(request)
                    .await
                    .map_err(|e| format!("enqueue: {e}"))?;
                idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
                match status {
                    202 => Ok(()),
                    s => Err(format!("enqueue: {s}")),
                }
            })
        })
    }

    /// Peek-lock receive of up to [`RECEIVE_BATCH`] messages at once (as the NATS consumer
    /// pulls and RabbitMQ prefetches 16), then one complete per message, like the peers'
    /// per-message acks: about 1 + 1/16 committed commands per message.
    pub fn consume_op(&self) -> ConsumeOp {
        let http = self.http.clone();
        let held: Arc<Held> = Arc::default();
        Arc::new(move |w| {
            let (http, held) = (http.clone(), held.clone());
            Box::pin(async move {
                let base = format!("{}/queues/{QUEUE}/messages", ingress(1 + w as u64 % NODES));
                let next = |held: &Held| held.lock().ok()?.get_mut(&w)?.pop_front();
                let (id, lock) = match next(&held) {
                    Some(m) => m,
                    None => {
                        let got = receive_batch(&http, &base).await?;
                        if let Ok(mut h) = held.lock() {
                            h.entry(w).or_default().extend(got);
                        }
                        match next(&held) {
                            Some(m) => m,
                            None => return Ok(false),
                        }
                    }
                };
                let r = http
                    .post(format!("{base}/{id}:complete"))
                    .json(&json!({"lock_token": lock}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match r.status().as_u16() {
                    204 => Ok(true),
                    s => Err(format!("complete: {s}")),
                }
            })
        })
    }

    /// Registers `backend` as the pool's only tenant and waits until every node's pool holds
    /// it healthy (its first probes admit it).
    pub async fn register_backend(&self, backend: SocketAddr) -> Result<(), String> {
        let url = format!("http://{backend}");
        let cred = json!({"kind": "basic", "user": "bench", "password": "bench"});
        let tenant = json!({
            "runtime_url": url, "api_url": format!("{url}/api/v1"),
            "runtime_auth": cred, "management_auth": cred, "max_in_flight": 1024,
            "health": {"path": "/http/", "interval_ms": 200, "rise": 1}
        });
        match self.put("/admin/tenants/backend", &tenant).await? {
            (200 | 201, _) => {}
            (s, text) => return Err(format!("PUT /admin/tenants/backend: {s} {text}")),
        }
        poll(
            Duration::from_secs(30),
            "the backend tenant healthy on every node",
            || async {
                let v = self.get(1, "/admin/tenants/backend").await.ok()?;
                let by_node = v["health_by_node"].as_object()?;
                (by_node.len() == NODES as usize
                    && by_node.values().all(|h| h["status"] == "healthy"))
                .then_some(())
            },
        )
        .await
    }

    /// Switches the queue to push delivery to the backend tenant and times the backlog's
    /// drain: from the switch until `stats.depth` is 0 (each message completed by a 2xx).
    pub async fn push_drain(&self, max: Duration) -> Result<Stats, String> {
        let path = format!("/admin/queues/{QUEUE}");
        let depth = |v: &Value| v["stats"]["depth"].as_u64();
        let before = self.get(1, &path).await?;
        let backlog = depth(&before).ok_or("no stats.depth in GET /admin/queues")?;
        let mut cfg = queue_document();
        cfg["delivery"] = json!({"mode": "push", "path": PUSH_PATH});
        let start = Instant::now();
        match self.put(&path, &cfg).await? {
            (200 | 201, _) => {}
            (s, text) => return Err(format!("PUT {path} (push): {s} {text}")),
        }
        let mut left = backlog;
        while left > 0 && start.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(v) = self.get(1, &format!("{path}?consistency=local")).await {
                left = depth(&v).unwrap_or(left);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let after = self.get(1, &path).await?;
        let dead = after["stats"]["dead_letters"].as_u64().unwrap_or(0);
        let done = backlog - left;
        Ok(Stats {
            ok: done.saturating_sub(dead),
            errors: dead + left,
            seconds,
            per_s: done.saturating_sub(dead) as f64 / seconds.max(1e-9),
            first_error: (left > 0).then(|| format!("{left} messages not delivered in {max:?}")),
            ..Default::default()
        })
    }

    /// Creates the sync route to the registered backend. Err(reason) when this corral has no
    /// sync proxy yet (404) or refuses the route document.
    pub async fn create_route(&self) -> Result<(), String> {
        let route = route_document();
        match self.put(&format!("/admin/routes/{ROUTE}"), &route).await? {
            (200 | 201, _) => Ok(()),
            (404, _) => Err(
                "this corral has no sync proxy yet: PUT /admin/routes answered 404 \
                             (issue #6)"
                    .into(),
            ),
            (s, text) => Err(format!(
                "PUT /admin/routes/{ROUTE} refused the harness's route document ({s} {text}); \
                 set CORRAL_BENCH_ROUTE to a JSON route document"
            )),
        }
    }

    /// Waits until a call through the route reaches the backend (the tenant's first health
    /// probe admits it). Err when the endpoint keeps answering 404 or anything but 2xx.
    pub async fn wait_route(&self) -> Result<(), String> {
        let url = format!("{}{ROUTE_PREFIX}/ping", ingress(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => r.status().to_string(),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{url} did not answer 2xx within 15 s (last: {last})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The bench queue: pull, caps at their maxima so the whole backlog fits.
fn queue_document() -> Value {
    json!({"max_messages": 10_000_000, "max_bytes": 1024u64 * 1024 * 1024})
}

/// The route document: `CORRAL_BENCH_ROUTE` (JSON) if set, else a sync route on
/// `/http/bench` to the pool (see docs/proxy.md), corral signing in to the tenant.
fn route_document() -> Value {
    if let Some(v) = std::env::var("CORRAL_BENCH_ROUTE")
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        return v;
    }
    json!({"prefix": ROUTE_PREFIX, "mode": "sync"})
}
