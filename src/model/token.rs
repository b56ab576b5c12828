//! API tokens: who may use the management API, and for what.

use serde::{Deserialize, Serialize};

use crate::domain::Millis;

/// Scope of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    Admin,
    ReadOnly,
}

/// A stored API token (only its hash is kept).
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub hash: String,
    pub scope: TokenScope,
    /// The application this key belongs to; `None` for the operator's own tokens.
    pub application_id: Option<String>,
    /// When it stops working; `None`: when it is revoked.
    pub expires_at: Option<Millis>,
    pub created_at: Millis,
}
