//! Orders between instances on the internal bus topic `$control`: close a connection another
//! instance's admission replaced, and revoke a user's or session's connections. Each instance
//! carries out its own orders directly and ignores them on the bus, so nothing is closed twice.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Registry;
use crate::bus::{Delivery, Event, EventId};

const TOPIC: &str = "$control";

/// The event kind of every order; the payload says which.
const KIND: &str = "registry";

/// Publishing an order gives up after this: a revocation answers its caller, and an admission
/// that replaced a connection elsewhere acknowledges its client, only once the order is out.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long startup waits for the subscription to `$control`.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// Resubscribing after a bus failure backs off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Order {
    /// `close_oldest` elsewhere evicted `user`'s connection `connection`, held by `instance`.
    Replace {
        from: String,
        instance: String,
        user: String,
        connection: String,
    },
    /// `POST /admin/revoke` on instance `from`; `session` is the session id's digest.
    Revoke {
        from: String,
        user: Option<String>,
        session: Option<String>,
    },
}

impl Order {
    fn from(&self) -> &str {
        match self {
            Order::Replace { from, .. } | Order::Revoke { from, .. } => from,
        }
    }
}

impl Registry {
    /// Publishes `order` for the other instances; false (counted and logged) when the bus failed.
    pub(super) async fn publish(&self, order: &Order) -> bool {
        let payload = serde_json::to_value(order).expect("orders serialize");
        let publish = self.bus.publish(TOPIC.into(), KIND.into(), payload);
        let published = tokio::time::timeout(PUBLISH_TIMEOUT, publish)
            .await
            .context("the bus did not take the order in time")
            .and_then(|result| result.context("publishing on the bus"));
        match published {
            Ok(_) => true,
            Err(error) => {
                self.errors.inc();
                tracing::warn!(
                    error = format!("{error:#}"),
                    ?order,
                    "could not publish a registry order"
                );
                false
            }
        }
    }

    fn obey(&self, event: &Event) {
        let order = match serde_json::from_value::<Order>(event.payload.clone()) {
            Ok(order) if order.from() != self.instance => order,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, id = %event.id, "ignoring a malformed registry order");
                return;
            }
        };
        match order {
            Order::Replace {
                instance,
                user,
                connection,
                ..
            } if instance == self.instance => self.lock().replace(&user, &connection),
            Order::Replace { .. } => {}
            Order::Revoke { user, session, .. } => {
                self.lock().revoke(user.as_deref(), session.as_deref());
            }
        }
    }

    /// Subscribes to `$control` before the server starts serving, so that a connection admitted
    /// here cannot miss an order published after its admission. Gives up after `FOLLOW_WAIT`
    /// (Redis unreachable at startup must not hold the server back): the listener then keeps
    /// trying on its own.
    pub async fn follow_orders(&self) {
        let subscribe = self.bus.subscribe(TOPIC.into(), None);
        match tokio::time::timeout(FOLLOW_WAIT, subscribe).await {
            Ok(Ok(deliveries)) => {
                *self.orders.lock().expect("orders lock poisoned") = Some(deliveries)
            }
            Ok(Err(error)) => tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(error)),
                "could not follow {TOPIC} yet"
            ),
            Err(_) => {
                tracing::warn!("could not follow {TOPIC} yet: the bus did not answer in time")
            }
        }
    }
}

/// Follows `$control` until shutdown, carrying out the orders meant for this instance. A broken
/// subscription is resumed after the last order seen, so a bus that keeps history loses none.
pub(super) async fn listen(registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut after: Option<EventId> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let early = registry.orders.lock().expect("orders lock poisoned").take();
        let subscribed = match early {
            Some(deliveries) => Some(Ok(deliveries)),
            None => {
                shutdown
                    .run_until_cancelled(registry.bus.subscribe(TOPIC.into(), after))
                    .await
            }
        };
        let mut deliveries = match subscribed {
            None => return,
            Some(Ok(deliveries)) => deliveries,
            Some(Err(error)) => {
                registry.errors.inc();
                let error = anyhow::Error::from(error);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not follow {TOPIC}; retrying"
                );
                // Waits out the backoff unless shutdown comes first.
                if shutdown
                    .run_until_cancelled(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Each delivery until shutdown (None) or the end of the subscription (Some(None)).
        while let Some(Some(delivery)) = shutdown.run_until_cancelled(deliveries.next()).await {
            match delivery {
                Delivery::Event(event) => {
                    after = Some(event.id);
                    registry.obey(&event);
                }
                Delivery::Gap { .. } => {
                    registry.errors.inc();
                    tracing::warn!(
                        "registry orders were lost on {TOPIC}; some replaced or revoked connections may stay open"
                    );
                }
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        tracing::warn!("the {TOPIC} subscription ended; resubscribing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_are_small_tagged_json_objects() {
        let order = Order::Revoke {
            from: "a1".into(),
            user: Some("alice".into()),
            session: None,
        };
        let payload = serde_json::to_value(&order).unwrap();
        assert_eq!(
            payload,
            json!({ "op": "revoke", "from": "a1", "user": "alice", "session": null })
        );
        assert_eq!(serde_json::from_value::<Order>(payload).unwrap(), order);
    }
}
