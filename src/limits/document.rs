//! Shape limits on GraphQL requests (the `payload` section of hardening.yaml), checked before
//! async-graphql spends real work on them.
//!
//! async-graphql's parser and validator recurse over the document, so a hostile one can exhaust the
//! stack or the CPU before async-graphql's own limits apply. These checks never recurse on what a
//! client sent and cost time linear in its size, so they can run first:
//!
//! 1. [`scan_query`], before parsing: size, tokens and bracket nesting, in one pass over the text.
//!    The nesting bounds are what keep the recursive parser off deep `[[[[…` and `{a{a{a…`: about
//!    300 nested lists in an argument (600 bytes) overflow a 2 MiB stack in a debug build, which
//!    aborts the process; pest's own stack guard only steps in further down.
//! 2. [`check_document`], after parsing and before async-graphql's own checks: aliases, root
//!    fields, directives and argument nesting of the operation that will run, each fragment counted
//!    once however often it is spread; and the size of the whole document once its fragments are
//!    spread, which async-graphql's walks pay for in full.
//! 3. [`check_variables`]: nesting of list and object values in the variables.
//!
//! # Depth
//!
//! Depth is what async-graphql's `limit_depth` measures (its `DepthCalculate` visitor): the number of
//! fields on the longest path down from the operation. `{ a }` is 1, `{ a { b } }` is 2, and inline
//! fragments and fragment spreads add nothing. In the text, that is the number of open selection
//! sets other than inline fragments' (the operation's own braces hold the depth-1 fields), so a
//! brace that opens selection set `max_depth + 1` is refused. The scan sees each fragment
//! definition on its own; depth added by spreading fragments into one another is left to
//! `limit_depth`. The one place the scan is stricter: async-graphql does not count `__typename`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use async_graphql::parser::types::{
    Directive, DocumentOperations, ExecutableDocument, FragmentDefinition, OperationDefinition,
    Selection, SelectionSet,
};
use async_graphql::{Positioned, Value as ConstValue, Variables};

use crate::config::Payload;

/// Selection sets, inline fragments' included, that async-graphql's parser accepts nested. It
/// refuses deeper ones itself, but only after its pest grammar has recursed through all of them.
const PARSER_SELECTION_NESTING: u64 = 65;

/// A limit the request breaks: `code` is the error code clients see in `extensions.code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: &'static str,
    pub limit: u64,
    pub measured: u64,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Violation {}

fn violation(code: &'static str, limit: u64, measured: u64, message: String) -> Violation {
    Violation {
        code,
        limit,
        measured,
        message,
    }
}

fn input_violation(subject: &str, limit: u64, measured: u64) -> Violation {
    let message =
        format!("{subject} lists and objects at least {measured} deep; the limit is {limit}");
    violation("MAX_INPUT_NESTING_LIMIT", limit, measured, message)
}

/// Fails when `measured` is over `limit`; `what` names the thing counted, in the plural.
fn at_most(code: &'static str, limit: u32, measured: u64, what: &str) -> Result<(), Violation> {
    let limit = u64::from(limit);
    if measured <= limit {
        return Ok(());
    }
    let message = format!("Query has {measured} {what}; the limit is {limit}");
    Err(violation(code, limit, measured, message))
}

/// Checks the raw query text, before it reaches the parser: the stack-depth guard for it.
///
/// A linear pass with a small lexer. Inside parentheses (arguments, variable definitions, directive
/// arguments) every `[` and `{` opens a list or object value or a list type, so their nesting is
/// bounded by `max_input_nesting`; outside, `{` opens a selection set, bounded by `max_depth` (see
/// the module documentation) and, inline fragments included, by the 65 the parser accepts. Strings,
/// block strings and comments are skipped, so brackets inside them count for nothing. Malformed
/// text is never an error here; it is measured as well as it can be and left to the parser.
pub fn scan_query(query: &str, limits: &Payload) -> Result<(), Violation> {
    let size = query.len() as u64;
    let max_bytes = limits.max_query_bytes.0;
    if size > max_bytes {
        let message = format!("Query is {size} bytes; the limit is {max_bytes}");
        return Err(violation("PAYLOAD_TOO_LARGE", max_bytes, size, message));
    }
    let max_tokens = u64::from(limits.max_tokens);
    let max_depth = u64::from(limits.max_depth);
    let max_input = u64::from(limits.max_input_nesting);
    let bytes = query.as_bytes();
    let mut pos = 0;
    let mut tokens = 0u64;
    let (mut parens, mut input) = (0u64, 0u64);
    // Open selection sets, and those of them that are not inline fragments (the depth). Bit n of
    // `inline` marks set n + 1 as an inline fragment's; sets never nest past 65, so it fits.
    let (mut sets, mut depth, mut inline) = (0u64, 0u64, 0u128);
    // `...` then `on`, `@` or `{` starts an inline fragment; `...` then any other name is a spread.
    let (mut after_spread, mut inline_next) = (false, false);
    while let Some(token) = next_token(bytes, &mut pos) {
        tokens += 1;
        if tokens > max_tokens {
            let message = format!("Query has more than {max_tokens} tokens; that is the limit");
            return Err(violation("MAX_TOKENS_LIMIT", max_tokens, tokens, message));
        }
        let follows_spread = std::mem::take(&mut after_spread);
        match token {
            Token::Spread => after_spread = true,
            Token::Name(name) if follows_spread => inline_next = name == b"on",
            Token::Punct(b'@') if follows_spread => inline_next = true,
            Token::Punct(b'(') => parens += 1,
            Token::Punct(b')') => {
                parens = parens.saturating_sub(1);
                if parens == 0 {
                    input = 0;
                }
            }
            // A stray `[` outside parentheses is counted too: it can only be a syntax error.
            Token::Punct(open @ (b'[' | b'{')) if open == b'[' || parens > 0 => {
                input += 1;
                if input > max_input {
                    return Err(input_violation("Query nests", max_input, input));
                }
            }
            Token::Punct(b']') => input = input.saturating_sub(1),
            Token::Punct(b'}') if parens > 0 => input = input.saturating_sub(1),
            Token::Punct(b'{') => {
                sets += 1;
                if sets > PARSER_SELECTION_NESTING {
                    let limit = PARSER_SELECTION_NESTING;
                    let message = format!(
                        "Query nests selection sets {sets} deep; the parser accepts at most {limit}"
                    );
                    return Err(violation("MAX_DEPTH_LIMIT", limit, sets, message));
                }
                let bit = 1u128 << (sets - 1);
                if std::mem::take(&mut inline_next) | follows_spread {
                    inline |= bit;
                } else {
                    inline &= !bit;
                    depth += 1;
                    if depth > max_depth {
                        let message =
                            format!("Query nests fields {depth} deep; the limit is {max_depth}");
                        return Err(violation("MAX_DEPTH_LIMIT", max_depth, depth, message));
                    }
                }
            }
            Token::Punct(b'}') if sets > 0 => {
                sets -= 1;
                if inline & (1u128 << sets) == 0 {
                    depth = depth.saturating_sub(1);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The lexical tokens the scan tells apart; every other token is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    Punct(u8),
    Spread,
    Name(&'a [u8]),
    Other,
}

/// Skips ignored text (whitespace, commas, byte-order marks, comments) and reads one token.
fn next_token<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<Token<'a>> {
    loop {
        let start = *pos;
        let &first = bytes.get(start)?;
        *pos += 1;
        let rest = &bytes[*pos..];
        return Some(match first {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => continue,
            0xEF if rest.starts_with(&[0xBB, 0xBF]) => {
                *pos += 2;
                continue;
            }
            b'#' => {
                *pos = skip(bytes, *pos, |b| b != b'\n' && b != b'\r');
                continue;
            }
            b'"' => {
                *pos = string_end(bytes, *pos);
                Token::Other
            }
            b'.' if rest.starts_with(b"..") => {
                *pos += 2;
                Token::Spread
            }
            b'!' | b'$' | b'&' | b'(' | b')' | b':' | b'=' | b'@' | b'[' | b']' | b'{' | b'|'
            | b'}' => Token::Punct(first),
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                *pos = skip(bytes, *pos, |b| b == b'_' || b.is_ascii_alphanumeric());
                Token::Name(&bytes[start..*pos])
            }
            b'-' | b'0'..=b'9' => {
                *pos = number_end(bytes, *pos);
                Token::Other
            }
            // Not GraphQL: one token per character, for the parser to refuse.
            _ => {
                *pos = skip(bytes, *pos, |b| b & 0xC0 == 0x80);
                Token::Other
            }
        });
    }
}

fn skip(bytes: &[u8], from: usize, mut keep: impl FnMut(u8) -> bool) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| !keep(b))
        .map_or(bytes.len(), |n| from + n)
}

/// The end of an int or float whose first character (a digit or `-`) ends at `from`.
fn number_end(bytes: &[u8], from: usize) -> usize {
    let mut end = skip(bytes, from, |b| b.is_ascii_digit());
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = skip(bytes, end + 1, |b| b.is_ascii_digit());
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        end += 1;
        if matches!(bytes.get(end), Some(b'+' | b'-')) {
            end += 1;
        }
        end = skip(bytes, end, |b| b.is_ascii_digit());
    }
    end
}

/// The end of a string or block string whose opening `"` ends at `from`. An unterminated one runs
/// to the end of its line (string) or of the text (block string); the parser reports it.
fn string_end(bytes: &[u8], from: usize) -> usize {
    let mut at = from;
    if bytes[from..].starts_with(b"\"\"") {
        at += 2;
        while at < bytes.len() {
            match &bytes[at..] {
                [b'\\', b'"', b'"', b'"', ..] => at += 4,
                [b'"', b'"', b'"', ..] => return at + 3,
                _ => at += 1,
            }
        }
        return bytes.len();
    }
    while let Some(&b) = bytes.get(at) {
        match b {
            b'"' => return at + 1,
            b'\n' | b'\r' => return at,
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// Checks the parsed operation that will run, with the fragments it reaches.
///
/// The operation is picked as async-graphql picks it (by name, or the only one). When none fits,
/// its counts are skipped and async-graphql reports the unknown or missing name. Unknown fragments
/// and cycles are left to its validator too.
///
/// One check covers the whole document: selections once fragments are spread, against
/// `max_complexity`. Before it even picks the operation, async-graphql walks every operation with
/// each spread expanded in place and nothing remembered (`limit_recursive_depth`), and so do its
/// depth and complexity visitors and execution. Fragments that each spread the next one twice make
/// a few hundred bytes cost them 2^n steps; counted with each fragment's expansion computed once,
/// it is linear here. (Stricter than async-graphql's complexity: spreads, inline fragments and
/// `__typename` count one each too, since its walks pay for them.)
pub fn check_document(
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    limits: &Payload,
) -> Result<(), Violation> {
    if let Some(operation) = selected_operation(doc, operation_name) {
        check_operation(doc, operation, limits)?;
    }
    let (code, what) = (
        "MAX_COMPLEXITY_LIMIT",
        "selections once its fragments are spread",
    );
    at_most(code, limits.max_complexity, expanded_selections(doc), what)
}

fn check_operation(
    doc: &ExecutableDocument,
    operation: &OperationDefinition,
    limits: &Payload,
) -> Result<(), Violation> {
    let max_input = u64::from(limits.max_input_nesting);
    let mut aliases = 0;
    let mut directives = count_directives(&operation.directives, max_input)?;
    let mut values = Vec::new();
    for variable in &operation.variable_definitions {
        directives += count_directives(&variable.node.directives, max_input)?;
        if let Some(default) = &variable.node.default_value
            && let Some(level) = const_nesting(&default.node, max_input, &mut values)
        {
            return Err(input_violation("Query nests", max_input, level));
        }
    }
    let (mut seen, mut sets) = (HashSet::new(), vec![&operation.selection_set.node]);
    while let Some(set) = sets.pop() {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    aliases += u64::from(field.node.alias.is_some());
                    directives += count_directives(&field.node.directives, max_input)?;
                    for (_, value) in &field.node.arguments {
                        argument_nesting(&value.node, max_input)?;
                    }
                    sets.push(&field.node.selection_set.node);
                }
                Selection::FragmentSpread(spread) => {
                    directives += count_directives(&spread.node.directives, max_input)?;
                    let name = spread.node.fragment_name.node.as_str();
                    if let Some(fragment) = first_visit(doc, &mut seen, name) {
                        directives += count_directives(&fragment.directives, max_input)?;
                        sets.push(&fragment.selection_set.node);
                    }
                }
                Selection::InlineFragment(inline) => {
                    directives += count_directives(&inline.node.directives, max_input)?;
                    sets.push(&inline.node.selection_set.node);
                }
            }
        }
    }
    at_most("MAX_ALIASES_LIMIT", limits.max_aliases, aliases, "aliases")?;
    let root_fields = count_root_fields(doc, &operation.selection_set.node);
    let (code, limit) = ("MAX_ROOT_FIELDS_LIMIT", limits.max_root_fields);
    at_most(code, limit, root_fields, "root fields")?;
    at_most(
        "MAX_DIRECTIVES_LIMIT",
        limits.max_directives,
        directives,
        "directives",
    )
}

/// Checks the nesting of list and object values in the variables.
pub fn check_variables(variables: &Variables, limits: &Payload) -> Result<(), Violation> {
    let limit = u64::from(limits.max_input_nesting);
    let mut stack = Vec::new();
    for value in variables.values() {
        if let Some(level) = const_nesting(value, limit, &mut stack) {
            return Err(input_violation("Variables nest", limit, level));
        }
    }
    Ok(())
}

/// How many directives there are, once their arguments' nesting is checked.
fn count_directives(
    directives: &[Positioned<Directive>],
    max_input: u64,
) -> Result<u64, Violation> {
    let mut arguments = directives.iter().flat_map(|d| &d.node.arguments);
    arguments.try_for_each(|(_, value)| argument_nesting(&value.node, max_input))?;
    Ok(directives.len() as u64)
}

/// The operation a request runs, chosen as async-graphql chooses it: the named one, or the only
/// one. `None` when async-graphql will refuse the request for it.
pub fn selected_operation<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(operation), None) => Some(&operation.node),
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.get(name).map(|op| &op.node)
        }
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|op| &op.node)
        }
        _ => None,
    }
}

/// The fragment a spread names, the first time it is reached (later spreads of it add nothing,
/// which keeps every walk linear in the document, cycles included).
fn first_visit<'a>(
    doc: &'a ExecutableDocument,
    seen: &mut HashSet<&'a str>,
    name: &'a str,
) -> Option<&'a FragmentDefinition> {
    let fragment = doc.fragments.get(name)?;
    seen.insert(name).then_some(&fragment.node)
}

/// Per fragment: the selections in its own text, and the fragments it spreads (once per spread).
type Shapes<'a> = HashMap<&'a str, (u64, Vec<&'a str>)>;

fn expanded_selections(doc: &ExecutableDocument) -> u64 {
    let mut shapes = Shapes::new();
    for (name, fragment) in &doc.fragments {
        let mut spreads = Vec::new();
        let own = selections(&fragment.node.selection_set.node, &mut spreads);
        shapes.insert(name.as_str(), (own, spreads));
    }
    let (mut total, mut expanded) = (0u64, HashMap::new());
    for (_, operation) in doc.operations.iter() {
        let mut spreads = Vec::new();
        total = total.saturating_add(selections(&operation.node.selection_set.node, &mut spreads));
        for name in spreads {
            total = total.saturating_add(expand(name, &shapes, &mut expanded));
        }
    }
    total
}

/// Fields the operation runs at its root: its own, inline fragments' included, and those of the
/// fragments it spreads there, every time they are spread (execution runs each spread again, so
/// `{ ...F ...F }` runs F's fields twice). Each fragment's share is computed once, on `expand`'s
/// own stack, so a fan-out of fragments stays linear.
fn count_root_fields(doc: &ExecutableDocument, root: &SelectionSet) -> u64 {
    let mut shapes = Shapes::new();
    for (name, fragment) in &doc.fragments {
        let mut spreads = Vec::new();
        let own = top_level_fields(&fragment.node.selection_set.node, &mut spreads);
        shapes.insert(name.as_str(), (own, spreads));
    }
    let mut spreads = Vec::new();
    let own = top_level_fields(root, &mut spreads);
    let mut expanded = HashMap::new();
    spreads.into_iter().fold(own, |total, name| {
        total.saturating_add(expand(name, &shapes, &mut expanded))
    })
}

/// Fields at the top of `set`, inline fragments' included; the fragments spread there go to
/// `spreads`.
fn top_level_fields<'a>(set: &'a SelectionSet, spreads: &mut Vec<&'a str>) -> u64 {
    let (mut count, mut sets) = (0u64, vec![set]);
    while let Some(set) = sets.pop() {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(_) => count += 1,
                Selection::FragmentSpread(spread) => {
                    spreads.push(spread.node.fragment_name.node.as_str());
                }
                Selection::InlineFragment(inline) => sets.push(&inline.node.selection_set.node),
            }
        }
    }
    count
}

/// Selections in `set` at every depth, spreads not expanded; the names they spread go to `spreads`.
fn selections<'a>(set: &'a SelectionSet, spreads: &mut Vec<&'a str>) -> u64 {
    let (mut count, mut sets) = (0u64, vec![set]);
    while let Some(set) = sets.pop() {
        count += set.items.len() as u64;
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => sets.push(&field.node.selection_set.node),
                Selection::FragmentSpread(spread) => {
                    spreads.push(spread.node.fragment_name.node.as_str());
                }
                Selection::InlineFragment(inline) => sets.push(&inline.node.selection_set.node),
            }
        }
    }
    count
}

/// What fragment `root` expands to, each fragment's expansion memoized in `expanded` (`None` while
/// it is being computed, so a spread closing a cycle adds nothing). Depth-first, on its own stack.
fn expand<'a>(
    root: &'a str,
    shapes: &Shapes<'a>,
    expanded: &mut HashMap<&'a str, Option<u64>>,
) -> u64 {
    if !expanded.contains_key(root) {
        expanded.insert(root, None);
        let mut stack = vec![(root, 0usize)];
        while let Some(&(name, next)) = stack.last() {
            let (own, spreads) = shapes
                .get(name)
                .map_or((0, &[][..]), |(own, spreads)| (*own, spreads.as_slice()));
            if let Some(&child) = spreads.get(next) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                if !expanded.contains_key(child) {
                    expanded.insert(child, None);
                    stack.push((child, 0));
                }
                continue;
            }
            let total = spreads.iter().fold(own, |total, child| {
                total.saturating_add(expanded.get(child).copied().flatten().unwrap_or(0))
            });
            expanded.insert(name, Some(total));
            stack.pop();
        }
    }
    expanded.get(root).copied().flatten().unwrap_or(0)
}

/// The first nesting level past `limit` that `value` reaches, if any. `stack` is scratch space,
/// shared between calls so a run of values allocates once.
fn const_nesting<'a>(
    value: &'a ConstValue,
    limit: u64,
    stack: &mut Vec<(&'a ConstValue, u64)>,
) -> Option<u64> {
    let is_container = |v: &&ConstValue| matches!(v, ConstValue::List(_) | ConstValue::Object(_));
    if !is_container(&value) {
        return None;
    }
    stack.clear();
    stack.push((value, 1));
    while let Some((value, level)) = stack.pop() {
        if level > limit {
            return Some(level);
        }
        match value {
            ConstValue::List(items) => {
                stack.extend(items.iter().filter(is_container).map(|v| (v, level + 1)));
            }
            ConstValue::Object(fields) => {
                stack.extend(fields.values().filter(is_container).map(|v| (v, level + 1)));
            }
            _ => {}
        }
    }
    None
}

/// Checks an argument value's nesting through its GraphQL rendering. Argument values are
/// `async_graphql_value::Value`, which async-graphql does not re-export, so they cannot be matched
/// on; the rendering recurses, but the gauge refuses the first bracket past `limit`, which stops it
/// at most `limit + 1` levels down (and the parser has already built the value just as deep).
fn argument_nesting(value: &impl fmt::Display, limit: u64) -> Result<(), Violation> {
    let mut gauge = NestingGauge {
        limit,
        level: 0,
        in_string: false,
        escaped: false,
    };
    match fmt::write(&mut gauge, format_args!("{value}")) {
        Err(_) if gauge.level > limit => Err(input_violation("Query nests", limit, gauge.level)),
        _ => Ok(()),
    }
}

/// Follows bracket nesting in a rendered value; strings are rendered quoted, with `\"` and `\\`.
struct NestingGauge {
    limit: u64,
    level: u64,
    in_string: bool,
    escaped: bool,
}

impl fmt::Write for NestingGauge {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            match (self.in_string, b) {
                (true, _) if self.escaped => self.escaped = false,
                (true, b'\\') => self.escaped = true,
                (true, b'"') => self.in_string = false,
                (true, _) => {}
                (false, b'"') => self.in_string = true,
                (false, b'[' | b'{') => {
                    self.level += 1;
                    if self.level > self.limit {
                        return Err(fmt::Error);
                    }
                }
                (false, b']' | b'}') => self.level = self.level.saturating_sub(1),
                (false, _) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "document_tests.rs"]
mod tests;
