//! The development token `palisade serve` prints when it runs on the development-only secret.
//! GraphiQL opens with it in its Headers tab, so a newcomer's first query is answered instead of
//! refused. It is only ever set by the CLI on that secret: with a configured secret there is none.

use std::sync::OnceLock;

static PRINTED: OnceLock<String> = OnceLock::new();

/// Keeps the token that was just printed (the first one, if called twice).
pub fn remember(token: &str) {
    let _ = PRINTED.set(token.to_string());
}

/// The printed development token, when the server runs on the development secret.
pub fn printed() -> Option<&'static str> {
    PRINTED.get().map(String::as_str)
}

/// GraphiQL's initial Headers tab: the development token, or nothing.
pub fn graphiql_headers() -> String {
    headers_for(printed())
}

fn headers_for(token: Option<&str>) -> String {
    token
        .map(|token| {
            // A JWT is base64url and dots, but the text lands inside a script string: keep it inert.
            serde_json::json!({ "Authorization": format!("Bearer {token}") })
                .to_string()
                .replace('<', "\\u003c")
                .replace('\'', "\\u0027")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_development_token_graphiql_gets_no_headers() {
        assert_eq!(headers_for(None), "");
    }

    #[test]
    fn the_development_token_becomes_an_authorization_header_that_cannot_end_the_script() {
        assert_eq!(
            headers_for(Some("a.b.c")),
            r#"{"Authorization":"Bearer a.b.c"}"#
        );
        let hostile = headers_for(Some("x'</script>"));
        assert!(
            !hostile.contains('<') && !hostile.contains('\''),
            "{hostile}"
        );
    }
}
