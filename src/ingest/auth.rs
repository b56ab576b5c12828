//! How a source's senders prove who they are: an HMAC of the body, a Standard Webhooks
//! signature, a shared token, or nothing.

use super::{Inbound, Rejection};
pub use crate::model::source::AuthSpec;
use crate::security::sign;

/// The clock skew a Standard Webhooks sender may have, as in the reference libraries.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

impl AuthSpec {
    /// Whether this kind of authentication needs a secret.
    pub fn needs_secret(&self) -> bool {
        !matches!(self, AuthSpec::None)
    }

    /// Verifies what can be verified before the body is parsed. For a token that travels in
    /// the body, returns the field to check once it is parsed.
    pub(super) fn verify<'s>(
        &'s self,
        secret: &str,
        req: &Inbound<'_>,
    ) -> Result<Option<&'s str>, Rejection> {
        match self {
            AuthSpec::None => Ok(None),
            AuthSpec::Hmac { header, encoding } => {
                let given = header_str(req, header)
                    .ok_or_else(|| Rejection::MissingSignature(header.clone()))?;
                sign::verify_hmac(secret.as_bytes(), req.body, given, *encoding)
                    .map(|()| None)
                    .map_err(Rejection::InvalidSignature)
            }
            AuthSpec::StandardWebhooks => {
                let id = header_str(req, "webhook-id")
                    .ok_or_else(|| Rejection::MissingSignature("webhook-id".into()))?;
                let ts = header_str(req, "webhook-timestamp")
                    .ok_or_else(|| Rejection::MissingSignature("webhook-timestamp".into()))?;
                let sig = header_str(req, "webhook-signature")
                    .ok_or_else(|| Rejection::MissingSignature("webhook-signature".into()))?;
                sign::verify_standard(
                    secret,
                    id,
                    ts,
                    sig,
                    req.body,
                    req.now / 1000,
                    TIMESTAMP_TOLERANCE_SECS,
                )
                .map(|()| None)
                .map_err(Rejection::InvalidSignature)
            }
            AuthSpec::Token { field } => match req.path_token.or(req.query_token) {
                Some(given) => check_token(secret, given).map(|()| None),
                None => field.as_deref().map(Some).ok_or(Rejection::MissingToken),
            },
        }
    }
}

/// A header's value; an empty one is no value (an empty `webhook-id` proves nothing).
fn header_str<'a>(req: &'a Inbound<'_>, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
}

/// Compares a given token with the secret in constant time.
pub(super) fn check_token(secret: &str, given: &str) -> Result<(), Rejection> {
    if secret.is_empty() || !sign::secrets_equal(secret.as_bytes(), given.as_bytes()) {
        return Err(Rejection::InvalidToken);
    }
    Ok(())
}
