//! The per-operation guard: an async-graphql extension that runs before execution. It counts each
//! operation a WebSocket connection starts against the connection's budget, in the order the
//! messages arrived (the ticket the connection loop put in the request data), warning, refusing
//! and closing per `operations.rate_limit`; it counts every root field the operation runs against
//! `operations.per_operation`; and it puts the standing on every result as `extensions.rateLimit`.
//!
//! Over WebSocket the `request` hook never runs, so the work sits in `prepare_request` (the
//! operation's name), `parse_query` (the budget: a document is needed to tell exempt operations)
//! and `execute` (the extension on the result).
//!
//! It is not an async-graphql extension of its own but is run by the one the schema has
//! (`graphql::observe`), whose hooks call these methods: async-graphql calls every extension's
//! hooks, and its `resolve` hook for every field, through a boxed future each, and a second
//! extension cost about 0.8 µs per operation (`cargo bench --bench operations`).

use std::sync::{Arc, LazyLock, Mutex};

use async_graphql::extensions::{
    ExtensionContext, NextExecute, NextParseQuery, NextPrepareRequest, NextValidation,
};
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{
    ErrorExtensionValues, Name, Request, Response, ServerError, ServerResult, ValidationResult,
    Value, Variables,
};
use serde_json::json;

use super::budget::{Standing, Ticket, Verdict, Warning};
use super::document::{Violation, check_document, check_variables, scan_query, selected_operation};
use super::exempt::{exempt, introspection_only, root_fields};
use super::per_operation::OperationLimits;
use crate::audit::{Audit, Entry, Severity};
use crate::config::{LiveConfig, OnExceed, Payload};
use crate::graphql::Caller;
use crate::metrics::Metrics;
use crate::transport::control::Control;
use crate::transport::protocol::{Close, code};

pub struct Guard {
    /// Read at each operation, so a reload applies to live connections.
    pub live: LiveConfig,
    pub metrics: Arc<Metrics>,
    pub audit: Audit,
    pub operations: Arc<OperationLimits>,
}

impl Guard {
    /// The guard of one operation.
    pub fn operation(&self) -> GuardOperation {
        GuardOperation {
            live: self.live.clone(),
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            operations: self.operations.clone(),
            name: Mutex::default(),
            introspection_only: Mutex::default(),
            refused: Mutex::default(),
            standing: Mutex::default(),
        }
    }
}

/// One per operation, as async-graphql creates extensions.
pub struct GuardOperation {
    live: LiveConfig,
    metrics: Arc<Metrics>,
    audit: Audit,
    operations: Arc<OperationLimits>,
    name: Mutex<Option<String>>,
    /// Whether every root field the operation runs is introspection, for the depth allowance.
    introspection_only: Mutex<bool>,
    /// A shape limit the document broke, found in `prepare_request`.
    refused: Mutex<Option<Violation>>,
    /// The standing after this operation was counted; put on its result, not on the events of a
    /// subscription (they are server pushes and never count).
    standing: Mutex<Option<Standing>>,
}

/// A refusal with a machine-readable code and the numbers behind it.
pub fn refusal(message: impl Into<String>, code: &str, details: &[(&str, u64)]) -> ServerError {
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code);
    for (key, value) in details {
        extensions.set(*key, *value);
    }
    let mut error = ServerError::new(message, None);
    error.extensions = Some(extensions);
    error
}

/// The keys of `extensions.rateLimit`.
static STANDING_NAMES: LazyLock<[Name; 4]> =
    LazyLock::new(|| ["current", "limit", "windowSeconds", "retryAfterSeconds"].map(Name::new));

/// How deep an introspection-only operation may go while introspection is on: the standard
/// introspection query of GraphiQL and code generators nests `ofType` to depth 13. Introspection
/// is bounded by the schema's own shape, and production configs turn it off.
const INTROSPECTION_DEPTH: u64 = 15;

impl GuardOperation {
    fn depth_limit(&self, payload: &Payload) -> u64 {
        let introspection =
            payload.introspection && *self.introspection_only.lock().expect("lock poisoned");
        let limit = u64::from(payload.max_depth);
        if introspection {
            limit.max(INTROSPECTION_DEPTH)
        } else {
            limit
        }
    }

    /// A payload refusal: counted by limit, and answered with the limit and the measured value.
    fn reject(&self, violation: Violation) -> ServerError {
        self.metrics
            .payload_rejections
            .with_label_values(&[violation.code])
            .inc();
        refusal(
            violation.message,
            violation.code,
            &[("limit", violation.limit), ("measured", violation.measured)],
        )
    }

    /// Counts the operation against its connection's budget in arrival order (its ticket's turn);
    /// `Err` refuses it. HTTP requests carry no ticket and have no connection budget.
    async fn count(&self, ticket: Option<&Ticket>, caller: &Caller) -> ServerResult<()> {
        let (Some(ticket), Some(handle)) = (ticket, &caller.connection) else {
            return Ok(());
        };
        let budget = ticket.budget();
        let user = caller.identity.as_ref().map(|i| i.user_id.clone());
        let record = |action: &'static str, standing: &Standing| {
            self.audit.record(Entry {
                action,
                severity: Severity::Warn,
                user_id: user.clone(),
                connection_id: Some(handle.id.clone()),
                ip: caller.ip.clone(),
                metadata: json!({ "count": standing.current, "limit": standing.limit }),
            });
        };
        match ticket.count().await {
            Verdict::Pass(standing) => {
                *self.standing.lock().expect("lock poisoned") = Some(standing);
                Ok(())
            }
            Verdict::Warn(standing) => {
                *self.standing.lock().expect("lock poisoned") = Some(standing);
                tracing::warn!(connection_id = %handle.id, user_id = ?user, count = standing.current, limit = standing.limit, "operation budget nearly used");
                record("rate_limit.warning", &standing);
                self.metrics.rate_limit_warnings.inc();
                let message = format!(
                    "{} of {} operations used in this {}s window",
                    standing.current, standing.limit, standing.window_seconds
                );
                budget.warn(Warning {
                    standing,
                    message,
                    last: false,
                });
                Ok(())
            }
            Verdict::Refuse(standing, on_exceed) => {
                tracing::warn!(connection_id = %handle.id, user_id = ?user, count = standing.current, limit = standing.limit, "operation budget exceeded");
                record("rate_limit.exceeded", &standing);
                self.metrics.rate_limit_violations.inc();
                // Operations that arrive before the close are refused too, without another
                // final warning.
                if on_exceed == OnExceed::Disconnect && budget.close_once() {
                    let message = "Operation budget exceeded: closing the connection; reconnect to get a fresh budget".to_string();
                    budget.warn(Warning {
                        standing,
                        message,
                        last: true,
                    });
                    handle.send(Control::CloseSoon(Close::new(
                        code::RATE_LIMITED,
                        "Rate limit exceeded",
                    )));
                }
                let message = format!(
                    "Too many operations: the limit is {} per {}s",
                    standing.limit, standing.window_seconds
                );
                Err(refusal(
                    message,
                    "RATE_LIMITED",
                    &[
                        ("limit", u64::from(standing.limit)),
                        ("windowSeconds", standing.window_seconds),
                        ("retryAfterSeconds", standing.retry_after_seconds),
                    ],
                ))
            }
        }
    }
}

/// The extension hooks, called by the schema's extension at the same points with its `next`.
impl GuardOperation {
    pub async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let name = request.operation_name.clone();
        *self.name.lock().expect("lock poisoned") = name.clone();
        let config = self.live.load();
        check_variables(&request.variables, &config.payload).map_err(|v| self.reject(v))?;
        // Size, tokens and nesting are judged before the parser sees the text: its recursion is
        // what hostile nesting would exhaust. Then the document's shape, on the one parse
        // async-graphql will reuse (the request caches it): async-graphql's own parse step expands
        // fragment spreads while checking recursion, which a fan-out of fragments turns into
        // exponential work before any later hook could refuse it. A text that does not parse is
        // left to async-graphql, which reports the syntax error. A refusal is counted and
        // answered in `parse_query`, where the caller is known.
        let mut request = request;
        let shape = scan_query(&request.query, &config.payload).and_then(|()| {
            match request.parsed_query() {
                Ok(doc) => check_document(doc, name.as_deref(), &config.payload),
                Err(_) => Ok(()),
            }
        });
        *self.refused.lock().expect("lock poisoned") = shape.err();
        next.run(ctx, request).await
    }

    pub async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let caller = ctx.data_opt::<Caller>();
        let ticket = ctx.data_opt::<Ticket>();
        let name = self.name.lock().expect("lock poisoned").clone();
        let config = self.live.load();
        let refused = self.refused.lock().expect("lock poisoned").take();
        if let Some(violation) = refused {
            // A hostile document still cost the server: it counts against the budget.
            if let Some(caller) = caller {
                self.count(ticket, caller).await?;
            }
            return Err(self.reject(violation));
        }
        let parsed = next.run(ctx, query, variables).await;
        let Some(caller) = caller else { return parsed };
        let doc = match parsed {
            Ok(doc) => doc,
            Err(error) => {
                // A document that does not even parse still cost the server: it counts.
                self.count(ticket, caller).await?;
                return Err(error);
            }
        };
        let operation = selected_operation(&doc, name.as_deref());
        let registry = &ctx.schema_env.registry;
        let fields = operation
            .and_then(|op| {
                let root_type = match op.ty {
                    OperationType::Query => Some(registry.query_type.as_str()),
                    OperationType::Mutation => registry.mutation_type.as_deref(),
                    OperationType::Subscription => registry.subscription_type.as_deref(),
                }?;
                let interfaces = registry.implements.get(root_type);
                let implements = |i: &str| interfaces.is_some_and(|set| set.contains(i));
                Some(root_fields(&doc, op, variables, root_type, implements))
            })
            .unwrap_or_default();
        if exempt(&config, &fields) {
            if let Some(ticket) = ticket {
                ticket.release();
            }
        } else {
            self.count(ticket, caller).await?;
        }
        for field in &fields {
            if let Err(refused) = self
                .operations
                .check(field.name.node.as_str(), caller)
                .await
            {
                self.metrics.rate_limit_violations.inc();
                return Err(refused);
            }
        }
        *self.introspection_only.lock().expect("lock poisoned") = introspection_only(&fields);
        if operation.is_some_and(|op| op.ty == OperationType::Subscription) {
            // Its results are events the server pushes; they carry no standing.
            self.standing.lock().expect("lock poisoned").take();
        }
        drop(fields);
        Ok(doc)
    }

    pub async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        // async-graphql measures depth and complexity while validating; they are judged here so
        // the refusal names the limit and the measured value.
        let result = next.run(ctx).await?;
        let config = self.live.load();
        let payload = &config.payload;
        let judged = [
            (
                "MAX_DEPTH_LIMIT",
                "deep",
                result.depth as u64,
                self.depth_limit(payload),
            ),
            (
                "MAX_COMPLEXITY_LIMIT",
                "complex",
                result.complexity as u64,
                u64::from(payload.max_complexity),
            ),
        ];
        for (code, what, measured, limit) in judged {
            if measured > limit {
                let message = format!("Query is too {what}: {measured}; the limit is {limit}");
                return Err(vec![self.reject(Violation {
                    code,
                    limit,
                    measured,
                    message,
                })]);
            }
        }
        Ok(result)
    }

    pub async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        if let Some(s) = *self.standing.lock().expect("lock poisoned") {
            // Built as a GraphQL value directly (going through JSON cost a parse per operation),
            // with names made once: each `Name` is an allocation.
            let [current, limit, window, retry] = &*STANDING_NAMES;
            let standing: IndexMap<Name, Value> = [
                (current.clone(), Value::from(s.current)),
                (limit.clone(), s.limit.into()),
                (window.clone(), s.window_seconds.into()),
                (retry.clone(), s.retry_after_seconds.into()),
            ]
            .into_iter()
            .collect();
            response
                .extensions
                .insert("rateLimit".into(), Value::Object(standing));
        }
        response
    }
}
