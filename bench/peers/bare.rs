//! `palisade-bare`: the floor Palisade adds cost to. A stock async-graphql-axum server with the
//! workload's schema shape (`events(topic)`, `publish`, `serverInfo`), a JWT check at
//! `connection_init`, an in-process broadcast per topic, and no hardening at all.
//!
//! Usage: `palisade-bare 127.0.0.1:PORT`, with `PALISADE_JWT_SECRET` set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::{Context, Data, ID, Json, Object, Schema, SimpleObject, Subscription};
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use futures_util::Stream;
use tokio::sync::broadcast;

/// Events a slow subscriber may lag behind before it misses some (the stock pattern).
const TOPIC_BUFFER: usize = 1024;

#[derive(Clone, SimpleObject)]
struct Event {
    id: ID,
    topic: String,
    r#type: String,
    payload: Json<serde_json::Value>,
}

#[derive(Default)]
struct Topics {
    senders: Mutex<HashMap<String, broadcast::Sender<Event>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Topics {
    fn sender(&self, topic: &str) -> broadcast::Sender<Event> {
        let mut senders = self.senders.lock().expect("lock poisoned");
        senders
            .entry(topic.to_string())
            .or_insert_with(|| broadcast::channel(TOPIC_BUFFER).0)
            .clone()
    }
}

/// The same shape as Palisade's, so the `overhead` scenario sends all servers one query.
#[derive(SimpleObject)]
struct ServerInfo {
    version: String,
    instance_id: String,
    uptime_seconds: u64,
}

struct Query;

#[Object]
impl Query {
    async fn server_info(&self, ctx: &Context<'_>) -> ServerInfo {
        ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            instance_id: "palisade-bare".to_string(),
            uptime_seconds: ctx
                .data_unchecked::<std::time::Instant>()
                .elapsed()
                .as_secs(),
        }
    }
}

struct Mutation;

#[Object]
impl Mutation {
    async fn publish(
        &self,
        ctx: &Context<'_>,
        topic: String,
        r#type: String,
        payload: Option<Json<serde_json::Value>>,
    ) -> Event {
        let topics = ctx.data_unchecked::<Arc<Topics>>();
        let n = topics
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = Event {
            id: ID(format!("{n}-0")),
            topic: topic.clone(),
            r#type,
            payload: payload.unwrap_or(Json(serde_json::Value::Null)),
        };
        // No subscriber is fine.
        let _ = topics.sender(&topic).send(event.clone());
        event
    }
}

struct Subscriptions;

#[Subscription]
impl Subscriptions {
    async fn events(
        &self,
        ctx: &Context<'_>,
        topic: String,
        _after: Option<ID>,
    ) -> impl Stream<Item = Event> + use<> {
        let receiver = ctx
            .data_unchecked::<Arc<Topics>>()
            .sender(&topic)
            .subscribe();
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => return Some((event, receiver)),
                    // A lagging subscriber skips what it missed, as stock servers do.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

type BareSchema = Schema<Query, Mutation, Subscriptions>;

fn verify(secret: &[u8], bearer: Option<&str>) -> async_graphql::Result<()> {
    let token = bearer
        .and_then(|b| b.strip_prefix("Bearer "))
        .ok_or("no token")?;
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .map_err(|_| "bad token")?;
    Ok(())
}

async fn websocket(
    State((schema, secret)): State<(BareSchema, Arc<Vec<u8>>)>,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    verify(&secret, payload["authorization"].as_str())?;
                    Ok(Data::default())
                })
                .serve()
        })
}

async fn http(
    State((schema, _)): State<(BareSchema, Arc<Vec<u8>>)>,
    request: GraphQLRequest,
) -> GraphQLResponse {
    schema.execute(request.into_inner()).await.into()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let secret = std::env::var("PALISADE_JWT_SECRET")?;
    let schema = Schema::build(Query, Mutation, Subscriptions)
        .data(Arc::new(Topics::default()))
        .data(std::time::Instant::now())
        .finish();
    let app = axum::Router::new()
        .route("/graphql", get(websocket).post(http))
        .with_state((schema, Arc::new(secret.into_bytes())));
    // TCP_NODELAY, as Palisade and the Node peer (`ws` sets it) do: without it a query's
    // `complete` waits 40 ms for the client's delayed ACK, and the floor would measure that.
    let listener = tokio::net::TcpListener::bind(&listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
