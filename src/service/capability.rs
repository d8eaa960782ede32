//! The CapabilityStatement: what this server actually does, generated from the same
//! tables that drive it (resource types from the validator, profiles from `profiles/`).

use serde_json::{json, Value};

use crate::service::Fhir;
use crate::identity::Context;

/// Search parameters every resource type supports today.
const COMMON_SEARCH_PARAMETERS: &[(&str, &str, &str)] = &[
    ("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id"),
    ("_lastUpdated", "date", "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
];

impl Fhir {
    /// `GET [base]/metadata`
    pub fn capability_statement(&self, context: &Context) -> Value {
        let tenant = self.tenant(&context.tenant);
        let mut resources = Vec::new();
        for resource_type in self.validator.resource_types() {
            let mut search_params: Vec<Value> = COMMON_SEARCH_PARAMETERS
                .iter()
                .map(|(name, kind, definition)| json!({ "name": name, "type": kind, "definition": definition }))
                .collect();
            for param in self.search_params.for_type(resource_type) {
                search_params.push(json!({ "name": param.code, "type": param.kind.as_str(), "definition": param.url }));
            }
            let supported_profiles: Vec<&str> = self
                .validator
                .profiles()
                .supported()
                .filter(|(profile_type, _)| *profile_type == resource_type)
                .map(|(_, url)| url)
                .collect();
            let mut resource = json!({
                "type": resource_type,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{resource_type}"),
                "interaction": [
                    { "code": "read" }, { "code": "vread" }, { "code": "update" }, { "code": "patch" },
                    { "code": "delete" }, { "code": "history-instance" }, { "code": "history-type" },
                    { "code": "create" }, { "code": "search-type" }
                ],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "local", "enforced"],
                "searchParam": search_params,
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
            });
            if !supported_profiles.is_empty() {
                crate::fhir::set(&mut resource, "supportedProfile", json!(supported_profiles));
            }
            if resource_type == "AuditEvent" {
                // The audit trail is written by the server alone and never changes.
                let read_only = json!([
                    { "code": "read" }, { "code": "vread" }, { "code": "history-instance" },
                    { "code": "history-type" }, { "code": "search-type" }
                ]);
                crate::fhir::set(&mut resource, "interaction", read_only);
                crate::fhir::set(&mut resource, "documentation", json!("Read-only: one event per interaction, hash-chained per municipality; readable by the municipality's auditors."));
                for key in ["updateCreate", "conditionalCreate", "conditionalUpdate", "conditionalDelete"] {
                    if let Some(object) = resource.as_object_mut() {
                        object.remove(key);
                    }
                }
            }
            if resource_type == "Patient" {
                let operations = json!([
                    { "name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything" },
                    { "name": "access-report", "definition": "https://renraku.example.jp/fhir/OperationDefinition/Patient-access-report" },
                    { "name": "mark-read", "definition": "https://renraku.example.jp/fhir/OperationDefinition/Patient-mark-read" },
                    { "name": "read-status", "definition": "https://renraku.example.jp/fhir/OperationDefinition/Patient-read-status" },
                    { "name": "unread", "definition": "https://renraku.example.jp/fhir/OperationDefinition/Patient-unread" }
                ]);
                crate::fhir::set(&mut resource, "operation", operations);
            }
            if resource_type == "Subscription" {
                self.describe_subscriptions(&mut resource, &context.base_url);
            }
            resources.push(resource);
        }
        let name = tenant.as_ref().map(|t| t.name.as_str()).unwrap_or_default();
        let endpoints = crate::config::Endpoints::of(&self.config, &context.tenant);
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": crate::fhir::dates::format_instant(self.clock.now()),
            "publisher": "Renraku",
            "kind": "instance",
            "software": { "name": "Renraku", "version": env!("CARGO_PKG_VERSION") },
            "implementation": {
                "description": format!("Renraku FHIR gateway for {name} ({})", context.tenant),
                "url": context.base_url,
            },
            "instantiates": ["http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4"],
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
            "patchFormat": ["application/json-patch+json"],
            "rest": [{
                "mode": "server",
                "security": {
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [
                            { "url": "token", "valueUri": endpoints.token },
                            { "url": "introspect", "valueUri": endpoints.introspect },
                            { "url": "revoke", "valueUri": endpoints.revoke }
                        ]
                    }],
                    "service": [{ "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"
                    }] }],
                    "description": "SMART on FHIR: every request needs a bearer token issued by this municipality's authorization server (see .well-known/smart-configuration)."
                },
                "resource": resources,
                "interaction": [
                    { "code": "transaction" }, { "code": "batch" }, { "code": "history-system" }
                ],
            }],
        })
    }

    /// The Subscription entry: the topics published (Backport IG's topic-canonical
    /// extension), the operations, and where websocket clients connect.
    fn describe_subscriptions(&self, resource: &mut Value, base_url: &str) {
        const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport";
        let topics: Vec<Value> = self
            .subscriptions
            .topics
            .urls()
            .into_iter()
            .map(|url| json!({ "url": format!("{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"), "valueCanonical": url }))
            .collect();
        crate::fhir::set(resource, "extension", json!(topics));
        crate::fhir::set(resource, "supportedProfile", json!([format!("{BACKPORT}/StructureDefinition/backport-subscription")]));
        crate::fhir::set(resource, "operation", json!([
            { "name": "status", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-status") },
            { "name": "events", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-events") },
            { "name": "get-ws-binding-token", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-get-ws-binding-token") }
        ]));
        let websocket = crate::service::subscriptions::websocket_url(base_url);
        crate::fhir::set(resource, "documentation", json!(format!(
            "Topic-based subscriptions (Subscriptions R5 Backport IG 1.1.0): criteria is one of the topics listed in this entry's extensions (definitions: conformance/subscription-topics.json); channels rest-hook and websocket ({websocket}); payloads empty, id-only (default) and full-resource. Each event is judged under the subscriber's access when it is delivered. A Subscription is visible only to its owner."
        )));
    }
}
