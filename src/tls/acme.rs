//! Certificates from an ACME server (Let's Encrypt by default), obtained and renewed by the
//! hub itself with the TLS-ALPN-01 challenge on its own HTTPS port: nothing else needs port
//! 80, and no proxy is needed. The account and the certificates are cached in a directory,
//! so a restart serves the cached certificate at once and asks for nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::StreamExt as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_acme::caches::DirCache;
use rustls_acme::{AccountCache, AcmeConfig, CertCache};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Let's Encrypt's staging directory: certificates no browser trusts, and generous limits,
/// for trying a setup out. `--acme-production` uses the real one.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = rustls_acme::acme::ACME_TLS_ALPN_NAME;

/// What to ask for, and from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    /// For the ACME server's notices (expiry, problems), as `mailto:` contacts.
    pub email: Vec<String>,
    pub directory: String,
    /// Where the account key and the certificates are kept.
    pub cache: PathBuf,
    /// An authority to trust, besides the system's, for the ACME server's own HTTPS (a
    /// private ACME server).
    pub ca_file: Option<PathBuf>,
}

/// How long a start waits for a cached certificate to be read before serving.
const CACHED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The server certificate resolver that serves what ACME obtained (and answers the
/// TLS-ALPN-01 challenges), and the task that obtains and renews it until `stop`. When the
/// cache holds a certificate, it is in place when this returns: a restart serves it to its
/// first connection.
pub async fn start(
    settings: &AcmeSettings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<Arc<rustls_acme::ResolvesServerCertAcme>> {
    std::fs::create_dir_all(&settings.cache).with_context(|| {
        format!(
            "creating the ACME cache directory {}",
            settings.cache.display()
        )
    })?;
    let client = client_config(settings.ca_file.as_deref())?;
    let mut state = AcmeConfig::new_with_client_config(&settings.domains, client)
        .contact(settings.email.iter().map(|e| format!("mailto:{e}")))
        .directory(&settings.directory)
        .cache(MeteredCache {
            dir: DirCache::new(settings.cache.clone()),
            metrics,
        })
        .state();
    let resolver = state.resolver();
    let domains = settings.domains.join(", ");
    let cached = std::fs::read_dir(&settings.cache)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("cached_cert_"));
    let (first, first_seen) = tokio::sync::oneshot::channel();
    let mut first = Some(first);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = state.next() => event,
            };
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
            match event {
                Some(Ok(ok)) => tracing::info!(domains = %domains, event = ?ok, "ACME"),
                // Errors are retried by the state itself, with a growing pause.
                Some(Err(e)) => {
                    tracing::warn!(domains = %domains, error = ?e, "ACME: no certificate yet");
                }
                None => return,
            }
        }
    });
    // The first thing the state does is read the cache: a cached certificate is then served.
    if cached && tokio::time::timeout(CACHED_WAIT, first_seen).await.is_err() {
        tracing::warn!(domains = %settings.domains.join(", "), "ACME: the cached certificate was not read within 5 s; serving without it until it is");
    }
    Ok(resolver)
}

/// The rustls client configuration for talking to the ACME server: the system's authorities,
/// and `ca_file`'s.
fn client_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{}: no certificate in it",
            path.display()
        );
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable authority", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("choosing TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The directory cache, which also tells the metrics when each certificate it loads or
/// stores expires (the served one is always one of those).
struct MeteredCache {
    dir: DirCache<PathBuf>,
    metrics: Arc<Metrics>,
}

impl MeteredCache {
    fn note(&self, pem: &[u8]) {
        let first = CertificateDer::pem_slice_iter(pem).find_map(Result::ok);
        if let Some(not_after) = first.and_then(|c| super::not_after(&c).ok()) {
            self.metrics
                .tls_not_after
                .store(not_after, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl CertCache for MeteredCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let cert = self.dir.load_cert(domains, directory_url).await?;
        if let Some(pem) = &cert {
            self.note(pem);
        }
        Ok(cert)
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.note(cert);
        self.dir.store_cert(domains, directory_url, cert).await
    }
}

#[async_trait]
impl AccountCache for MeteredCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        self.dir.load_account(contact, directory_url).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.dir
            .store_account(contact, directory_url, account)
            .await
    }
}
