//! Builds the application from settings, binds its listeners (port 0 in tests), and runs it until a
//! shutdown signal, closing WebSockets with 1001 and writing their log rows before returning.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use axum::serve::ListenerExt;
use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::auth::secret::HmacSecret;
use crate::auth::{Authenticator, SessionStore, Verifier};
use crate::bus::Bus;
use crate::client_ip::ClientIp;
use crate::config::{Config, LiveConfig};
use crate::connlog::ConnectionLog;
use crate::db::Database;
use crate::graphql::{self, AppSchema, Instance, Services};
use crate::limits::http::HttpLimiter;
use crate::limits::per_operation::OperationLimits;
use crate::metrics::Metrics;
use crate::presence::{self, Presence};
use crate::publish::PublishKey;
use crate::readiness::Readiness;
use crate::registry::Registry;
use crate::{bus, reload, retention, routes, tls};

/// Everything the server needs to start, resolved from the CLI, the environment and the file.
pub struct Settings {
    pub config: Config,
    /// Where the configuration came from (`None`: built-in defaults).
    pub config_path: Option<PathBuf>,
    pub database: DatabaseSource,
    pub redis_url: Option<String>,
    pub jwt_secret: HmacSecret,
    /// Express cookie secrets, newest first; empty turns cookie authentication off.
    pub session_secrets: Vec<String>,
    /// The API key of `POST /api/publish`; `None` turns that endpoint off.
    pub publish_key: Option<Arc<PublishKey>>,
    /// Leaves the per-operation guard out of the schema (`serve --unguarded`, for the overhead
    /// benchmark).
    pub unguarded: bool,
}

pub enum DatabaseSource {
    Url(String),
    /// A pool made by the caller (tests use a fresh `#[sqlx::test]` database).
    Ready(Database),
}

/// Shared by every handler and connection: a pointer to one [`State`], so a connection's clones
/// cost 8 bytes each instead of the ~380 bytes of the fields.
#[derive(Clone)]
pub struct AppState(Arc<State>);

impl std::ops::Deref for AppState {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

pub struct State {
    pub config: Arc<Config>,
    pub schema: AppSchema,
    pub db: Database,
    pub audit: Audit,
    pub connection_log: ConnectionLog,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// The certificate in use when `server.tls` is set; SIGHUP reloads it.
    pub tls: Option<RustlsConfig>,
    /// The configuration as reloads change it; budgets and payload limits follow it.
    pub live: LiveConfig,
    /// The client address behind `server.trusted_proxies`.
    pub client_ip: ClientIp,
    /// Budgets of single operations per user (`operations.per_operation`).
    pub operations: Arc<OperationLimits>,
    /// Who is connected: per-IP and per-user limits, and revocation.
    pub registry: Arc<Registry>,
    pub instance: Arc<Instance>,
    pub redis: Option<redis::Client>,
    /// Where events are published; `POST /api/publish` uses it directly.
    pub bus: Arc<dyn Bus>,
    pub publish_key: Option<Arc<PublishKey>>,
    /// Development sign-in (`auth.dev_login`); `None` when it is off.
    pub dev_login: Option<Arc<crate::devlogin::DevLogin>>,
    /// Who is online on which topic.
    pub presence: Arc<Presence>,
    /// The last readiness check, which `/readyz` serves.
    pub readiness: Arc<Readiness>,
    /// Cancelled when the server starts shutting down; every connection watches it.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket connections, which outlive the HTTP request that upgraded them.
    pub tracker: TaskTracker,
}

pub struct Application {
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    state: AppState,
    /// The file reloads read, as it was when loaded; `None` when running on built-in defaults.
    config_file: Option<(PathBuf, reload::Baseline)>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let config_file = settings.config_path.map(|path| {
            let loaded = reload::Baseline::read(&path);
            (path, loaded)
        });
        let config = Arc::new(settings.config);
        let instance = Arc::new(Instance {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            started: Instant::now(),
        });
        let metrics = Arc::new(Metrics::new(&instance.id));
        let db = match settings.database {
            DatabaseSource::Url(url) => Database::connect(&url).await?,
            DatabaseSource::Ready(db) => db,
        };
        let redis = settings
            .redis_url
            .as_deref()
            .map(redis::Client::open)
            .transpose()
            .context("parsing REDIS_URL")?;
        let verifier = Verifier::new(&config.auth.jwt, &settings.jwt_secret)?;
        // Made before the bus: with Redis, the bus's readers start now (the schema needs the bus)
        // and stop when the server shuts down.
        let shutdown = CancellationToken::new();
        let bus = bus::build(&config, redis.as_ref(), &instance.id, &metrics, &shutdown)
            .context("setting up the event bus")?;
        let tracker = TaskTracker::new();
        let registry = Registry::new(
            &config,
            redis.as_ref(),
            bus.clone(),
            &instance.id,
            &metrics,
            tracker.clone(),
        )
        .context("setting up the connection registry")?;
        registry.follow_orders().await;
        let audit = Audit::start(db.clone(), metrics.clone());
        let connection_log =
            ConnectionLog::start(db.clone(), metrics.connection_log_dropped.clone());
        let sessions = (!settings.session_secrets.is_empty()).then(|| {
            SessionStore::with_secrets(&config.auth.session, db.clone(), &settings.session_secrets)
        });
        let auth = Arc::new(Authenticator::new(verifier, &config.auth, sessions));
        let operations = Arc::new(
            OperationLimits::new(
                &config.operations,
                redis
                    .as_ref()
                    .map(|c| (c, config.streams.key_prefix.as_str())),
            )
            .context("setting up per-operation limits")?,
        );
        let live: LiveConfig = Arc::new(ArcSwap::new(config.clone()));
        let presence = Presence::start(presence::Setup {
            redis: redis.as_ref(),
            streams: &config.streams,
            instance: instance.id.clone(),
            bus: bus.clone(),
            db: db.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        })
        .context("setting up presence")?;
        let schema = graphql::build(Services {
            live: live.clone(),
            operations: operations.clone(),
            config: config.clone(),
            auth: auth.clone(),
            bus: bus.clone(),
            db: db.clone(),
            audit: audit.clone(),
            instance: instance.clone(),
            metrics: metrics.clone(),
            presence: presence.clone(),
            unguarded: settings.unguarded,
        });
        let dev_login = crate::devlogin::DevLogin::new(
            &config,
            &settings.jwt_secret,
            &settings.session_secrets,
            &db,
        );
        let readiness = Readiness::new(db.clone(), redis.as_ref(), metrics.ready.clone())?;
        let state = AppState(Arc::new(State {
            readiness,
            audit,
            connection_log,
            auth,
            registry,
            operations,
            client_ip: ClientIp::new(
                &config.server.trusted_proxies,
                config.connections.ipv6_prefix,
            ),
            tls: tls::load(config.server.tls.as_ref()).await?,
            live,
            schema,
            db,
            metrics,
            instance,
            redis,
            bus,
            publish_key: settings.publish_key,
            dev_login,
            presence,
            shutdown,
            tracker,
            config: config.clone(),
        }));
        let backlog = config.server.listen_backlog;
        warn_if_capped(backlog);
        let listener = bind(config.server.listen, backlog)
            .with_context(|| format!("binding server.listen {}", config.server.listen))?;
        let admin_listener = match config.server.admin_listen {
            Some(addr) => Some(
                bind(addr, backlog)
                    .with_context(|| format!("binding server.admin_listen {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            admin_listener,
            state,
            config_file,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` resolves, then shuts down gracefully within `server.shutdown_grace`.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            admin_listener,
            state,
            config_file,
        } = self;
        // Background tasks, each ending when shutdown is cancelled: the reload watcher (only with a
        // file to watch), the retention job, the registry's (orders from other instances, lease
        // renewals), and the readiness checks. The watcher tells the retention job of each applied
        // reload, so that it reschedules instead of deleting within the reload.
        let (reloaded, on_reload) = tokio::sync::watch::channel(());
        if let Some((path, loaded)) = config_file {
            let targets = reload::Targets {
                live: state.live.clone(),
                tls: state.tls.clone().zip(state.config.server.tls.clone()),
                metrics: state.metrics.clone(),
                reloaded,
            };
            tokio::spawn(reload::watch(path, loaded, targets, state.shutdown.clone()));
        }
        tokio::spawn(retention::run(
            state.db.clone(),
            state.live.clone(),
            on_reload,
            state.metrics.clone(),
            state.shutdown.clone(),
        ));
        tokio::spawn(state.registry.clone().run(state.shutdown.clone()));
        // The first check is done before serving, so `/readyz` never answers from no check at
        // all; the task then repeats it on its timer until shutdown.
        state.readiness.check().await;
        tokio::spawn(state.readiness.clone().run(state.shutdown.clone()));
        let http_limiter = HttpLimiter::new(&state.config.operations.http, state.client_ip.clone());
        let (main, admin) = routes::routers(&state, &http_limiter, admin_listener.is_some());
        let shutdown = state.shutdown.clone();
        // The signal cancels the token; everything else (listeners, connections) watches the token.
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                signal.await;
                shutdown.cancel();
            }
        });
        let serve = |listener: TcpListener, router: Router| {
            let shutdown = shutdown.clone();
            // Without TCP_NODELAY a second small frame (an operation's `complete` after its
            // `next`, an event right after another) waits for the client's delayed ACK: 40 ms
            // per query in the overhead benchmark.
            let listener = listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
                }
            });
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
            })
        };
        // Rate-limiter state of idle IPs and users, and the audit's failed-attempt counts, is
        // forgotten once a minute, so memory stays bounded however many distinct clients come
        // and go.
        tokio::spawn({
            let (registry, operations, audit, shutdown) = (
                state.registry.clone(),
                state.operations.clone(),
                state.audit.clone(),
                shutdown.clone(),
            );
            async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
                while shutdown.run_until_cancelled(every.tick()).await.is_some() {
                    registry.retain_recent();
                    http_limiter.retain_recent();
                    operations.retain_recent();
                    audit.retain_recent();
                }
            }
        });
        let main_server = match state.tls.clone() {
            Some(certificate) => tls::serve(
                listener,
                main,
                certificate,
                shutdown.clone(),
                state.config.server.shutdown_grace.get(),
            )?,
            None => serve(listener, main),
        };
        let admin_server = admin_listener.map(|listener| {
            serve(
                listener,
                admin.expect("admin router exists with its listener"),
            )
        });
        shutdown.cancelled().await;
        tracing::info!("shutting down: closing WebSockets and finishing requests");
        let grace = state.config.server.shutdown_grace.get();
        let drained = tokio::time::timeout(grace, async {
            let _ = main_server.await;
            if let Some(admin) = admin_server {
                let _ = admin.await;
            }
            state.tracker.close();
            state.tracker.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?grace, "shutdown grace elapsed; dropping what is still running");
        }
        // Connections are closed by now; whatever presence is left (grace elapsed) leaves.
        state.presence.stop().await;
        state.audit.flush().await;
        state.connection_log.flush().await;
        state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds `addr` with a listen queue of `backlog` connections. `TcpListener::bind` always asks for
/// 1024, which a reconnect storm overflows (see `server.listen_backlog`).
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server may bind while its old connections linger
    // in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The kernel cuts a longer queue to `net.core.somaxconn` without an error, so say so where
/// ops will look, rather than let them believe the setting took.
fn warn_if_capped(backlog: u32) {
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    if let Some(cap) = cap.filter(|&cap| backlog > cap) {
        tracing::warn!(
            listen_backlog = backlog,
            somaxconn = cap,
            "server.listen_backlog is above net.core.somaxconn; the kernel uses {cap}"
        );
    }
}
