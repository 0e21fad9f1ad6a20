//! Native TLS for the public listener (`server.tls`): rustls through axum-server, with ring as
//! the crypto provider, which the rest of the dependency tree already uses.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Tls;

/// Loads the certificate and key of `server.tls`, with ring as rustls' crypto provider (the one
/// the rest of the dependency tree already uses).
pub async fn load(tls: Option<&Tls>) -> anyhow::Result<Option<RustlsConfig>> {
    let Some(tls) = tls else { return Ok(None) };
    // Fails only if a provider is already installed, which is then the one in use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .with_context(|| {
            format!(
                "loading server.tls ({} and {})",
                tls.cert.display(),
                tls.key.display()
            )
        })?;
    Ok(Some(config))
}

/// Serves `router` over TLS on `listener`; a cancelled `shutdown` drains it within `grace`.
pub fn serve(
    listener: TcpListener,
    router: Router,
    tls: RustlsConfig,
    shutdown: CancellationToken,
    grace: std::time::Duration,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let handle = axum_server::Handle::new();
    // axum-server drains through its handle, so the shutdown token is bridged to it.
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(grace));
        }
    });
    let server = axum_server::from_tcp_rustls(
        listener.into_std().context("taking over the listener")?,
        tls,
    )
    .context("starting TLS")?
    // As on the plain listener: no Nagle delay between a `next` and its `complete`.
    .map(|rustls| rustls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
    .handle(handle);
    Ok(tokio::spawn(server.serve(
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )))
}
