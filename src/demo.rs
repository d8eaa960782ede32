//! Demo data for `renraku serve --demo`: a person of 南箕輪村 and the people around them,
//! written through the ordinary service path (validated, versioned). Seeding is idempotent:
//! fixed ids and update-as-create, skipped when the resource already exists.

use serde_json::{json, Value};

use crate::error::Result;
use crate::policy::Principal;
use crate::service::{Context, Fhir};

/// The demo resources, by tenant.
fn resources() -> Vec<(&'static str, Value)> {
    vec![
        (
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
                "address": [{ "text": "長野県上伊那郡南箕輪村", "state": "長野県", "city": "南箕輪村", "country": "JP" }]
            }),
        ),
        (
            "ina",
            json!({
                "resourceType": "Organization",
                "id": "demo-ina-central-hospital",
                "identifier": [{ "system": "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no", "value": "2010123456" }],
                "active": true,
                "name": "伊那中央病院（デモ）"
            }),
        ),
        (
            "minowa",
            json!({
                "resourceType": "Organization",
                "id": "demo-minowa-visiting-nurse",
                "active": true,
                "name": "箕輪町訪問看護ステーション（デモ）"
            }),
        ),
    ]
}

/// Writes the demo resources that are not there yet.
pub async fn seed(fhir: &Fhir) -> Result<()> {
    for (tenant, resource) in resources() {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        let context = Context {
            tenant: tenant.to_owned(),
            principal: Principal::Operator,
            base_url: fhir.config.base_url(tenant),
            request_id: "demo-seed".to_owned(),
            lenient: false,
        };
        if fhir.read(&context, &resource_type, &id).await.is_ok() {
            continue;
        }
        fhir.update(&context, &resource_type, &id, resource, None).await?;
    }
    Ok(())
}
