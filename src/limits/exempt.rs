//! The root fields an operation actually runs, resolved once per operation: which operations the
//! budget exempts, what the per-operation budgets count, and whether an operation is
//! introspection-only all read this one list, so a fragment, an alias or an operation name cannot
//! make them disagree with what executes.

use async_graphql::parser::types::{
    Directive, ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Positioned, Value, Variables};

use crate::config::Config;

/// Every root field occurrence the operation selects, in document order: inline fragments and
/// named fragments are spread wherever they apply to `root_type` (no type condition, the type
/// itself, or an interface it implements per `implements`), each spread again every time it occurs
/// (execution runs every occurrence), and selections dropped by `@skip`/`@include` left out. An
/// alias does not change the field's name. (On the subscription root async-graphql 7.2 runs only
/// direct fields; counting its fragments' fields too errs on the side of the limits.)
///
/// Runs on documents that passed `check_document`, so the spread-out selections are bounded by
/// `max_complexity`. A spread of a fragment that is already being spread (a cycle, which
/// validation refuses later) adds nothing, so the walk always ends.
pub fn root_fields<'a>(
    doc: &'a ExecutableDocument,
    operation: &'a OperationDefinition,
    variables: &Variables,
    root_type: &str,
    implements: impl Fn(&str) -> bool,
) -> Vec<&'a Field> {
    let applies = |condition: &str| condition == root_type || implements(condition);
    let mut walk = Walk {
        doc,
        variables,
        applies: &applies,
        spreading: Vec::new(),
        fields: Vec::new(),
    };
    walk.set(&operation.selection_set.node);
    walk.fields
}

struct Walk<'a, 'v> {
    doc: &'a ExecutableDocument,
    variables: &'v Variables,
    applies: &'v dyn Fn(&str) -> bool,
    /// The fragments being spread, outermost first.
    spreading: Vec<&'a str>,
    fields: Vec<&'a Field>,
}

impl<'a> Walk<'a, '_> {
    fn set(&mut self, set: &'a SelectionSet) {
        for selection in &set.items {
            if skipped(selection.node.directives(), self.variables) {
                continue;
            }
            match &selection.node {
                Selection::Field(field) => self.fields.push(&field.node),
                Selection::InlineFragment(inline) => {
                    let inline = &inline.node;
                    let condition = inline.type_condition.as_ref();
                    if condition.is_none_or(|c| (self.applies)(&c.node.on.node)) {
                        self.set(&inline.selection_set.node);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.doc.fragments.get(name) else {
                        continue; // validation refuses an unknown fragment
                    };
                    let fragment = &fragment.node;
                    if self.spreading.contains(&name)
                        || !(self.applies)(&fragment.type_condition.node.on.node)
                    {
                        continue;
                    }
                    self.spreading.push(name);
                    self.set(&fragment.selection_set.node);
                    self.spreading.pop();
                }
            }
        }
    }
}

/// Whether `@skip(if: true)` or `@include(if: false)` drops the selection, read as async-graphql
/// reads it (a missing or non-boolean condition is false).
fn skipped(directives: &[Positioned<Directive>], variables: &Variables) -> bool {
    directives.iter().any(|directive| {
        let include = match directive.node.name.node.as_str() {
            "skip" => false,
            "include" => true,
            _ => return false,
        };
        let condition = directive.node.get_argument("if").map(|value| {
            value
                .node
                .clone()
                .into_const_with(|name| variables.get(&name).cloned().ok_or(()))
        });
        match condition {
            Some(condition) => include != matches!(condition, Ok(Value::Boolean(true))),
            None => false,
        }
    })
}

/// Whether the operation is exempt from the budget: it runs at least one root field and every one
/// is named in `exempt_operations`. The operation's own name, which the client chooses, buys
/// nothing.
pub fn exempt(config: &Config, fields: &[&Field]) -> bool {
    let exempt_fields = &config.operations.rate_limit.exempt_operations;
    !fields.is_empty()
        && fields
            .iter()
            .all(|f| exempt_fields.iter().any(|e| *e == f.name.node.as_str()))
}

/// Whether every root field is introspection (`__schema`, `__type`, `__typename`), for the
/// introspection depth allowance. An operation that runs no root field gets no allowance.
pub fn introspection_only(fields: &[&Field]) -> bool {
    !fields.is_empty() && fields.iter().all(|f| f.name.node.starts_with("__"))
}

#[cfg(test)]
#[path = "exempt_tests.rs"]
mod tests;
