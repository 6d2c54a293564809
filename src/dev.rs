//! `corral dev`: a three-node cluster on localhost in one command, for trying corral.
//!
//! It uses the ready-made cluster file in `cluster/local/` (creating its certificates, token
//! and master key on first use), starts each node as a child process of this binary with its
//! log in `cluster/local/logs/`, waits until the cluster has a leader, prints what is running
//! and how to talk to it, and stops every child on ctrl-c or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::config::ClusterFile;

/// How long the cluster may take to elect a leader before `dev` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Emulated tenants `dev` starts and registers.
const DEV_TENANTS: usize = 2;
/// How long `dev` waits for every node to see the tenants healthy before printing anyway.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Cluster directory holding cluster.toml (created with `corral init` if missing).
    #[arg(long, default_value = "cluster/local")]
    pub dir: PathBuf,
    /// Delete the nodes' data dirs first, starting from an empty cluster.
    #[arg(long)]
    pub fresh: bool,
}

/// Makes sure the cluster directory has a cluster file and its credentials.
fn prepare(dir: &Path) -> anyhow::Result<ClusterFile> {
    let file_path = dir.join("cluster.toml");
    if !file_path.exists() {
        crate::init::run(&crate::init::InitArgs {
            nodes: 3,
            dir: dir.to_path_buf(),
            host: "127.0.0.1".into(),
            host_per_node: false,
            base_port: 7100,
            name: "dev".into(),
            force: false,
        })?;
    }
    let raw: ClusterFile = toml::from_str(&std::fs::read_to_string(&file_path)?)
        .context("reading the cluster file")?;
    if !dir.join(&raw.ca_cert).exists() {
        println!(
            "creating certificates, admin token and master key in {}",
            dir.display()
        );
        crate::init::write_credentials(dir, &raw)?;
    }
    crate::init::write_reveal_token(dir, &raw)?;
    Ok(ClusterFile::load(&file_path)?)
}

struct Children(Vec<(u64, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            // SAFETY: kill(2) with a pid we spawned and still own; no memory is touched.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (id, c) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
            println!("node {id} stopped");
        }
    }
}

fn spawn_nodes(file: &ClusterFile, config: &Path, logs: &Path) -> anyhow::Result<Children> {
    let exe = std::env::current_exe().context("locating the corral binary")?;
    std::fs::create_dir_all(logs)?;
    let mut children = Children(Vec::new());
    for n in &file.nodes {
        let log = std::fs::File::create(logs.join(format!("node-{}.log", n.id)))?;
        let child = Command::new(&exe)
            .args(["node", "--config"])
            .arg(config)
            .args(["--id", &n.id.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {}", n.id))?;
        children.0.push((n.id, child));
    }
    Ok(children)
}

async fn wait_ready(file: &ClusterFile, children: &mut Children) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        for (id, c) in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("node {id} exited during start-up ({status}); see its log");
            }
        }
        let mut ready = 0;
        for n in &file.nodes {
            if let Ok(r) = http
                .get(format!("http://{}/readyz", n.admin_addr))
                .send()
                .await
            {
                ready += r.status().is_success() as usize;
            }
        }
        if ready == file.nodes.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the cluster did not become ready within {READY_TIMEOUT:?}")
}

/// Starts the emulated tenants and registers them through node 1's admin API.
/// The sample push queue `corral dev` creates, delivered to the emulated tenants' `/http/orders`.
const DEV_QUEUE: &str = "orders";
/// A sample pull queue, for consumers that receive with peek-lock.
const DEV_PULL_QUEUE: &str = "invoices";

/// The admin API of the dev cluster's first node, as `dev` uses it to set things up.
struct Admin {
    http: reqwest::Client,
    token: String,
    addr: String,
}

impl Admin {
    fn new(file: &ClusterFile) -> anyhow::Result<Admin> {
        let token = std::fs::read_to_string(&file.admin_token_file)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Admin {
            http,
            token: token.trim().to_string(),
            addr: file.nodes[0].admin_addr.clone(),
        })
    }

    /// PUTs a JSON document to `path`; `what` names it in the error.
    async fn put(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        what: &str,
    ) -> anyhow::Result<()> {
        let r = self
            .http
            .put(format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "{what}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The sample secret `corral dev` creates and pushes to both emulated tenants.
const DEV_SECRET: &str = "CPI-AUTH-SHARED";
/// How long `dev` waits for the sample secret to be deployed on every tenant.
const SECRET_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates a new version of the sample secret, waits (bounded) until corral's push state says
/// every tenant holds it, and reads it back through each emulated tenant's control API.
async fn create_sample_secret(
    admin: &Admin,
    tenants: &[crate::emulator::TenantHandle],
) -> anyhow::Result<()> {
    let password = crate::init::random_hex(12);
    let body = serde_json::json!({
        "kind": "user_credential",
        "description": "shared credential pushed by corral dev",
        "value": {"user": "svc-shared", "password": password},
    });
    let path = format!("/admin/secrets/{DEV_SECRET}");
    admin
        .put(&path, &body, "creating the sample secret")
        .await?;
    let deadline = Instant::now() + SECRET_TIMEOUT;
    let mut view = Value::Null;
    while Instant::now() < deadline {
        if let Ok(r) = admin
            .http
            .get(format!("http://{}{path}", admin.addr))
            .bearer_auth(&admin.token)
            .send()
            .await
        {
            view = r.json().await.unwrap_or(Value::Null);
            let done = view["push"].as_object().is_some_and(|m| {
                m.len() >= tenants.len() && m.values().all(|p| p["state"] == "deployed")
            });
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "\nsample secret `{DEV_SECRET}` (user credential, version {}) pushed to the tenants:\n",
        view["current_version"]
    );
    for h in tenants {
        let d = h.description();
        let push = &view["push"][&d.name];
        let read_back: Value = match admin
            .http
            .get(format!(
                "{}/secrets/UserCredentials/{DEV_SECRET}",
                d.control_url
            ))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let matches = read_back["deployed"]["Password"] == password.as_str();
        println!(
            "  {:<10} corral: {:<9} version {} after {} attempt(s); tenant reads back {} (password matches: {matches})",
            d.name,
            push["state"].as_str().unwrap_or("?"),
            push["version"],
            push["attempts"],
            read_back["status"].as_str().unwrap_or("nothing"),
        );
    }
    Ok(())
}

/// Creates (or replaces) the sample queues through the admin API.
async fn create_sample_queues(admin: &Admin) -> anyhow::Result<()> {
    let dedup = serde_json::json!({"window_ms": 600_000, "key": {"source": "header", "name": "message-id"}});
    let push = serde_json::json!({
        "delivery": {"mode": "push", "path": "/http/orders"},
        "dedup": dedup,
    });
    let path = format!("/admin/queues/{DEV_QUEUE}");
    admin
        .put(&path, &push, "creating the sample push queue")
        .await?;
    let pull = serde_json::json!({"delivery": {"mode": "pull"}, "dedup": dedup});
    let path = format!("/admin/queues/{DEV_PULL_QUEUE}");
    admin
        .put(&path, &pull, "creating the sample pull queue")
        .await?;
    println!("\nsample queues (dedup on Message-Id for 10 min):");
    println!(
        "  `{DEV_QUEUE}`: push, each message POSTed to one tenant's /http/orders (idempotent flow)"
    );
    println!("  `{DEV_PULL_QUEUE}`: pull, for consumers that receive with peek-lock");
    Ok(())
}

/// Posts one sample message to the push queue and prints its trace once a tenant took it.
async fn show_sample_delivery(admin: &Admin, ingress: &str) -> anyhow::Result<()> {
    let r = admin
        .http
        .post(format!("http://{ingress}/queues/{DEV_QUEUE}/messages"))
        .header("message-id", "dev-sample-order")
        .header("content-type", "application/json")
        .body(r#"{"order":0}"#)
        .send()
        .await?;
    let id = r.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deadline = Instant::now() + POOL_TIMEOUT;
    while Instant::now() < deadline {
        let t: Value = admin
            .http
            .get(format!("http://{}/admin/messages/{id}", admin.addr))
            .bearer_auth(&admin.token)
            .send()
            .await?
            .json()
            .await
            .unwrap_or(Value::Null);
        if t["state"] == "completed" {
            let a = &t["attempts"][0];
            println!(
                "  message {id} was delivered to {} (status {}, {} ms)",
                a["tenant"].as_str().unwrap_or("?"),
                a["status"],
                a["latency_ms"]
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  message {id} is not delivered yet; see GET /admin/messages/{id}");
    Ok(())
}

/// The flow the sample push queue delivers to: answers 200 and, like an iFlow with an
/// Idempotent Process Call, skips a message id it already processed.
fn orders_flow() -> crate::emulator::FlowSpec {
    crate::emulator::FlowSpec {
        idempotent: true,
        ..crate::emulator::FlowSpec::echo("/orders")
    }
}

/// The sample schedule `corral dev` creates, and the pull queue it fills.
const DEV_SCHEDULE: &str = "heartbeat";

/// Creates (or replaces) a pull queue and a schedule that enqueues into it every minute.
async fn create_sample_schedule(admin: &Admin) -> anyhow::Result<()> {
    let queue = format!("/admin/queues/{DEV_SCHEDULE}");
    admin
        .put(
            &queue,
            &serde_json::json!({}),
            "creating the sample schedule's queue",
        )
        .await?;
    let body = serde_json::json!({
        "schedule": {"cron": "0 * * ? * *"},
        "time_zone": "Europe/Berlin",
        "target": {"queue": {"name": DEV_SCHEDULE, "body": "{\"ping\":true}",
                             "content_type": "application/json"}},
        "missed": "once",
        "overlap": "allow",
    });
    let path = format!("/admin/schedules/{DEV_SCHEDULE}");
    admin
        .put(&path, &body, "creating the sample schedule")
        .await?;
    println!("sample schedule `{DEV_SCHEDULE}` (Quartz `0 * * ? * *`, Europe/Berlin) enqueues into queue `{DEV_SCHEDULE}` every minute");
    Ok(())
}

/// The sample proxy route `corral dev` creates: `/http/` to the pool, round robin, 20/s.
const DEV_ROUTE: &str = "sample";
/// The sample client API key (a dev-only value; real keys are generated or chosen by you).
const DEV_API_KEY: &str = "dev-sample-key-change-me-0001";

/// Creates the sample route (every `/http/...` call goes to a tenant with its own
/// credentials, needs the sample API key, 20 requests/s cluster-wide) and its key.
async fn create_sample_route(admin: &Admin) -> anyhow::Result<()> {
    let route = serde_json::json!({
        "prefix": "/http/",
        "policy": "round_robin",
        "require_api_key": true,
        "rate_limit": {"per_second": 20, "burst": 20},
    });
    admin
        .put(
            &format!("/admin/routes/{DEV_ROUTE}"),
            &route,
            "creating the sample route",
        )
        .await?;
    let key = serde_json::json!({"key": DEV_API_KEY, "rate_limit": {"per_second": 10}});
    admin
        .put("/admin/api-keys/dev", &key, "creating the sample API key")
        .await?;
    println!(
        "sample route `{DEV_ROUTE}` (/http/ -> the pool, round robin, 20/s, API key `dev`) is ready"
    );
    Ok(())
}

/// The sample schedule that calls the sample route synchronously and records the outcome.
const DEV_CALL_SCHEDULE: &str = "sync-ping";

/// Creates a schedule that GETs `/http/echo` through the sample route every 5 minutes (the
/// route's tenant set, policy and retries apply; its outcome shows in the schedule's history).
async fn create_sample_call_schedule(admin: &Admin) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "schedule": {"cron": "0 */5 * ? * *"},
        "time_zone": "Europe/Berlin",
        "target": {"call": {"route": DEV_ROUTE, "path": "/http/echo", "method": "GET"}},
    });
    let path = format!("/admin/schedules/{DEV_CALL_SCHEDULE}");
    admin
        .put(&path, &body, "creating the sample call schedule")
        .await?;
    println!("sample schedule `{DEV_CALL_SCHEDULE}` (every 5 minutes) calls GET /http/echo through route `{DEV_ROUTE}` and records the outcome");
    Ok(())
}

async fn start_pool(admin: &Admin) -> anyhow::Result<Vec<crate::emulator::TenantHandle>> {
    let mut handles = Vec::new();
    for i in 1..=DEV_TENANTS {
        let mut cfg = crate::emulator::TenantConfig::new(format!("tenant{i}"));
        cfg.flows.push(("orders".into(), orders_flow()));
        let h = crate::emulator::spawn_tenant(cfg).await?;
        let d = h.description();
        let what = format!("registering tenant {}", d.name);
        admin
            .put(&format!("/admin/tenants/{}", d.name), &d, &what)
            .await?;
        handles.push(h);
    }
    // Wait (bounded) until every node has probed every tenant, then print the view.
    let deadline = Instant::now() + POOL_TIMEOUT;
    let mut view = Value::Null;
    while Instant::now() < deadline {
        if let Ok(r) = admin
            .http
            .get(format!("http://{}/admin/tenants", admin.addr))
            .bearer_auth(&admin.token)
            .send()
            .await
        {
            view = r.json().await.unwrap_or(Value::Null);
            let settled = view["items"].as_array().is_some_and(|items| {
                items.iter().all(|t| {
                    t["health_by_node"]
                        .as_object()
                        .is_some_and(|m| m.values().all(|v| v["status"] == "healthy"))
                })
            });
            if settled {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("\ntenant pool ({DEV_TENANTS} emulated CPI tenants):\n");
    println!(
        "  {:<10} {:<28} {:>6} {:>8} {:<9} health by node",
        "tenant", "runtime", "weight", "priority", "state"
    );
    for t in view["items"].as_array().into_iter().flatten() {
        let health = t["health_by_node"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(n, v)| format!("{n}:{}", v["status"].as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "  {:<10} {:<28} {:>6} {:>8} {:<9} {health}",
            t["name"].as_str().unwrap_or("?"),
            t["runtime_url"].as_str().unwrap_or("?"),
            t["weight"].as_u64().unwrap_or(0),
            t["priority"].as_u64().unwrap_or(0),
            t["state"].as_str().unwrap_or("?"),
        );
    }
    for h in &handles {
        let d = h.description();
        println!(
            "  {} control API (chaos, counters): {}",
            d.name, d.control_url
        );
    }
    Ok(handles)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let file = prepare(&args.dir)?;
    if args.fresh {
        for n in &file.nodes {
            let _ = std::fs::remove_dir_all(&n.data_dir);
        }
    }
    let config = args.dir.join("cluster.toml");
    let logs = args.dir.join("logs");
    let mut children = spawn_nodes(&file, &config, &logs)?;
    println!(
        "starting {} nodes (logs in {})",
        file.nodes.len(),
        logs.display()
    );
    wait_ready(&file, &mut children).await?;
    let rows = crate::status::collect(&config).await?;
    println!(
        "\ncorral dev cluster `{}` is up:\n\n{}",
        file.cluster_name,
        crate::status::render(&rows)
    );
    let admin = Admin::new(&file)?;
    let tenants = start_pool(&admin).await?;
    create_sample_queues(&admin).await?;
    create_sample_schedule(&admin).await?;
    show_sample_delivery(&admin, &file.nodes[1].ingress_addr).await?;
    create_sample_secret(&admin, &tenants).await?;
    create_sample_route(&admin).await?;
    create_sample_call_schedule(&admin).await?;
    let a = &file.nodes[0];
    println!("\nadmin token: {}", file.admin_token_file.display());
    println!("try:");
    println!(
        "  curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/admin/cluster",
        file.admin_token_file.display(),
        a.admin_addr
    );
    println!(
        "  curl -s -X PUT -H \"Authorization: Bearer $(cat {})\" -H 'content-type: application/json' -d '{{\"hello\":\"world\"}}' http://{}/admin/config/greeting",
        file.admin_token_file.display(),
        file.nodes[file.nodes.len() - 1].admin_addr
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/admin/tenants",
        file.admin_token_file.display(),
        a.admin_addr
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/admin/secrets/{DEV_SECRET}",
        file.admin_token_file.display(),
        a.admin_addr
    );
    if let Some(reveal) = &file.reveal_token_file {
        println!(
            "  curl -s -X POST -H \"Authorization: Bearer $(cat {})\" http://{}/admin/secrets/{DEV_SECRET}/reveal",
            reveal.display(),
            a.admin_addr
        );
    }
    let ingress = &file.nodes[1].ingress_addr;
    println!(
        "  curl -s -X POST -H 'Message-Id: order-1' -H 'content-type: application/json' -d '{{\"order\":1}}' http://{ingress}/queues/{DEV_QUEUE}/messages"
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/admin/messages/ID   # the trace: which tenant, status, latency",
        file.admin_token_file.display(),
        a.admin_addr
    );
    println!("  curl -s -X POST -d 'invoice 7' http://{ingress}/queues/{DEV_PULL_QUEUE}/messages");
    println!(
        "  curl -s -X POST -d '{{\"wait_ms\":5000}}' http://{}/queues/{DEV_PULL_QUEUE}/messages/head",
        file.nodes[2].ingress_addr
    );
    println!(
        "  # snapshots (docs/snapshots.md): stop a node, delete its data dir, start it again, then\n  curl -s http://{}/metrics | grep -E 'snapshot|compaction'",
        a.admin_addr
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/admin/schedules/{DEV_SCHEDULE}",
        file.admin_token_file.display(),
        a.admin_addr
    );
    println!(
        "  curl -s -X POST -H \"Authorization: Bearer $(cat {0})\" http://{1}/admin/schedules/{DEV_CALL_SCHEDULE}/trigger   # then GET it: the call's status and latency",
        file.admin_token_file.display(),
        a.admin_addr
    );
    println!(
        "  curl -s -X POST -H \"Authorization: Bearer $(cat {})\" -H 'content-type: application/json' -d '{{\"schedule\":{{\"every\":{{\"n\":2,\"unit\":\"weeks\",\"weekdays\":[\"MON\"],\"at\":\"02:30\"}}}},\"time_zone\":\"Europe/Berlin\",\"target\":{{\"queue\":{{\"name\":\"{DEV_SCHEDULE}\"}}}}}}' http://{}/admin/schedules:preview",
        file.admin_token_file.display(),
        a.admin_addr
    );
    println!(
        "  curl -si -X POST -H 'X-API-Key: {DEV_API_KEY}' -H 'content-type: text/plain' -d 'hello pool' http://{}/http/echo",
        file.nodes[0].ingress_addr
    );
    println!("  corral status --config {}", config.display());
    println!("\nctrl-c stops the cluster.");
    let exited = async {
        loop {
            for (id, c) in &mut children.0 {
                if let Ok(Some(status)) = c.try_wait() {
                    return (*id, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = crate::node::shutdown_signal() => println!("\nstopping the cluster"),
        (id, status) = exited => println!("node {id} exited ({status}); stopping the others"),
    }
    drop(children);
    Ok(())
}
