//! What a raw client message must pass before it is deserialized: a message type of the
//! negotiated subprotocol, and nesting the JSON parser can read.

use async_graphql::{ErrorExtensionValues, ServerError};

use super::connection::Connection;
use super::frame::{self, ENVELOPE, Envelope, PARSER_NESTING};
use super::operations::Operations;
use super::protocol::{self, Close, code};

impl Connection {
    /// True when `raw` may go on to be deserialized. Otherwise it has been answered: a too-deep
    /// `subscribe` gets an `error` on its id, anything else closes the connection.
    pub(super) fn screen(&mut self, raw: &[u8], operations: &Operations) -> bool {
        let envelope = frame::scan(raw);
        // Past the parser's own limit nothing could be read, so a configured limit above it is
        // held at what the parser allows.
        let configured = self.state.live.load().payload.max_input_nesting as usize;
        let limit = configured.min(PARSER_NESTING - ENVELOPE);
        if envelope.input_nesting() > limit {
            self.too_deep(envelope, limit, operations);
            return false;
        }
        match envelope.kind.as_deref() {
            Some(kind) if !protocol::accepts(self.protocol, kind) => {
                let reason = format!(
                    "Message type not part of {}",
                    self.protocol.sec_websocket_protocol()
                );
                self.outbox.close(Close::new(code::BAD_REQUEST, reason));
                false
            }
            // A missing or malformed type is left to the parser, which refuses it.
            _ => true,
        }
    }

    /// Answers a message nested past `limit` without parsing it: one operation refused as HTTP
    /// refuses it, when it is a `subscribe` whose id the scan found; otherwise a protocol error.
    fn too_deep(&mut self, envelope: Envelope, limit: usize, operations: &Operations) {
        let measured = envelope.input_nesting();
        let starts = envelope.kind.as_deref() == Some(protocol::subscribe_type(self.protocol));
        let Some(id) = envelope.id.filter(|_| starts) else {
            return self
                .outbox
                .close(Close::new(code::BAD_REQUEST, "Message nested too deep"));
        };
        // The same order of checks as a `subscribe` that parsed.
        if self.identity.is_none() {
            return self
                .outbox
                .close(Close::new(code::UNAUTHORIZED, "Unauthorized"));
        }
        if operations.is_running(&id) {
            return self.outbox.close(Close::new(
                code::DUPLICATE_ID,
                format!("Subscriber for {id} already exists"),
            ));
        }
        let violation = "MAX_INPUT_NESTING_LIMIT";
        let mut extensions = ErrorExtensionValues::default();
        extensions.set("code", violation);
        extensions.set("limit", limit as u64);
        extensions.set("measured", measured as u64);
        let mut error = ServerError::new(
            format!("The message nests lists and objects {measured} deep; the limit is {limit}"),
            None,
        );
        error.extensions = Some(extensions);
        let metrics = &self.state.metrics;
        metrics
            .payload_rejections
            .with_label_values(&[violation])
            .inc();
        metrics
            .operations_total
            .with_label_values(&["unknown", "rejected"])
            .inc();
        self.outbox
            .text(protocol::error(self.protocol, &id, &[error]));
    }
}
