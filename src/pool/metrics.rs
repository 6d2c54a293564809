//! Per-tenant metrics (label `tenant`) in the process registry, served at `GET /metrics`.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_gauge_vec_with_registry, HistogramVec, IntCounterVec, IntGaugeVec,
};

pub struct PoolMetrics {
    /// Runtime calls made through a `Lease`, by tenant (management calls and probes are not
    /// counted yet).
    pub requests: IntCounterVec,
    /// Failed calls by tenant and class: `connect`, `timeout`, `4xx`, `429`, `5xx`, `503`, `auth`.
    pub errors: IntCounterVec,
    /// Call latency, seconds.
    pub latency: HistogramVec,
    pub in_flight: IntGaugeVec,
    /// Current adaptive concurrency limit.
    pub limit: IntGaugeVec,
    /// 1 healthy, 0 not (unknown or unhealthy), on this node.
    pub healthy: IntGaugeVec,
    /// Health transitions, by tenant and new status.
    pub health_changes: IntCounterVec,
}

pub static PM: LazyLock<PoolMetrics> = LazyLock::new(|| {
    let r = &*crate::metrics::REGISTRY;
    PoolMetrics {
        requests: register_int_counter_vec_with_registry!(
            "tenant_requests_total",
            "calls to a tenant",
            &["tenant"],
            r
        )
        .expect("m"),
        errors: register_int_counter_vec_with_registry!(
            "tenant_errors_total",
            "failed calls to a tenant by class",
            &["tenant", "class"],
            r
        )
        .expect("m"),
        latency: register_histogram_vec_with_registry!(
            "tenant_request_seconds",
            "latency of calls to a tenant",
            &["tenant"],
            prometheus::exponential_buckets(0.001, 2.0, 16).expect("buckets"),
            r
        )
        .expect("m"),
        in_flight: register_int_gauge_vec_with_registry!(
            "tenant_in_flight",
            "calls outstanding to a tenant from this node",
            &["tenant"],
            r
        )
        .expect("m"),
        limit: register_int_gauge_vec_with_registry!(
            "tenant_concurrency_limit",
            "adaptive concurrency limit of a tenant on this node",
            &["tenant"],
            r
        )
        .expect("m"),
        healthy: register_int_gauge_vec_with_registry!(
            "tenant_healthy",
            "1 if this node considers the tenant healthy",
            &["tenant"],
            r
        )
        .expect("m"),
        health_changes: register_int_counter_vec_with_registry!(
            "tenant_health_changes_total",
            "health transitions of a tenant on this node",
            &["tenant", "to"],
            r
        )
        .expect("m"),
    }
});

/// Drops a removed tenant's series so `/metrics` does not report it forever.
pub fn forget(tenant: &str) {
    let m = &*PM;
    let _ = m.requests.remove_label_values(&[tenant]);
    let _ = m.latency.remove_label_values(&[tenant]);
    let _ = m.in_flight.remove_label_values(&[tenant]);
    let _ = m.limit.remove_label_values(&[tenant]);
    let _ = m.healthy.remove_label_values(&[tenant]);
}
