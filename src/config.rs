//! Configuration: defaults, then a TOML file, then environment variables, then flags.
//!
//! Every setting has a flag, a `TRADEHOOK_…` environment variable and a key in the file; clap
//! resolves flag over environment, and the file fills what neither gave.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::Deserialize;

use crate::dispatch::DispatchConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_DATABASE: &str = "sqlite://tradehook.db";
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest dedupe window: a resend comes within minutes, and the SQLite store's dedupe index
/// holds at most about 49 days.
pub const MAX_DEDUPE_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The settings the hub runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: String,
    /// An admin API token to accept (stored hashed on start).
    pub api_token: Option<String>,
    /// Private or loopback networks deliveries may go to.
    pub allow_targets: Vec<IpNet>,
    /// Deliveries only over https.
    pub https_only: bool,
    /// Run no delivery workers: this node takes ingest and API calls; others deliver.
    pub no_worker: bool,
    /// Serve no ingest or management API (health and metrics only): a delivery worker.
    pub no_api: bool,
    /// The key that encrypts stored secrets (base64 of 32 bytes)…
    pub secret_key: Option<String>,
    /// …or the file holding it (default: the database path with `.key` added), created with
    /// a new key on first start.
    pub secret_key_file: Option<PathBuf>,
    /// The base URL senders reach this hub at (for `ingest_url`); defaults to the listen address.
    pub public_url: Option<String>,
    pub dedupe_window: Duration,
    /// Requests per client address on the ingest routes (`/in/…`); none: no limit.
    pub inbound_rate: Option<crate::domain::RateLimit>,
    /// Ingest requests in progress at once; more are answered 503 at once.
    pub max_inbound: usize,
    /// How long a sender may take to send its request body.
    pub body_timeout: Duration,
    /// Connections to the HTTP server: how long a request's headers may take, how long a
    /// connection may sit idle, and how many may be open.
    pub connections: ConnectionLimits,
    /// Finished events, with their deliveries and attempts, are deleted after this long.
    pub retention: Duration,
    /// How often old events are looked for.
    pub prune_interval: Duration,
    /// How often exchange orders whose delivery gave up with their outcome unknown are asked
    /// of their venue.
    pub order_check_interval: Duration,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub dispatch: DispatchConfig,
    /// Endpoints declared in the config file, created or brought up to date on start.
    pub endpoints: Vec<DeclaredEndpoint>,
    /// Sources declared in the config file, created or brought up to date on start.
    pub sources: Vec<DeclaredSource>,
    /// HTTPS: where the certificate comes from; none serves plain HTTP.
    pub tls: Option<TlsSource>,
    /// A second address that answers plain HTTP with a redirect to HTTPS.
    pub http_redirect: Option<SocketAddr>,
    /// Proxies whose forwarding header gives the client's address.
    pub trusted_proxies: crate::proxy::TrustedProxies,
}

/// Where the HTTPS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files, read again when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Obtained and renewed from an ACME server (Let's Encrypt).
    Acme(crate::tls::acme::AcmeSettings),
}

/// Bounds on the HTTP server's connections, so that connections that never become requests
/// cannot use up the process's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte (or the connection's start) to its last header.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once; at the cap, the longest-idle one is closed to make room.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// An `[[endpoints]]` entry of the config file.
pub use crate::service::endpoints::Declared as DeclaredEndpoint;
/// A `[[sources]]` entry of the config file.
pub use crate::service::sources::Declared as DeclaredSource;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            database: DEFAULT_DATABASE.into(),
            api_token: None,
            allow_targets: Vec::new(),
            https_only: false,
            no_worker: false,
            no_api: false,
            secret_key: None,
            secret_key_file: None,
            public_url: None,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            inbound_rate: Some(crate::domain::RateLimit {
                count: 100,
                per_ms: 1000,
            }),
            max_inbound: 1024,
            body_timeout: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            retention: DEFAULT_RETENTION,
            prune_interval: Duration::from_secs(60),
            order_check_interval: Duration::from_secs(30),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            log_format: LogFormat::Pretty,
            dispatch: DispatchConfig::default(),
            endpoints: Vec::new(),
            sources: Vec::new(),
            tls: None,
            http_redirect: None,
            trusted_proxies: Default::default(),
        }
    }
}

/// The `serve` flags; each falls back to its environment variable, then to the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8787]
    #[arg(long, env = "TRADEHOOK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Database URL [default: sqlite://tradehook.db]
    #[arg(long, env = "TRADEHOOK_DATABASE")]
    pub database: Option<String>,
    /// TOML configuration file
    #[arg(long, env = "TRADEHOOK_CONFIG")]
    pub config: Option<PathBuf>,
    /// An admin API token to accept; without one, a token is generated on first start
    #[arg(long, env = "TRADEHOOK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Let deliveries reach this private or loopback network (repeatable)
    #[arg(
        long = "allow-target",
        env = "TRADEHOOK_ALLOW_TARGET",
        value_delimiter = ','
    )]
    pub allow_target: Vec<String>,
    /// Refuse endpoints and deliveries that are not https
    #[arg(long, env = "TRADEHOOK_HTTPS_ONLY")]
    pub https_only: bool,
    /// Run no delivery workers (an API-only node of several on PostgreSQL)
    #[arg(long, env = "TRADEHOOK_NO_WORKER", conflicts_with = "no_api")]
    pub no_worker: bool,
    /// Serve only /healthz, /readyz and /metrics (a worker-only node of several on PostgreSQL)
    #[arg(long, env = "TRADEHOOK_NO_API")]
    pub no_api: bool,
    /// Key encrypting stored secrets, base64 of 32 bytes [default: from the key file]
    #[arg(long, env = "TRADEHOOK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// File holding that key, created on first start [default: <database>.key]
    #[arg(long, env = "TRADEHOOK_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Disable an endpoint after this many consecutive failed attempts (0: never) [default: 50]
    #[arg(long, env = "TRADEHOOK_AUTO_DISABLE_FAILURES")]
    pub auto_disable_failures: Option<u32>,
    /// …spanning at least this long (e.g. 24h) [default: 24h]
    #[arg(long, env = "TRADEHOOK_AUTO_DISABLE_AFTER")]
    pub auto_disable_after: Option<String>,
    /// How long a node owns the deliveries it claimed (renewed while it works on them); a
    /// node that stops sending heartbeats loses them sooner (6s) [default: 60s]
    #[arg(long, env = "TRADEHOOK_LEASE")]
    pub lease: Option<String>,
    /// Public base URL of this hub, used in ingest URLs
    #[arg(long, env = "TRADEHOOK_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long a repeated event is recognised as a duplicate (e.g. 24h, 30m, 90s)
    #[arg(long, env = "TRADEHOOK_DEDUPE_WINDOW")]
    pub dedupe_window: Option<String>,
    /// Requests per client address to the ingest routes, e.g. 100/s, or "none" [default: 100/s]
    #[arg(long, env = "TRADEHOOK_INBOUND_RATE")]
    pub inbound_rate: Option<String>,
    /// Ingest requests in progress at once; more are answered 503 [default: 1024]
    #[arg(long, env = "TRADEHOOK_MAX_INBOUND")]
    pub max_inbound: Option<usize>,
    /// How long a sender may take to send its body (e.g. 10s) [default: 10s]
    #[arg(long, env = "TRADEHOOK_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// How long a client may take to send a request's headers (e.g. 5s) [default: 5s]
    #[arg(long, env = "TRADEHOOK_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// How long an idle keep-alive connection is kept open (e.g. 60s) [default: 60s]
    #[arg(long, env = "TRADEHOOK_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Connections open at once; at the cap the longest-idle one is closed [default: 10000]
    #[arg(long, env = "TRADEHOOK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long finished events, deliveries and attempts are kept (e.g. 30d) [default: 30d]
    #[arg(long, env = "TRADEHOOK_RETENTION")]
    pub retention: Option<String>,
    /// Largest inbound body accepted, in bytes [default: 262144]
    #[arg(long, env = "TRADEHOOK_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Log format
    #[arg(long, env = "TRADEHOOK_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve HTTPS with this PEM certificate chain (read again when it changes)
    #[arg(long, env = "TRADEHOOK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, env = "TRADEHOOK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also listen here for plain HTTP and redirect it to HTTPS (e.g. 0.0.0.0:80)
    #[arg(long, env = "TRADEHOOK_HTTP_REDIRECT")]
    pub http_redirect: Option<SocketAddr>,
    /// A reverse proxy (CIDR) whose forwarding header gives the client's address; repeatable
    #[arg(
        long = "trusted-proxy",
        env = "TRADEHOOK_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,
    /// The header the trusted proxies write the client's address into
    #[arg(long, env = "TRADEHOOK_FORWARDED_HEADER", value_enum)]
    pub forwarded_header: Option<crate::proxy::ForwardedHeader>,
    /// Serve HTTPS with a certificate for this domain from ACME (Let's Encrypt's staging
    /// directory unless --acme-production); repeatable
    #[arg(
        long = "acme-domain",
        env = "TRADEHOOK_ACME_DOMAIN",
        value_delimiter = ','
    )]
    pub acme_domain: Vec<String>,
    /// The ACME account's contact address (expiry notices)
    #[arg(long, env = "TRADEHOOK_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// Let's Encrypt's production directory (certificates browsers and TradingView trust)
    #[arg(long, env = "TRADEHOOK_ACME_PRODUCTION")]
    pub acme_production: bool,
    /// Another ACME server's directory URL
    #[arg(
        long,
        env = "TRADEHOOK_ACME_DIRECTORY",
        conflicts_with = "acme_production"
    )]
    pub acme_directory: Option<String>,
    /// Where the ACME account and certificates are kept [default: acme/ beside the database]
    #[arg(long, env = "TRADEHOOK_ACME_CACHE")]
    pub acme_cache: Option<PathBuf>,
    /// Trust this PEM authority for the ACME server's own HTTPS (a private ACME server)
    #[arg(long, env = "TRADEHOOK_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,
}

/// The file's keys: the flag names with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database: Option<String>,
    api_token: Option<String>,
    #[serde(default)]
    allow_target: Vec<String>,
    #[serde(default)]
    https_only: bool,
    secret_key: Option<String>,
    secret_key_file: Option<PathBuf>,
    auto_disable_failures: Option<u32>,
    auto_disable_after: Option<String>,
    lease: Option<String>,
    public_url: Option<String>,
    dedupe_window: Option<String>,
    retention: Option<String>,
    inbound_rate: Option<String>,
    max_inbound: Option<usize>,
    body_timeout: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_body_bytes: Option<usize>,
    log_format: Option<LogFormat>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    http_redirect: Option<SocketAddr>,
    #[serde(default)]
    trusted_proxy: Vec<String>,
    forwarded_header: Option<crate::proxy::ForwardedHeader>,
    #[serde(default)]
    acme_domain: Vec<String>,
    acme_email: Option<String>,
    #[serde(default)]
    acme_production: bool,
    acme_directory: Option<String>,
    acme_cache: Option<PathBuf>,
    acme_ca_file: Option<PathBuf>,
    #[serde(default)]
    endpoints: Vec<toml::Table>,
    #[serde(default)]
    sources: Vec<toml::Table>,
}

/// Reads the `[[endpoints]]` entries of the file.
/// The `[[endpoints]]` or `[[sources]]` (`kind`) of the file: each one's name, and its other
/// settings as the API takes them.
fn declared(
    kind: &str,
    example: &str,
    tables: Vec<toml::Table>,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    for (i, mut table) in tables.into_iter().enumerate() {
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            _ => bail!("{kind}s[{i}]: a declared {kind} needs a name (name = \"{example}\")"),
        };
        let ok = (1..=48).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            bail!("{kind}s[{i}]: name {name:?}: 1 to 48 lowercase letters, digits, - or _");
        }
        if out.iter().any(|(n, _)| *n == name) {
            bail!("{kind}s: the name {name:?} is declared twice");
        }
        let settings = serde_json::to_value(&table)
            .with_context(|| format!("{kind} {name:?}: settings must be plain values"))?;
        out.push((name, settings));
    }
    Ok(out)
}

impl ServeArgs {
    /// Resolves the final configuration.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("in config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let targets = if self.allow_target.is_empty() {
            file.allow_target
        } else {
            self.allow_target
        };
        let allow_targets = targets
            .iter()
            .map(|t| crate::ingest::parse_cidr(t).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()
            .context("--allow-target")?;
        let dedupe_window = match self.dedupe_window.or(file.dedupe_window) {
            Some(text) => parse_duration(&text).context("--dedupe-window")?,
            None => defaults.dedupe_window,
        };
        if dedupe_window > MAX_DEDUPE_WINDOW {
            bail!(
                "--dedupe-window ({}s) must be at most 30d ({}s)",
                dedupe_window.as_secs(),
                MAX_DEDUPE_WINDOW.as_secs()
            );
        }
        let database = self.database.or(file.database).unwrap_or(defaults.database);
        let shared = crate::store::postgres::is_postgres_url(&database);
        if crate::store::sqlite::path_of(&database).is_none() && !shared {
            bail!("--database {database:?}: expected sqlite://PATH or postgres://…");
        }
        if (self.no_worker || self.no_api) && !shared {
            bail!(
                "--no-worker and --no-api split the work between nodes sharing a PostgreSQL \
                 database; an SQLite hub is one node and does both"
            );
        }
        let retention = match self.retention.or(file.retention) {
            Some(text) => parse_duration(&text).context("--retention")?,
            None => defaults.retention,
        };
        if retention < dedupe_window {
            bail!(
                "--retention ({}s) must be at least the dedupe window ({}s): a resend must \
                 still find its original",
                retention.as_secs(),
                dedupe_window.as_secs()
            );
        }
        let inbound_rate = match self.inbound_rate.or(file.inbound_rate) {
            Some(text) if text.trim() == "none" => None,
            Some(text) => Some(
                crate::domain::RateLimit::parse(&text)
                    .map_err(anyhow::Error::msg)
                    .context("--inbound-rate")?,
            ),
            None => defaults.inbound_rate,
        };
        let body_timeout = match self.body_timeout.or(file.body_timeout) {
            Some(text) => parse_duration(&text).context("--body-timeout")?,
            None => defaults.body_timeout,
        };
        let mut connections = defaults.connections;
        if let Some(text) = self.header_timeout.or(file.header_timeout) {
            connections.header_timeout = parse_duration(&text).context("--header-timeout")?;
        }
        if let Some(text) = self.idle_timeout.or(file.idle_timeout) {
            connections.idle_timeout = parse_duration(&text).context("--idle-timeout")?;
        }
        if connections.header_timeout.is_zero() || connections.idle_timeout.is_zero() {
            bail!("--header-timeout and --idle-timeout must be more than 0s");
        }
        if let Some(n) = self.max_connections.or(file.max_connections) {
            if n < 16 {
                bail!("--max-connections must be at least 16");
            }
            connections.max_connections = n;
        }
        let max_inbound = self
            .max_inbound
            .or(file.max_inbound)
            .unwrap_or(defaults.max_inbound);
        if max_inbound == 0 {
            bail!("--max-inbound must be at least 1");
        }
        let endpoints = declared("endpoint", "discord-alerts", file.endpoints)?
            .into_iter()
            .map(|(name, settings)| DeclaredEndpoint { name, settings })
            .collect();
        let sources = declared("source", "tradingview", file.sources)?
            .into_iter()
            .map(|(name, settings)| DeclaredSource { name, settings })
            .collect();
        let mut dispatch = defaults.dispatch.clone();
        if let Some(n) = self.auto_disable_failures.or(file.auto_disable_failures) {
            dispatch.auto_disable_failures = n;
        }
        if let Some(text) = self.lease.or(file.lease) {
            dispatch.lease = parse_duration(&text).context("--lease")?;
            if dispatch.lease < std::time::Duration::from_secs(2) {
                bail!("--lease {text:?}: at least 2s (it is renewed every third of it)");
            }
        }
        if let Some(text) = self.auto_disable_after.or(file.auto_disable_after) {
            dispatch.auto_disable_after = parse_duration(&text).context("--auto-disable-after")?;
        }
        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsSource::Files { cert, key }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together: give both, or neither"),
        };
        let acme_domains = if self.acme_domain.is_empty() {
            file.acme_domain
        } else {
            self.acme_domain
        };
        let tls = match (tls, acme_domains.is_empty()) {
            (tls, true) => tls,
            (Some(_), false) => {
                bail!("--acme-domain and --tls-cert are two sources of one certificate: choose one")
            }
            (None, false) => {
                let mut domains = Vec::new();
                for domain in acme_domains {
                    let domain = domain.trim().trim_end_matches('.').to_lowercase();
                    let valid = !domain.is_empty()
                        && domain.len() <= 253
                        && domain.contains('.')
                        && domain.split('.').all(|l| {
                            !l.is_empty()
                                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                    if !valid {
                        bail!("--acme-domain {domain:?}: a DNS name such as hooks.example.com");
                    }
                    domains.push(domain);
                }
                let production = self.acme_production || file.acme_production;
                let directory = match self.acme_directory.or(file.acme_directory) {
                    Some(url) if production => {
                        bail!("--acme-directory {url:?} and --acme-production: choose one")
                    }
                    Some(url) => url,
                    None if production => crate::tls::acme::LETS_ENCRYPT_PRODUCTION.to_owned(),
                    None => crate::tls::acme::LETS_ENCRYPT_STAGING.to_owned(),
                };
                let cache = self.acme_cache.or(file.acme_cache).unwrap_or_else(|| {
                    crate::store::sqlite::path_of(&database)
                        .and_then(|p| p.parent().map(|d| d.join("acme")))
                        .unwrap_or_else(|| PathBuf::from("acme"))
                });
                Some(TlsSource::Acme(crate::tls::acme::AcmeSettings {
                    domains,
                    email: self.acme_email.or(file.acme_email).into_iter().collect(),
                    directory,
                    cache,
                    ca_file: self.acme_ca_file.or(file.acme_ca_file),
                }))
            }
        };
        let http_redirect = self.http_redirect.or(file.http_redirect);
        if http_redirect.is_some() && tls.is_none() {
            bail!(
                "--http-redirect sends plain HTTP to HTTPS: it needs --tls-cert and --tls-key, \
                 or --acme-domain"
            );
        }
        let proxies = if self.trusted_proxy.is_empty() {
            file.trusted_proxy
        } else {
            self.trusted_proxy
        };
        let trusted_proxies = crate::proxy::TrustedProxies {
            networks: proxies
                .iter()
                .map(|t| crate::ingest::parse_cidr(t).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()
                .context("--trusted-proxy")?,
            header: self
                .forwarded_header
                .or(file.forwarded_header)
                .unwrap_or_default(),
        };
        Ok(Config {
            sources,
            tls,
            http_redirect,
            trusted_proxies,
            endpoints,
            listen: self.listen.or(file.listen).unwrap_or(defaults.listen),
            database,
            api_token: self.api_token.or(file.api_token),
            allow_targets,
            https_only: self.https_only || file.https_only,
            no_worker: self.no_worker,
            no_api: self.no_api,
            secret_key: self.secret_key.or(file.secret_key),
            secret_key_file: self.secret_key_file.or(file.secret_key_file),
            public_url: self.public_url.or(file.public_url),
            dedupe_window,
            retention,
            prune_interval: defaults.prune_interval,
            order_check_interval: defaults.order_check_interval,
            inbound_rate,
            max_inbound,
            body_timeout,
            connections,
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            dispatch,
        })
    }
}

/// Parses `90`, `90s`, `30m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 90s, 30m, 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("{text:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn the_file_fills_what_flags_and_environment_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tradehook.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndatabase = \"sqlite:///tmp/x.db\"\nallow_target = [\"10.0.0.0/8\"]\ndedupe_window = \"1h\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            database: Some("sqlite://other.db".into()),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.database, "sqlite://other.db");
        assert_eq!(
            config.allow_targets,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(config.dedupe_window, Duration::from_secs(3600));
    }

    #[test]
    fn a_dedupe_window_longer_than_30_days_is_refused() {
        let resolve = |window: &str| {
            ServeArgs {
                dedupe_window: Some(window.into()),
                retention: Some("60d".into()),
                ..Default::default()
            }
            .resolve()
        };
        assert_eq!(
            resolve("30d").unwrap().dedupe_window,
            Duration::from_secs(30 * 86400)
        );
        let err = resolve("31d").unwrap_err();
        assert!(
            format!("{err:#}").contains("--dedupe-window (2678400s) must be at most 30d"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:1\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("listne"), "{err:#}");
    }
}
