//! Process-wide Prometheus metrics, served at `GET /metrics` on the admin listener.
//!
//! One registry per process. In-process multi-node tests share it, which only mixes their
//! numbers; behaviour never depends on metrics.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_vec_with_registry,
    register_int_gauge_with_registry, Encoder, Histogram, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry,
};

pub static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::new_custom(Some("corral".into()), None).expect("registry"));

/// Latency buckets from 100 µs to 10 s: commits and fsyncs live in the low milliseconds.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 17).expect("buckets")
}

pub struct Metrics {
    pub raft_role: IntGauge,
    pub raft_term: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_first_index: IntGauge,
    pub raft_last_index: IntGauge,
    pub raft_leader_id: IntGauge,
    pub fsync_seconds: Histogram,
    pub raft_failover_seconds: Histogram,
    pub ready_entries: Histogram,
    pub enqueue_coalesced: Histogram,
    /// Enqueue commands followers forwarded that joined this (leader) node's lanes.
    pub enqueue_forwarded_groups: IntCounter,
    pub proposal_seconds: Histogram,
    pub proposals_total: IntCounterVec,
    pub peer_send_errors: IntCounterVec,
    pub peer_frames_dropped: IntCounterVec,
    pub snapshots_sent: IntCounter,
    pub snapshots_installed: IntCounter,
    /// Snapshot file bytes this node served to followers, in chunks.
    pub snapshot_bytes_sent: IntCounter,
    /// Snapshot transfers reported failed to raft (they are retried).
    pub snapshot_transfer_failures: IntCounter,
    pub log_compactions: IntCounter,
    /// Bytes written to the Raft log's segment files (records, hard states, resets): beside
    /// the disk's own write counters it tells the log's share of them.
    pub log_written_bytes: IntCounter,
    /// Bytes written to the state store's value log (message bodies, once each).
    pub value_log_written_bytes: IntCounter,
    /// Value-log segments deleted once no stored pointer named them.
    pub value_log_reclaimed_segments: IntCounter,
    /// State writes that waited because the write-behind buffer was full.
    pub state_write_backpressure: IntCounter,
    pub state_flush_seconds: Histogram,
    /// Durable queue messages handled by this node's ingress, by operation and outcome.
    pub queue_messages: IntCounterVec,
    /// Per-queue figures from this node's applied state, refreshed on every scrape.
    pub queue_depth: IntGaugeVec,
    pub queue_in_flight: IntGaugeVec,
    pub queue_dead_letters: IntGaugeVec,
    pub queue_bytes: IntGaugeVec,
    /// Replicated running totals per queue and event (enqueued, duplicate, completed,
    /// dead_lettered, expired): the same on every node; take `rate()` of them.
    pub queue_events: IntGaugeVec,
    /// Per secret, from this node's applied state at each scrape: 1 while the current version
    /// expires within the secret's `expiry_warning_ms` (or has expired), else 0.
    pub secret_expiring: IntGaugeVec,
    /// Per secret: seconds until the current version expires (negative once expired).
    pub secret_expires_in_seconds: IntGaugeVec,
    /// Target tenants that do not hold a secret's current version yet, per secret.
    pub secret_push_pending: IntGaugeVec,
    /// Push attempts by this node (as leader), by outcome (deployed, failed).
    pub secret_pushes: IntCounterVec,
    /// Schedule firings this node proposed as leader and saw applied, by outcome.
    pub schedule_firings: IntCounterVec,
}

pub static M: LazyLock<Metrics> = LazyLock::new(|| {
    let r = &*REGISTRY;
    Metrics {
        raft_role: register_int_gauge_with_registry!(
            "raft_role",
            "0 follower, 1 pre-candidate, 2 candidate, 3 leader",
            r
        )
        .expect("m"),
        raft_term: register_int_gauge_with_registry!("raft_term", "current Raft term", r)
            .expect("m"),
        raft_commit_index: register_int_gauge_with_registry!(
            "raft_commit_index",
            "highest committed log index",
            r
        )
        .expect("m"),
        raft_applied_index: register_int_gauge_with_registry!(
            "raft_applied_index",
            "highest applied log index",
            r
        )
        .expect("m"),
        raft_first_index: register_int_gauge_with_registry!(
            "raft_first_index",
            "first log index kept (after compaction)",
            r
        )
        .expect("m"),
        raft_last_index: register_int_gauge_with_registry!(
            "raft_last_index",
            "last log index stored",
            r
        )
        .expect("m"),
        raft_leader_id: register_int_gauge_with_registry!(
            "raft_leader_id",
            "leader node id as this node sees it (0: none)",
            r
        )
        .expect("m"),
        raft_failover_seconds: register_histogram_with_registry!(
            "raft_failover_seconds",
            "on each win: time from the previous leader's last message to this node leading",
            prometheus::exponential_buckets(0.1, 1.5, 14).expect("buckets"),
            r
        )
        .expect("m"),
        fsync_seconds: register_histogram_with_registry!(
            "raft_fsync_seconds",
            "time to make one Ready durable (write + fdatasync of the log segment)",
            latency_buckets(),
            r
        )
        .expect("m"),
        ready_entries: register_histogram_with_registry!(
            "raft_ready_entries",
            "log entries persisted per Ready (group commit batch size)",
            prometheus::exponential_buckets(1.0, 2.0, 14).expect("buckets"),
            r
        )
        .expect("m"),
        enqueue_coalesced: register_histogram_with_registry!(
            "enqueue_coalesced_messages",
            "single-message enqueues sharing one command (ingress coalescing batch size)",
            prometheus::exponential_buckets(1.0, 2.0, 10).expect("buckets"),
            r
        )
        .expect("m"),
        enqueue_forwarded_groups: register_int_counter_with_registry!(
            "enqueue_forwarded_groups_total",
            "enqueue commands forwarded by followers that joined this leader's lanes",
            r
        )
        .expect("m"),
        proposal_seconds: register_histogram_with_registry!(
            "raft_proposal_seconds",
            "client write: submit to applied",
            latency_buckets(),
            r
        )
        .expect("m"),
        proposals_total: register_int_counter_vec_with_registry!(
            "raft_proposals_total",
            "client writes by outcome",
            &["outcome"],
            r
        )
        .expect("m"),
        peer_send_errors: register_int_counter_vec_with_registry!(
            "peer_send_errors_total",
            "failed connects or writes to a peer",
            &["peer"],
            r
        )
        .expect("m"),
        peer_frames_dropped: register_int_counter_vec_with_registry!(
            "peer_frames_dropped_total",
            "frames dropped because a peer queue was full or down",
            &["peer"],
            r
        )
        .expect("m"),
        snapshots_sent: register_int_counter_with_registry!(
            "raft_snapshots_sent_total",
            "snapshots built for lagging followers",
            r
        )
        .expect("m"),
        snapshots_installed: register_int_counter_with_registry!(
            "raft_snapshots_installed_total",
            "snapshots installed from the leader",
            r
        )
        .expect("m"),
        snapshot_bytes_sent: register_int_counter_with_registry!(
            "raft_snapshot_bytes_sent_total",
            "snapshot file bytes served to followers",
            r
        )
        .expect("m"),
        snapshot_transfer_failures: register_int_counter_with_registry!(
            "raft_snapshot_transfer_failures_total",
            "snapshot transfers reported failed (and retried)",
            r
        )
        .expect("m"),
        log_compactions: register_int_counter_with_registry!(
            "raft_log_compactions_total",
            "log compactions",
            r
        )
        .expect("m"),
        log_written_bytes: register_int_counter_with_registry!(
            "raft_log_written_bytes_total",
            "bytes written to the raft log's segment files",
            r
        )
        .expect("m"),
        value_log_written_bytes: register_int_counter_with_registry!(
            "store_value_log_written_bytes_total",
            "bytes written to the state store's value log (message bodies)",
            r
        )
        .expect("m"),
        value_log_reclaimed_segments: register_int_counter_with_registry!(
            "store_value_log_reclaimed_segments_total",
            "value-log segments deleted once no stored pointer named them",
            r
        )
        .expect("m"),
        state_write_backpressure: register_int_counter_with_registry!(
            "store_write_backpressure_total",
            "state writes that waited for the write-behind buffer to drain into sled",
            r
        )
        .expect("m"),
        state_flush_seconds: register_histogram_with_registry!(
            "raft_state_flush_seconds",
            "time of one state store flush (off the driver thread; log compaction waits for it)",
            latency_buckets(),
            r
        )
        .expect("m"),
        queue_messages: register_int_counter_vec_with_registry!(
            "queue_messages_total",
            "queue messages handled by this node: op enqueue (stored, duplicate, full), receive (delivered, empty), settle (complete, abandon, dead-letter, renew-lock, lock_lost), push (completed, failed, tenant_trouble)",
            &["op", "outcome"],
            r
        )
        .expect("m"),
        schedule_firings: register_int_counter_vec_with_registry!(
            "schedule_firings_total",
            "schedule firings proposed by this node as leader, by outcome: enqueued, enqueue_failed, skipped, call_started, duplicate (already accounted for), not_fired (paused, stale, busy)",
            &["outcome"],
            r
        )
        .expect("m"),
        queue_depth: register_int_gauge_vec_with_registry!("queue_depth", "live messages (ready + in flight)", &["queue"], r).expect("m"),
        queue_in_flight: register_int_gauge_vec_with_registry!("queue_in_flight", "messages locked by a consumer", &["queue"], r).expect("m"),
        queue_dead_letters: register_int_gauge_vec_with_registry!("queue_dead_letters", "messages in the dead-letter queue", &["queue"], r).expect("m"),
        queue_bytes: register_int_gauge_vec_with_registry!("queue_bytes", "body bytes of live messages", &["queue"], r).expect("m"),
        queue_events: register_int_gauge_vec_with_registry!("queue_events_total", "replicated running totals per queue: enqueued, duplicate, completed, dead_lettered, expired", &["queue", "event"], r).expect("m"),
        secret_expiring: register_int_gauge_vec_with_registry!("secret_expiring", "1 while the secret's current version expires within its expiry_warning_ms or has expired", &["secret"], r).expect("m"),
        secret_expires_in_seconds: register_int_gauge_vec_with_registry!("secret_expires_in_seconds", "seconds until the secret's current version expires (negative: expired)", &["secret"], r).expect("m"),
        secret_push_pending: register_int_gauge_vec_with_registry!("secret_push_pending", "target tenants not yet holding the secret's current version", &["secret"], r).expect("m"),
        secret_pushes: register_int_counter_vec_with_registry!("secret_pushes_total", "secret push attempts made by this node as leader, by outcome (deployed, failed)", &["outcome"], r).expect("m"),
    }
});

/// The registry in Prometheus text exposition format.
pub fn render() -> String {
    LazyLock::force(&M);
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    if enc.encode(&REGISTRY.gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
