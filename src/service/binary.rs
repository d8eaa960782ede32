//! Binary resources as a care team uses them: photos, scans and videos attached to a
//! person's board, kept once outside the JSON, readable by exactly those who may read the
//! resource the Binary's `securityContext` names (see `crate::fhir::binary`).

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fhir::binary::{self, Refusal};
use crate::fhir::references::{self, Target};
use crate::outcome::{Issue, IssueCode};
use crate::policy::WriteGrant;
use crate::service::{Fhir, Stored};
use crate::store::{self, CurrentRow};

impl Fhir {
    /// Before a Binary version is stored: its `data` is checked (size, allowed type, bytes
    /// agreeing with `contentType`) and stored apart; the persons it belongs to are taken
    /// from its `securityContext`, which must name a resource the writer may read. A caller
    /// bound by the access rule cannot store a Binary that belongs to nobody.
    pub(crate) async fn prepare_binary(
        &self,
        connection: &mut store::Db,
        grant: &WriteGrant,
        resource: &mut Value,
        current: Option<&CurrentRow>,
    ) -> Result<()> {
        let persons = self.binary_persons(connection, grant, resource).await?;
        let bytes = binary::decode_data(resource).map_err(|_| {
            Error::unprocessable(Issue::error(IssueCode::Value, "Binary.data is not base64").at("Binary.data"))
        })?;
        let content = match bytes {
            Some(bytes) => {
                let declared = resource.get("contentType").and_then(Value::as_str).unwrap_or_default();
                binary::check(&self.config.binary, declared, &bytes).map_err(|refusal| match refusal {
                    Refusal::TooLarge { limit_bytes } => Error::PayloadTooLarge { limit_bytes },
                    Refusal::NotAllowed(_) => {
                        Error::unprocessable(Issue::error(IssueCode::NotSupported, refusal.message()).at("Binary.contentType"))
                    }
                    Refusal::Executable(_) | Refusal::Mismatch { .. } => {
                        Error::unprocessable(Issue::error(IssueCode::Value, refusal.message()).at("Binary.data"))
                    }
                })?;
                let sha256 = binary::digest(&bytes);
                store::binary::put(connection, &sha256, &bytes).await?;
                Some((bytes.len(), sha256))
            }
            None => None,
        };
        let kept = match (&content, current.and_then(|row| row.content.as_deref())) {
            (None, Some(stored)) => serde_json::from_str::<Value>(stored).ok().and_then(|stored| binary::unchanged_content(&stored, resource)),
            _ => None,
        };
        binary::restamp(resource, content.as_ref().map(|(size, sha256)| (*size, sha256.as_str())), kept, &persons);
        Ok(())
    }

    /// The persons a Binary belongs to: its `securityContext`'s Patient, or the persons of
    /// the resource it names (which the writer must be able to read).
    async fn binary_persons(&self, connection: &mut store::Db, grant: &WriteGrant, resource: &Value) -> Result<Vec<String>> {
        let base_url = self.config.base_url(grant.home_tenant());
        let at = |message: String| Error::unprocessable(Issue::error(IssueCode::Required, message).at("Binary.securityContext"));
        let reference = resource.pointer("/securityContext/reference").and_then(Value::as_str);
        let target = reference.map(|r| references::classify(r, &base_url, |t| self.validator.is_resource_type(t)));
        let persons = match target {
            Some(Target::Local { resource_type, id, .. }) if resource_type == "Patient" => vec![id],
            Some(Target::Local { resource_type, id, .. }) => {
                let row = store::current(connection, &grant.for_reading(), &resource_type, &id).await?.filter(|row| !row.deleted);
                let Some(content) = row.and_then(|row| row.content) else {
                    return Err(at(format!("the securityContext '{resource_type}/{id}' points at no existing resource")));
                };
                let named: Value = serde_json::from_str(&content)?;
                self.patients_of(&resource_type, &id, &named)
            }
            _ => Vec::new(),
        };
        if persons.is_empty() && !grant.is_unrestricted() {
            return Err(at(
                "a Binary needs a securityContext naming what it belongs to: the person (Patient/…) or a resource of the person's \
                 (the Communication, DocumentReference, … it is attached to)"
                    .into(),
            ));
        }
        Ok(persons)
    }

    /// The bytes of a Binary version the caller was given (by a read or vread under its
    /// grant): looked up by the digest the version names. None for a Binary without content.
    pub async fn binary_content(&self, stored: &Stored) -> Result<Option<Vec<u8>>> {
        if stored.resource_type != "Binary" {
            return Ok(None);
        }
        if let Some(inline) = binary::decode_data(&stored.resource).ok().flatten() {
            return Ok(Some(inline));
        }
        let Some(sha256) = binary::stored_digest(&stored.resource) else { return Ok(None) };
        let mut connection = self.store.connection().await?;
        store::binary::get(&mut connection, &sha256)
            .await?
            .map(Some)
            .ok_or_else(|| Error::internal(format!("the content {sha256} of Binary/{} is missing", stored.id)))
    }
}
