//! `corral node`: wires one node together — store, state machine, Raft driver, peer transport,
//! admin and ingress listeners — and runs it until SIGTERM or ctrl-c.
//!
//! Start-up refuses, before touching anything it cannot undo, a data dir that belongs to
//! another cluster or node, a wrong master key, and ports already in use.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::{self, AdminState};
use crate::client::Client;
use crate::config::NodeConfig;
use crate::pool::{Pool, PoolOptions};
use crate::raft::{DriverConfig, DriverHandle, Outbox};
use crate::seal::{SealError, Sealer};
use crate::snapshot::Snapshots;
use crate::state::CorralState;
use crate::store::{keys, Buffered, SledStore, Store, StoreError, WriteBatch};
use crate::transport::{tls, Inbound, Transport, TransportConfig, TransportError};

/// Inbound peer messages buffered between the transport and the driver.
const INBOUND_CAPACITY: usize = 16_384;
/// How long shutdown waits for in-flight HTTP requests before closing them.
const HTTP_DRAIN: Duration = Duration::from_secs(5);
/// The file in a data dir that says which cluster and node it belongs to.
const IDENTITY_FILE: &str = "IDENTITY";
const MASTER_CANARY: &str = "master_canary";
/// Under the data dir: snapshot checkpoints served and snapshots being received.
const SNAPSHOT_DIR: &str = "snapshots";
/// Under the data dir: the Raft log's segment files.
const LOG_DIR: &str = "raft-log";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {dir}: {message}")]
    DataDir { dir: String, message: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("master key: {0}")]
    Seal(#[from] SealError),
    #[error("admin token file {path}: {message}")]
    Token { path: String, message: String },
    #[error("{what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer transport: {0}")]
    Transport(#[from] TransportError),
    #[error("raft: {0}")]
    Driver(#[from] crate::raft::DriverError),
    #[error("secret `{secret}`: its stored data keys do not open with this node's master key ({source}); the master key file differs from the one the cluster sealed them with; refusing to start")]
    SecretKeys { secret: String, source: SealError },
    #[error("tenant `{tenant}`: its stored credentials do not open with this node's master key ({source}); the master key file differs from the one the cluster sealed them with; refusing to start")]
    TenantCredentials { tenant: String, source: SealError },
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Identity {
    cluster_id: String,
    node_id: u64,
}

fn dir_err(dir: &Path, message: impl Into<String>) -> NodeError {
    NodeError::DataDir {
        dir: dir.display().to_string(),
        message: message.into(),
    }
}

/// Claims `dir` for this cluster and node, or refuses if it belongs to another.
fn check_identity(dir: &Path, cfg: &NodeConfig) -> Result<(), NodeError> {
    let want = Identity {
        cluster_id: cfg.cluster_id.clone(),
        node_id: cfg.id,
    };
    let path = dir.join(IDENTITY_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| dir_err(dir, e.to_string()))?;
        let have: Identity = serde_json::from_str(&text)
            .map_err(|e| dir_err(dir, format!("unreadable {IDENTITY_FILE}: {e}")))?;
        if have != want {
            return Err(dir_err(
                dir,
                format!(
                    "belongs to cluster {} node {}, but this is cluster {} node {}; refusing to start (use an empty data dir)",
                    have.cluster_id, have.node_id, want.cluster_id, want.node_id
                ),
            ));
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| dir_err(dir, e.to_string()))?;
    let non_empty = std::fs::read_dir(dir)
        .map_err(|e| dir_err(dir, e.to_string()))?
        .next()
        .is_some();
    if non_empty {
        return Err(dir_err(
            dir,
            format!("is not empty and has no {IDENTITY_FILE}; refusing to use it"),
        ));
    }
    let body = serde_json::to_vec_pretty(&want).map_err(|e| dir_err(dir, e.to_string()))?;
    std::fs::write(&path, body).map_err(|e| dir_err(dir, e.to_string()))?;
    Ok(())
}

/// Checks the master key against the canary sealed into this data dir (writing it the first time).
fn check_master_key(store: &dyn Store, sealer: &Sealer) -> Result<(), NodeError> {
    match store.get(&keys::meta(MASTER_CANARY))? {
        Some(c) => sealer.check_canary(&c).map_err(|_| SealError::WrongKey)?,
        None => {
            let mut b = WriteBatch::default();
            b.put(keys::meta(MASTER_CANARY), sealer.canary());
            store.write(b)?;
            store.flush()?;
        }
    }
    Ok(())
}

fn load_token(path: &Path) -> Result<String, NodeError> {
    let err = |m: String| NodeError::Token {
        path: path.display().to_string(),
        message: m,
    };
    let t = std::fs::read_to_string(path)
        .map_err(|e| err(e.to_string()))?
        .trim()
        .to_string();
    if t.len() < 16 {
        return Err(err("token must be at least 16 characters".into()));
    }
    Ok(t)
}

/// Sends the driver's messages through the transport; never blocks the driver thread.
/// A snapshot message is registered with the transfer layer first, which reports its outcome
/// to raft once the follower has fetched the file (or failed to).
struct TransportOutbox {
    transport: Arc<Transport>,
    driver: Arc<OnceLock<DriverHandle>>,
    snapshots: Arc<Snapshots>,
}

impl Outbox for TransportOutbox {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            if is_snapshot && !self.snapshots.register_outbound(to, &m) {
                if let Some(d) = self.driver.get() {
                    d.report_snapshot(to, false);
                }
                continue;
            }
            let sent = match m.write_to_bytes() {
                Ok(bytes) => self.transport.send_raft(to, bytes),
                Err(_) => false,
            };
            if !sent {
                if is_snapshot {
                    self.snapshots.finish_outbound(to, false);
                }
                if let Some(d) = self.driver.get() {
                    d.report_unreachable(to);
                }
            }
        }
    }
}

/// Routes what peers send: Raft messages to the driver (snapshot messages via the transfer
/// layer, which fetches the file first), forwarded writes to the client path, chunk requests
/// to the transfer layer.
async fn route_inbound(
    rx: flume::Receiver<Inbound>,
    driver: DriverHandle,
    snapshots: Arc<Snapshots>,
    write_timeout: Duration,
    ingress: Arc<OnceLock<Arc<crate::ingress::IngressState>>>,
) {
    while let Ok(inbound) = rx.recv_async().await {
        match inbound {
            Inbound::Raft {
                from,
                bytes,
                permit,
            } => match Message::parse_from_bytes(&bytes) {
                Ok(m) if m.from == from && crate::snapshot::is_snapshot_message(&m) => {
                    drop(permit);
                    snapshots.offer(from, m);
                }
                Ok(m) if m.from == from => {
                    if driver.step(m, permit).await.is_err() {
                        return;
                    }
                }
                Ok(m) => tracing::warn!(
                    from,
                    claimed = m.from,
                    "dropped a raft message whose sender does not match its link"
                ),
                Err(e) => tracing::warn!(from, error = %e, "dropped an undecodable raft message"),
            },
            Inbound::Request {
                from,
                body,
                reply,
                permit,
            } if Snapshots::is_snapshot_request(&body) => {
                let s = snapshots.clone();
                tokio::spawn(async move {
                    let answer = s.serve(from, &body).await;
                    drop(permit);
                    let _ = reply.send(answer);
                });
            }
            Inbound::Request {
                body,
                reply,
                permit,
                ..
            } => {
                let (d, ingress) = (driver.clone(), ingress.get().cloned());
                tokio::spawn(async move {
                    let answer = serve_request(&d, ingress, &body, write_timeout).await;
                    drop(permit);
                    let _ = reply.send(answer);
                });
            }
        }
    }
}

/// A write a follower forwarded. On the leader a forwarded enqueue joins this node's lane for
/// its queue (`ingress::coalesce`), so the cluster's enqueues share commands; anything else,
/// or on a follower (which answers "not the leader"), is proposed as it came.
async fn serve_request(
    driver: &DriverHandle,
    ingress: Option<Arc<crate::ingress::IngressState>>,
    body: &[u8],
    write_timeout: Duration,
) -> Vec<u8> {
    let leading = driver.status().role == crate::raft::Role::Leader;
    if let Some(st) = ingress.filter(|_| leading) {
        if let Some(answer) = crate::ingress::coalesce::serve_forwarded(&st, body).await {
            return answer;
        }
    }
    Client::serve_forwarded(driver, body, write_timeout).await
}

/// A started node. Dropping it does not stop it; call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub admin_addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    pub driver: DriverHandle,
    pub client: Arc<Client>,
    /// This node's view of the tenant pool (dispatchers call it).
    pub pool: Arc<Pool>,
    pool_watcher: tokio::task::JoinHandle<()>,
    proxy_watcher: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
    rate_sampler: tokio::task::JoinHandle<()>,
    secret_pusher: tokio::task::JoinHandle<()>,
    snapshot_watchdog: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
    stop_http: watch::Sender<bool>,
    http: Vec<tokio::task::JoinHandle<()>>,
    driver_thread: Option<std::thread::JoinHandle<()>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Serves `app` over plain HTTP until `stop`. Connections get TCP_NODELAY, as the TLS
/// ingress's do: a response hyper writes in two parts (a streamed proxy body after its head)
/// must not wait for the client's ACK of the first part (Nagle's algorithm).
fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
    });
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let svc = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, svc)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    })
}

/// Starts every part of the node and returns once its listeners are bound.
pub async fn start(cfg: NodeConfig) -> Result<RunningNode, NodeError> {
    let admin_listener = bind("admin", cfg.admin_addr).await?;
    let ingress_listener = bind("ingress", cfg.ingress_addr).await?;
    let admin_token = load_token(&cfg.admin_token_file)?;
    let master = Sealer::load_master_key(&cfg.master_key_file)?;
    let tls_material = tls::load(&cfg.ca_cert, &cfg.cert, &cfg.key)?;
    let ingress_tls = match &cfg.ingress_tls {
        Some((cert, key)) => Some(crate::ingress::tls::server_config(cert, key)?),
        None => None,
    };
    check_identity(&cfg.data_dir, &cfg)?;
    let sled: Arc<dyn Store> = Arc::new(SledStore::open(&cfg.data_dir.join("store"))?);
    let store: Arc<dyn Store> = Arc::new(Buffered::new(sled)?);
    check_master_key(&*store, &Sealer::from_master_key(&master, "canary"))?;
    if let Err((tenant, source)) = crate::pool::verify_stored_credentials(&*store, &master)? {
        return Err(NodeError::TenantCredentials { tenant, source });
    }
    if let Err((secret, source)) =
        crate::dispatch::secrets::verify_stored_secrets(&*store, &master)?
    {
        return Err(NodeError::SecretKeys { secret, source });
    }
    let reveal_token = cfg
        .reveal_token_file
        .as_deref()
        .map(load_token)
        .transpose()?;
    let envelope = Arc::new(crate::seal::Envelope::new(&master));

    let (inbound_tx, inbound_rx) = flume::bounded(INBOUND_CAPACITY);
    let transport = Transport::start(
        TransportConfig {
            id: cfg.id,
            cluster_id: cfg.cluster_id.clone(),
            listen: cfg.peer_addr,
            peers: cfg.peers.clone(),
        },
        tls_material,
        inbound_tx,
    )
    .await?;
    let driver_cell = Arc::new(OnceLock::new());
    let snapshot_dir = cfg.data_dir.join(SNAPSHOT_DIR);
    let snapshot_pin = Arc::new(AtomicU64::new(crate::raft::storage::NO_PIN));
    let snapshots = Snapshots::new(
        &snapshot_dir,
        transport.clone(),
        driver_cell.clone(),
        snapshot_pin.clone(),
    );
    let outbox = TransportOutbox {
        transport: transport.clone(),
        driver: driver_cell.clone(),
        snapshots: snapshots.clone(),
    };
    let driver_cfg = DriverConfig {
        id: cfg.id,
        voters: cfg.peers.iter().map(|(id, _)| *id).collect(),
        tick_ms: cfg.raft.tick_ms,
        election_ticks: cfg.raft.election_ticks,
        heartbeat_ticks: cfg.raft.heartbeat_ticks,
        compact_every_entries: cfg.raft.compact_every_entries,
        keep_entries: cfg.raft.keep_entries,
        snapshot_dir,
        log_dir: cfg.data_dir.join(LOG_DIR),
        log_segment_bytes: cfg.raft.log_segment_bytes,
        snapshot_pin,
    };
    let state = CorralState::new(store.clone())?;
    let queues = state.queue_index();
    let (driver, driver_thread) = crate::raft::start(driver_cfg, store.clone(), state, outbox)?;
    let _ = driver_cell.set(driver.clone());
    let write_timeout = Duration::from_millis(cfg.raft.write_timeout_ms);
    let snapshot_watchdog = tokio::spawn(snapshots.clone().watchdog());
    // Set once the ingress exists; until then forwarded enqueues are proposed as they came.
    let ingress_cell: Arc<OnceLock<Arc<crate::ingress::IngressState>>> = Arc::default();
    tokio::spawn(route_inbound(
        inbound_rx,
        driver.clone(),
        snapshots,
        write_timeout,
        ingress_cell.clone(),
    ));

    let client = Arc::new(Client::new(
        cfg.id,
        driver.clone(),
        transport.clone(),
        write_timeout,
    ));
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| NodeError::Bind {
            what: "admin",
            addr: cfg.admin_addr,
            source,
        })?;
    let ingress_addr = ingress_listener
        .local_addr()
        .map_err(|source| NodeError::Bind {
            what: "ingress",
            addr: cfg.ingress_addr,
            source,
        })?;
    let pool = Pool::new(
        &master,
        PoolOptions {
            node_id: cfg.id,
            ..PoolOptions::default()
        },
    );
    let pool_watcher = pool.spawn_watcher(store.clone());
    let sweeper = tokio::spawn(crate::ingress::queue::sweeper(
        client.clone(),
        queues.clone(),
    ));
    let dispatcher =
        crate::dispatch::push::spawn(client.clone(), store.clone(), queues.clone(), pool.clone());
    let rate_sampler = api::queues::spawn_rate_sampler(store.clone());
    let secret_pusher = crate::dispatch::secrets::SecretPusher::new(
        cfg.id,
        client.clone(),
        store.clone(),
        pool.clone(),
        envelope.clone(),
    )
    .spawn();
    let ingress_state = Arc::new(crate::ingress::IngressState {
        client: client.clone(),
        store: store.clone(),
        queues: queues.clone(),
        coalescer: Default::default(),
    });
    let _ = ingress_cell.set(ingress_state.clone());
    let live = {
        let (transport, me) = (transport.clone(), cfg.id);
        let peers: Vec<u64> = cfg
            .peers
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != me)
            .collect();
        Box::new(move || 1 + peers.iter().filter(|p| transport.is_connected(**p)).count())
    };
    let proxy = crate::ingress::proxy::Proxy::new(
        pool.clone(),
        ingress_state.clone(),
        &master,
        live,
        ingress_tls.is_some(),
    );
    proxy.reload();
    let proxy_watcher = proxy.spawn_watcher();
    let calls = crate::dispatch::scheduler::Calls::new(client.clone(), pool.clone(), proxy.clone());
    let scheduler = tokio::spawn(crate::dispatch::scheduler::run(
        client.clone(),
        store.clone(),
        queues.clone(),
        calls.clone(),
    ));
    let ingress = crate::ingress::router(ingress_state, proxy.clone());
    let admin = api::router(Arc::new(AdminState {
        cfg: cfg.clone(),
        client: client.clone(),
        transport,
        store,
        queues,
        admin_token,
        pool: pool.clone(),
        reveal_token,
        envelope,
        proxy,
        calls,
    }));
    let (stop_http, stop_rx) = watch::channel(false);
    let mut http = vec![serve(
        admin_listener,
        api::limit_in_flight(admin, api::MAX_ADMIN_IN_FLIGHT),
        stop_rx.clone(),
    )];
    let ingress = api::limit_in_flight(ingress, api::MAX_INGRESS_IN_FLIGHT);
    http.push(match ingress_tls {
        Some(tls_cfg) => crate::ingress::tls::serve(ingress_listener, ingress, tls_cfg, stop_rx),
        None => serve(ingress_listener, ingress, stop_rx),
    });
    tracing::info!(id = cfg.id, peer = %cfg.peer_addr, admin = %admin_addr, ingress = %ingress_addr, "node started");
    Ok(RunningNode {
        admin_addr,
        ingress_addr,
        driver,
        client,
        pool,
        pool_watcher,
        proxy_watcher,
        sweeper,
        dispatcher,
        rate_sampler,
        secret_pusher,
        snapshot_watchdog,
        scheduler,
        stop_http,
        http,
        driver_thread: Some(driver_thread),
    })
}

impl RunningNode {
    /// Stops accepting requests, lets in-flight ones finish (bounded), then flushes and stops Raft.
    pub async fn shutdown(mut self) {
        let _ = self.stop_http.send(true);
        self.pool_watcher.abort();
        self.proxy_watcher.abort();
        self.sweeper.abort();
        self.dispatcher.abort();
        self.rate_sampler.abort();
        self.secret_pusher.abort();
        self.snapshot_watchdog.abort();
        self.scheduler.abort();
        for h in self.http.drain(..) {
            let _ = tokio::time::timeout(HTTP_DRAIN, h).await;
        }
        self.driver.shutdown();
        if let Some(t) = self.driver_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!("node stopped");
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Runs a node until a signal, then shuts it down gracefully.
pub async fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let node = start(cfg).await?;
    shutdown_signal().await;
    tracing::info!("signal received; shutting down");
    node.shutdown().await;
    Ok(())
}
