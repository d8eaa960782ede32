//! The README's "Running in production" section, followed as a newcomer would (issue #15):
//! an empty database, a configuration file naming one municipality, no `--demo` — and the
//! `renraku` binary for every step: the server administrator's credential made with
//! `renraku admin client add` before the gateway ever ran, a second municipality, an
//! agreement and a directory written through the API, a municipal administrator's
//! credential added while the gateway runs (another process), a care office's system client
//! under dual control, and the first registered person. Then `renraku admin client revoke`
//! takes the server administrator's credential away at the gateway's next request.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::nodes::Node;
use crate::support::{new_database, Backend};
use crate::both_backends;

/// The binary's command line with the deployment's settings; its standard output.
pub(crate) fn renraku(arguments: &[&str], settings: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(arguments)
        .args(settings)
        .env("RENRAKU_LOG", "warn")
        .output()
        .expect("the renraku binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)))
    }
}

/// A token by SMART Backend Services: `renraku client-assertion` signs, the token endpoint
/// of `tenant` answers. The status and the answer.
async fn backend_token(node: &Node, client_id: &str, key: &Path, kid: &str, tenant: &str, scope: &str) -> (u16, Value) {
    let audience = format!("{}/{tenant}/auth/token", node.base);
    let key = key.to_string_lossy();
    let assertion = renraku(&["client-assertion", "--client-id", client_id, "--key", &key, "--kid", kid, "--audience", &audience], &[])
        .expect("an assertion is signed");
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.trim()),
    ];
    let reply = node.http.post(&audience).form(&form).send().await.expect("the token endpoint answers");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn bearer(node: &Node, client_id: &str, key: &Path, kid: &str, tenant: &str, scope: &str) -> String {
    let (status, answer) = backend_token(node, client_id, key, kid, tenant, scope).await;
    assert_eq!(status, 200, "a token for {client_id}: {answer}");
    answer["access_token"].as_str().unwrap_or_default().to_owned()
}

/// `method path` with a bearer token and a JSON body; the status and the answer.
async fn call(node: &Node, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = node.http.request(method, format!("{}{path}", node.base)).bearer_auth(token);
    if let Some(body) = body {
        let content_type = if path.starts_with("/admin") { "application/json" } else { "application/fhir+json" };
        request = request.header("content-type", content_type).body(body.to_string());
    }
    let reply = request.send().await.expect("the gateway answers");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

pub(crate) fn demo_key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo/keys").join(name)
}

async fn from_an_empty_database_to_a_first_person(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let dir = directory.path();
    let config_file = dir.join("renraku.toml");
    let file = format!("database_url = \"{}\"\n\n[[tenants]]\nslug = \"ina\"\ncode = \"202096\"\nname = \"伊那市\"\n", config.database_url);
    std::fs::write(&config_file, file).expect("the configuration file is written");
    let (config_path, data_dir) = (config_file.to_string_lossy().into_owned(), dir.to_string_lossy().into_owned());
    let settings = ["--config", config_path.as_str(), "--data-dir", data_dir.as_str()];

    // 1. The server administrator's credential, before the gateway has ever run.
    let ops_key = dir.join("ops.pem");
    let ops_key_text = ops_key.to_string_lossy().into_owned();
    let printed = renraku(&["admin", "client", "add", "--role", "server-admin", "--client-id", "ops", "--key-out", &ops_key_text], &settings)
        .expect("the server administrator's client is registered");
    assert!(printed.contains("server-admin client 'ops'"), "{printed}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ops_key).expect("the key file exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is its owner's alone");
    }
    // A second registration never overwrites a key file, and registers nothing.
    let again = renraku(&["admin", "client", "add", "--role", "server-admin", "--client-id", "ops2", "--key-out", &ops_key_text], &settings);
    assert!(again.is_err_and(|e| e.contains("exists")));

    let node = Node::serve(&settings).await;
    let ops = bearer(&node, "ops", &ops_key, "ops", "ina", "system/*.cruds").await;

    // 2. A second municipality, served at once.
    let added = json!({ "slug": "minamiminowa", "code": "203858", "name": "南箕輪村" });
    let (status, answer) = call(&node, &ops, reqwest::Method::POST, "/admin/tenants", Some(&added)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(node.http.get(format!("{}/minamiminowa/fhir/metadata", node.base)).send().await.expect("a reply").status().as_u16(), 200);

    // 3. The agreement between the two.
    let agreement = json!({
        "resourceType": "Contract", "id": "kamiina-2026",
        "meta": { "profile": ["https://renraku.example.jp/fhir/StructureDefinition/renraku-wide-area-agreement"] },
        "extension": [{
            "url": "https://renraku.example.jp/fhir/StructureDefinition/agreement-scope",
            "extension": [
                { "url": "resourceType", "valueCode": "*" },
                { "url": "interaction", "valueCode": "read" },
                { "url": "interaction", "valueCode": "search-type" }
            ]
        }],
        "status": "executed", "title": "上伊那地域 在宅医療・介護連携に関する広域連携協定",
        "applies": { "start": "2026-04-01" },
        "authority": [
            { "identifier": { "system": "https://renraku.example.jp/fhir/sid/municipality-code", "value": "202096" }, "display": "伊那市" },
            { "identifier": { "system": "https://renraku.example.jp/fhir/sid/municipality-code", "value": "203858" }, "display": "南箕輪村" }
        ]
    });
    let (status, answer) = call(&node, &ops, reqwest::Method::PUT, "/minamiminowa/fhir/Contract/kamiina-2026", Some(&agreement)).await;
    assert_eq!(status, 201, "{answer}");

    // 4. The directory: a care-management office, its care manager and her role.
    let directory_entries = [
        json!({ "resourceType": "Organization", "id": "mm-care-office", "active": true, "name": "南箕輪村居宅介護支援事業所" }),
        json!({ "resourceType": "Practitioner", "id": "cm-suzuki", "active": true, "name": [{ "family": "鈴木", "given": ["花子"] }] }),
        json!({
            "resourceType": "PractitionerRole", "id": "role-cm-suzuki", "active": true,
            "practitioner": { "reference": "Practitioner/cm-suzuki" },
            "organization": { "reference": "Organization/mm-care-office" }
        }),
    ];
    for entry in &directory_entries {
        let path = format!("/minamiminowa/fhir/{}/{}", entry["resourceType"].as_str().unwrap_or_default(), entry["id"].as_str().unwrap_or_default());
        let (status, answer) = call(&node, &ops, reqwest::Method::PUT, &path, Some(entry)).await;
        assert_eq!(status, 201, "{path}: {answer}");
    }

    // 5. The municipality's administrator's credential, made by another process while the
    //    gateway runs: the gateway serves it at its next token request.
    let admin_key = dir.join("mm-admin.pem");
    let admin_key_text = admin_key.to_string_lossy().into_owned();
    renraku(
        &["admin", "client", "add", "--role", "municipal-admin", "--tenant", "minamiminowa", "--client-id", "mm-admin", "--key-out", &admin_key_text],
        &settings,
    )
    .expect("the municipal administrator's client is registered");
    let admin = bearer(&node, "mm-admin", &admin_key, "mm-admin", "minamiminowa", "system/*.cruds").await;
    // Its token is the administrator's, for its own municipality only.
    assert_eq!(call(&node, &admin, reqwest::Method::GET, "/admin/clients?tenant=minamiminowa", None).await.0, 200);
    assert_eq!(call(&node, &admin, reqwest::Method::GET, "/admin/clients?tenant=ina", None).await.0, 403);
    assert_eq!(call(&node, &admin, reqwest::Method::GET, "/admin/tenants", None).await.0, 403);
    assert_eq!(backend_token(&node, "mm-admin", &admin_key, "mm-admin", "ina", "system/*.cruds").await.0, 401);

    //    The care office's software as a system client: the municipality's administrator
    //    registers it, the server administrator approves it.
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(demo_key("ehr-ina-jwks.json")).expect("the test key set")).expect("JSON");
    let care_system = json!({
        "client_id": "mm-care-system", "tenant": "minamiminowa", "kind": "system", "name": "居宅介護支援システム",
        "organization": "mm-care-office", "scopes": "system/*.cruds", "maintains_directory": true, "jwks": jwks
    });
    let (status, answer) = call(&node, &admin, reqwest::Method::POST, "/admin/clients", Some(&care_system)).await;
    assert_eq!(status, 201, "{answer}");
    let care_key = demo_key("ehr-ina-es384.pem");
    let (status, answer) = backend_token(&node, "mm-care-system", &care_key, "ehr-ina-es384", "minamiminowa", "system/*.cruds").await;
    assert_eq!(status, 400, "unapproved: {answer}");
    assert_eq!(answer["error"], "unauthorized_client");
    // An administrator client cannot be minted through the API by a municipal administrator.
    let more_admin = json!({ "client_id": "mm-admin-2", "tenant": "minamiminowa", "kind": "administrator", "roles": ["municipal-admin"], "jwks": jwks });
    assert_eq!(call(&node, &admin, reqwest::Method::POST, "/admin/clients", Some(&more_admin)).await.0, 403);
    // Nor by the server administrator: administrator clients come from the operator alone.
    assert_eq!(call(&node, &ops, reqwest::Method::POST, "/admin/clients", Some(&more_admin)).await.0, 403);
    // An app whose sign-ins may take administrative roles is role mapping: the server
    // administrator's, not the municipality's.
    let console = json!({
        "client_id": "mm-console", "tenant": "minamiminowa", "kind": "public", "redirect_uris": ["https://console.example.jp/cb"],
        "scopes": "openid user/*.cruds", "roles": ["server-admin"]
    });
    assert_eq!(call(&node, &admin, reqwest::Method::POST, "/admin/clients", Some(&console)).await.0, 403);
    assert_eq!(call(&node, &ops, reqwest::Method::POST, "/admin/clients", Some(&console)).await.0, 201);
    let (status, answer) = call(&node, &ops, reqwest::Method::POST, "/admin/clients/minamiminowa/mm-care-system/approve", None).await;
    assert_eq!(status, 200, "{answer}");
    let care = bearer(&node, "mm-care-system", &care_key, "ehr-ina-es384", "minamiminowa", "system/*.cruds").await;
    // Registered to keep its office's directory: it adds the office's satellite location.
    let satellite = json!({ "resourceType": "Location", "name": "北殿サテライト", "managingOrganization": { "reference": "Organization/mm-care-office" } });
    assert_eq!(call(&node, &care, reqwest::Method::POST, "/minamiminowa/fhir/Location", Some(&satellite)).await.0, 201);

    // 6. The first person: registered by the office, with the signed consent and the team.
    let person = "urn:uuid:0d6a5f7e-0000-4000-8000-000000000001";
    let first = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {
                "fullUrl": person,
                "resource": {
                    "resourceType": "Patient", "identifier": [{ "system": "urn:example:registration", "value": "A-1" }],
                    "name": [{ "family": "伊藤", "given": ["和子"] }],
                    "managingOrganization": { "reference": "Organization/mm-care-office" }
                },
                "request": { "method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:example:registration|A-1" }
            },
            {
                "resource": {
                    "resourceType": "Consent", "status": "active",
                    "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] }, "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
                    "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
                    "patient": { "reference": person }, "provision": { "type": "permit" }
                },
                "request": { "method": "POST", "url": "Consent" }
            },
            {
                "resource": {
                    "resourceType": "CareTeam", "status": "active", "subject": { "reference": person },
                    "participant": [{ "member": { "reference": "PractitionerRole/role-cm-suzuki" } }]
                },
                "request": { "method": "POST", "url": "CareTeam" }
            }
        ]
    });
    let (status, answer) = call(&node, &care, reqwest::Method::POST, "/minamiminowa/fhir", Some(&first)).await;
    assert_eq!(status, 200, "{answer}");
    let location = answer["entry"][0]["response"]["location"].as_str().unwrap_or_default().to_owned();
    let patient_id = location.split('/').nth(1).unwrap_or_default().to_owned();
    assert!(!patient_id.is_empty(), "{answer}");
    let (status, read) = call(&node, &care, reqwest::Method::GET, &format!("/minamiminowa/fhir/Patient/{patient_id}"), None).await;
    assert_eq!((status, read["name"][0]["family"].as_str()), (200, Some("伊藤")));
    // The municipality's administrator finds the person (no clinical content), the server
    // administrator does not.
    assert_eq!(call(&node, &admin, reqwest::Method::GET, &format!("/minamiminowa/fhir/Patient/{patient_id}"), None).await.0, 200);
    assert_eq!(call(&node, &ops, reqwest::Method::GET, &format!("/minamiminowa/fhir/Patient/{patient_id}"), None).await.0, 404);

    // 7. Listing, then revoking the server administrator's credential while the gateway
    //    runs: its token is refused at the next request, and it gets no new one.
    let listed = renraku(&["admin", "client", "list"], &settings).expect("the clients are listed");
    assert!(listed.contains("_server\tops\tadministrator\tserver-admin"), "{listed}");
    assert!(listed.contains("minamiminowa\tmm-care-system\tsystem"), "{listed}");
    assert_eq!(call(&node, &ops, reqwest::Method::GET, "/admin/tenants", None).await.0, 200);
    renraku(&["admin", "client", "revoke", "--client-id", "ops"], &settings).expect("the client is revoked");
    assert_eq!(call(&node, &ops, reqwest::Method::GET, "/admin/tenants", None).await.0, 401);
    assert_eq!(backend_token(&node, "ops", &ops_key, "ops", "ina", "system/*.cruds").await.0, 401);
    // The administrator's own credential was not touched.
    assert_eq!(call(&node, &admin, reqwest::Method::GET, "/admin/clients?tenant=minamiminowa", None).await.0, 200);

    // Every step is in the audit trail, whose chains verify.
    drop(node);
    let verified = renraku(&["audit", "verify"], &settings).expect("the trail verifies");
    assert!(verified.contains("_server:") && verified.contains("minamiminowa:"), "{verified}");
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

both_backends!(from_an_empty_database_to_a_first_person);
