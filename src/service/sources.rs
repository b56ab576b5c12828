//! Sources: where events come from. The settings a client writes ([`SourceIn`],
//! [`SourcePatch`]), the rules they must keep, and creating, changing and deleting a source.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;

use super::{Error, Result, Scope, Services, check_name, checked};
use crate::domain::{self, FieldError, RateLimit, prefix};
use crate::ingest::{AuthSpec, Format, Mapping, SourceSpec};
use crate::model::Source;

/// What a source made of a message it was given to try.
#[derive(Debug, Clone, PartialEq)]
pub struct Tried {
    pub event_type: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIn {
    /// As it appears in the ingest URL: lowercase letters, digits, `-` and `_` (not `src_…`).
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$", example = "tradingview")]
    pub name: String,
    #[serde(default)]
    pub format: Format,
    /// Default: a token (in the URL, or for TradingView also a `passphrase` body field).
    #[serde(default, deserialize_with = "super::object")]
    pub auth: Option<AuthSpec>,
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
    #[serde(default)]
    pub dedupe_field: Option<String>,
    #[serde(default, deserialize_with = "super::object")]
    pub mapping: Option<Mapping>,
    /// Requests accepted per window (`10/s`, `60/min`), over all senders.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// A secret of the sender's own; one is generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcePatch {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub name: Option<String>,
    pub format: Option<Format>,
    pub ip_allowlist: Option<Vec<String>>,
    pub dedupe_field: Option<String>,
    #[serde(default, deserialize_with = "super::object")]
    pub mapping: Option<Mapping>,
    pub rate_limit: Option<RateLimit>,
}

fn parse_allowlist(list: &[String], errors: &mut Vec<FieldError>) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        if entry.trim().eq_ignore_ascii_case("tradingview") {
            nets.extend(
                crate::ingest::TRADINGVIEW_ADDRESSES
                    .iter()
                    .filter_map(|a| crate::ingest::parse_cidr(a).ok()),
            );
            continue;
        }
        match crate::ingest::parse_cidr(entry) {
            Ok(net) => nets.push(net),
            Err(e) => errors.push(FieldError::new(format!("ip_allowlist[{i}]"), e)),
        }
    }
    nets
}

fn check_auth(auth: &AuthSpec, errors: &mut Vec<FieldError>) {
    match auth {
        AuthSpec::Hmac { header, .. }
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() =>
        {
            errors.push(FieldError::new("auth.header", "not a valid header name"));
        }
        AuthSpec::Token { field: Some(f) } if f.is_empty() => {
            errors.push(FieldError::new("auth.field", "must not be empty"));
        }
        _ => {}
    }
}

/// The authentication a source gets when none is named: a token in the URL, which every
/// sender can use; TradingView may also put it in a `passphrase` field of its alert. A
/// command source is signed.
fn default_auth(format: Format) -> AuthSpec {
    if format == Format::Command {
        return AuthSpec::Hmac {
            header: "X-Signature".into(),
            encoding: Default::default(),
        };
    }
    AuthSpec::Token {
        field: (format == Format::Tradingview).then(|| "passphrase".to_owned()),
    }
}

/// Commands halt and resume trading: only a sender holding the secret may give them, and a
/// token, unlike a signature, shows in any log of the URL or the body.
fn check_signed(format: Format, auth: &AuthSpec, errors: &mut Vec<FieldError>) {
    if format == Format::Command
        && !matches!(auth, AuthSpec::Hmac { .. } | AuthSpec::StandardWebhooks)
    {
        errors.push(FieldError::new(
            "auth",
            "a command source must be signed: hmac or standard_webhooks",
        ));
    }
}

fn check_mapping(format: Format, mapping: Option<&Mapping>, errors: &mut Vec<FieldError>) {
    let Some(mapping) = mapping else { return };
    if format != Format::Json {
        errors.push(FieldError::new(
            "mapping",
            "only the json format takes a mapping",
        ));
    } else if let Err((field, message)) = mapping.validate() {
        errors.push(FieldError::new(field, message));
    }
}

/// A `[[sources]]` entry of the config file: its name, and the other settings of
/// `POST /api/v1/sources`.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub name: String,
    pub settings: serde_json::Value,
}

/// A source's settings, checked: every bad field named in one error.
struct Settled {
    name: String,
    spec: SourceSpec,
    /// The secret given; none when one is to be generated (or kept).
    secret: Option<String>,
}

fn settle(input: SourceIn) -> Result<Settled> {
    let mut errors = Vec::new();
    check_name(&input.name, prefix::SOURCE, &mut errors);
    let auth = input.auth.unwrap_or_else(|| default_auth(input.format));
    check_auth(&auth, &mut errors);
    check_signed(input.format, &auth, &mut errors);
    check_mapping(input.format, input.mapping.as_ref(), &mut errors);
    let ip_allowlist = parse_allowlist(&input.ip_allowlist, &mut errors);
    let secret = match (&auth, input.secret) {
        (AuthSpec::None, Some(_)) => {
            errors.push(FieldError::new(
                "secret",
                "a source without auth has no secret",
            ));
            None
        }
        (_, Some(s)) if s.len() < 16 || s.len() > 256 => {
            errors.push(FieldError::new("secret", "must have 16 to 256 characters"));
            None
        }
        (_, secret) => secret,
    };
    checked(errors)?;
    Ok(Settled {
        name: input.name,
        spec: SourceSpec {
            format: input.format,
            auth,
            ip_allowlist,
            dedupe_field: input.dedupe_field.filter(|f| !f.is_empty()),
            mapping: input.mapping,
            rate_limit: input.rate_limit,
        },
        secret,
    })
}

/// A new secret fitting the kind of authentication.
fn generate_secret(auth: &AuthSpec) -> Option<String> {
    match auth {
        AuthSpec::None => None,
        AuthSpec::Token { .. } => Some(domain::new_token("")),
        AuthSpec::Hmac { .. } | AuthSpec::StandardWebhooks => Some(domain::new_signing_secret()),
    }
}

impl Services {
    /// Creates a source; its secret, if it has one, is in the result, to be shown this once.
    pub async fn create_source(&self, scope: Scope, input: SourceIn) -> Result<Source> {
        super::operator_only(&scope, "source", &input.name)?;
        let settled = settle(input)?;
        if self.registry.source(&settled.name).is_some() {
            return Err(Error::conflict(
                "conflict",
                format!("a source named {:?} already exists", settled.name),
            ));
        }
        let now = domain::now_ms();
        let secret = settled
            .secret
            .or_else(|| generate_secret(&settled.spec.auth));
        let source = Source {
            id: domain::new_id(prefix::SOURCE),
            name: settled.name,
            spec: settled.spec,
            secret,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_source(scope, source.clone()).await?;
        self.registry.reload().await?;
        tracing::info!(source = %source.id, name = %source.name, "source created");
        Ok(source)
    }

    /// Creates the sources the config file declares, or brings them up to date: a declared
    /// secret replaces the stored one; without one, a new source gets a generated secret and
    /// an existing source keeps its own. An error names the source and the field.
    pub async fn declare_sources(&self, declared: &[Declared]) -> anyhow::Result<()> {
        for d in declared {
            let context = |e: Error| anyhow::anyhow!("config file, source {:?}: {e}", d.name);
            let mut settings = d.settings.clone();
            settings["name"] = serde_json::Value::String(d.name.clone());
            let input: SourceIn = serde_json::from_value(settings)
                .map_err(|e| anyhow::anyhow!("config file, source {:?}: {e}", d.name))?;
            let Some(current) = self.registry.source(&d.name) else {
                self.create_source(Scope::Hub, input)
                    .await
                    .map_err(context)?;
                continue;
            };
            let settled = settle(input).map_err(context)?;
            let secret = match settled.secret {
                Some(secret) => Some(secret),
                // Another kind of authentication needs a secret of its kind.
                None if std::mem::discriminant(&settled.spec.auth)
                    == std::mem::discriminant(&current.spec.auth) =>
                {
                    current.secret.clone()
                }
                None => generate_secret(&settled.spec.auth),
            };
            if settled.spec == current.spec && secret == current.secret {
                continue;
            }
            let source = Source {
                spec: settled.spec,
                secret,
                updated_at: domain::now_ms(),
                ..(*current).clone()
            };
            self.store.update_source(Scope::Hub, source).await?;
            self.registry.reload().await?;
            tracing::info!(source = %current.id, name = %d.name, "source updated from the config file");
        }
        Ok(())
    }

    /// The sources, by id; only those of `format` when one is given.
    pub fn sources(&self, scope: Scope, format: Option<Format>) -> Vec<Arc<Source>> {
        self.registry
            .sources()
            .into_iter()
            .filter(|_| scope == Scope::Hub)
            .filter(|s| format.is_none_or(|f| s.spec.format == f))
            .collect()
    }

    /// What a source would make of `body`, without storing or sending anything: the event
    /// type and canonical data, or why the source would refuse it. The sender's proof (token,
    /// signature, address) is not checked: this is the operator trying a message; a secret
    /// field in it is dropped as ingest drops it.
    pub fn try_message(
        &self,
        scope: Scope,
        id_or_name: &str,
        body: &[u8],
    ) -> Result<Result<Tried, crate::ingest::Rejection>> {
        let source = self.source(scope, id_or_name)?;
        let spec = &source.spec;
        let tried = spec
            .format
            .decode(body, &http::HeaderMap::new())
            .and_then(|mut payload| {
                if let Some(o) = payload.as_object_mut() {
                    crate::ingest::remove_secrets(o);
                    if let AuthSpec::Token { field: Some(f) } = &spec.auth {
                        o.shift_remove(f.as_str());
                    }
                }
                spec.format.interpret(payload, spec.mapping.as_ref())
            })
            .map(|read| Tried {
                event_type: read.event_type.as_str().to_owned(),
                data: read.data,
            });
        Ok(tried)
    }

    /// A source by id or by name.
    pub fn source(&self, scope: Scope, id_or_name: &str) -> Result<Arc<Source>> {
        super::operator_only(&scope, "source", id_or_name)?;
        self.registry
            .source(id_or_name)
            .ok_or_else(|| Error::not_found("source", id_or_name))
    }

    /// Changes a source's settings: what `patch` leaves out is unchanged.
    pub async fn update_source(
        &self,
        scope: Scope,
        id_or_name: &str,
        patch: SourcePatch,
    ) -> Result<Source> {
        let mut s = (*self.source(scope.clone(), id_or_name)?).clone();
        let mut errors = Vec::new();
        if let Some(name) = patch.name {
            check_name(&name, prefix::SOURCE, &mut errors);
            if name != s.name && self.registry.source(&name).is_some() {
                errors.push(FieldError::new("name", "another source has this name"));
            }
            s.name = name;
        }
        if let Some(f) = patch.format {
            s.spec.format = f;
        }
        if let Some(list) = patch.ip_allowlist {
            s.spec.ip_allowlist = parse_allowlist(&list, &mut errors);
        }
        if let Some(field) = patch.dedupe_field {
            s.spec.dedupe_field = (!field.is_empty()).then_some(field);
        }
        if let Some(mapping) = patch.mapping {
            s.spec.mapping = Some(mapping);
        }
        if let Some(rate) = patch.rate_limit {
            s.spec.rate_limit = Some(rate);
        }
        check_signed(s.spec.format, &s.spec.auth, &mut errors);
        check_mapping(s.spec.format, s.spec.mapping.as_ref(), &mut errors);
        checked(errors)?;
        s.updated_at = domain::now_ms();
        if !self.store.update_source(scope, s.clone()).await? {
            return Err(Error::not_found("source", id_or_name));
        }
        self.registry.reload().await?;
        tracing::info!(source = %s.id, name = %s.name, "source updated");
        Ok(s)
    }

    /// Deletes a source: requests to its ingest URL are refused from now on.
    pub async fn delete_source(&self, scope: Scope, id_or_name: &str) -> Result<()> {
        let source = self.source(scope.clone(), id_or_name)?;
        self.store.delete_source(scope, &source.id).await?;
        self.registry.reload().await?;
        tracing::info!(source = %source.id, name = %source.name, "source deleted");
        Ok(())
    }
}
