//! Applications (provider mode): a provider's customers, each with its own API keys, endpoints
//! and deliveries. Only the operator (the hub's scope) creates, changes and deletes them; an
//! application's key sees its own application and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;

use super::{Error, Result, Scope, Services, checked};
use crate::domain::{self, FieldError, RateLimit, Signing, prefix};
use crate::model::{ApiToken, Application, ApplicationSettings, PortalLink, Quotas, TokenScope};

/// How long a portal session lasts: 8 hours.
pub const PORTAL_SESSION_SECS: i64 = 8 * 3600;
use crate::store::StoreError;

/// The fields of an application a client sends: all of them to create one (only `name` is
/// required), any of them to change one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplicationFields {
    /// What the operator calls it.
    #[schema(example = "Acme Capital")]
    pub name: Option<String>,
    /// The provider's own id for this customer, usable wherever the id is; `null` removes it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>, example = "customer-1042")]
    pub uid: Option<Option<String>>,
    /// Strings the provider keeps with it; replaced whole.
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "super::object")]
    pub quotas: Option<Quotas>,
    /// At most this many API calls with its keys, such as `600/min`; `null` removes it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>, example = "600/min")]
    pub rate_limit: Option<Option<RateLimit>>,
    /// How endpoints made through the subscription API (`/api/webhooks`) are signed:
    /// `hmac_hex` (`X-Webhook-Signature`, the default) or `standard`.
    #[serde(default, deserialize_with = "some")]
    pub subscription_signing: Option<Option<Signing>>,
}

/// Left out is `None`; `null` is `Some(None)`.
fn some<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl ApplicationFields {
    /// Applies the fields given to `a`, checking each.
    fn apply(self, a: &mut Application) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(name) = self.name {
            let name = name.trim().to_owned();
            if name.is_empty() || name.chars().count() > 100 {
                errors.push(FieldError::new("name", "1 to 100 characters"));
            }
            a.name = name;
        }
        if let Some(uid) = self.uid {
            if let Some(uid) = &uid {
                check_uid(uid, &mut errors);
            }
            a.uid = uid;
        }
        if let Some(metadata) = self.metadata {
            if metadata.len() > 50
                || metadata
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1000)
            {
                errors.push(FieldError::new(
                    "metadata",
                    "at most 50 entries, keys of 1 to 64 characters, values up to 1000",
                ));
            }
            a.settings.metadata = metadata;
        }
        if let Some(quotas) = self.quotas {
            if quotas.max_endpoints == Some(0)
                || quotas.events_per_day == Some(0)
                || quotas.retention == Some(0)
            {
                errors.push(FieldError::new("quotas", "each quota is at least 1"));
            }
            a.settings.quotas = quotas;
        }
        if let Some(rate_limit) = self.rate_limit {
            a.settings.rate_limit = rate_limit;
        }
        if let Some(signing) = self.subscription_signing {
            if signing == Some(Signing::None) {
                errors.push(FieldError::new(
                    "subscription_signing",
                    "hmac_hex or standard: a customer's endpoint is always signed",
                ));
            }
            a.settings.subscription_signing = signing;
        }
        checked(errors)
    }
}

/// A uid: 1 to 64 letters, digits, `-`, `_`, `.` or `:`, not starting like an id.
fn check_uid(uid: &str, errors: &mut Vec<FieldError>) {
    let ok = (1..=64).contains(&uid.len())
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        && !uid.starts_with("app_");
    if !ok {
        errors.push(FieldError::new(
            "uid",
            "1 to 64 letters, digits, -, _, . or :, not starting with app_",
        ));
    }
}

impl Services {
    /// Creates an application. Only the operator may.
    pub async fn create_application(
        &self,
        scope: Scope,
        input: ApplicationFields,
    ) -> Result<Application> {
        super::operator_only(&scope, "application", "")?;
        if input.name.is_none() {
            return Err(Error::invalid("name", "required"));
        }
        let now = domain::now_ms();
        let mut app = Application {
            id: domain::new_id(prefix::APPLICATION),
            uid: None,
            name: String::new(),
            settings: ApplicationSettings::default(),
            created_at: now,
            updated_at: now,
        };
        input.apply(&mut app)?;
        self.store
            .insert_application(scope, app.clone())
            .await
            .map_err(uid_taken)?;
        self.registry.put_application(app.clone()).await;
        tracing::info!(application = %app.id, "application created");
        Ok(app)
    }

    /// The applications `scope` sees, by id: every one for the operator, its own for an
    /// application.
    pub fn applications(&self, scope: &Scope) -> Vec<Arc<Application>> {
        self.registry
            .applications()
            .into_iter()
            .filter(|a| scope.includes(Some(&a.id)))
            .collect()
    }

    /// An application by id or uid, if `scope` sees it.
    pub fn application(&self, scope: &Scope, id_or_uid: &str) -> Result<Arc<Application>> {
        self.registry
            .application(id_or_uid)
            .filter(|a| scope.includes(Some(&a.id)))
            .ok_or_else(|| Error::not_found("application", id_or_uid))
    }

    /// Changes an application: what `patch` leaves out is unchanged. Only the operator may.
    pub async fn update_application(
        &self,
        scope: Scope,
        id_or_uid: &str,
        patch: ApplicationFields,
    ) -> Result<Application> {
        super::operator_only(&scope, "application", id_or_uid)?;
        let mut app = (*self.application(&scope, id_or_uid)?).clone();
        patch.apply(&mut app)?;
        app.updated_at = domain::now_ms();
        if !self
            .store
            .update_application(scope, app.clone())
            .await
            .map_err(uid_taken)?
        {
            return Err(Error::not_found("application", id_or_uid));
        }
        self.registry.put_application(app.clone()).await;
        Ok(app)
    }

    /// Deletes an application with its endpoints, deliveries, keys and the events only it
    /// was sent. Only the operator may.
    pub async fn delete_application(&self, scope: Scope, id_or_uid: &str) -> Result<()> {
        super::operator_only(&scope, "application", id_or_uid)?;
        let app = self.application(&scope, id_or_uid)?;
        if !self.store.delete_application(scope, &app.id).await? {
            return Err(Error::not_found("application", id_or_uid));
        }
        self.registry.reload().await?;
        tracing::info!(application = %app.id, "application deleted with everything it owned");
        Ok(())
    }

    /// A new API key of an application, returned with the key itself to be shown this once.
    pub async fn create_application_key(
        &self,
        scope: Scope,
        id_or_uid: &str,
        name: &str,
        access: TokenScope,
    ) -> Result<(ApiToken, String)> {
        let app = self.application(&scope, id_or_uid)?;
        self.create_token(Scope::application(&app.id), name, access)
            .await
    }

    /// An application's API keys, by id.
    pub async fn application_keys(&self, scope: Scope, id_or_uid: &str) -> Result<Vec<ApiToken>> {
        let app = self.application(&scope, id_or_uid)?;
        self.tokens(Scope::application(&app.id), None).await
    }

    /// Revokes one of an application's API keys.
    pub async fn revoke_application_key(
        &self,
        scope: Scope,
        id_or_uid: &str,
        key_id: &str,
    ) -> Result<()> {
        let app = self.application(&scope, id_or_uid)?;
        self.revoke_token(Scope::application(&app.id), key_id).await
    }

    /// A one-time link into the application's customer portal, valid for `expiry_secs`
    /// (default an hour, at most a week): returned with its token, shown this once.
    pub async fn portal_link(
        &self,
        scope: Scope,
        id_or_uid: &str,
        expiry_secs: Option<f64>,
        read_only: bool,
    ) -> Result<(PortalLink, String)> {
        let app = self.application(&scope, id_or_uid)?;
        let expiry = expiry_secs.unwrap_or(3600.0);
        if !(60.0..=7.0 * 86400.0).contains(&expiry) {
            return Err(Error::invalid(
                "expiry",
                "between 60 seconds and 7 days (in seconds)",
            ));
        }
        let token = domain::new_token("ptl_");
        let now = domain::now_ms();
        let link = PortalLink {
            id: domain::new_id(prefix::PORTAL),
            application_id: app.id.clone(),
            token_hash: crate::security::crypto::token_hash(&token),
            read_only,
            expires_at: now + (expiry * 1000.0) as i64,
            used_at: None,
            created_at: now,
        };
        self.store.insert_portal_link(scope, link.clone()).await?;
        tracing::info!(application = %app.id, link = %link.id, read_only, "portal link made");
        Ok((link, token))
    }

    /// Opens a portal session with a link's token, once: answers a key of the link's
    /// application, read-only if the link was, that works for [`PORTAL_SESSION_SECS`].
    pub async fn open_portal_session(&self, token: &str) -> Result<(ApiToken, String)> {
        let now = domain::now_ms();
        let Some(link) = self
            .store
            .redeem_portal_link(&crate::security::crypto::token_hash(token), now)
            .await?
        else {
            return Err(Error::conflict(
                "portal_link_not_valid",
                "this portal link was used already, has expired or was revoked: ask for a new one",
            ));
        };
        let access = if link.read_only {
            TokenScope::ReadOnly
        } else {
            TokenScope::Admin
        };
        let session = self
            .issue_token(
                Scope::application(&link.application_id),
                "portal session",
                access,
                Some(now + PORTAL_SESSION_SECS * 1000),
            )
            .await?;
        tracing::info!(application = %link.application_id, link = %link.id, "portal session opened");
        Ok(session)
    }

    /// Revokes every portal link of an application and closes every session opened with
    /// one; returns how many went.
    pub async fn expire_portal_access(&self, scope: Scope, id_or_uid: &str) -> Result<u64> {
        let app = self.application(&scope, id_or_uid)?;
        let n = self.store.expire_portal_access(scope, &app.id).await?;
        self.registry.reload().await?;
        tracing::info!(application = %app.id, expired = n, "portal access expired");
        Ok(n)
    }

    /// Refuses an endpoint beyond its application's `max_endpoints`.
    pub(super) fn check_endpoint_quota(&self, scope: &Scope) -> Result<()> {
        let Some(app_id) = scope.application_id() else {
            return Ok(());
        };
        let Some(max) = self
            .registry
            .application(app_id)
            .and_then(|a| a.settings.quotas.max_endpoints)
        else {
            return Ok(());
        };
        let held = self
            .registry
            .endpoints()
            .iter()
            .filter(|e| e.application_id.as_deref() == Some(app_id))
            .count();
        if held >= max as usize {
            return Err(Error::OverQuota {
                code: "endpoint_quota_exceeded",
                detail: format!(
                    "this application may have at most {max} endpoints; delete one first"
                ),
            });
        }
        Ok(())
    }
}

fn uid_taken(e: StoreError) -> Error {
    match e {
        StoreError::Conflict(_) => Error::conflict("uid_taken", "another application has this uid"),
        other => other.into(),
    }
}
