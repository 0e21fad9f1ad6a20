//! Counts operations by type and outcome. Over WebSocket the `request` hook never runs, so the type
//! is read when the document is parsed and the outcome after validation (rejections), after
//! execution (queries and mutations), or at start (subscriptions, whose `execute` runs per event).
//!
//! It is the schema's one extension, and runs the per-operation guard from its hooks (inside
//! the counting, so a refusal counts as rejected) unless the server is `--unguarded`: each
//! extension async-graphql runs costs a boxed future per hook and per resolved field.
//!
//! It also serves documents from the parsed-document cache (`graphql::documents`), in both modes,
//! so the guard's cost is measured against a server that parses as little as it does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{Request, Response, ServerError, ServerResult, ValidationResult, Variables};

use super::documents::Documents;
use crate::limits::document::selected_operation;
use crate::limits::guard::{Guard, GuardOperation};
use crate::metrics::Metrics;

pub struct Observe {
    pub documents: Arc<Documents>,
    pub metrics: Arc<Metrics>,
    /// `None` when serving `--unguarded`.
    pub guard: Option<Guard>,
}

impl ExtensionFactory for Observe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ObserveOperation {
            documents: self.documents.clone(),
            cached: AtomicBool::new(false),
            metrics: self.metrics.clone(),
            guard: self.guard.as_ref().map(Guard::operation),
            name: Mutex::default(),
            kind: Mutex::new("unknown"),
        })
    }
}

/// One per operation (async-graphql creates extensions per operation).
struct ObserveOperation {
    documents: Arc<Documents>,
    /// Whether the document came from the cache (so it is not put back).
    cached: AtomicBool,
    metrics: Arc<Metrics>,
    guard: Option<GuardOperation>,
    name: Mutex<Option<String>>,
    kind: Mutex<&'static str>,
}

impl ObserveOperation {
    fn count(&self, outcome: &str) {
        let kind = *self.kind.lock().expect("lock poisoned");
        self.metrics
            .operations_total
            .with_label_values(&[kind, outcome])
            .inc();
    }
}

fn operation_kind(doc: &ExecutableDocument, name: Option<&str>) -> &'static str {
    match selected_operation(doc, name).map(|op| op.ty) {
        Some(OperationType::Query) => "query",
        Some(OperationType::Mutation) => "mutation",
        Some(OperationType::Subscription) => "subscription",
        None => "unknown",
    }
}

#[async_trait::async_trait]
impl Extension for ObserveOperation {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *self.name.lock().expect("lock poisoned") = request.operation_name.clone();
        let mut request = request;
        if let Some(document) = self.documents.get(&request.query) {
            request.set_parsed_query(document);
            self.cached.store(true, Ordering::Relaxed);
        }
        let prepared = match &self.guard {
            Some(guard) => guard.prepare_request(ctx, request, next).await,
            None => next.run(ctx, request).await,
        };
        if prepared.is_err() {
            self.count("rejected");
        }
        prepared
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let parsed = match &self.guard {
            Some(guard) => guard.parse_query(ctx, query, variables, next).await,
            None => next.run(ctx, query, variables).await,
        };
        match &parsed {
            Ok(doc) => {
                // Past the guard's checks of its shape (in guarded mode): worth keeping.
                if !self.cached.load(Ordering::Relaxed) {
                    self.documents.insert(query, doc);
                }
                let name = self.name.lock().expect("lock poisoned").clone();
                *self.kind.lock().expect("lock poisoned") = operation_kind(doc, name.as_deref());
            }
            Err(_) => self.count("rejected"),
        }
        parsed
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let validated = match &self.guard {
            Some(guard) => guard.validation(ctx, next).await,
            None => next.run(ctx).await,
        };
        match &validated {
            Err(_) => self.count("rejected"),
            Ok(_) if *self.kind.lock().expect("lock poisoned") == "subscription" => {
                self.count("ok")
            }
            Ok(_) => {}
        }
        validated
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = match &self.guard {
            Some(guard) => guard.execute(ctx, operation_name, next).await,
            None => next.run(ctx, operation_name).await,
        };
        if *self.kind.lock().expect("lock poisoned") != "subscription" {
            self.count(if response.is_ok() { "ok" } else { "error" });
        }
        response
    }
}
