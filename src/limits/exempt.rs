//! Which operations count against a connection's budget, and the root fields other limits key on.

use async_graphql::Value;
use async_graphql::Variables;
use async_graphql::parser::types::{
    ExecutableDocument, OperationDefinition, OperationType, Selection,
};

use super::document::selected_operation;
use crate::config::Config;
use crate::topics;

/// The names of the operation's top-level fields (not their aliases).
pub fn root_fields(operation: &OperationDefinition) -> impl Iterator<Item = &str> {
    operation
        .selection_set
        .node
        .items
        .iter()
        .filter_map(|s| match &s.node {
            Selection::Field(field) => Some(field.node.name.node.as_str()),
            _ => None,
        })
}

/// Whether the operation is exempt from the budget: named in `exempt_operations` (by operation
/// name, or every root field), or a subscription only to `system` topics.
pub fn exempt(
    config: &Config,
    doc: &ExecutableDocument,
    name: Option<&str>,
    variables: &Variables,
) -> bool {
    let exempt_names = &config.operations.rate_limit.exempt_operations;
    if name.is_some_and(|n| exempt_names.iter().any(|e| e == n)) {
        return true;
    }
    let Some(operation) = selected_operation(doc, name) else {
        return false;
    };
    let fields: Vec<_> = operation
        .selection_set
        .node
        .items
        .iter()
        .map(|s| match &s.node {
            Selection::Field(field) => Some(&field.node),
            _ => None,
        })
        .collect();
    if fields.is_empty() || fields.iter().any(Option::is_none) {
        return false;
    }
    let fields = fields.into_iter().flatten();
    if fields
        .clone()
        .all(|f| exempt_names.iter().any(|e| e == f.name.node.as_str()))
    {
        return true;
    }
    operation.ty == OperationType::Subscription
        && fields.clone().all(|f| {
            f.name.node == "events"
                && f.get_argument("topic")
                    .and_then(|v| {
                        v.node
                            .clone()
                            .into_const_with(|var| variables.get(&var).cloned().ok_or(()))
                            .ok()
                    })
                    .is_some_and(|topic| match topic {
                        Value::String(topic) => topics::is_system(&config.topics, &topic),
                        _ => false,
                    })
        })
}
