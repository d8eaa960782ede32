//! Validation on every write: one table of bodies and the element paths they must name.

use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{Backend, Server};

/// (body posted to its type's endpoint, expected status, expected issue expressions)
fn cases() -> Vec<(Value, u16, Vec<&'static str>)> {
    vec![
        (json!({ "resourceType": "Patient", "gender": "robot" }), 422, vec!["Patient.gender"]),
        (json!({ "resourceType": "Patient", "active": "yes" }), 422, vec!["Patient.active"]),
        (json!({ "resourceType": "Patient", "birthDate": "2020-13-01" }), 422, vec!["Patient.birthDate"]),
        (json!({ "resourceType": "Patient", "birthDate": "01/02/2020" }), 422, vec!["Patient.birthDate"]),
        (json!({ "resourceType": "Patient", "deceasedDateTime": "2020-01-01T25:00:00Z" }), 422, vec!["Patient.deceasedDateTime"]),
        (json!({ "resourceType": "Patient", "nickname": "x" }), 422, vec!["Patient.nickname"]),
        (json!({ "resourceType": "Patient", "name": [] }), 422, vec!["Patient.name"]),
        (json!({ "resourceType": "Patient", "name": [{}] }), 422, vec!["Patient.name[0]"]),
        (json!({ "resourceType": "Patient", "name": [{ "given": [] }] }), 422, vec!["Patient.name[0].given"]),
        (json!({ "resourceType": "Patient", "name": [{ "family": "a", "middle": "b" }] }), 422, vec!["Patient.name[0].middle"]),
        (json!({ "resourceType": "Patient", "telecom": [{ "system": "pager-ish", "value": "1" }] }), 422, vec!["Patient.telecom[0].system"]),
        (json!({ "resourceType": "Patient", "multipleBirthInteger": "2" }), 422, vec!["Patient.multipleBirthInteger"]),
        (json!({ "resourceType": "Patient", "link": [{ "type": "seealso" }] }), 422, vec!["Patient.link[0].other"]),
        (json!({ "resourceType": "Observation", "code": { "text": "体温" } }), 422, vec!["Observation.status"]),
        (json!({ "resourceType": "Observation", "status": "final" }), 422, vec!["Observation.code"]),
        (json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体温" }, "valueQuantity": { "value": "36.5" } }), 422, vec!["Observation.valueQuantity.value"]),
        (json!({ "resourceType": "Observation", "status": "final", "code": { "text": "t" }, "issued": "2026-11-25" }), 422, vec!["Observation.issued"]),
        (json!({ "resourceType": "Observation", "status": "final", "code": { "coding": [{ "system": "not a uri", "code": " leading-space" }] } }), 422, vec!["Observation.code.coding[0].code", "Observation.code.coding[0].system"]),
        (json!({ "resourceType": "Patient", "contained": [{ "resourceType": "Practitioner", "id": "p1", "gender": "x" }] }), 422, vec!["Patient.contained[0].gender"]),
        (json!({ "resourceType": "Patient", "managingOrganization": { "reference": "Organization/does-not-exist" } }), 422, vec!["Patient.managingOrganization.reference"]),
        (json!({ "resourceType": "Patient", "generalPractitioner": [{ "reference": "#missing" }] }), 422, vec!["Patient.generalPractitioner[0].reference"]),
        // A profile the server does not know is accepted unchecked (with a warning; see
        // `unknown_profiles_warn_or_refuse`).
        (json!({ "resourceType": "Patient", "meta": { "profile": ["http://example.org/unknown-profile"] } }), 201, vec![]),
        (
            json!({ "resourceType": "Patient", "meta": { "profile": ["https://renraku.example.jp/fhir/StructureDefinition/renraku-patient"] }, "active": true, "identifier": [{ "value": "1" }], "name": [{ "given": ["太郎"] }] }),
            422,
            vec!["Patient.name[0].family"],
        ),
        (
            json!({ "resourceType": "Patient", "meta": { "profile": ["https://renraku.example.jp/fhir/StructureDefinition/renraku-patient"] }, "name": [{ "family": "山田" }] }),
            422,
            vec!["Patient.identifier", "Patient.active"],
        ),
        // Required bindings from the R4 definitions, for codes the schema does not enumerate.
        (json!({ "resourceType": "Communication", "status": "not-a-status" }), 422, vec!["Communication.status"]),
        (json!({ "resourceType": "Communication", "status": "completed", "priority": "foo" }), 422, vec!["Communication.priority"]),
        (
            json!({ "resourceType": "Condition", "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "sleeping" }] }, "subject": { "reference": "Patient/x" } }),
            422,
            vec!["Condition.clinicalStatus"],
        ),
        (json!({ "resourceType": "Condition", "clinicalStatus": { "text": "治療中" }, "subject": { "reference": "Patient/x" } }), 422, vec!["Condition.clinicalStatus"]),
        (json!({ "resourceType": "CareTeam", "status": "proposed", "participant": [{ "member": { "reference": "Organization/x" } }], "category": [{ "text": "x" }], "subject": { "reference": "Patient/x" }, "name": "t", "note": [{ "text": "n" }], "telecom": [{ "system": "email", "value": "a@b", "use": "sometimes" }] }), 422, vec!["CareTeam.telecom[0].use"]),
        // Invariants of the data types: per-1, ext-1, extension urls.
        (json!({ "resourceType": "Encounter", "status": "finished", "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH" }, "period": { "start": "2026-11-02T10:00:00+09:00", "end": "2026-11-02T09:00:00+09:00" } }), 422, vec!["Encounter.period"]),
        (json!({ "resourceType": "Patient", "extension": [{ "url": "http://example.org/ext", "valueString": "a", "extension": [{ "url": "part", "valueString": "b" }] }] }), 422, vec!["Patient.extension[0]"]),
        (json!({ "resourceType": "Patient", "extension": [{ "url": "birthPlaceNickname", "valueString": "a" }] }), 422, vec!["Patient.extension[0].url"]),
        (json!({ "resourceType": "Patient", "extension": [{ "url": "", "valueString": "a" }] }), 422, vec!["Patient.extension[0].url"]),
        // The invariants of the R4 definitions, evaluated as FHIRPath (obs-6, qty-3, pat-1,
        // cpl-3), each at the element it is declared on.
        (json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体温" }, "valueQuantity": { "value": 36.5, "unit": "℃" }, "dataAbsentReason": { "text": "測定不能" } }), 422, vec!["Observation"]),
        (json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体重" }, "valueQuantity": { "value": 52, "code": "kg" } }), 422, vec!["Observation.valueQuantity"]),
        (json!({ "resourceType": "Patient", "contact": [{ "gender": "female" }] }), 422, vec!["Patient.contact[0]"]),
        (json!({ "resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": { "reference": "Patient/p1" }, "activity": [{ "reference": { "reference": "ServiceRequest/x" }, "detail": { "status": "scheduled" } }] }), 422, vec!["CarePlan.activity[0]"]),
        (json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体重" }, "valueQuantity": { "value": 52, "code": "kg", "system": "http://unitsofmeasure.org" } }), 201, vec![]),
        // Japanese text with the ideographic space (U+3000) and a no-break space is a string;
        // a canonical element carries extensions in its `_element` twin.
        (json!({ "resourceType": "Patient", "name": [{ "text": "山田\u{3000}太郎", "family": "山田" }], "address": [{ "text": "伊那市\u{a0}1-1" }],
            "extension": [{ "url": "http://example.org/fhir/StructureDefinition/nickname", "valueString": "たろう\u{3000}さん" }] }), 201, vec![]),
        (json!({ "resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": { "reference": "Patient/p1" }, "instantiatesCanonical": ["http://example.org/PlanDefinition/a"], "_instantiatesCanonical": [{ "extension": [{ "url": "http://example.org/ext", "valueString": "x" }] }] }), 201, vec![]),
        // base64 content; a Bundle's fullUrls: unique (bdl-7), not versioned (bdl-8), and
        // agreeing with the resource's id.
        (json!({ "resourceType": "Communication", "status": "completed", "payload": [{ "contentAttachment": { "contentType": "text/plain", "data": "これは base64 ではない" } }] }), 422, vec!["Communication.payload[0].contentAttachment.data"]),
        (json!({ "resourceType": "Communication", "status": "completed", "payload": [{ "contentAttachment": { "contentType": "text/plain", "data": "5bGx55Sw" } }] }), 201, vec![]),
        (json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "fullUrl": "http://example.org/fhir/Patient/a", "resource": { "resourceType": "Patient", "id": "b" } }] }), 422, vec!["Bundle.entry[0].fullUrl"]),
        (json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "fullUrl": "http://example.org/fhir/Patient/a/_history/1", "resource": { "resourceType": "Patient", "id": "a" } }] }), 422, vec!["Bundle.entry[0]"]),
        (json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "fullUrl": "urn:uuid:0d6a5f7e-0000-4000-8000-000000000009", "resource": { "resourceType": "Patient" } }, { "fullUrl": "urn:uuid:0d6a5f7e-0000-4000-8000-000000000009", "resource": { "resourceType": "Patient" } }] }), 422, vec!["Bundle"]),
        (json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "fullUrl": "http://example.org/fhir/Patient/a", "resource": { "resourceType": "Patient", "id": "a" } }] }), 201, vec![]),
        // R4's own profiles, compiled with their slices, choice types, reference targets and
        // invariants: a body temperature must be coded 8310-5 in a vital-signs category, a
        // blood pressure has its systolic and diastolic components, a vital sign has a value
        // or says why not (vs-2).
        (vital_sign("bodytemp", json!({ "coding": [{ "system": "http://loinc.org", "code": "8310-5" }], "text": "体温" }), true, json!({ "valueQuantity": { "value": 36.8, "unit": "℃", "system": "http://unitsofmeasure.org", "code": "Cel" } })), 201, vec![]),
        (vital_sign("bodytemp", json!({ "coding": [{ "system": "http://loinc.org", "code": "29463-7" }] }), false, json!({ "valueQuantity": { "value": 36.8, "unit": "℃", "system": "http://unitsofmeasure.org", "code": "Cel" } })), 422, vec!["Observation.code.coding", "Observation.category"]),
        (vital_sign("bodytemp", json!({ "coding": [{ "system": "http://loinc.org", "code": "8310-5" }] }), true, json!({})), 422, vec!["Observation"]),
        // … in a unit of the profile's required value set (ucum-bodytemp: Cel, [degF]).
        (vital_sign("bodytemp", json!({ "coding": [{ "system": "http://loinc.org", "code": "8310-5" }] }), true, json!({ "valueQuantity": { "value": 36.8, "unit": "K", "system": "http://unitsofmeasure.org", "code": "K" } })), 422, vec!["Observation.valueQuantity.code"]),
        (vital_sign("bp", json!({ "coding": [{ "system": "http://loinc.org", "code": "85354-9" }] }), true, json!({ "component": [
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] }, "valueQuantity": { "value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } },
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] }, "valueQuantity": { "value": 82, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } } ] })), 201, vec![]),
        (vital_sign("bp", json!({ "coding": [{ "system": "http://loinc.org", "code": "85354-9" }] }), true, json!({ "component": [
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] }, "valueQuantity": { "value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } },
            { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] }, "valueQuantity": { "value": 82, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "kPa" } } ] })), 422, vec!["Observation.component", "Observation.component[1].valueQuantity.code"]),
        // JP Core (1.1.x) as the server ships it: a JP_Patient has an identifier with a value;
        // a JP vital sign carries JP Core's two categories and is about a Patient; a
        // JP_MedicationRequest numbers its place in the Rp group (orderInRp).
        (json!({ "resourceType": "Patient", "meta": { "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"] }, "name": [{ "family": "山田" }] }), 422, vec!["Patient.identifier"]),
        (json!({ "resourceType": "Patient", "meta": { "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"] }, "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.51.11312345670" }] }), 422, vec!["Patient.identifier[0].value"]),
        (jp_vital_sign(true), 201, vec![]),
        // A repetition the discriminator picks for a slice meets the whole slice: a
        // qualification coded medical-registration has the registry's identifier system.
        (jp_practitioner("urn:oid:1.2.392.100495.20.3.31"), 201, vec![]),
        (jp_practitioner("urn:oid:1.2.392.100495.20.3.99"), 422, vec!["Practitioner.qualification[0].identifier"]),
        (jp_vital_sign(false), 422, vec!["Observation.category", "Observation.category"]),
        (json!({ "resourceType": "MedicationRequest", "meta": { "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_MedicationRequest"] }, "status": "active", "intent": "order",
            "subject": { "reference": "Patient/p1" }, "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.81", "value": "1" }],
            "medicationCodeableConcept": { "coding": [{ "system": "urn:oid:1.2.392.200119.4.403.1", "code": "103835401", "display": "ムコダイン錠２５０ｍｇ" }] } }), 422, vec!["MedicationRequest.identifier", "MedicationRequest.identifier"]),
        (json!({ "resourceType": "MedicationRequest", "meta": { "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_MedicationRequest"] }, "status": "active", "intent": "order",
            "subject": { "reference": "Patient/p1" }, "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.81", "value": "1" }, { "system": "urn:oid:1.2.392.100495.20.3.82", "value": "1" }],
            "medicationCodeableConcept": { "coding": [{ "system": "urn:oid:1.2.392.200119.4.403.1", "code": "103835401", "display": "ムコダイン錠２５０ｍｇ" }] } }), 201, vec![]),
        // A complex extension's parts carry simple names, and a period of one day is fine.
        (json!({ "resourceType": "Patient", "extension": [{ "url": "http://example.org/ext", "extension": [{ "url": "part", "valueString": "b" }] }] }), 201, vec![]),
        (json!({ "resourceType": "Encounter", "status": "finished", "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH" }, "period": { "start": "2026-11-02", "end": "2026-11-02T17:00:00+09:00" } }), 201, vec![]),
        // Extensible and preferred bindings are not errors: any code.
        (json!({ "resourceType": "Communication", "status": "completed", "category": [{ "coding": [{ "system": "urn:example:own", "code": "board" }] }] }), 201, vec![]),
        (json!({ "resourceType": "Communication", "status": "completed", "priority": "urgent" }), 201, vec![]),
        // Valid resources pass, including the `_element` form of a required primitive.
        (json!({ "resourceType": "Patient", "gender": "other", "birthDate": "1940", "name": [{ "family": "中村" }] }), 201, vec![]),
        (json!({ "resourceType": "Observation", "_status": { "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown" }] }, "code": { "text": "t" } }), 201, vec![]),
        (
            json!({ "resourceType": "Patient", "meta": { "profile": ["https://renraku.example.jp/fhir/StructureDefinition/renraku-patient"] }, "active": true, "identifier": [{ "value": "1" }], "name": [{ "family": "山田" }] }),
            201,
            vec![],
        ),
        (json!({ "resourceType": "Patient", "contained": [{ "resourceType": "Practitioner", "id": "p1" }], "generalPractitioner": [{ "reference": "#p1" }] }), 201, vec![]),
    ]
}

/// An Observation claiming R4's vital-signs profile `profile`, coded `code`, about Patient/p1,
/// in the vital-signs category or not, with `rest` (its value or components) added.
fn vital_sign(profile: &str, code: Value, in_category: bool, rest: Value) -> Value {
    let mut observation = json!({ "resourceType": "Observation", "meta": { "profile": [format!("http://hl7.org/fhir/StructureDefinition/{profile}")] },
        "status": "final", "code": code, "subject": { "reference": "Patient/p1" }, "effectiveDateTime": "2026-12-01T09:00:00+09:00" });
    if in_category {
        observation["category"] = json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }]);
    }
    if let (Some(target), Some(extra)) = (observation.as_object_mut(), rest.as_object()) {
        target.extend(extra.clone());
    }
    observation
}

/// A JP_Practitioner whose medical registration (医籍登録番号) is under `system`.
fn jp_practitioner(system: &str) -> Value {
    json!({ "resourceType": "Practitioner", "meta": { "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Practitioner"] },
        "name": [{ "family": "田中", "given": ["一郎"] }],
        "qualification": [{ "identifier": [{ "system": system, "value": "123456" }],
            "code": { "coding": [{ "system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicalLicenseCertificate_CS", "code": "medical-registration" }] } }] })
}

/// A body temperature claiming JP Core's JP_Observation_VitalSigns, with JP Core's two
/// categories (vital-signs, and the kind of vital sign) or only the HL7 category.
fn jp_vital_sign(jp_categories: bool) -> Value {
    let categories = if jp_categories {
        json!([{ "coding": [{ "system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS", "code": "vital-signs" }] },
               { "coding": [{ "system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_ObservationVitalSignsCategory_CS", "code": "temperature" }] }])
    } else {
        json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }])
    };
    json!({ "resourceType": "Observation", "meta": { "profile": ["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Observation_VitalSigns"] },
        "status": "final", "category": categories, "code": { "coding": [{ "system": "http://loinc.org", "code": "8310-5" }], "text": "体温" },
        "subject": { "reference": "Patient/p1" }, "effectiveDateTime": "2026-12-01T09:00:00+09:00",
        "valueQuantity": { "value": 36.8, "unit": "℃", "system": "http://unitsofmeasure.org", "code": "Cel" } })
}

/// The status of `reply` to `body`, and for an error, the issue expressions it names.
#[track_caller]
fn expect_outcome(body: &Value, reply: &crate::support::Reply, status: u16, expected: &[&str]) {
    assert_eq!(reply.status.as_u16(), status, "{body}\n→ {}", reply.text());
    if status >= 400 {
        let mut found = reply.issue_expressions();
        found.sort();
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(found, expected, "{body}\n→ {}", reply.text());
    }
}

async fn every_rule_names_its_element(backend: Backend) {
    let server = Server::start(backend).await;
    server.put("/ina/fhir/Patient/p1", &json!({ "resourceType": "Patient", "id": "p1" })).await.expect(201);
    for (body, status, expected) in cases() {
        let resource_type = body["resourceType"].as_str().unwrap_or_default().to_owned();
        let reply = server.post(&format!("/ina/fhir/{resource_type}"), &body).await;
        expect_outcome(&body, &reply, status, &expected);
    }
}

/// The same table as a real, policy-bound principal: the care manager whose office
/// registers the person (Patients carry the office as registrar, Observations are about a
/// person on her team with consent). Validation answers her exactly as it answers the
/// engine; the cases about references the rule judges first are left to the policy tests.
async fn every_rule_names_its_element_for_the_care_manager(backend: Backend) {
    let server = Server::start(backend).await;
    server.put("/ina/fhir/Organization/office", &crate::policy::organization("office", "居宅介護支援事業所")).await.expect(201);
    let care_manager = crate::policy::practitioner(&server, "ina", "cm", "office", "user/*.cruds").await;
    server.setup("ina", &crate::policy::patient("p1", "山田", "office")).await;
    server.setup("ina", &crate::policy::consent("consent-p1", "p1", "active", "office")).await;
    server.setup("ina", &crate::policy::care_team("team-p1", "p1", &["PractitionerRole/role-cm"])).await;
    let mut checked = 0;
    for (mut body, status, expected) in cases() {
        // References the rule judges first, stored Bundles (not a person's data) and the
        // directory (the administrators') are left to the policy tests.
        if body.get("managingOrganization").is_some() || body["resourceType"] == "Bundle" || body["resourceType"] == "Practitioner" {
            continue;
        }
        match body["resourceType"].as_str() {
            Some("Patient") => body["managingOrganization"] = json!({ "reference": "Organization/office" }),
            Some("Observation" | "Communication" | "Condition" | "Encounter" | "CarePlan" | "MedicationRequest") => body["subject"] = json!({ "reference": "Patient/p1" }),
            _ => {}
        }
        let reply = care_manager.post(&server, &body).await;
        expect_outcome(&body, &reply, status, &expected);
        checked += 1;
    }
    assert!(checked > 20, "the table ran: {checked} cases");
}

async fn resource_type_and_id_must_match_the_url(backend: Backend) {
    let server = Server::start(backend).await;
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "t" } });
    let wrong_type = server.post("/ina/fhir/Patient", &observation).await;
    wrong_type.expect(400);
    assert_eq!(wrong_type.issue_expressions(), ["Observation.resourceType"]);
    let mut patient = json!({ "resourceType": "Patient", "id": "a" });
    let wrong_id = server.put("/ina/fhir/Patient/b", &patient).await;
    wrong_id.expect(400);
    assert_eq!(wrong_id.issue_expressions(), ["Patient.id"]);
    patient.as_object_mut().map(|o| o.remove("id"));
    server.put("/ina/fhir/Patient/b", &patient).await.expect(400);
    server.post("/ina/fhir/NotAType", &patient).await.expect(404);
    // A rejected write stores nothing.
    assert_eq!(server.get("/ina/fhir/Patient").await.json()["total"], 0);
}

/// A `meta.profile` the server does not know: by default the resource is stored unchecked
/// and `Prefer: return=OperationOutcome` shows a warning naming the profile (what data
/// written for another server's profiles needs to load); with `unknown_profiles = "error"`
/// it is a 422 naming the profile.
async fn unknown_profiles_warn_or_refuse(backend: Backend) {
    let observation = json!({
        "resourceType": "Observation",
        "meta": { "profile": ["http://example.org/fhir/StructureDefinition/local-vitals", "http://example.org/fhir/StructureDefinition/Local_Observation_VitalSigns"] },
        "status": "final", "code": { "text": "体温" }, "valueQuantity": { "value": 36.5, "unit": "Cel" }
    });
    let server = Server::start(backend).await;
    let stored = server.send(axum::http::Method::POST, "/ina/fhir/Observation", &[("prefer", "return=OperationOutcome")], &observation).await;
    stored.expect(201);
    let outcome = stored.json();
    let warnings: Vec<&Value> = outcome["issue"].as_array().into_iter().flatten().filter(|i| i["severity"] == "warning").collect();
    assert_eq!(warnings.len(), 2, "{outcome}");
    assert_eq!(warnings[1]["expression"][0], "Observation.meta.profile[1]");
    assert!(warnings[1]["diagnostics"].as_str().unwrap_or_default().contains("Local_Observation_VitalSigns"));
    let strict = Server::start_with(backend, |config| config.unknown_profiles = renraku::config::UnknownProfiles::Error).await;
    let refused = strict.post("/ina/fhir/Observation", &observation).await;
    refused.expect(422);
    assert_eq!(refused.issue_expressions(), vec!["Observation.meta.profile[0]", "Observation.meta.profile[1]"]);
}

both_backends!(unknown_profiles_warn_or_refuse, every_rule_names_its_element, every_rule_names_its_element_for_the_care_manager, resource_type_and_id_must_match_the_url);

/// Real data nobody here wrote: the specification's own examples of a person's record and of
/// the directory (`tests/data/r4-examples.ndjson`, 539 resources from the package
/// `hl7.fhir.r4.examples` 4.0.1; `tests/data/README.md`) pass every layer of validation —
/// schema, required elements and bindings, the R4 invariants — except where an example
/// itself breaks an R4 rule, listed here with the rule it breaks.
#[test]
fn the_specifications_examples_are_valid() {
    let validator = renraku::fhir::validate::Validator::load().unwrap_or_else(|e| panic!("{e}"));
    let examples = include_str!("../data/r4-examples.ndjson");
    let known_invalid: &[(&str, &str)] = &[];
    let mut refused = Vec::new();
    let mut count = 0;
    for line in examples.lines() {
        let example: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let name = format!("{}/{}", example["resourceType"].as_str().unwrap_or_default(), example["id"].as_str().unwrap_or_default());
        count += 1;
        if let Err(issues) = validator.validate(example) {
            let found: Vec<String> = issues.iter().map(|issue| format!("{:?} {}", issue.expression, issue.diagnostics)).collect();
            refused.push((name, found));
        }
    }
    assert_eq!(count, 539);
    let names: Vec<&str> = refused.iter().map(|(name, _)| name.as_str()).collect();
    let expected: Vec<&str> = known_invalid.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected, "refused: {refused:#?}");
}

/// JP Core's own examples (`tests/data/jp-core-examples.ndjson`) claim its profiles, which
/// the server enforces (`profiles/structure-definitions/jp-core/`): each validates. And the
/// profiles bite: the same Patient without its identifier is refused.
#[test]
fn jp_cores_examples_meet_its_profiles() {
    let validator = renraku::fhir::validate::Validator::load().unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    for line in include_str!("../data/jp-core-examples.ndjson").lines() {
        let example: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"));
        let profile = example.pointer("/meta/profile/0").and_then(Value::as_str).unwrap_or_default().to_owned();
        assert!(profile.starts_with("http://jpfhir.jp/fhir/core/StructureDefinition/JP_"), "{profile}");
        assert!(validator.profiles().get(&profile).is_some(), "{profile} is shipped");
        if let Err(issues) = validator.validate(example.clone()) {
            panic!("{profile}: {issues:?}");
        }
        if example["resourceType"] == "Patient" {
            let mut without = example.clone();
            without.as_object_mut().map(|o| o.remove("identifier"));
            let issues = validator.validate(without).err().unwrap_or_default();
            assert!(issues.iter().any(|i| i.expression == ["Patient.identifier"]), "{issues:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}
