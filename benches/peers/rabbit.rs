//! RabbitMQ as a peer: three nodes of Debian's rabbitmq-server on one host (distinct node
//! names, AMQP and distribution ports, data dirs; one Erlang cookie in a private HOME; our own
//! epmd on a private port, so nothing outlives the run), clustered by classic-config peer
//! discovery; one quorum queue of three replicas, published with publisher confirms (a
//! confirm comes after the quorum queue's Raft log committed the message on a majority with
//! fsync), consumed with manual acks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::load::{ConsumeOp, Op};
use crate::procs::{poll, ports_free, run, wait_tcp, Proc};

const AMQP_PORT: u16 = 24251;
const DIST_PORT: u16 = 24261;
/// Our own epmd, so the three nodes register there and it is stopped with them.
const EPMD_PORT: u16 = 24269;
const QUEUE: &str = "bench";
const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";
/// Unacknowledged deliveries per consumer channel.
const PREFETCH: u16 = 16;
/// How long a consumer waits for its next delivery before reporting "none there".
const NEXT_WAIT_MS: u64 = 500;
/// Node boot (Erlang + Mnesia + Ra) takes 5-20 s per node on a busy 2-core box.
const BOOT_TIMEOUT_S: u64 = 120;

pub struct Rabbit {
    /// Dropped last: the nodes first (fields drop in order), then epmd.
    _nodes: Vec<Proc>,
    _epmd: Proc,
    conns: Vec<Connection>,
}

fn node_name(i: u16) -> String {
    format!("bench{i}@localhost")
}

fn amqp_addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], AMQP_PORT + i))
}

/// The environment one node (or rabbitmqctl for it) runs with.
fn env(cmd: &mut Command, dir: &Path, i: u16) {
    let n = dir.join(format!("rabbit-{i}"));
    cmd.env("HOME", dir.join("home"))
        .env("ERL_EPMD_PORT", EPMD_PORT.to_string())
        .env("RABBITMQ_NODENAME", node_name(i))
        .env("RABBITMQ_NODE_PORT", (AMQP_PORT + i).to_string())
        .env("RABBITMQ_DIST_PORT", (DIST_PORT + i).to_string())
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .env("RABBITMQ_CONFIG_FILE", n.join("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", n.join("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", n.join("enabled_plugins"))
        .env("RABBITMQ_MNESIA_BASE", n.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", n.join("log"))
        .env("RABBITMQ_PID_FILE", n.join("pid"));
}

fn write_node_files(dir: &Path, i: u16) -> Result<(), String> {
    let n = dir.join(format!("rabbit-{i}"));
    std::fs::create_dir_all(n.join("log")).map_err(|e| e.to_string())?;
    let peers: String = (0..3)
        .map(|j| {
            format!(
                "cluster_formation.classic_config.nodes.{} = {}\n",
                j + 1,
                node_name(j)
            )
        })
        .collect();
    let conf = format!(
        "listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n\
         cluster_formation.peer_discovery_backend = classic_config\n{peers}\
         log.console = false\nlog.file.level = warning\n",
        AMQP_PORT + i
    );
    let w = |name: &str, text: &str| {
        std::fs::write(n.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    w("rabbitmq.conf", &conf)?;
    w("enabled_plugins", "[].\n")?;
    w("advanced.config", "[].\n")
}

/// HOME with the shared Erlang cookie (mode 0400, as Erlang insists) and an empty env file.
fn write_shared_files(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let cookie = home.join(".erlang.cookie");
    let value: String = (0..20)
        .map(|_| (b'A' + rand::random::<u8>() % 26) as char)
        .collect();
    std::fs::write(&cookie, value).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("rabbitmq-env.conf"), "").map_err(|e| e.to_string())?;
    Ok(home)
}

fn ctl(dir: &Path, i: u16, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(format!("{SCRIPTS}/rabbitmqctl"));
    env(&mut cmd, dir, i);
    cmd.args(["-n", &node_name(i)]).args(args);
    run(&mut cmd)
}

fn start_node(dir: &Path, i: u16) -> Result<Proc, String> {
    write_node_files(dir, i)?;
    // The script itself, not Debian's /usr/sbin wrapper (which switches user and resets
    // the environment).
    let mut cmd = Command::new(format!("{SCRIPTS}/rabbitmq-server"));
    env(&mut cmd, dir, i);
    Proc::spawn(
        &format!("rabbitmq {}", node_name(i)),
        cmd,
        &dir.join(format!("rabbit-{i}.out")),
    )
}

async fn await_boot(dir: &Path, i: u16, node: &mut Proc) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(BOOT_TIMEOUT_S);
    loop {
        node.check_alive()?;
        let d = dir.to_path_buf();
        let ok =
            tokio::task::spawn_blocking(move || ctl(&d, i, &["-q", "await_startup", "-t", "5"]))
                .await
                .map_err(|e| e.to_string())?;
        if ok.is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{} did not boot: {}",
                node_name(i),
                ok.unwrap_err()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Rabbit {
    pub async fn start(dir: &Path) -> Result<Rabbit, String> {
        let mut addrs: Vec<SocketAddr> = (0..3).map(amqp_addr).collect();
        addrs.extend((0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], DIST_PORT + i))));
        addrs.push(SocketAddr::from(([127, 0, 0, 1], EPMD_PORT)));
        ports_free(&addrs)?;
        write_shared_files(dir)?;
        let mut epmd_cmd = Command::new("epmd");
        epmd_cmd.args(["-port", &EPMD_PORT.to_string(), "-address", "127.0.0.1"]);
        let epmd = Proc::spawn("epmd", epmd_cmd, &dir.join("epmd.log"))?;
        wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], EPMD_PORT)),
            Duration::from_secs(10),
        )
        .await?;
        // The first node forms the cluster; the other two find it through classic config.
        let mut nodes = vec![start_node(dir, 0)?];
        await_boot(dir, 0, &mut nodes[0]).await?;
        nodes.push(start_node(dir, 1)?);
        nodes.push(start_node(dir, 2)?);
        for i in 1..3u16 {
            await_boot(dir, i, &mut nodes[i as usize]).await?;
        }
        let d = dir.to_path_buf();
        poll(
            Duration::from_secs(60),
            "three running rabbitmq nodes",
            || {
                let d = d.clone();
                async move {
                    let out = tokio::task::spawn_blocking(move || {
                        ctl(&d, 0, &["cluster_status", "--formatter", "json"])
                    })
                    .await
                    .ok()?
                    .ok()?;
                    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                    (v["running_nodes"].as_array()?.len() == 3).then_some(())
                }
            },
        )
        .await?;
        let mut conns = Vec::new();
        for i in 0..3 {
            conns.push(connect(i).await?);
        }
        let r = Rabbit {
            _nodes: nodes,
            _epmd: epmd,
            conns,
        };
        r.declare().await?;
        Ok(r)
    }

    async fn declare(&self) -> Result<(), String> {
        let ch = self.conns[0]
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(3));
        ch.queue_declare(
            QUEUE,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|e| format!("declare quorum queue: {e}"))?;
        Ok(())
    }

    /// One channel with confirms per producer (on connection `w % 3`); a publish is
    /// acknowledged by its confirm.
    pub async fn enqueue_op(&self, body: bytes::Bytes, producers: usize) -> Result<Op, String> {
        let mut chans = Vec::with_capacity(producers);
        for w in 0..producers {
            let ch = confirm_channel(&self.conns[w % self.conns.len()]).await?;
            chans.push(ch);
        }
        let chans = Arc::new(chans);
        Ok(Arc::new(move |w, _| {
            let (chans, body) = (chans.clone(), body.clone());
            Box::pin(async move {
                let ch = &chans[w % chans.len()];
                let confirm = ch
                    .basic_publish(
                        "",
                        QUEUE,
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                let c = confirm.await.map_err(|e| format!("confirm: {e}"))?;
                if c.is_ack() {
                    Ok(())
                } else {
                    Err("publish nacked".into())
                }
            })
        }))
    }

    /// One consumer channel per worker (prefetch PREFETCH); each delivery acked before the
    /// worker takes the next. AMQP acks have no reply: done when the frame is written.
    pub async fn consume_op(&self, workers: usize) -> Result<ConsumeOp, String> {
        let mut consumers = Vec::with_capacity(workers);
        for w in 0..workers {
            let ch = self.conns[w % self.conns.len()]
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let c = ch
                .basic_consume(
                    QUEUE,
                    &format!("c{w}"),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("consume: {e}"))?;
            consumers.push(Mutex::new((ch, c)));
        }
        let consumers = Arc::new(consumers);
        Ok(Arc::new(move |w| {
            let consumers = consumers.clone();
            Box::pin(async move {
                let mut g = consumers[w].lock().await;
                let next = tokio::time::timeout(Duration::from_millis(NEXT_WAIT_MS), g.1.next());
                match next.await {
                    Err(_) | Ok(None) => Ok(false),
                    Ok(Some(Err(e))) => Err(format!("delivery: {e}")),
                    Ok(Some(Ok(d))) => {
                        d.ack(BasicAckOptions::default())
                            .await
                            .map_err(|e| format!("ack: {e}"))?;
                        Ok(true)
                    }
                }
            })
        }))
    }
}

async fn connect(i: u16) -> Result<Connection, String> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let uri = format!("amqp://guest:guest@{}/%2f", amqp_addr(i));
    Connection::connect(&uri, props)
        .await
        .map_err(|e| format!("connect to rabbitmq {i}: {e}"))
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(ch)
}
