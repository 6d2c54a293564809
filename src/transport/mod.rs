//! Peer transport: length-capped frames between nodes over mutual TLS.
//!
//! Each node dials every peer once (an outbound link, redialled with backoff) and accepts the
//! peers' links. Raft messages travel one way on the sender's link and are dropped — never
//! queued without bound — when the peer is down or slow; Raft retransmits. Requests (a follower
//! forwarding a write to the leader) are answered on the link they came in on, matched by id.
//!
//! Wire format: `u32 length (big-endian) | u8 kind | body`, length covering kind and body and
//! never above [`MAX_FRAME_BYTES`]; a peer that announces more is disconnected.

pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

use crate::metrics::M;
use tls::TlsMaterial;

/// Largest frame accepted or sent: the largest Raft message (a snapshot) must fit.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Frames queued per peer link before new Raft frames are dropped and requests refused.
const PEER_QUEUE_FRAMES: usize = 8_192;
/// Frames written before the link is flushed, so a burst goes out in few TLS records.
const MAX_FRAMES_PER_FLUSH: usize = 1_024;
/// Bytes of received frames not yet consumed, over all inbound links: a peer that sends
/// faster than the node consumes is slowed down instead of growing memory.
pub const MAX_INBOUND_BYTES: usize = 256 * 1024 * 1024;
/// Inbound links at once; a peer that reconnects in a loop cannot exhaust file descriptors.
const MAX_INBOUND_LINKS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_REPLY: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {0} is not part of this cluster")]
    UnknownPeer(u64),
    #[error("peer {0} is not connected")]
    NotConnected(u64),
    #[error("link to peer {0} is saturated")]
    Busy(u64),
    #[error("link to peer {0} was lost before it answered")]
    LinkLost(u64),
    #[error("peer {0} did not answer in time")]
    Timeout(u64),
}

#[derive(Debug)]
enum Frame {
    Hello { from: u64, cluster_id: String },
    Raft(Vec<u8>),
    Request { id: u64, body: Vec<u8> },
    Reply { id: u64, body: Vec<u8> },
}

/// What arrives from peers, for the node to route.
/// A share of the inbound byte budget, held by a received frame until it has been consumed.
pub type InboundPermit = tokio::sync::OwnedSemaphorePermit;

/// What arrives from peers, for the node to route. Each item holds its share of the inbound
/// byte budget ([`MAX_INBOUND_BYTES`]) until dropped.
pub enum Inbound {
    Raft {
        from: u64,
        bytes: Vec<u8>,
        permit: Option<InboundPermit>,
    },
    Request {
        from: u64,
        body: Vec<u8>,
        reply: oneshot::Sender<Vec<u8>>,
        permit: Option<InboundPermit>,
    },
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub id: u64,
    pub cluster_id: String,
    pub listen: SocketAddr,
    /// Every node of the cluster, this one included.
    pub peers: Vec<(u64, SocketAddr)>,
}

type PendingReplies = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

struct PeerLink {
    tx: flume::Sender<Frame>,
    pending: PendingReplies,
    connected: Arc<AtomicBool>,
}

pub struct Transport {
    cfg: TransportConfig,
    links: HashMap<u64, PeerLink>,
    next_request: AtomicU64,
}

impl Transport {
    /// Binds the peer listener and starts one dialer per peer.
    pub async fn start(
        cfg: TransportConfig,
        tls: TlsMaterial,
        inbound: flume::Sender<Inbound>,
    ) -> Result<Arc<Transport>, TransportError> {
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let ids: Vec<u64> = cfg.peers.iter().map(|(id, _)| *id).collect();
        let mut links = HashMap::new();
        for (id, addr) in cfg.peers.iter().copied().filter(|(id, _)| *id != cfg.id) {
            let (tx, rx) = flume::bounded(PEER_QUEUE_FRAMES);
            let link = PeerLink {
                tx,
                pending: Arc::default(),
                connected: Arc::default(),
            };
            let dialer = Dialer {
                me: cfg.id,
                cluster_id: cfg.cluster_id.clone(),
                peer: id,
                addr,
                tls: tls.clone(),
                rx,
                pending: link.pending.clone(),
                connected: link.connected.clone(),
            };
            tokio::spawn(dialer.run());
            links.insert(id, link);
        }
        let acceptor = Acceptor {
            cluster_id: cfg.cluster_id.clone(),
            ids,
            tls,
            inbound,
            open: Arc::new(AtomicUsize::new(0)),
            budget: Arc::new(Semaphore::new(MAX_INBOUND_BYTES / 1024)),
        };
        tokio::spawn(acceptor.run(listener));
        Ok(Arc::new(Transport {
            cfg,
            links,
            next_request: AtomicU64::new(1),
        }))
    }

    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn is_connected(&self, peer: u64) -> bool {
        self.links
            .get(&peer)
            .map(|l| l.connected.load(Ordering::Relaxed))
            .unwrap_or(false)
    }

    /// Queues a Raft message; false when it was dropped (peer down, unknown or saturated).
    pub fn send_raft(&self, to: u64, bytes: Vec<u8>) -> bool {
        let Some(link) = self.links.get(&to) else {
            return false;
        };
        if !link.connected.load(Ordering::Relaxed) || link.tx.try_send(Frame::Raft(bytes)).is_err()
        {
            M.peer_frames_dropped
                .with_label_values(&[&to.to_string()])
                .inc();
            return false;
        }
        true
    }

    /// Sends a request to `to` and waits for its reply.
    pub async fn request(
        &self,
        to: u64,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let link = self.links.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        if !link.connected.load(Ordering::Relaxed) {
            return Err(TransportError::NotConnected(to));
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(id, tx);
        if link.tx.try_send(Frame::Request { id, body }).is_err() {
            lock(&link.pending).remove(&id);
            return Err(TransportError::Busy(to));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(TransportError::LinkLost(to)),
            Err(_) => {
                lock(&link.pending).remove(&id);
                Err(TransportError::Timeout(to))
            }
        }
    }
}

/// Unacknowledged data older than this fails the link (a silent peer host, a cut network).
const TCP_USER_TIMEOUT_MS: libc::c_int = 5_000;
/// Keepalive probes on idle links (follower-to-follower links carry no traffic).
const KEEPALIVE_IDLE_S: libc::c_int = 5;
const KEEPALIVE_INTERVAL_S: libc::c_int = 1;
const KEEPALIVE_PROBES: libc::c_int = 3;

/// No Nagle delay, and dead links detected in seconds rather than the kernel's minutes.
fn tune_socket(tcp: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    tcp.set_nodelay(true)?;
    let fd = tcp.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| -> std::io::Result<()> {
        // SAFETY: setsockopt on a socket fd we own, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        TCP_USER_TIMEOUT_MS,
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode(frame: &Frame) -> Vec<u8> {
    let (kind, head, body): (u8, Option<u64>, &[u8]) = match frame {
        Frame::Hello { from, cluster_id } => (KIND_HELLO, Some(*from), cluster_id.as_bytes()),
        Frame::Raft(b) => (KIND_RAFT, None, b),
        Frame::Request { id, body } => (KIND_REQUEST, Some(*id), body),
        Frame::Reply { id, body } => (KIND_REPLY, Some(*id), body),
    };
    let len = 1 + head.map(|_| 8).unwrap_or(0) + body.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    if let Some(h) = head {
        out.extend_from_slice(&h.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    Ok(read_frame_within(r, None).await?.0)
}

/// Reads one frame; with a budget, first reserves the frame's size from it (waiting while
/// other frames hold it), so what peers send never occupies more memory than the budget.
async fn read_frame_within<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    budget: Option<&Arc<Semaphore>>,
) -> std::io::Result<(Frame, Option<InboundPermit>)> {
    let len = r.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (limit {MAX_FRAME_BYTES})"),
        ));
    }
    let permit = match budget {
        Some(b) => {
            let kib = len.div_ceil(1024) as u32;
            Some(
                b.clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(std::io::Error::other)?,
            )
        }
        None => None,
    };
    Ok((read_frame_body(r, len).await?, permit))
}

async fn read_frame_body<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> std::io::Result<Frame> {
    let kind = r.read_u8().await?;
    if kind == KIND_RAFT {
        return Ok(Frame::Raft(read_body(r, len - 1).await?));
    }
    if len < 9 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "short frame",
        ));
    }
    let h = r.read_u64().await?;
    let body = read_body(r, len - 9).await?;
    let frame = match kind {
        KIND_HELLO => Frame::Hello {
            from: h,
            cluster_id: String::from_utf8_lossy(&body).into_owned(),
        },
        KIND_REQUEST => Frame::Request { id: h, body },
        KIND_REPLY => Frame::Reply { id: h, body },
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown frame kind {other}"),
            ))
        }
    };
    Ok(frame)
}

async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes frames from `rx` until it closes or the link fails, flushing once per burst.
async fn write_frames<W: AsyncWrite + Unpin>(
    w: W,
    rx: &flume::Receiver<Frame>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Ok(first) = rx.recv_async().await {
        w.write_all(&encode(&first)).await?;
        for _ in 0..MAX_FRAMES_PER_FLUSH {
            match rx.try_recv() {
                Ok(f) => w.write_all(&encode(&f)).await?,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    Ok(())
}

/// Owns the outbound link to one peer: dial, hello, pump frames, redial on failure.
struct Dialer {
    me: u64,
    cluster_id: String,
    peer: u64,
    addr: SocketAddr,
    tls: TlsMaterial,
    rx: flume::Receiver<Frame>,
    pending: PendingReplies,
    connected: Arc<AtomicBool>,
}

impl Dialer {
    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut logged_down = false;
        loop {
            match self.connect().await {
                Ok(stream) => {
                    backoff = BACKOFF_MIN;
                    logged_down = false;
                    tracing::info!(peer = self.peer, addr = %self.addr, "peer link up");
                    self.connected.store(true, Ordering::Relaxed);
                    let err = self.pump(stream).await;
                    self.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(peer = self.peer, error = %err, "peer link down");
                }
                Err(e) => {
                    M.peer_send_errors
                        .with_label_values(&[&self.peer.to_string()])
                        .inc();
                    if !logged_down {
                        tracing::warn!(peer = self.peer, addr = %self.addr, error = %e, "cannot reach peer; retrying");
                        logged_down = true;
                    }
                }
            }
            lock(&self.pending).clear();
            while self.rx.try_recv().is_ok() {}
            if self.rx.is_disconnected() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await??;
        tune_socket(&tcp)?;
        let name = rustls::pki_types::ServerName::try_from(tls::node_dns_name(self.peer))
            .map_err(std::io::Error::other)?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.client.clone());
        let mut stream =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await??;
        let hello = encode(&Frame::Hello {
            from: self.me,
            cluster_id: self.cluster_id.clone(),
        });
        stream.write_all(&hello).await?;
        stream.flush().await?;
        Ok(stream)
    }

    async fn pump(&self, stream: tokio_rustls::client::TlsStream<TcpStream>) -> std::io::Error {
        let (mut r, w) = tokio::io::split(stream);
        let pending = self.pending.clone();
        let reader = async move {
            loop {
                match read_frame(&mut r).await? {
                    Frame::Reply { id, body } => {
                        if let Some(tx) = lock(&pending).remove(&id) {
                            let _ = tx.send(body);
                        }
                    }
                    other => tracing::debug!(?other, "unexpected frame on an outbound link"),
                }
            }
        };
        let result: std::io::Result<()> = tokio::select! {
            r = reader => r,
            w = write_frames(w, &self.rx) => w,
        };
        match result {
            Err(e) => e,
            Ok(()) => std::io::Error::other("link closed"),
        }
    }
}

/// Accepts peers' links, checks who they are, and routes what they send.
struct Acceptor {
    cluster_id: String,
    ids: Vec<u64>,
    tls: TlsMaterial,
    inbound: flume::Sender<Inbound>,
    open: Arc<AtomicUsize>,
    /// The inbound byte budget, in KiB permits.
    budget: Arc<Semaphore>,
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            };
            if this.open.load(Ordering::Relaxed) >= MAX_INBOUND_LINKS {
                tracing::warn!(%addr, limit = MAX_INBOUND_LINKS, "refused peer connection: too many inbound links");
                continue;
            }
            let me = this.clone();
            tokio::spawn(async move {
                me.open.fetch_add(1, Ordering::Relaxed);
                if let Err(reason) = me.serve(tcp).await {
                    tracing::warn!(%addr, %reason, "peer connection closed");
                }
                me.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Authenticates one inbound link and serves it until it closes.
    async fn serve(&self, tcp: TcpStream) -> Result<(), String> {
        if let Err(e) = tune_socket(&tcp) {
            return Err(format!("socket options: {e}"));
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server.clone());
        let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("refused: TLS handshake failed: {e}")),
            Err(_) => return Err("refused: TLS handshake timed out".into()),
        };
        let cert_id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| tls::identify(c, &self.ids))
            .ok_or("refused: certificate names no node of this cluster")?;
        let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream)).await;
        let from = match hello {
            Ok(Ok(Frame::Hello { from, cluster_id })) if cluster_id == self.cluster_id && from == cert_id => from,
            Ok(Ok(Frame::Hello { from, cluster_id })) => {
                return Err(format!("refused: hello from node {from} of cluster {cluster_id}, certificate says node {cert_id}"))
            }
            _ => return Err("refused: no hello".into()),
        };
        let (mut r, w) = tokio::io::split(stream);
        let (reply_tx, reply_rx) = flume::bounded::<Frame>(PEER_QUEUE_FRAMES);
        let writer = tokio::spawn(async move { write_frames(w, &reply_rx).await });
        let result = self.route(from, &mut r, reply_tx).await;
        writer.abort();
        result.map_err(|e| format!("link from node {from}: {e}"))
    }

    async fn route<R: tokio::io::AsyncRead + Unpin>(
        &self,
        from: u64,
        r: &mut R,
        reply_tx: flume::Sender<Frame>,
    ) -> std::io::Result<()> {
        loop {
            match read_frame_within(r, Some(&self.budget)).await? {
                (Frame::Raft(bytes), permit) => {
                    if self
                        .inbound
                        .send_async(Inbound::Raft {
                            from,
                            bytes,
                            permit,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                (Frame::Request { id, body }, permit) => {
                    let (tx, rx) = oneshot::channel();
                    if self
                        .inbound
                        .send_async(Inbound::Request {
                            from,
                            body,
                            reply: tx,
                            permit,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                    let reply_tx = reply_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(body) = rx.await {
                            let _ = reply_tx.send_async(Frame::Reply { id, body }).await;
                        }
                    });
                }
                (other, _) => tracing::debug!(?other, "unexpected frame on an inbound link"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame announcing more than the cap is refused before anything is allocated for it.
    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocation() {
        let mut bytes = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        bytes.push(KIND_RAFT);
        let err = read_frame(&mut bytes.as_slice()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    /// Frames round-trip through the wire encoding.
    #[tokio::test]
    async fn frames_round_trip() {
        let frames = [
            Frame::Hello {
                from: 3,
                cluster_id: "abc".into(),
            },
            Frame::Raft(vec![1, 2, 3]),
            Frame::Request {
                id: 7,
                body: vec![9; 100],
            },
            Frame::Reply {
                id: 7,
                body: vec![],
            },
        ];
        for f in frames {
            let wire = encode(&f);
            let back = read_frame(&mut wire.as_slice()).await.unwrap();
            assert_eq!(format!("{f:?}"), format!("{back:?}"));
        }
    }

    /// The inbound budget holds a frame's bytes until its permit is dropped.
    #[tokio::test]
    async fn budget_is_held_until_consumed() {
        let budget = Arc::new(Semaphore::new(4));
        let wire = encode(&Frame::Raft(vec![0; 3000]));
        let (_, permit) = read_frame_within(&mut wire.as_slice(), Some(&budget))
            .await
            .unwrap();
        assert_eq!(budget.available_permits(), 1);
        drop(permit);
        assert_eq!(budget.available_permits(), 4);
    }
}
