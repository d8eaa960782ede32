//! Administration outside the FHIR API: municipalities, OAuth clients (with the dual
//! control of system clients) and signing keys. Each action is decided by the policy
//! (`policy::require_administrator`), stored, applied to the runtime's directories, and
//! recorded in the audit trail — a refusal too.

use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::identity::clients::{Approval, ClientConfig, ClientKind, Role, SERVER_CLIENTS};
use crate::identity::{Context, Principal};
use crate::outcome::{Issue, IssueCode};
use crate::audit::Entity;
use crate::policy;
use crate::service::Fhir;
use crate::store;

/// `POST /admin/tenants`: a server administrator adds a municipality; its base URL
/// answers at once. Recorded in the new municipality's chain (a refusal in the server's).
pub async fn add_tenant(fhir: &Fhir, context: &Context, tenant: TenantConfig) -> Result<TenantConfig> {
    let result = add_tenant_unaudited(fhir, &context.principal, tenant.clone()).await;
    let chain = if result.is_ok() { tenant.slug.clone() } else { crate::audit::SERVER_CHAIN.to_owned() };
    let entities = vec![Entity::Detail { name: "municipality".into(), value: format!("{} {} {}", tenant.slug, tenant.code, tenant.name) }];
    fhir.record_administration(context, &chain, "tenant-add", result.as_ref().map(|_| ()), entities).await?;
    result
}

async fn add_tenant_unaudited(fhir: &Fhir, principal: &Principal, tenant: TenantConfig) -> Result<TenantConfig> {
    policy::require_administrator(principal, None)?;
    crate::config::check_tenant(&tenant).map_err(Error::bad_request)?;
    if fhir.tenants().iter().any(|t| t.slug == tenant.slug || t.code == tenant.code) {
        return Err(Error::Conflict(format!("a municipality with the slug '{}' or the code '{}' exists", tenant.slug, tenant.code)));
    }
    let mut transaction = fhir.store.begin().await?;
    store::tenants::insert(&mut transaction, &tenant, &fhir.now()).await?;
    transaction.commit().await?;
    fhir.insert_tenant(tenant.clone())?;
    tracing::info!(target: "renraku::admin", slug = %tenant.slug, code = %tenant.code, "municipality added");
    Ok(tenant)
}

/// The chain that records administration of `tenant`'s clients.
fn administration_chain(fhir: &Fhir, tenant: &str) -> String {
    if fhir.serves(tenant) {
        tenant.to_owned()
    } else {
        crate::audit::SERVER_CHAIN.to_owned()
    }
}

/// `POST /admin/clients`: registers an OAuth client at its municipality.
pub async fn register_client(fhir: &Fhir, context: &Context, client: ClientConfig) -> Result<ClientConfig> {
    let result = register_client_unaudited(fhir, &context.principal, client.clone()).await;
    let entities = vec![Entity::Detail { name: "client_id".into(), value: client.client_id.clone() }];
    let chain = administration_chain(fhir, &client.tenant);
    fhir.record_administration(context, &chain, "client-register", result.as_ref().map(|_| ()), entities).await?;
    result
}

async fn register_client_unaudited(fhir: &Fhir, principal: &Principal, mut client: ClientConfig) -> Result<ClientConfig> {
    if client.kind == ClientKind::Administrator {
        // Credentials for an administrative role come from the operator (the command line,
        // with the database in hand) alone: an administrator who could mint them would have a
        // second administrator of their own for every dual-control approval.
        if *principal != Principal::Operator {
            return Err(Error::Forbidden("administrator clients are registered by the operator (renraku admin client add)".into()));
        }
    } else if client.roles.iter().any(|role| role.is_administrative()) {
        // Which roles an app's sign-ins may take is role mapping: the server administrator's.
        policy::require_administrator(principal, None)?;
    } else {
        policy::require_administrator(principal, Some(&client.tenant))?;
    }
    client.check().map_err(Error::bad_request)?;
    if client.tenant != SERVER_CLIENTS && !fhir.serves(&client.tenant) {
        return Err(Error::bad_request_at(format!("no municipality '{}' is served", client.tenant), "tenant"));
    }
    if fhir.current_client(&client.tenant, &client.client_id).await?.is_some() {
        return Err(Error::Conflict(format!("a client '{}' is already registered at '{}'", client.client_id, client.tenant)));
    }
    let mut connection = fhir.store.begin().await?;
    if client.kind == ClientKind::System {
        // A backend service acts for an Organization of its own municipality, never
        // another's; and it needs a second administrator before it gets a token.
        let organization = client.organization.clone().unwrap_or_default();
        let owner = store::facts::tenant_of(&mut connection, "Organization", &organization).await?;
        if owner.as_deref() != Some(client.tenant.as_str()) {
            return Err(Error::unprocessable(
                Issue::error(IssueCode::BusinessRule, format!("'{}' has no Organization '{organization}' in its directory", client.tenant))
                    .at("organization"),
            ));
        }
        client.approval = policy::administrator_of(principal)
            .map(|registered_by| Approval { registered_by, approved_by: None });
    } else {
        client.approval = None;
    }
    store::tenants::insert_client(&mut connection, &client, &fhir.now()).await?;
    connection.commit().await?;
    fhir.put_client(client.clone())?;
    tracing::info!(target: "renraku::admin", tenant = %client.tenant, client = %client.client_id, "client registered");
    Ok(client)
}

/// `POST /admin/clients/{tenant}/{client_id}/approve`: the second administrator approves
/// a system client's registration (see [`crate::identity::clients::Approval`]).
pub async fn approve_client(fhir: &Fhir, context: &Context, tenant: &str, client_id: &str) -> Result<ClientConfig> {
    let result = approve_client_unaudited(fhir, &context.principal, tenant, client_id).await;
    let entities = vec![Entity::Detail { name: "client_id".into(), value: client_id.to_owned() }];
    let chain = administration_chain(fhir, tenant);
    fhir.record_administration(context, &chain, "client-approve", result.as_ref().map(|_| ()), entities).await?;
    result
}

async fn approve_client_unaudited(fhir: &Fhir, principal: &Principal, tenant: &str, client_id: &str) -> Result<ClientConfig> {
    policy::require_administrator(principal, Some(tenant))?;
    let not_found = || Error::NotFound(format!("a registration of client '{client_id}' at '{tenant}' awaiting approval"));
    let mut client = fhir.current_client(tenant, client_id).await?.filter(ClientConfig::awaits_approval).ok_or_else(not_found)?;
    let approver = policy::administrator_of(principal).ok_or_else(|| Error::Forbidden("only an administrator approves clients".into()))?;
    let approval = client.approval.as_mut().ok_or_else(not_found)?;
    if !approval.may_be_approved_by(&approver, tenant) {
        return Err(Error::Forbidden(
            "a system client is approved by the other administrator: the server administrator for a municipality's registration, the municipality's for the server's".into(),
        ));
    }
    approval.approved_by = Some(approver);
    let mut transaction = fhir.store.begin().await?;
    store::tenants::update_client(&mut transaction, &client).await?;
    transaction.commit().await?;
    fhir.put_client(client.clone())?;
    tracing::info!(target: "renraku::admin", tenant, client = client_id, "client approved");
    Ok(client)
}

/// `GET /admin/clients?tenant=…`: the clients the caller may manage (`tenant=_server`: the
/// server administrator's clients).
pub async fn list_clients(fhir: &Fhir, principal: &Principal, tenant: &str) -> Result<Vec<ClientConfig>> {
    policy::require_administrator(principal, if tenant == SERVER_CLIENTS { None } else { Some(tenant) })?;
    fhir.refresh_registry().await?;
    Ok(fhir.clients_of(tenant))
}

/// `DELETE /admin/clients/{tenant}/{client_id}`: removes a registration made through the
/// admin API (the configuration file's stay until the file changes) and revokes every
/// access token issued to the client (its refresh tokens then fail: the client is unknown).
pub async fn remove_client(fhir: &Fhir, context: &Context, tenant: &str, client_id: &str) -> Result<()> {
    let result = remove_client_unaudited(fhir, &context.principal, tenant, client_id).await;
    let entities = vec![Entity::Detail { name: "client_id".into(), value: client_id.to_owned() }];
    let chain = administration_chain(fhir, tenant);
    fhir.record_administration(context, &chain, "client-remove", result.as_ref().map(|_| ()), entities).await?;
    result
}

async fn remove_client_unaudited(fhir: &Fhir, principal: &Principal, tenant: &str, client_id: &str) -> Result<()> {
    let registered = fhir.current_client(tenant, client_id).await?;
    let administrator = registered.as_ref().is_some_and(|c| c.kind == ClientKind::Administrator);
    policy::require_administrator(principal, if administrator || tenant == SERVER_CLIENTS { None } else { Some(tenant) })?;
    let mut transaction = fhir.store.begin().await?;
    if !store::tenants::delete_client(&mut transaction, tenant, client_id).await? {
        return Err(Error::NotFound(format!("the run-time registration of client '{client_id}' at '{tenant}'")));
    }
    // A removed client's tokens stop working at the next request, on every gateway.
    if let Some(actor) = registered.as_ref().filter(|_| administrator).and_then(|c| crate::auth::server::backend_actor(tenant, c)) {
        store::auth::revoke_client_tokens(&mut transaction, client_id, &serde_json::to_string(&actor)?).await?;
    } else {
        store::auth::revoke_tokens_of_client(&mut transaction, tenant, client_id).await?;
    }
    transaction.commit().await?;
    fhir.forget_client(tenant, client_id)?;
    Ok(())
}

/// Every client registered at run time (the command line's listing, as the operator),
/// recorded in the server's chain like every administrative action.
pub async fn stored_clients(fhir: &Fhir, context: &Context) -> Result<Vec<ClientConfig>> {
    let listed = async {
        let mut connection = fhir.store.connection().await?;
        store::tenants::list_clients(&mut connection).await
    }
    .await;
    let entities = vec![Entity::Detail { name: "clients".into(), value: listed.as_ref().map_or(0, Vec::len).to_string() }];
    fhir.record_administration(context, crate::audit::SERVER_CHAIN, "client-list", listed.as_ref().map(|_| ()), entities).await?;
    listed
}

/// An administrator client's registration as `renraku admin client add` makes it.
pub struct AdministratorClient {
    pub client_id: String,
    /// A municipality's slug, or [`SERVER_CLIENTS`] for the server administrator's clients.
    pub tenant: String,
    pub role: Role,
    /// Space-separated `system/` scopes; `None` takes the role's default.
    pub scopes: Option<String>,
    pub name: String,
}

/// Registers an administrator client with a new RSA key pair (RS384): the registration
/// keeps the public key, and the private key is returned, once, as PKCS#8 PEM for the
/// operator to keep. Audited like every registration.
pub async fn register_administrator_client(fhir: &Fhir, context: &Context, request: AdministratorClient) -> Result<(ClientConfig, String)> {
    let (_, private_pem, mut jwk) = tokio::task::spawn_blocking(|| crate::auth::keys::new_rsa_key("RS384")).await.map_err(Error::internal)??;
    // One key per client, named after it, so that a client assertion's `kid` is obvious.
    crate::fhir::set(&mut jwk, "kid", serde_json::json!(request.client_id));
    let default_scopes = match request.role {
        Role::MunicipalAuditor => "system/AuditEvent.rs",
        Role::Practitioner | Role::MunicipalAdmin | Role::ServerAdmin => "system/*.cruds",
    };
    let client = ClientConfig {
        client_id: request.client_id,
        tenant: request.tenant,
        kind: ClientKind::Administrator,
        name: request.name,
        organization: None,
        redirect_uris: Vec::new(),
        scopes: request.scopes.unwrap_or_else(|| default_scopes.to_owned()),
        jwks: Some(serde_json::json!({ "keys": [jwk] })),
        jwks_url: None,
        jwks_file: None,
        grant_types: Vec::new(),
        roles: vec![request.role],
        maintains_directory: false,
        approval: None,
    };
    let client = register_client(fhir, context, client).await?;
    Ok((client, private_pem))
}

/// `POST /admin/signing-keys/rotate`: a new key signs id_tokens from now on; the old ones
/// stay published until every token they signed has expired.
pub async fn rotate_signing_key(fhir: &Fhir, context: &Context) -> Result<String> {
    let result = async {
        policy::require_administrator(&context.principal, None)?;
        let mut connection = fhir.store.connection().await?;
        let kid = crate::auth::keys::rotate(&mut connection, fhir.clock.now()).await?;
        tracing::info!(target: "renraku::admin", %kid, "signing key rotated");
        Ok(kid)
    }
    .await;
    let entities = result.iter().map(|kid| Entity::Detail { name: "kid".into(), value: kid.clone() }).collect();
    fhir.record_administration(context, crate::audit::SERVER_CHAIN, "signing-key-rotate", result.as_ref().map(|_| ()), entities).await?;
    result
}

/// `GET /admin/tenants`
pub fn list_tenants(fhir: &Fhir, principal: &Principal) -> Result<Vec<TenantConfig>> {
    policy::require_administrator(principal, None)?;
    Ok(fhir.tenants().to_vec())
}
