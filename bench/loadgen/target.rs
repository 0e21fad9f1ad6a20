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
    /// The same binary without its per-operation guard (`serve --unguarded`): the `overhead`
    /// baseline.
    PalisadeOpen,
    /// A bare async-graphql-axum server with the same schema shape and no hardening.
    Bare,
    /// graphql-ws + ws + graphql-js with an in-process PubSub (bench/peers/node).
    Node,
    /// No server at all: one pre-encoded frame per event written to every subscriber's socket by
    /// two threads (`floor.rs`). For the fan-out scenarios, as the least any server can spend.
    Floor,
}

impl Kind {
    /// Palisade, guarded or not: the kinds with a database, metrics and a Redis mode.
    pub fn is_palisade(self) -> bool {
        matches!(self, Kind::Palisade | Kind::PalisadeOpen)
    }
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
    /// Palisade's PostgreSQL database, when it runs on one; dropped after the server.
    database: Option<FreshDatabase>,
    _dir: tempfile::TempDir,
}

/// A database of this run's own on a PostgreSQL server, so every run starts on empty tables.
struct FreshDatabase {
    /// Where it was created from (the server's `postgres` database).
    admin: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    async fn create(admin: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let name = format!("palisade_bench_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        // The name is ours (a prefix and a UUID's hex digits), never input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await?;
        let (base, _) = admin
            .rsplit_once('/')
            .context("the URL names no database")?;
        Ok(Self {
            url: format!("{base}/{name}"),
            admin: admin.to_string(),
            name,
        })
    }

    /// Drops the database on a thread of its own: `Drop` cannot await, and the scenario's runtime
    /// may be busy or ending.
    fn drop_now(&self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("palisade-bench: could not drop the database {}", self.name);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(database) = &self.database {
            let _ = self.child.start_kill();
            database.drop_now();
        }
    }
}

/// Limits high enough that the workload, not a limit, is what is measured; the per-operation
/// guards all still run.
fn hardening(port: u16, redis: Option<&Redis>) -> String {
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
  rate_limit: {{ limit: 1000000, window: 60s }}
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
        Self::start_on(kind, redis, None).await
    }

    /// [`Server::start`], with Palisade on a fresh database created through `postgres`, the URL
    /// of a PostgreSQL server's `postgres` database (unset: a SQLite file, the default).
    pub async fn start_on(
        kind: Kind,
        redis: Option<&Redis>,
        postgres: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let database = match postgres {
            Some(admin) if kind.is_palisade() => Some(FreshDatabase::create(admin).await?),
            _ => None,
        };
        let port = free_port()?;
        let mut command = match kind {
            Kind::Palisade | Kind::PalisadeOpen => {
                let config = dir.path().join("hardening.yaml");
                std::fs::write(&config, hardening(port, redis))?;
                let mut c = Command::new(sibling("palisade")?);
                c.arg("serve").arg("--config").arg(&config);
                if kind == Kind::PalisadeOpen {
                    c.arg("--unguarded");
                }
                let url = database.as_ref().map_or_else(
                    || format!("sqlite://{}/bench.db", dir.path().display()),
                    |d| d.url.clone(),
                );
                c.env("DATABASE_URL", url);
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
            Kind::Floor => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("floor-serve").arg(port.to_string());
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
            database,
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

    /// The sum of Palisade's `/metrics` samples whose name ends with one of `suffixes`, from one
    /// scrape (0 for the peers, which have no metrics).
    pub async fn metric_sum(&self, suffixes: &[&str]) -> f64 {
        if !self.kind.is_palisade() {
            return 0.0;
        }
        let address = self
            .url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let scrape = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut socket = tokio::net::TcpStream::connect(&address).await?;
            socket
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
                .await?;
            let mut body = String::new();
            socket.read_to_string(&mut body).await?;
            anyhow::Ok(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(5), scrape)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(' '))
            .filter(|(name, _)| {
                let name = name.split('{').next().unwrap_or_default();
                suffixes.iter().any(|suffix| name.ends_with(suffix))
            })
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum()
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
