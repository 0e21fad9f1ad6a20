use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use palisade::config::Tls;
use serde_json::json;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::spawn_app_with;

fn fixture(name: &str) -> std::path::PathBuf {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR")).into()
}

fn client_config() -> Arc<ClientConfig> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    let ca =
        tokio_rustls::rustls::pki_types::CertificateDer::from_pem_file(fixture("ca.pem")).unwrap();
    roots.add(ca).unwrap();
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test]
async fn a_wss_client_connects_with_the_configured_certificate() {
    let app = spawn_app_with(|c| {
        c.server.tls = Some(Tls {
            cert: fixture("cert.pem"),
            key: fixture("key.pem"),
        })
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let tls = TlsConnector::from(client_config())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds with the test CA");
    let mut request = format!("wss://localhost:{}/graphql", app.addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": { "token": app.token("alice") } });
    ws.send(Message::text(init.to_string())).await.unwrap();
    let ack = ws.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"));

    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).unwrap()).unwrap(),
        )
        .resolve("localhost", app.addr)
        .build()
        .unwrap();
    let health = https
        .get(format!("https://localhost:{}/healthz", app.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Plain HTTP to the TLS port gets nowhere.
    assert!(reqwest::get(app.url("/healthz")).await.is_err());
}
