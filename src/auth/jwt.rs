//! Minting and verifying JSON Web Tokens signed with the HMAC secret.

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::secret::HmacSecret;
use crate::config::Jwt as JwtConfig;

/// Why a token was refused. Only the audit trail sees this; the client gets one generic reason.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("token subject is empty")]
    EmptySubject,
}

/// Verifies tokens against the configured secret and rules.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(config: &JwtConfig, secret: &HmacSecret) -> anyhow::Result<Self> {
        if config.public_key_file.is_some() || config.jwks_file.is_some() {
            anyhow::bail!(
                "auth.jwt.public_key_file and auth.jwt.jwks_file are not supported by this build; use an HMAC secret"
            );
        }
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .with_context(|| format!("auth.jwt.algorithms: `{a}`"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One key family only: an HMAC secret must never verify a token whose header claims an
        // asymmetric algorithm, or the reverse.
        if let Some(bad) = algorithms
            .iter()
            .find(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            anyhow::bail!(
                "auth.jwt.algorithms: {bad:?} needs a public key, but only an HMAC secret is configured"
            );
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = config.leeway.get().as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            key: DecodingKey::from_secret(&secret.bytes),
            validation,
        })
    }

    /// The token's claims when it is valid now.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)?;
        match data.claims.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() => Ok(data.claims),
            _ => Err(TokenError::EmptySubject),
        }
    }
}

/// Mints a token for `sub` with extra claims, valid for `ttl`. Used by `palisade token`.
pub fn mint(
    secret: &HmacSecret,
    config: &JwtConfig,
    sub: &str,
    extra: Map<String, Value>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = extra;
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    if let Some(iss) = &config.issuer {
        claims.entry("iss").or_insert_with(|| iss.clone().into());
    }
    if let Some(aud) = &config.audience {
        claims.entry("aud").or_insert_with(|| aud.clone().into());
    }
    let algorithm = config
        .algorithms
        .iter()
        .filter_map(|a| a.parse::<Algorithm>().ok())
        .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .context("auth.jwt.algorithms has no HMAC algorithm to sign with")?;
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(&secret.bytes),
    )
    .context("signing the token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> HmacSecret {
        HmacSecret {
            bytes: b"test-secret".to_vec(),
            development: true,
        }
    }

    #[test]
    fn a_minted_token_verifies_and_carries_its_claims() {
        let config = JwtConfig::default();
        let extra = Map::from_iter([("roles".to_string(), serde_json::json!(["service"]))]);
        let token = mint(&secret(), &config, "alice", extra, Duration::from_secs(60)).unwrap();
        let claims = Verifier::new(&config, &secret())
            .unwrap()
            .verify(&token)
            .unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["roles"][0], "service");
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let config = JwtConfig::default();
        let other = HmacSecret {
            bytes: b"other".to_vec(),
            development: true,
        };
        let token = mint(
            &other,
            &config,
            "alice",
            Map::new(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            Verifier::new(&config, &secret())
                .unwrap()
                .verify(&token)
                .is_err()
        );
    }
}
