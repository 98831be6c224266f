//! Bearer tokens for MCP over HTTP and the dashboard: each maps to one
//! tenant and has a role (`read` or `admin`, which the dashboard enforces). The engine owns
//! them so the front doors (`mcp`, `cli token …`) never reach the store.
//!
//! **Invariant 22:** a token's text exists only in the output of `token create`
//! and in the client's configuration; the store keeps its SHA-256 and looks
//! tokens up by that hash, so a copy of the database does not grant access.
//! **Invariant 22:** a revoked token never authenticates again.

use crate::model::{Millis, TenantId, TokenRecord, TokenRole};
use crate::store::{CreateToken, RevokeToken, Store, StoreError, TokenLookup, TokenRef};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "lst_";

/// A newly created token: its text is shown once and not stored.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token_id: i64,
    pub tenant: TenantId,
    pub role: TokenRole,
    pub token: String,
}

/// The SHA-256 of a token's text, hex-encoded, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 256 random bits from the operating system's CSPRNG (through `rand`'s thread RNG).
fn new_token_text() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// A tenant name as accepted for tokens: 1–100 characters, no whitespace or control characters.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the tenant name is empty".to_string());
    }
    if name.chars().count() > 100 {
        return Err("the tenant name is longer than 100 characters".to_string());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the tenant name {name:?} contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// Create a token for `tenant`; the returned text is the only copy.
async fn create(
    store: &dyn Store,
    tenant: &TenantId,
    label: Option<String>,
    role: TokenRole,
    now: Millis,
) -> Result<IssuedToken, StoreError> {
    let token = new_token_text();
    let token_id = store
        .create_token(CreateToken {
            tenant: tenant.clone(),
            token_hash: token_hash(&token),
            label,
            role,
            now,
        })
        .await?;
    Ok(IssuedToken {
        token_id,
        tenant: tenant.clone(),
        role,
        token,
    })
}

/// Revoke a token given as its text or its numeric id. `Ok(None)` when no
/// such (unrevoked) token exists.
async fn revoke(
    store: &dyn Store,
    token_or_id: &str,
    now: Millis,
) -> Result<Option<TokenRecord>, StoreError> {
    let token = match token_or_id.trim().parse::<i64>() {
        Ok(id) => TokenRef::Id(id),
        Err(_) => TokenRef::Hash(token_hash(token_or_id.trim())),
    };
    store.revoke_token(RevokeToken { token, now }).await
}

/// The live token with this text, if any.
async fn authenticate(store: &dyn Store, token: &str) -> Result<Option<TokenRecord>, StoreError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    store
        .tenant_for_token(TokenLookup {
            token_hash: token_hash(token),
        })
        .await
}

impl super::Engine {
    /// Create a token for `tenant` with `role`; the returned text is the only copy.
    pub async fn create_token(
        &self,
        tenant: &TenantId,
        label: Option<String>,
        role: TokenRole,
    ) -> Result<IssuedToken, super::EngineError> {
        Ok(create(
            self.store().as_ref(),
            tenant,
            label,
            role,
            super::now_millis(),
        )
        .await?)
    }

    /// Revoke a token given as its text or its numeric id; `None` when no such
    /// (unrevoked) token exists.
    pub async fn revoke_token(
        &self,
        token_or_id: &str,
    ) -> Result<Option<TokenRecord>, super::EngineError> {
        Ok(revoke(self.store().as_ref(), token_or_id, super::now_millis()).await?)
    }

    /// The live token with this text, if any.
    pub async fn authenticate(
        &self,
        token: &str,
    ) -> Result<Option<TokenRecord>, super::EngineError> {
        Ok(authenticate(self.store().as_ref(), token).await?)
    }
}
