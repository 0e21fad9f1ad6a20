//! Tests of `exempt`.
use async_graphql::parser::parse_query;

use super::*;
use crate::limits::document::selected_operation;

/// The root field names `query` runs on type `Mutation`, with `variables`.
fn names(query: &str, variables: serde_json::Value) -> Vec<String> {
    let doc = parse_query(query).expect("the test document parses");
    let variables = Variables::from_json(variables);
    let operation = selected_operation(&doc, None).expect("one operation");
    root_fields(&doc, operation, &variables, "Mutation", |i| i == "Node")
        .iter()
        .map(|f| f.name.node.to_string())
        .collect()
}

#[test]
fn fragments_and_aliases_resolve_to_every_occurrence_of_the_field() {
    let query = "mutation { a: sendMessage ... on Mutation { b: sendMessage ... { c: publish } } \
                 ...F ...F } fragment F on Mutation { d: sendMessage }";
    assert_eq!(
        names(query, serde_json::json!({})),
        [
            "sendMessage",
            "sendMessage",
            "publish",
            "sendMessage",
            "sendMessage"
        ]
    );
}

#[test]
fn fragments_on_other_types_and_skipped_selections_add_nothing() {
    let query = "mutation($no: Boolean!) { ... on Query { me } ...Q ... on Node { n } \
                 s: sendMessage @skip(if: true) i: sendMessage @include(if: $no) kept: publish \
                 @skip(if: $no) } fragment Q on Query { me }";
    assert_eq!(
        names(query, serde_json::json!({ "no": false })),
        ["n", "publish"]
    );
}

#[test]
fn a_fragment_cycle_ends() {
    let query =
        "mutation { ...A } fragment A on Mutation { a ...B } fragment B on Mutation { b ...A }";
    assert_eq!(names(query, serde_json::json!({})), ["a", "b"]);
}

fn fields_of(doc: &ExecutableDocument) -> Vec<&Field> {
    let operation = selected_operation(doc, None).expect("one operation");
    root_fields(doc, operation, &Variables::default(), "Query", |_| false)
}

#[test]
fn an_operation_is_exempt_only_when_every_field_it_runs_is_exempt() {
    let mut config = Config::default();
    config.operations.rate_limit.exempt_operations = vec!["refreshAuth".into()];
    let exempt_of = |query: &str| exempt(&config, &fields_of(&parse_query(query).unwrap()));
    assert!(exempt_of(
        "{ refreshAuth ... on Query { again: refreshAuth } }"
    ));
    assert!(!exempt_of("query refreshAuth { me }"));
    assert!(!exempt_of(
        "{ refreshAuth ...F } fragment F on Query { me }"
    ));
    assert!(!exempt_of("{ ... on Other { refreshAuth } }"));
}

#[test]
fn the_introspection_allowance_needs_introspection_fields_and_only_them() {
    let only = |query: &str| introspection_only(&fields_of(&parse_query(query).unwrap()));
    assert!(only(
        "{ __schema { types { name } } ...F } fragment F on Query { __typename }"
    ));
    assert!(!only("{ ... on Query { me { id } } }"));
    assert!(!only("{ __schema { types { name } } ... { me { id } } }"));
    assert!(!only("{ ... on Other { __typename } }"));
}
