//! The OpenAPI 3 description of a municipality's base (`GET [base]/openapi.json`), generated
//! from its CapabilityStatement — every type, interaction and search parameter it lists —
//! plus the administration API outside the bases. Every error answer is documented as an
//! OperationOutcome, so generic OpenAPI tooling (clients, fuzzers such as schemathesis) sees
//! exactly the statuses the gateway can give.

use serde_json::{json, Map, Value};

use crate::identity::Context;
use crate::service::Fhir;

/// Statuses any FHIR interaction may answer with an OperationOutcome: the request (400,
/// 406 format, 414 URL, 413 body, 415 media type, 422 content), the credential (401), the
/// access rule (403; 404 also hides what may not be seen), state (409 conflict, 410
/// deleted, 412 precondition) and the server (500, 503 timeout or shutting down).
const ERROR_STATUSES: [&str; 14] = ["400", "401", "403", "404", "405", "406", "409", "410", "412", "413", "414", "415", "422", "500"];
const UNAVAILABLE: &str = "503";
const FHIR_JSON: &str = "application/fhir+json";

impl Fhir {
    /// `GET [base]/openapi.json`
    pub fn openapi(&self, context: &Context) -> Value {
        let capability = self.capability_statement(context);
        let mut paths = Map::new();
        paths.insert("/metadata".into(), json!({ "get": operation("metadata", "The CapabilityStatement", &["200"], resource_body("CapabilityStatement"), &[], None) }));
        let system = json!({
            "post": operation("transaction", "A batch or transaction Bundle", &["200"], resource_body("Bundle"), &[], Some(resource_body("Bundle"))),
            "get": operation("search-system", "Search across types (`_type`)", &["200"], resource_body("Bundle"), &result_parameters(), None),
        });
        paths.insert("/".into(), system);
        paths.insert("/_history".into(), json!({ "get": operation("history-system", "Changes on this base", &["200"], resource_body("Bundle"), &history_parameters(), None) }));
        let resources = capability.pointer("/rest/0/resource").and_then(Value::as_array).cloned().unwrap_or_default();
        for resource in &resources {
            let Some(resource_type) = resource["type"].as_str() else { continue };
            let has = |code: &str| resource["interaction"].as_array().is_some_and(|all| all.iter().any(|i| i["code"] == code));
            let body = resource_body(resource_type);
            let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$" } });
            let mut search = result_parameters();
            for parameter in resource["searchParam"].as_array().into_iter().flatten() {
                let Some(name) = parameter["name"].as_str() else { continue };
                let description = format!("{} ({})", name, parameter["type"].as_str().unwrap_or_default());
                search.push(json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string" } }));
            }
            let mut type_path = Map::new();
            if has("search-type") {
                let summary = format!("Search {resource_type}");
                type_path.insert("get".into(), operation(&format!("search-{resource_type}"), &summary, &["200"], resource_body("Bundle"), &search, None));
            }
            if has("create") {
                let mut parameters = vec![header("If-None-Exist", "conditional create: the search that must match nothing")];
                parameters.push(header("Prefer", "return=minimal | representation | OperationOutcome"));
                let summary = format!("Create a {resource_type}");
                type_path.insert("post".into(), operation(&format!("create-{resource_type}"), &summary, &["200", "201"], body.clone(), &parameters, Some(body.clone())));
            }
            if has("update") {
                let summary = format!("Conditional update of a {resource_type}");
                type_path.insert("put".into(), operation(&format!("conditional-update-{resource_type}"), &summary, &["200", "201"], body.clone(), &search, Some(body.clone())));
            }
            if has("delete") {
                let summary = format!("Conditional delete of a {resource_type}");
                type_path.insert("delete".into(), operation(&format!("conditional-delete-{resource_type}"), &summary, &["200", "204"], Value::Null, &search, None));
            }
            paths.insert(format!("/{resource_type}"), Value::Object(type_path));

            let mut instance = Map::new();
            if has("read") {
                let parameters = vec![id.clone(), header("If-None-Match", "a weak ETag: 304 if unchanged")];
                let summary = format!("Read a {resource_type}");
                instance.insert("get".into(), operation(&format!("read-{resource_type}"), &summary, &["200", "304"], body.clone(), &parameters, None));
            }
            if has("update") {
                let parameters = vec![id.clone(), header("If-Match", "a weak ETag: 412 unless it is the current version")];
                let summary = format!("Update (or create with this id) a {resource_type}");
                instance.insert("put".into(), operation(&format!("update-{resource_type}"), &summary, &["200", "201"], body.clone(), &parameters, Some(body.clone())));
            }
            if has("patch") {
                let patch = json!({ "required": true, "content": { "application/json-patch+json": { "schema": { "type": "array", "items": { "type": "object" } } } } });
                let summary = format!("JSON Patch a {resource_type}");
                let mut patched = operation(&format!("patch-{resource_type}"), &summary, &["200"], body.clone(), std::slice::from_ref(&id), None);
                crate::fhir::set(&mut patched, "requestBody", patch);
                instance.insert("patch".into(), patched);
            }
            if has("delete") {
                let parameters = vec![id.clone(), json!({ "name": "_cascade", "in": "query", "required": false, "schema": { "type": "string", "enum": ["delete"] } })];
                let summary = format!("Delete a {resource_type}");
                instance.insert("delete".into(), operation(&format!("delete-{resource_type}"), &summary, &["200", "204"], Value::Null, &parameters, None));
            }
            paths.insert(format!("/{resource_type}/{{id}}"), Value::Object(instance));
            if has("history-instance") {
                let mut parameters = history_parameters();
                parameters.push(id.clone());
                let summary = format!("Versions of a {resource_type}");
                paths.insert(format!("/{resource_type}/{{id}}/_history"), json!({ "get": operation(&format!("history-{resource_type}"), &summary, &["200"], resource_body("Bundle"), &parameters, None) }));
            }
            if has("vread") {
                let version = json!({ "name": "version", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9]{1,18}$" } });
                let summary = format!("One version of a {resource_type}");
                let read = operation(&format!("vread-{resource_type}"), &summary, &["200"], body.clone(), &[id.clone(), version], None);
                paths.insert(format!("/{resource_type}/{{id}}/_history/{{version}}"), json!({ "get": read }));
            }
            if has("history-type") {
                let summary = format!("Changes to {resource_type} resources");
                paths.insert(format!("/{resource_type}/_history"), json!({ "get": operation(&format!("history-type-{resource_type}"), &summary, &["200"], resource_body("Bundle"), &history_parameters(), None) }));
            }
        }
        let endpoints = crate::config::Endpoints::of(&self.config, &context.tenant);
        let mut document = json!({
            "openapi": "3.0.3",
            "info": {
                "title": format!("Renraku FHIR R4 API: {}", capability.pointer("/implementation/description").and_then(Value::as_str).unwrap_or_default()),
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Generated from this base's CapabilityStatement. Every request needs a bearer token from this municipality's SMART authorization server; every error is an OperationOutcome."
            },
            "servers": [{ "url": context.base_url }],
            "security": [{ "bearer": [] }],
            "paths": Value::Object(paths),
            "components": {
                "securitySchemes": {
                    "bearer": { "type": "http", "scheme": "bearer" },
                    "smart": { "type": "oauth2", "flows": { "clientCredentials": { "tokenUrl": endpoints.token, "scopes": {} } } }
                },
                "schemas": {
                    "Resource": { "type": "object", "required": ["resourceType"], "properties": { "resourceType": { "type": "string" } } },
                    "OperationOutcome": {
                        "type": "object",
                        "required": ["resourceType", "issue"],
                        "properties": {
                            "resourceType": { "type": "string", "enum": ["OperationOutcome"] },
                            "issue": { "type": "array", "items": { "type": "object", "required": ["severity", "code"] } }
                        }
                    }
                },
                "responses": {
                    "Error": {
                        "description": "An OperationOutcome naming what went wrong (and, for content, the element path).",
                        "content": { FHIR_JSON: { "schema": { "$ref": "#/components/schemas/OperationOutcome" } } }
                    }
                }
            }
        });
        if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
            for (path, item) in administration_paths(&self.config.public_base_url) {
                paths.insert(path, item);
            }
            // Documents without a token.
            for open in ["/metadata"] {
                if let Some(get) = paths.get_mut(open).and_then(|item| item.get_mut("get")) {
                    crate::fhir::set(get, "security", json!([]));
                }
            }
        }
        document
    }
}

/// A `content` body of `resource_type` (a FHIR resource, JSON).
fn resource_body(resource_type: &str) -> Value {
    json!({ FHIR_JSON: { "schema": {
        "allOf": [{ "$ref": "#/components/schemas/Resource" }],
        "properties": { "resourceType": { "type": "string", "enum": [resource_type] } }
    } } })
}

fn header(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "header", "required": false, "description": description, "schema": { "type": "string" } })
}

fn query(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema })
}

/// The result parameters of every search.
fn result_parameters() -> Vec<Value> {
    vec![
        query("_count", json!({ "type": "integer", "minimum": 0 })),
        query("_sort", json!({ "type": "string" })),
        query("_total", json!({ "type": "string", "enum": ["none", "estimate", "accurate"] })),
        query("_summary", json!({ "type": "string", "enum": ["true", "false", "text", "data", "count"] })),
        query("_elements", json!({ "type": "string" })),
        query("_include", json!({ "type": "string" })),
        query("_revinclude", json!({ "type": "string" })),
        query("_format", json!({ "type": "string" })),
    ]
}

fn history_parameters() -> Vec<Value> {
    vec![query("_count", json!({ "type": "integer", "minimum": 0 })), query("_since", json!({ "type": "string", "format": "date-time" }))]
}

/// One operation: its success statuses answer `content` (none where `Null`), every error an
/// OperationOutcome.
fn operation(id: &str, summary: &str, successes: &[&str], content: Value, parameters: &[Value], request: Option<Value>) -> Value {
    let mut responses = Map::new();
    for status in successes {
        let mut response = json!({ "description": summary });
        if !content.is_null() && *status != "204" && *status != "304" {
            crate::fhir::set(&mut response, "content", content.clone());
        }
        responses.insert((*status).to_owned(), response);
    }
    for status in ERROR_STATUSES.iter().chain([&UNAVAILABLE]) {
        responses.insert((*status).to_owned(), json!({ "$ref": "#/components/responses/Error" }));
    }
    let mut operation = json!({ "operationId": id, "summary": summary, "parameters": parameters, "responses": responses });
    if let Some(content) = request {
        crate::fhir::set(&mut operation, "requestBody", json!({ "required": true, "content": content }));
    }
    operation
}

/// The administration API (outside every base, at the public origin).
fn administration_paths(origin: &str) -> Vec<(String, Value)> {
    let servers = json!([{ "url": origin }]);
    let json_body = |schema: Value| json!({ "application/json": { "schema": schema } });
    let object = json!({ "type": "object" });
    let admin = |id: &str, summary: &str, successes: &[&str], parameters: &[Value], request: Option<Value>| {
        let mut operation = operation(id, summary, successes, json_body(object.clone()), parameters, request);
        if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
            responses.retain(|status, _| !matches!(status.as_str(), "406" | "410" | "412"));
        }
        operation
    };
    let path_parameter = |name: &str| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } });
    let tenant_query = json!({ "name": "tenant", "in": "query", "required": true, "schema": { "type": "string" } });
    let registration = json!({
        "type": "object",
        "required": ["client_id", "tenant", "kind"],
        "properties": {
            "client_id": { "type": "string" }, "tenant": { "type": "string" },
            "kind": { "type": "string", "enum": ["system", "public", "confidential-asymmetric", "administrator"] },
            "organization": { "type": "string" }, "scopes": { "type": "string" },
            "redirect_uris": { "type": "array", "items": { "type": "string" } },
            "roles": { "type": "array", "items": { "type": "string", "enum": ["practitioner", "municipal-admin", "municipal-auditor", "server-admin"] } },
            "maintains_directory": { "type": "boolean" },
            "jwks": { "type": "object" }, "jwks_url": { "type": "string" }
        }
    });
    let municipality = json!({
        "type": "object",
        "required": ["slug", "code", "name"],
        "properties": { "slug": { "type": "string" }, "code": { "type": "string", "pattern": "^[0-9]{6}$" }, "name": { "type": "string" } }
    });
    vec![
        (
            "/admin/tenants".into(),
            json!({
                "servers": servers,
                "get": admin("admin-list-tenants", "The municipalities served (server administrator)", &["200"], &[], None),
                "post": admin("admin-add-tenant", "Add a municipality (server administrator)", &["201"], &[], Some(json_body(municipality)))
            }),
        ),
        (
            "/admin/clients".into(),
            json!({
                "servers": servers,
                "get": admin("admin-list-clients", "The clients registered at a municipality (`_server`: the server's)", &["200"], &[tenant_query], None),
                "post": admin("admin-register-client", "Register an OAuth client", &["201"], &[], Some(json_body(registration)))
            }),
        ),
        (
            "/admin/clients/{tenant}/{client_id}".into(),
            json!({
                "servers": servers,
                "delete": admin("admin-remove-client", "Remove a run-time registration", &["204"], &[path_parameter("tenant"), path_parameter("client_id")], None)
            }),
        ),
        (
            "/admin/clients/{tenant}/{client_id}/approve".into(),
            json!({
                "servers": servers,
                "post": admin("admin-approve-client", "Approve a system client (the second administrator)", &["200"], &[path_parameter("tenant"), path_parameter("client_id")], None)
            }),
        ),
        (
            "/admin/signing-keys/rotate".into(),
            json!({
                "servers": servers,
                "post": admin("admin-rotate-signing-key", "Rotate the id_token signing key (server administrator)", &["200"], &[], None)
            }),
        ),
    ]
}
