//! `palisade-bench`: the load generator. It starts a fresh server per run (Palisade and its peers,
//! side by side in one invocation), drives it over loopback only, and prints one JSON line per run
//! plus ratios against the first kind named.
//!
//! Every scenario is bounded in connections, events and time, and stops by itself.

mod chart;
mod client;
mod floor;
mod scenarios;
mod suite;
mod target;

use clap::{Parser, Subcommand};
use serde::Serialize;
use target::Kind;

#[derive(Parser)]
#[command(
    name = "palisade-bench",
    about = "Load generator for Palisade and its peers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Servers to measure, in this order; ratios are against the first.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "palisade,bare,node",
        global = true
    )]
    kinds: Vec<Kind>,
    /// Small counts: a smoke check that the tools work, not a measurement.
    #[arg(long, global = true)]
    quick: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Marginal RSS per authenticated, subscribed, idle connection between two populations.
    Idle {
        #[arg(long, default_value_t = 5_000)]
        low: usize,
        #[arg(long, default_value_t = 15_000)]
        high: usize,
    },
    /// Connect + connection_init + ack + subscribe, as fast as the server takes them.
    Connect {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Run Palisade on a fresh database of this PostgreSQL server (the URL of its `postgres`
        /// database) instead of SQLite.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Deliveries per second and publish→deliver latency to subscribers of one topic.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 200)]
        events: usize,
        /// Events per second; unset publishes as fast as the server answers.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Subscribers over many topics, events at mixed rates (half to the ten hottest).
    Topics {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1_000)]
        topics: usize,
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Connections arriving at a steady rate, each living 5 s: memory drift and Redis keys left.
    Churn {
        #[arg(long, default_value_t = 200)]
        per_second: u32,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Run Palisade on the Redis bus and count the keys left under the run's prefix.
        #[arg(long)]
        redis: Option<String>,
    },
    /// One Palisade instance on the Redis bus, then two sharing it (Palisade only).
    Cluster {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long, default_value_t = 5_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 200)]
        events: usize,
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Server CPU per operation: one query sent back to back over a fixed set of connections.
    /// Compare `--kinds palisade,palisade-open,bare`: with the guard, without it, and bare.
    Overhead {
        #[arg(long, default_value_t = 50)]
        connections: usize,
        #[arg(long, default_value_t = 50_000)]
        operations: usize,
    },
    /// Every scenario against Palisade and both peers; writes BENCHMARKS.md and bench/*.svg.
    Suite {
        /// Also run churn and cluster on this Redis (unset: churn in-process, no cluster).
        #[arg(long)]
        redis: Option<String>,
        /// Also run the connect scenario with Palisade on this PostgreSQL server (the URL of its
        /// `postgres` database).
        #[arg(long)]
        postgres: Option<String>,
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
    },
    /// Everyone cut off at once mid-stream, then all reconnect and resume with `after`.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 300)]
        events: usize,
        #[arg(long, default_value_t = 20)]
        rate: u32,
    },
    /// The kernel floor's server (`--kinds floor` starts it): not a measurement by itself.
    #[command(hide = true)]
    FloorServe { port: u16 },
}

/// Subscribers and events of a `--quick` fan-out (one instance or two).
const QUICK_FANOUT: (usize, usize) = (100, 50);

/// Raises this process's open-file limit to the hard limit (children inherit it) and returns it.
fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return 1024;
        }
    }
    limit.rlim_cur
}

/// Connections one process may hold: file descriptors less room for the runtime and the server's
/// own files.
pub fn connections_within(limit: u64, wanted: usize) -> usize {
    let room = limit.saturating_sub(200) as usize;
    if wanted > room {
        eprintln!(
            "palisade-bench: the OS allows {limit} open files per process; measuring {room} connections instead of {wanted}"
        );
    }
    wanted.min(room)
}

fn emit(result: &impl Serialize) {
    println!("{}", serde_json::to_string(result).expect("serializable"));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let files = raise_file_limit();
    if let Scenario::FloorServe { port } = cli.scenario {
        // Blocking sockets and threads of its own: it runs no async code.
        return tokio::task::spawn_blocking(move || floor::serve(port)).await?;
    }
    if let Scenario::Suite {
        redis,
        postgres,
        out,
    } = &cli.scenario
    {
        let services = suite::Services {
            redis: redis.as_deref(),
            postgres: postgres.as_deref(),
        };
        return suite::run(cli.quick, files, services, out).await;
    }
    let mut figures: Vec<(Kind, f64)> = Vec::new();
    for &kind in &cli.kinds {
        let q = cli.quick;
        let figure = match &cli.scenario {
            Scenario::Idle { low, high } => {
                let (low, high) = if q { (200, 600) } else { (*low, *high) };
                let high = connections_within(files, high);
                let r = scenarios::idle::idle(kind, &[low.min(high / 2), high]).await?;
                emit(&r);
                r.marginal_bytes as f64
            }
            Scenario::Connect {
                connections,
                postgres,
            } => {
                let n = if q { 300 } else { *connections };
                let n = connections_within(files, n);
                let r = scenarios::idle::connect(kind, n, postgres.as_deref()).await?;
                emit(&r);
                r.per_second
            }
            Scenario::Fanout {
                subscribers,
                events,
                rate,
            } => {
                let (s, e) = if q {
                    QUICK_FANOUT
                } else {
                    (*subscribers, *events)
                };
                let s = connections_within(files, s);
                let r = scenarios::deliver::fanout(kind, s, e, *rate).await?;
                emit(&r);
                r.deliveries_per_second
            }
            Scenario::Topics {
                subscribers,
                topics,
                events,
                rate,
            } => {
                let (s, t, e) = if q {
                    (200, 20, 400)
                } else {
                    (*subscribers, *topics, *events)
                };
                let s = connections_within(files, s);
                let r = scenarios::deliver::topics(kind, s, t, e, *rate).await?;
                emit(&r);
                r.deliveries_per_second
            }
            Scenario::Churn {
                per_second,
                seconds,
                redis,
            } => {
                let (p, d) = if q { (50, 8) } else { (*per_second, *seconds) };
                let r = scenarios::churn::churn(kind, p, d, redis.as_deref()).await?;
                emit(&r);
                r.drift_percent
            }
            Scenario::Cluster {
                redis,
                subscribers,
                events,
                rate,
            } => {
                let (s, e) = if q {
                    QUICK_FANOUT
                } else {
                    (*subscribers, *events)
                };
                let s = connections_within(files, s);
                let [one, two] = scenarios::deliver::cluster(redis, s, e, *rate).await?;
                emit(&one);
                emit(&two);
                eprintln!(
                    "palisade-bench: two instances / one: {:.2}× the deliveries/s, p99 {:.1} ms vs {:.1} ms",
                    two.deliveries_per_second / one.deliveries_per_second.max(1e-9),
                    two.p99_ms,
                    one.p99_ms
                );
                // Palisade only: the peers have no cluster mode.
                return Ok(());
            }
            Scenario::Overhead {
                connections,
                operations,
            } => {
                let (c, o) = if q {
                    (10, 500)
                } else {
                    (*connections, *operations)
                };
                let r = scenarios::overhead::overhead(kind, c, o).await?;
                emit(&r);
                r.cpu_micros_per_operation
            }
            Scenario::Suite { .. } | Scenario::FloorServe { .. } => {
                unreachable!("handled above")
            }
            Scenario::Storm {
                clients,
                events,
                rate,
            } => {
                let (c, e, r) = if q {
                    (100, 60, 20)
                } else {
                    (*clients, *events, *rate)
                };
                let c = connections_within(files, c);
                let r = scenarios::storm::storm(kind, c, e, r).await?;
                emit(&r);
                r.resubscribed_seconds
            }
        };
        figures.push((kind, figure));
    }
    if let Some(&(first, base)) = figures.first() {
        for (kind, figure) in &figures[1..] {
            let ratio = if *figure > 0.0 {
                base / figure
            } else {
                f64::NAN
            };
            eprintln!("palisade-bench: {first:?} / {kind:?} = {ratio:.2}");
        }
    }
    Ok(())
}
