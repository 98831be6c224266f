//! MCP bearer tokens: only their hashes are stored; a live token names its
//! tenant and its role until it is revoked, by id or by hash.

use super::fixtures::*;

fn create(tenant: TenantId, hash: &str, label: Option<&str>) -> CreateToken {
    CreateToken {
        tenant,
        token_hash: hash.to_string(),
        label: label.map(str::to_string),
        role: TokenRole::Admin,
        now: NOW,
    }
}

async fn lookup(store: &dyn Store, hash: &str) -> Option<TokenRecord> {
    store
        .tenant_for_token(TokenLookup {
            token_hash: hash.to_string(),
        })
        .await
        .expect("token lookup")
}

pub async fn a_token_names_its_tenant_until_it_is_revoked_by_hash(store: &dyn Store) {
    let id = store
        .create_token(create(acme(), "hash-a", Some("ci bot")))
        .await
        .expect("create token");
    let live = TokenRecord {
        token_id: id,
        tenant: acme(),
        label: Some("ci bot".to_string()),
        role: TokenRole::Admin,
        created_at: NOW,
    };
    assert_eq!(lookup(store, "hash-a").await, Some(live.clone()));
    assert_eq!(lookup(store, "hash-b").await, None);

    let revoked = store
        .revoke_token(RevokeToken {
            token: TokenRef::Hash("hash-a".to_string()),
            now: NOW + 1,
        })
        .await
        .expect("revoke");
    assert_eq!(revoked, Some(live));
    assert_eq!(lookup(store, "hash-a").await, None);
    // Revoking it again finds no live token.
    let again = store
        .revoke_token(RevokeToken {
            token: TokenRef::Hash("hash-a".to_string()),
            now: NOW + 2,
        })
        .await
        .expect("revoke again");
    assert_eq!(again, None);
}

pub async fn revoking_by_id_leaves_other_tokens_live(store: &dyn Store) {
    // A token for a tenant that has no job yet creates the tenant.
    let first = store
        .create_token(create(TenantId("newcomer".to_string()), "hash-1", None))
        .await
        .expect("create first");
    let second = store
        .create_token(CreateToken {
            role: TokenRole::Read,
            ..create(globex(), "hash-2", Some("agent"))
        })
        .await
        .expect("create second");
    assert_ne!(first, second);
    let revoked = store
        .revoke_token(RevokeToken {
            token: TokenRef::Id(first),
            now: NOW,
        })
        .await
        .expect("revoke by id")
        .expect("the first token was live");
    assert_eq!(
        (revoked.token_id, revoked.tenant, revoked.label),
        (first, TenantId("newcomer".to_string()), None)
    );
    assert_eq!(lookup(store, "hash-1").await, None);
    assert_eq!(
        lookup(store, "hash-2")
            .await
            .map(|t| (t.token_id, t.tenant, t.role)),
        Some((second, globex(), TokenRole::Read))
    );
    let unknown = store
        .revoke_token(RevokeToken {
            token: TokenRef::Id(second + 1000),
            now: NOW,
        })
        .await
        .expect("revoke unknown id");
    assert_eq!(unknown, None);
    // A hash is stored once: a second token with it is refused.
    store
        .create_token(create(acme(), "hash-2", None))
        .await
        .expect_err("duplicate hash");
    assert_eq!(
        lookup(store, "hash-2").await.map(|t| t.tenant),
        Some(globex())
    );
}

conformance_cases!(
    a_token_names_its_tenant_until_it_is_revoked_by_hash,
    revoking_by_id_leaves_other_tokens_live,
);
