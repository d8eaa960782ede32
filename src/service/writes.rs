//! The write pipeline. Every create, update, patch and delete — a single interaction
//! (`POST [type]`, `PUT`, `PATCH`, `DELETE` and their conditional forms) or an entry of a
//! transaction Bundle — is a [`WriteEntry`] and runs through [`Fhir::write_entries`]: a
//! single write is a transaction of one entry, and each step has one implementation.
//!
//! 1. Before the transaction, what needs no facts ([`Fhir::check_entry`]): the type is
//!    writable and known, the token's scopes reach it (`policy::precheck`), the body is of
//!    the type (and, for an update, has the URL's id). Bodies are validated here as well,
//!    unless the entries name one another by `fullUrl`: those are validated in step 3,
//!    after their references were rewritten.
//! 2. In the transaction, in the order DELETE, POST, PUT/PATCH: a conditional create or
//!    update takes its type's conditional lock, is decided, and matched (`match_for_write`,
//!    a search); every created entry gets its id; a transaction's conditional references
//!    (`Patient?identifier=…`) are resolved by a search under the caller's own search
//!    decision (exactly one match, or the transaction fails naming the entry); then
//!    `urn:uuid:` and conditional references are rewritten.
//! 3. Each entry is decided once — inside the transaction, after the conditional lock, so
//!    the decision and the data come from the same snapshot — and written under its grant
//!    by the row functions (`write_version`, `update_in`, `patch_in`, `delete_in`).
//! 4. What was written has its references checked against the read side of its own grant.
//!
//! The caller commits, with the audit of the interaction (or of each entry).

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fhir::references;
use crate::fhir::validate::Validated;
use crate::identity::{Context, Interaction};
use crate::outcome::Issue;
use crate::policy::{self, WriteGrant};
use crate::service::{check_body_id, check_body_type, lock_conditional, stored_from_current, writable, Fhir, Stored, Written};
use crate::store::Transaction;

/// What one write does.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// `POST [type]`, with `If-None-Exist` when a condition is given.
    Create { if_none_exist: Option<String> },
    /// `PUT [type]/[id]`: update, or create with the client's id.
    Update { id: String },
    /// `PUT [type]?criteria`
    ConditionalUpdate { condition: String },
    /// `PATCH [type]/[id]` with a JSON Patch document.
    Patch { id: String, patch: Value },
    /// `DELETE [type]/[id]`; with `cascade` (`_cascade=delete`) also whatever refers to it.
    Delete { id: String, cascade: bool },
    /// `DELETE [type]?criteria`
    ConditionalDelete { condition: String },
}

impl Change {
    pub(crate) fn interaction(&self) -> Interaction {
        match self {
            Change::Create { .. } => Interaction::Create,
            Change::Update { .. } | Change::ConditionalUpdate { .. } => Interaction::Update,
            Change::Patch { .. } => Interaction::Patch,
            Change::Delete { .. } | Change::ConditionalDelete { .. } => Interaction::Delete,
        }
    }

    /// The order of a transaction's entries: deletes, creates, then updates and patches.
    fn rank(&self) -> u8 {
        match self {
            Change::Delete { .. } | Change::ConditionalDelete { .. } => 0,
            Change::Create { .. } => 1,
            Change::Update { .. } | Change::ConditionalUpdate { .. } | Change::Patch { .. } => 2,
        }
    }
}

/// The most resources one `_cascade=delete` deletes.
const CASCADE_LIMIT: i64 = 1000;

/// One write: a single interaction, or an entry of a transaction.
#[derive(Debug, Clone)]
pub(crate) struct WriteEntry {
    pub resource_type: String,
    pub change: Change,
    /// The resource of a create or update.
    pub body: Option<Value>,
    pub if_match: Option<i64>,
    /// The entry's `fullUrl` (a transaction's entries refer to one another by it).
    pub full_url: Option<String>,
    /// The entry's index in its transaction Bundle; errors name it. None for a single write.
    pub index: Option<usize>,
}

impl WriteEntry {
    pub(crate) fn single(resource_type: &str, change: Change, body: Option<Value>, if_match: Option<i64>) -> WriteEntry {
        WriteEntry { resource_type: resource_type.to_owned(), change, body, if_match, full_url: None, index: None }
    }

    /// Places an error of this entry: in a transaction, its issues' expressions become paths
    /// in the Bundle and its messages name the entry.
    pub(crate) fn locate(&self, error: Error) -> Error {
        match self.index {
            None => error,
            Some(index) => in_entry(error, index),
        }
    }
}

/// What one entry did.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A version was written (`created` for a new resource), or a conditional create found
    /// its match (`created` false; nothing was written), or an update changed nothing
    /// (`unchanged`: the current version stands).
    Written { stored: Stored, created: bool, unchanged: bool },
    /// A delete: of `target` (`Type/id`; None when a conditional delete matched nothing),
    /// with the version it deleted (None when there was nothing to delete), and what a
    /// cascade deleted with it (each `Type/id` with its last version).
    Deleted { target: Option<String>, deleted: Option<Value>, cascaded: Vec<(String, Option<Value>)> },
}

impl Fhir {
    /// Step 1: the checks of an entry that need no facts.
    pub(crate) fn check_entry(&self, context: &Context, entry: &WriteEntry) -> Result<()> {
        let resource_type = entry.resource_type.as_str();
        writable(resource_type)?;
        self.check_type(resource_type)?;
        policy::precheck(&context.principal, &context.tenant, entry.change.interaction(), Some(resource_type))?;
        if let Some(body) = &entry.body {
            check_body_type(body, resource_type)?;
            if let Change::Update { id } = &entry.change {
                check_body_id(body, resource_type, id)?;
            }
        }
        Ok(())
    }

    /// Runs `entries` in one new transaction (steps 1–4 above) and returns it uncommitted,
    /// with each entry's outcome in the entries' order.
    pub(crate) async fn write_entries(&self, context: &Context, mut entries: Vec<WriteEntry>) -> Result<(Transaction, Vec<Outcome>)> {
        for entry in &mut entries {
            if let Some(body) = entry.body.as_mut() {
                sign_board_message(&context.principal, &entry.resource_type, body).map_err(|error| entry.locate(error))?;
            }
            if entry.resource_type == "Subscription" {
                if let Change::Patch { .. } = entry.change {
                    let refused = Error::unprocessable(crate::outcome::Issue::error(
                        crate::outcome::IssueCode::NotSupported,
                        "a Subscription is changed whole (PUT), so that what it asks for is checked again",
                    ));
                    return Err(entry.locate(refused));
                }
                if let Some(body) = entry.body.as_mut() {
                    self.prepare_subscription(context, body).map_err(|error| entry.locate(error))?;
                }
            }
        }
        for entry in &entries {
            self.check_entry(context, entry).map_err(|error| entry.locate(error))?;
        }
        // Entries whose references the pipeline rewrites are validated after the rewrite.
        let rewritten = entries.iter().any(|e| e.full_url.is_some())
            || entries.iter().any(|e| e.index.is_some() && e.body.as_ref().is_some_and(|b| !self.conditional_references(e, b).is_empty()));
        let mut validated: Vec<Option<Validated>> = Vec::with_capacity(entries.len());
        for entry in &entries {
            validated.push(match (&entry.body, rewritten) {
                (Some(body), false) => Some(self.validate(entry, body.clone())?),
                _ => None,
            });
        }
        let mut order: Vec<usize> = (0..entries.len()).collect();
        // A Binary after the rest of its rank: the resource its securityContext names may be
        // created by the same transaction.
        order.sort_by_key(|&i| (entries.get(i).map_or(u8::MAX, |e| e.change.rank()), entries.get(i).is_some_and(|e| e.resource_type == "Binary"), i));
        let mut transaction = self.store.begin().await?;
        for entry in &entries {
            if let (Some(body), true) = (entry.body.as_ref(), entry.resource_type == "Communication") {
                self.check_system_sender(&mut transaction, &context.principal, body).await.map_err(|error| entry.locate(error))?;
            }
        }

        // Step 2: conditional matches and the ids of what is created.
        let mut grants: Vec<Option<WriteGrant>> = entries.iter().map(|_| None).collect();
        let mut matched: Vec<Option<Stored>> = vec![None; entries.len()];
        let mut ids: Vec<Option<String>> = vec![None; entries.len()];
        let mut replacements: HashMap<String, String> = HashMap::new();
        for &i in &order {
            let Some(entry) = entries.get(i) else { continue };
            let located = |error| entry.locate(error);
            let resource_type = entry.resource_type.as_str();
            let id = match &entry.change {
                Change::Create { if_none_exist: Some(condition) } => {
                    // The lock before the decision: its facts must include whatever a
                    // concurrent conditional writer committed (a person registered a moment
                    // ago is this caller's match).
                    lock_conditional(&mut transaction, &context.tenant, resource_type).await?;
                    let grant = self.decide_write(&mut transaction, context, entry).await?;
                    put(&mut grants, i, grant);
                    match self.match_for_write(&mut transaction, context, resource_type, condition).await.map_err(located)? {
                        Some(existing) => {
                            let stored = stored_from_current(Some(existing), resource_type, "")?;
                            let id = stored.id.clone();
                            put(&mut matched, i, stored);
                            id
                        }
                        None => uuid::Uuid::new_v4().to_string(),
                    }
                }
                Change::Create { if_none_exist: None } => uuid::Uuid::new_v4().to_string(),
                Change::Update { id } => id.clone(),
                Change::ConditionalUpdate { condition } => {
                    lock_conditional(&mut transaction, &context.tenant, resource_type).await?;
                    let grant = self.decide_write(&mut transaction, context, entry).await?;
                    put(&mut grants, i, grant);
                    let existing = self.match_for_write(&mut transaction, context, resource_type, condition).await.map_err(located)?;
                    let body_id = entry.body.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str).map(str::to_owned);
                    match existing {
                        Some(existing) => {
                            if body_id.as_deref().is_some_and(|body_id| body_id != existing.id) {
                                return Err(located(Error::bad_request_at(
                                    "the resource id does not match the resource found by the condition",
                                    format!("{resource_type}.id"),
                                )));
                            }
                            existing.id
                        }
                        None => body_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                    }
                }
                Change::Patch { .. } | Change::Delete { .. } | Change::ConditionalDelete { .. } => continue,
            };
            if let Some(full_url) = &entry.full_url {
                replacements.insert(full_url.clone(), format!("{resource_type}/{id}"));
            }
            put(&mut ids, i, id);
        }
        // A transaction's conditional references (`Patient?identifier=…`): each must match
        // exactly one resource the caller may search and see, and becomes its reference.
        for entry in &entries {
            let (Some(_), Some(body)) = (entry.index, &entry.body) else { continue };
            for (found, target_type, condition) in self.conditional_references(entry, body) {
                if replacements.contains_key(&found.reference) {
                    continue;
                }
                let resolved = self.resolve_conditional_reference(&mut transaction, context, &target_type, &condition).await;
                let id = resolved
                    .and_then(|id| {
                        id.ok_or_else(|| Error::PreconditionFailed(format!("the conditional reference '{}' at {} matches no resource", found.reference, found.path)))
                    })
                    .map_err(|error| entry.locate(error))?;
                replacements.insert(found.reference.clone(), format!("{target_type}/{id}"));
            }
        }
        if !replacements.is_empty() {
            for entry in &mut entries {
                if let Some(body) = entry.body.as_mut() {
                    references::rewrite(body, &replacements);
                }
            }
        }

        // Step 3: each entry decided once and written under its grant.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; entries.len()];
        let mut written: Vec<(usize, WriteGrant, Stored)> = Vec::new();
        for &i in &order {
            let Some(entry) = entries.get(i) else { continue };
            let located = |error| entry.locate(error);
            let resource_type = entry.resource_type.as_str();
            if let Change::ConditionalDelete { .. } = entry.change {
                lock_conditional(&mut transaction, &context.tenant, resource_type).await?;
            }
            let grant = match grants.get_mut(i).and_then(Option::take) {
                Some(grant) => grant,
                None => self.decide_write(&mut transaction, context, entry).await?,
            };
            if let Some(stored) = matched.get_mut(i).and_then(Option::take) {
                put(&mut outcomes, i, Outcome::Written { stored, created: false, unchanged: false });
                continue;
            }
            let id = ids.get(i).cloned().flatten().unwrap_or_default();
            let outcome = match &entry.change {
                Change::Create { .. } | Change::Update { .. } | Change::ConditionalUpdate { .. } => {
                    let validated = match validated.get_mut(i).and_then(Option::take) {
                        Some(validated) => validated,
                        None => self.validate(entry, entry.body.clone().unwrap_or(Value::Null))?,
                    };
                    let Written { stored, created, unchanged } = if let Change::Create { .. } = entry.change {
                        let stored = self.write_version(&mut transaction, &grant, resource_type, &id, validated, None, "POST").await.map_err(located)?;
                        Written { stored, created: true, unchanged: false }
                    } else {
                        self.update_in(&mut transaction, &grant, resource_type, &id, validated, entry.if_match, "PUT").await.map_err(located)?
                    };
                    if resource_type == "Subscription" {
                        self.keep_subscription(&mut transaction, context, &stored).await.map_err(located)?;
                    }
                    written.push((i, grant, stored.clone()));
                    Outcome::Written { stored, created, unchanged }
                }
                Change::Patch { id, patch } => {
                    self.require_readable(&mut transaction, context, resource_type, id).await.map_err(located)?;
                    let Written { stored, created, unchanged } =
                        self.patch_in(&mut transaction, &grant, resource_type, id, patch.clone(), entry.if_match, &context.principal).await.map_err(located)?;
                    written.push((i, grant, stored.clone()));
                    Outcome::Written { stored, created, unchanged }
                }
                Change::Delete { id, cascade } => {
                    let cascaded = self.clear_referrers(&mut transaction, context, &grant, resource_type, id, *cascade).await.map_err(located)?;
                    let deleted = self.delete_in(&mut transaction, &grant, resource_type, id, entry.if_match).await.map_err(located)?;
                    if resource_type == "Subscription" && deleted.is_some() {
                        self.forget_subscription(&mut transaction, id).await?;
                    }
                    Outcome::Deleted { target: Some(format!("{resource_type}/{id}")), deleted, cascaded }
                }
                Change::ConditionalDelete { condition } => {
                    match self.match_for_write(&mut transaction, context, resource_type, condition).await.map_err(located)? {
                        Some(existing) => {
                            self.clear_referrers(&mut transaction, context, &grant, resource_type, &existing.id, false).await.map_err(located)?;
                            let deleted = self.delete_in(&mut transaction, &grant, resource_type, &existing.id, None).await.map_err(located)?;
                            if resource_type == "Subscription" && deleted.is_some() {
                                self.forget_subscription(&mut transaction, &existing.id).await?;
                            }
                            Outcome::Deleted { target: Some(format!("{resource_type}/{}", existing.id)), deleted, cascaded: Vec::new() }
                        }
                        None => Outcome::Deleted { target: None, deleted: None, cascaded: Vec::new() },
                    }
                }
            };
            put(&mut outcomes, i, outcome);
        }

        // Step 4: the references of what was written, against its own grant's read side.
        for (i, grant, stored) in &written {
            let located = |error| match entries.get(*i) {
                Some(entry) => entry.locate(error),
                None => error,
            };
            self.check_references(&mut transaction, context, grant, std::slice::from_ref(stored), "").await.map_err(located)?;
        }
        let outcomes = outcomes.into_iter().collect::<Option<Vec<Outcome>>>().ok_or_else(|| Error::internal("a write entry had no outcome"))?;
        Ok((transaction, outcomes))
    }

    /// The conditional references (`Type?criteria`) of a transaction entry's body, with
    /// their type and criteria.
    fn conditional_references(&self, entry: &WriteEntry, body: &Value) -> Vec<(references::FoundReference, String, String)> {
        references::collect(body, &entry.resource_type)
            .into_iter()
            .filter_map(|found| {
                let (target_type, condition) = found.reference.split_once('?')?;
                if target_type.contains('/') || !self.validator.is_resource_type(target_type) {
                    return None;
                }
                let (target_type, condition) = (target_type.to_owned(), condition.to_owned());
                Some((found, target_type, condition))
            })
            .collect()
    }

    /// The id of the one resource a conditional reference's search matches (None: none the
    /// caller may see). Resolving is searching: it needs the search permission on the type,
    /// and several matches are a 412.
    async fn resolve_conditional_reference(
        &self,
        transaction: &mut Transaction,
        context: &Context,
        target_type: &str,
        condition: &str,
    ) -> Result<Option<String>> {
        let search = self.decide_for(transaction, context, Interaction::Search, target_type, "a conditional reference is resolved by searching").await?;
        Ok(self.match_one(transaction, context, &search, target_type, condition).await?.map(|row| row.id))
    }

    /// Referential integrity of deleting `resource_type/id`: live resources that refer to it
    /// make the delete a 409 (naming those the caller may see), unless `cascade`, which
    /// deletes them first — each under the caller's own delete decision for its type, and
    /// whatever refers to them in turn (at most [`CASCADE_LIMIT`] resources; one the caller
    /// may not see or delete refuses the whole). Returns what the cascade deleted.
    async fn clear_referrers(
        &self,
        transaction: &mut Transaction,
        context: &Context,
        grant: &WriteGrant,
        resource_type: &str,
        id: &str,
        cascade: bool,
    ) -> Result<Vec<(String, Option<Value>)>> {
        // What the grant cannot see (or is deleted already) is not deleted either, and its
        // delete answers 204 as for a missing resource: nothing about its referrers leaks.
        if crate::store::current(transaction, grant, resource_type, id).await?.is_none_or(|row| row.deleted) {
            return Ok(Vec::new());
        }
        let first = crate::store::facts::referrers(transaction, resource_type, id, CASCADE_LIMIT + 1).await?;
        if first.is_empty() {
            return Ok(Vec::new());
        }
        let read = grant.for_reading();
        if !cascade {
            let mut named = Vec::new();
            for (referrer_type, referrer_id) in first.iter().take(10) {
                if crate::store::current(transaction, &read, referrer_type, referrer_id).await?.is_some() {
                    named.push(format!("{referrer_type}/{referrer_id}"));
                }
            }
            let hidden = named.len() < first.len().min(10) || first.len() > 10;
            let list = if named.is_empty() { "resources you may not see".to_owned() } else { named.join(", ") + if hidden { ", and others" } else { "" } };
            return Err(Error::Conflict(format!(
                "{resource_type}/{id} is referred to by {list}; delete those first, or delete with _cascade=delete"
            )));
        }
        // Everything reachable backwards from the target, nearest last so it is deleted first.
        let mut order: Vec<(String, String)> = Vec::new();
        let mut pending = first;
        while let Some((referrer_type, referrer_id)) = pending.pop() {
            if order.iter().any(|(t, i)| *t == referrer_type && *i == referrer_id) || (referrer_type == resource_type && referrer_id == id) {
                continue;
            }
            if order.len() as i64 >= CASCADE_LIMIT {
                return Err(Error::Conflict(format!("deleting {resource_type}/{id} would cascade to more than {CASCADE_LIMIT} resources")));
            }
            pending.extend(crate::store::facts::referrers(transaction, &referrer_type, &referrer_id, CASCADE_LIMIT + 1).await?);
            order.push((referrer_type, referrer_id));
        }
        // The data before the facts that admit the caller to it (a team, a consent): deleting
        // a team first would hide the person's other data from its own member.
        let mut order: Vec<(String, String)> = order.into_iter().rev().collect();
        order.sort_by_key(|(t, _)| matches!(t.as_str(), "CareTeam" | "Consent"));
        let mut grants: HashMap<String, WriteGrant> = HashMap::new();
        for (referrer_type, referrer_id) in &order {
            let delete_grant = match grants.get(referrer_type) {
                Some(grant) => grant.clone(),
                None => {
                    let decided = self
                        .decide(transaction, context, Interaction::Delete, Some(referrer_type))
                        .await
                        .and_then(policy::Grant::for_write)
                        .map_err(|_| Error::Conflict(format!("{resource_type}/{id} is referred to by resources this caller may not delete")))?;
                    grants.insert(referrer_type.clone(), decided.clone());
                    decided
                }
            };
            if crate::store::current(transaction, &delete_grant.for_reading(), referrer_type, referrer_id).await?.is_none() {
                return Err(Error::Conflict(format!("{resource_type}/{id} is referred to by resources this caller may not see")));
            }
        }
        let mut deleted = Vec::new();
        for (referrer_type, referrer_id) in order {
            let Some(delete_grant) = grants.get(&referrer_type) else { continue };
            let last = self.delete_in(transaction, delete_grant, &referrer_type, &referrer_id, None).await?;
            deleted.push((format!("{referrer_type}/{referrer_id}"), last));
        }
        Ok(deleted)
    }

    /// The entry's one decision, for its write interaction.
    async fn decide_write(&self, transaction: &mut Transaction, context: &Context, entry: &WriteEntry) -> Result<WriteGrant> {
        self.decide(transaction, context, entry.change.interaction(), Some(&entry.resource_type))
            .await
            .and_then(policy::Grant::for_write)
            .map_err(|error| entry.locate(error))
    }

    fn validate(&self, entry: &WriteEntry, body: Value) -> Result<Validated> {
        self.validator.validate(body).map_err(|issues| entry.locate(Error::Unprocessable(issues)))
    }
}

/// A board or chat message is sent by the practitioner who writes it: a missing `sender`
/// becomes their PractitionerRole, another one is refused (nobody posts in a colleague's
/// name, nor edits a colleague's post by writing it again). A system client (an EHR) writes
/// for its Organization: a missing sender becomes the Organization; it may name the
/// Organization or one of the Organization's PractitionerRoles (checked against the
/// directory by [`Fhir::check_system_sender`]), nobody else.
pub(crate) fn sign_board_message(principal: &crate::identity::Principal, resource_type: &str, body: &mut Value) -> Result<()> {
    if resource_type != "Communication" || crate::fhir::board::kind_of(body).is_none() {
        return Ok(());
    }
    let crate::identity::Principal::Authenticated(authenticated) = principal else { return Ok(()) };
    let (own, others_allowed) = match &authenticated.actor {
        crate::identity::Actor::Practitioner { role, .. } => (format!("PractitionerRole/{role}"), false),
        crate::identity::Actor::System { organization, .. } => (format!("Organization/{organization}"), true),
        _ => return Ok(()),
    };
    match body.pointer("/sender/reference").and_then(Value::as_str) {
        None if body.get("sender").is_none() => {
            crate::fhir::set(body, "sender", serde_json::json!({ "reference": own }));
            Ok(())
        }
        Some(sender) if sender == own => Ok(()),
        Some(sender) if others_allowed && sender.starts_with("PractitionerRole/") => Ok(()),
        _ => Err(sender_refused(&own, others_allowed)),
    }
}

fn sender_refused(own: &str, others_allowed: bool) -> Error {
    let rule = if others_allowed {
        format!("a board or chat message from a system client is sent by its organization ({own}) or one of its PractitionerRoles")
    } else {
        format!("a board or chat message is sent by its writer: {own}")
    };
    Error::unprocessable(Issue::error(crate::outcome::IssueCode::BusinessRule, rule).at("Communication.sender"))
}

impl Fhir {
    /// A system client's board message that names a PractitionerRole: the role must be one
    /// of the client's Organization (a directory row, read in the write's transaction).
    pub(crate) async fn check_system_sender(&self, db: &mut crate::store::Db, principal: &crate::identity::Principal, body: &Value) -> Result<()> {
        let crate::identity::Principal::Authenticated(authenticated) = principal else { return Ok(()) };
        let crate::identity::Actor::System { organization, tenant, .. } = &authenticated.actor else { return Ok(()) };
        if crate::fhir::board::kind_of(body).is_none() {
            return Ok(());
        }
        let Some(role) = body.pointer("/sender/reference").and_then(Value::as_str).and_then(|r| r.strip_prefix("PractitionerRole/")) else {
            return Ok(());
        };
        let own = format!("Organization/{organization}");
        let found = crate::store::facts::live_resource(db, "PractitionerRole", role).await?;
        let belongs = found.is_some_and(|(owner, content)| {
            let role: Value = serde_json::from_str(&content).unwrap_or_default();
            owner == *tenant && role.pointer("/organization/reference").and_then(Value::as_str) == Some(own.as_str())
        });
        if belongs {
            Ok(())
        } else {
            Err(sender_refused(&own, true))
        }
    }
}

/// Fills slot `i` of one of an entry list's parallel columns.
fn put<T>(column: &mut [Option<T>], i: usize, value: T) {
    if let Some(slot) = column.get_mut(i) {
        *slot = Some(value);
    }
}

/// Locates an error of entry `index`: issue expressions get the entry's resource path, and
/// messages name the entry.
pub(crate) fn in_entry(error: Error, index: usize) -> Error {
    let entry = format!("Bundle.entry[{index}]");
    let prefix = format!("{entry}.resource.");
    match error {
        Error::Unprocessable(_) | Error::BadRequest(_) => prefix_error(error, &prefix),
        Error::NotFound(what) => Error::NotFound(format!("{what} (in {entry})")),
        Error::PreconditionFailed(message) => Error::PreconditionFailed(format!("{entry}: {message}")),
        Error::Conflict(message) => Error::Conflict(format!("{entry}: {message}")),
        Error::Forbidden(message) => Error::Forbidden(format!("{entry}: {message}")),
        other => other,
    }
}

/// `Patient.name[0]` in entry 2 becomes `Bundle.entry[2].resource.name[0]`.
fn prefix_error(error: Error, prefix: &str) -> Error {
    let relocate = |issue: Issue| {
        let mut issue = issue;
        for expression in &mut issue.expression {
            if expression.starts_with("Bundle.entry[") {
                continue;
            }
            let rest = expression.split_once('.').map(|(_, rest)| rest.to_owned()).unwrap_or_default();
            *expression = format!("{prefix}{rest}").trim_end_matches('.').to_owned();
        }
        issue
    };
    match error {
        Error::Unprocessable(issues) => Error::Unprocessable(issues.into_iter().map(relocate).collect()),
        Error::BadRequest(issue) => Error::BadRequest(relocate(issue)),
        other => other,
    }
}
