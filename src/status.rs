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
    s.push_str(&last_failover(rows));
    s
}

/// One line on the leader's last election (`node.last_election`), when it took over from
/// another leader: how long the cluster was leaderless as the winner saw it, and in how many
/// voting rounds. Empty when no reachable leader has such a record.
fn last_failover(rows: &[(u64, String, Result<Value, String>)]) -> String {
    rows.iter()
        .filter_map(|(id, _, r)| {
            let n = &r.as_ref().ok()?["node"];
            let e = &n["last_election"];
            (n["role"] == "leader").then_some(())?;
            Some(format!(
                "last failover: node {id} took over term {} from node {} after {} ms without a leader ({} ticks, {} voting round(s))\n",
                e["term"],
                e["previous_leader"].as_u64()?,
                e["leader_silent_ms"].as_u64()?,
                e["leader_silent_ticks"],
                e["rounds"]
            ))
        })
        .next()
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The table ends with the leader's last failover, and says nothing of an initial
    /// election (no previous leader) or of an unreachable node.
    #[test]
    fn render_reports_the_last_failover() {
        let leader = json!({"node": {"role": "leader", "term": 3, "leader": 2,
            "last_election": {"term": 3, "previous_leader": 1, "leader_silent_ms": 1210,
                "leader_silent_ticks": 60, "rounds": 1}}, "peers": []});
        let first = json!({"node": {"role": "leader", "term": 2, "leader": 2,
            "last_election": {"term": 2, "previous_leader": null, "leader_silent_ms": null,
                "leader_silent_ticks": null, "rounds": null}}, "peers": []});
        let rows = vec![
            (1, "a".to_string(), Err("refused".to_string())),
            (2, "b".to_string(), Ok(leader)),
        ];
        let out = render(&rows);
        assert!(
            out.ends_with("last failover: node 2 took over term 3 from node 1 after 1210 ms without a leader (60 ticks, 1 voting round(s))\n"),
            "{out}"
        );
        let out = render(&[(2, "b".to_string(), Ok(first))]);
        assert!(!out.contains("last failover"), "{out}");
    }
}
