//! Per-operation cost of the per-operation guard (budget, payload checks, exemptions): the same
//! operations run through Palisade's schema with the guard, without it (as `serve --unguarded`),
//! and through a bare schema, in one process, and the ratios are printed. Run with `cargo bench --bench operations`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_graphql::{Request, Schema};
use palisade::audit::Audit;
use palisade::auth::secret::HmacSecret;
use palisade::auth::{Authenticator, Identity, Method, Verifier};
use palisade::bus::{Bus, MemoryBus};
use palisade::config::{Config, LiveConfig};
use palisade::db::Database;
use palisade::graphql::{self, Caller, Instance, Mutation, Query, Services, Subscription};
use palisade::limits::per_operation::OperationLimits;
use palisade::metrics::Metrics;
use palisade::presence::{self, Presence};
use palisade::transport::control::ConnectionHandle;

const ROUNDS: usize = 5;
const OPERATIONS: usize = 20_000;

/// Representative operations: a small query, a wider one with aliases and variables.
const QUERIES: [&str; 2] = [
    "{ me { id } }",
    "query Q($a: Boolean!) { a: me { id claims } b: serverInfo { version instanceId uptimeSeconds } c: me @include(if: $a) { id } }",
];

/// Documents built to exhaust a parser or validator: deep nesting, many aliases, fan-out.
fn hostile() -> Vec<(&'static str, String)> {
    let fan_out: String = (0..30)
        .map(|i| format!("fragment F{i} on Query {{ ...F{} ...F{} }} ", i + 1, i + 1))
        .collect();
    vec![
        (
            "5,000 nested list literals",
            format!(
                "{{ me(x: {}{}) {{ id }} }}",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
        ),
        (
            "5,000 nested selections",
            format!("{}{}", "{ me ".repeat(5000), "}".repeat(5000)),
        ),
        (
            "3,000 aliases",
            format!(
                "{{ {} }}",
                (0..3000)
                    .map(|i| format!("a{i}: me {{ id }}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        (
            "3,000 directives",
            format!("{{ me {} {{ id }} }}", "@skip(if: false) ".repeat(3000)),
        ),
        (
            "fragment cycle",
            "fragment A on Query { ...B } fragment B on Query { ...A } { ...A }".to_string(),
        ),
        (
            "fragment fan-out (2^30)",
            format!("{{ ...F0 }} {fan_out} fragment F30 on Query {{ me {{ id }} }}"),
        ),
        (
            "50,000 tokens",
            format!("{{ me {{ {} }} }}", "id ".repeat(50_000)),
        ),
    ]
}

fn caller(live: &LiveConfig) -> Caller {
    let (handle, _control) = ConnectionHandle::new("bench".into(), live.clone());
    let identity = Identity {
        user_id: "bench".into(),
        claims: Default::default(),
        method: Method::Jwt,
        expires_at: None,
        session_id: None,
    };
    Caller {
        identity: Some(std::sync::Arc::new(identity)),
        connection_id: Some("bench".into()),
        ip: Some("127.0.0.1".into()),
        connection: Some(handle),
    }
}

async fn run(schema: &graphql::AppSchema, caller: &Caller, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let query = QUERIES[i % QUERIES.len()];
        let request = Request::new(query)
            .variables(async_graphql::Variables::from_json(
                serde_json::json!({ "a": true }),
            ))
            .data(caller.clone());
        // As the connection loop does: a ticket per message, so the guard counts the budget.
        let request = match &caller.connection {
            Some(handle) => request.data(handle.budget.ticket()),
            None => request,
        };
        let response = schema.execute(request).await;
        assert!(response.is_ok(), "{:?}", response.errors);
    }
    started.elapsed()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::default();
    // A budget that never runs out, so every operation does the full amount of work.
    config.operations.rate_limit.limit = u32::MAX;
    let config = Arc::new(config);
    let live: LiveConfig = Arc::new(ArcSwap::new(config.clone()));
    let db = Database::connect("sqlite::memory:").await?;
    let metrics = Arc::new(Metrics::new("bench"));
    let secret = HmacSecret {
        bytes: b"bench".to_vec(),
        development: false,
    };
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(16, 16));
    let instance = Arc::new(Instance {
        id: "bench".into(),
        started: std::time::Instant::now(),
    });
    // The same schema as the server's, with its per-operation guard and without it
    // (`serve --unguarded`), and a bare one with no extension at all.
    let palisade = |unguarded: bool| -> anyhow::Result<_> {
        Ok(graphql::build(Services {
            config: config.clone(),
            live: live.clone(),
            operations: Arc::new(OperationLimits::new(&config.operations, None)?),
            auth: Arc::new(Authenticator::new(
                Verifier::new(&config.auth.jwt, &secret)?,
                &config.auth,
                None,
            )),
            bus: bus.clone(),
            presence: Presence::start(presence::Setup {
                redis: None,
                streams: &config.streams,
                instance: instance.id.clone(),
                bus: bus.clone(),
                db: db.clone(),
                metrics: metrics.clone(),
                shutdown: Default::default(),
            })?,
            db: db.clone(),
            audit: Audit::start(db.clone(), metrics.clone()),
            instance: instance.clone(),
            metrics: metrics.clone(),
            unguarded,
        }))
    };
    let hardened = palisade(false)?;
    let unguarded = palisade(true)?;
    let bare = Schema::build(Query, Mutation::default(), Subscription::default())
        .data(instance)
        .data(bus)
        .data(live.clone())
        .finish();
    let caller = caller(&live);

    // Warm both up, then interleave rounds so drift in the machine's load affects both alike.
    run(&hardened, &caller, 1_000).await;
    run(&unguarded, &caller, 1_000).await;
    run(&bare, &caller, 1_000).await;
    let (mut with, mut off, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        with.push(run(&hardened, &caller, OPERATIONS).await);
        off.push(run(&unguarded, &caller, OPERATIONS).await);
        without.push(run(&bare, &caller, OPERATIONS).await);
    }
    let per_op = |d: &Duration| d.as_secs_f64() * 1e6 / OPERATIONS as f64;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        per_op(&v[v.len() / 2])
    };
    let (with, off, without) = (median(&mut with), median(&mut off), median(&mut without));
    println!("operations per round: {OPERATIONS}, rounds: {ROUNDS} (median shown)");
    println!("bare schema, no extension:       {without:8.2} µs/operation");
    println!("Palisade, guard off:             {off:8.2} µs/operation");
    println!("Palisade, guard on:              {with:8.2} µs/operation");
    println!("ratio (guard on / guard off):    {:8.2}x", with / off);
    println!("ratio (guard on / bare):         {:8.2}x", with / without);

    // What refusing hostile documents costs, through the same hardened schema.
    println!("\nrefusing hostile documents (median of {ROUNDS}):");
    for (name, query) in hostile() {
        let mut times = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let response = hardened
                .execute(Request::new(query.clone()).data(caller.clone()))
                .await;
            times.push(started.elapsed());
            assert!(response.is_err(), "{name} was accepted");
        }
        times.sort();
        println!(
            "  {name:<40} {:>10.1} µs",
            times[ROUNDS / 2].as_secs_f64() * 1e6
        );
    }
    Ok(())
}
