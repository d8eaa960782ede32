//! Auditing the interactions: the event every interaction records, the disclosure records
//! for data that crossed a municipal border, the per-person access report, and the trail's
//! maintenance (verification, retention export and pruning).
//!
//! Each public interaction of [`Fhir`] opens an [`Audit`] before it does anything, lets the
//! work fill it in (what it returned or wrote) and closes it:
//! - a write appends its events inside its own transaction, just before the commit
//!   ([`Fhir::commit_audited`]), so the data and its event commit together or not at all;
//! - a read, and any failed request, hands its events to the group-commit recorder and waits
//!   until they are durable ([`Fhir::finish_read`], [`Fhir::finish_write`]) — if the trail
//!   cannot be written, the read fails instead of answering unrecorded.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::audit::chain::{Break, Walker};
use crate::audit::{Action, Agent, Entity, Event, EventType, Outcome};
use crate::error::{Error, Result};
use crate::identity::{Interaction, Permission, Principal};
use crate::fhir::MUNICIPALITY_TAG_SYSTEM;
use crate::service::Fhir;
use crate::identity::Context;
use crate::store;
#[cfg(feature = "test-support")]
use crate::runtime::Failpoint;

/// The event a request is building.
pub(crate) struct Audit {
    pub event: Event,
    /// The permission the interaction used (what a disclosure's agreement must allow).
    permission: Permission,
    /// What was asked for, recorded when the request fails (on success the event names what
    /// was actually returned or written).
    requested: Vec<Entity>,
    /// Set once the events are stored (inside a write's transaction).
    committed: bool,
}

impl Audit {
    pub fn entity(&mut self, entity: Entity) {
        push_unique(&mut self.event.entities, entity);
    }

    /// Names what the request asks for, in case it fails.
    pub fn requested(&mut self, entity: Entity) {
        push_unique(&mut self.requested, entity);
    }
}

/// The persons of one other municipality whose data a request returned or wrote.
#[derive(Default)]
struct Crossing {
    patients: Vec<String>,
    resource_types: Vec<String>,
    entities: Vec<Entity>,
}

/// The most journal rows that carry their JSON (every event on PostgreSQL; on SQLite, those
/// an earlier version journaled) one projection transaction writes.
const PROJECTION_BATCH: i64 = 64;

/// The most queued events one chaining transaction takes.
const CHAIN_BATCH: i64 = 512;

impl Fhir {
    /// Starts the event of an interaction at `context`'s base.
    pub(crate) fn audit(&self, context: &Context, interaction: Interaction, subtype: &'static str) -> Audit {
        let action = match interaction.permission() {
            Permission::Create => Action::Create,
            Permission::Read | Permission::Search => Action::Read,
            Permission::Update => Action::Update,
            Permission::Delete => Action::Delete,
        };
        Audit {
            event: self.event(context, EventType::Rest(subtype), action),
            permission: interaction.permission(),
            requested: Vec::new(),
            committed: false,
        }
    }

    pub(crate) fn event(&self, context: &Context, event_type: EventType, action: Action) -> Event {
        Event {
            chain: context.tenant.clone(),
            event_type,
            action,
            outcome: Outcome::Success,
            outcome_description: None,
            recorded: self.now(),
            agent: Agent::of(&context.principal, context.client_address.as_deref()),
            site: context.tenant.clone(),
            request_id: context.request_id.clone(),
            purpose_of_use: context.purpose_of_use.clone(),
            entities: Vec::new(),
        }
    }

    /// Stores events durably outside any write (reads, failures, sign-in, administration).
    pub(crate) async fn record(&self, events: Vec<Event>) -> Result<()> {
        self.record_as(events, false).await
    }

    /// Stores the events of a read that succeeded: as [`Fhir::record`], except that in a
    /// request's own task the commit is waited for once its response is made
    /// (`runtime::recorder::answered_after_commits`).
    async fn record_read(&self, events: Vec<Event>) -> Result<()> {
        self.record_as(events, true).await
    }

    async fn record_as(&self, events: Vec<Event>, read: bool) -> Result<()> {
        if self.config.audit_off_for_benchmarks_only {
            return Ok(());
        }
        #[cfg(feature = "test-support")]
        if self.take_failpoint(Failpoint::RecordEvents) {
            return Err(Error::internal("failpoint: the audit trail cannot be written"));
        }
        #[cfg(feature = "test-support")]
        if read && self.take_failpoint(Failpoint::ReadEventsNotCommitted) {
            return self.recorder.record_read_not_committed().await;
        }
        if read {
            self.recorder.record_read(events, &self.tenants()).await
        } else {
            self.recorder.record(events, &self.tenants()).await
        }
    }

    /// Chains the events writes queued (`store::audit::append`), all of them
    /// that are not being chained by another gateway. Runs after each audited write's commit
    /// (the chainer task, woken by `audit_chain_wake`), every 500 ms, and before projection.
    pub async fn chain_audit_events(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let done = crate::store::audit::chain_queued(&self.store, &self.search_params, CHAIN_BATCH).await?;
            total += done;
            // A partial batch took everything queued (and not claimed elsewhere) when it began.
            if done < CHAIN_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Chains what writes queued, then projects journal rows that carry their JSON into
    /// AuditEvent resource rows (on SQLite events are stored as resource rows when they are
    /// recorded; `store::audit::insert_events`). Runs at start, in the background every
    /// fraction of a second, and before every request that reads the trail, so an auditor
    /// always sees every event recorded before the request.
    pub async fn project_audit_events(&self) -> Result<usize> {
        self.chain_audit_events().await?;
        let mut total = 0;
        loop {
            let done = crate::store::audit::project_pending(&self.store, &self.search_params, PROJECTION_BATCH).await?;
            total += done;
            // A partial batch took everything journaled when it started.
            if done < PROJECTION_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Brings the projection up to date before a request that may read the trail (an
    /// auditor's). Never call it inside a transaction: it opens its own.
    pub(crate) async fn catch_up_audit(&self, context: &Context) -> Result<()> {
        let reads_trail = match &context.principal {
            Principal::Authenticated(authenticated) => matches!(authenticated.actor, crate::identity::Actor::MunicipalAuditor { .. }),
            _ => false,
        };
        if reads_trail {
            // This request's own earlier events (a batch's entries) first.
            crate::runtime::recorder::awaited_commits().await?;
            self.project_audit_events().await?;
        }
        Ok(())
    }

    /// Records a sign-in or token event (`subtype`: `login`, `token-issue`, `token-refresh`,
    /// `token-revoke`) for `principal` — the holder of what was issued or revoked, or
    /// anonymous when nothing was — with `refused` saying why it failed, if it did.
    pub async fn record_security(
        &self,
        context: &Context,
        principal: &Principal,
        subtype: &'static str,
        refused: Option<String>,
        entities: Vec<Entity>,
    ) -> Result<()> {
        let context = Context { principal: principal.clone(), ..context.clone() };
        let action = if subtype == "token-revoke" { Action::Delete } else { Action::Execute };
        let mut event = self.event(&context, EventType::Security(subtype), action);
        if let Some(reason) = refused {
            event.outcome = Outcome::MinorFailure;
            event.outcome_description = Some(format!("refused: {reason}"));
        }
        event.entities = entities;
        self.record(vec![event]).await
    }

    /// Records an administrative action outside the FHIR API (`subtype`: `tenant-add`,
    /// `client-register`, `client-remove`, `client-list`, `signing-key-rotate`) in `chain`.
    pub async fn record_administration(
        &self,
        context: &Context,
        chain: &str,
        subtype: &'static str,
        outcome: std::result::Result<(), &Error>,
        entities: Vec<Entity>,
    ) -> Result<()> {
        let action = match subtype {
            "client-remove" => Action::Delete,
            "signing-key-rotate" => Action::Update,
            "client-list" => Action::Read,
            _ => Action::Create,
        };
        let mut event = self.event(context, EventType::Administration(subtype), action);
        event.chain = chain.to_owned();
        if let Err(error) = outcome {
            let (outcome, description) = Outcome::of_error(error);
            event.outcome = outcome;
            event.outcome_description = Some(description);
        }
        event.entities = entities;
        self.record(vec![event]).await
    }

    /// Records a request refused before it reached an interaction (an invalid, expired or
    /// revoked token); `what` is the method and path.
    pub async fn record_refused(&self, context: &Context, what: &str, error: &Error) -> Result<()> {
        let mut event = self.event(context, EventType::Security("request-refused"), Action::Execute);
        let (outcome, description) = Outcome::of_error(error);
        event.outcome = outcome;
        event.outcome_description = Some(description);
        event.entities.push(Entity::Detail { name: "request".into(), value: what.to_owned() });
        self.record(vec![event]).await
    }

    /// Closes a read: records its event (success with what it returned, or failure) and the
    /// disclosure records, and returns only once they are durable. An error storing them
    /// fails the read.
    pub(crate) async fn finish_read<T>(&self, context: &Context, mut audit: Audit, result: Result<T>, returned: impl Fn(&T) -> Vec<&Value>) -> Result<T> {
        if self.config.audit_off_for_benchmarks_only {
            return result;
        }
        let events = match &result {
            Ok(value) => {
                let crossings = self.describe_returned(context, &mut audit, &returned(value));
                let disclosures = if crossings.is_empty() {
                    Vec::new()
                } else {
                    let mut connection = self.store.connection().await?;
                    self.disclosures(&mut connection, context, &audit, crossings).await?
                };
                std::iter::once(audit.event).chain(disclosures).collect()
            }
            Err(error) => vec![failed(audit, error)],
        };
        if result.is_ok() {
            self.record_read(events).await?;
        } else {
            self.record(events).await?;
        }
        result
    }

    /// Closes a write. A successful write recorded its events in its transaction; a failed
    /// one (nothing was kept) records its failure now.
    pub(crate) async fn finish_write<T>(&self, audit: Audit, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) if audit.committed => Ok(value),
            Ok(_) => Err(Error::internal("a write finished without recording its audit event")),
            Err(error) => {
                if let Err(audit_error) = self.record(vec![failed(audit, &error)]).await {
                    tracing::error!(target: "renraku::audit", %audit_error, "the failure of a write could not be recorded");
                }
                Err(error)
            }
        }
    }

    /// Appends the write's event (with what it wrote and, for another municipality's
    /// person, the disclosure records) and commits the transaction.
    pub(crate) async fn commit_audited(
        &self,
        mut transaction: store::Transaction,
        context: &Context,
        audit: &mut Audit,
        written: &[&Value],
        extra: Vec<Event>,
    ) -> Result<()> {
        if self.config.audit_off_for_benchmarks_only {
            transaction.commit().await?;
            audit.committed = true;
            self.wake_deliveries();
            return Ok(());
        }
        let crossings = self.describe_returned(context, audit, written);
        let disclosures = self.disclosures(&mut transaction, context, audit, crossings).await?;
        let mut events = extra;
        events.push(audit.event.clone());
        events.extend(disclosures);
        crate::store::audit::append(&mut transaction, &self.search_params, &self.tenants(), &events)?;
        // The test suite's simulated crash (compiled only with `test-support`): a panic is
        // what a crash looks like from inside the process.
        #[cfg(feature = "test-support")]
        #[allow(clippy::panic)]
        if self.take_failpoint(Failpoint::CrashBeforeCommit) {
            panic!("failpoint: the process crashes before the commit");
        }
        #[cfg(feature = "test-support")]
        if self.take_failpoint(Failpoint::TransactionLostBeforeCommit) {
            store::end_transaction_behind_the_driver_for_tests(&mut transaction).await?;
            return Err(Error::internal("failpoint: the transaction was lost before its commit"));
        }
        transaction.commit().await?;
        audit.committed = true;
        // Whatever the write enqueued for subscriptions is delivered now, not at the next poll;
        // its events, if the backend queues them, are chained now.
        self.wake_deliveries();
        self.audit_chain_wake.notify_one();
        Ok(())
    }

    /// The events of a transaction's entries (and their disclosure records), for
    /// [`Fhir::commit_audited`] to append with the transaction's own event.
    pub(crate) async fn entry_events(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        entries: Vec<(Audit, Option<Value>)>,
    ) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        for (mut audit, written) in entries {
            let written: Vec<&Value> = written.iter().collect();
            let crossings = self.describe_returned(context, &mut audit, &written);
            let disclosures = self.disclosures(connection, context, &audit, crossings).await?;
            events.push(audit.event);
            events.extend(disclosures);
        }
        Ok(events)
    }

    /// Adds the returned (or written) resources and their persons to the event, and collects,
    /// per other municipality, the persons whose data they carry.
    fn describe_returned(&self, context: &Context, audit: &mut Audit, resources: &[&Value]) -> BTreeMap<String, Crossing> {
        let municipalities = self.tenants();
        let mut crossings: BTreeMap<String, Crossing> = BTreeMap::new();
        for resource in resources {
            let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else { continue };
            let Some(id) = resource.get("id").and_then(Value::as_str) else { continue };
            if resource_type == "OperationOutcome" {
                continue;
            }
            let reference = match resource.pointer("/meta/versionId").and_then(Value::as_str) {
                Some(version) => format!("{resource_type}/{id}/_history/{version}"),
                None => format!("{resource_type}/{id}"),
            };
            let patients = self.patients_of(resource_type, id, resource);
            audit.entity(Entity::Resource(reference.clone()));
            for patient in &patients {
                audit.entity(Entity::Patient(format!("Patient/{patient}")));
            }
            let Some(owner) = owner_slug(resource, &municipalities) else { continue };
            if owner == context.tenant || patients.is_empty() {
                continue;
            }
            let crossing = crossings.entry(owner).or_default();
            for patient in patients {
                push_unique(&mut crossing.entities, Entity::Patient(format!("Patient/{patient}")));
                if !crossing.patients.contains(&patient) {
                    crossing.patients.push(patient);
                }
            }
            if !crossing.resource_types.iter().any(|t| t == resource_type) {
                crossing.resource_types.push(resource_type.to_owned());
            }
            push_unique(&mut crossing.entities, Entity::Resource(reference));
        }
        crossings
    }

    /// The disclosure records, one in each other municipality's chain, naming the persons,
    /// the data, the recipient, and the agreements and consents the disclosure rested on.
    async fn disclosures(
        &self,
        connection: &mut crate::store::Db,
        context: &Context,
        audit: &Audit,
        crossings: BTreeMap<String, Crossing>,
    ) -> Result<Vec<Event>> {
        let subtype = match audit.event.event_type {
            EventType::Rest(subtype) | EventType::Disclosure(subtype) => subtype,
            EventType::Security(subtype) | EventType::Administration(subtype) => subtype,
        };
        let tenants = self.tenants();
        let environment = self.environment(&tenants, &context.base_url);
        let mut events = Vec::with_capacity(crossings.len());
        for (owner, crossing) in crossings {
            let basis = crate::policy::disclosure_basis(
                connection,
                &environment,
                &context.tenant,
                &owner,
                audit.permission,
                &crossing.resource_types,
                &crossing.patients,
            )
            .await?;
            let mut entities = crossing.entities;
            entities.extend(basis.agreements.into_iter().map(|id| Entity::Agreement(format!("Contract/{id}"))));
            entities.extend(basis.consents.into_iter().map(|id| Entity::Consent(format!("Consent/{id}"))));
            events.push(Event {
                chain: owner,
                event_type: EventType::Disclosure(subtype),
                outcome: Outcome::Success,
                outcome_description: Some(format!("disclosed to an actor at the base of '{}'", context.tenant)),
                entities,
                ..audit.event.clone()
            });
        }
        Ok(events)
    }

    /// The persons whose compartments a resource is in.
    pub(crate) fn patients_of(&self, resource_type: &str, id: &str, resource: &Value) -> Vec<String> {
        if resource_type == "Patient" {
            return vec![id.to_owned()];
        }
        if resource_type == "Binary" {
            let recorded = crate::fhir::binary::persons(resource);
            if !recorded.is_empty() {
                return recorded;
            }
        }
        let params = self.search_params.person_params(resource_type);
        if params.is_empty() {
            return Vec::new();
        }
        let index = self.search_params.extract_params(resource, params);
        self.compartment_patients(resource_type, id, &index)
    }

    /// `GET [base]/Patient/[id]/$access-report`: who accessed the person's data, when, and from
    /// which municipality — for the person's care manager to print and show the person. Open
    /// to whoever may read the Patient, and to auditors of the person's municipality.
    pub async fn access_report(&self, context: &Context, patient: &str, query: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Read, "$access-report");
        audit.entity(Entity::Patient(format!("Patient/{patient}")));
        let result = self.access_report_inner(context, patient, query).await;
        self.finish_read(context, audit, result, |_| Vec::new()).await
    }

    async fn access_report_inner(&self, context: &Context, patient: &str, query: &[(String, String)]) -> Result<Value> {
        let mut count: i64 = 100;
        for (name, value) in query {
            match name.as_str() {
                "_count" => {
                    count = value
                        .parse::<i64>()
                        .ok()
                        .filter(|c| (1..=1000).contains(c))
                        .ok_or_else(|| Error::bad_request_at("_count must be a number from 1 to 1000", "_count"))?
                }
                "_format" | "_pretty" => {}
                other => return Err(Error::bad_request_at(format!("$access-report has no parameter '{other}'"), other)),
            }
        }
        self.project_audit_events().await?;
        let mut connection = self.store.connection().await?;
        self.decide_access_report(&mut connection, context, patient).await?;
        let events = store::audit::events_about_patient(&mut connection, patient, count).await?;
        let names: BTreeMap<String, String> = self.tenants().iter().map(|t| (t.code.clone(), t.name.clone())).collect();
        let mut parameters = vec![
            json!({ "name": "patient", "valueReference": { "reference": format!("Patient/{patient}") } }),
            json!({ "name": "generated", "valueInstant": self.now() }),
        ];
        for content in events {
            let event: Value = serde_json::from_str(&content)?;
            if event.pointer("/type/code").and_then(Value::as_str) == Some("110106") || event.get("outcome").and_then(Value::as_str) != Some("0") {
                continue;
            }
            parameters.push(json!({ "name": "access", "part": access_parts(&event, &names) }));
        }
        Ok(json!({ "resourceType": "Parameters", "parameter": parameters }))
    }

    /// `renraku audit verify`: walks every chain (or one) and reports the first broken link.
    pub async fn verify_audit_trail(&self, only: Option<&str>) -> Result<Vec<ChainReport>> {
        // Events waiting for their place (PostgreSQL's writes) are chained first, so that
        // every event committed before verification began is verified.
        self.chain_audit_events().await?;
        self.store.analyze_audit_tables().await?;
        let mut connection = self.store.connection().await?;
        let mut reports = Vec::new();
        for head in store::audit::heads(&mut connection).await? {
            if only.is_some_and(|only| only != head.chain) {
                continue;
            }
            let mut walker = Walker::new(&head);
            let mut after = head.anchor_seq;
            let mut broken: Option<Break> = None;
            'walk: loop {
                let links = store::audit::links(&mut connection, &head.chain, after, 1000).await?;
                let Some(last) = links.last() else { break };
                after = last.seq;
                for link in &links {
                    // Events appended after the head was read belong to the next verification.
                    if link.seq > head.seq {
                        break 'walk;
                    }
                    if let Err(found) = walker.step(link) {
                        broken = Some(found);
                        break 'walk;
                    }
                }
            }
            if broken.is_none() {
                broken = walker.finish(&head).err();
            }
            if broken.is_none() {
                if let Some(stray) = store::audit::unlinked_events(&mut connection, &head.chain).await?.first() {
                    broken = Some(Break {
                        chain: head.chain.clone(),
                        seq: head.seq,
                        event_id: Some(stray.clone()),
                        problem: "an AuditEvent is stored that no link of the chain protects (inserted)".into(),
                    });
                }
            }
            reports.push(ChainReport { chain: head.chain.clone(), events: walker.checked, head: head.digest.clone(), broken });
        }
        Ok(reports)
    }

    /// `renraku audit prune`: exports each chain's events older than the retention period to
    /// `{directory}/audit-{chain}-{first}-{last}.ndjson` (one line per event: chain, sequence,
    /// predecessor digest, digest and the AuditEvent), then removes them and re-anchors the
    /// chain at the last removed event. The pruning is itself recorded in the chain. A chain
    /// that does not verify is not pruned.
    pub async fn prune_audit_trail(&self, directory: &std::path::Path) -> Result<Vec<PruneReport>> {
        let cutoff = crate::fhir::dates::format_instant(self.clock.now() - chrono::Duration::days(self.config.audit_retention_days));
        self.project_audit_events().await?;
        let verified = self.verify_audit_trail(None).await?;
        if let Some(broken) = verified.iter().find_map(|r| r.broken.as_ref()) {
            return Err(Error::Conflict(format!("the audit trail does not verify, so nothing is pruned: {broken}")));
        }
        std::fs::create_dir_all(directory).map_err(|e| Error::internal(format!("{}: {e}", directory.display())))?;
        let mut reports = Vec::new();
        let heads = {
            let mut connection = self.store.connection().await?;
            store::audit::heads(&mut connection).await?
        };
        for head in heads {
            let mut transaction = self.store.begin().await?;
            let Some(through) = store::audit::expired_through(&mut transaction, &head.chain, &cutoff).await? else { continue };
            if through <= head.anchor_seq {
                continue;
            }
            let links = store::audit::links(&mut transaction, &head.chain, head.anchor_seq, through - head.anchor_seq).await?;
            let file = directory.join(format!("audit-{}-{}-{through}.ndjson", head.chain, head.anchor_seq + 1));
            let mut text = String::new();
            for link in &links {
                let resource: Value = serde_json::from_str(&link.content)?;
                let line = json!({ "chain": head.chain, "sequence": link.seq, "previous": link.previous, "digest": link.digest, "resource": resource });
                text.push_str(&serde_json::to_string(&line)?);
                text.push('\n');
            }
            write_durably(&file, text.as_bytes())?;
            let anchor = links.last().map(|l| l.digest.clone()).unwrap_or_else(|| head.anchor_digest.clone());
            let removed = store::audit::prune(&mut transaction, &head.chain, through, &anchor).await?;
            let file_digest = {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            };
            let context = Context::operator(&head.chain, self.config.base_url(&head.chain), "audit-prune");
            let mut event = self.event(&context, EventType::Administration("audit-prune"), Action::Delete);
            event.entities = vec![
                Entity::Detail { name: "pruned".into(), value: format!("sequence {} to {through} ({removed} events) recorded before {cutoff}", head.anchor_seq + 1) },
                Entity::Detail { name: "export".into(), value: file.display().to_string() },
                Entity::Detail { name: "export-sha256".into(), value: file_digest },
                Entity::Detail { name: "anchor".into(), value: anchor },
            ];
            crate::store::audit::append(&mut transaction, &self.search_params, &self.tenants(), &[event])?;
            transaction.commit().await?;
            reports.push(PruneReport { chain: head.chain.clone(), removed, file });
        }
        Ok(reports)
    }
}

/// One chain's verification result.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub chain: String,
    pub events: i64,
    /// The chain's head digest (keep it elsewhere to detect a rewritten tail).
    pub head: String,
    pub broken: Option<Break>,
}

/// What one chain's pruning removed and where it was exported.
#[derive(Debug, Clone)]
pub struct PruneReport {
    pub chain: String,
    pub removed: u64,
    pub file: std::path::PathBuf,
}

fn write_durably(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| Error::internal(format!("{}: {e}", path.display())))
}

/// The event of a failed request: what was asked for, and why it failed.
fn failed(audit: Audit, error: &Error) -> Event {
    let mut event = audit.event;
    let (outcome, description) = Outcome::of_error(error);
    event.outcome = outcome;
    event.outcome_description = Some(description);
    for entity in audit.requested {
        push_unique(&mut event.entities, entity);
    }
    event
}

fn push_unique(entities: &mut Vec<Entity>, entity: Entity) {
    if !entities.contains(&entity) {
        entities.push(entity);
    }
}

/// The slug of the municipality whose tag `resource` carries.
fn owner_slug(resource: &Value, municipalities: &[crate::config::TenantConfig]) -> Option<String> {
    let tags = resource.pointer("/meta/tag").and_then(Value::as_array)?;
    let code = tags.iter().find(|t| t.get("system").and_then(Value::as_str) == Some(MUNICIPALITY_TAG_SYSTEM))?.get("code")?.as_str()?;
    municipalities.iter().find(|t| t.code == code).map(|t| t.slug.clone())
}

/// One line of the access report, from an AuditEvent.
fn access_parts(event: &Value, names: &BTreeMap<String, String>) -> Vec<Value> {
    let mut parts = vec![json!({ "name": "when", "valueInstant": event.get("recorded").cloned().unwrap_or(Value::Null) })];
    if let Some(code) = event.pointer("/subtype/0/code").and_then(Value::as_str) {
        parts.push(json!({ "name": "interaction", "valueCode": code }));
    }
    if let Some(action) = event.get("action").and_then(Value::as_str) {
        parts.push(json!({ "name": "action", "valueCode": action }));
    }
    for agent in event.get("agent").and_then(Value::as_array).into_iter().flatten() {
        if let Some(reference) = agent.pointer("/who/reference").and_then(Value::as_str) {
            let name = match reference.split('/').next() {
                Some("Practitioner") => "who",
                Some("PractitionerRole") => "role",
                Some("Organization") => "organization",
                _ => "who",
            };
            parts.push(json!({ "name": name, "valueReference": { "reference": reference } }));
        } else if agent.get("requestor").and_then(Value::as_bool) == Some(true) {
            let display = agent.get("name").or_else(|| agent.pointer("/who/display")).cloned().unwrap_or(Value::Null);
            parts.push(json!({ "name": "who", "valueString": display }));
        }
        if let Some(coding) = agent.get("extension").and_then(Value::as_array).and_then(|e| e.first()).and_then(|e| e.get("valueCoding")) {
            let code = coding.get("code").and_then(Value::as_str).unwrap_or_default();
            let display = names.get(code).cloned().unwrap_or_default();
            parts.push(json!({ "name": "municipality", "valueCoding": { "system": MUNICIPALITY_TAG_SYSTEM, "code": code, "display": display } }));
        }
    }
    let mut types: Vec<String> = event
        .get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.pointer("/role/code").and_then(Value::as_str) == Some("4"))
        .filter_map(|e| e.pointer("/type/code").and_then(Value::as_str).map(str::to_owned))
        .collect();
    types.sort();
    types.dedup();
    if !types.is_empty() {
        parts.push(json!({ "name": "data", "valueString": types.join(", ") }));
    }
    parts
}
