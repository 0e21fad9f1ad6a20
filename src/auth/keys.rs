//! The keys tokens are verified with, loaded once at startup from `auth.jwt`: the HMAC secret, a
//! PEM public key, or a JWKS file. Every rule that can be checked without a token is checked here,
//! so a key that could never verify anything (or could verify the wrong thing) stops the server
//! instead of silently refusing, or accepting, tokens later.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use super::secret::HmacSecret;
use crate::config::Jwt as JwtConfig;

/// One verification key with the rules a token must pass under it. Its `validation.algorithms`
/// holds only algorithms of the key's own family, which is what makes key confusion impossible:
/// `jsonwebtoken` refuses a header `alg` outside that list before it touches the key.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    pub decoding: DecodingKey,
    pub validation: Validation,
}

/// The configured keys and how a token picks one.
#[derive(Clone)]
pub enum KeySet {
    /// The HMAC secret or a PEM public key: there is nothing to choose, so `kid` is irrelevant.
    One(Box<Key>),
    /// A JWKS: the token's `kid` names the key. Without a `kid` there is no safe guess unless the
    /// set holds a single key.
    ByKid(Vec<Key>),
}

impl KeySet {
    /// Loads the keys `config` names; `rules` are the claim checks every key shares.
    pub fn load(
        config: &JwtConfig,
        secret: &HmacSecret,
        rules: &Validation,
    ) -> anyhow::Result<Self> {
        let allowed = config
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|_| anyhow!("auth.jwt.algorithms: unknown algorithm `{a}`"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if allowed.is_empty() {
            bail!("auth.jwt.algorithms is empty, so no token could ever be accepted");
        }
        let make = |kid, decoding, fits: &[Algorithm]| Key {
            kid,
            decoding,
            validation: Validation {
                algorithms: allowed
                    .iter()
                    .copied()
                    .filter(|a| fits.contains(a))
                    .collect(),
                ..rules.clone()
            },
        };
        let (set, source) = match (&config.public_key_file, &config.jwks_file) {
            (Some(_), Some(_)) => bail!(
                "auth.jwt.public_key_file and auth.jwt.jwks_file are both set; configure one key source"
            ),
            (None, None) => {
                let hmac = AlgorithmFamily::Hmac.algorithms();
                let key = make(None, DecodingKey::from_secret(&secret.bytes), hmac);
                (
                    KeySet::One(Box::new(key)),
                    "the HMAC secret (auth.jwt.secret_env)",
                )
            }
            (Some(path), None) => {
                let (decoding, fits) = read_pem(path)
                    .and_then(|jwk| prepare(&jwk))
                    .with_context(|| format!("auth.jwt.public_key_file ({})", path.display()))?;
                (
                    KeySet::One(Box::new(make(None, decoding, &fits))),
                    "auth.jwt.public_key_file",
                )
            }
            (None, Some(path)) => {
                let name = format!("auth.jwt.jwks_file ({})", path.display());
                let mut keys = Vec::new();
                for jwk in read_jwks(path).with_context(|| name.clone())? {
                    let kid = jwk.common.key_id.clone();
                    let this = format!("{name}: key {}", kid.as_deref().unwrap_or("without kid"));
                    let (decoding, fits) = prepare(&jwk).with_context(|| this.clone())?;
                    let key = make(kid, decoding, &fits);
                    if key.validation.algorithms.is_empty() {
                        bail!("{this}: fits none of auth.jwt.algorithms (it can verify {fits:?})");
                    }
                    keys.push(key);
                }
                (KeySet::ByKid(keys), "auth.jwt.jwks_file")
            }
        };
        let keys = match &set {
            KeySet::One(key) => std::slice::from_ref(key.as_ref()),
            KeySet::ByKid(keys) => keys.as_slice(),
        };
        for alg in &allowed {
            if !keys.iter().any(|k| k.validation.algorithms.contains(alg)) {
                let why = if alg.family() == AlgorithmFamily::Hmac {
                    "; HMAC algorithms are never accepted with public keys, or a public key could be used as an HMAC secret"
                } else {
                    ""
                };
                bail!("auth.jwt.algorithms: {alg:?} cannot be verified with {source}{why}");
            }
        }
        Ok(set)
    }

    /// The key a token with header `kid` must be verified with, if any.
    pub fn select(&self, kid: Option<&str>) -> Option<&Key> {
        match (self, kid) {
            (KeySet::One(key), _) => Some(key.as_ref()),
            (KeySet::ByKid(keys), Some(kid)) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            (KeySet::ByKid(keys), None) => match keys.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
    }
}

/// A PEM public key as a JWK, so both key sources go through the same rules. A private key or a
/// certificate is refused rather than guessed at: either means the wrong file was configured.
fn read_pem(path: &Path) -> anyhow::Result<Jwk> {
    let pem = std::fs::read(path).context("cannot read the file")?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN PUBLIC KEY-----")
        && !text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        bail!(
            "not a PEM public key (expected -----BEGIN PUBLIC KEY-----; private keys and certificates do not belong here)"
        );
    }
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| anyhow!("not an RSA, EC or Ed25519 public key"))?;
    Jwk::from_decoding_key(&key, None).map_err(|e| anyhow!("invalid public key: {e}"))
}

/// The keys of a JWKS file. Ambiguity is a configuration error: two keys with one `kid`, or a key a
/// token could never name, would make key selection depend on file order.
fn read_jwks(path: &Path) -> anyhow::Result<Vec<Jwk>> {
    let text = std::fs::read_to_string(path).context("cannot read the file")?;
    let set: JwkSet =
        serde_json::from_str(&text).context("not a JWKS (a JSON object with a `keys` array)")?;
    if set.keys.is_empty() {
        bail!("holds no keys");
    }
    let mut kids = HashSet::new();
    for jwk in &set.keys {
        match &jwk.common.key_id {
            Some(kid) if !kids.insert(kid.as_str()) => bail!("two keys have kid {kid}"),
            None if set.keys.len() > 1 => {
                bail!("every key needs a kid when the set holds more than one")
            }
            _ => {}
        }
    }
    Ok(set.keys)
}

/// The algorithms a key can verify. Its type and curve decide the family; its own `alg`, when it
/// declares one, narrows that to exactly one, and must belong to the family.
fn algorithms_for(jwk: &Jwk) -> anyhow::Result<Vec<Algorithm>> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        bail!("is an encryption key (use: enc), not a signature key");
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .context("RSA modulus `n` is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            // RFC 7518 requires 2048 bits; the RSA backend refuses moduli over 4096 when verifying.
            if !(2048..=4096).contains(&bits) {
                bail!("RSA keys must have 2048 to 4096 bits, this one has about {bits}");
            }
            AlgorithmFamily::Rsa.algorithms()
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref other => bail!("EC curve {other:?} is not supported (use P-256 or P-384)"),
        },
        AlgorithmParameters::OctetKeyPair(okp) => {
            let x = URL_SAFE_NO_PAD.decode(&okp.x).unwrap_or_default();
            // The Ed25519 backend slices the first 32 bytes, so a shorter key must never reach it.
            if okp.curve != EllipticCurve::Ed25519 || x.len() != 32 {
                bail!("OKP keys must be Ed25519 with a 32-byte `x`");
            }
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            bail!(
                "is a symmetric secret; the HMAC secret comes from auth.jwt.secret_env, never from a key file"
            )
        }
        _ => bail!("has an unsupported key type (use RSA, EC or OKP)"),
    };
    match jwk.common.key_algorithm {
        None => Ok(family.to_vec()),
        Some(declared) => match Algorithm::try_from(declared) {
            Ok(alg) if family.contains(&alg) => Ok(vec![alg]),
            _ => bail!(
                "declares alg {declared}, which its key type cannot verify (it fits {family:?})"
            ),
        },
    }
}

/// The key ready for verification, with the algorithms it fits. Building a verifier for each of
/// them validates the key material (an EC point off its curve, say) now rather than on the first
/// token.
fn prepare(jwk: &Jwk) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    let algorithms = algorithms_for(jwk)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow!("invalid key material: {e}"))?;
    for alg in &algorithms {
        jsonwebtoken::crypto::verify("", b"", &key, *alg)
            .map_err(|e| anyhow!("invalid key material for {alg:?}: {e}"))?;
    }
    Ok((key, algorithms))
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
