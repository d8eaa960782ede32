//! Demo data for `renraku serve --demo`: the seed's setting, written through the ordinary
//! service path (validated, versioned, checked by the access policy as the operator).
//!
//! 南箕輪村 (minamiminowa) registers 山田 太郎, records his consent and forms his support
//! team with its care manager and a doctor of 伊那市 (ina), under a wide-area agreement
//! between the two. 箕輪町 (minowa) has a visiting nurse but no agreement yet, so she sees
//! nothing of him until an administrator adds one (the README walks through it).
//!
//! Demo access tokens are fixed strings (listed in [`DEMO_TOKENS`] and the README) so a
//! newcomer can paste examples. They exist only in demo mode. Seeding is idempotent: fixed
//! ids and update-as-create, skipped when the resource already exists.

use chrono::Duration;
use serde_json::{json, Value};

use crate::identity::scopes::Scopes;
use crate::auth::tokens::{self, TokenGrant};
use crate::error::{Error, Result};
use crate::policy::facts::{AGREEMENT_PROFILE_URL, AGREEMENT_SCOPE_URL, MUNICIPALITY_CODE_SYSTEM};
use crate::identity::{Actor, Principal};
use crate::service::Fhir;
use crate::identity::Context;

/// The code system of professional roles in PractitionerRole.code (see ARCHITECTURE.md).
pub const CARE_ROLE_SYSTEM: &str = "https://renraku.example.jp/fhir/CodeSystem/care-role";
/// The code system of facility kinds in Organization.type.
pub const FACILITY_TYPE_SYSTEM: &str = "https://renraku.example.jp/fhir/CodeSystem/facility-type";
/// JP Core's identifier system for insurance medical institution numbers (医療機関コード).
pub const MEDICAL_INSTITUTION_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";
/// Care-insurance office numbers (介護保険事業所番号); JP Core defines no system for them.
pub const CARE_OFFICE_SYSTEM: &str = "https://renraku.example.jp/fhir/sid/care-office-no";

/// `(token, tenant, actor, scopes, what it is)` — the demo's documented access tokens.
pub fn demo_tokens() -> Vec<(&'static str, &'static str, Actor, &'static str, &'static str)> {
    let practitioner = |tenant: &str, name: &str, organization: &str| Actor::Practitioner {
        tenant: tenant.into(),
        practitioner: format!("demo-{name}"),
        role: format!("demo-role-{name}"),
        organization: organization.into(),
    };
    vec![
        (
            "demo-care-manager",
            "minamiminowa",
            practitioner("minamiminowa", "cm-suzuki", "demo-mm-care-office"),
            "user/*.cruds",
            "鈴木 花子, care manager at 南箕輪村's care-management office (registered 山田 太郎; on his team)",
        ),
        (
            "demo-doctor-ina",
            "ina",
            practitioner("ina", "dr-tanaka", "demo-ina-central-hospital"),
            "user/*.cruds",
            "田中 一郎, doctor at 伊那中央病院 (on 山田 太郎's team, across the border under the agreement)",
        ),
        (
            "demo-nurse-minowa",
            "minowa",
            practitioner("minowa", "ns-sato", "demo-minowa-visiting-nurse"),
            "user/*.cruds",
            "佐藤 美咲, visiting nurse in 箕輪町 (no agreement, not on the team: sees nothing until both change)",
        ),
        (
            "demo-ehr-ina",
            "ina",
            Actor::System { tenant: "ina".into(), client: "demo-ehr-ina".into(), organization: "demo-ina-central-hospital".into(), maintains_directory: false },
            "system/*.cruds",
            "伊那中央病院's EHR, a backend-services client acting for the hospital",
        ),
        (
            "demo-admin-minamiminowa",
            "minamiminowa",
            Actor::MunicipalAdmin { tenant: "minamiminowa".into(), user: "demo-admin-minamiminowa".into() },
            "user/*.cruds",
            "南箕輪村's administrator: directory and support teams, no clinical content",
        ),
        (
            "demo-auditor-minamiminowa",
            "minamiminowa",
            Actor::MunicipalAuditor { tenant: "minamiminowa".into(), user: "demo-auditor-minamiminowa".into() },
            "user/AuditEvent.rs user/DocumentReference.rs user/Binary.rs",
            "南箕輪村's auditor: reads the municipality's audit trail and its consent papers, nothing else",
        ),
        (
            "demo-operator",
            "ina",
            Actor::ServerAdmin { user: "demo-operator".into() },
            "user/*.cruds",
            "the server administrator: agreements and directories of every municipality",
        ),
    ]
}

fn organization(id: &str, name: &str, facility: &str, identifier: Option<(&str, &str)>) -> Value {
    let mut resource = json!({
        "resourceType": "Organization", "id": id, "active": true, "name": name,
        "type": [{ "coding": [{ "system": FACILITY_TYPE_SYSTEM, "code": facility }] }]
    });
    if let Some((system, value)) = identifier {
        crate::fhir::set(&mut resource, "identifier", json!([{ "system": system, "value": value }]));
    }
    resource
}

fn professional(name: &str, family: &str, given: &str, organization: &str, role: &str) -> [Value; 2] {
    [
        json!({
            "resourceType": "Practitioner", "id": format!("demo-{name}"), "active": true,
            "name": [{ "use": "official", "text": format!("{family} {given}"), "family": family, "given": [given] }]
        }),
        json!({
            "resourceType": "PractitionerRole", "id": format!("demo-role-{name}"), "active": true,
            "practitioner": { "reference": format!("Practitioner/demo-{name}") },
            "organization": { "reference": format!("Organization/{organization}") },
            "code": [{ "coding": [{ "system": CARE_ROLE_SYSTEM, "code": role }] }]
        }),
    ]
}

/// The demo resources, by tenant, in the order they must be written.
fn resources() -> Vec<(&'static str, Value)> {
    let mut list = vec![
        ("ina", organization("demo-ina-central-hospital", "伊那中央病院（デモ）", "hospital", Some((MEDICAL_INSTITUTION_SYSTEM, "2010123456")))),
        ("minamiminowa", organization("demo-mm-care-office", "南箕輪村居宅介護支援事業所（デモ）", "care-management-office", Some((CARE_OFFICE_SYSTEM, "2070900011")))),
        ("minowa", organization("demo-minowa-visiting-nurse", "箕輪町訪問看護ステーション（デモ）", "visiting-nurse-station", Some((CARE_OFFICE_SYSTEM, "2060500022")))),
    ];
    list.extend(professional("dr-tanaka", "田中", "一郎", "demo-ina-central-hospital", "doctor").map(|r| ("ina", r)));
    list.extend(professional("cm-suzuki", "鈴木", "花子", "demo-mm-care-office", "care-manager").map(|r| ("minamiminowa", r)));
    list.extend(professional("ns-sato", "佐藤", "美咲", "demo-minowa-visiting-nurse", "nurse").map(|r| ("minowa", r)));
    list.push((
        "minamiminowa",
        json!({
            "resourceType": "Contract", "id": "demo-agreement-kamiina",
            "meta": { "profile": [AGREEMENT_PROFILE_URL] },
            "extension": [{
                "url": AGREEMENT_SCOPE_URL,
                "extension": [
                    { "url": "resourceType", "valueCode": "*" },
                    { "url": "interaction", "valueCode": "read" },
                    { "url": "interaction", "valueCode": "search-type" },
                    { "url": "interaction", "valueCode": "create" },
                    { "url": "interaction", "valueCode": "update" }
                ]
            }],
            "status": "executed",
            "title": "上伊那地域 在宅医療・介護連携に関する広域連携協定（伊那市・南箕輪村）（デモ）",
            "applies": { "start": "2026-04-01" },
            "authority": [
                { "identifier": { "system": MUNICIPALITY_CODE_SYSTEM, "value": "202096" }, "display": "伊那市" },
                { "identifier": { "system": MUNICIPALITY_CODE_SYSTEM, "value": "203858" }, "display": "南箕輪村" }
            ]
        }),
    ));
    list.push((
        "minamiminowa",
        json!({
            "resourceType": "Patient",
            "id": "demo-yamada-taro",
            "meta": { "profile": ["https://renraku.example.jp/fhir/StructureDefinition/renraku-patient"] },
            "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.51.1203858", "value": "00012345" }],
            "active": true,
            "name": [
                {
                    "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE" }],
                    "use": "official", "text": "山田 太郎", "family": "山田", "given": ["太郎"]
                },
                {
                    "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL" }],
                    "use": "official", "text": "ヤマダ タロウ", "family": "ヤマダ", "given": ["タロウ"]
                }
            ],
            "gender": "male",
            "birthDate": "1938-04-12",
            "address": [{ "text": "長野県上伊那郡南箕輪村", "state": "長野県", "city": "南箕輪村", "country": "JP" }],
            "managingOrganization": { "reference": "Organization/demo-mm-care-office" }
        }),
    ));
    list.push((
        "minamiminowa",
        json!({
            "resourceType": "Consent", "id": "demo-consent-yamada", "status": "active",
            "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] }, "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
            "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }], "text": "情報共有に関する同意書" }],
            "patient": { "reference": "Patient/demo-yamada-taro" },
            "dateTime": "2026-04-10",
            "performer": [{ "reference": "Patient/demo-yamada-taro" }],
            "organization": [{ "reference": "Organization/demo-mm-care-office" }],
            "sourceAttachment": { "contentType": "application/pdf", "title": "同意書（デモ、署名済み）" },
            "provision": {
                "type": "permit", "period": { "start": "2026-04-10" },
                "actor": [{
                    "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "INF" }], "text": "説明者" },
                    "reference": { "reference": "PractitionerRole/demo-role-cm-suzuki" }
                }]
            }
        }),
    ));
    list.push((
        "minamiminowa",
        json!({
            "resourceType": "CareTeam", "id": "demo-team-yamada", "status": "active", "name": "山田 太郎さんの支援チーム",
            "subject": { "reference": "Patient/demo-yamada-taro" },
            "participant": [
                { "member": { "reference": "PractitionerRole/demo-role-cm-suzuki" } },
                { "member": { "reference": "PractitionerRole/demo-role-dr-tanaka" } }
            ]
        }),
    ));
    list.push((
        "minamiminowa",
        json!({
            "resourceType": "Communication", "id": "demo-board-1", "status": "completed",
            "subject": { "reference": "Patient/demo-yamada-taro" },
            "sender": { "reference": "PractitionerRole/demo-role-cm-suzuki" },
            "sent": "2026-11-20T09:30:00+09:00",
            "payload": [{ "contentString": "今週からデイサービスを週2回に増やしました。" }]
        }),
    ));
    list.push((
        "minamiminowa",
        json!({
            "resourceType": "Communication", "id": "demo-board-2", "status": "completed",
            "subject": { "reference": "Patient/demo-yamada-taro" },
            "sender": { "reference": "PractitionerRole/demo-role-dr-tanaka" },
            "sent": "2026-11-21T14:00:00+09:00",
            "payload": [{ "contentString": "往診しました。血圧は安定しています。" }]
        }),
    ));
    list
}

/// Writes the demo resources that are not there yet, and the demo tokens.
pub async fn seed(fhir: &Fhir) -> Result<()> {
    for (tenant, resource) in resources() {
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
        let id = resource.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let context = Context {
            tenant: tenant.to_owned(),
            principal: Principal::Operator,
            base_url: fhir.config.base_url(tenant),
            request_id: "demo-seed".to_owned(),
            lenient: false,
            client_address: None,
            purpose_of_use: None,
        };
        if fhir.read(&context, &resource_type, &id).await.is_ok() {
            continue;
        }
        fhir.update(&context, &resource_type, &id, resource, None).await?;
    }
    let mut connection = fhir.store.connection().await?;
    for (token, tenant, actor, scopes, _) in demo_tokens() {
        let grant = TokenGrant {
            tenant: tenant.to_owned(),
            actor,
            scopes: Scopes::parse(scopes).map_err(Error::internal)?,
            patient: None,
            client_id: "demo".to_owned(),
            lifetime: Duration::days(3650),
        };
        tokens::store(&mut connection, fhir.clock.now(), &grant, token).await?;
    }
    Ok(())
}

/// Revokes the demo's fixed tokens (at every start outside demo mode): their values are
/// published, so they must never work on a database that serves real data.
pub async fn withdraw_tokens(fhir: &Fhir) -> Result<()> {
    let mut connection = fhir.store.connection().await?;
    for (token, ..) in demo_tokens() {
        tokens::revoke(&mut connection, token).await?;
    }
    Ok(())
}
