//! Security: what proves a message and what keeps a secret, used by ingest (verifying
//! senders), delivery (signing) and rendering (DingTalk's signed URL) alike, so that none of
//! them reaches into another for it.
//!
//! - [`sign`]: Standard Webhooks and plain HMAC signatures, made and verified in constant time;
//! - [`crypto`]: secrets sealed at rest (ChaCha20-Poly1305) with the hub's key, and API
//!   tokens kept as hashes;
//! - [`redact`]: the secrets endpoint URLs and headers carry, masked wherever they leave the hub;
//! - [`session`]: the dashboard's signed-in browsers, each bound to its API token.

pub mod crypto;
pub mod redact;
pub mod session;
pub mod sign;
