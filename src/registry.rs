//! The configuration the hot path reads on every request, kept in memory.
//!
//! Ingest needs the source of each request and the endpoints subscribed to each event type;
//! the API needs to check a token on each call. Reading them from the store every time would
//! put a query on the hot path, so they are loaded once and reloaded after every change made
//! through this node. Readers get an `Arc` snapshot and never wait for a writer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::{EventType, Scope};
use crate::model::{Application, Endpoint, Labels, Source, TokenScope};
use crate::store::{Result, Store};

#[derive(Default, Clone)]
struct Snapshot {
    endpoints: Vec<Arc<Endpoint>>,
    endpoints_by_id: HashMap<String, Arc<Endpoint>>,
    sources: HashMap<String, Arc<Source>>,
    tokens: HashMap<String, Caller>,
    /// By id and by uid.
    applications: HashMap<String, Arc<Application>>,
}

/// Who an API token speaks for, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub access: TokenScope,
    /// When the token stops working, if it does (a portal session).
    pub expires_at: Option<crate::domain::Millis>,
    /// `Scope::Hub` for the operator's tokens, the application's for its keys.
    pub scope: Scope,
}

/// Adds an application to a map by id and by uid.
fn index_application(map: &mut HashMap<String, Arc<Application>>, application: Application) {
    let application = Arc::new(application);
    if let Some(uid) = &application.uid {
        map.insert(uid.clone(), application.clone());
    }
    map.insert(application.id.clone(), application);
}

/// Cached applications, endpoints, sources and token hashes.
pub struct Registry {
    store: Arc<dyn Store>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// One reload at a time. Two at once could finish in the other order, the one that read
    /// the store first putting its older view in place last: a source created by the API at
    /// the moment the dispatcher disabled an endpoint would then answer 404 until the next
    /// change.
    reloading: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Loads everything from the store.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self> {
        let registry = Self {
            store,
            snapshot: RwLock::new(Arc::default()),
            reloading: tokio::sync::Mutex::new(()),
        };
        registry.reload().await?;
        Ok(registry)
    }

    /// Reads everything again: called after every change. When it returns, the snapshot in
    /// place holds every change written before it was called.
    pub async fn reload(&self) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().await;
        let endpoints: Vec<Arc<Endpoint>> = self
            .store
            .list_endpoints(Scope::Hub)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut sources = HashMap::new();
        for source in self.store.list_sources(Scope::Hub).await? {
            let source = Arc::new(source);
            sources.insert(source.id.clone(), source.clone());
            sources.insert(source.name.clone(), source);
        }
        let tokens = self
            .store
            .list_tokens(Scope::Hub)
            .await?
            .into_iter()
            .map(|t| {
                let scope = match &t.application_id {
                    Some(app) => Scope::application(app),
                    None => Scope::Hub,
                };
                (
                    t.hash,
                    Caller {
                        access: t.scope,
                        expires_at: t.expires_at,
                        scope,
                    },
                )
            })
            .collect();
        let mut applications = HashMap::new();
        for app in self.store.list_applications(Scope::Hub).await? {
            index_application(&mut applications, app);
        }
        let snapshot = Snapshot {
            endpoints_by_id: endpoints
                .iter()
                .map(|e| (e.id.clone(), e.clone()))
                .collect(),
            endpoints,
            sources,
            tokens,
            applications,
        };
        *self.snapshot.write().expect("registry lock") = Arc::new(snapshot);
        Ok(())
    }

    /// Puts an endpoint just written to the store in place of its old self (or adds it),
    /// without reading everything again: with thousands of endpoints (an application each), a
    /// whole reload per change would make creating them quadratic.
    pub async fn put_endpoint(&self, endpoint: Endpoint) {
        let _one_at_a_time = self.reloading.lock().await;
        let mut next = (*self.current()).clone();
        let endpoint = Arc::new(endpoint);
        match next
            .endpoints
            .binary_search_by(|e| e.id.as_str().cmp(&endpoint.id))
        {
            Ok(at) => next.endpoints[at] = endpoint.clone(),
            Err(at) => next.endpoints.insert(at, endpoint.clone()),
        }
        next.endpoints_by_id.insert(endpoint.id.clone(), endpoint);
        *self.snapshot.write().expect("registry lock") = Arc::new(next);
    }

    /// Takes out an endpoint just deleted from the store.
    pub async fn drop_endpoint(&self, id: &str) {
        let _one_at_a_time = self.reloading.lock().await;
        let mut next = (*self.current()).clone();
        next.endpoints.retain(|e| e.id != id);
        next.endpoints_by_id.remove(id);
        *self.snapshot.write().expect("registry lock") = Arc::new(next);
    }

    /// Puts an application just written to the store in place of its old self (or adds it).
    pub async fn put_application(&self, application: Application) {
        let _one_at_a_time = self.reloading.lock().await;
        let mut next = (*self.current()).clone();
        next.applications.retain(|_, a| a.id != application.id);
        index_application(&mut next.applications, application);
        *self.snapshot.write().expect("registry lock") = Arc::new(next);
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("registry lock").clone()
    }

    /// Enabled endpoints that want an event of `event_type` with `labels`.
    pub fn subscribers(&self, event_type: &EventType, labels: &Labels) -> Vec<Arc<Endpoint>> {
        self.current()
            .endpoints
            .iter()
            .filter(|e| e.enabled && e.wants(event_type, labels))
            .cloned()
            .collect()
    }

    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.current().endpoints.clone()
    }

    pub fn endpoint(&self, id: &str) -> Option<Arc<Endpoint>> {
        self.current().endpoints_by_id.get(id).cloned()
    }

    /// A source by id or by name.
    pub fn source(&self, id_or_name: &str) -> Option<Arc<Source>> {
        self.current().sources.get(id_or_name).cloned()
    }

    pub fn sources(&self) -> Vec<Arc<Source>> {
        let mut all: Vec<_> = self
            .current()
            .sources
            .iter()
            .filter(|(key, s)| **key == s.id)
            .map(|(_, s)| s.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Who the token whose SHA-256 is `hash` speaks for, if it exists.
    pub fn caller(&self, hash: &str) -> Option<Caller> {
        self.current().tokens.get(hash).cloned()
    }

    /// An application by id or by uid.
    pub fn application(&self, id_or_uid: &str) -> Option<Arc<Application>> {
        self.current().applications.get(id_or_uid).cloned()
    }

    /// Every application, by id.
    pub fn applications(&self) -> Vec<Arc<Application>> {
        let mut all: Vec<_> = self
            .current()
            .applications
            .iter()
            .filter(|(key, a)| **key == a.id)
            .map(|(_, a)| a.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}
