//! Photos and documents on a person's board (issue #16): Binary uploaded and downloaded in
//! its native form by the support team of the demo's person (a care manager of 南箕輪村 and
//! a doctor of 伊那市 across the border), readable exactly as what it is attached to.

use axum::http::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::policy::Caller;
use crate::support::{Backend, Reply, Server};

both_backends!(photos_on_the_board_follow_what_they_are_attached_to, attachments_in_one_transaction, the_consent_paper_is_kept_with_the_registration);

const PERSON: &str = "demo-yamada-taro";
const LIMIT: usize = 64 * 1024;

/// A PNG of `size` bytes: its signature and header chunk, then filler.
fn png(size: usize) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];
    bytes.extend((0..size.saturating_sub(bytes.len())).map(|i| (i % 251) as u8));
    bytes
}

async fn upload(server: &Server, caller: &Caller, content_type: &str, context: Option<&str>, bytes: Vec<u8>) -> Reply {
    let auth = format!("Bearer {}", caller.token);
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", content_type)];
    if let Some(context) = context {
        headers.push(("x-security-context", context));
    }
    server.request(Method::POST, &format!("/{}/fhir/Binary", caller.tenant), &headers, Some(bytes)).await
}

async fn download(server: &Server, caller: &Caller, path: &str, headers: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {}", caller.token);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    server.request(Method::GET, &format!("/{}/fhir/{path}", caller.tenant), &all, None).await
}

fn diagnostics(reply: &Reply) -> String {
    reply.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned()
}

async fn photos_on_the_board_follow_what_they_are_attached_to(backend: Backend) {
    let server = Server::start_with(backend, |config| {
        config.demo = true;
        config.binary.limit_bytes = LIMIT;
    })
    .await;
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let nurse = Caller::demo("minowa", "demo-nurse-minowa");
    let auditor = Caller::demo("minamiminowa", "demo-auditor-minamiminowa");

    // The nurse of the team posts on the board and attaches a photo to the post.
    let post = doctor.post(&server, &crate::policy::communication(PERSON, "褥瘡の写真を添付します。")).await;
    post.expect(201);
    let post_id = post.json()["id"].as_str().unwrap().to_owned();
    let photo = png(5000);
    let uploaded = upload(&server, &doctor, "image/png", Some(&format!("Communication/{post_id}")), photo.clone()).await;
    uploaded.expect(201);
    let binary = uploaded.json();
    let id = binary["id"].as_str().unwrap().to_owned();
    assert!(binary.get("data").is_none(), "the content is not kept in the JSON: {binary}");
    assert_eq!(binary["contentType"], "image/png");
    assert_eq!(binary["securityContext"]["reference"], format!("Communication/{post_id}"));

    // The care manager, at her own base, gets the bytes as they were sent, whole and in part.
    let raw = download(&server, &care_manager, &format!("Binary/{id}"), &[("accept", "image/png")]).await;
    raw.expect(200);
    assert_eq!(raw.body, photo);
    assert_eq!(raw.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(raw.header("etag").as_deref(), Some("W/\"1\""));
    assert_eq!(raw.header("content-length").as_deref(), Some("5000"));
    assert_eq!(raw.header("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(raw.header("x-content-type-options").as_deref(), Some("nosniff"));
    let part = download(&server, &care_manager, &format!("Binary/{id}"), &[("range", "bytes=100-199")]).await;
    part.expect(206);
    assert_eq!(part.body, photo[100..200].to_vec());
    assert_eq!(part.header("content-range").as_deref(), Some("bytes 100-199/5000"));
    download(&server, &care_manager, &format!("Binary/{id}"), &[("range", "bytes=6000-")]).await.expect(416);
    // Asked for FHIR, the Binary comes with its content as data.
    let fhir = download(&server, &care_manager, &format!("Binary/{id}"), &[("accept", "application/fhir+json")]).await;
    fhir.expect(200);
    let data = fhir.json()["data"].as_str().unwrap().to_owned();
    assert_eq!(data, base64_of(&photo));
    // The attachment's URL in the post resolves under the same rule.
    let mut attached = post.json();
    attached["payload"] = json!([{ "contentString": "褥瘡の写真を添付します。" },
                                 { "contentAttachment": { "contentType": "image/png", "url": format!("Binary/{id}") } }]);
    doctor.put(&server, &attached).await.expect(200);
    let url = care_manager.get(&server, &format!("Communication/{post_id}")).await.json()["payload"][1]["contentAttachment"]["url"].clone();
    download(&server, &care_manager, url.as_str().unwrap(), &[]).await.expect(200);

    // Someone outside the team learns nothing: the photo answers exactly as a missing one.
    let hidden = download(&server, &nurse, &format!("Binary/{id}"), &[("accept", "image/png")]).await;
    hidden.expect(404);
    let missing = download(&server, &nurse, "Binary/no-such-binary", &[("accept", "image/png")]).await;
    missing.expect(404);
    assert_eq!(diagnostics(&hidden).replace(&id, "x"), diagnostics(&missing).replace("no-such-binary", "x"));
    assert!(nurse.search_ids(&server, "Binary").await.is_empty());
    // Nor can it attach anything to the person's post.
    upload(&server, &nurse, "image/png", Some(&format!("Communication/{post_id}")), png(100)).await.expect(422);

    // Content must be what it claims, of a kind a team sends, and within the limit.
    let context = format!("Communication/{post_id}");
    let mismatch = upload(&server, &doctor, "image/jpeg", Some(&context), png(100)).await;
    mismatch.expect(415);
    assert!(diagnostics(&mismatch).contains("image/png"), "{}", mismatch.text());
    let mut elf = vec![0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x3E, 0, 1, 0, 0, 0];
    elf.resize(128, 0);
    upload(&server, &doctor, "text/plain", Some(&context), elf.clone()).await.expect(415);
    upload(&server, &doctor, "application/x-msdownload", Some(&context), b"MZ\x90\x00".to_vec()).await.expect(415);
    let large = upload(&server, &doctor, "image/png", Some(&context), png(LIMIT + 1)).await;
    large.expect(413);
    assert_eq!(large.json()["resourceType"], "OperationOutcome");
    // In its FHIR form the same checks name the element.
    let embedded = json!({ "resourceType": "Binary", "contentType": "text/plain", "securityContext": { "reference": context },
                           "data": base64_of(&elf) });
    let refused = doctor.post(&server, &embedded).await;
    refused.expect(422);
    assert_eq!(refused.issue_expressions(), ["Binary.data"]);
    // A Binary that belongs to nobody is not stored for someone bound by the access rule.
    let orphan = upload(&server, &doctor, "image/png", None, png(100)).await;
    orphan.expect(422);
    assert_eq!(orphan.issue_expressions(), ["Binary.securityContext"]);

    // The audit trail names the person whose photo was read.
    let events = auditor.get(&server, &format!("AuditEvent?patient=Patient/{PERSON}&subtype=read&_count=200")).await;
    events.expect(200);
    let names_the_photo = |entry: &Value| {
        entry["resource"]["entity"].as_array().into_iter().flatten().any(|entity| {
            entity["what"]["reference"].as_str().is_some_and(|what| what.starts_with(&format!("Binary/{id}")))
        })
    };
    assert!(events.json()["entry"].as_array().into_iter().flatten().any(names_the_photo), "{}", events.text());

    // Consent withdrawn: the doctor, whose hospital did not register the person, no longer
    // sees the photo; the registrar's care manager still does.
    let mut consent = care_manager.get(&server, "Consent/demo-consent-yamada").await.json();
    consent["status"] = json!("inactive");
    care_manager.put(&server, &consent).await.expect(200);
    download(&server, &doctor, &format!("Binary/{id}"), &[]).await.expect(404);
    download(&server, &care_manager, &format!("Binary/{id}"), &[]).await.expect(200);
}

/// The board post and its photo in one transaction (the photo in its FHIR form, naming the
/// post by its `fullUrl`), as a care-software vendor sends them.
async fn attachments_in_one_transaction(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let photo = png(300);
    let post = "urn:uuid:7c1d7a52-0000-4000-8000-000000000001";
    let picture = "urn:uuid:7c1d7a52-0000-4000-8000-000000000002";
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction", "entry": [
            { "fullUrl": picture, "request": { "method": "POST", "url": "Binary" },
              "resource": { "resourceType": "Binary", "contentType": "image/png", "securityContext": { "reference": post },
                            "data": base64_of(&photo) } },
            { "fullUrl": post, "request": { "method": "POST", "url": "Communication" },
              "resource": { "resourceType": "Communication", "status": "completed", "subject": { "reference": format!("Patient/{PERSON}") },
                            "payload": [{ "contentString": "写真です。" },
                                        { "contentAttachment": { "contentType": "image/png", "url": picture } }] } }
        ]
    });
    let reply = server.send(Method::POST, "/ina/fhir", &[("authorization", "Bearer demo-doctor-ina")], &bundle).await;
    reply.expect(200);
    let location = reply.json()["entry"][0]["response"]["location"].as_str().unwrap().to_owned();
    let binary_id = location.split('/').nth(1).unwrap().to_owned();
    let communication = reply.json()["entry"][1]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
    let stored: Value = care_manager.get(&server, &format!("Communication/{communication}")).await.json();
    assert_eq!(stored["payload"][1]["contentAttachment"]["url"], format!("Binary/{binary_id}"));
    let raw = download(&server, &care_manager, &format!("Binary/{binary_id}"), &[]).await;
    raw.expect(200);
    assert_eq!(raw.body, photo);
    let _ = doctor;
}

/// The registration transaction with the scanned consent paper (同意書): a DocumentReference
/// (LOINC 59284-0) with its PDF, which the Consent names as its source (after the team: a
/// registrar without a team writes only the person, the consent and the team). Withdrawing the
/// consent keeps the paper with the registrar's care manager; the doctor no longer sees it.
async fn the_consent_paper_is_kept_with_the_registration(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let paper = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n".to_vec();
    let person = "urn:uuid:9a0c2a52-0000-4000-8000-000000000001";
    let document = "urn:uuid:9a0c2a52-0000-4000-8000-000000000002";
    let scan = "urn:uuid:9a0c2a52-0000-4000-8000-000000000003";
    let consent = "urn:uuid:9a0c2a52-0000-4000-8000-000000000004";
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction", "entry": [
            { "fullUrl": person, "request": { "method": "POST", "url": "Patient" },
              "resource": { "resourceType": "Patient", "name": [{ "family": "伊藤", "given": ["和子"] }],
                            "managingOrganization": { "reference": "Organization/demo-mm-care-office" } } },
            { "fullUrl": consent, "request": { "method": "POST", "url": "Consent" },
              "resource": { "resourceType": "Consent", "status": "active",
                            "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] }, "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
                            "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
                            "patient": { "reference": person }, "dateTime": "2026-12-01",
                            "organization": [{ "reference": "Organization/demo-mm-care-office" }],
                            "sourceReference": { "reference": document },
                            "provision": { "type": "permit", "period": { "start": "2026-12-01" } } } },
            { "request": { "method": "POST", "url": "CareTeam" },
              "resource": { "resourceType": "CareTeam", "status": "active", "subject": { "reference": person },
                            "participant": [{ "member": { "reference": "PractitionerRole/demo-role-cm-suzuki" } },
                                            { "member": { "reference": "PractitionerRole/demo-role-dr-tanaka" } }] } },
            { "fullUrl": scan, "request": { "method": "POST", "url": "Binary" },
              "resource": { "resourceType": "Binary", "contentType": "application/pdf", "securityContext": { "reference": document },
                            "data": base64_of(&paper) } },
            { "fullUrl": document, "request": { "method": "POST", "url": "DocumentReference" },
              "resource": { "resourceType": "DocumentReference", "status": "current",
                            "type": { "coding": [{ "system": "http://loinc.org", "code": "59284-0", "display": "Consent Document" }] },
                            "subject": { "reference": person },
                            "content": [{ "attachment": { "contentType": "application/pdf", "url": scan, "title": "同意書（署名済み）" } }] } }
        ]
    });
    let reply = server.send(Method::POST, "/minamiminowa/fhir", &[("authorization", "Bearer demo-care-manager")], &bundle).await;
    reply.expect(200);
    let id_of = |index: usize| reply.json()["entry"][index]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
    let (patient, consent, binary, document) = (id_of(0), id_of(1), id_of(3), id_of(4));
    let stored = care_manager.get(&server, &format!("Consent/{consent}")).await.json();
    assert_eq!(stored["sourceReference"]["reference"], format!("DocumentReference/{document}"));
    let url = doctor.get(&server, &format!("DocumentReference/{document}")).await.json()["content"][0]["attachment"]["url"].clone();
    assert_eq!(url, format!("Binary/{binary}"));
    assert_eq!(download(&server, &doctor, &format!("Binary/{binary}"), &[]).await.body, paper);

    let mut withdrawn = stored.clone();
    withdrawn["status"] = json!("inactive");
    care_manager.put(&server, &withdrawn).await.expect(200);
    download(&server, &doctor, &format!("Binary/{binary}"), &[]).await.expect(404);
    doctor.get(&server, &format!("DocumentReference/{document}")).await.expect(404);
    let kept = download(&server, &care_manager, &format!("Binary/{binary}"), &[("accept", "application/pdf")]).await;
    kept.expect(200);
    assert_eq!(kept.body, paper);
    assert_eq!(kept.header("content-type").as_deref(), Some("application/pdf"));

    // The municipality's auditor reads the paper (and no other document of the person); the
    // registrar's care manager keeps it after leaving the team, and nothing else clinical.
    let auditor = Caller::demo("minamiminowa", "demo-auditor-minamiminowa");
    auditor.get(&server, &format!("DocumentReference/{document}")).await.expect(200);
    assert_eq!(download(&server, &auditor, &format!("Binary/{binary}"), &[]).await.body, paper);
    let note = json!({ "resourceType": "DocumentReference", "status": "current",
                       "type": { "coding": [{ "system": "http://loinc.org", "code": "34133-9", "display": "Summary of episode note" }] },
                       "subject": { "reference": format!("Patient/{patient}") },
                       "content": [{ "attachment": { "contentType": "text/plain", "data": base64_of("退院時サマリー".as_bytes()) } }] });
    let mut consent_again = withdrawn.clone();
    consent_again["status"] = json!("active");
    care_manager.put(&server, &consent_again).await.expect(200);
    let note_id = care_manager.post(&server, &note).await.json()["id"].as_str().unwrap().to_owned();
    auditor.get(&server, &format!("DocumentReference/{note_id}")).await.expect(404);
    assert_eq!(auditor.search_ids(&server, "DocumentReference").await, vec![format!("DocumentReference/{document}")]);
    auditor.get(&server, &format!("Patient/{patient}")).await.expect(403);
    let admin = Caller::demo("minamiminowa", "demo-admin-minamiminowa");
    let team_id = reply.json()["entry"][2]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
    let mut team = admin.get(&server, &format!("CareTeam/{team_id}")).await.json();
    team["participant"].as_array_mut().unwrap().retain(|p| p["member"]["reference"] != "PractitionerRole/demo-role-cm-suzuki");
    admin.put(&server, &team).await.expect(200);
    care_manager.get(&server, &format!("DocumentReference/{note_id}")).await.expect(404);
    care_manager.get(&server, &format!("DocumentReference/{document}")).await.expect(200);
    assert_eq!(download(&server, &care_manager, &format!("Binary/{binary}"), &[]).await.body, paper);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
