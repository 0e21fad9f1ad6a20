//! One running operation: executes it and forwards each result to the connection's outbox.

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::{Request, Value};
use futures_util::StreamExt;

use super::outbox::Outbox;
use super::protocol;
use crate::graphql::AppSchema;

/// Runs until the operation's results are exhausted, the outbox refuses (the connection is
/// closing), or the connection aborts the task (client `complete`, disconnect). Returns its id and
/// generation so the connection frees the right slot.
pub async fn run(
    schema: AppSchema,
    request: Request,
    protocol: Protocols,
    id: String,
    generation: u64,
    outbox: Outbox,
) -> (String, u64) {
    let mut responses = schema.execute_stream(request);
    let mut first = true;
    while let Some(response) = responses.next().await {
        // A first result with errors and no data means the operation never ran (parse,
        // validation or limit errors): the protocol reports that as `error`, with no `complete`.
        if first && response.data == Value::Null && response.is_err() {
            outbox.text(protocol::error(protocol, &id, &response.errors));
            return (id, generation);
        }
        first = false;
        if !outbox.text(protocol::next(protocol, &id, &response)) {
            return (id, generation);
        }
    }
    outbox.text(protocol::complete(&id));
    (id, generation)
}
