//! API tokens: who may use the management API, `admin` or `read_only`. A token is shown once,
//! when it is made; only its hash is kept.

use super::{Error, Result, Scope, Services};
use crate::domain::{self, prefix};
use crate::model::{ApiToken, TokenScope};
use crate::security::crypto::token_hash;
use crate::store::Store;

impl Services {
    /// Creates a token; returns it with the token itself, to be shown this once.
    pub async fn create_token(
        &self,
        scope: Scope,
        name: &str,
        access: TokenScope,
    ) -> Result<(ApiToken, String)> {
        self.issue_token(scope, name, access, None).await
    }

    /// Creates a token that stops working at `expires_at`, if given.
    pub(super) async fn issue_token(
        &self,
        scope: Scope,
        name: &str,
        access: TokenScope,
        expires_at: Option<domain::Millis>,
    ) -> Result<(ApiToken, String)> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::invalid("name", "1 to 100 characters"));
        }
        let secret = domain::new_token("thk_");
        let token = ApiToken {
            id: domain::new_id(prefix::TOKEN),
            name,
            hash: token_hash(&secret),
            scope: access,
            application_id: scope.application_id().map(str::to_owned),
            expires_at,
            created_at: domain::now_ms(),
        };
        self.store.insert_token(scope, token.clone()).await?;
        self.registry.reload().await?;
        tracing::info!(token = %token.id, scope = ?token.scope, "API token created");
        Ok((token, secret))
    }

    /// The tokens, by id; only those of `access` when one is given.
    pub async fn tokens(&self, scope: Scope, access: Option<TokenScope>) -> Result<Vec<ApiToken>> {
        let mut tokens = self.store.list_tokens(scope).await?;
        tokens.retain(|t| access.is_none_or(|s| t.scope == s));
        tokens.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(tokens)
    }

    /// Revokes a token. The last admin token cannot be: without it nobody could manage the
    /// hub.
    pub async fn revoke_token(&self, scope: Scope, id: &str) -> Result<()> {
        let tokens = self.store.list_tokens(scope.clone()).await?;
        let Some(token) = tokens.iter().find(|t| t.id == id) else {
            return Err(Error::not_found("token", id));
        };
        // The operator's own: an application's keys can all go, the operator makes new ones.
        let operator = |t: &ApiToken| t.scope == TokenScope::Admin && t.application_id.is_none();
        let admins = tokens.iter().filter(|t| operator(t)).count();
        if operator(token) && admins == 1 {
            return Err(Error::conflict(
                "last_admin_token",
                "this is the last admin token: create another before revoking it",
            ));
        }
        self.store.delete_token(scope, id).await?;
        self.registry.reload().await?;
        tracing::info!(token = %id, "API token revoked");
        Ok(())
    }
}

/// Makes sure an admin token exists: the configured one, or a new one on first start, which
/// is returned to be shown this once.
pub async fn bootstrap(
    store: &dyn Store,
    scope: Scope,
    configured: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let tokens = store.list_tokens(scope.clone()).await?;
    let now = domain::now_ms();
    if let Some(token) = configured {
        anyhow::ensure!(
            token.len() >= 16,
            "the configured API token must have at least 16 characters"
        );
        let hash = token_hash(token);
        if !tokens.iter().any(|t| t.hash == hash) {
            let stored = store
                .insert_token(
                    scope.clone(),
                    ApiToken {
                        id: domain::new_id(prefix::TOKEN),
                        name: "configured".into(),
                        hash: hash.clone(),
                        scope: TokenScope::Admin,
                        application_id: None,
                        expires_at: None,
                        created_at: now,
                    },
                )
                .await;
            // Nodes started together on one database each find the token missing; the first
            // stores it, and the others find it there.
            if let Err(e) = stored
                && !store
                    .list_tokens(scope)
                    .await?
                    .iter()
                    .any(|t| t.hash == hash)
            {
                return Err(e.into());
            }
        }
        return Ok(None);
    }
    if tokens.iter().any(|t| t.application_id.is_none()) {
        return Ok(None);
    }
    let token = domain::new_token("thk_");
    store
        .insert_token(
            scope,
            ApiToken {
                id: domain::new_id(prefix::TOKEN),
                name: "generated".into(),
                hash: token_hash(&token),
                scope: TokenScope::Admin,
                application_id: None,
                expires_at: None,
                created_at: now,
            },
        )
        .await?;
    Ok(Some(token))
}
