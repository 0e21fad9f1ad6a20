//! The WebSocket transport: queued bytes, pings, close reasons, message types, nesting.
