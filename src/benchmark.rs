//! The HTTP benchmark's world (`benches/over_http.py`), compiled only with the `test-support`
//! feature: for each size N, a care office with a professional whose office registered
//! N − 20 generated persons and who is on each one's support team (with consent), and the
//! tokens the load generator sends — the professional's and the unrestricted test
//! principal's. The script registers the remaining persons (those it measures) through the
//! API itself, as the professional.

use chrono::Duration;
use serde_json::{json, Value};

use crate::identity::scopes::Scopes;
use crate::auth::tokens::{self, TokenGrant};
use crate::error::{Error, Result};
use crate::identity::{Actor, Principal};
use crate::service::generate::Volume;
use crate::service::Fhir;
use crate::identity::Context;

/// How many of an actor's persons the script registers through the API (the family search
/// finds them: 20 hits), at most the actor's size.
pub const MEASURED: usize = 20;

/// One measured actor: who it is, its token, the Organization and PractitionerRole the
/// script registers its measured persons with, and how many it should register.
#[derive(Debug, Clone)]
pub struct BenchActor {
    pub label: String,
    pub size: usize,
    pub token: String,
    pub organization: String,
    pub role: String,
    pub measured: usize,
}

/// Writes the directory and the generated persons of each size, and issues the tokens.
/// The first actor is the unrestricted test principal (label `unrestricted`).
pub async fn world(fhir: &Fhir, tenant: &str, sizes: &[usize]) -> Result<Vec<BenchActor>> {
    let operator = Context {
        tenant: tenant.to_owned(),
        principal: Principal::Operator,
        base_url: fhir.config.base_url(tenant),
        request_id: "bench-world".to_owned(),
        lenient: false,
        client_address: None,
        purpose_of_use: None,
    };
    let mut actors = vec![BenchActor {
        label: "unrestricted".to_owned(),
        token: issue(fhir, tenant, Actor::TestUnrestricted).await?,
        size: 0,
        organization: String::new(),
        role: String::new(),
        measured: 0,
    }];
    for &size in sizes {
        let (organization, practitioner, role) =
            (format!("bench-office-{size}"), format!("bench-pr-{size}"), format!("bench-role-{size}"));
        let directory: [Value; 3] = [
            json!({ "resourceType": "Organization", "id": organization, "active": true, "name": format!("ベンチ事業所 {size}") }),
            json!({ "resourceType": "Practitioner", "id": practitioner, "active": true, "name": [{ "family": "ベンチ", "given": [size.to_string()] }] }),
            json!({
                "resourceType": "PractitionerRole", "id": role, "active": true,
                "practitioner": { "reference": format!("Practitioner/{practitioner}") },
                "organization": { "reference": format!("Organization/{organization}") }
            }),
        ];
        for resource in directory {
            let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
            let id = resource.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            fhir.update(&operator, &resource_type, &id, resource, None).await?;
        }
        let measured = size.min(MEASURED);
        if size > measured {
            let volume = Volume {
                patients: size - measured,
                communications: 0,
                seed: 1000 + size as u64,
                registrar: Some(organization.clone()),
                team_member: Some(format!("PractitionerRole/{role}")),
            };
            fhir.generate(tenant, volume).await?;
        }
        let actor = Actor::Practitioner {
            tenant: tenant.to_owned(),
            practitioner: practitioner.clone(),
            role: role.clone(),
            organization: organization.clone(),
        };
        let token = issue(fhir, tenant, actor).await?;
        actors.push(BenchActor { label: format!("reaches {size}"), size, token, organization, role, measured });
    }
    Ok(actors)
}

async fn issue(fhir: &Fhir, tenant: &str, actor: Actor) -> Result<String> {
    let grant = TokenGrant {
        tenant: tenant.to_owned(),
        actor,
        scopes: Scopes::parse("user/*.cruds").map_err(Error::internal)?,
        patient: None,
        client_id: "benchmark".to_owned(),
        lifetime: Duration::days(1),
    };
    let mut connection = fhir.store.connection().await?;
    Ok(tokens::issue(&mut connection, fhir.clock.now(), &grant).await?.access_token)
}
