//! Signed express-session cookies: `s:<sid>.<signature>`, where the signature is HMAC-SHA256 of
//! the session id in standard base64 without padding (cookie-signature), URL-encoded in the
//! cookie. What the session id leads to is [`super::session`]'s business.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

use super::session::SessionError;

type HmacSha256 = Hmac<Sha256>;

/// Browsers keep at most 4096 bytes per cookie; anything longer did not come from Express.
pub(super) const MAX_COOKIE_BYTES: usize = 4096;

/// Signs `sid` as express-session does: `s:<sid>.<base64 HMAC-SHA256(secret, sid), unpadded>`.
/// The cookie value is this string URL-encoded (`encodeURIComponent`).
pub fn sign(sid: &str, secret: impl AsRef<[u8]>) -> String {
    format!(
        "s:{sid}.{}",
        STANDARD_NO_PAD.encode(tag(sid, secret.as_ref()))
    )
}

fn mac(secret: &[u8], sid: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(sid.as_bytes());
    mac
}

fn tag(sid: &str, secret: &[u8]) -> Vec<u8> {
    mac(secret, sid).finalize().into_bytes().to_vec()
}

/// The raw (still URL-encoded) value of cookie `name` from every `Cookie` header, parsed as the
/// `cookie` npm package does: pairs split at `;`, names and values trimmed, one pair of surrounding
/// double quotes removed, and the first occurrence of a name wins.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| header.to_str().ok())
        .flat_map(|header| header.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            if key.trim_matches([' ', '\t']) != name {
                return None;
            }
            let value = value.trim_matches([' ', '\t']);
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some(value.to_string())
        })
}

/// The session id in `cookie_value` when its signature matches one of `secrets`.
pub(super) fn unsign(cookie_value: &str, secrets: &[Vec<u8>]) -> Result<String, SessionError> {
    if cookie_value.len() > MAX_COOKIE_BYTES {
        return Err(SessionError::Malformed);
    }
    let decoded = percent_decode_str(cookie_value)
        .decode_utf8()
        .map_err(|_| SessionError::Malformed)?;
    let signed = decoded.strip_prefix("s:").ok_or(SessionError::Malformed)?;
    let (sid, signature) = signed.rsplit_once('.').ok_or(SessionError::Malformed)?;
    if sid.is_empty() {
        return Err(SessionError::Malformed);
    }
    // Strict decoding (no padding, no stray trailing bits) keeps this equivalent to
    // cookie-signature's comparison of the exact signature text.
    let tag = STANDARD_NO_PAD
        .decode(signature)
        .map_err(|_| SessionError::BadSignature)?;
    // Every secret is tried, without stopping at the first match, so timing does not tell which
    // one (if any) matched.
    let matched = secrets.iter().fold(false, |matched, secret| {
        mac(secret, sid).verify_slice(&tag).is_ok() | matched
    });
    if matched {
        Ok(sid.to_string())
    } else {
        Err(SessionError::BadSignature)
    }
}
