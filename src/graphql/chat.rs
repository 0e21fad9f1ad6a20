//! Chat: `sendMessage` publishes a message to `conversation:<id>`, `messages` follows one
//! conversation. Both go through the topic rules; inputs are validated before anything is
//! published, and a budget per user applies (`operations.per_operation.sendMessage`).
//!
//! A chat message exists only through `sendMessage`: its event type is one raw publishes may not
//! write (`topics::CHAT_MESSAGE`), and `messages` still checks each event it reads against what
//! `sendMessage` would have written, so nothing else on the topic passes for a message.

use std::sync::Arc;

use async_graphql::{
    Context, ErrorExtensions, ID, InputObject, Object, SimpleObject, Subscription,
};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use validator::{Validate, ValidationError, ValidationErrors};

use super::{Caller, authorize, follow};
use crate::bus::{Bus, Delivery, Event};
use crate::config::LiveConfig;
use crate::error::Error;
use crate::topics::{Action, CHAT_MESSAGE, GAP};

/// Longest message content, in characters.
const MAX_CONTENT_CHARS: u64 = 5000;

#[derive(InputObject, Validate)]
pub struct SendMessageInput {
    conversation_id: Uuid,
    /// 1 to 5000 characters; control characters other than newline and tab are refused.
    #[validate(
        length(min = 1, max = MAX_CONTENT_CHARS, message = "must be 1 to 5000 characters"),
        custom(function = "printable")
    )]
    content: String,
    reply_to_id: Option<Uuid>,
}

fn printable(text: &str) -> Result<(), ValidationError> {
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new("control_characters")
            .with_message("must not contain control characters".into()));
    }
    Ok(())
}

/// Removes anything that looks like an HTML tag. Not a sanitizer: clients still escape output.
fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// `BAD_USER_INPUT` with the messages of each invalid field under `extensions.fields`.
fn bad_input(errors: &ValidationErrors) -> async_graphql::Error {
    let fields: serde_json::Map<String, serde_json::Value> = errors
        .field_errors()
        .into_iter()
        .map(|(field, list)| {
            let messages: Vec<String> = list
                .iter()
                .map(|e| e.message.as_deref().unwrap_or(&e.code).to_string())
                .collect();
            (field.to_string(), json!(messages))
        })
        .collect();
    let mut error = Error::BadUserInput("invalid input".into()).extend();
    if let Ok(fields) = async_graphql::Value::from_json(serde_json::Value::Object(fields)) {
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("fields", fields);
    }
    error
}

/// A chat message, as published in the conversation's topic.
#[derive(SimpleObject, Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Message {
    /// The stream position; pass it as `after` to resume from here.
    #[serde(skip)]
    id: ID,
    conversation_id: Uuid,
    sender_id: String,
    content: String,
    reply_to_id: Option<Uuid>,
    sent_at: DateTime<Utc>,
}

impl Message {
    /// The message `event` holds, when it is one `sendMessage` could have written to
    /// `conversation`: the same conversation, a sender, and content that passes the input rules.
    fn read(event: &Event, conversation: Uuid) -> Option<Self> {
        let message = serde_json::from_value::<Message>(event.payload.clone())
            .ok()
            .filter(|m| {
                let chars = m.content.chars().count() as u64;
                m.conversation_id == conversation
                    && !m.sender_id.is_empty()
                    && (1..=MAX_CONTENT_CHARS).contains(&chars)
                    && printable(&m.content).is_ok()
            });
        match message {
            Some(mut message) => {
                message.id = ID(event.id.to_string());
                Some(message)
            }
            None => {
                tracing::warn!(topic = %event.topic, event_id = %event.id, "dropped an event that is not a valid chat message");
                None
            }
        }
    }
}

fn topic(conversation: Uuid) -> String {
    format!("conversation:{conversation}")
}

#[derive(Default)]
pub struct ChatMutation;

#[Object]
impl ChatMutation {
    /// Sends a message to a conversation; its members receive it on `messages`.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        input: SendMessageInput,
    ) -> async_graphql::Result<Message> {
        input.validate().map_err(|e| bad_input(&e))?;
        let topic = topic(input.conversation_id);
        authorize(ctx, &topic, Action::Publish).await?;
        let sender = ctx
            .data_opt::<Caller>()
            .and_then(|c| c.identity.as_ref())
            .map(|i| i.user_id.clone())
            .ok_or_else(|| Error::Unauthenticated.extend())?;
        let config = ctx.data_unchecked::<LiveConfig>().load();
        let content = if config.payload.content.strip_html {
            strip_tags(&input.content)
        } else {
            input.content
        };
        let mut message = Message {
            id: ID::default(),
            conversation_id: input.conversation_id,
            sender_id: sender,
            content,
            reply_to_id: input.reply_to_id,
            sent_at: Utc::now(),
        };
        let payload =
            serde_json::to_value(&message).map_err(|e| Error::Internal(e.into()).extend())?;
        let bus = ctx.data_unchecked::<Arc<dyn Bus>>();
        let event = bus
            .publish(topic, CHAT_MESSAGE.into(), payload)
            .await
            .map_err(|e| Error::BusUnavailable(e.into()).extend())?;
        message.id = ID(event.id.to_string());
        Ok(message)
    }
}

#[derive(Default)]
pub struct ChatSubscription;

#[Subscription]
impl ChatSubscription {
    /// Messages of a conversation. With `after`, missed messages are replayed first; if more were
    /// missed than can be replayed, a `GAP` error comes first and the client should refetch.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        conversation_id: Uuid,
        after: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Message>> + use<>> {
        let deliveries = follow(ctx, &topic(conversation_id), after).await?;
        Ok(deliveries.filter_map(move |delivery| async move {
            match delivery {
                Delivery::Event(event) if event.kind == CHAT_MESSAGE => {
                    Message::read(&event, conversation_id).map(Ok)
                }
                Delivery::Event(_) => None,
                Delivery::Gap { .. } => Some(Err(async_graphql::Error::new(
                    "messages were missed; refetch the conversation",
                )
                .extend_with(|_, e| e.set("code", GAP)))),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stripped_and_text_is_kept() {
        assert_eq!(
            strip_tags("hi <b>there</b> <script>x()</script>!"),
            "hi there x()!"
        );
        assert_eq!(strip_tags("a < b"), "a ");
    }

    #[test]
    fn newlines_and_tabs_are_printable_but_other_controls_are_not() {
        assert!(printable("line\n\tindented").is_ok());
        assert!(printable("bell\u{7}").is_err());
        assert!(printable("nul\0").is_err());
    }
}
