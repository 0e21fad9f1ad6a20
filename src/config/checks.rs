//! Field rules `validator` cannot express on its own, and the rules that span several fields.

use std::borrow::Cow;

use validator::ValidationError;

use super::{Config, Grant};

fn invalid(message: impl Into<Cow<'static, str>>) -> ValidationError {
    ValidationError::new("invalid").with_message(message.into())
}

/// First path segments of the routes Palisade serves besides GraphQL (src/routes.rs, the web app
/// in src/webapp.rs, the development sign-in in src/devlogin.rs): a GraphQL path among them would
/// overlap one, which the router refuses by panicking at startup. A new route adds its segment.
const FIXED_ROUTES: [&str; 8] = [
    "metrics", "healthz", "readyz", "graphiql", "admin", "api", "app", "auth",
];

pub(super) fn graphql_path(path: &str) -> Result<(), ValidationError> {
    // Plain segments only: the router reads `{…}`, `*…` and `:…` as parameters, and refuses some
    // of them by panicking.
    let plain = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(invalid(format!(
            "`{path}` must be an absolute URL path such as /graphql"
        )));
    };
    if path.len() > 200 || !(rest.is_empty() || rest.split('/').all(plain)) {
        return Err(invalid(format!(
            "`{path}` must be / or /segment/… of letters, digits, - . _ ~ (at most 200 characters), such as /graphql"
        )));
    }
    let first = rest.split('/').next().unwrap_or_default();
    if FIXED_ROUTES.contains(&first) {
        return Err(invalid(format!(
            "`{path}` overlaps the server's own /{first} route; choose another path, such as /graphql"
        )));
    }
    Ok(())
}

pub(super) fn origins(origins: &[String]) -> Result<(), ValidationError> {
    for origin in origins {
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.ends_with('/')
            && origin.matches('/').count() == 2;
        if !ok {
            return Err(invalid(format!(
                "`{origin}` is not an origin: write scheme://host[:port] with no path, e.g. https://app.example.com"
            )));
        }
    }
    Ok(())
}

pub(super) fn networks(networks: &[String]) -> Result<(), ValidationError> {
    for net in networks {
        if net.parse::<ipnet::IpNet>().is_err() && net.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "`{net}` is neither an IP address nor a network like 10.0.0.0/8"
            )));
        }
    }
    Ok(())
}

pub(super) fn algorithms(algorithms: &[String]) -> Result<(), ValidationError> {
    for alg in algorithms {
        if alg.eq_ignore_ascii_case("none") {
            return Err(invalid("`none` is never accepted: tokens must be signed"));
        }
        if alg.parse::<jsonwebtoken::Algorithm>().is_err() {
            return Err(invalid(format!(
                "unknown algorithm `{alg}`; use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
            )));
        }
    }
    Ok(())
}

pub(super) fn sql_identifier(name: &str) -> Result<(), ValidationError> {
    // The table name is spliced into SQL, so only plain identifiers are accepted.
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(invalid(format!(
            "`{name}` must be a plain SQL identifier (letters, digits, _)"
        )))
    }
}

pub(super) fn json_pointer(pointer: &str) -> Result<(), ValidationError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(format!(
            "`{pointer}` must be a JSON pointer starting with /, e.g. /passport/user"
        )))
    }
}

pub(super) fn topic_pattern(pattern: &str) -> Result<(), ValidationError> {
    let bad_segment = pattern.split(':').find(|segment| {
        segment.is_empty()
            || (segment.contains(['{', '}'])
                && !(segment.starts_with('{') && segment.ends_with('}') && segment.len() > 2))
    });
    match bad_segment {
        None => Ok(()),
        Some(segment) => Err(invalid(format!(
            "segment `{segment}` of `{pattern}` must be literal text or one whole {{placeholder}}"
        ))),
    }
}

/// A rule broken by a combination of fields: the dotted path it is reported at, and why.
pub(super) fn cross_field(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, path: &str, message: String| {
        if !ok {
            problems.push((path.to_string(), message));
        }
    };
    let payload = &config.payload;
    check(
        payload.max_query_bytes <= payload.max_message_bytes,
        "payload.max_query_bytes",
        format!(
            "{} cannot exceed payload.max_message_bytes ({}): the query travels inside a message",
            payload.max_query_bytes, payload.max_message_bytes
        ),
    );
    check(
        config.streams.replay_limit <= config.streams.maxlen,
        "streams.replay_limit",
        format!(
            "{} cannot exceed streams.maxlen ({}): events beyond maxlen are already trimmed",
            config.streams.replay_limit, config.streams.maxlen
        ),
    );
    check(
        config.server.admin_listen != Some(config.server.listen),
        "server.admin_listen",
        "must differ from server.listen; leave it unset to serve admin endpoints on the main listener"
            .into(),
    );
    check(
        !config.auth.dev_login
            || (config.server.tls.is_none() && config.server.admin_listen.is_none()),
        "auth.dev_login",
        "development sign-in lets anyone act as any user: it cannot be on in a configuration with server.tls or server.admin_listen".into(),
    );
    for (i, rule) in config.topics.rules.iter().enumerate() {
        let placeholders: Vec<&str> = rule
            .pattern
            .split(':')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (list, grants) in [("subscribe", &rule.subscribe), ("publish", &rule.publish)] {
            for (j, grant) in grants.iter().enumerate() {
                let path = format!("topics.rules[{i}].{list}[{j}]");
                let (placeholder, identifiers) = match grant {
                    Grant::Authenticated | Grant::Role(_) => (None, vec![]),
                    Grant::Subject(p) => (Some(p), vec![]),
                    Grant::Claim { contains, .. } => (Some(contains), vec![]),
                    Grant::Member {
                        table,
                        user_column,
                        key_column,
                        placeholder,
                    } => (Some(placeholder), vec![table, user_column, key_column]),
                };
                if let Some(p) = placeholder {
                    check(
                        placeholders.contains(&p.as_str()),
                        &path,
                        format!("placeholder `{p}` is not in the pattern `{}`", rule.pattern),
                    );
                }
                for identifier in identifiers {
                    if let Err(e) = sql_identifier(identifier) {
                        check(false, &path, e.message.unwrap_or_default().to_string());
                    }
                }
            }
        }
    }
    problems
}
