//! The security review's findings, each rerun as the attack was made: real principals, the
//! actual request, on both backends. One row per finding; a new finding adds a row (and a
//! line in SECURITY.md). Each case fails on the code the review tried.
//!
//! | finding | case |
//! |---|---|
//! | C1 unauthenticated crash by a deeply nested XML body | `c1_nested_bodies_are_refused_before_parsing` |
//! | C2 an administrator borrows another municipality's Organization | `c2_clients_and_roles_stay_in_their_municipality` |
//! | C2 one administrator alone makes a client with clinical reach | `smart::client_registration` (dual control) |
//! | C2 an administrator maps her own sign-in to a practitioner | `c2_administrators_cannot_map_sign_ins` |
//! | C3 consent-page CSRF takes over a professional's sign-in | `c3_sign_in_is_bound_to_the_browser`, `upstream_login` (callback) |
//! | H1 old versions are judged by the resource's current compartment | `h1_each_version_is_judged_by_its_own_content` |
//! | H2 a `patient/` scope lifts a granular `user/` restriction | `h2_patient_scopes_reach_only_the_patient_context` |
//! | H3 departed professionals keep access | `h3_departed_professionals_lose_access_at_once` |
//! | H4 a person's data outside the R4 Patient compartment is "other" | `h4_data_about_a_person_outside_the_compartment_is_theirs` |
//! | M1 agreement interactions collapse | `m1_each_agreement_interaction_is_its_own` |
//! | M2 create/update permissions read data | `m2_matching_and_patching_need_read_permissions` |
//! | M3 existence oracle through team participants | `policy::wide_area_support` (hidden = missing) |
//! | M3 existence oracle through `PUT` to a chosen id | `m3_a_put_cannot_probe_for_hidden_ids` |
//! | M4 a team member keeps access after withdrawal | `m4_consent_and_registration_are_the_registrars` |
//! | M5 refresh tokens cannot be revoked | `m5_revoking_a_refresh_token_revokes_its_family` |
//! | M6 a failed transaction leaves pooled connections broken | `m6_a_lost_transaction_does_not_poison_the_pool` |
//! | M7 one query ties up the database | `m7_requests_stay_within_the_limits` |
//! | M7 an abandoned statement runs on in PostgreSQL | `m7_abandoned_statements_are_cancelled_postgres` |
//! | Low: NUL in an id answers 500 on PostgreSQL | `low_nul_characters_are_a_client_error` |
//! | Low: two first starts on one database, one fails | `low_simultaneous_first_starts_both_start` |
//! | Low: plain-text errors; `_revinclude=*` includes nothing | `low_every_error_is_an_outcome_and_revinclude_star_works` |
//! | Concurrent conditional creates duplicate a person (structure issue) | `concurrency::concurrent_conditional_creates_make_one_resource` (as the care manager and unrestricted) |

use axum::http::Method;
use renraku::identity::Actor;
use serde_json::{json, Value};

use crate::app_launch::{exchange, form, launch, param, pkce, Browser};
use crate::both_backends;
use crate::policy::{agreement, care_team, consent, municipal_admin, organization, patient, practitioner, server_admin, Caller};
use crate::support::{Backend, Reply, Server};

const IDENTIFIER_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.1202096";

/// 伊那市: a care-management office registered p1 (with consent); the team is the care
/// manager, a doctor of the hospital, and the hospital itself; one Observation.
async fn team_world(server: &Server) -> (Caller, Caller) {
    for resource in [organization("office", "居宅介護支援事業所"), organization("hospital", "伊那中央病院"), organization("other-office", "別の事業所")] {
        server.put(&format!("/ina/fhir/Organization/{}", resource["id"].as_str().unwrap_or_default()), &resource).await.expect(201);
    }
    let care_manager = practitioner(server, "ina", "cm", "office", "user/*.cruds").await;
    let doctor = practitioner(server, "ina", "dr", "hospital", "user/*.cruds").await;
    let mut person = patient("p1", "山田", "office");
    person["identifier"] = json!([{ "system": IDENTIFIER_SYSTEM, "value": "0001" }]);
    server.setup(&care_manager.tenant, &person).await;
    server.setup(&care_manager.tenant, &consent("consent-p1", "p1", "active", "office")).await;
    let team = care_team("team-p1", "p1", &["PractitionerRole/role-cm", "PractitionerRole/role-dr", "Organization/hospital"]);
    server.put("/ina/fhir/CareTeam/team-p1", &team).await.expect(201);
    let observation = json!({
        "resourceType": "Observation", "id": "obs-1", "status": "final", "code": { "text": "体温" },
        "subject": { "reference": "Patient/p1" }, "valueQuantity": { "value": 36.5, "unit": "Cel" }
    });
    server.setup(&doctor.tenant, &observation).await;
    (care_manager, doctor)
}

fn nested_xml(depth: usize) -> Vec<u8> {
    let open = "<extension url=\"http://example.org/x\">".repeat(depth);
    let close = "</extension>".repeat(depth);
    format!("<Patient xmlns=\"http://hl7.org/fhir\">{open}<valueString value=\"x\"/>{close}</Patient>").into_bytes()
}

fn nested_json(depth: usize) -> Vec<u8> {
    let open = "{\"url\": \"http://example.org/x\", \"extension\": [".repeat(depth);
    let close = "]}".repeat(depth);
    format!("{{\"resourceType\": \"Patient\", \"extension\": [{open}{close}]}}").into_bytes()
}

#[track_caller]
fn expect_limit(reply: &Reply, limit: &str) {
    reply.expect(400);
    let outcome = reply.json();
    assert_eq!(outcome["issue"][0]["code"], "too-costly", "{outcome}");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(diagnostics.contains(limit), "names the limit {limit}: {diagnostics}");
}

/// C1: ~700 nested elements overflowed a worker's stack and aborted the process, before
/// the token was even looked at. Now an anonymous body is not read, and nesting is bounded.
async fn c1_nested_bodies_are_refused_before_parsing(backend: Backend) {
    let server = Server::start(backend).await;
    let xml = [("content-type", "application/fhir+xml")];
    let anonymous = server.request(Method::POST, "/minamiminowa/fhir/Patient", &[xml[0], ("authorization", "none")], Some(nested_xml(700))).await;
    anonymous.expect(401);
    assert_eq!(anonymous.json()["resourceType"], "OperationOutcome");
    let deep_xml = server.request(Method::POST, "/minamiminowa/fhir/Patient", &xml, Some(nested_xml(700))).await;
    expect_limit(&deep_xml, "xml_depth");
    let deep_json = server.request(Method::POST, "/minamiminowa/fhir/Patient", &[("content-type", "application/fhir+json")], Some(nested_json(700))).await;
    expect_limit(&deep_json, "json_depth");
    let bundle = server.request(Method::POST, "/minamiminowa/fhir", &xml, Some(nested_xml(700))).await;
    expect_limit(&bundle, "xml_depth");
    // Just within the limits (32 XML levels: the resource and 31 extensions; 64 JSON levels:
    // the resource and 31 extensions of an object and an array each) is parsed and answered.
    let within = server.request(Method::POST, "/minamiminowa/fhir/Patient", &xml, Some(nested_xml(31))).await;
    assert!(within.status.as_u16() < 500, "{}", within.text());
    let within = server.request(Method::POST, "/minamiminowa/fhir/Patient", &[("content-type", "application/fhir+json")], Some(nested_json(31))).await;
    assert!(within.status.as_u16() < 500, "{}", within.text());
    expect_limit(&server.request(Method::POST, "/minamiminowa/fhir/Patient", &xml, Some(nested_xml(32))).await, "xml_depth");
    // The gateway is still there for everyone.
    server.get_with("/ina/fhir/metadata", &[("authorization", "none")]).await.expect(200);
}

/// C2: 南箕輪村's administrator registered a client (or a PractitionerRole) for 伊那市's
/// hospital and read 伊那市's residents' data through it.
async fn c2_clients_and_roles_stay_in_their_municipality(backend: Backend) {
    let server = Server::start(backend).await;
    team_world(&server).await;
    let admin_mm = municipal_admin(&server, "minamiminowa").await;
    let jwks: Value = serde_json::from_str(include_str!("../../demo/keys/ehr-ina-jwks.json")).expect("jwks");
    let registration = json!({
        "client_id": "borrowed", "tenant": "minamiminowa", "kind": "system", "organization": "hospital",
        "scopes": "system/*.rs", "jwks": jwks
    });
    let bearer = format!("Bearer {}", admin_mm.token);
    let refused = server.send(Method::POST, "/admin/clients", &[("authorization", &bearer)], &registration).await;
    refused.expect(422);
    assert_eq!(refused.issue_expressions(), vec!["organization"]);
    // A role placing someone in another municipality's Organization, and in none: alike.
    let role = |organization: &str| {
        json!({
            "resourceType": "PractitionerRole", "id": "role-borrowed", "active": true,
            "organization": { "reference": format!("Organization/{organization}") }
        })
    };
    let foreign = admin_mm.put(&server, &role("hospital")).await;
    foreign.expect(422);
    assert_eq!(foreign.issue_expressions(), vec!["PractitionerRole.organization"]);
    let missing = admin_mm.put(&server, &role("no-such-organization")).await;
    missing.expect(422);
    assert_eq!(missing.json()["issue"][0]["diagnostics"], foreign.json()["issue"][0]["diagnostics"]);
    // Inside 伊那市, its own administrator's registration alone gives no token.
    let admin_ina = municipal_admin(&server, "ina").await;
    let own = json!({ "client_id": "hospital-ehr", "tenant": "ina", "kind": "system", "organization": "hospital", "scopes": "system/*.rs",
                      "jwks": registration["jwks"].clone(), "approval": { "registered_by": { "kind": "server", "user": "forged" },
                      "approved_by": { "kind": "server", "user": "forged" } } });
    let registered = server.send(Method::POST, "/admin/clients", &[("authorization", &format!("Bearer {}", admin_ina.token))], &own).await;
    registered.expect(201);
    assert_eq!(registered.json()["approval"]["registered_by"]["kind"], "municipal", "the body cannot approve itself");
    assert_eq!(registered.json()["approval"]["approved_by"], Value::Null);
    let assertion = crate::smart::es384(|claims| {
        claims["iss"] = json!("hospital-ehr");
        claims["sub"] = json!("hospital-ehr");
        claims["aud"] = json!("http://renraku.test/ina/auth/token");
    });
    let pending = crate::smart::request_token(&server, "ina", assertion).await;
    pending.expect(400);
    assert_eq!(pending.json()["error"], "unauthorized_client");
}

/// C3: the attacker starts /authorize himself, lets the victim's browser sign in, and
/// posts the consent with the request id he knows. The request is now the starting
/// browser's: another browser's sign-in is refused, and so is a form without its token.
async fn c3_sign_in_is_bound_to_the_browser(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let pkce = pkce();
    let url = crate::app_launch::authorize_url("ina", "user/*.cruds offline_access", &pkce.challenge, &[]);
    let (attacker, _) = Browser::open(&server, &url).await;
    let (victim, _) = Browser::open(&server, &url).await;
    // The victim's browser signs in for the attacker's request: refused.
    let hijacked = Browser { cookie: victim.cookie.clone(), request: attacker.request.clone(), csrf: attacker.csrf.clone() };
    hijacked.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await.expect(403);
    let cookieless = Browser { cookie: String::new(), request: attacker.request.clone(), csrf: attacker.csrf.clone() };
    cookieless.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await.expect(403);
    // A forged form from the right browser, without the page's CSRF token: refused.
    let forged = Browser { cookie: victim.cookie.clone(), request: victim.request.clone(), csrf: "guess".into() };
    forged.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await.expect(403);
    // The victim's own sign-in goes on; the attacker cannot consent for it.
    victim.submit(&server, "/ina/auth/login", &[("user", "demo-doctor-ina")]).await.expect(200);
    let stolen = Browser { cookie: attacker.cookie.clone(), request: victim.request.clone(), csrf: victim.csrf.clone() };
    stolen.submit(&server, "/ina/auth/consent", &[("decision", "allow"), ("scope", "user/*.cruds")]).await.expect(403);
    let approved = victim.submit(&server, "/ina/auth/consent", &[("decision", "allow"), ("scope", "user/*.rs")]).await;
    approved.expect(303);
}

/// H3: a professional set inactive (then deleted) kept reading and refreshing for 90 days.
async fn h3_departed_professionals_lose_access_at_once(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, doctor) = team_world(&server).await;
    doctor.get(&server, "Observation/obs-1").await.expect(200);
    let mut role = server.get("/ina/fhir/PractitionerRole/role-dr").await.json();
    role["active"] = json!(false);
    server.put("/ina/fhir/PractitionerRole/role-dr", &role).await.expect(200);
    let refused = doctor.get(&server, "Observation/obs-1").await;
    refused.expect(401);
    role["active"] = json!(true);
    server.put("/ina/fhir/PractitionerRole/role-dr", &role).await.expect(200);
    doctor.get(&server, "Observation/obs-1").await.expect(200);
    // (The team still names the role: the delete takes the team with it; that alone would
    // answer 404, the 401 is the token's standing.)
    server.delete("/ina/fhir/PractitionerRole/role-dr").await.expect(409);
    server.delete("/ina/fhir/PractitionerRole/role-dr?_cascade=delete").await.expect(204);
    doctor.get(&server, "Observation/obs-1").await.expect(401);
    // The team again, without the departed doctor.
    server.setup("ina", &care_team("team-p1", "p1", &["PractitionerRole/role-cm", "Organization/hospital"])).await;
    // A system client whose Organization was deactivated stops too.
    let hospital_ehr = Caller {
        tenant: "ina".into(),
        token: server
            .token("ina", Actor::System { tenant: "ina".into(), client: "ehr".into(), organization: "hospital".into(), maintains_directory: false }, "system/*.rs", None)
            .await,
    };
    hospital_ehr.get(&server, "Observation/obs-1").await.expect(200);
    let mut hospital = organization("hospital", "伊那中央病院");
    hospital["active"] = json!(false);
    server.put("/ina/fhir/Organization/hospital", &hospital).await.expect(200);
    hospital_ehr.get(&server, "Observation/obs-1").await.expect(401);

    // An app's refresh token of a professional whose role ended mints nothing more.
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let pkce = pkce();
    let scope = "offline_access user/*.rs";
    let redirect = launch(&server, "ina", "demo-doctor-ina", scope, &pkce, &["offline_access", "user/*.rs"], None).await;
    let tokens = exchange(&server, "ina", &param(&redirect, "code").unwrap_or_default(), &pkce.verifier).await.json();
    let refresh_token = tokens["refresh_token"].as_str().unwrap_or_default().to_owned();
    let mut role = server.get("/ina/fhir/PractitionerRole/demo-role-dr-tanaka").await.json();
    role["active"] = json!(false);
    server.put("/ina/fhir/PractitionerRole/demo-role-dr-tanaka", &role).await.expect(200);
    let refresh = form(&server, "/ina/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("client_id", "demo-app")]).await;
    refresh.expect(400);
    assert_eq!(refresh.json()["error"], "invalid_grant");
    // Even with the role restored, that family stays revoked.
    role["active"] = json!(true);
    server.put("/ina/fhir/PractitionerRole/demo-role-dr-tanaka", &role).await.expect(200);
    let again = form(&server, "/ina/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("client_id", "demo-app")]).await;
    again.expect(400);
}

/// C2, by another door: a municipal administrator keeps the directory and the support teams.
/// Had she also been able to say which Practitioner a sign-in at the municipality's OpenID
/// Provider becomes, she could map her own account to a practitioner she puts on a team and
/// read the person's records. Adding or changing a sign-in identifier is the server
/// administrator's; she may still remove one, and edit the rest of the entry.
async fn c2_administrators_cannot_map_sign_ins(backend: Backend) {
    const SUBJECTS: &str = "https://idp.ina.example.jp/sub";
    let server = Server::start_with(backend, |config| {
        if let Some(ina) = config.tenants.iter_mut().find(|t| t.slug == "ina") {
            ina.login = Some(renraku::config::UpstreamLogin {
                issuer: "https://idp.ina.example.jp".into(),
                client_id: "renraku".into(),
                client_secret: None,
                subject_system: SUBJECTS.into(),
                require_mfa: true,
                mfa_acr_values: Vec::new(),
                roles: Default::default(),
            });
        }
    })
    .await;
    let admin = municipal_admin(&server, "ina").await;
    let operator = server_admin(&server, "ina").await;
    let signing_in = |value: &str| json!([{ "system": SUBJECTS, "value": value }, { "system": "urn:oid:1.2.392.100495.20.3.31", "value": "123" }]);
    let mut entry = json!({ "resourceType": "Practitioner", "id": "pr-new", "name": [{ "family": "伊藤" }] });
    entry["identifier"] = signing_in("admin-own-account");
    admin.put(&server, &entry).await.expect(403);
    entry.as_object_mut().map(|e| e.remove("identifier"));
    admin.put(&server, &entry).await.expect(201);
    entry["identifier"] = signing_in("admin-own-account");
    admin.put(&server, &entry).await.expect(403);
    // The server administrator maps the professional's real account.
    entry["identifier"] = signing_in("ito-0001");
    operator.put(&server, &entry).await.expect(200);
    // The municipality keeps the rest of the entry current, and may end a sign-in.
    entry["name"] = json!([{ "family": "伊藤", "given": ["真"] }]);
    admin.put(&server, &entry).await.expect(200);
    entry["identifier"] = signing_in("admin-own-account");
    admin.put(&server, &entry).await.expect(403);
    entry["identifier"] = json!([{ "system": "urn:oid:1.2.392.100495.20.3.31", "value": "123" }]);
    admin.put(&server, &entry).await.expect(200);
    assert_eq!(server.get("/ina/fhir/Practitioner/pr-new").await.json()["identifier"].as_array().map(Vec::len), Some(1));
}

/// H1: an Observation filed for one person and corrected to another: the second person's
/// team read the first version, with the first person's content, through vread and history.
async fn h1_each_version_is_judged_by_its_own_content(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, doctor) = team_world(&server).await;
    // p2 has a team of her own, without the doctor; its nurse is not on p1's team.
    server.setup(&care_manager.tenant, &patient("p2", "佐藤", "office")).await;
    server.setup(&care_manager.tenant, &consent("consent-p2", "p2", "active", "office")).await;
    let nurse = practitioner(&server, "ina", "ns", "other-office", "user/*.cruds").await;
    server.put("/ina/fhir/CareTeam/team-p2", &care_team("team-p2", "p2", &["PractitionerRole/role-ns"])).await.expect(201);
    let mut observation = server.get("/ina/fhir/Observation/obs-1").await.json();
    observation["subject"] = json!({ "reference": "Patient/p2" });
    observation["note"] = json!([{ "text": "p2 の記録" }]);
    server.put("/ina/fhir/Observation/obs-1", &observation).await.expect(200);
    // The nurse sees the corrected version, and nothing of the version about p1.
    nurse.get(&server, "Observation/obs-1").await.expect(200);
    nurse.get(&server, "Observation/obs-1/_history/2").await.expect(200);
    nurse.get(&server, "Observation/obs-1/_history/1").await.expect(404);
    for path in ["Observation/obs-1/_history", "Observation/_history"] {
        let history = nurse.get(&server, path).await;
        history.expect(200);
        let versions: Vec<String> = history.json()["entry"].as_array().into_iter().flatten()
            .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap_or_default().to_owned()).collect();
        assert_eq!(versions, vec!["2"], "{path}: {}", history.text());
    }
    let system = server.get_with("/ina/fhir/_history", &[("authorization", &format!("Bearer {}", nurse.token))]).await;
    assert!(!system.text().contains("\"36.5\"") || !system.text().contains("\"versionId\":\"1\""), "{}", system.text());
    // The doctor keeps what was written about p1 (the first version), and not the second.
    doctor.get(&server, "Observation/obs-1/_history/1").await.expect(200);
    doctor.get(&server, "Observation/obs-1/_history/2").await.expect(404);
    doctor.get(&server, "Observation/obs-1").await.expect(404);
    // Deleted, the resource's deletion is seen by whoever saw its last version.
    server.delete("/ina/fhir/Observation/obs-1").await.expect(204);
    let history = nurse.get(&server, "Observation/obs-1/_history").await.json();
    assert_eq!(history["total"], 2, "{history}");
    let history = doctor.get(&server, "Observation/obs-1/_history").await.json();
    assert_eq!(history["total"], 1, "{history}");
    nurse.get(&server, "Observation/obs-1").await.expect(410);
    doctor.get(&server, "Observation/obs-1").await.expect(404);
}

/// H2: a `patient/` scope (for the token's patient context) lifted a granular `user/`
/// restriction for every other person too.
async fn h2_patient_scopes_reach_only_the_patient_context(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, _) = team_world(&server).await;
    server.setup(&care_manager.tenant, &patient("p2", "佐藤", "office")).await;
    server.setup(&care_manager.tenant, &consent("consent-p2", "p2", "active", "office")).await;
    let team = care_team("team-p2", "p2", &["PractitionerRole/role-cm", "PractitionerRole/role-dr"]);
    server.put("/ina/fhir/CareTeam/team-p2", &team).await.expect(201);
    let category_system = "http://terminology.hl7.org/CodeSystem/observation-category";
    for person in ["p1", "p2"] {
        for category in ["laboratory", "vital-signs"] {
            let observation = json!({
                "resourceType": "Observation", "id": format!("{person}-{category}"), "status": "final",
                "category": [{ "coding": [{ "system": category_system, "code": category }] }],
                "code": { "text": category }, "subject": { "reference": format!("Patient/{person}") }
            });
            server.put(&format!("/ina/fhir/Observation/{person}-{category}"), &observation).await.expect(201);
        }
    }
    let actor = Actor::Practitioner { tenant: "ina".into(), practitioner: "dr".into(), role: "role-dr".into(), organization: "hospital".into() };
    let scopes = format!("user/Observation.rs?category={category_system}|laboratory user/Patient.rs patient/Observation.rs");
    let doctor = Caller { tenant: "ina".into(), token: server.token("ina", actor, &scopes, Some("p1")).await };
    let mut p2 = doctor.search_ids(&server, "Observation?subject=Patient/p2").await;
    p2.sort();
    assert_eq!(p2, vec!["Observation/p2-laboratory"], "only the user/ scope's category for another person");
    doctor.get(&server, "Observation/p2-vital-signs").await.expect(404);
    let mut p1 = doctor.search_ids(&server, "Observation?subject=Patient/p1&category=laboratory,vital-signs").await;
    p1.sort();
    assert_eq!(p1, vec!["Observation/p1-laboratory", "Observation/p1-vital-signs"], "the patient/ scope for the context person");
    let everything = doctor.get(&server, "Patient/p2/$everything").await;
    assert!(!everything.text().contains("p2-vital-signs"), "{}", everything.text());
}

/// H3, in time: a token expires, and a team member whose participation period ends loses the
/// person, when the gateway's clock passes the moment (read from its clock, not the wall's).
async fn h3_time_ends_access_at_the_clock(backend: Backend) {
    use renraku::clock::Clock;
    let clock = std::sync::Arc::new(renraku::clock::ManualClock::new(chrono::Utc::now()));
    let server = Server::start_with_clock(backend, |_| {}, clock.clone()).await;
    let (care_manager, doctor) = team_world(&server).await;
    // p3's team has the doctor (by role only) until tomorrow.
    server.setup(&care_manager.tenant, &patient("p3", "田中", "office")).await;
    server.setup(&care_manager.tenant, &consent("consent-p3", "p3", "active", "office")).await;
    let tomorrow = (clock.now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let mut team = care_team("team-p3", "p3", &["PractitionerRole/role-cm", "PractitionerRole/role-dr"]);
    team["participant"][1]["period"] = json!({ "end": tomorrow });
    server.put("/ina/fhir/CareTeam/team-p3", &team).await.expect(201);
    doctor.get(&server, "Patient/p3").await.expect(200);
    // The token lives an hour: at 59 minutes it works, at 61 it does not.
    clock.advance(chrono::Duration::minutes(59));
    doctor.get(&server, "Patient/p3").await.expect(200);
    clock.advance(chrono::Duration::minutes(2));
    doctor.get(&server, "Patient/p3").await.expect(401);
    // Two days on, a fresh token: the period has ended, p3 is gone for the doctor; p1 stays.
    clock.advance(chrono::Duration::days(2));
    let doctor = practitioner(&server, "ina", "dr", "hospital", "user/*.cruds").await;
    doctor.get(&server, "Patient/p3").await.expect(404);
    doctor.get(&server, "Patient/p1").await.expect(200);
}

/// H4: a person's data outside the R4 Patient compartment — a Device affixed to the person,
/// a Binary whose security context is the person, a Bundle holding the person's record —
/// was "other" and readable by anyone of the municipality.
async fn h4_data_about_a_person_outside_the_compartment_is_theirs(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, doctor) = team_world(&server).await;
    let outsider = Caller {
        tenant: "ina".into(),
        token: server
            .token("ina", Actor::System { tenant: "ina".into(), client: "other-ehr".into(), organization: "other-office".into(), maintains_directory: false }, "system/*.cruds", None)
            .await,
    };
    let resources = [
        json!({ "resourceType": "Device", "id": DEVICE, "patient": { "reference": "Patient/p1" }, "deviceName": [{ "name": "在宅酸素", "type": "user-friendly-name" }] }),
        json!({ "resourceType": "Binary", "id": BINARY, "contentType": "text/plain", "securityContext": { "reference": "Patient/p1" }, "data": "5YaZ55yf" }),
        json!({ "resourceType": "Bundle", "id": BUNDLE, "type": "collection", "entry": [{ "fullUrl": "urn:uuid:5f2b7c5e-0000-4000-8000-000000000001",
               "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "体温" }, "subject": { "reference": "Patient/p1" } } }] }),
    ];
    for resource in &resources {
        let kind = resource["resourceType"].as_str().unwrap_or_default();
        let id = resource["id"].as_str().unwrap_or_default();
        doctor.put(&server, resource).await.expect(201);
        doctor.get(&server, &format!("{kind}/{id}")).await.expect(200);
        outsider.get(&server, &format!("{kind}/{id}")).await.expect(404);
        outsider.get(&server, &format!("{kind}/{id}/_history")).await.expect(404);
        let listed = outsider.get(&server, &format!("{kind}/_history")).await.json();
        assert_eq!(listed["total"], 0, "{kind}: {listed}");
        // Nor may the outsider write such a resource about the person.
        let mut theirs = resource.clone();
        theirs["id"] = json!(uuid::Uuid::new_v4().to_string());
        outsider.put(&server, &theirs).await.expect(403);
    }
    let everything = outsider.get(&server, "_history").await.text();
    assert!(!everything.contains(DEVICE) && !everything.contains(BINARY) && !everything.contains(BUNDLE), "{everything}");
}

/// The ids of H4's resources, which the doctor chooses (UUIDs, as callers bound by the rule
/// must for a person's data).
const DEVICE: &str = "5b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const BINARY: &str = "6c2f3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e";
const BUNDLE: &str = "7d3a4e5f-6a7b-4c8d-8e9f-1a2b3c4d5e6f";

/// M1: an agreement listing read, search-type, create and update also let vread, history
/// and patch through.
async fn m1_each_agreement_interaction_is_its_own(backend: Backend) {
    let server = Server::start(backend).await;
    let operator = server_admin(&server, "minamiminowa").await;
    operator
        .put(&server, &agreement("agreement", &["202096", "203858"], "executed", &["read", "search-type", "create", "update"]))
        .await
        .expect(201);
    server.put("/minamiminowa/fhir/Organization/mm-office", &organization("mm-office", "事業所")).await.expect(201);
    let care_manager = practitioner(&server, "minamiminowa", "cm-mm", "mm-office", "user/*.cruds").await;
    let doctor = practitioner(&server, "ina", "dr-ina", "ina-hospital", "user/*.cruds").await;
    server.setup(&care_manager.tenant, &patient("p-mm", "山田", "mm-office")).await;
    server.setup(&care_manager.tenant, &consent("consent-mm", "p-mm", "active", "mm-office")).await;
    let team = care_team("team-mm", "p-mm", &["PractitionerRole/role-cm-mm", "PractitionerRole/role-dr-ina"]);
    server.put("/minamiminowa/fhir/CareTeam/team-mm", &team).await.expect(201);
    let observation = json!({ "resourceType": "Observation", "id": "obs-mm", "status": "final", "code": { "text": "血圧" },
                              "subject": { "reference": "Patient/p-mm" } });
    server.setup(&care_manager.tenant, &observation).await;
    // Listed: read, search, update.
    doctor.get(&server, "Observation/obs-mm").await.expect(200);
    assert_eq!(doctor.search_ids(&server, "Observation?subject=Patient/p-mm").await, vec!["Observation/obs-mm"]);
    let mut updated = observation.clone();
    updated["status"] = json!("amended");
    doctor.put(&server, &updated).await.expect(200);
    // Not listed: vread, instance and type history, patch.
    doctor.get(&server, "Observation/obs-mm/_history/1").await.expect(404);
    doctor.get(&server, "Observation/obs-mm/_history").await.expect(404);
    let history = doctor.get(&server, "Observation/_history").await;
    history.expect(200);
    assert_eq!(history.json()["total"], 0, "{}", history.text());
    let patch = serde_json::to_vec(&json!([{ "op": "replace", "path": "/status", "value": "final" }])).expect("patch");
    let patched = server
        .request(Method::PATCH, "/ina/fhir/Observation/obs-mm", &[("content-type", "application/json-patch+json"), ("authorization", &format!("Bearer {}", doctor.token))], Some(patch))
        .await;
    patched.expect(404);
}

/// M2: with only create (or update) permission, a conditional create returned the stored
/// body, `If-None-Exist` became a content oracle, and `PATCH []` returned the resource.
async fn m2_matching_and_patching_need_read_permissions(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, doctor) = team_world(&server).await;
    let system = |organization: &str, scopes: &str| {
        let server = &server;
        let organization = organization.to_owned();
        let scopes = scopes.to_owned();
        async move {
            let actor = Actor::System { tenant: "ina".into(), client: format!("{organization}-ehr"), organization, maintains_directory: false };
            Caller { tenant: "ina".into(), token: server.token("ina", actor, &scopes, None).await }
        }
    };
    let create_only = system("hospital", "system/Patient.c").await;
    let condition = format!("identifier={IDENTIFIER_SYSTEM}|0001");
    let mut body = patient("", "山田", "hospital");
    body.as_object_mut().map(|b| b.remove("id"));
    let post = |caller: Caller, body: Value, condition: String| {
        let server = &server;
        async move {
            server
                .send(Method::POST, "/ina/fhir/Patient", &[("authorization", &format!("Bearer {}", caller.token)), ("if-none-exist", &condition)], &body)
                .await
        }
    };
    let refused = post(create_only, body.clone(), condition.clone()).await;
    refused.expect(403);
    assert!(!refused.text().contains("p1"), "{}", refused.text());
    // The hospital is on p1's team: it may search, and finds its match.
    let on_team = system("hospital", "system/Patient.crs").await;
    let found = post(on_team, body.clone(), condition.clone()).await;
    found.expect(200);
    assert_eq!(found.json()["id"], "p1");
    // Another office cannot see p1: nothing is shown and nothing is created (no duplicate).
    let outsider = system("other-office", "system/Patient.crs system/Organization.rs").await;
    let mut theirs = body.clone();
    theirs["managingOrganization"] = json!({ "reference": "Organization/other-office" });
    let hidden = post(outsider.clone(), theirs.clone(), condition.clone()).await;
    hidden.expect(409);
    assert!(!hidden.text().contains("p1") && !hidden.text().contains("山田"), "{}", hidden.text());
    let persons = server.get(&format!("/ina/fhir/Patient?{condition}")).await.json();
    assert_eq!(persons["total"], 1, "no duplicate person: {persons}");
    // No match anywhere: the outsider registers its own person.
    let other = format!("identifier={IDENTIFIER_SYSTEM}|0002");
    post(outsider, theirs, other).await.expect(201);
    // PATCH computes from the stored resource: update alone is not enough.
    let patch_as = |token: String| {
        let server = &server;
        async move {
            let patch = serde_json::to_vec(&json!([])).expect("patch");
            let headers = [("content-type", "application/json-patch+json"), ("authorization", &format!("Bearer {token}") as &str)];
            server.request(Method::PATCH, "/ina/fhir/Observation/obs-1", &headers, Some(patch)).await
        }
    };
    let update_only = practitioner(&server, "ina", "dr", "hospital", "user/Observation.u").await;
    let refused = patch_as(update_only.token).await;
    refused.expect(403);
    assert!(!refused.text().contains("36.5"), "{}", refused.text());
    patch_as(doctor.token).await.expect(200);
}

/// M3: `PUT` to an id a hidden resource uses answered 404, to a free id 201 — an existence
/// oracle for anyone allowed to create. A caller bound by the rule chooses a person's data's
/// ids only as UUIDs (which it cannot guess): a readable id is refused alike, taken or free.
async fn m3_a_put_cannot_probe_for_hidden_ids(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, doctor) = team_world(&server).await;
    // The hospital's EHR (a system client) supports nobody here; obs-1 exists, obs-free does not.
    let ehr = Caller {
        tenant: "ina".into(),
        token: server.token("ina", Actor::System { tenant: "ina".into(), client: "ehr".into(), organization: "other-office".into(), maintains_directory: false }, "system/*.cruds", None).await,
    };
    let probe = |id: &str| {
        json!({ "resourceType": "Observation", "id": id, "status": "final", "code": { "text": "体温" }, "subject": { "reference": "Patient/p1" } })
    };
    let taken = ehr.put(&server, &probe("obs-1")).await;
    let free = ehr.put(&server, &probe("obs-free")).await;
    for reply in [&taken, &free] {
        reply.expect(422);
        assert_eq!(reply.issue_expressions(), ["Observation.id"]);
    }
    let diagnostics = |reply: &Reply| reply.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned();
    assert_eq!(diagnostics(&taken), diagnostics(&free), "taken and free answer alike");
    assert_eq!(server.get("/ina/fhir/Observation/obs-1").await.json()["valueQuantity"]["value"], 36.5, "nothing changed");
    server.get("/ina/fhir/Observation/obs-free").await.expect(404);
    // With a UUID the team member creates as before; the directory keeps readable ids.
    doctor.put(&server, &probe("8a4b5c6d-7e8f-4091-a2b3-c4d5e6f70819")).await.expect(201);
    server_admin(&server, "ina").await.put(&server, &organization("clinic", "診療所")).await.expect(201);
}

/// M4: a team member kept access after the consent's withdrawal by recording a consent of
/// their own, or by moving the registration to their organization.
async fn m4_consent_and_registration_are_the_registrars(backend: Backend) {
    let server = Server::start(backend).await;
    let (care_manager, doctor) = team_world(&server).await;
    // (A UUID: the id a caller bound by the rule may choose for a person's data.)
    doctor.put(&server, &consent("7f3e2d1c-0b9a-4876-9543-210fedcba987", "p1", "active", "hospital")).await.expect(403);
    let mut moved = server.get("/ina/fhir/Patient/p1").await.json();
    moved["managingOrganization"] = json!({ "reference": "Organization/hospital" });
    doctor.put(&server, &moved).await.expect(403);
    // Demographics are the team's to keep current.
    let mut corrected = server.get("/ina/fhir/Patient/p1").await.json();
    corrected["gender"] = json!("male");
    doctor.put(&server, &corrected).await.expect(200);
    // The registrar withdraws the consent; the doctor's access ends.
    care_manager.put(&server, &consent("consent-p1", "p1", "inactive", "office")).await.expect(200);
    doctor.get(&server, "Observation/obs-1").await.expect(404);
    // Re-activating it is refused: to the doctor the consent is now a record it cannot see,
    // and a readable id it cannot see is refused exactly as a free one (422 naming the id).
    let reactivated = doctor.put(&server, &consent("consent-p1", "p1", "active", "office")).await;
    reactivated.expect(422);
    assert_eq!(reactivated.issue_expressions(), ["Consent.id"]);
    assert_eq!(server.get("/ina/fhir/Consent/consent-p1").await.json()["status"], "inactive");
}

/// M5: revoking a refresh token answered 200 and the token kept working.
async fn m5_revoking_a_refresh_token_revokes_its_family(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let pkce = pkce();
    let redirect = launch(&server, "ina", "demo-doctor-ina", "offline_access user/*.rs", &pkce, &["offline_access", "user/*.rs"], None).await;
    let tokens = exchange(&server, "ina", &param(&redirect, "code").unwrap_or_default(), &pkce.verifier).await.json();
    let refresh_token = tokens["refresh_token"].as_str().unwrap_or_default().to_owned();
    let access = format!("Bearer {}", tokens["access_token"].as_str().unwrap_or_default());
    server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &access)]).await.expect(200);
    form(&server, "/ina/auth/revoke", &[("token", &refresh_token)]).await.expect(200);
    let refresh = form(&server, "/ina/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("client_id", "demo-app")]).await;
    refresh.expect(400);
    assert_eq!(refresh.json()["error"], "invalid_grant");
    server.get_with("/ina/fhir/Patient/demo-yamada-taro", &[("authorization", &access)]).await.expect(401);
}

/// M6: after a storage error, pooled connections stayed in a broken transaction and ~70 %
/// of writes answered 500 until a restart. The database here ends one write's transaction
/// behind the driver's back (what a failed COMMIT does); every later write must succeed.
async fn m6_a_lost_transaction_does_not_poison_the_pool(backend: Backend) {
    let server = Server::start(backend).await;
    server.fhir().arm_failpoint(renraku::runtime::Failpoint::TransactionLostBeforeCommit);
    let lost = server.post("/ina/fhir/Patient", &json!({ "resourceType": "Patient", "gender": "female" })).await;
    lost.expect(500);
    assert_eq!(lost.json()["resourceType"], "OperationOutcome");
    for n in 0..30 {
        let reply = server.post("/ina/fhir/Patient", &json!({ "resourceType": "Patient", "name": [{ "family": format!("後{n}") }] })).await;
        assert_eq!(reply.status.as_u16(), 201, "write {n} after the lost transaction: {}", reply.text());
    }
    server.get_with("/healthz", &[("authorization", "none")]).await.expect(200);
    // Nothing of the failed write was kept.
    assert_eq!(server.get("/ina/fhir/Patient?gender=female").await.json()["total"], 0);
}

/// M7 and the limits: each answers 400 too-costly naming its `[limits]` key, before the
/// database sees the query.
async fn m7_requests_stay_within_the_limits(backend: Backend) {
    let server = Server::start(backend).await;
    let many_names: Vec<String> = (0..200).map(|i| format!("name=a{i}")).collect();
    let many_values: Vec<String> = (0..101).map(|i| format!("a{i}")).collect();
    let includes: Vec<&str> = std::iter::repeat_n("_include=Observation:subject", 11).collect();
    let cases = [
        (format!("Patient?{}", many_names.join("&")), "search_parameters"),
        (format!("Patient?name={}", many_values.join(",")), "values_per_parameter"),
        ("Observation?subject:Patient.organization.partof.partof.partof.name=x".to_owned(), "chain_depth"),
        ("Patient?_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:code=x".to_owned(), "chain_depth"),
        (format!("Observation?{}", includes.join("&")), "includes"),
    ];
    for (query, limit) in &cases {
        expect_limit(&server.get(&format!("/ina/fhir/{query}")).await, limit);
    }
    // A transaction carrying such a URL in an entry is refused as a whole.
    let entry = json!({ "request": { "method": "GET", "url": cases[0].0 } });
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [entry] });
    let reply = server.post("/ina/fhir", &bundle).await;
    assert_eq!(reply.json()["entry"][0]["response"]["status"], "400 Bad Request", "{}", reply.text());
    let too_many = json!({ "resourceType": "Bundle", "type": "batch",
                           "entry": vec![json!({ "request": { "method": "GET", "url": "Patient/x" } }); 1001] });
    expect_limit(&server.post("/ina/fhir", &too_many).await, "bundle_entries");
    // A URL longer than url_bytes: 414, an outcome naming the limit.
    let long = server.get(&format!("/ina/fhir/Patient?name={}", "a".repeat(20_000))).await;
    long.expect(414);
    assert_eq!(long.json()["issue"][0]["code"], "too-costly");
    assert!(long.text().contains("url_bytes"), "{}", long.text());
    // Within the limits, ordinary searches go on.
    server.get("/ina/fhir/Patient?name=a0&name=a1").await.expect(200);
}

/// M7: a statement whose request was abandoned — by `request_timeout_ms`, or by its client
/// leaving — kept running in PostgreSQL until the statement timeout. Now its session is
/// closed once it fails to settle within a second, and PostgreSQL cancels the statement.
/// (SQLite runs in the gateway's process; there is no server-side statement to cancel.)
#[tokio::test]
async fn m7_abandoned_statements_are_cancelled_postgres() {
    let server = Server::start_with(Backend::Postgres, |config| config.limits.request_timeout_ms = 1_000).await;
    let (_, doctor) = team_world(&server).await;
    let mut database = server.database_directly().await;
    async fn sleeping(database: &mut sqlx::AnyConnection) -> i64 {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
        )
        .fetch_one(database)
        .await
        .expect("pg_stat_activity")
    }
    async fn cancelled_within(database: &mut sqlx::AnyConnection, seconds: u64) -> bool {
        for _ in 0..seconds * 10 {
            if sleeping(database).await == 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }
    // Abandoned by the request timeout: the client hears 503, the statement stops.
    server.fhir().arm_failpoint(renraku::runtime::Failpoint::SlowStatement);
    let reply = doctor.get(&server, "Observation?subject=Patient/p1").await;
    reply.expect(503);
    assert_eq!(reply.json()["resourceType"], "OperationOutcome");
    assert!(cancelled_within(&mut database, 5).await, "the abandoned statement still runs");
    // Abandoned by the client: the request's future is dropped, as when its connection closes.
    server.fhir().arm_failpoint(renraku::runtime::Failpoint::SlowStatement);
    let leaving = tokio::time::timeout(std::time::Duration::from_millis(300), doctor.get(&server, "Observation?subject=Patient/p1")).await;
    assert!(leaving.is_err(), "the client left before the answer");
    assert!(sleeping(&mut database).await <= 1);
    assert!(cancelled_within(&mut database, 5).await, "the statement of the client that left still runs");
    // The gateway serves on, and the pool holds no connection stuck behind the statement.
    for _ in 0..20 {
        doctor.get(&server, "Observation?subject=Patient/p1").await.expect(200);
    }
}

/// Low: two gateways started at once on a new database: one exited with a migration error.
async fn low_simultaneous_first_starts_both_start(backend: Backend) {
    let (config, _directory, database) = crate::support::new_database(backend).await;
    let (first, second) = tokio::join!(renraku::Gateway::start(config.clone()), renraku::Gateway::start(config.clone()));
    let started = (first.is_ok(), second.is_ok());
    let errors = format!("{:?} {:?}", first.err(), second.err());
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
    assert_eq!(started, (true, true), "{errors}");
}

/// Low: errors axum answered itself came as plain text; `_revinclude=*` included nothing.
async fn low_every_error_is_an_outcome_and_revinclude_star_works(backend: Backend) {
    let server = Server::start(backend).await;
    let (_, doctor) = team_world(&server).await;
    let reply = server.get("/ina/fhir/Patient/%FF%FE").await;
    assert!(reply.status.is_client_error(), "{}", reply.text());
    assert_eq!(reply.json()["resourceType"], "OperationOutcome", "{}", reply.text());
    let mut included = doctor.search_ids(&server, "Patient?_id=p1&_revinclude=*").await;
    included.sort();
    assert_eq!(included, vec!["Patient/p1"], "matches");
    let bundle = doctor.get(&server, "Patient?_id=p1&_revinclude=*").await.json();
    let mut others = crate::policy::entry_ids(&bundle, "include");
    others.sort();
    assert_eq!(others, vec!["CareTeam/team-p1", "Consent/consent-p1", "Observation/obs-1"], "{bundle}");
}

/// Low: a NUL character in an id or search value answered 500 on PostgreSQL.
async fn low_nul_characters_are_a_client_error(backend: Backend) {
    let server = Server::start(backend).await;
    for path in ["/ina/fhir/Patient/a%00b", "/ina/fhir/Patient?name=a%00b", "/ina/fhir/Patient?_id=a%00b"] {
        let reply = server.get(path).await;
        assert!(matches!(reply.status.as_u16(), 400 | 404), "{path}: {} {}", reply.status, reply.text());
        assert_eq!(reply.json()["resourceType"], "OperationOutcome");
    }
}

both_backends!(
    c1_nested_bodies_are_refused_before_parsing,
    c2_clients_and_roles_stay_in_their_municipality,
    c2_administrators_cannot_map_sign_ins,
    c3_sign_in_is_bound_to_the_browser,
    h1_each_version_is_judged_by_its_own_content,
    h2_patient_scopes_reach_only_the_patient_context,
    h3_departed_professionals_lose_access_at_once,
    h3_time_ends_access_at_the_clock,
    h4_data_about_a_person_outside_the_compartment_is_theirs,
    m1_each_agreement_interaction_is_its_own,
    m2_matching_and_patching_need_read_permissions,
    m3_a_put_cannot_probe_for_hidden_ids,
    m4_consent_and_registration_are_the_registrars,
    m5_revoking_a_refresh_token_revokes_its_family,
    m6_a_lost_transaction_does_not_poison_the_pool,
    m7_requests_stay_within_the_limits,
    low_nul_characters_are_a_client_error,
    low_simultaneous_first_starts_both_start,
    low_every_error_is_an_outcome_and_revinclude_star_works,
);
