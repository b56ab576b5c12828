//! Applications' daily event quotas: once an application was sent its `events_per_day`
//! events in a UTC day, its endpoints get no more that day (the event is still stored and
//! delivered to everyone else). Each node counts what it ingests, in memory: a restart starts
//! the day's count again, and several nodes each allow the quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::Millis;
use crate::model::Endpoint;
use crate::registry::Registry;

const DAY_MS: Millis = 86_400_000;

/// Events counted per application in the current UTC day.
#[derive(Default)]
pub struct DailyQuotas {
    counts: Mutex<HashMap<String, (i64, u64)>>,
}

/// The applications an event was counted against, to give back if it is not stored.
#[derive(Debug, Default)]
pub struct Reserved(Vec<String>);

impl DailyQuotas {
    /// Keeps the endpoints whose application may still be sent an event today, counting the
    /// event once against each such application; answers them, what was counted, and the
    /// applications left out.
    pub fn admit(
        &self,
        registry: &Registry,
        endpoints: Vec<Arc<Endpoint>>,
        now: Millis,
    ) -> (Vec<Arc<Endpoint>>, Reserved, Vec<String>) {
        if endpoints.iter().all(|e| e.application_id.is_none()) {
            return (endpoints, Reserved::default(), Vec::new());
        }
        let day = now.div_euclid(DAY_MS);
        let mut counts = self.counts.lock().expect("quota lock");
        let mut verdicts: HashMap<&str, bool> = HashMap::new();
        let mut reserved = Vec::new();
        let mut refused = Vec::new();
        for app in endpoints.iter().filter_map(|e| e.application_id.as_deref()) {
            if verdicts.contains_key(app) {
                continue;
            }
            let quota = registry
                .application(app)
                .and_then(|a| a.settings.quotas.events_per_day);
            let admitted = match quota {
                None => true,
                Some(quota) => {
                    let count = counts.entry(app.to_owned()).or_insert((day, 0));
                    if count.0 != day {
                        *count = (day, 0);
                    }
                    if count.1 < quota {
                        count.1 += 1;
                        reserved.push(app.to_owned());
                        true
                    } else {
                        refused.push(app.to_owned());
                        false
                    }
                }
            };
            verdicts.insert(app, admitted);
        }
        let kept = endpoints
            .iter()
            .filter(|e| e.application_id.as_deref().is_none_or(|app| verdicts[app]))
            .cloned()
            .collect();
        (kept, Reserved(reserved), refused)
    }

    /// Gives back what [`DailyQuotas::admit`] counted for an event that was not stored (a
    /// duplicate, or a failed write).
    pub fn release(&self, reserved: Reserved, now: Millis) {
        let day = now.div_euclid(DAY_MS);
        let mut counts = self.counts.lock().expect("quota lock");
        for app in reserved.0 {
            if let Some(count) = counts.get_mut(&app)
                && count.0 == day
            {
                count.1 = count.1.saturating_sub(1);
            }
        }
    }
}
