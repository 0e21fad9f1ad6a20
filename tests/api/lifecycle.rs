use palisade::db::Database;

use crate::helpers::{closed_connection_rows, spawn_app};

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_writes_their_rows_and_stops_listening() {
    let mut app = spawn_app().await;
    let mut first = app.ws_acked("alice").await;
    let mut second = app.ws_acked("bob").await;
    let addr = app.addr;
    let url = app.database_url.clone().unwrap();

    app.begin_shutdown();
    assert_eq!(first.closed().await, (1001, "Server shutting down".into()));
    assert_eq!(second.closed().await.0, 1001);
    app.stopped().await.expect("a clean shutdown returns Ok");

    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
    let db = Database::connect(&url).await.unwrap();
    let rows = closed_connection_rows(&db).await;
    assert_eq!(
        rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        [Some(1001), Some(1001)]
    );
}
