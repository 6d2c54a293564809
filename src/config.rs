//! The cluster file: what a node reads at start to know itself, its peers and its secrets.
//!
//! One TOML file describes the whole cluster (`corral init` writes it). Relative paths inside it
//! are resolved against the file's own directory, so a cluster directory can be moved as a unit.
//! Validation happens here, before anything touches a data dir, and every error names the field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest cluster we accept: Raft with more voters buys nothing for this workload.
pub const MAX_NODES: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster file field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("node id {0} is not in the cluster file")]
    UnknownNode(u64),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Smallest Raft log segment: below it a node would roll (close, seal, open) almost every
/// Ready.
pub const MIN_LOG_SEGMENT_BYTES: u64 = 64 * 1024;
/// Largest Raft log segment: a segment is deleted whole once compacted, so a bigger one holds
/// disk longer (and its spare costs as much again).
pub const MAX_LOG_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

/// Raft timing and log-retention knobs. Defaults suit a LAN or one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// One logical clock tick of the Raft state machine. Fine ticks (20 ms) give the
    /// randomised election timeout 40 distinct values instead of 8, so two followers that
    /// lost the same leader rarely stand at once and split the vote (each split costs another
    /// timeout: with 100 ms ticks about one failover in five on a loaded box took two or more).
    pub tick_ms: u64,
    /// Followers start an election after this many ticks without a leader (randomised up to
    /// 2x). 40 ticks of 20 ms (0.8-1.6 s) keeps failover well under 3 s on a loaded 2-core box.
    pub election_ticks: usize,
    /// The leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// Compact the log once this many applied entries sit above the last compaction point.
    pub compact_every_entries: u64,
    /// Entries kept below the applied index at compaction, so slightly lagging followers
    /// catch up by log rather than by snapshot.
    pub keep_entries: u64,
    /// How long a client write waits for its commit before answering "outcome unknown".
    pub write_timeout_ms: u64,
    /// Size at which a Raft log segment file is closed and the next (prepared in advance,
    /// zero-filled) opened. Tests use small ones to roll often.
    pub log_segment_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 20,
            election_ticks: 40,
            heartbeat_ticks: 10,
            compact_every_entries: 20_000,
            keep_entries: 5_000,
            write_timeout_ms: 5_000,
            log_segment_bytes: crate::raft::log::SEGMENT_BYTES,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: u64,
    pub peer_addr: String,
    pub ingress_addr: String,
    pub admin_addr: String,
    pub data_dir: PathBuf,
    /// PEM certificate and key of this node, signed by the cluster CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM certificate chain and key for TLS on the ingress listener (both or neither);
    /// without them the ingress listener speaks plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster_name: String,
    pub cluster_id: String,
    pub ca_cert: PathBuf,
    pub admin_token_file: PathBuf,
    pub master_key_file: PathBuf,
    /// The token that carries the reveal right for secrets (`POST /admin/secrets/{name}/reveal`);
    /// without it no secret can be revealed. `corral init` writes `reveal.token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reveal_token_file: Option<PathBuf>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

/// A node's view of a validated cluster file, with every path made absolute.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub cluster_name: String,
    pub cluster_id: String,
    pub peer_addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub admin_token_file: PathBuf,
    pub master_key_file: PathBuf,
    pub reveal_token_file: Option<PathBuf>,
    pub raft: RaftSettings,
    /// (certificate chain, key) for TLS on the ingress listener, if configured.
    pub ingress_tls: Option<(PathBuf, PathBuf)>,
    /// Every node of the cluster (including this one): id -> peer address.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Every node of the cluster (including this one): id -> admin address.
    pub admin_addrs: Vec<(u64, SocketAddr)>,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: ClusterFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.resolve_paths(base);
        file.validate()?;
        Ok(file)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.ca_cert);
        abs(&mut self.admin_token_file);
        abs(&mut self.master_key_file);
        if let Some(p) = &mut self.reveal_token_file {
            abs(p);
        }
        for n in &mut self.nodes {
            abs(&mut n.data_dir);
            abs(&mut n.cert);
            abs(&mut n.key);
            for p in [&mut n.ingress_cert, &mut n.ingress_key]
                .into_iter()
                .flatten()
            {
                abs(p);
            }
        }
    }

    /// Checks everything that can be checked without touching the network or a data dir.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_name.trim().is_empty() {
            return Err(invalid("cluster_name", "must not be empty"));
        }
        if self.cluster_id.len() < 8
            || !self
                .cluster_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                "cluster_id",
                "must be at least 8 characters of [A-Za-z0-9-]",
            ));
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return Err(invalid(
                "node",
                format!(
                    "need 1 to {MAX_NODES} [[node]] tables, found {}",
                    self.nodes.len()
                ),
            ));
        }
        self.validate_raft()?;
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut dirs = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let at = |f: &str| format!("node[{i}].{f}");
            if n.id == 0 {
                return Err(invalid(at("id"), "must be a positive integer"));
            }
            if !ids.insert(n.id) {
                return Err(invalid(at("id"), format!("duplicate node id {}", n.id)));
            }
            for (field, value) in [
                ("peer_addr", &n.peer_addr),
                ("ingress_addr", &n.ingress_addr),
                ("admin_addr", &n.admin_addr),
            ] {
                let addr: SocketAddr = value.parse().map_err(|_| {
                    invalid(at(field), format!("`{value}` is not an IP:port address"))
                })?;
                if !addrs.insert(addr) {
                    return Err(invalid(at(field), format!("address {addr} is used twice")));
                }
            }
            if n.ingress_cert.is_some() != n.ingress_key.is_some() {
                return Err(invalid(
                    at("ingress_cert"),
                    "ingress_cert and ingress_key go together",
                ));
            }
            if !dirs.insert(n.data_dir.clone()) {
                return Err(invalid(at("data_dir"), "two nodes share one data dir"));
            }
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        if r.tick_ms == 0 || r.tick_ms > 10_000 {
            return Err(invalid("raft.tick_ms", "must be between 1 and 10000"));
        }
        if r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err(invalid(
                "raft.election_ticks",
                "must be greater than raft.heartbeat_ticks, which must be positive",
            ));
        }
        if r.compact_every_entries < 100 {
            return Err(invalid(
                "raft.compact_every_entries",
                "must be at least 100",
            ));
        }
        if r.write_timeout_ms < 100 {
            return Err(invalid("raft.write_timeout_ms", "must be at least 100"));
        }
        if !(MIN_LOG_SEGMENT_BYTES..=MAX_LOG_SEGMENT_BYTES).contains(&r.log_segment_bytes) {
            return Err(invalid(
                "raft.log_segment_bytes",
                format!("must be {MIN_LOG_SEGMENT_BYTES} to {MAX_LOG_SEGMENT_BYTES}"),
            ));
        }
        Ok(())
    }

    /// The resolved view for node `id`.
    pub fn node(&self, id: u64) -> Result<NodeConfig, ConfigError> {
        let me = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or(ConfigError::UnknownNode(id))?;
        let parse = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|_| invalid("node", s.to_string()))
        };
        let mut peers = Vec::with_capacity(self.nodes.len());
        let mut admin_addrs = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            peers.push((n.id, parse(&n.peer_addr)?));
            admin_addrs.push((n.id, parse(&n.admin_addr)?));
        }
        Ok(NodeConfig {
            id,
            cluster_name: self.cluster_name.clone(),
            cluster_id: self.cluster_id.clone(),
            peer_addr: parse(&me.peer_addr)?,
            ingress_addr: parse(&me.ingress_addr)?,
            admin_addr: parse(&me.admin_addr)?,
            data_dir: me.data_dir.clone(),
            ca_cert: self.ca_cert.clone(),
            cert: me.cert.clone(),
            key: me.key.clone(),
            admin_token_file: self.admin_token_file.clone(),
            master_key_file: self.master_key_file.clone(),
            reveal_token_file: self.reveal_token_file.clone(),
            raft: self.raft.clone(),
            ingress_tls: me.ingress_cert.clone().zip(me.ingress_key.clone()),
            peers,
            admin_addrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        r#"
cluster_name = "t"
cluster_id = "abcdef0123"
ca_cert = "ca.pem"
admin_token_file = "admin.token"
master_key_file = "master.key"
[[node]]
id = 1
peer_addr = "127.0.0.1:7001"
ingress_addr = "127.0.0.1:7002"
admin_addr = "127.0.0.1:7003"
data_dir = "d1"
cert = "n1.pem"
key = "n1.key"
"#
        .to_string()
    }

    fn parse(text: &str) -> Result<ClusterFile, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.toml");
        std::fs::write(&p, text).unwrap();
        ClusterFile::load(&p)
    }

    /// A well-formed file loads and its relative paths become absolute.
    #[test]
    fn loads_and_resolves_paths() {
        let f = parse(&sample()).unwrap();
        assert!(f.nodes[0].data_dir.is_absolute());
        assert_eq!(f.raft.tick_ms, 20);
    }

    /// A bad address is reported with the field that holds it.
    #[test]
    fn bad_address_names_the_field() {
        let err = parse(&sample().replace("127.0.0.1:7002", "nowhere")).unwrap_err();
        assert!(err.to_string().contains("node[0].ingress_addr"), "{err}");
    }

    /// Unknown fields are refused rather than silently ignored (a typo must not pass).
    #[test]
    fn unknown_field_is_refused() {
        let err = parse(&format!("{}\nbogus = 1\n", sample())).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    /// The log segment size defaults to `SEGMENT_BYTES`; one outside its range is refused,
    /// naming the field.
    #[test]
    fn log_segment_size_is_bounded() {
        let f = parse(&sample()).unwrap();
        assert_eq!(f.raft.log_segment_bytes, crate::raft::log::SEGMENT_BYTES);
        let with = |n: u64| format!("{}\n[raft]\nlog_segment_bytes = {n}\n", sample());
        assert_eq!(
            parse(&with(262_144)).unwrap().raft.log_segment_bytes,
            262_144
        );
        for bad in [1_024, 2 * MAX_LOG_SEGMENT_BYTES] {
            let err = parse(&with(bad)).unwrap_err();
            assert!(err.to_string().contains("raft.log_segment_bytes"), "{err}");
        }
    }

    /// Asking for a node id that the file does not list is refused.
    #[test]
    fn unknown_node_id_is_refused() {
        let f = parse(&sample()).unwrap();
        assert!(matches!(f.node(9), Err(ConfigError::UnknownNode(9))));
    }
}
