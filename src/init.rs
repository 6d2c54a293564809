//! `corral init`: creates a cluster directory — the cluster file, a cluster CA, one key and
//! certificate per node, the admin token, the reveal token (for secrets) and the master key.
//!
//! Everything secret is written with mode 0600. Node certificates name the node as
//! `node-<id>.corral` (the identity the peer transport checks) plus the node's host, so the same
//! files work on one host or on several.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::RngCore;

use crate::config::{ClusterFile, NodeEntry, RaftSettings, MAX_NODES};
use crate::transport::tls::node_dns_name;

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Number of nodes (3 for a fault-tolerant cluster).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory to create the cluster in.
    #[arg(long)]
    pub dir: PathBuf,
    /// Host or IP the nodes listen on. With `--host-per-node`, node i uses the host with its last
    /// octet increased by i-1 (127.0.0.1, 127.0.0.2, ...).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Give each node its own loopback address instead of its own ports.
    #[arg(long)]
    pub host_per_node: bool,
    /// First port; node i uses base + 10*(i-1) + {0: peer, 1: ingress, 2: admin}.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Cluster name shown in status and metrics.
    #[arg(long, default_value = "corral")]
    pub name: String,
    /// Overwrite an existing cluster in `--dir`.
    #[arg(long)]
    pub force: bool,
}

/// Random bytes as lowercase hex, for ids, tokens and keys.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

fn node_host(args: &InitArgs, id: u64) -> anyhow::Result<String> {
    if !args.host_per_node {
        return Ok(args.host.clone());
    }
    let ip: std::net::Ipv4Addr = args
        .host
        .parse()
        .context("--host-per-node needs an IPv4 --host")?;
    let mut o = ip.octets();
    o[3] = o[3]
        .checked_add((id - 1) as u8)
        .context("--host last octet too high for this many nodes")?;
    Ok(std::net::Ipv4Addr::from(o).to_string())
}

fn node_entry(args: &InitArgs, id: u64) -> anyhow::Result<NodeEntry> {
    let host = node_host(args, id)?;
    let base = if args.host_per_node {
        args.base_port as u32
    } else {
        args.base_port as u32 + 10 * (id as u32 - 1)
    };
    if base + 2 > u16::MAX as u32 {
        bail!("--base-port too high for {} nodes", args.nodes);
    }
    let addr = |off: u32| format!("{host}:{}", base + off);
    Ok(NodeEntry {
        id,
        peer_addr: addr(0),
        ingress_addr: addr(1),
        admin_addr: addr(2),
        data_dir: PathBuf::from(format!("data/node-{id}")),
        cert: PathBuf::from(format!("node-{id}.pem")),
        key: PathBuf::from(format!("node-{id}.key")),
        ingress_cert: None,
        ingress_key: None,
    })
}

/// Creates the cluster directory. Refuses to overwrite an existing cluster unless `force`.
pub fn run(args: &InitArgs) -> anyhow::Result<PathBuf> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("--nodes must be between 1 and {MAX_NODES}");
    }
    let file_path = args.dir.join("cluster.toml");
    if file_path.exists() && !args.force {
        bail!("{} already exists; pass --force to overwrite the cluster (its data dirs will no longer match)", file_path.display());
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let nodes = (1..=args.nodes as u64)
        .map(|id| node_entry(args, id))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let file = ClusterFile {
        cluster_name: args.name.clone(),
        cluster_id: random_hex(8),
        ca_cert: "ca.pem".into(),
        admin_token_file: "admin.token".into(),
        master_key_file: "master.key".into(),
        reveal_token_file: Some("reveal.token".into()),
        raft: RaftSettings::default(),
        nodes,
    };
    write_credentials(&args.dir, &file)?;
    let text = toml::to_string_pretty(&file).context("encoding the cluster file")?;
    let header =
        "# corral cluster file, written by `corral init`. Paths are relative to this file.\n";
    write_file(&file_path, format!("{header}{text}").as_bytes(), false)?;
    Ok(file_path)
}

/// Writes the CA, node certificates and keys, admin token and master key for `file`.
pub fn write_credentials(dir: &Path, file: &ClusterFile) -> anyhow::Result<()> {
    let ca_key = rcgen::KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("corral cluster CA {}", file.cluster_id),
    );
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write_file(&dir.join(&file.ca_cert), ca.pem().as_bytes(), false)?;
    write_file(
        &dir.join("ca.key"),
        ca.key().serialize_pem().as_bytes(),
        true,
    )?;
    for n in &file.nodes {
        let host = n
            .peer_addr
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default();
        let mut sans = vec![node_dns_name(n.id), "localhost".to_string()];
        if !host.is_empty() && !sans.contains(&host) {
            sans.push(host);
        }
        let (cert_pem, key_pem) = issue_node_cert(&ca, &sans)?;
        write_file(&dir.join(&n.cert), cert_pem.as_bytes(), false)?;
        write_file(&dir.join(&n.key), key_pem.as_bytes(), true)?;
    }
    write_file(
        &dir.join(&file.admin_token_file),
        random_hex(32).as_bytes(),
        true,
    )?;
    write_file(
        &dir.join(&file.master_key_file),
        random_hex(32).as_bytes(),
        true,
    )?;
    if let Some(p) = &file.reveal_token_file {
        write_file(&dir.join(p), random_hex(32).as_bytes(), true)?;
    }
    Ok(())
}

/// Writes the reveal token the cluster file names, unless it exists (a cluster dir made before
/// reveal tokens existed gets one on the next `corral dev`).
pub fn write_reveal_token(dir: &Path, file: &ClusterFile) -> anyhow::Result<()> {
    match &file.reveal_token_file {
        Some(p) if !dir.join(p).exists() => {
            write_file(&dir.join(p), random_hex(32).as_bytes(), true)
        }
        _ => Ok(()),
    }
}

/// Issues a certificate for a node, usable as TLS server and client (mutual TLS).
pub fn issue_node_cert(
    ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>,
    sans: &[String],
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, sans[0].clone());
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
