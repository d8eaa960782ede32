//! FHIR interactions with no HTTP in them: read, vread, create, update, patch, delete (plain
//! and conditional), history, search, batch and transaction.
//!
//! Architecture invariants:
//! - Every interaction asks [`crate::policy::decide`] first and passes the grant down to the
//!   store; nothing here queries resource rows without one.
//! - Every write validates its resource before it is stored, and commits the resource row,
//!   the version row and the index rows in one database transaction.
//! - Versions are never overwritten: an update or delete adds a version.

use serde_json::{json, Value};

use crate::config::TenantConfig;
use crate::error::{Error, Result};
use crate::outcome::{Issue, IssueCode};
use crate::fhir::references::{self, Target};
use crate::fhir::validate::Validated;
use crate::policy::{self, Grant};
use crate::identity::{Context, Interaction};
use crate::store::{self, CurrentRow, NewVersion};
use crate::runtime::Runtime;
use crate::audit::Entity;
use audit::Audit;
use writes::{Change, Outcome, WriteEntry};

pub use crate::fhir::MUNICIPALITY_TAG_SYSTEM;

pub mod audit;
pub mod binary;
pub mod board;
pub mod bundle;
pub mod capability;
pub mod generate;
pub mod openapi;
pub mod history;
pub mod reindex;
pub mod search;
pub mod subscriptions;
pub mod writes;

/// A resource version as returned to clients, with what the HTTP layer needs for headers.
#[derive(Debug, Clone)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: String,
    pub resource: Value,
}

impl Outcome {
    /// What a create, update or patch wrote.
    fn written(self) -> Result<Written> {
        match self {
            Outcome::Written { stored, created, unchanged } => Ok(Written { stored, created, unchanged }),
            Outcome::Deleted { .. } => Err(Error::internal("a create, update or patch deleted")),
        }
    }
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct Written {
    pub stored: Stored,
    /// True when a new resource came into being (201), false for an update or a
    /// conditional create that found its match (200).
    pub created: bool,
    /// True when an update or patch changed nothing: the current version stands (200, no
    /// new version).
    pub unchanged: bool,
}

/// The FHIR interactions (this module and its children: read, write, search, history,
/// bundles, the CapabilityStatement, reindexing, the audit of each interaction) over the
/// gateway's [`Runtime`]. Dereferences to the runtime, whose parts every interaction uses.
pub struct Fhir {
    runtime: Runtime,
}

impl std::ops::Deref for Fhir {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

impl Fhir {
    pub fn new(runtime: Runtime) -> Fhir {
        Fhir { runtime }
    }

    pub(crate) fn check_type(&self, resource_type: &str) -> Result<()> {
        if self.validator.is_resource_type(resource_type) {
            Ok(())
        } else {
            Err(Error::NotFound(format!("the resource type '{resource_type}'")))
        }
    }

    pub(crate) fn now(&self) -> String {
        crate::fhir::dates::format_instant(self.clock.now())
    }

    /// Asks the decision point, reading its facts through `connection` (inside a
    /// transaction, the facts include the transaction's own earlier writes).
    pub(crate) async fn decide(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        interaction: Interaction,
        resource_type: Option<&str>,
    ) -> Result<Grant> {
        let tenants = self.tenants();
        let environment = self.environment(&tenants, &context.base_url);
        policy::decide(connection, &environment, &context.principal, &context.tenant, interaction, resource_type).await
    }

    /// [`Fhir::decide`] for an interaction a write performs on the way (matching is a search,
    /// a patch a read): a refusal by the token's scopes says `why` the permission is needed.
    pub(crate) async fn decide_for(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        interaction: Interaction,
        resource_type: &str,
        why: &str,
    ) -> Result<Grant> {
        self.decide(connection, context, interaction, Some(resource_type)).await.map_err(|error| match error {
            Error::Forbidden(_) => Error::Forbidden(format!(
                "{why}: the access token's scopes must allow '{}' on {resource_type}",
                interaction.permission().letter()
            )),
            other => other,
        })
    }

    /// Whether the caller may read `patient`'s `$access-report` (the rule is the policy's).
    pub(crate) async fn decide_access_report(&self, connection: &mut crate::store::Db, context: &Context, patient: &str) -> Result<()> {
        let tenants = self.tenants();
        let environment = self.environment(&tenants, &context.base_url);
        policy::decide_access_report(connection, &environment, &context.principal, &context.tenant, patient).await
    }

    /// What a decision reads besides the request and the facts.
    pub(crate) fn environment<'a>(&'a self, tenants: &'a [TenantConfig], base_url: &'a str) -> policy::Environment<'a> {
        policy::Environment {
            registry: &self.search_params,
            tenants,
            now: self.clock.now(),
            base_url,
            limits: &self.config.limits,
            agreements: &self.agreements,
            standing: &self.standing,
            decisions: &self.decisions,
        }
    }

    /// [`Fhir::decide`] on a connection of its own.
    pub(crate) async fn decide_now(&self, context: &Context, interaction: Interaction, resource_type: Option<&str>) -> Result<Grant> {
        let mut connection = self.store.connection().await?;
        self.decide(&mut connection, context, interaction, resource_type).await
    }

    /// `GET [base]/[type]/[id]`
    pub async fn read(&self, context: &Context, resource_type: &str, id: &str) -> Result<Stored> {
        let mut audit = self.audit(context, Interaction::Read, "read");
        audit.requested(Entity::Resource(format!("{resource_type}/{id}")));
        let result = self.read_unaudited(context, resource_type, id).await;
        self.finish_read(context, audit, result, |stored| vec![&stored.resource]).await
    }

    async fn read_unaudited(&self, context: &Context, resource_type: &str, id: &str) -> Result<Stored> {
        self.check_type(resource_type)?;
        self.catch_up_audit(context).await?;
        let mut connection = self.store.connection().await?;
        let grant = self.decide(&mut connection, context, Interaction::Read, Some(resource_type)).await?;
        let row = store::current(&mut connection, &grant, resource_type, id).await?;
        stored_from_current(row, resource_type, id)
    }

    /// `GET [base]/[type]/[id]/_history/[vid]`
    pub async fn vread(&self, context: &Context, resource_type: &str, id: &str, version: &str) -> Result<Stored> {
        let mut audit = self.audit(context, Interaction::Vread, "vread");
        audit.requested(Entity::Resource(format!("{resource_type}/{id}/_history/{version}")));
        let result = self.vread_unaudited(context, resource_type, id, version).await;
        self.finish_read(context, audit, result, |stored| vec![&stored.resource]).await
    }

    async fn vread_unaudited(&self, context: &Context, resource_type: &str, id: &str, version: &str) -> Result<Stored> {
        self.check_type(resource_type)?;
        self.catch_up_audit(context).await?;
        let mut connection = self.store.connection().await?;
        let grant = self.decide(&mut connection, context, Interaction::Vread, Some(resource_type)).await?;
        let not_found = || Error::NotFound(format!("{resource_type}/{id}/_history/{version}"));
        let version_id: i64 = version.parse().map_err(|_| not_found())?;
        let row = store::version(&mut connection, &grant, resource_type, id, version_id).await?.ok_or_else(not_found)?;
        match row.content {
            None => Err(Error::Gone(format!("{resource_type}/{id}/_history/{version}"))),
            Some(content) => Ok(Stored {
                resource_type: row.resource_type,
                id: row.id,
                version_id: row.version_id,
                last_updated: row.last_updated,
                resource: serde_json::from_str(&content)?,
            }),
        }
    }

    /// `POST [base]/[type]`, with `If-None-Exist` when `condition` is given.
    pub async fn create(
        &self,
        context: &Context,
        resource_type: &str,
        body: Value,
        condition: Option<&str>,
    ) -> Result<Written> {
        let mut audit = self.audit(context, Interaction::Create, "create");
        audit.requested(Entity::Resource(resource_type.to_owned()));
        let result = self.create_unaudited(context, &mut audit, resource_type, body, condition).await;
        self.finish_write(audit, result).await
    }

    async fn create_unaudited(
        &self,
        context: &Context,
        audit: &mut Audit,
        resource_type: &str,
        body: Value,
        condition: Option<&str>,
    ) -> Result<Written> {
        let change = Change::Create { if_none_exist: condition.map(str::to_owned) };
        self.write_one(context, audit, WriteEntry::single(resource_type, change, Some(body), None)).await?.written()
    }

    /// A single write: a transaction of one entry, committed with the interaction's event.
    async fn write_one(&self, context: &Context, audit: &mut Audit, entry: WriteEntry) -> Result<Outcome> {
        let (transaction, mut outcomes) = self.write_entries(context, vec![entry]).await?;
        let outcome = outcomes.pop().ok_or_else(|| Error::internal("a single write had no outcome"))?;
        match &outcome {
            Outcome::Written { stored, created, .. } => {
                self.commit_audited(transaction, context, audit, &[&stored.resource], Vec::new()).await?;
                if *created {
                    self.announce_posted(context, [&stored.resource]);
                }
            }
            Outcome::Deleted { target, deleted, cascaded } => {
                for target in target.iter().chain(cascaded.iter().map(|(target, _)| target)) {
                    audit.entity(Entity::Resource(target.clone()));
                }
                let deleted: Vec<&Value> = deleted.iter().chain(cascaded.iter().filter_map(|(_, last)| last.as_ref())).collect();
                self.commit_audited(transaction, context, audit, &deleted, Vec::new()).await?;
            }
        }
        Ok(outcome)
    }

    /// `PUT [base]/[type]/[id]`: update, or create with the client's id.
    pub async fn update(
        &self,
        context: &Context,
        resource_type: &str,
        id: &str,
        body: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        let mut audit = self.audit(context, Interaction::Update, "update");
        audit.requested(Entity::Resource(format!("{resource_type}/{id}")));
        let result = self.update_unaudited(context, &mut audit, resource_type, id, body, if_match).await;
        self.finish_write(audit, result).await
    }

    async fn update_unaudited(
        &self,
        context: &Context,
        audit: &mut Audit,
        resource_type: &str,
        id: &str,
        body: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        let change = Change::Update { id: id.to_owned() };
        self.write_one(context, audit, WriteEntry::single(resource_type, change, Some(body), if_match)).await?.written()
    }

    /// `PUT [base]/[type]?criteria`
    pub async fn conditional_update(
        &self,
        context: &Context,
        resource_type: &str,
        condition: &str,
        body: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        let mut audit = self.audit(context, Interaction::Update, "update");
        audit.requested(Entity::Resource(resource_type.to_owned()));
        audit.requested(Entity::Query(condition.to_owned()));
        let result = self.conditional_update_unaudited(context, &mut audit, resource_type, condition, body, if_match).await;
        self.finish_write(audit, result).await
    }

    async fn conditional_update_unaudited(
        &self,
        context: &Context,
        audit: &mut Audit,
        resource_type: &str,
        condition: &str,
        body: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        audit.entity(Entity::Query(condition.to_owned()));
        let change = Change::ConditionalUpdate { condition: condition.to_owned() };
        self.write_one(context, audit, WriteEntry::single(resource_type, change, Some(body), if_match)).await?.written()
    }

    /// `PATCH [base]/[type]/[id]` with a JSON Patch document.
    pub async fn patch(
        &self,
        context: &Context,
        resource_type: &str,
        id: &str,
        patch: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        let mut audit = self.audit(context, Interaction::Patch, "patch");
        audit.requested(Entity::Resource(format!("{resource_type}/{id}")));
        let result = self.patch_unaudited(context, &mut audit, resource_type, id, patch, if_match).await;
        self.finish_write(audit, result).await
    }

    async fn patch_unaudited(
        &self,
        context: &Context,
        audit: &mut Audit,
        resource_type: &str,
        id: &str,
        patch: Value,
        if_match: Option<i64>,
    ) -> Result<Written> {
        let change = Change::Patch { id: id.to_owned(), patch };
        self.write_one(context, audit, WriteEntry::single(resource_type, change, None, if_match)).await?.written()
    }

    /// `DELETE [base]/[type]/[id]`. Deleting what does not exist (or is already deleted)
    /// succeeds without a new version, so a delete reveals nothing about existence. What live
    /// resources still refer to is not deleted (409) unless `cascade` (`_cascade=delete`).
    pub async fn delete(&self, context: &Context, resource_type: &str, id: &str, if_match: Option<i64>, cascade: bool) -> Result<()> {
        let mut audit = self.audit(context, Interaction::Delete, "delete");
        audit.requested(Entity::Resource(format!("{resource_type}/{id}")));
        let result = self.delete_unaudited(context, &mut audit, resource_type, id, if_match, cascade).await;
        self.finish_write(audit, result).await
    }

    async fn delete_unaudited(
        &self,
        context: &Context,
        audit: &mut Audit,
        resource_type: &str,
        id: &str,
        if_match: Option<i64>,
        cascade: bool,
    ) -> Result<()> {
        let change = Change::Delete { id: id.to_owned(), cascade };
        self.write_one(context, audit, WriteEntry::single(resource_type, change, None, if_match)).await.map(|_| ())
    }

    /// `DELETE [base]/[type]?criteria`: deletes the single match; more than one is a 412.
    pub async fn conditional_delete(&self, context: &Context, resource_type: &str, condition: &str) -> Result<()> {
        let mut audit = self.audit(context, Interaction::Delete, "delete");
        audit.entity(Entity::Query(condition.to_owned()));
        let result = self.conditional_delete_unaudited(context, &mut audit, resource_type, condition).await;
        self.finish_write(audit, result).await
    }

    async fn conditional_delete_unaudited(&self, context: &Context, audit: &mut Audit, resource_type: &str, condition: &str) -> Result<()> {
        let change = Change::ConditionalDelete { condition: condition.to_owned() };
        self.write_one(context, audit, WriteEntry::single(resource_type, change, None, None)).await.map(|_| ())
    }

    /// The match of a conditional write (`If-None-Exist`, conditional update or delete),
    /// decided in the write's transaction: matching is searching, so the caller needs the
    /// search permission on the type and matches only what it may see. When nothing
    /// visible matches but a resource of the municipality the caller cannot see does, the
    /// write is refused with 409 (no content, no id): creating would split a person's record
    /// silently, and showing the match would disclose it.
    pub(crate) async fn match_for_write(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        resource_type: &str,
        condition: &str,
    ) -> Result<Option<CurrentRow>> {
        let search = self.decide_for(connection, context, Interaction::Search, resource_type, "a conditional write matches by searching").await?;
        let found = self.match_one(connection, context, &search, resource_type, condition).await?;
        // A Subscription is its owner's alone: another owner's is not a duplicate, and
        // probing for one would disclose its endpoint.
        if found.is_some() || search.is_unrestricted() || resource_type == "Subscription" {
            return Ok(found);
        }
        let probe = policy::duplicate_probe_unchecked(&context.tenant);
        let hidden = match self.match_one(connection, context, &probe, resource_type, condition).await {
            Ok(found) => found.is_some(),
            Err(Error::PreconditionFailed(_)) => true,
            Err(other) => return Err(other),
        };
        if hidden {
            return Err(Error::Conflict(format!(
                "the condition matches a {resource_type} of this municipality that this caller may not see; nothing was written \
                 (to avoid a duplicate record). Ask the resource's registrar or the municipality to give you access"
            )));
        }
        Ok(None)
    }

    /// A patch is computed from the stored resource (and its `test` operations probe it),
    /// so the caller must be able to read what it patches: without the read permission the
    /// answer is 403, and a resource it cannot read is not there (404).
    pub(crate) async fn require_readable(&self, connection: &mut crate::store::Db, context: &Context, resource_type: &str, id: &str) -> Result<()> {
        let read = self.decide_for(connection, context, Interaction::Read, resource_type, "a patch reads what it changes").await?;
        match store::current(connection, &read, resource_type, id).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound(format!("{resource_type}/{id}"))),
        }
    }

    /// The single current resource matching a conditional interaction's criteria; more
    /// than one match is a 412.
    pub(crate) async fn match_one(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        grant: &Grant,
        resource_type: &str,
        condition: &str,
    ) -> Result<Option<CurrentRow>> {
        let pairs = parse_query_string(condition.trim_start_matches('?'));
        if pairs.is_empty() {
            return Err(Error::bad_request("a conditional interaction needs search criteria"));
        }
        let parsed = search::parse(&self.search_params, resource_type, &pairs, context.lenient, &context.base_url, &self.config.limits)?;
        if parsed.criteria.is_empty() {
            return Err(Error::bad_request("the condition has no search criteria this server supports"));
        }
        let mut matches = store::query::search(connection, grant, &parsed.query(resource_type, 2)).await?.rows;
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.pop()),
            _ => Err(Error::PreconditionFailed(format!(
                "the condition '{condition}' matches more than one {resource_type}"
            ))),
        }
    }

    /// Update or create-with-id inside an open transaction. Without `If-Match`, a
    /// concurrent writer's version is re-read and built upon (no lost version); with it, a
    /// mismatch is a 412.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_in(
        &self,
        connection: &mut crate::store::Db,
        grant: &policy::WriteGrant,
        resource_type: &str,
        id: &str,
        validated: Validated,
        if_match: Option<i64>,
        method: &str,
    ) -> Result<Written> {
        check_id_syntax(id, resource_type)?;
        loop {
            let current = store::current(connection, grant, resource_type, id).await?;
            match current {
                None => {
                    if if_match.is_some() {
                        return Err(Error::PreconditionFailed(format!("{resource_type}/{id} does not exist")));
                    }
                    // A person's data created with the client's id: for a caller bound by the
                    // access rule, only an unguessable id (a UUID), whether or not the id is
                    // taken — so a PUT cannot probe which ids a hidden person's record uses.
                    let persons_data = crate::policy::rules::kind_in(&self.search_params, resource_type) == crate::policy::rules::Kind::PatientData;
                    if persons_data && !grant.is_unrestricted() && uuid::Uuid::try_parse(id).is_err() {
                        return Err(Error::unprocessable(
                            Issue::error(
                                IssueCode::Value,
                                format!("a {resource_type} created with PUT by a caller bound by the access rule needs a UUID as its id; POST it to have one assigned"),
                            )
                            .at(format!("{resource_type}.id")),
                        ));
                    }
                    if store::id_taken(connection, resource_type, id).await? {
                        // Someone bound by the policy learns no more than from a read: the
                        // resource is not known to them.
                        if !grant.is_unrestricted() {
                            return Err(Error::NotFound(format!("{resource_type}/{id}")));
                        }
                        return Err(Error::Conflict(format!(
                            "the id '{id}' cannot be used for a new {resource_type}; choose another"
                        )));
                    }
                    let stored =
                        self.write_version(connection, grant, resource_type, id, validated, None, method).await?;
                    return Ok(Written { stored, created: true, unchanged: false });
                }
                Some(current) => {
                    if let Some(expected) = if_match {
                        if expected != current.version_id {
                            return Err(Error::PreconditionFailed(format!(
                                "{resource_type}/{id} is at version {}, not {expected}",
                                current.version_id
                            )));
                        }
                    }
                    let attempt = self
                        .write_version(connection, grant, resource_type, id, validated.clone(), Some(&current), method)
                        .await;
                    match attempt {
                        Ok(stored) => {
                            let unchanged = stored.version_id == current.version_id;
                            return Ok(Written { stored, created: current.deleted, unchanged });
                        }
                        Err(Error::PreconditionFailed(_)) if if_match.is_none() => continue,
                        Err(error) => return Err(error),
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn patch_in(
        &self,
        connection: &mut crate::store::Db,
        grant: &policy::WriteGrant,
        resource_type: &str,
        id: &str,
        patch: Value,
        if_match: Option<i64>,
        principal: &crate::identity::Principal,
    ) -> Result<Written> {
        let operations: json_patch::Patch = serde_json::from_value(patch)
            .map_err(|error| Error::bad_request(format!("the body is not a JSON Patch document: {error}")))?;
        let current = store::current(connection, grant, resource_type, id).await?;
        let current = match current {
            Some(current) if !current.deleted => current,
            Some(_) => return Err(Error::Gone(format!("{resource_type}/{id}"))),
            None => return Err(Error::NotFound(format!("{resource_type}/{id}"))),
        };
        if let Some(expected) = if_match {
            if expected != current.version_id {
                return Err(Error::PreconditionFailed(format!(
                    "{resource_type}/{id} is at version {}, not {expected}",
                    current.version_id
                )));
            }
        }
        let mut resource: Value = serde_json::from_str(current.content.as_deref().unwrap_or("{}"))?;
        json_patch::patch(&mut resource, &operations).map_err(|error| {
            Error::unprocessable(Issue::error(IssueCode::Processing, format!("the patch cannot be applied: {error}")))
        })?;
        check_body_type(&resource, resource_type)?;
        check_body_id(&resource, resource_type, id)?;
        // A patched board or chat message is signed as a written one is.
        writes::sign_board_message(principal, resource_type, &mut resource)?;
        self.check_system_sender(connection, principal, &resource).await?;
        let validated = self.validator.validate(resource).map_err(Error::Unprocessable)?;
        let stored = self.write_version(connection, grant, resource_type, id, validated, Some(&current), "PATCH").await?;
        let unchanged = stored.version_id == current.version_id;
        Ok(Written { stored, created: false, unchanged })
    }

    pub(crate) async fn delete_in(
        &self,
        connection: &mut crate::store::Db,
        grant: &policy::WriteGrant,
        resource_type: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Option<Value>> {
        loop {
            let Some(current) = store::current(connection, grant, resource_type, id).await? else { return Ok(None) };
            if let Some(expected) = if_match {
                if expected != current.version_id {
                    return Err(Error::PreconditionFailed(format!(
                        "{resource_type}/{id} is at version {}, not {expected}",
                        current.version_id
                    )));
                }
            }
            if current.deleted {
                return Ok(None);
            }
            let last_updated = self.now();
            let deleted: Option<Value> = current.content.as_deref().and_then(|content| serde_json::from_str(content).ok());
            let kept = deleted.as_ref().map(|d| policy::facts::links_kept_on_delete(resource_type, id, d)).unwrap_or_default();
            let new = NewVersion {
                resource_type,
                id,
                tenant: &current.tenant,
                version_id: current.version_id + 1,
                last_updated: &last_updated,
                method: "DELETE",
                content: None,
                index: &kept,
            };
            if store::replace(connection, grant, &new, current.version_id).await? {
                // What was deleted, for the audit trail (its persons and owner).
                return Ok(deleted);
            }
            if if_match.is_some() {
                return Err(Error::PreconditionFailed(format!("{resource_type}/{id} was changed concurrently")));
            }
        }
    }

    /// Stamps id and meta, stores the version and its index rows. `current` is the row this
    /// version replaces (None for a new resource); a lost compare-and-set is a 412.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_version(
        &self,
        connection: &mut crate::store::Db,
        grant: &policy::WriteGrant,
        resource_type: &str,
        id: &str,
        validated: Validated,
        current: Option<&CurrentRow>,
        method: &str,
    ) -> Result<Stored> {
        let version_id = current.map_or(1, |current| current.version_id + 1);
        let last_updated = self.now();
        let mut resource = validated.into_inner();
        if resource_type == "Binary" {
            self.prepare_binary(connection, grant, &mut resource, current).await?;
        }
        let mut index = self.index_of(resource_type, id, &resource);
        let patients = self.compartment_patients(resource_type, id, &index);
        let tenant = match current {
            Some(current) => current.tenant.clone(),
            None => self.owner_for_new(connection, grant, resource_type, &patients).await?,
        };
        let managing_organization = (resource_type == "Patient")
            .then(|| resource.pointer("/managingOrganization/reference").and_then(Value::as_str))
            .flatten()
            .and_then(policy::facts::local_reference);
        if resource_type == "CareTeam" {
            self.check_team_participants(connection, grant, &tenant, &resource).await?;
        }
        if resource_type == "PractitionerRole" {
            check_role_organization(connection, &tenant, &resource).await?;
            check_role_keeps_to_its_organization(connection, grant, id, &resource).await?;
        }
        self.check_registration_change(connection, grant, resource_type, current, managing_organization.as_deref(), &patients).await?;
        self.check_sign_in_mapping(grant, resource_type, current, &resource)?;
        stamp(&mut resource, id, version_id, &last_updated);
        self.tag_owner(&mut resource, &tenant);
        // The owner's tag is in place now: its index row, and `_lastUpdated` is a column.
        self.index_owner_tag(&mut index, &resource);
        // An update that changes nothing keeps the current version (as HAPI FHIR and Firely
        // do): no new version, no notification; the caller learns it from `Written::unchanged`.
        if let Some(current) = current.filter(|current| !current.deleted && resource_type != "Binary") {
            if let Some(previous) = unchanged_from(current, &resource) {
                self.check_granular_write(connection, grant, resource_type, id).await?;
                return Ok(Stored {
                    resource_type: resource_type.to_owned(),
                    id: id.to_owned(),
                    version_id: current.version_id,
                    last_updated: current.last_updated.clone(),
                    resource: previous,
                });
            }
        }
        let content = serde_json::to_string(&resource)?;
        let new = NewVersion {
            resource_type,
            id,
            tenant: &tenant,
            version_id,
            last_updated: &last_updated,
            method,
            content: Some(&content),
            index: &index,
        };
        match current {
            None => store::insert(connection, grant, &new).await?,
            Some(current) => {
                if !store::replace(connection, grant, &new, current.version_id).await? {
                    return Err(Error::PreconditionFailed(format!("{resource_type}/{id} was changed concurrently")));
                }
            }
        }
        self.check_granular_write(connection, grant, resource_type, id).await?;
        Ok(Stored { resource_type: resource_type.to_owned(), id: id.to_owned(), version_id, last_updated, resource })
    }

    /// Under a granular scope, what was written must match its search, or nothing is kept.
    async fn check_granular_write(&self, connection: &mut crate::store::Db, grant: &policy::WriteGrant, resource_type: &str, id: &str) -> Result<()> {
        if grant.filters(resource_type) {
            let query = crate::search::SearchQuery {
                resource_types: vec![resource_type.to_owned()],
                criteria: vec![crate::search::Criterion::Id(vec![id.to_owned()])],
                sort: Vec::new(),
                cursor: None,
                limit: 1,
            };
            if store::query::count(connection, grant, &query).await? == 0 {
                return Err(Error::Forbidden(format!("the access token's scopes do not allow this {resource_type} to be written")));
            }
        }
        Ok(())
    }

    /// A resource's index rows: its search parameters' values and the access links it
    /// establishes (CareTeam, Consent). Every writer of index rows (writes, reindex, data
    /// generation) extracts them here.
    pub(crate) fn index_of(&self, resource_type: &str, id: &str, resource: &Value) -> Vec<crate::search::IndexEntry> {
        let mut index = self.search_params.extract(resource);
        index.extend(policy::facts::access_links(resource_type, id, resource));
        if resource_type == "Communication" {
            index.extend(crate::fhir::board::listed_of(resource).map(|item| crate::search::IndexEntry::BoardItem {
                patient: item.patient,
                kind: item.kind,
                sent: item.sent,
                sender: item.sender,
                parent: item.parent,
                live: item.live,
            }));
        }
        if resource_type == "Binary" {
            // The persons recorded from its securityContext (`fhir::binary`) make it their data.
            index.extend(crate::fhir::binary::persons(resource).into_iter().map(|patient| crate::search::IndexEntry::Reference {
                param: "security-context".into(),
                target_type: "Patient".into(),
                target_id: patient,
                url: String::new(),
                identifier_system: String::new(),
                identifier_value: String::new(),
            }));
        }
        index
    }

    /// Replaces the `_tag` rows of `index` with those of `resource`'s tags (after the owner's
    /// tag was stamped), instead of extracting every parameter a second time.
    fn index_owner_tag(&self, index: &mut Vec<crate::search::IndexEntry>, resource: &Value) {
        index.retain(|entry| !matches!(entry, crate::search::IndexEntry::Token { param, .. } if param == "_tag"));
        let tags = self.search_params.extract_params(resource, &["_tag".to_owned()]);
        index.extend(tags);
    }

    /// The persons whose compartments a resource is in: a Patient's own id, else the Patients
    /// its compartment parameters refer to.
    fn compartment_patients(&self, resource_type: &str, id: &str, index: &[crate::search::IndexEntry]) -> Vec<String> {
        if resource_type == "Patient" {
            return vec![id.to_owned()];
        }
        let params = self.search_params.person_params(resource_type);
        let mut patients: Vec<String> = index
            .iter()
            .filter_map(|entry| match entry {
                crate::search::IndexEntry::Reference { param, target_type, target_id, .. }
                    if target_type == "Patient" && params.contains(param) =>
                {
                    Some(target_id.clone())
                }
                _ => None,
            })
            .collect();
        patients.sort();
        patients.dedup();
        patients
    }

    /// The municipality that owns a new resource: a person's data belongs to the person's
    /// municipality (one board per person, whichever municipality the writer works in);
    /// anything else to the municipality whose base received it.
    async fn owner_for_new(
        &self,
        connection: &mut crate::store::Db,
        grant: &Grant,
        resource_type: &str,
        patients: &[String],
    ) -> Result<String> {
        if resource_type != "Patient" {
            if let Some(patient) = patients.first() {
                if let Some(tenant) = store::facts::tenant_of(connection, "Patient", patient).await? {
                    return Ok(tenant);
                }
            }
        }
        Ok(grant.home_tenant().to_owned())
    }

    /// Records the owning municipality in `meta.tag` (system [`MUNICIPALITY_TAG_SYSTEM`],
    /// code = 全国地方公共団体コード), replacing whatever a client put under that system.
    fn tag_owner(&self, resource: &mut Value, tenant: &str) {
        let Some(config) = self.tenant(tenant) else { return };
        let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else { return };
        let mut tags: Vec<Value> = meta
            .get("tag")
            .and_then(Value::as_array)
            .map(|tags| tags.iter().filter(|t| t.get("system").and_then(Value::as_str) != Some(MUNICIPALITY_TAG_SYSTEM)).cloned().collect())
            .unwrap_or_default();
        tags.push(json!({ "system": MUNICIPALITY_TAG_SYSTEM, "code": config.code, "display": config.name }));
        meta.insert("tag".into(), Value::Array(tags));
    }

    /// Consents and registrations are the registrar's: recording a person's Consent, or
    /// changing a Patient's `managingOrganization`, needs the grant of the organization that
    /// registered the person (see [`Grant::may_manage_registration`]).
    async fn check_registration_change(
        &self,
        connection: &mut crate::store::Db,
        grant: &Grant,
        resource_type: &str,
        current: Option<&CurrentRow>,
        new_registrar: Option<&str>,
        patients: &[String],
    ) -> Result<()> {
        let refused = |what: &str| Err(Error::Forbidden(format!("only the organization that registered the person may {what}")));
        match resource_type {
            "Consent" => {
                for patient in patients {
                    let registrar = match store::facts::live_resource(connection, "Patient", patient).await? {
                        Some((_, content)) => registrar_of(&content),
                        None => None,
                    };
                    if !grant.may_manage_registration(registrar.as_deref()) {
                        return refused("record their consent");
                    }
                }
                Ok(())
            }
            "Patient" => {
                let Some(content) = current.and_then(|row| row.content.as_deref()) else { return Ok(()) };
                let old_registrar = registrar_of(content);
                if old_registrar.as_deref() != new_registrar && !grant.may_manage_registration(old_registrar.as_deref()) {
                    return refused("change their registration (managingOrganization)");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A Practitioner's sign-in identifiers (its identifiers in any municipality's
    /// `login.subject_system`) are added or changed only by a grant that may map sign-ins
    /// ([`Grant::may_map_sign_ins`]); removing one, and every other change of the entry, is
    /// the writer's as before.
    fn check_sign_in_mapping(&self, grant: &Grant, resource_type: &str, current: Option<&CurrentRow>, resource: &Value) -> Result<()> {
        if resource_type != "Practitioner" || grant.may_map_sign_ins() {
            return Ok(());
        }
        let systems: Vec<String> = self.tenants().iter().filter_map(|t| t.login.as_ref().map(|l| l.subject_system.clone())).collect();
        let sign_ins = |practitioner: &Value| -> Vec<(String, String)> {
            let mut found: Vec<(String, String)> = practitioner
                .get("identifier")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|identifier| {
                    let system = identifier.get("system").and_then(Value::as_str)?;
                    let value = identifier.get("value").and_then(Value::as_str)?;
                    systems.iter().any(|s| s == system).then(|| (system.to_owned(), value.to_owned()))
                })
                .collect();
            found.sort();
            found
        };
        let before = current
            .and_then(|row| row.content.as_deref())
            .and_then(|content| serde_json::from_str::<Value>(content).ok())
            .map(|old| sign_ins(&old))
            .unwrap_or_default();
        // Removing a sign-in only takes access away; adding or changing one is the mapping.
        if sign_ins(resource).iter().all(|sign_in| before.contains(sign_in)) {
            return Ok(());
        }
        let error = Error::Forbidden(
            "which Practitioner a sign-in becomes (an identifier in a municipality's login subject system) is set by the server administrator".into(),
        );
        grant.record_refusal("map a sign-in", resource_type, &error);
        Err(error)
    }

    /// A support team may include a participant of another municipality only while a
    /// wide-area agreement joins the two.
    async fn check_team_participants(
        &self,
        connection: &mut crate::store::Db,
        grant: &Grant,
        owner: &str,
        team: &Value,
    ) -> Result<()> {
        let mut issues = Vec::new();
        let participants = team.get("participant").and_then(Value::as_array).cloned().unwrap_or_default();
        let visible = grant.for_reading();
        for (index, participant) in participants.iter().enumerate() {
            let Some(reference) = participant.pointer("/member/reference").and_then(Value::as_str) else { continue };
            let Some(local) = policy::facts::local_reference(reference) else { continue };
            let Some((member_type, member_id)) = local.split_once('/') else { continue };
            // Only a member the caller may see is judged here; any other is, to the caller,
            // a reference to nothing (and the reference check answers exactly that).
            let seen = store::current(connection, &visible, member_type, member_id).await?.filter(|row| !row.deleted);
            if let Some(member_tenant) = seen.map(|row| row.tenant) {
                if !grant.agreement_joins(owner, &member_tenant) {
                    issues.push(
                        Issue::error(
                            IssueCode::BusinessRule,
                            "this participant belongs to another municipality, and no wide-area agreement in force joins the two",
                        )
                        .at(format!("CareTeam.participant[{index}].member")),
                    );
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Error::Unprocessable(issues))
        }
    }

    /// Every local reference in the written resources must point at a resource that exists
    /// (and that the caller may see). Runs inside the write's transaction, after all of a
    /// transaction Bundle's entries are written, so entries may refer to each other.
    pub(crate) async fn check_references(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        grant: &Grant,
        written: &[Stored],
        path_prefix: &str,
    ) -> Result<()> {
        let grant = &grant.for_reading();
        let mut issues = Vec::new();
        for stored in written {
            let contained_ids: Vec<&str> = stored
                .resource
                .get("contained")
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(|c| c.get("id").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            let root = format!("{path_prefix}{}", stored.resource_type);
            for found in references::collect(&stored.resource, &root) {
                match references::classify(&found.reference, &context.base_url, |t| self.validator.is_resource_type(t)) {
                    Target::External => {}
                    Target::Contained(contained) => {
                        if !contained.is_empty() && !contained_ids.contains(&contained.as_str()) {
                            issues.push(
                                Issue::error(
                                    IssueCode::NotFound,
                                    format!("the reference '{}' names no contained resource", found.reference),
                                )
                                .at(found.path),
                            );
                        }
                    }
                    Target::Local { resource_type, id, version_id } => {
                        let exists = match version_id {
                            None => store::current(connection, grant, &resource_type, &id)
                                .await?
                                .is_some_and(|row| !row.deleted),
                            Some(version) => match version.parse::<i64>() {
                                Ok(version) => store::version(connection, grant, &resource_type, &id, version)
                                    .await?
                                    .is_some_and(|row| row.content.is_some()),
                                Err(_) => false,
                            },
                        };
                        if !exists {
                            issues.push(
                                Issue::error(
                                    IssueCode::NotFound,
                                    format!("the reference '{}' points at no existing resource", found.reference),
                                )
                                .at(found.path),
                            );
                        }
                    }
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Error::Unprocessable(issues))
        }
    }
}

/// A Patient's registrar: its `managingOrganization` as `Organization/{id}`.
fn registrar_of(content: &str) -> Option<String> {
    let patient: Value = serde_json::from_str(content).ok()?;
    patient.pointer("/managingOrganization/reference").and_then(Value::as_str).and_then(policy::facts::local_reference)
}

/// A PractitionerRole places a professional in an Organization of the role's own
/// municipality: a role in another municipality's Organization would let that
/// municipality's administrator borrow the Organization's access to persons. Missing and
/// foreign Organizations get the same answer, so the check reveals nothing.
async fn check_role_organization(connection: &mut crate::store::Db, owner: &str, role: &Value) -> Result<()> {
    let Some(reference) = role.pointer("/organization/reference").and_then(Value::as_str) else { return Ok(()) };
    let organization = policy::facts::local_reference(reference).and_then(|r| r.strip_prefix("Organization/").map(str::to_owned));
    let owned = match &organization {
        Some(id) => store::facts::tenant_of(connection, "Organization", id).await?.as_deref() == Some(owner),
        None => false,
    };
    if owned {
        Ok(())
    } else {
        Err(Error::unprocessable(
            Issue::error(IssueCode::BusinessRule, "a PractitionerRole's organization must be an Organization of this municipality's directory")
                .at("PractitionerRole.organization"),
        ))
    }
}

/// A system client keeping its own Organization's directory may give a role only to a
/// Practitioner whom no other Organization's role names: else it could make another
/// organization's professional act for its own, or claim their entry.
async fn check_role_keeps_to_its_organization(connection: &mut crate::store::Db, grant: &Grant, id: &str, role: &Value) -> Result<()> {
    let Some(own) = grant.keeps_own_directory() else { return Ok(()) };
    let Some(practitioner) = role
        .pointer("/practitioner/reference")
        .and_then(Value::as_str)
        .and_then(policy::facts::local_reference)
        .and_then(|r| r.strip_prefix("Practitioner/").map(str::to_owned))
    else {
        return Ok(());
    };
    let targets = [("Practitioner".to_owned(), practitioner)];
    let roles = store::facts::referring(connection, "PractitionerRole", "practitioner", &targets).await?;
    let elsewhere = roles.iter().filter(|(other, _, _)| other != id).any(|(_, _, content)| {
        let organization = serde_json::from_str::<Value>(content)
            .ok()
            .and_then(|other| other.pointer("/organization/reference").and_then(Value::as_str).and_then(policy::facts::local_reference));
        organization.as_deref() != Some(own)
    });
    if elsewhere {
        let error = Error::Forbidden("this Practitioner has a role at another Organization; only that Organization's administrator or the municipality's may add one".into());
        grant.record_refusal("give another organization's Practitioner a role", "PractitionerRole", &error);
        return Err(error);
    }
    Ok(())
}

/// Serialises conditional interactions on one municipality's resources of one type, so
/// that two conditional creates cannot both find nothing and both create.
pub(crate) async fn lock_conditional(connection: &mut crate::store::Db, tenant: &str, resource_type: &str) -> Result<()> {
    store::lock(connection, &format!("conditional:{tenant}:{resource_type}")).await
}

/// Sets the server-owned parts: `id`, `meta.versionId`, `meta.lastUpdated`.
fn stamp(resource: &mut Value, id: &str, version_id: i64, last_updated: &str) {
    let Some(object) = resource.as_object_mut() else { return };
    // Keep `resourceType` first and `id` second, as FHIR JSON conventionally shows them.
    let mut resource_type = None;
    let mut rest = Vec::new();
    for (key, value) in std::mem::take(object) {
        match key.as_str() {
            "resourceType" => resource_type = Some(value),
            "id" => {}
            _ => rest.push((key, value)),
        }
    }
    if let Some(resource_type) = resource_type {
        object.insert("resourceType".into(), resource_type);
    }
    object.insert("id".into(), json!(id));
    object.extend(rest);
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), json!(version_id.to_string()));
        meta.insert("lastUpdated".into(), json!(last_updated));
    }
}

/// The current version's resource when `candidate` (stamped and tagged for writing) differs
/// from it only in `meta.versionId` and `meta.lastUpdated`; None when anything else differs.
fn unchanged_from(current: &CurrentRow, candidate: &Value) -> Option<Value> {
    let previous: Value = serde_json::from_str(current.content.as_deref()?).ok()?;
    let mut candidate = candidate.clone();
    if let Some(meta) = candidate.get_mut("meta").and_then(Value::as_object_mut) {
        meta.insert("versionId".into(), previous.pointer("/meta/versionId").cloned().unwrap_or(Value::Null));
        meta.insert("lastUpdated".into(), previous.pointer("/meta/lastUpdated").cloned().unwrap_or(Value::Null));
    }
    (candidate == previous).then_some(previous)
}

pub(crate) fn stored_from_current(row: Option<CurrentRow>, resource_type: &str, id: &str) -> Result<Stored> {
    let row = row.ok_or_else(|| Error::NotFound(format!("{resource_type}/{id}")))?;
    match row.content {
        None => Err(Error::Gone(format!("{}/{}", row.resource_type, row.id))),
        Some(content) => Ok(Stored {
            resource: serde_json::from_str(&content)?,
            resource_type: row.resource_type,
            id: row.id,
            version_id: row.version_id,
            last_updated: row.last_updated,
        }),
    }
}

/// The audit trail is written only by the server: no API may create, change or delete an
/// AuditEvent.
pub(crate) fn writable(resource_type: &str) -> Result<()> {
    if resource_type == "AuditEvent" {
        return Err(Error::ReadOnly("AuditEvents are written only by the server and can never be changed or deleted".into()));
    }
    Ok(())
}

pub(crate) fn check_body_type(body: &Value, resource_type: &str) -> Result<()> {
    match body.get("resourceType").and_then(Value::as_str) {
        Some(found) if found == resource_type => Ok(()),
        Some(found) => Err(Error::bad_request_at(
            format!("the body is a {found}, but the URL is for {resource_type}"),
            format!("{found}.resourceType"),
        )),
        None => Err(Error::bad_request_at("the body has no resourceType", "resourceType")),
    }
}

pub(crate) fn check_body_id(body: &Value, resource_type: &str, id: &str) -> Result<()> {
    match body.get("id") {
        Some(Value::String(found)) if found == id => Ok(()),
        Some(Value::String(found)) => Err(Error::bad_request_at(
            format!("the body's id '{found}' does not match the id '{id}' in the URL"),
            format!("{resource_type}.id"),
        )),
        _ => Err(Error::bad_request_at("an update must carry the resource's id in the body", format!("{resource_type}.id"))),
    }
}

fn check_id_syntax(id: &str, resource_type: &str) -> Result<()> {
    let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(Error::bad_request_at(format!("'{id}' is not a valid FHIR id"), format!("{resource_type}.id")))
    }
}

pub use crate::search::parse::parse_query_string;
