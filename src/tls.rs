//! HTTPS in the binary: certificates from PEM files, picked up again when the files change
//! (a certbot renewal) without a restart, and each certificate's expiry for `/metrics` and
//! `/readyz`.
//!
//! The server's rustls configuration asks a [`FileCertificate`] for the certificate of each
//! handshake, so a reload takes effect for the next connection, and connections open on the
//! old certificate carry on.

pub mod acme;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the certificate files are read again to see whether they changed.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The rustls server configuration for a certificate resolver: HTTP/1.1 over TLS 1.2 or 1.3,
/// on the ring provider the rest of the binary uses.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("choosing TLS versions")?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate and key read from PEM files, read again when they change.
#[derive(Debug)]
pub struct FileCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
    /// The served certificate's `notAfter`, in unix seconds.
    not_after: AtomicI64,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' bytes it was made from: a change of either is a reload.
    files: (Vec<u8>, Vec<u8>),
}

impl FileCertificate {
    /// Reads the certificate chain and its key; an error says which file is wrong and how.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Self>> {
        let files = read_pair(cert_path, key_path)?;
        let (key, not_after) = certified_key(&files, cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Loaded { key, files }),
            not_after: AtomicI64::new(not_after),
        }))
    }

    /// When the served certificate expires, in unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Reads the files again and serves what they hold if it changed and is a valid pair:
    /// `Ok(true)` when the certificate was replaced. A pair caught half-written (a new
    /// certificate beside the old key) is an error, and the old certificate stays.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let files = read_pair(&self.cert_path, &self.key_path)?;
        if self.current.read().expect("certificate lock").files == files {
            return Ok(false);
        }
        let (key, not_after) = certified_key(&files, &self.cert_path, &self.key_path)?;
        *self.current.write().expect("certificate lock") = Loaded { key, files };
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(true)
    }

    /// Reloads every [`RELOAD_EVERY`] until `stop`, keeping `metrics`' expiry up to date,
    /// logging each change once and each failed read once per content.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Ok(true) => {
                    last_error.clear();
                    metrics
                        .tls_not_after
                        .store(self.not_after(), Ordering::Relaxed);
                    tracing::info!(
                        cert = %self.cert_path.display(),
                        expires = %crate::domain::rfc3339(self.not_after() * 1000),
                        "the TLS certificate changed on disk and is now served"
                    );
                }
                Ok(false) => last_error.clear(),
                Err(e) => {
                    let text = format!("{e:#}");
                    if text != last_error {
                        tracing::warn!(error = %text, "the TLS certificate files changed but cannot be used yet; still serving the previous certificate");
                        last_error = text;
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for FileCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").key.clone())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let cert = std::fs::read(cert_path)
        .with_context(|| format!("reading the TLS certificate {}", cert_path.display()))?;
    let key = std::fs::read(key_path)
        .with_context(|| format!("reading the TLS key {}", key_path.display()))?;
    Ok((cert, key))
}

/// The served form of a PEM certificate chain and key, and the first certificate's expiry.
fn certified_key(
    (cert, key): &(Vec<u8>, Vec<u8>),
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<(Arc<CertifiedKey>, i64)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert_path.display()))?;
    let Some(first) = chain.first() else {
        bail!(
            "{}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            cert_path.display()
        );
    };
    let not_after = not_after(first)
        .with_context(|| format!("{}: the certificate cannot be read", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(key).with_context(|| {
        format!(
            "{}: no private key in it (expected PKCS#8, PKCS#1 or SEC1 PEM)",
            key_path.display()
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .with_context(|| format!("{}: a key type TLS cannot use", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    if let Err(e) = certified.keys_match() {
        bail!(
            "{} and {} do not belong together: {e}",
            cert_path.display(),
            key_path.display()
        );
    }
    Ok((Arc::new(certified), not_after))
}

/// A certificate's `notAfter`, in unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> anyhow::Result<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_half_written_renewal_keeps_the_served_certificate_until_the_pair_matches() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (cert, key) = pair();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let served = FileCertificate::load(&cert_path, &key_path).unwrap();
        assert!(!served.reload().unwrap(), "nothing changed");
        let before = served.current.read().unwrap().key.clone();

        // The new certificate is written first: it does not go with the old key.
        let (new_cert, new_key) = pair();
        std::fs::write(&cert_path, &new_cert).unwrap();
        let error = format!("{:#}", served.reload().unwrap_err());
        assert!(error.contains("do not belong together"), "{error}");
        assert!(Arc::ptr_eq(&before, &served.current.read().unwrap().key));

        // Then its key: the pair is served.
        std::fs::write(&key_path, &new_key).unwrap();
        assert!(served.reload().unwrap());
        assert!(!Arc::ptr_eq(&before, &served.current.read().unwrap().key));
    }

    #[test]
    fn a_wrong_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (cert, key) = pair();
        let missing = format!(
            "{:#}",
            FileCertificate::load(&cert_path, &key_path).unwrap_err()
        );
        assert!(missing.contains("reading the TLS certificate"), "{missing}");
        assert!(missing.contains("cert.pem"), "{missing}");

        // The two files swapped.
        std::fs::write(&cert_path, &key).unwrap();
        std::fs::write(&key_path, &cert).unwrap();
        let swapped = format!(
            "{:#}",
            FileCertificate::load(&cert_path, &key_path).unwrap_err()
        );
        assert!(swapped.contains("no certificate in it"), "{swapped}");

        std::fs::write(&cert_path, &cert).unwrap();
        let no_key = format!(
            "{:#}",
            FileCertificate::load(&cert_path, &key_path).unwrap_err()
        );
        assert!(no_key.contains("no private key in it"), "{no_key}");
        assert!(no_key.contains("key.pem"), "{no_key}");
        // The key's bytes never appear in an error.
        assert!(!no_key.contains("PRIVATE KEY"));
    }
}
