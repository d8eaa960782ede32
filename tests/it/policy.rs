//! The access policy in the seed's setting: 伊那市 (ina) and 南箕輪村 (minamiminowa) with a
//! wide-area agreement, 箕輪町 (minowa) joining later; a person of 南箕輪村 whose support team
//! spans municipalities; consent withdrawn, agreement ended, a professional leaving the team.

use axum::http::Method;
use renraku::identity::Actor;
use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{Backend, Reply, Server};

pub const CODE_SYSTEM: &str = "https://renraku.example.jp/fhir/sid/municipality-code";
pub const AGREEMENT_PROFILE: &str = "https://renraku.example.jp/fhir/StructureDefinition/renraku-wide-area-agreement";
pub const SCOPE_URL: &str = "https://renraku.example.jp/fhir/StructureDefinition/agreement-scope";
pub const OWNER_TAG: &str = "https://renraku.example.jp/fhir/CodeSystem/owning-municipality";

/// A caller: a bearer token at one tenant's base.
#[derive(Clone)]
pub struct Caller {
    pub tenant: String,
    pub token: String,
}

impl Caller {
    /// A caller holding one of the demo's documented tokens (`renraku serve --demo`).
    pub fn demo(tenant: &str, token: &str) -> Caller {
        Caller { tenant: tenant.into(), token: token.into() }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub async fn get(&self, server: &Server, path: &str) -> Reply {
        server.get_with(&format!("/{}/fhir/{path}", self.tenant), &[("authorization", &self.auth())]).await
    }

    pub async fn put(&self, server: &Server, resource: &Value) -> Reply {
        let path = format!(
            "/{}/fhir/{}/{}",
            self.tenant,
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str().unwrap_or_default()
        );
        server.send(Method::PUT, &path, &[("authorization", &self.auth())], resource).await
    }

    pub async fn post(&self, server: &Server, resource: &Value) -> Reply {
        let path = format!("/{}/fhir/{}", self.tenant, resource["resourceType"].as_str().unwrap_or_default());
        server.send(Method::POST, &path, &[("authorization", &self.auth())], resource).await
    }

    pub async fn delete(&self, server: &Server, path: &str) -> Reply {
        server.request(Method::DELETE, &format!("/{}/fhir/{path}", self.tenant), &[("authorization", &self.auth())], None).await
    }

    /// The ids of a search's matches (entries with search.mode = match), in order.
    pub async fn search_ids(&self, server: &Server, query: &str) -> Vec<String> {
        let reply = self.get(server, query).await;
        reply.expect(200);
        entry_ids(&reply.json(), "match")
    }
}

pub fn entry_ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap_or_default(), e["resource"]["id"].as_str().unwrap_or_default()))
        .collect()
}

/// A professional's token, as the authorization server would issue it: for a Practitioner
/// and PractitionerRole of the directory (made here, in `tenant`, if the test has not made
/// them), since a token for someone the directory does not know is refused.
/// The support team of the walk-through's person: an id its administrator chose (a UUID).
const TEAM_YAMADA: &str = "3c0a9d1e-2f4b-4c6d-8e7f-0a1b2c3d4e5f";

pub async fn practitioner(server: &Server, tenant: &str, name: &str, organization: &str, scopes: &str) -> Caller {
    let mut directory = vec![crate::policy::organization(organization, organization)];
    directory.extend(practitioner_resources(name, organization, "nurse"));
    for resource in directory {
        let path = format!("/{tenant}/fhir/{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default());
        if server.get(&path).await.status.as_u16() == 404 {
            server.setup(tenant, &resource).await;
        }
    }
    let actor = Actor::Practitioner {
        tenant: tenant.into(),
        practitioner: name.into(),
        role: format!("role-{name}"),
        organization: organization.into(),
    };
    Caller { tenant: tenant.into(), token: server.token(tenant, actor, scopes, None).await }
}

pub async fn municipal_admin(server: &Server, tenant: &str) -> Caller {
    let actor = Actor::MunicipalAdmin { tenant: tenant.into(), user: format!("admin-{tenant}") };
    Caller { tenant: tenant.into(), token: server.token(tenant, actor, "user/*.cruds", None).await }
}

pub async fn server_admin(server: &Server, at: &str) -> Caller {
    let actor = Actor::ServerAdmin { user: "operator".into() };
    Caller { tenant: at.into(), token: server.token(at, actor, "user/*.cruds", None).await }
}

pub fn organization(id: &str, name: &str) -> Value {
    json!({ "resourceType": "Organization", "id": id, "active": true, "name": name })
}

/// A Practitioner and their PractitionerRole (`role-{id}`) in `organization`.
pub fn practitioner_resources(id: &str, organization: &str, role_code: &str) -> Vec<Value> {
    vec![
        json!({ "resourceType": "Practitioner", "id": id, "name": [{ "family": id }] }),
        json!({
            "resourceType": "PractitionerRole", "id": format!("role-{id}"), "active": true,
            "practitioner": { "reference": format!("Practitioner/{id}") },
            "organization": { "reference": format!("Organization/{organization}") },
            "code": [{ "coding": [{ "system": "https://renraku.example.jp/fhir/CodeSystem/care-role", "code": role_code }] }]
        }),
    ]
}

pub fn patient(id: &str, family: &str, registrar: &str) -> Value {
    json!({
        "resourceType": "Patient", "id": id, "active": true,
        "name": [{ "family": family, "given": ["太郎"] }],
        "managingOrganization": { "reference": format!("Organization/{registrar}") }
    })
}

pub fn consent(id: &str, patient: &str, status: &str, registrar: &str) -> Value {
    json!({
        "resourceType": "Consent", "id": id, "status": status,
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] }, "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": format!("Patient/{patient}") },
        "dateTime": "2026-04-01",
        "organization": [{ "reference": format!("Organization/{registrar}") }],
        "provision": { "type": "permit", "period": { "start": "2026-04-01" } }
    })
}

pub fn care_team(id: &str, patient: &str, members: &[&str]) -> Value {
    json!({
        "resourceType": "CareTeam", "id": id, "status": "active",
        "subject": { "reference": format!("Patient/{patient}") },
        "participant": members.iter().map(|m| json!({ "member": { "reference": m } })).collect::<Vec<_>>()
    })
}

/// A wide-area agreement between municipalities (by 全国地方公共団体コード).
pub fn agreement(id: &str, codes: &[&str], status: &str, interactions: &[&str]) -> Value {
    json!({
        "resourceType": "Contract", "id": id,
        "meta": { "profile": [AGREEMENT_PROFILE] },
        "extension": [{
            "url": SCOPE_URL,
            "extension": std::iter::once(json!({ "url": "resourceType", "valueCode": "*" }))
                .chain(interactions.iter().map(|i| json!({ "url": "interaction", "valueCode": i })))
                .collect::<Vec<_>>()
        }],
        "status": status,
        "title": format!("広域連携協定 {id}"),
        "applies": { "start": "2026-04-01" },
        "authority": codes.iter().map(|c| json!({ "identifier": { "system": CODE_SYSTEM, "value": c }, "display": c })).collect::<Vec<_>>()
    })
}

pub fn communication(patient: &str, text: &str) -> Value {
    json!({
        "resourceType": "Communication", "status": "completed",
        "subject": { "reference": format!("Patient/{patient}") },
        "sent": "2026-11-20T10:00:00+09:00",
        "payload": [{ "contentString": text }]
    })
}

const INA: &str = "202096";
const MINAMIMINOWA: &str = "203858";
const MINOWA: &str = "203831";
const ALL_INTERACTIONS: [&str; 10] = ["read", "vread", "history-instance", "history-type", "history-system", "search-type", "create", "update", "patch", "delete"];

async fn wide_area_support(backend: Backend) {
    let server = Server::start(backend).await;
    let operator = server_admin(&server, "minamiminowa").await;
    let admin_mm = municipal_admin(&server, "minamiminowa").await;
    let admin_ina = municipal_admin(&server, "ina").await;
    let admin_minowa = municipal_admin(&server, "minowa").await;

    // Directories, each written by its municipality's administrator.
    admin_mm.put(&server, &organization("mm-care-office", "南箕輪村居宅介護支援事業所")).await.expect(201);
    admin_ina.put(&server, &organization("ina-hospital", "伊那中央病院")).await.expect(201);
    admin_minowa.put(&server, &organization("minowa-nursing", "箕輪町訪問看護ステーション")).await.expect(201);
    for resource in practitioner_resources("cm-mm", "mm-care-office", "care-manager") {
        admin_mm.put(&server, &resource).await.expect(201);
    }
    for resource in practitioner_resources("dr-ina", "ina-hospital", "doctor") {
        admin_ina.put(&server, &resource).await.expect(201);
    }
    for resource in practitioner_resources("ns-minowa", "minowa-nursing", "nurse") {
        admin_minowa.put(&server, &resource).await.expect(201);
    }
    // An administrator writes only their own municipality's directory.
    admin_ina.put(&server, &organization("ina-forged", "x")).await.expect(201);
    let wrong_base = Caller { tenant: "minowa".into(), token: admin_ina.token.clone() };
    wrong_base.get(&server, "Organization/ina-hospital").await.expect(401);

    let care_manager = practitioner(&server, "minamiminowa", "cm-mm", "mm-care-office", "user/*.cruds").await;
    let doctor = practitioner(&server, "ina", "dr-ina", "ina-hospital", "user/*.cruds").await;
    let nurse = practitioner(&server, "minowa", "ns-minowa", "minowa-nursing", "user/*.cruds").await;

    // The care-management office registers the person (with an id it chose, a UUID, or one
    // the server assigns) and records the signed consent.
    let mut chosen = patient("5d1f3a2e-6b7c-4d8e-9f00-1a2b3c4d5e6f", "山田", "mm-care-office");
    let registered = care_manager.put(&server, &chosen).await;
    registered.expect(201);
    let tags = registered.json()["meta"]["tag"].clone();
    assert_eq!(tags, json!([{ "system": OWNER_TAG, "code": MINAMIMINOWA, "display": "南箕輪村" }]));
    chosen.as_object_mut().map(|p| p.remove("id"));
    care_manager.post(&server, &chosen).await.expect(201);
    // A readable id of its own choosing is not for a caller bound by the rule (it could probe
    // which ids hidden records use): refused whether taken or free. The fixtures with such ids
    // are set up by the suite.
    let readable = care_manager.put(&server, &patient("p-readable", "山田", "mm-care-office")).await;
    readable.expect(422);
    assert_eq!(readable.issue_expressions(), ["Patient.id"]);
    server.setup("minamiminowa", &patient("p-yamada", "山田", "mm-care-office")).await;
    server.setup("minamiminowa", &patient("p-other", "佐藤", "mm-care-office")).await;
    server.setup("minamiminowa", &consent("consent-yamada", "p-yamada", "active", "mm-care-office")).await;
    // Nobody else may register a person for that office.
    doctor.put(&server, &patient("9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a", "偽", "mm-care-office")).await.expect(403);

    // The team: the care manager and the doctor of 伊那市 — refused until an agreement joins the two.
    let team = care_team(TEAM_YAMADA, "p-yamada", &["PractitionerRole/role-cm-mm", "PractitionerRole/role-dr-ina"]);
    // To 南箕輪村's administrator, 伊那市's directory is not visible without an agreement:
    // the participant is a reference to nothing, exactly as a missing one would be.
    let refused = admin_mm.put(&server, &team).await;
    refused.expect(422);
    assert_eq!(refused.issue_expressions(), vec!["CareTeam.participant[1].member.reference"]);
    let missing = admin_mm.put(&server, &care_team(TEAM_YAMADA, "p-yamada", &["PractitionerRole/role-cm-mm", "PractitionerRole/no-such-role"])).await;
    missing.expect(422);
    let diagnostics = |reply: &Reply| reply.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().replace("no-such-role", "role-dr-ina");
    assert_eq!(diagnostics(&refused), diagnostics(&missing), "a hidden participant and a missing one answer alike");
    // Only the server administrator writes agreements.
    admin_mm.put(&server, &agreement("agreement-ina", &[INA, MINAMIMINOWA], "executed", &ALL_INTERACTIONS)).await.expect(403);
    operator.put(&server, &agreement("agreement-ina", &[INA, MINAMIMINOWA], "executed", &ALL_INTERACTIONS)).await.expect(201);
    admin_mm.put(&server, &team).await.expect(201);
    // Administrators see the agreements they are party to, and no others.
    assert_eq!(admin_ina.search_ids(&server, "Contract").await, vec!["Contract/agreement-ina"]);
    assert!(admin_minowa.search_ids(&server, "Contract").await.is_empty());

    // The doctor of 伊那市, at 伊那市's base, reads and writes on the person's board.
    doctor.get(&server, "Patient/p-yamada").await.expect(200);
    let post = doctor.post(&server, &communication("p-yamada", "往診しました。血圧安定。")).await;
    post.expect(201);
    let board_post = post.json()["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(post.json()["meta"]["tag"][0]["code"], MINAMIMINOWA, "the board belongs to the person's municipality");
    // Without a team, the registering office handles only the registration itself.
    care_manager.post(&server, &communication("p-other", "別の方の記録")).await.expect(403);
    let mut other_team = care_team("", "p-other", &["PractitionerRole/role-cm-mm"]);
    other_team.as_object_mut().map(|t| t.remove("id"));
    admin_mm.post(&server, &other_team).await.expect(201);
    care_manager.post(&server, &communication("p-other", "別の方の記録")).await.expect(201);
    // Search filters in the query: only the person the doctor supports, with an exact total.
    let bundle = doctor.get(&server, "Patient?_total=accurate").await;
    assert_eq!(entry_ids(&bundle.json(), "match"), vec!["Patient/p-yamada"]);
    assert_eq!(bundle.json()["total"], 1);
    assert_eq!(doctor.search_ids(&server, "Communication").await, vec![format!("Communication/{board_post}")]);
    // No side doors: reads, chains, _has, includes, history and $everything of the other person.
    doctor.get(&server, "Patient/p-other").await.expect(404);
    doctor.get(&server, "Patient/p-other/_history").await.expect(404);
    doctor.get(&server, "Patient/p-other/$everything").await.expect(404);
    assert!(doctor.search_ids(&server, "Communication?subject:Patient.name=佐藤").await.is_empty());
    assert!(doctor.search_ids(&server, "Patient?_has:Communication:subject:status=completed&name=佐藤").await.is_empty());
    let included = doctor.get(&server, "Communication?_include=Communication:subject").await;
    assert_eq!(entry_ids(&included.json(), "include"), vec!["Patient/p-yamada"]);
    let revincluded = doctor.get(&server, "Organization?_id=mm-care-office&_revinclude=Patient:organization").await;
    assert_eq!(entry_ids(&revincluded.json(), "include"), vec!["Patient/p-yamada"]);
    let history = doctor.get(&server, "Communication/_history").await;
    assert_eq!(history.json()["total"], 1, "type history shows only what the doctor may read");
    let everything = doctor.get(&server, "Patient/p-yamada/$everything").await;
    everything.expect(200);
    assert!(!everything.text().contains("p-other") && !everything.text().contains("別の方"));
    // A hidden resource answers exactly like a missing one, and errors do not name it.
    let missing = doctor.get(&server, "Patient/p-does-not-exist").await;
    let hidden = doctor.get(&server, "Patient/p-other").await;
    assert_eq!(missing.status, hidden.status);
    let hidden_text = hidden.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().replace("p-other", "X");
    let missing_text = missing.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().replace("p-does-not-exist", "X");
    assert_eq!(hidden_text, missing_text);
    doctor.post(&server, &communication("p-other", "書けない")).await.expect(403);
    doctor.post(&server, &communication("p-does-not-exist", "書けない")).await.expect(403);
    // Administrators manage teams and directories but read no clinical content.
    admin_mm.get(&server, "Patient/p-yamada").await.expect(200);
    admin_mm.get(&server, &format!("Communication/{board_post}")).await.expect(404);
    assert!(admin_mm.search_ids(&server, "Communication").await.is_empty());

    // 箕輪町's nurse: not on the team, no agreement — nothing.
    nurse.get(&server, "Patient/p-yamada").await.expect(404);
    let mut joined = team.clone();
    if let Some(p) = joined["participant"].as_array_mut() {
        p.push(json!({ "member": { "reference": "PractitionerRole/role-ns-minowa" } }));
    }
    admin_mm.put(&server, &joined).await.expect(422);
    // 箕輪町 joins: a second agreement (read and search only), then the nurse joins the team.
    operator.put(&server, &agreement("agreement-minowa", &[MINOWA, MINAMIMINOWA], "executed", &["read", "search-type"])).await.expect(201);
    admin_mm.put(&server, &joined).await.expect(200);
    nurse.get(&server, "Patient/p-yamada").await.expect(200);
    assert_eq!(nurse.search_ids(&server, "Communication").await.len(), 1);
    nurse.post(&server, &communication("p-yamada", "訪問看護記録")).await.expect(403);
    // A directory of a partner municipality is visible; one of a stranger is not.
    nurse.get(&server, "Organization/mm-care-office").await.expect(200);
    nurse.get(&server, "Organization/ina-hospital").await.expect(404);

    // Consent withdrawn: the team loses access at once; the registering office keeps it.
    care_manager.put(&server, &consent("consent-yamada", "p-yamada", "inactive", "mm-care-office")).await.expect(200);
    doctor.get(&server, "Patient/p-yamada").await.expect(404);
    nurse.get(&server, "Patient/p-yamada").await.expect(404);
    care_manager.get(&server, "Patient/p-yamada").await.expect(200);
    care_manager.put(&server, &consent("consent-yamada", "p-yamada", "active", "mm-care-office")).await.expect(200);
    doctor.get(&server, "Patient/p-yamada").await.expect(200);

    // The agreement ends: 伊那市's doctor loses access, 箕輪町's nurse keeps hers.
    operator.put(&server, &agreement("agreement-ina", &[INA, MINAMIMINOWA], "terminated", &ALL_INTERACTIONS)).await.expect(200);
    doctor.get(&server, "Patient/p-yamada").await.expect(404);
    assert!(doctor.search_ids(&server, "Communication").await.is_empty());
    nurse.get(&server, "Patient/p-yamada").await.expect(200);
    operator.put(&server, &agreement("agreement-ina", &[INA, MINAMIMINOWA], "executed", &ALL_INTERACTIONS)).await.expect(200);
    doctor.get(&server, "Patient/p-yamada").await.expect(200);

    // The nurse leaves the team: access stops at once.
    admin_mm.put(&server, &team).await.expect(200);
    nurse.get(&server, "Patient/p-yamada").await.expect(404);
    doctor.get(&server, "Patient/p-yamada").await.expect(200);
}

async fn credentials_and_scopes(backend: Backend) {
    let server = Server::start(backend).await;
    // No token, a malformed header, an unknown token: 401 with a Bearer challenge.
    for authorization in ["none", "Basic abc", "Bearer not-a-token"] {
        let reply = server.get_with("/ina/fhir/Patient", &[("authorization", authorization)]).await;
        reply.expect(401);
        assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
        assert_eq!(reply.json()["resourceType"], "OperationOutcome");
    }
    // The capability statement needs no token.
    server.get_with("/ina/fhir/metadata", &[("authorization", "none")]).await.expect(200);
    // A token is valid only at its own municipality's base.
    let doctor = practitioner(&server, "ina", "dr", "org", "user/Patient.rs").await;
    let elsewhere = Caller { tenant: "minowa".into(), token: doctor.token.clone() };
    elsewhere.get(&server, "Patient").await.expect(401);
    // Scopes narrow the policy: a Patient-only token may not search Communications.
    doctor.get(&server, "Patient").await.expect(200);
    let refused = doctor.get(&server, "Communication").await;
    refused.expect(403);
    assert_eq!(refused.json()["issue"][0]["code"], "forbidden");
    doctor.post(&server, &communication("p", "x")).await.expect(403);
    // Revocation acts on the next request.
    let mut connection = server.fhir().store.connection().await.expect("connection");
    renraku::auth::tokens::revoke(&mut connection, &doctor.token).await.expect("revoke");
    doctor.get(&server, "Patient").await.expect(401);
}

async fn ownership_cannot_be_forged(backend: Backend) {
    let server = Server::start(backend).await;
    let mut resource = organization("org-1", "伊那市の事業所");
    resource["meta"] = json!({ "tag": [
        { "system": OWNER_TAG, "code": MINOWA },
        { "system": "http://example.org/other", "code": "kept" }
    ] });
    let created = server.put("/ina/fhir/Organization/org-1", &resource).await;
    created.expect(201);
    let tags = created.json()["meta"]["tag"].clone();
    assert_eq!(tags, json!([
        { "system": "http://example.org/other", "code": "kept" },
        { "system": OWNER_TAG, "code": INA, "display": "伊那市" }
    ]));
    let found = server.get(&format!("/ina/fhir/Organization?_tag={OWNER_TAG}|{INA}")).await;
    assert_eq!(entry_ids(&found.json(), "match"), vec!["Organization/org-1"]);
}


/// The README's walk-through on the demo data: the doctor of 伊那市 sees 山田 太郎's board,
/// 箕輪町's nurse does not, until the operator signs 箕輪町 in and the team adds her.
async fn demo_walk_through(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let as_demo = |tenant: &str, token: &str| Caller { tenant: tenant.into(), token: token.into() };
    let doctor = as_demo("ina", "demo-doctor-ina");
    let nurse = as_demo("minowa", "demo-nurse-minowa");
    let care_manager = as_demo("minamiminowa", "demo-care-manager");
    let ehr = as_demo("ina", "demo-ehr-ina");
    let admin = as_demo("minamiminowa", "demo-admin-minamiminowa");
    let operator = as_demo("minowa", "demo-operator");

    doctor.get(&server, "Patient/demo-yamada-taro").await.expect(200);
    assert_eq!(doctor.search_ids(&server, "Communication?subject=Patient/demo-yamada-taro&_sort=-sent").await,
        vec!["Communication/demo-board-2", "Communication/demo-board-1"]);
    assert_eq!(care_manager.search_ids(&server, "Patient?name=やまだ").await, vec!["Patient/demo-yamada-taro"]);
    // The hospital's EHR acts for the hospital, which is not itself on the team.
    ehr.get(&server, "Patient/demo-yamada-taro").await.expect(404);
    nurse.get(&server, "Patient/demo-yamada-taro").await.expect(404);
    admin.get(&server, "Communication/demo-board-1").await.expect(404);

    let mut agreement = care_manager.get(&server, "Contract/demo-agreement-kamiina").await;
    agreement.expect(404);
    agreement = admin.get(&server, "Contract/demo-agreement-kamiina").await;
    agreement.expect(200);
    let mut minowa_joins = agreement.json();
    minowa_joins["id"] = json!("demo-agreement-minowa");
    minowa_joins["authority"][0] = json!({ "identifier": { "system": CODE_SYSTEM, "value": MINOWA }, "display": "箕輪町" });
    minowa_joins["title"] = json!("箕輪町・南箕輪村 広域連携協定（デモ）");
        minowa_joins["meta"] = json!({ "profile": [AGREEMENT_PROFILE] });
    operator.put(&server, &minowa_joins).await.expect(201);
    let mut team = admin.get(&server, "CareTeam/demo-team-yamada").await.json();
    if let Some(p) = team["participant"].as_array_mut() {
        p.push(json!({ "member": { "reference": "PractitionerRole/demo-role-ns-sato" } }));
    }
    admin.put(&server, &team).await.expect(200);
    nurse.get(&server, "Patient/demo-yamada-taro").await.expect(200);
    nurse.post(&server, &communication("demo-yamada-taro", "訪問看護で入浴介助を行いました。")).await.expect(201);
    assert_eq!(doctor.search_ids(&server, "Communication?subject=Patient/demo-yamada-taro").await.len(), 3);
    // Restarted outside demo mode on the same database, the published demo tokens are dead.
    let server = server.restart_with(|config| config.demo = false).await;
    doctor.get(&server, "Patient/demo-yamada-taro").await.expect(401);
}


/// A server administrator adds a municipality at run time; it is served at once and after
/// a restart. Nobody else may.
async fn administrator_adds_a_municipality(backend: Backend) {
    let server = Server::start(backend).await;
    let operator = server_admin(&server, "ina").await;
    let admin = municipal_admin(&server, "ina").await;
    let body = json!({ "slug": "tatsuno", "code": "203823", "name": "辰野町" });
    let send = |token: Option<String>, body: Value| {
        let server = &server;
        async move {
            let authorization = token.map(|t| format!("Bearer {t}")).unwrap_or_else(|| "none".into());
            server.send(Method::POST, "/admin/tenants", &[("authorization", &authorization)], &body).await
        }
    };
    send(None, body.clone()).await.expect(401);
    send(Some(admin.token.clone()), body.clone()).await.expect(403);
    let bad = send(Some(operator.token.clone()), json!({ "slug": "tatsuno", "code": "203824", "name": "辰野町" })).await;
    bad.expect(400);
    assert!(bad.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().contains("check digit"));
    send(Some(operator.token.clone()), json!({ "slug": "admin", "code": "203823", "name": "x" })).await.expect(400);
    let added = send(Some(operator.token.clone()), body.clone()).await;
    added.expect(201);
    assert_eq!(added.json()["fhirBase"], "http://renraku.test/tatsuno/fhir");
    send(Some(operator.token.clone()), body.clone()).await.expect(409);
    let listed = server
        .request(Method::GET, "/admin/tenants", &[("authorization", &format!("Bearer {}", operator.token))], None)
        .await;
    let slugs: Vec<String> =
        listed.json()["tenants"].as_array().into_iter().flatten().filter_map(|t| t["slug"].as_str().map(str::to_owned)).collect();
    assert_eq!(slugs, vec!["ina", "minamiminowa", "minowa", "tatsuno"]);
    let capability = server.get_with("/tatsuno/fhir/metadata", &[("authorization", "none")]).await;
    capability.expect(200);
    assert!(capability.text().contains("辰野町"));
    let local = server.token("tatsuno", Actor::TestUnrestricted, "user/*.cruds", None).await;
    let local = Caller { tenant: "tatsuno".into(), token: local };
    let created = local.put(&server, &organization("tatsuno-office", "辰野町役場")).await;
    created.expect(201);
    assert_eq!(created.json()["meta"]["tag"][0]["code"], "203823");
    let server = server.restart_with(|_| {}).await;
    local.get(&server, "Organization/tatsuno-office").await.expect(200);
}

/// A hospital's EHR registered to keep its Organization's directory (`maintains_directory`):
/// it writes its own Practitioners, PractitionerRoles, Locations and HealthcareServices, and
/// nothing of another Organization's; without the registration it writes none.
async fn a_system_client_keeps_its_organizations_directory(backend: Backend) {
    let server = Server::start(backend).await;
    server.setup("ina", &organization("hospital", "伊那中央病院")).await;
    server.setup("ina", &organization("clinic", "上伊那クリニック")).await;
    for resource in practitioner_resources("dr-clinic", "clinic", "doctor") {
        server.setup("ina", &resource).await;
    }
    let system = |maintains_directory| Actor::System { tenant: "ina".into(), client: "ehr".into(), organization: "hospital".into(), maintains_directory };
    let ehr = Caller { tenant: "ina".into(), token: server.token("ina", system(true), "system/*.cruds", None).await };
    let plain = Caller { tenant: "ina".into(), token: server.token("ina", system(false), "system/*.cruds", None).await };
    let role = |id: &str, practitioner: &str, organization: &str| {
        json!({ "resourceType": "PractitionerRole", "id": id, "active": true,
                "practitioner": { "reference": format!("Practitioner/{practitioner}") },
                "organization": { "reference": format!("Organization/{organization}") } })
    };
    let person = |id: &str, family: &str| json!({ "resourceType": "Practitioner", "id": id, "active": true, "name": [{ "family": family }] });
    // A new Practitioner is created (POST: the server names it), then given a role.
    let created = ehr.post(&server, &json!({ "resourceType": "Practitioner", "active": true, "name": [{ "family": "小林" }] })).await;
    created.expect(201);
    let new_id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let dr_new = new_id.as_str();
    // (what, writer, resource, expected status), in order.
    let table: Vec<(&str, &Caller, Value, u16)> = vec![
        ("its role at the hospital", &ehr, role("role-dr-new", dr_new, "hospital"), 201),
        ("a ward of the hospital", &ehr, json!({ "resourceType": "Location", "id": "ward-3", "name": "3階病棟", "managingOrganization": { "reference": "Organization/hospital" } }), 201),
        ("a service of the hospital", &ehr, json!({ "resourceType": "HealthcareService", "id": "home-visits", "name": "訪問診療", "providedBy": { "reference": "Organization/hospital" } }), 201),
        // An existing Practitioner may also work elsewhere: the client does not change it.
        ("its Practitioner, renamed", &ehr, person(dr_new, "小林（旧姓 高木）"), 404),
        // Nor may it give another organization's professional a role at its own.
        ("a role at the hospital for the clinic's doctor", &ehr, role("role-grab", "dr-clinic", "hospital"), 403),
        ("a role at another organization", &ehr, role("role-elsewhere", dr_new, "clinic"), 403),
        ("its role moved to another organization", &ehr, role("role-dr-new", dr_new, "clinic"), 403),
        // The write grant does not cover them: to the write they do not exist (404), and
        // nothing is created in their place.
        ("another organization's Practitioner", &ehr, person("dr-clinic", "改ざん"), 404),
        ("another organization's role", &ehr, role("role-dr-clinic", "dr-clinic", "hospital"), 404),
        ("a ward of another organization", &ehr, json!({ "resourceType": "Location", "id": "clinic-room", "name": "診察室", "managingOrganization": { "reference": "Organization/clinic" } }), 403),
        ("without the registration, a role at its own organization", &plain, role("role-plain", dr_new, "hospital"), 403),
        ("without the registration, a Practitioner", &plain, person("dr-plain", "森"), 403),
    ];
    for (what, writer, resource, expected) in table {
        let reply = writer.put(&server, &resource).await;
        assert_eq!(reply.status.as_u16(), expected, "{what}: {}", reply.text());
    }
    plain.post(&server, &json!({ "resourceType": "Practitioner", "name": [{ "family": "森" }] })).await.expect(403);
    // What it wrote is there, and the other organization's entries are as they were.
    assert_eq!(ehr.get(&server, "PractitionerRole/role-dr-new").await.json()["organization"]["reference"], "Organization/hospital");
    assert_eq!(ehr.get(&server, "Practitioner/dr-clinic").await.json()["name"][0]["family"], "dr-clinic");
    ehr.delete(&server, "Location/ward-3").await.expect(204);
    // Another organization's role: the delete reaches nothing it may write (204 as for
    // anything it cannot see, as the README says) and the role stays.
    ehr.delete(&server, "PractitionerRole/role-dr-clinic").await.expect(204);
    assert_eq!(ehr.get(&server, "PractitionerRole/role-dr-clinic").await.json()["organization"]["reference"], "Organization/clinic");
}

/// A search that names a person (`subject=Patient/X`) judges the person once where the
/// grant reaches persons through that parameter, else each row: either way it finds what
/// judging each of the same rows finds (here by `_id`, which names no person). As the care
/// manager on the support team (with consent) of one person her office registered, and not
/// of the other; one message about the other person is addressed to the first.
async fn a_search_naming_a_person_finds_what_judging_each_row_finds(backend: Backend) {
    let server = Server::start_as(backend, crate::support::Who::CareManager).await;
    server.setup("ina", &organization("other-office", "別の事業所")).await;
    server.setup("ina", &json!({ "resourceType": "Patient", "id": "ours", "managingOrganization": { "reference": crate::support::OFFICE } })).await;
    server.setup("ina", &json!({ "resourceType": "Patient", "id": "theirs", "managingOrganization": { "reference": "Organization/other-office" } })).await;
    server.setup("ina", &consent("consent-ours", "ours", "active", "office")).await;
    server.setup("ina", &care_team("team-ours", "ours", &["PractitionerRole/role-cm"])).await;
    let message = |id: &str, subject: &str, recipient: Option<&str>| {
        let mut message = json!({ "resourceType": "Communication", "id": id, "status": "completed",
                                  "subject": { "reference": subject }, "payload": [{ "contentString": "連絡" }] });
        if let Some(recipient) = recipient {
            message["recipient"] = json!([{ "reference": recipient }]);
        }
        message
    };
    server.setup("ina", &message("m-ours", "Patient/ours", None)).await;
    server.setup("ina", &message("m-theirs", "Patient/theirs", None)).await;
    server.setup("ina", &message("m-theirs-to-ours", "Patient/theirs", Some("Patient/ours"))).await;
    let found = |reply: &Reply| -> (Vec<String>, Value) {
        reply.expect(200);
        let bundle = reply.json();
        let mut ids: Vec<String> = bundle["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect();
        ids.sort();
        (ids, bundle["total"].clone())
    };
    let (ours, total) = found(&server.get("/ina/fhir/Communication?subject=Patient/ours").await);
    assert_eq!((ours.clone(), total), (vec!["m-ours".to_owned()], json!(1)), "the registered person's message");
    assert_eq!(ours, found(&server.get("/ina/fhir/Communication?_id=m-ours").await).0);
    let (theirs, total) = found(&server.get("/ina/fhir/Communication?subject=Patient/theirs").await);
    let (each_row, each_total) = found(&server.get("/ina/fhir/Communication?_id=m-theirs,m-theirs-to-ours").await);
    assert_eq!((&theirs, &total), (&each_row, &each_total), "the other person's messages, as each row is judged");
    // The message to the reached person is hers too (`recipient` is in her compartment); the
    // other is not: judged row by row, not by the person named.
    assert_eq!(theirs, vec!["m-theirs-to-ours".to_owned()], "a message only about a person not reached stays hidden");
    // Sorted and paged as the timeline is, the same.
    let (page, _) = found(&server.get("/ina/fhir/Communication?subject=Patient/theirs&_sort=-sent&_count=1").await);
    assert!(page.iter().all(|id| theirs.contains(id)), "{page:?}");
}

/// A search's `total` counts what the caller may see, whether the first page holds every
/// match (its total is the page's matches, no count is run) or not (counted): as the care
/// manager, who reaches three of the five persons of one family name.
async fn a_total_counts_only_what_the_caller_sees_on_one_page_or_many(backend: Backend) {
    let server = Server::start_as(backend, crate::support::Who::CareManager).await;
    server.setup("ina", &organization("other-office", "別の事業所")).await;
    for n in 0..5 {
        let reached = n < 3;
        let office = if reached { crate::support::OFFICE.to_owned() } else { "Organization/other-office".to_owned() };
        server.setup("ina", &json!({ "resourceType": "Patient", "id": format!("p{n}"), "name": [{ "family": "合計" }],
                                     "managingOrganization": { "reference": office } })).await;
        if reached {
            server.setup("ina", &consent(&format!("consent-{n}"), &format!("p{n}"), "active", "office")).await;
            server.setup("ina", &care_team(&format!("team-{n}"), &format!("p{n}"), &["PractitionerRole/role-cm"])).await;
        }
    }
    let family = "/ina/fhir/Patient?family=%E5%90%88%E8%A8%88";
    let ids = |bundle: &Value| -> Vec<String> {
        bundle["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect()
    };
    let whole = server.get(family).await.expect(200).json();
    assert_eq!((whole["total"].clone(), ids(&whole).len()), (json!(3), 3), "one page: {whole}");
    let first = server.get(&format!("{family}&_count=2")).await.expect(200).json();
    assert_eq!((first["total"].clone(), ids(&first).len()), (json!(3), 2), "the first of two pages: {first}");
    let next = first["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).expect("a next page");
    let next = next.split_once("/ina/fhir/").map(|(_, rest)| format!("/ina/fhir/{rest}")).expect("a local link");
    let second = server.get(&next).await.expect(200).json();
    assert_eq!((second["total"].clone(), ids(&second).len()), (json!(3), 1), "the last page: {second}");
    let mut seen = [ids(&first), ids(&second)].concat();
    seen.sort();
    assert_eq!(seen, vec!["p0", "p1", "p2"]);
    assert_eq!(server.get(&format!("{family}&_summary=count")).await.expect(200).json()["total"], 3);
    let without = server.get(&format!("{family}&_total=none")).await.expect(200).json();
    assert!(without.get("total").is_none() && ids(&without).len() == 3, "{without}");
}

both_backends!(
    a_total_counts_only_what_the_caller_sees_on_one_page_or_many,
    a_search_naming_a_person_finds_what_judging_each_row_finds,
    wide_area_support,
    credentials_and_scopes,
    ownership_cannot_be_forged,
    demo_walk_through,
    administrator_adds_a_municipality,
    registration_in_one_transaction,
    a_system_client_keeps_its_organizations_directory
);

/// A registering office records a new person, the consent, the team and a first note in
/// one transaction: each entry is decided on the facts the earlier entries wrote.
async fn registration_in_one_transaction(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let care_manager = Caller { tenant: "minamiminowa".into(), token: "demo-care-manager".into() };
    let doctor = Caller { tenant: "ina".into(), token: "demo-doctor-ina".into() };
    let person = "urn:uuid:5b0c2a52-0000-4000-8000-000000000001";
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction", "entry": [
            { "fullUrl": person, "request": { "method": "POST", "url": "Patient" },
              "resource": { "resourceType": "Patient", "name": [{ "family": "伊藤", "given": ["和子"] }],
                            "managingOrganization": { "reference": "Organization/demo-mm-care-office" } } },
            { "request": { "method": "POST", "url": "Consent" },
              "resource": consent_body(person) },
            { "request": { "method": "POST", "url": "CareTeam" },
              "resource": { "resourceType": "CareTeam", "status": "active", "subject": { "reference": person },
                            "participant": [{ "member": { "reference": "PractitionerRole/demo-role-cm-suzuki" } },
                                            { "member": { "reference": "PractitionerRole/demo-role-dr-tanaka" } }] } },
            { "request": { "method": "POST", "url": "Communication" },
              "resource": { "resourceType": "Communication", "status": "completed", "subject": { "reference": person },
                            "payload": [{ "contentString": "初回訪問を行いました。" }] } }
        ]
    });
    let reply = server
        .send(Method::POST, "/minamiminowa/fhir", &[("authorization", "Bearer demo-care-manager")], &bundle)
        .await;
    reply.expect(200);
    let patient = reply.json()["entry"][0]["response"]["location"].as_str().unwrap_or_default().split('/').nth(1).unwrap_or_default().to_owned();
    care_manager.get(&server, &format!("Patient/{patient}")).await.expect(200);
    doctor.get(&server, &format!("Patient/{patient}")).await.expect(200);
    assert_eq!(doctor.search_ids(&server, &format!("Communication?subject=Patient/{patient}")).await.len(), 1);
    // The same transaction by the doctor fails as a whole: 伊那市's hospital registers no one in 南箕輪村.
    let refused = server.send(Method::POST, "/ina/fhir", &[("authorization", "Bearer demo-doctor-ina")], &bundle).await;
    refused.expect(403);
}

fn consent_body(patient: &str) -> Value {
    let mut body = consent("x", "x", "active", "demo-mm-care-office");
    if let Some(object) = body.as_object_mut() {
        object.remove("id");
    }
    body["patient"] = json!({ "reference": patient });
    body
}
