//! Signatures on outbound deliveries, and their verification on inbound webhooks.
//!
//! Standard Webhooks (<https://www.standardwebhooks.com>) signs `"{id}.{timestamp}.{body}"` with
//! HMAC-SHA256, keyed with the base64 part of a `whsec_…` secret, and sends a space-separated list
//! of `v1,<base64>` entries. The plain HMAC form signs the raw body, keyed with the secret's text,
//! as the providers in our users' documents do. All comparisons are constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature is not valid {0}")]
    Malformed(&'static str),
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the webhook timestamp is outside the allowed tolerance of {0} seconds")]
    Timestamp(i64),
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`. A secret without the
/// prefix, or that is not base64, is used as raw bytes, so that any secret can sign.
pub fn standard_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| secret.as_bytes().to_vec())
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The Standard Webhooks signature (`v1,<base64>`) of one message.
///
/// ```
/// use tradehook::security::sign::standard_signature;
/// let sig = standard_signature(
///     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
///     "msg_p5jXN8AQM9LWM0D4loKWxJek",
///     1614265330,
///     br#"{"test": 2432232314}"#,
/// );
/// assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// ```
pub fn standard_signature(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(&standard_key(secret));
    m.update(msg_id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("v1,{}", STANDARD.encode(m.finalize().into_bytes()))
}

/// Verifies a Standard Webhooks request: the timestamp must be within `tolerance_secs` of `now`
/// and any `v1,` entry of the signature header must match.
pub fn verify_standard(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("(webhook-timestamp is not a number)"))?;
    if (now_secs - ts).abs() > tolerance_secs {
        return Err(VerifyError::Timestamp(tolerance_secs));
    }
    let key = standard_key(secret);
    let mut any_v1 = false;
    for entry in signature_header.split_whitespace() {
        let Some(b64) = entry.strip_prefix("v1,") else {
            continue;
        };
        any_v1 = true;
        let Ok(provided) = STANDARD.decode(b64) else {
            continue;
        };
        let mut m = mac(&key);
        m.update(msg_id.as_bytes());
        m.update(b".");
        m.update(ts.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        if m.verify_slice(&provided).is_ok() {
            return Ok(());
        }
    }
    if any_v1 {
        Err(VerifyError::Mismatch)
    } else {
        Err(VerifyError::Malformed("(no v1, entry)"))
    }
}

/// Lowercase hex HMAC-SHA256 of `body`, keyed with the bytes of `secret`.
///
/// ```
/// use tradehook::security::sign::hmac_hex;
/// assert_eq!(
///     hmac_hex(b"key", b"The quick brown fox jumps over the lazy dog"),
///     "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
/// );
/// ```
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, body))
}

/// HMAC-SHA256 of `body` keyed with `secret`.
pub fn hmac_sha256(secret: &[u8], body: &[u8]) -> [u8; 32] {
    let mut m = mac(secret);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// How an inbound HMAC signature is written.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// Verifies an HMAC-SHA256 of the raw body sent in a header, hex or base64, with or without a
/// `sha256=` prefix (GitHub style).
pub fn verify_hmac(
    secret: &[u8],
    body: &[u8],
    provided: &str,
    encoding: SignatureEncoding,
) -> Result<(), VerifyError> {
    let text = provided.trim();
    let text = text.strip_prefix("sha256=").unwrap_or(text);
    let bytes = match encoding {
        SignatureEncoding::Hex => {
            hex::decode(text).map_err(|_| VerifyError::Malformed("hexadecimal"))?
        }
        SignatureEncoding::Base64 => STANDARD
            .decode(text)
            .map_err(|_| VerifyError::Malformed("base64"))?,
    };
    let mut m = mac(secret);
    m.update(body);
    m.verify_slice(&bytes).map_err(|_| VerifyError::Mismatch)
}

/// Constant-time equality of two secrets (their lengths are not hidden).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of the Standard Webhooks reference libraries.
    const VECTORS: [(&str, &str, i64, &str, &str); 2] = [
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ];

    #[test]
    fn standard_signatures_match_the_spec_vectors() {
        for (secret, id, ts, body, expected) in VECTORS {
            assert_eq!(
                standard_signature(secret, id, ts, body.as_bytes()),
                expected
            );
            let header = format!("v1,bm90IGl0 {expected}");
            verify_standard(
                secret,
                id,
                &ts.to_string(),
                &header,
                body.as_bytes(),
                ts,
                300,
            )
            .unwrap();
        }
    }

    #[test]
    fn standard_signatures_agree_with_the_official_crate() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let now = jiff::Timestamp::now().as_second();
        let body = br#"{"type":"entry","data":{"pair":"BTC/USDT"}}"#;
        let ours = standard_signature(secret, "msg_1", now, body);
        let oracle = standardwebhooks::Webhook::new(secret).unwrap();
        assert_eq!(oracle.sign("msg_1", now, body).unwrap(), ours);

        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", ours.parse().unwrap());
        oracle.verify(body, &headers).unwrap();
    }

    #[test]
    fn standard_verification_names_what_is_wrong() {
        let (secret, id, ts, body, sig) = VECTORS[0];
        let tampered = body.replace("test_user", "attacker");
        assert_eq!(
            verify_standard(
                secret,
                id,
                &ts.to_string(),
                sig,
                tampered.as_bytes(),
                ts,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_standard(
                secret,
                id,
                &ts.to_string(),
                sig,
                body.as_bytes(),
                ts + 301,
                300
            ),
            Err(VerifyError::Timestamp(300))
        );
        assert!(matches!(
            verify_standard(secret, id, "soon", sig, body.as_bytes(), ts, 300),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn hmac_accepts_hex_base64_and_the_sha256_prefix() {
        let body =
            br#"{"symbol":"TEAM1/TEAM2","side":"BACK","price":2.5,"stake":1.0,"client_ref":"123"}"#;
        let hex_sig = hmac_hex(b"replace_with_secret", body);
        let b64 = STANDARD.encode(hex::decode(&hex_sig).unwrap());
        let key = b"replace_with_secret";
        verify_hmac(key, body, &hex_sig, SignatureEncoding::Hex).unwrap();
        verify_hmac(
            key,
            body,
            &format!("sha256={hex_sig}"),
            SignatureEncoding::Hex,
        )
        .unwrap();
        verify_hmac(key, body, &b64, SignatureEncoding::Base64).unwrap();
        assert_eq!(
            verify_hmac(b"other", body, &hex_sig, SignatureEncoding::Hex),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_hmac(key, body, "zz", SignatureEncoding::Hex),
            Err(VerifyError::Malformed("hexadecimal"))
        );
    }
}
