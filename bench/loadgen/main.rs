//! `palisade-bench`: the load generator. It starts a fresh server per run (Palisade and its peers,
//! side by side in one invocation), drives it over loopback only, and prints one JSON line per run
//! plus ratios against the first kind named.
//!
//! Every scenario is bounded in connections, events and time, and stops by itself.

mod client;
mod scenarios;
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
}

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
fn connections_within(limit: u64, wanted: usize) -> usize {
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
    let mut figures: Vec<(Kind, f64)> = Vec::new();
    for &kind in &cli.kinds {
        let figure = match cli.scenario {
            Scenario::Idle { low, high } => {
                let (low, high) = if cli.quick { (200, 600) } else { (low, high) };
                let high = connections_within(files, high);
                let r = scenarios::idle(kind, low.min(high / 2), high).await?;
                emit(&r);
                r.marginal_bytes as f64
            }
            Scenario::Connect { connections } => {
                let n = if cli.quick { 300 } else { connections };
                let r = scenarios::connect(kind, connections_within(files, n)).await?;
                emit(&r);
                r.per_second
            }
            Scenario::Fanout {
                subscribers,
                events,
                rate,
            } => {
                let (s, e) = if cli.quick {
                    (100, 50)
                } else {
                    (subscribers, events)
                };
                let r = scenarios::fanout(kind, connections_within(files, s), e, rate).await?;
                emit(&r);
                r.deliveries_per_second
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
