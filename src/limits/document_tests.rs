//! Tests of `document`.
use async_graphql::parser::parse_query;
use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

use super::*;

fn limits(tweak: impl FnOnce(&mut Payload)) -> Payload {
    let mut limits = Payload::default();
    tweak(&mut limits);
    limits
}

fn scan(query: &str, tweak: impl FnOnce(&mut Payload)) -> Result<(), Violation> {
    scan_query(query, &limits(tweak))
}

fn check(query: &str, tweak: impl FnOnce(&mut Payload)) -> Result<(), Violation> {
    let doc = parse_query(query).expect("the test document parses");
    check_document(&doc, None, &limits(tweak))
}

/// The code and measurement of a violation, `None` when it passes.
fn refusal(result: Result<(), Violation>) -> Option<(&'static str, u64, u64)> {
    result.err().map(|v| (v.code, v.limit, v.measured))
}

fn tokens(query: &str) -> u64 {
    let mut pos = 0;
    std::iter::from_fn(|| next_token(query.as_bytes(), &mut pos)).count() as u64
}

fn nested(open: &str, inner: &str, close: &str, levels: usize) -> String {
    format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
}

#[test]
fn the_size_limit_is_inclusive() {
    let query = format!("{{ a }}{}", " ".repeat(95));
    assert_eq!(query.len(), 100);
    assert_eq!(scan(&query, |l| l.max_query_bytes.0 = 100), Ok(()));
    let refused = scan(&query, |l| l.max_query_bytes.0 = 99).unwrap_err();
    assert_eq!(
        (refused.code, refused.limit, refused.measured),
        ("PAYLOAD_TOO_LARGE", 99, 100)
    );
    assert_eq!(refused.message, "Query is 100 bytes; the limit is 99");
}

#[test]
fn tokens_are_graphql_tokens() {
    assert_eq!(tokens("{ me { id } }"), 6);
    assert_eq!(tokens("\u{feff} ,,\t\r\n # { [ ( a comment\n"), 0);
    assert_eq!(tokens(r#"a(x: """block { [ \""" still in ] """) b"#), 7);
    assert_eq!(tokens(r#"a(x: "str { [ \" ] \\") b"#), 7);
    assert_eq!(tokens("-1.5e10 1.5E+3 -0 42 1e-3"), 5);
    assert_eq!(tokens("...F ... on T ...{ a }"), 9);
    assert_eq!(tokens("query Q($v: [Int!]! = [1, 2]) @d { a }"), 22);
    assert_eq!(tokens("! $ & ( ) : = @ [ ] { | }"), 13);
    // Not GraphQL, still bounded: one token per character.
    assert_eq!(tokens("é ? ."), 3);
}

#[test]
fn unterminated_strings_run_to_the_end() {
    assert_eq!(tokens(r#"a "abc"#), 2);
    assert_eq!(tokens("a \"abc\n{ b }"), 5, "a string ends at its line");
    assert_eq!(tokens(r#"a """abc { [ [ ["#), 2);
    assert_eq!(tokens(r#"a "abc\"#), 2);
    assert_eq!(
        scan(r#"{ a(x: """[[[[[[ "#, |l| l.max_input_nesting = 1),
        Ok(())
    );
}

#[test]
fn the_token_limit_is_inclusive_and_stops_counting_when_over() {
    let query = "{ me { id } }";
    assert_eq!(scan(query, |l| l.max_tokens = 6), Ok(()));
    assert_eq!(
        refusal(scan(query, |l| l.max_tokens = 5)),
        Some(("MAX_TOKENS_LIMIT", 5, 6))
    );
    let long = format!("{{ me {{ {}}} }}", "id ".repeat(1_000_000));
    let refused = refusal(scan(&long, |l| l.max_query_bytes.0 = u64::MAX));
    assert_eq!(refused, Some(("MAX_TOKENS_LIMIT", 2000, 2001)));
}

#[test]
fn depth_counts_fields_not_braces_of_inline_fragments() {
    let ten = nested("{ a ", "", "}", 10);
    assert_eq!(scan(&ten, |_| {}), Ok(()));
    let eleven = nested("{ a ", "", "}", 11);
    let refused = scan(&eleven, |_| {}).unwrap_err();
    assert_eq!(
        (refused.code, refused.limit, refused.measured),
        ("MAX_DEPTH_LIMIT", 10, 11)
    );
    assert_eq!(
        refused.message,
        "Query nests fields 11 deep; the limit is 10"
    );
    for inline in [
        "... on T {",
        "...{",
        "... @include(if: true) {",
        "... on T @skip(if: false) {",
    ] {
        let query = format!("{{ a {{ {} b {{ c }} }} }}", inline) + "}";
        assert_eq!(scan(&query, |l| l.max_depth = 3), Ok(()), "{query}");
        assert!(scan(&query, |l| l.max_depth = 2).is_err(), "{query}");
    }
    // A spread adds nothing, and its fragment is measured on its own.
    let spread = "{ a { ...F } } fragment F on T { b { c } }";
    assert_eq!(scan(spread, |l| l.max_depth = 2), Ok(()));
    // Braces inside arguments are values, not selections.
    assert_eq!(scan("{ a(x: {y: {z: 1}}) }", |l| l.max_depth = 1), Ok(()));
}

#[test]
fn selection_sets_nest_no_deeper_than_the_parser_accepts() {
    let at = PARSER_SELECTION_NESTING as usize;
    let query = |levels: usize| format!("{{{}}}", nested("...{", "a", "}", levels - 1));
    assert!(parse_query(query(at)).is_ok());
    assert_eq!(scan(&query(at), |_| {}), Ok(()));
    assert!(parse_query(query(at + 1)).is_err());
    assert_eq!(
        refusal(scan(&query(at + 1), |_| {})),
        Some(("MAX_DEPTH_LIMIT", 65, 66))
    );
    let hostile = nested("{a", "", "}", 100_000);
    let refused = scan(&hostile, |l| l.max_query_bytes.0 = u64::MAX);
    assert_eq!(refusal(refused), Some(("MAX_DEPTH_LIMIT", 10, 11)));
}

struct Node;

#[Object]
impl Node {
    async fn child(&self) -> Node {
        Node
    }

    async fn leaf(&self) -> i32 {
        1
    }
}

/// The scan and async-graphql's `limit_depth` agree on what is too deep.
#[tokio::test]
async fn depth_is_measured_as_async_graphql_measures_it() {
    let schema = Schema::build(Node, EmptyMutation, EmptySubscription)
        .limit_depth(3)
        .finish();
    for query in [
        "{ leaf }",
        "{ child { child { leaf } } }",
        "{ child { child { child { leaf } } } }",
        "{ child { ... on Node { child { ... { leaf } } } } }",
        "{ child { ... on Node { child { ... { child { leaf } } } } } }",
        "{ child { ...F } } fragment F on Node { child { leaf } }",
        "{ a: child { b: child { c: leaf } } d: leaf }",
    ] {
        let by_async_graphql = schema.execute(query).await.errors.is_empty();
        let by_scan = scan(query, |l| l.max_depth = 3).is_ok();
        assert_eq!(by_scan, by_async_graphql, "{query}");
    }
}

#[test]
fn input_nesting_counts_lists_and_objects_inside_parentheses_only() {
    let list = |levels| format!("{{ a(x: {}) }}", nested("[", "1", "]", levels));
    assert_eq!(scan(&list(32), |_| {}), Ok(()));
    let refused = scan(&list(33), |_| {}).unwrap_err();
    assert_eq!(
        (refused.code, refused.limit, refused.measured),
        ("MAX_INPUT_NESTING_LIMIT", 32, 33)
    );
    assert_eq!(
        refused.message,
        "Query nests lists and objects at least 33 deep; the limit is 32"
    );
    let mixed = "{ a(x: [{y: [{z: 1}]}]) }";
    assert_eq!(scan(mixed, |l| l.max_input_nesting = 4), Ok(()));
    assert!(scan(mixed, |l| l.max_input_nesting = 3).is_err());
    // Siblings do not add up; each argument list starts afresh.
    let wide = "{ a(x: [[1], [2]], y: [[3]]) @d(z: [[4]]) b(x: [[5]]) }";
    assert_eq!(scan(wide, |l| l.max_input_nesting = 2), Ok(()));
    let types = "query($v: [[Int]] = [[1]]) { a }";
    assert_eq!(scan(types, |l| l.max_input_nesting = 2), Ok(()));
    assert!(scan(types, |l| l.max_input_nesting = 1).is_err());
    // Brackets inside strings, block strings and comments are text.
    let quiet = "{ a(x: \"[[[{{\", y: \"\"\"[[[ \\\"\"\" [[\"\"\" # [[[[\n z: 1) }";
    assert_eq!(scan(quiet, |l| l.max_input_nesting = 1), Ok(()));
    // Stray closing brackets cannot hide later opening ones.
    let stray = "{ a(x: ]]]]]] [[1]]) }";
    assert!(scan(stray, |l| l.max_input_nesting = 1).is_err());
}

#[test]
fn aliases_are_counted_up_to_the_limit() {
    let query = |n: usize| {
        format!(
            "{{ {} }}",
            (0..n)
                .map(|i| format!("a{i}: f"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    assert_eq!(check(&query(15), |_| {}), Ok(()));
    let refused = check(&query(16), |_| {}).unwrap_err();
    assert_eq!(
        (refused.code, refused.limit, refused.measured),
        ("MAX_ALIASES_LIMIT", 15, 16)
    );
    assert_eq!(refused.message, "Query has 16 aliases; the limit is 15");
    let nested = "{ a: f { b: g { ...F } ... on T { c: h } } } fragment F on T { d: i }";
    assert_eq!(check(nested, |l| l.max_aliases = 4), Ok(()));
    assert_eq!(
        refusal(check(nested, |l| l.max_aliases = 3)),
        Some(("MAX_ALIASES_LIMIT", 3, 4))
    );
}

#[test]
fn root_fields_count_every_spread_of_a_top_level_fragment() {
    let query = |n: usize| format!("{{ {} }}", "f ".repeat(n));
    assert_eq!(check(&query(20), |_| {}), Ok(()));
    assert_eq!(
        refusal(check(&query(21), |_| {})),
        Some(("MAX_ROOT_FIELDS_LIMIT", 20, 21))
    );
    // a, b, f, and G's g and h twice.
    let mixed = "{ a b { c d e } ... on Q { f ...G } ...G } fragment G on Q { g h { i } }";
    assert_eq!(check(mixed, |l| l.max_root_fields = 7), Ok(()));
    assert_eq!(
        refusal(check(mixed, |l| l.max_root_fields = 6)),
        Some(("MAX_ROOT_FIELDS_LIMIT", 6, 7))
    );
    // Each fragment spreads the next twice: 2^200 root fields, counted in linear time.
    let mut fan_out = "{ ...F0 }".to_string();
    for n in 0..200 {
        fan_out.push_str(&format!(
            " fragment F{n} on Q {{ ...F{m} ...F{m} }}",
            m = n + 1
        ));
    }
    fan_out.push_str(" fragment F200 on Q { z }");
    assert_eq!(
        refusal(check(&fan_out, |l| l.max_complexity = u32::MAX)),
        Some(("MAX_ROOT_FIELDS_LIMIT", 20, u64::MAX))
    );
}

#[test]
fn directives_are_counted_everywhere_in_the_operation() {
    let query = "query Q($v: Int @a) @b { f @c { ...F @d ... @e { g @f } } } \
                 fragment F on T @g { h @h }";
    assert_eq!(check(query, |l| l.max_directives = 8), Ok(()));
    let refused = check(query, |l| l.max_directives = 7);
    assert_eq!(refusal(refused), Some(("MAX_DIRECTIVES_LIMIT", 7, 8)));
    let many = |n: usize| format!("{{ f {} }}", "@skip(if: false) ".repeat(n));
    assert_eq!(check(&many(50), |_| {}), Ok(()));
    assert_eq!(
        refusal(check(&many(51), |_| {})),
        Some(("MAX_DIRECTIVES_LIMIT", 50, 51))
    );
}

#[test]
fn argument_nesting_is_checked_after_parsing_too() {
    let query = |levels| format!("{{ a(x: {}) }}", nested("[", "1", "]", levels));
    assert_eq!(check(&query(32), |_| {}), Ok(()));
    assert_eq!(
        refusal(check(&query(33), |_| {})),
        Some(("MAX_INPUT_NESTING_LIMIT", 32, 33))
    );
    for place in [
        "{ a @d(x: {b: {c: [1]}}) }",
        "{ ...F } fragment F on Q { a(x: [{b: [1]}]) }",
        "query($v: JSON = {b: [[1]]}) { a }",
        "{ ... @d(x: [[[1]]]) { a } }",
    ] {
        assert_eq!(check(place, |l| l.max_input_nesting = 3), Ok(()), "{place}");
        let refused = check(place, |l| l.max_input_nesting = 2);
        assert_eq!(
            refusal(refused),
            Some(("MAX_INPUT_NESTING_LIMIT", 2, 3)),
            "{place}"
        );
    }
    // Brackets in strings are text, escaped quotes included; variables are not values.
    let strings = r#"{ a(x: ["\"[[[", "\\", $v, """ [[{{ \""" """]) }"#;
    assert_eq!(check(strings, |l| l.max_input_nesting = 1), Ok(()));
}

#[test]
fn fragments_count_once_however_often_they_are_spread() {
    // Spread below the root: at the root, the root-field count (per spread) refuses it first.
    let mut query = format!("{{ r {{ {} }} }}", "...F0 ".repeat(1_000));
    for n in 0..1_000 {
        query.push_str(&format!(
            " fragment F{n} on Q {{ a{n}: f @d ...F{m} ...F{m} }}",
            m = n + 1
        ));
    }
    query.push_str(" fragment F1000 on Q { z }");
    let started = std::time::Instant::now();
    let doc = parse_query(&query).unwrap();
    let generous = limits(|l| {
        l.max_aliases = 1_000;
        l.max_directives = 1_000;
        l.max_root_fields = 1_001;
        l.max_complexity = u32::MAX;
    });
    let refused = check_document(&doc, None, &generous).unwrap_err();
    // Aliases, directives and root fields pass, counted once per fragment; spread in place, the
    // chain would be 2^1000 selections, which the expansion count catches (saturated).
    assert_eq!(
        (refused.code, refused.measured),
        ("MAX_COMPLEXITY_LIMIT", u64::MAX)
    );
    let tight = limits(|l| l.max_complexity = u32::MAX);
    let refused = refusal(check_document(&doc, None, &tight));
    assert_eq!(
        refused,
        Some(("MAX_ALIASES_LIMIT", 15, 1_000)),
        "one per fragment"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn selections_are_counted_with_fragments_spread_in_place() {
    let query = "{ x { ...F } y { ...F } } fragment F on T { a b ...G } fragment G on T { c }";
    // x, a spread, y, a spread, and twice what F expands to: a, b, a spread, c.
    assert_eq!(check(query, |l| l.max_complexity = 12), Ok(()));
    assert_eq!(
        refusal(check(query, |l| l.max_complexity = 11)),
        Some(("MAX_COMPLEXITY_LIMIT", 11, 12))
    );
    // Every operation counts: async-graphql walks them all before it picks one.
    let doc = parse_query("query A { a b c } query B { d }").unwrap();
    let small = limits(|l| l.max_complexity = 3);
    assert_eq!(
        refusal(check_document(&doc, Some("B"), &small)),
        Some(("MAX_COMPLEXITY_LIMIT", 3, 4))
    );
}

#[test]
fn cycles_and_unknown_fragments_are_left_to_the_validator() {
    for query in [
        "fragment A on Q { ...B } fragment B on Q { ...A } { ...A }",
        "fragment A on Q { ...B ...B a } fragment B on Q { ...A ...A b } { ...A ...B }",
        "fragment A on Q { a ...A } { ...A ...A }",
        "{ ...Nowhere a { ...Nowhere } }",
    ] {
        assert_eq!(check(query, |_| {}), Ok(()), "{query}");
    }
}

#[test]
fn the_operation_is_picked_as_async_graphql_picks_it() {
    let doc = parse_query("query A { a: f b: f } query B { f }").unwrap();
    let one_alias = limits(|l| l.max_aliases = 1);
    assert!(check_document(&doc, Some("A"), &one_alias).is_err());
    assert_eq!(check_document(&doc, Some("B"), &one_alias), Ok(()));
    // Unknown or missing names are async-graphql's to report.
    assert_eq!(check_document(&doc, Some("C"), &one_alias), Ok(()));
    assert_eq!(check_document(&doc, None, &one_alias), Ok(()));
    let single = parse_query("{ a: f b: f }").unwrap();
    assert!(check_document(&single, None, &one_alias).is_err());
    assert_eq!(check_document(&single, Some("A"), &one_alias), Ok(()));
    let named = parse_query("query A { a: f b: f }").unwrap();
    assert!(check_document(&named, None, &one_alias).is_err());
}

fn variables(json: &str) -> Variables {
    Variables::from_json(serde_json::from_str(json).unwrap())
}

#[test]
fn variables_nest_up_to_the_limit() {
    let deep = |levels| {
        format!(
            r#"{{"v": {}, "w": 1}}"#,
            nested(r#"{"a": ["#, "1", "]}", levels)
        )
    };
    // Each level of `deep` is an object holding a list: two levels of nesting.
    assert_eq!(
        check_variables(&variables(&deep(16)), &Payload::default()),
        Ok(())
    );
    let refused = check_variables(&variables(&deep(17)), &Payload::default()).unwrap_err();
    assert_eq!(
        (refused.code, refused.limit, refused.measured),
        ("MAX_INPUT_NESTING_LIMIT", 32, 33)
    );
    assert_eq!(
        refused.message,
        "Variables nest lists and objects at least 33 deep; the limit is 32"
    );
    let wide = r#"{"a": [[1], [2], {"b": [3]}], "c": "[[[[", "d": null}"#;
    let wide = variables(wide);
    assert_eq!(
        check_variables(&wide, &limits(|l| l.max_input_nesting = 3)),
        Ok(())
    );
    let refused = check_variables(&wide, &limits(|l| l.max_input_nesting = 2));
    assert_eq!(refusal(refused), Some(("MAX_INPUT_NESTING_LIMIT", 2, 3)));
    assert_eq!(
        check_variables(&Variables::default(), &Payload::default()),
        Ok(())
    );
}
