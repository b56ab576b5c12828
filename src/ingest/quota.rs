//! Applications' daily event quotas: once an application was sent its `events_per_day`
//! events in a UTC day, its endpoints get no more that day (the event is still stored and
//! delivered to everyone else). On a shared database every node counts against one figure
//! in the store. A hub on its own counts in memory, and takes up each application's count
//! for the day from the deliveries it has stored the first time it needs it, so a restart
//! does not start the day again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::Millis;
use crate::model::Endpoint;
use crate::registry::Registry;
use crate::store::{Result, Store};

const DAY_MS: Millis = 86_400_000;

/// Events counted per application in the current UTC day, when the store does not keep them.
#[derive(Default)]
pub struct DailyQuotas {
    counts: Mutex<HashMap<String, (i64, u64)>>,
}

/// The applications an event was counted against, to give back if it is not stored.
#[derive(Debug, Default)]
pub struct Reserved {
    day: i64,
    applications: Vec<String>,
}

/// What [`DailyQuotas::admit`] decided for one event.
pub struct Admitted {
    /// The endpoints that may be sent the event.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub reserved: Reserved,
    /// The applications left out, over their quota.
    pub refused: Vec<String>,
}

impl DailyQuotas {
    /// Keeps the endpoints whose application may still be sent an event today, counting the
    /// event once against each such application.
    pub async fn admit(
        &self,
        store: &dyn Store,
        registry: &Registry,
        endpoints: Vec<Arc<Endpoint>>,
        now: Millis,
    ) -> Result<Admitted> {
        let day = now.div_euclid(DAY_MS);
        let mut quotas: Vec<(String, u64)> = Vec::new();
        for app in endpoints.iter().filter_map(|e| e.application_id.as_deref()) {
            if quotas.iter().any(|(a, _)| a == app) {
                continue;
            }
            if let Some(quota) = registry
                .application(app)
                .and_then(|a| a.settings.quotas.events_per_day)
            {
                quotas.push((app.to_owned(), quota));
            }
        }
        let mut reserved = Reserved {
            day,
            applications: Vec::new(),
        };
        let mut refused = Vec::new();
        for (app, quota) in quotas {
            let admitted = if store.shares_limits() {
                store.take_quota(&app, day, quota).await?
            } else {
                if !self.counting(&app, day) {
                    let sent = store.events_sent_since(&app, day * DAY_MS).await?;
                    self.begin(&app, day, sent);
                }
                self.take(&app, day, quota)
            };
            if admitted {
                reserved.applications.push(app);
            } else {
                refused.push(app);
            }
        }
        let endpoints = if refused.is_empty() {
            endpoints
        } else {
            endpoints
                .into_iter()
                .filter(|e| {
                    e.application_id
                        .as_deref()
                        .is_none_or(|app| !refused.iter().any(|r| r == app))
                })
                .collect()
        };
        Ok(Admitted {
            endpoints,
            reserved,
            refused,
        })
    }

    /// Whether `app`'s count for `day` is held here.
    fn counting(&self, app: &str, day: i64) -> bool {
        let counts = self.counts.lock().expect("quota lock");
        counts.get(app).is_some_and(|(d, _)| *d == day)
    }

    /// Starts `app`'s count for `day` at what the store says was sent, unless an event
    /// admitted meanwhile has started it.
    fn begin(&self, app: &str, day: i64, sent: u64) {
        let mut counts = self.counts.lock().expect("quota lock");
        let count = counts.entry(app.to_owned()).or_insert((day, sent));
        if count.0 != day {
            *count = (day, sent);
        }
    }

    fn take(&self, app: &str, day: i64, quota: u64) -> bool {
        let mut counts = self.counts.lock().expect("quota lock");
        let count = counts.entry(app.to_owned()).or_insert((day, 0));
        if count.0 != day {
            *count = (day, 0);
        }
        if count.1 < quota {
            count.1 += 1;
            true
        } else {
            false
        }
    }

    /// Gives back what [`DailyQuotas::admit`] counted for an event that was not stored (a
    /// duplicate, or a failed write).
    pub async fn release(&self, store: &dyn Store, reserved: Reserved) {
        for app in reserved.applications {
            if store.shares_limits() {
                if let Err(e) = store.return_quota(&app, reserved.day).await {
                    tracing::warn!(application = %app, error = %e, "giving back a quota failed");
                }
            } else if let Some(count) = self.counts.lock().expect("quota lock").get_mut(&app)
                && count.0 == reserved.day
            {
                count.1 = count.1.saturating_sub(1);
            }
        }
    }
}
