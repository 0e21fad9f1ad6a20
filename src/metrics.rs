//! Prometheus metrics, served as text on `/metrics`. Labels stay low-cardinality: outcomes, types,
//! limit codes and close codes, never user ids or topic names.
//!
//! The `prometheus` crate is used rather than `metrics-exporter-prometheus` because every series
//! here is known up front: typed handles on a struct are checked by the compiler, need no global
//! recorder, and let each test build its own isolated registry.

use std::cell::RefCell;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    pub connections_active: IntGauge,
    /// Upgrades by outcome: accepted, auth_failed, origin_rejected, limit_rejected,
    /// protocol_rejected.
    pub connections_total: IntCounterVec,
    /// Closes by the code the server sent (a code of `transport::protocol::code`), or `client`
    /// for every close the client started, whatever code it chose.
    pub closes_total: IntCounterVec,
    /// Operations by type (query, mutation, subscription, unknown) and outcome (ok, error, rejected).
    pub operations_total: IntCounterVec,
    pub audit_dropped: IntCounter,
    pub connection_log_dropped: IntCounter,
    /// Audit rows of failed credential attempts not written: their address was over the
    /// failed-attempt rate (`audit::FAILED_ATTEMPT_BURST`).
    pub audit_throttled: IntCounter,
    pub rate_limit_warnings: IntCounter,
    pub rate_limit_violations: IntCounter,
    /// Operations refused by a payload limit, by limit code.
    pub payload_rejections: IntCounterVec,
    /// hardening.yaml reloads by result: ok, or rejected (invalid, empty, or missing a running section).
    pub config_reloads: IntCounterVec,
    /// Rows deleted by the retention job, by table.
    pub retention_deleted: IntCounterVec,
    /// How long WebSocket connections lasted.
    pub connection_seconds: Histogram,
    /// WebSocket data messages, by direction (in, out).
    pub ws_messages: IntCounterVec,
    /// WebSocket data message bytes, by direction (in, out).
    pub ws_bytes: IntCounterVec,
    /// Refused credentials, by low-cardinality cause (missing, expired, bad_signature, …).
    pub auth_failures: IntCounterVec,
    /// Events published into the bus, by result (ok, error).
    pub bus_publishes: IntCounterVec,
    /// Seconds from an event's publication (its stream id) to its read by this instance.
    pub bus_read_lag: Histogram,
    /// `GAP` notices sent to subscribers, by cause (replay_window, lagged, redis_reset).
    pub bus_gaps: IntCounterVec,
    /// Failed Redis calls of the cluster state (connection slots, presence, control), by part.
    pub cluster_errors: IntCounterVec,
    /// Redis entries left by instances that died, removed by the sweeper, by kind.
    pub swept: IntCounterVec,
    /// Presence-log rows dropped because the queue was full or the database failed.
    pub presence_log_dropped: IntCounter,
    /// 1 when the last readiness check (every `readiness::INTERVAL`) found every dependency
    /// reachable, else 0.
    pub ready: IntGauge,
    // What the bus and presence hold for clients (topics, replays, presence bookkeeping).
    /// Topics followed by this instance's subscribers now.
    pub topics_active: IntGauge,
    /// Shared subscription executions running now: one per distinct document, operation and
    /// variables followed here. At most one per subscription served, which a connection's
    /// `connections.max_operations` bounds.
    pub shared_subscriptions: IntGauge,
    /// Operations served by a shared execution now.
    pub shared_subscribers: IntGauge,
    /// Events the in-process bus keeps for resuming subscribers, over all topics (at most
    /// `streams.maxlen`); 0 with Redis, which keeps them itself.
    pub bus_retained_events: IntGauge,
    /// Replays (resumes with `after`) reading back missed events now.
    pub replays_active: IntGauge,
    /// Presence joins and leaves waiting for the presence worker.
    pub presence_queue: IntGauge,
    /// Presence joins not queued because the queue was full (those subscriptions are not shown
    /// as present).
    pub presence_queue_dropped: IntCounter,
    /// A connection's queued outgoing bytes, observed each time a message is queued. A histogram
    /// rather than a gauge of the largest queue: each connection records its own size with no
    /// shared maximum to maintain or scan at scrape time, it sums across instances, and the
    /// buckets at and below `connections.send_queue_bytes` show how close queues come to it.
    pub send_queue_bytes: Histogram,
    /// Bytes of claims held by live connections' identities (as JSON): one copy per connection,
    /// however many operations share it, each at most `auth.max_claims_bytes`.
    pub claims_bytes: IntGauge,
    /// Lookups of the parsed-document cache (`payload.document_cache`), by outcome (hit, miss).
    pub document_cache_lookups: IntCounterVec,
    /// Documents in that cache, at most `payload.document_cache.entries`.
    pub document_cache_entries: IntGauge,
    /// What they are counted at (256 bytes per byte of text), at most `payload.document_cache.bytes`.
    pub document_cache_bytes: IntGauge,
}

/// Prepended to every metric name at export.
const PREFIX: &str = "palisade";

/// The registry being filled, and the names registered so far (a labelled family has no sample,
/// and so no line in the exposition, until its first use).
struct Catalog {
    registry: Registry,
    names: RefCell<Vec<String>>,
}

fn register<M: Collector + Clone + 'static>(catalog: &Catalog, metric: M) -> M {
    let names = metric
        .desc()
        .into_iter()
        .map(|d| format!("{PREFIX}_{}", d.fq_name));
    catalog.names.borrow_mut().extend(names);
    catalog
        .registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

fn counter(catalog: &Catalog, name: &str, help: &str) -> IntCounter {
    register(
        catalog,
        IntCounter::new(name, help).expect("static metric definition"),
    )
}

fn gauge(catalog: &Catalog, name: &str, help: &str) -> IntGauge {
    register(
        catalog,
        IntGauge::new(name, help).expect("static metric definition"),
    )
}

fn counter_vec(catalog: &Catalog, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(catalog, metric)
}

impl Metrics {
    pub fn new(instance_id: &str) -> Self {
        let catalog = Catalog {
            registry: Registry::new_custom(Some(PREFIX.into()), None)
                .expect("a static prefix is valid"),
            names: RefCell::default(),
        };
        let r = &catalog;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; labels carry the version and instance",
            ),
            &["version", "instance"],
        )
        .expect("static metric definition");
        register(r, build_info)
            .with_label_values(&[env!("CARGO_PKG_VERSION"), instance_id])
            .set(1);
        let active = IntGauge::new("connections_active", "WebSocket connections open now")
            .expect("static metric definition");
        Self {
            connections_active: register(r, active),
            connections_total: counter_vec(
                r,
                "connections_total",
                "WebSocket upgrade attempts by outcome",
                &["outcome"],
            ),
            closes_total: counter_vec(
                r,
                "connection_closes_total",
                "WebSocket closes by the close code the server sent, or `client` when the client closed",
                &["code"],
            ),
            operations_total: counter_vec(
                r,
                "operations_total",
                "GraphQL operations by type and outcome",
                &["type", "outcome"],
            ),
            audit_dropped: counter(
                r,
                "audit_dropped_total",
                "Audit rows dropped because the queue was full or the database failed",
            ),
            connection_log_dropped: counter(
                r,
                "connection_log_dropped_total",
                "Connection-log writes dropped because the queue was full or the database failed",
            ),
            audit_throttled: counter(
                r,
                "audit_throttled_total",
                "Audit rows of failed credential attempts not written because their client address exceeded the failed-attempt rate",
            ),
            rate_limit_warnings: counter(
                r,
                "rate_limit_warnings_total",
                "Connections warned that their operation budget is nearly used",
            ),
            rate_limit_violations: counter(
                r,
                "rate_limit_violations_total",
                "Operations refused for exceeding a rate limit",
            ),
            payload_rejections: counter_vec(
                r,
                "payload_rejections_total",
                "Operations refused by a payload limit",
                &["limit"],
            ),
            config_reloads: counter_vec(
                r,
                "config_reloads_total",
                "hardening.yaml reloads by result",
                &["result"],
            ),
            retention_deleted: counter_vec(
                r,
                "retention_deleted_total",
                "Rows deleted by the retention job, by table",
                &["table"],
            ),
            connection_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "connection_duration_seconds",
                        "How long WebSocket connections lasted",
                    )
                    // 1 s to about 18 h, ×4 per bucket.
                    .buckets(exponential_buckets(1.0, 4.0, 9).expect("static buckets")),
                )
                .expect("static metric definition"),
            ),
            ws_messages: counter_vec(
                r,
                "websocket_messages_total",
                "WebSocket data messages by direction",
                &["direction"],
            ),
            ws_bytes: counter_vec(
                r,
                "websocket_bytes_total",
                "WebSocket data message bytes by direction",
                &["direction"],
            ),
            auth_failures: counter_vec(
                r,
                "auth_failures_total",
                "Refused credentials by cause",
                &["reason"],
            ),
            bus_publishes: counter_vec(
                r,
                "bus_publishes_total",
                "Events published into the bus by result",
                &["result"],
            ),
            bus_read_lag: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "bus_read_lag_seconds",
                        "Seconds from an event's publication to its read by this instance",
                    )
                    // 1 ms to about 16 s, ×4 per bucket.
                    .buckets(exponential_buckets(0.001, 4.0, 8).expect("static buckets")),
                )
                .expect("static metric definition"),
            ),
            bus_gaps: counter_vec(
                r,
                "bus_gaps_total",
                "GAP notices sent to subscribers, by cause",
                &["cause"],
            ),
            cluster_errors: counter_vec(
                r,
                "cluster_errors_total",
                "Failed Redis calls of the cluster state, by part",
                &["part"],
            ),
            swept: counter_vec(
                r,
                "redis_swept_total",
                "Redis entries left by instances that died, removed by the sweeper, by kind",
                &["kind"],
            ),
            presence_log_dropped: counter(
                r,
                "presence_log_dropped_total",
                "Presence-log rows dropped because the queue was full or the database failed",
            ),
            ready: register(
                r,
                IntGauge::new(
                    "ready",
                    "1 when the last readiness check found every dependency answering",
                )
                .expect("static metric definition"),
            ),
            topics_active: gauge(
                r,
                "topics_active",
                "Topics followed by this instance's subscribers now",
            ),
            shared_subscriptions: gauge(
                r,
                "shared_subscriptions",
                "Shared subscription executions running now, one per distinct document, operation and variables",
            ),
            shared_subscribers: gauge(
                r,
                "shared_subscribers",
                "Subscriptions served by a shared execution now",
            ),
            bus_retained_events: gauge(
                r,
                "bus_retained_events",
                "Events the in-process bus keeps for resuming subscribers, over all topics",
            ),
            replays_active: gauge(
                r,
                "replays_active",
                "Resumes reading back missed events now",
            ),
            presence_queue: gauge(
                r,
                "presence_queue_length",
                "Presence joins and leaves waiting for the presence worker",
            ),
            presence_queue_dropped: counter(
                r,
                "presence_queue_dropped_total",
                "Presence joins dropped because the presence queue was full",
            ),
            send_queue_bytes: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "send_queue_bytes",
                        "Queued outgoing bytes of a connection, each time a message is queued",
                    )
                    // 1 KiB to 64 MiB, ×4 per bucket: the range of connections.send_queue_bytes.
                    .buckets(exponential_buckets(1024.0, 4.0, 9).expect("static buckets")),
                )
                .expect("static metric definition"),
            ),
            claims_bytes: register(
                r,
                IntGauge::new(
                    "claims_bytes",
                    "Bytes of claims held by live connections, one copy per connection",
                )
                .expect("static metric definition"),
            ),
            document_cache_lookups: counter_vec(
                r,
                "document_cache_lookups_total",
                "Lookups of the parsed-document cache by outcome",
                &["outcome"],
            ),
            document_cache_entries: gauge(
                r,
                "document_cache_entries",
                "Parsed documents kept for reuse",
            ),
            document_cache_bytes: gauge(
                r,
                "document_cache_bytes",
                "Bytes the parsed documents kept are counted at (256 per byte of their text)",
            ),
            names: catalog.names.take(),
            registry: catalog.registry,
        }
    }

    /// Every metric family this server exports, whether or not it has samples yet.
    pub fn names(&self) -> &[String] {
        &self.names
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
