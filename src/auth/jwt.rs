//! Minting and verifying JSON Web Tokens. Verification uses whichever keys `auth.jwt` configures
//! (see [`super::keys`]); minting, for `palisade token` and development, only ever uses the HMAC
//! secret.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::keys::KeySet;
use super::secret::HmacSecret;
use crate::config::Jwt as JwtConfig;

/// Why a token was refused. Only the audit trail sees this; the client gets one generic reason.
/// The message is built from [`TokenError::cause`] and never quotes the token, so nothing an
/// attacker wrote reaches the audit trail.
#[derive(Debug)]
pub enum TokenError {
    Invalid(jsonwebtoken::errors::Error),
    /// Every identity needs a user id, so a `sub` that is not a non-empty string is as bad as none.
    EmptySubject,
    /// Also a JWKS token without `kid` when the set holds several keys: trying each in turn would
    /// let the token pick its key.
    UnknownKid,
    /// `jsonwebtoken` cannot even name the algorithm (`none`, say), so it never gets that far.
    UnknownAlgorithm,
    /// RFC 7515 requires refusing `crit` extensions that are not understood, and none are.
    CriticalHeader,
}

impl TokenError {
    /// A short, low-cardinality cause for audit rows and metric labels.
    pub fn cause(&self) -> &'static str {
        match self {
            TokenError::EmptySubject => "missing_claim",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::UnknownAlgorithm => "algorithm_not_allowed",
            TokenError::CriticalHeader => "malformed",
            TokenError::Invalid(error) => match error.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidSignature => "bad_signature",
                ErrorKind::InvalidIssuer => "wrong_issuer",
                ErrorKind::InvalidAudience => "wrong_audience",
                ErrorKind::MissingRequiredClaim(_) => "missing_claim",
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::MissingAlgorithm => "algorithm_not_allowed",
                // Bad base64 or JSON, a wrong number of segments, a claim of the wrong type: keys
                // were checked at startup, so what is left is a token that cannot be read.
                _ => "malformed",
            },
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token rejected: {}", self.cause())?;
        match self {
            // Claim names come from the server's own list, never from the token.
            TokenError::Invalid(error) => match error.kind() {
                ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                    write!(f, " ({claim})")
                }
                _ => Ok(()),
            },
            TokenError::EmptySubject => f.write_str(" (sub)"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Invalid(error) => Some(error),
            _ => None,
        }
    }
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        TokenError::Invalid(error)
    }
}

/// A token that passed verification.
#[derive(Clone, Debug)]
pub struct Verified {
    pub claims: Map<String, Value>,
    /// `exp`, read by the same parse that validated it, so the connection's deadline is the
    /// instant validation checked against (fractional seconds included).
    pub expires_at: DateTime<Utc>,
}

/// Verifies tokens against the configured keys and claim rules.
#[derive(Clone)]
pub struct Verifier {
    keys: KeySet,
    /// Clock skew tolerated on `exp` and `nbf`.
    leeway: TimeDelta,
}

impl Verifier {
    pub fn new(config: &JwtConfig, secret: &HmacSecret) -> anyhow::Result<Self> {
        // The algorithms are set per key by `KeySet::load`; only the claim rules are shared.
        let mut rules = Validation::new(Algorithm::HS256);
        // `exp` and `nbf` are judged by `time_claim` instead: `jsonwebtoken` rounds fractional
        // seconds, and a deadline read any other way than validation read it can drift from it.
        rules.validate_exp = false;
        rules.validate_nbf = false;
        let mut required = vec!["sub"];
        // A configured issuer or audience must also be present: `jsonwebtoken` only compares them
        // when the token carries them.
        match &config.issuer {
            Some(iss) => {
                rules.set_issuer(&[iss]);
                required.push("iss");
            }
            None => rules.iss = None,
        }
        match &config.audience {
            Some(aud) => {
                rules.set_audience(&[aud]);
                required.push("aud");
            }
            None => rules.validate_aud = false,
        }
        rules.set_required_spec_claims(&required);
        Ok(Self {
            keys: KeySet::load(config, secret, &rules)?,
            leeway: TimeDelta::from_std(config.leeway.get()).context("auth.jwt.leeway")?,
        })
    }

    /// The token's claims when it is valid now. The header only ever selects among configured
    /// keys: `jku`, `x5u`, `x5c` and an embedded `jwk` are ignored, so a token can neither make
    /// the server fetch anything nor bring its own key.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            if names_unknown_algorithm(token) {
                TokenError::UnknownAlgorithm
            } else {
                error.into()
            }
        })?;
        if header.crit.is_some() {
            return Err(TokenError::CriticalHeader);
        }
        let key = self
            .keys
            .select(header.kid.as_deref())
            .ok_or(TokenError::UnknownKid)?;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &key.validation)?;
        match data.claims.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() => {}
            _ => return Err(TokenError::EmptySubject),
        }
        let now = Utc::now();
        let expires_at = time_claim(&data.claims, "exp")?
            .ok_or_else(|| refused(ErrorKind::MissingRequiredClaim("exp".into())))?;
        if expires_at + self.leeway < now {
            return Err(refused(ErrorKind::ExpiredSignature));
        }
        if time_claim(&data.claims, "nbf")?.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(refused(ErrorKind::ImmatureSignature));
        }
        Ok(Verified {
            claims: data.claims,
            expires_at,
        })
    }
}

fn refused(kind: ErrorKind) -> TokenError {
    TokenError::Invalid(kind.into())
}

/// A NumericDate claim (RFC 7519: seconds since the epoch, fractions allowed) as an instant.
/// Absent is `None`; anything but a finite number within chrono's range of dates is refused, so
/// a token can neither dodge its deadline with a value that reads as none nor overflow it.
fn time_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let malformed = || refused(ErrorKind::InvalidClaimFormat(name.into()));
    let seconds = value
        .as_f64()
        .filter(|s| s.is_finite())
        .ok_or_else(malformed)?;
    let whole = seconds.floor();
    // Outside this range the cast would saturate; chrono's own range is far narrower anyway.
    if !(-9.0e15..=9.0e15).contains(&whole) {
        return Err(malformed());
    }
    let nanos = (((seconds - whole) * 1e9).round() as u32).min(999_999_999);
    DateTime::from_timestamp(whole as i64, nanos)
        .map(Some)
        .ok_or_else(malformed)
}

/// Whether the header names an algorithm `jsonwebtoken` does not implement. Such a header fails to
/// parse like any garbage would; telling the two apart keeps the audit trail honest about probes
/// such as `alg: none`.
fn names_unknown_algorithm(token: &str) -> bool {
    let header = token
        .split('.')
        .next()
        .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
    header
        .as_ref()
        .and_then(|header| header.get("alg")?.as_str())
        .is_some_and(|alg| alg.parse::<Algorithm>().is_err())
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
#[path = "jwt_tests.rs"]
mod tests;
