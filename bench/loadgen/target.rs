//! The servers under test: each run starts a fresh one on a free loopback port, with the same
//! workload rules, and reads its memory and CPU from /proc while the scenario runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The HMAC secret every server under test verifies tokens with.
pub const SECRET: &str = "palisade-bench-secret-of-at-least-32-bytes";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Palisade itself, release build, with the bench hardening.yaml below.
    Palisade,
    /// Palisade with every limit it can switch off switched off: the `overhead` baseline.
    PalisadeOpen,
    /// A bare async-graphql-axum server with the same schema shape and no hardening.
    Bare,
    /// graphql-ws + ws + graphql-js with an in-process PubSub (bench/peers/node).
    Node,
}

/// A shared Redis for the Palisade instances of one run, under a key prefix of the run's own.
#[derive(Clone, Debug)]
pub struct Redis {
    pub url: String,
    pub prefix: String,
}

pub struct Server {
    pub kind: Kind,
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Limits high enough that the workload, not a limit, is what is measured; the per-operation
/// guards all still run.
fn hardening(port: u16, open: bool, redis: Option<&Redis>) -> String {
    let budget = if open { 100_000_000 } else { 1_000_000 };
    let streams = redis
        .map(|r| {
            format!(
                "streams: {{ key_prefix: \"{}\", presence_ttl: 5s }}\n",
                r.prefix
            )
        })
        .unwrap_or_default();
    let rules = format!(
        r#"server: {{ listen: "127.0.0.1:{port}" }}
auth: {{ connection_init_timeout: 60s }}
connections:
  max_per_user: 5
  max_per_ip: 100000
  reconnects_per_minute: 1000
  connects_per_minute_per_ip: 100000
operations:
  rate_limit: {{ limit: {budget}, window: 60s }}
  http: {{ per_ip_per_second: 100000, burst: 100000 }}
topics:
  rules:
    - pattern: "bench:{{name}}"
      subscribe: [authenticated]
      publish: [{{ role: service }}]
logging: {{ format: json, filter: warn }}
"#
    );
    rules + &streams
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The directory of this executable: the server binaries are built beside it.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no exe dir")?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// The repository root, for the Node peer's sources.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

impl Server {
    /// Starts `kind`; with `redis`, Palisade uses the Redis bus and cluster state under its prefix
    /// (the peers have no such mode and ignore it).
    pub async fn start(kind: Kind, redis: Option<&Redis>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = match kind {
            Kind::Palisade | Kind::PalisadeOpen => {
                let config = dir.path().join("hardening.yaml");
                std::fs::write(&config, hardening(port, kind == Kind::PalisadeOpen, redis))?;
                let mut c = Command::new(sibling("palisade")?);
                c.arg("serve").arg("--config").arg(&config).env(
                    "DATABASE_URL",
                    format!("sqlite://{}/bench.db", dir.path().display()),
                );
                c.env_remove("REDIS_URL");
                if let Some(redis) = redis {
                    c.env("REDIS_URL", &redis.url);
                }
                c
            }
            Kind::Bare => {
                let mut c = Command::new(sibling("palisade-bare")?);
                c.arg(format!("127.0.0.1:{port}"));
                c
            }
            Kind::Node => {
                let peer = repo_root().join("bench/peers/node");
                if !peer.join("node_modules").exists() {
                    bail!(
                        "the Node peer is not installed: run `npm ci` in {}",
                        peer.display()
                    );
                }
                let mut c = Command::new("node");
                c.arg(peer.join("server.mjs")).arg(port.to_string());
                c
            }
        };
        command
            .current_dir(dir.path())
            .env("PALISADE_JWT_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {kind:?}"))?;
        let server = Self {
            kind,
            url: format!("ws://127.0.0.1:{port}/graphql"),
            child,
            _dir: dir,
        };
        server.wait_listening(port).await?;
        Ok(server)
    }

    async fn wait_listening(&self, port: u16) -> anyhow::Result<()> {
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{:?} did not listen on {port} within 30 s", self.kind)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_default()
    }

    /// CPU time (user + system) used so far.
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }
}
