//! Building and running the hub: the store, the registry, the dispatcher and the HTTP server,
//! started in that order and stopped in the reverse one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::deliver;
use crate::dispatch;
use crate::domain::{self, Scope};
use crate::ingest::submit::Ingestor;
use crate::metrics::Metrics;

use crate::registry::Registry;
use crate::service;
use crate::store::postgres::{self, PgStore};
use crate::store::sqlite::{self, SqliteStore};
use crate::store::{Change, Store};

/// A built hub, bound to its address, ready to run.
pub struct Application {
    listener: TcpListener,
    /// The certificate served over HTTPS, when TLS is on.
    certificate: Option<Arc<crate::tls::FileCertificate>>,
    /// Plain HTTP answered with redirects to HTTPS (`--http-redirect`).
    redirect: Option<TcpListener>,
    state: AppState,
    dispatcher: tokio::task::JoinHandle<()>,
    stop_dispatch: CancellationToken,
    /// Stops the heartbeat, once the dispatcher has finished with what it held.
    stop_heartbeat: CancellationToken,
    /// An admin token generated on this start (no token existed): to be shown once.
    pub generated_token: Option<String>,
}

/// Opens the store the database URL names: an SQLite file (its key file beside it by
/// default), or PostgreSQL (whose key every node must be given).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if postgres::is_postgres_url(&config.database) {
        let key_file = config.secret_key_file.clone();
        if config.secret_key.is_none() && key_file.is_none() {
            anyhow::bail!(
                "a PostgreSQL database needs --secret-key or --secret-key-file, the same on every node"
            );
        }
        let cipher = crate::security::crypto::Cipher::load(
            config.secret_key.as_deref(),
            key_file.as_deref().unwrap_or(std::path::Path::new("")),
        )?;
        let store = PgStore::open(&config.database, cipher)
            .await
            .context("opening the PostgreSQL database")?;
        return Ok(Arc::new(store));
    }
    let path = sqlite::path_of(&config.database)
        .with_context(|| format!("unsupported database URL {:?}", config.database))?;
    let beside: std::path::PathBuf = {
        let mut file = path.clone().into_os_string();
        file.push(".key");
        file.into()
    };
    let key_file = config.secret_key_file.clone().unwrap_or(beside.clone());
    let has_data = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
    let key_exists = key_file.exists();
    // A key file beside a missing or emptied database: the hub's data is gone (a restore gone
    // wrong, a truncated file, a wrong path). Starting empty without a word would hide it.
    if config.secret_key.is_none() && key_file == beside && key_exists && !has_data {
        anyhow::bail!(
            "the database {} is missing or empty, but its key file {} exists: this hub's data \
             may have been lost, or the path is wrong. Restore the database; or, to start a new \
             one deliberately, move the key file away (keep it: it opens the old database's \
             secrets)",
            path.display(),
            key_file.display()
        );
    }
    let creates_key = config.secret_key.is_none() && !key_exists;
    let cipher = crate::security::crypto::Cipher::load(config.secret_key.as_deref(), &key_file)?;
    let store = match SqliteStore::open(&path, cipher) {
        Ok(store) => store,
        Err(e) if creates_key => {
            // A database with sealed secrets whose key file is missing: the new key opens
            // nothing, and must not stay to be mistaken for the right one.
            let _ = std::fs::remove_file(&key_file);
            return Err(anyhow::Error::new(e).context(format!(
                "opening the database {}: its key file {} is missing; restore it, or give \
                 the key with --secret-key",
                path.display(),
                key_file.display()
            )));
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("opening the database {}", path.display()))
            );
        }
    };
    // Before the first request: a resend that arrives first thing must still be recognised,
    // and the first signal after a start should not wait for the index.
    let window = i64::try_from(config.dedupe_window.as_millis()).unwrap_or(i64::MAX);
    store
        .load_dedupe(domain::now_ms().saturating_sub(window))
        .await
        .context("reading the dedupe keys of the stored events")?;
    Ok(Arc::new(store))
}

impl Application {
    /// Opens the store, loads the configuration, starts the dispatcher and binds the listener
    /// (port 0 picks a free port, as tests do).
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config).await?;
        let generated_token =
            service::tokens::bootstrap(&*store, Scope::Hub, config.api_token.as_deref()).await?;
        let rules = service::Rules {
            allow_targets: config.allow_targets.clone(),
            https_only: config.https_only,
        };
        service::endpoints::declare(&*store, Scope::Hub, &rules, &config.endpoints).await?;
        let registry = Arc::new(Registry::load(store.clone()).await?);
        let metrics = Arc::new(Metrics::default());

        let file_limit =
            crate::server::raise_file_limit().context("reading the open-file limit")?;
        let cap = crate::server::connection_cap(config.connections.max_connections, file_limit);
        if cap < config.connections.max_connections {
            tracing::info!(
                file_limit,
                max_connections = cap,
                "the open-file limit holds fewer connections than asked for"
            );
            config.connections.max_connections = cap;
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        config.listen = listener.local_addr()?;
        let certificate = match &config.tls {
            Some(crate::config::TlsSource::Files { cert, key }) => {
                let certificate = crate::tls::FileCertificate::load(cert, key)?;
                metrics.tls_not_after.store(
                    certificate.not_after(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                Some(certificate)
            }
            Some(crate::config::TlsSource::Acme(_)) | None => None,
        };
        let redirect = match config.http_redirect {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("listening on {address} (--http-redirect)"))?,
            ),
            None => None,
        };
        if !config.trusted_proxies.networks.is_empty() {
            tracing::info!(proxies = ?config.trusted_proxies.networks, header = ?config.trusted_proxies.header, "client addresses are read from these proxies' forwarding header");
        }
        if !config.allow_targets.is_empty() {
            tracing::info!(targets = ?config.allow_targets, "deliveries allowed to these private networks");
        }

        let stop_dispatch = CancellationToken::new();
        config.dispatch.worker = !config.no_worker;
        let (notices, mut disabled) = tokio::sync::mpsc::unbounded_channel();
        let (order_notices, mut order_outcomes) = tokio::sync::mpsc::unbounded_channel();
        let outbound = deliver::Outbound::new(config.allow_targets.clone(), config.https_only)?;
        let executor = Arc::new(crate::orders::Executor::new(
            store.clone(),
            order_notices,
            outbound.client.clone(),
        ));
        let (dispatch, dispatcher) = dispatch::spawn(
            store.clone(),
            registry.clone(),
            Arc::new(crate::orders::Routed {
                http: Arc::new(outbound),
                orders: executor.clone(),
            }),
            metrics.clone(),
            config.dispatch.clone(),
            notices,
            stop_dispatch.clone(),
        );
        // On a shared database, the other nodes must know this one is alive before it holds
        // any delivery, and go on knowing it while it runs.
        let stop_heartbeat = CancellationToken::new();
        if let Some(every) = store.heartbeat_every() {
            store
                .heartbeat(dispatch.node())
                .await
                .context("registering this node with the database")?;
            tokio::spawn(heartbeat(
                store.clone(),
                dispatch.node().clone(),
                every,
                stop_heartbeat.clone(),
            ));
        }
        let ingestor = Arc::new(Ingestor {
            quotas: Default::default(),
            store: store.clone(),
            registry: registry.clone(),
            dispatch: dispatch.clone(),
            metrics: metrics.clone(),
            dedupe_window: config.dedupe_window,
        });
        tokio::spawn(prune(
            store.clone(),
            registry.clone(),
            config.retention,
            config.prune_interval,
            stop_dispatch.clone(),
        ));
        if !config.no_worker {
            tokio::spawn(settle_given_up(
                executor.clone(),
                config.order_check_interval,
                stop_dispatch.clone(),
            ));
        }
        // A disabled endpoint is announced through the hub itself, so an operator's own chat
        // endpoint hears of it.
        let announcer = ingestor.clone();
        tokio::spawn(async move {
            while let Some(notice) = disabled.recv().await {
                if let Err(e) = announcer.announce_disabled(notice).await {
                    tracing::error!(error = %e, "could not announce a disabled endpoint");
                }
            }
        });
        // So is every order's outcome: a chat endpoint subscribed to `order.*` hears of fills.
        let announcer = ingestor.clone();
        tokio::spawn(async move {
            while let Some(notice) = order_outcomes.recv().await {
                let crate::orders::Notice {
                    event_type,
                    data,
                    dedupe_key,
                } = notice;
                if let Err(e) = announcer.announce(event_type, data, dedupe_key).await {
                    tracing::error!(error = %e, event_type, "could not announce an order's outcome");
                }
            }
        });
        // Other nodes on the same database: their new work wakes this node's dispatcher at once,
        // and their configuration changes reload this node's registry.
        if let Some(mut changes) = store.changes() {
            let (dispatch, registry) = (dispatch.clone(), registry.clone());
            tokio::spawn(async move {
                loop {
                    match changes.recv().await {
                        Ok(Change::Work) => dispatch.wake(),
                        Ok(Change::Paused { endpoint_id, until }) => {
                            dispatch.pause(endpoint_id, until);
                        }
                        Ok(Change::Config)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            if let Err(e) = registry.reload().await {
                                tracing::warn!(error = %e, "could not reload the configuration");
                            }
                            dispatch.wake();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        let services = service::Services {
            store: store.clone(),
            registry: registry.clone(),
            ingestor: ingestor.clone(),
            dispatch: dispatch.clone(),
            metrics: metrics.clone(),
            orders: executor,
            rules,
        };
        services.declare_sources(&config.sources).await?;
        let state = AppState::new(api::Shared {
            inbound: Arc::new(api::InboundLimits::new(
                config.max_inbound,
                config.inbound_rate,
            )),
            store,
            registry,
            ingestor,
            dispatch,
            metrics,
            config: Arc::new(config),
            services,
            sessions: Default::default(),
        });
        Ok(Self {
            listener,
            certificate,
            redirect,
            state,
            dispatcher,
            stop_dispatch,
            stop_heartbeat,
            generated_token,
        })
    }

    /// The store the hub runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.state.store
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.config.listen
    }

    /// Serves until `shutdown` fires, then stops in order: no new requests (requests in
    /// progress finish and their events are stored), then the dispatcher (attempts in flight
    /// finish or are given back), then the store (queued writes reach the disk).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = &self.state.config;
        let mut serving = crate::server::Serving {
            limits: config.connections,
            tls: None,
            proxies: Arc::new(config.trusted_proxies.clone()),
        };
        if let Some(certificate) = &self.certificate {
            serving.tls = Some(crate::tls::server_config(
                certificate.clone(),
                &[b"http/1.1"],
            )?);
            tokio::spawn(
                certificate
                    .clone()
                    .watch(self.state.metrics.clone(), shutdown.clone()),
            );
        }
        if let Some(crate::config::TlsSource::Acme(settings)) = &config.tls {
            let resolver =
                crate::tls::acme::start(settings, self.state.metrics.clone(), shutdown.clone())
                    .await?;
            // The ACME server's TLS-ALPN-01 check comes to this port, asking for `acme-tls/1`.
            serving.tls = Some(crate::tls::server_config(
                resolver,
                &[b"http/1.1", crate::tls::acme::ACME_TLS_ALPN],
            )?);
            tracing::info!(domains = ?settings.domains, directory = %settings.directory, cache = %settings.cache.display(), "HTTPS with certificates from ACME");
        }
        let redirecting = self.redirect.map(|listener| {
            let router =
                crate::server::https_redirect(config.listen.port(), config.public_url.clone());
            let plain = crate::server::Serving {
                tls: None,
                ..serving.clone()
            };
            tokio::spawn(crate::server::serve(
                listener,
                router,
                plain,
                self.state.metrics.clone(),
                shutdown.clone(),
            ))
        });
        // The dashboard is served beside the API, and not by a worker-only node.
        let router = if self.state.config.no_api {
            api::router(self.state.clone())
        } else {
            api::router(self.state.clone()).merge(crate::ui::router(self.state.clone()))
        };
        crate::server::serve(
            self.listener,
            router,
            serving,
            self.state.metrics.clone(),
            shutdown,
        )
        .await;
        if let Some(redirecting) = redirecting {
            let _ = redirecting.await;
        }
        tracing::info!("no longer accepting requests; stopping deliveries");
        self.stop_dispatch.cancel();
        if let Err(e) = self.dispatcher.await {
            tracing::error!(error = %e, "the dispatcher task failed");
        }
        self.stop_heartbeat.cancel();
        if let Err(e) = self.state.store.leave(self.state.dispatch.node()).await {
            tracing::warn!(error = %e, "could not tell the other nodes this one stopped");
        }
        self.state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The outbound HTTP client: rustls on ring, no redirects, pooled keep-alive connections.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    // Another part of the process may have installed it already; either way one is in place.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")
}

/// Tells the database every `every` that this node is alive, until stopped.
async fn heartbeat(
    store: Arc<dyn Store>,
    node: Arc<str>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.heartbeat(&node).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the node's heartbeat reaches the database again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "the node's heartbeat failed; other nodes may take over its deliveries");
            }
            Err(_) => {}
        }
    }
}

/// Asks the venues, every `every`, for the exchange orders whose delivery gave up with their
/// outcome unknown, until `stop`.
async fn settle_given_up(
    executor: Arc<crate::orders::Executor>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match executor.settle_given_up().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(orders = n, "orders whose delivery gave up were settled"),
            Err(e) => tracing::warn!(error = %e, "could not ask the venues for unsettled orders"),
        }
    }
}

/// Deletes finished events older than the retention, a small batch at a time so that
/// ingest never waits long behind it, until stopped.
async fn prune(
    store: Arc<dyn Store>,
    registry: Arc<crate::registry::Registry>,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    const BATCH: u32 = 500;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = domain::now_ms() - retention.as_millis() as i64;
        let mut pruned = 0;
        loop {
            if stop.is_cancelled() {
                return;
            }
            match store.prune(before, BATCH).await {
                Ok(n) => {
                    pruned += n;
                    if n < BATCH as u64 {
                        break;
                    }
                    // Let waiting writes in between batches.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning old events failed");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(events = pruned, "old events pruned");
        }
        // Portal links and sessions that have expired: kept, they would pile up in the store
        // and in every node's registry.
        match store.prune_expired(domain::now_ms()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(rows = n, "expired portal links and sessions pruned");
                if let Err(e) = registry.reload().await {
                    tracing::warn!(error = %e, "reloading after pruning failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning expired portal access failed"),
        }
        // Applications that keep their deliveries for less long.
        for app in registry.applications() {
            let Some(keep) = app.settings.quotas.retention else {
                continue;
            };
            let before = domain::now_ms().saturating_sub((keep as i64).saturating_mul(1000));
            loop {
                if stop.is_cancelled() {
                    return;
                }
                match store.prune_application(&app.id, before, BATCH).await {
                    Ok(n) if n == BATCH as u64 => tokio::task::yield_now().await,
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(application = %app.id, deliveries = n, "old deliveries pruned");
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(application = %app.id, error = %e, "pruning an application's deliveries failed");
                        break;
                    }
                }
            }
        }
    }
}
