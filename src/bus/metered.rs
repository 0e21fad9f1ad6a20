//! Counts what is published through any bus, whatever its backend.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::Value;

use super::{Bus, BusError, Delivery, Event, EventId};
use crate::metrics::Metrics;

pub struct Metered<B> {
    inner: B,
    metrics: Arc<Metrics>,
}

impl<B: Bus> Metered<B> {
    pub fn new(inner: B, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<B: Bus> Bus for Metered<B> {
    fn publish(
        &self,
        topic: String,
        kind: String,
        payload: Value,
    ) -> BoxFuture<'_, Result<Arc<Event>, BusError>> {
        Box::pin(async move {
            let published = self.inner.publish(topic, kind, payload).await;
            let result = if published.is_ok() { "ok" } else { "error" };
            self.metrics
                .bus_publishes
                .with_label_values(&[result])
                .inc();
            published
        })
    }

    fn subscribe(
        &self,
        topic: String,
        after: Option<EventId>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, BusError>> {
        self.inner.subscribe(topic, after)
    }
}
