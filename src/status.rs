//! `corral status`: asks every node of a cluster file for its view and prints one table.
//!
//! The command reads the cluster file and the admin token, calls `GET /admin/cluster` on each
//! node's admin address, and says plainly which nodes did not answer.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::config::ClusterFile;

/// Per-node request timeout: a dead node must not stall the whole report.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Fetches every node's `/admin/cluster`; `None` where the node did not answer.
pub async fn collect(config: &Path) -> anyhow::Result<Vec<(u64, String, Result<Value, String>)>> {
    let file = ClusterFile::load(config)?;
    let token = std::fs::read_to_string(&file.admin_token_file)
        .with_context(|| format!("reading {}", file.admin_token_file.display()))?
        .trim()
        .to_string();
    let http = reqwest::Client::builder().timeout(STATUS_TIMEOUT).build()?;
    let mut out = Vec::new();
    for n in &file.nodes {
        let url = format!("http://{}/admin/cluster", n.admin_addr);
        let r = async {
            let resp = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            resp.json::<Value>().await.map_err(|e| e.to_string())
        }
        .await;
        out.push((n.id, n.admin_addr.clone(), r));
    }
    Ok(out)
}

/// Renders the collected views as a table.
pub fn render(rows: &[(u64, String, Result<Value, String>)]) -> String {
    let mut s = format!(
        "{:<5} {:<22} {:<10} {:>6} {:>7} {:>10} {:>10}  {}\n",
        "node",
        "admin",
        "role",
        "term",
        "leader",
        "commit",
        "applied",
        "peers (id:connected/last contact ms)"
    );
    for (id, addr, r) in rows {
        match r {
            Ok(v) => {
                let n = &v["node"];
                let peers: Vec<String> = v["peers"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                format!(
                                    "{}:{}/{}",
                                    p["id"],
                                    if p["connected"] == true { "up" } else { "down" },
                                    p["last_contact_ms"]
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                s.push_str(&format!(
                    "{:<5} {:<22} {:<10} {:>6} {:>7} {:>10} {:>10}  {}\n",
                    id,
                    addr,
                    n["role"].as_str().unwrap_or("?"),
                    n["term"].to_string(),
                    n["leader"].to_string(),
                    n["commit_index"].to_string(),
                    n["applied_index"].to_string(),
                    peers.join(" ")
                ));
            }
            Err(e) => s.push_str(&format!("{id:<5} {addr:<22} unreachable: {e}\n")),
        }
    }
    s
}

pub async fn run(config: &Path, json: bool) -> anyhow::Result<bool> {
    let rows = collect(config).await?;
    if json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(id, addr, r)| match r {
                Ok(v) => serde_json::json!({"id": id, "admin_addr": addr, "status": v}),
                Err(e) => serde_json::json!({"id": id, "admin_addr": addr, "error": e}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(rows.iter().any(|(_, _, r)| r.is_ok()))
}
