//! Prometheus metrics, served as text on `/metrics`. Labels stay low-cardinality: outcomes, types
//! and close codes, never user ids or topic names.
//!
//! The `prometheus` crate is used rather than `metrics-exporter-prometheus` because every series
//! here is known up front: typed handles on a struct are checked by the compiler, need no global
//! recorder, and let each test build its own isolated registry.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections_active: IntGauge,
    /// Upgrades by outcome: accepted, auth_failed, protocol_rejected.
    pub connections_total: IntCounterVec,
    pub closes_total: IntCounterVec,
    /// Operations by type (query, mutation, subscription, unknown) and outcome (ok, error, rejected).
    pub operations_total: IntCounterVec,
    pub audit_dropped: IntCounter,
}

impl Metrics {
    pub fn new(instance_id: &str) -> Self {
        let registry =
            Registry::new_custom(Some("palisade".into()), None).expect("a static prefix is valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("each metric is registered once");
            metric
        };
        let connections_active =
            IntGauge::new("connections_active", "WebSocket connections open now")
                .expect("static metric definition");
        registry
            .register(Box::new(connections_active.clone()))
            .expect("each metric is registered once");
        let audit_dropped = IntCounter::new(
            "audit_dropped_total",
            "Audit rows dropped because the queue was full or the database failed",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(audit_dropped.clone()))
            .expect("each metric is registered once");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; labels carry the version and instance",
            ),
            &["version", "instance"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(build_info.clone()))
            .expect("each metric is registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), instance_id])
            .set(1);
        Self {
            connections_total: counter_vec(
                "connections_total",
                "WebSocket upgrade attempts by outcome",
                &["outcome"],
            ),
            closes_total: counter_vec(
                "connection_closes_total",
                "WebSocket closes by close code",
                &["code"],
            ),
            operations_total: counter_vec(
                "operations_total",
                "GraphQL operations by type and outcome",
                &["type", "outcome"],
            ),
            connections_active,
            audit_dropped,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}
