//! Secrets at rest: endpoint, source and DingTalk signing secrets are stored encrypted with
//! ChaCha20-Poly1305 under a key from the configuration or a key file.
//!
//! A sealed value reads `enc:v1:<base64 of nonce ‖ ciphertext>`. Values without the prefix
//! (written before encryption existed) are read as they are and sealed on start.
//!
//! ```
//! use tradehook::security::crypto::Cipher;
//! let cipher = Cipher::new([7; 32]);
//! let sealed = cipher.seal("whsec_secret");
//! assert!(sealed.starts_with("enc:v1:") && !sealed.contains("whsec_secret"));
//! assert_eq!(cipher.open(&sealed).unwrap(), "whsec_secret");
//! assert!(Cipher::new([8; 32]).open(&sealed).is_err());
//! ```

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";

/// Seals and opens stored secrets.
#[derive(Clone)]
pub struct Cipher {
    aead: ChaCha20Poly1305,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// A stored secret could not be opened: the key is not the one it was sealed with.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "a stored secret cannot be decrypted with this key (give the key it was written with: \
     --secret-key or its key file)"
)]
pub struct WrongKey;

impl Cipher {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// The key given as base64 (`--secret-key`), or else the key file, created with a new
    /// random key (mode 0600) when it does not exist.
    pub fn load(configured: Option<&str>, key_file: &Path) -> anyhow::Result<Self> {
        if let Some(text) = configured {
            return Ok(Self::new(decode_key(text).context("--secret-key")?));
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                Ok(Self::new(decode_key(&text).with_context(|| {
                    format!("key file {}", key_file.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = crate::domain::random_bytes();
                write_key_file(key_file, &STANDARD.encode(key))?;
                tracing::info!(file = %key_file.display(), "created the key that encrypts stored secrets; back it up with the database");
                Ok(Self::new(key))
            }
            Err(e) => Err(e).with_context(|| format!("reading key file {}", key_file.display())),
        }
    }

    /// Seals a secret for storage.
    pub fn seal(&self, plain: &str) -> String {
        let nonce_bytes: [u8; 12] = crate::domain::random_bytes();
        let sealed = self
            .aead
            .encrypt(Nonce::from_slice(&nonce_bytes), plain.as_bytes())
            .expect("encrypting in memory cannot fail");
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a stored secret; a value that was never sealed is returned as it is.
    pub fn open(&self, stored: &str) -> Result<String, WrongKey> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let bytes = STANDARD.decode(encoded).map_err(|_| WrongKey)?;
        if bytes.len() < 12 {
            return Err(WrongKey);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| WrongKey)?;
        String::from_utf8(plain).map_err(|_| WrongKey)
    }

    /// Whether a stored value is sealed.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

fn decode_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text.trim())
        .context("the key must be base64")?;
    match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(key) => Ok(key),
        Err(_) => bail!(
            "the key must be 32 bytes (44 base64 characters), not {}",
            bytes.len()
        ),
    }
}

fn write_key_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// SHA-256 of an API token, hex: how tokens are stored and looked up (a token is random and
/// long, so a fast hash is enough; only its hash is kept).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
