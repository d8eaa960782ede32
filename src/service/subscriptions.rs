//! Notifications: topic-based Subscriptions (R4 Backport IG 1.1.0) delivered over rest-hook
//! and websocket, each event judged under the subscriber's own grant when it is delivered.
//!
//! - **Writing a Subscription** ([`Fhir::prepare_subscription`], [`Fhir::keep_subscription`]):
//!   what it asks for is read against the published topics (422 naming the element for
//!   anything the server would not honour), it is stamped with its owner (the writer's
//!   PractitionerRole, or a system client's Organization: only the owner sees or changes it),
//!   and its server-side row records the principal deliveries act for.
//! - **The outbox**: every version written enqueues an event for each subscription following
//!   its type, in the write's transaction (`store::subscriptions::enqueue`).
//! - **Delivery** ([`Fhir::deliver_due`], run by every gateway's background task and woken by
//!   its own writes): a gateway leases a subscription, judges each pending event as a search
//!   by the owner *now* (`_id` and the topic's and subscription's filters, under the owner's
//!   search grant: consent withdrawn, team left, agreement ended, client removed — nothing
//!   is sent, not even a count), numbers the visible ones gap-free, sends one notification
//!   Bundle, and marks them delivered when the receiver acknowledged it. Failures back off
//!   exponentially; after `failures_before_error` the status is `error` until a delivery
//!   succeeds. Every delivery is audited as a disclosure to the owner, like a read.
//! - **Operations**: `$status`, `$events` (catch up by event number, judged again now) and
//!   `$get-ws-binding-token`; the websocket endpoint binds with such a token (`http::ws`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::audit::Entity;
use crate::error::{Error, Result};
use crate::fhir::subscription::{self as topic, Channel, NotificationType, NotifiedEvent, Payload, Settings, StatusOf};
use crate::identity::{Actor, Authenticated, Context, Interaction, Principal};
use crate::outcome::{Issue, IssueCode};
use crate::search::Criterion;
use crate::service::Fhir;
use crate::store::subscriptions::{self as outbox, EventRow, StateRow};
use crate::store::{self, query};

/// The principal a subscription's deliveries act for, as its row keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owner {
    actor: Actor,
    scopes: String,
    patient: Option<String>,
    client_id: String,
    /// Whether the client was registered when the subscription was written: if it is
    /// removed later, the subscription delivers nothing more.
    client_registered: bool,
}

/// How long a gateway holds a subscription's lease beyond the delivery's own timeout.
const LEASE_MARGIN_MS: i64 = 5_000;
/// The most events one notification carries when the subscription does not say.
const DEFAULT_MAX_COUNT: u64 = 20;
/// The most events `$events` returns at once.
const MAX_EVENTS_PAGE: i64 = 100;

/// What judging one event found.
enum Judged {
    /// The owner may read the focus now; the resource as a read returns it (None for a deletion).
    Visible(Option<Value>),
    /// The owner may not read it now, or it is not an event of the topic: nothing is sent.
    Hidden,
}

fn refuse(message: impl Into<String>, expression: &str) -> Error {
    Error::Unprocessable(vec![Issue::error(IssueCode::NotSupported, message).at(expression)])
}

fn millis(now: chrono::DateTime<chrono::Utc>) -> i64 {
    now.timestamp_millis()
}

impl Fhir {
    /// Before a Subscription body is validated: what it asks for, checked against the topics,
    /// the search parameters and the endpoint rules (422 naming the element); its owner
    /// stamped; its status set (`off` stays `off`, anything else is `active`: the delivery
    /// state is `$status`'s).
    pub(crate) fn prepare_subscription(&self, context: &Context, body: &mut Value) -> Result<()> {
        let owner = owner_reference(&context.principal)?;
        let off = body["status"] == "off";
        self.read_settings(context, body)?;
        if let Some(owner) = owner {
            topic::stamp_owner(body, &owner);
        }
        crate::fhir::set(body, "status", json!(if off { "off" } else { "active" }));
        Ok(())
    }

    fn read_settings(&self, context: &Context, body: &Value) -> Result<Settings> {
        let config = &self.config.subscriptions;
        let settings = topic::read(&self.subscriptions.topics, body, |url| endpoint_allowed(config, url))?;
        if !self.validator.is_resource_type(&settings.resource_type) {
            return Err(refuse(format!("'{}' is not a resource type", settings.resource_type), "Subscription.criteria.extension('backport-filter-criteria')"));
        }
        crate::search::parse::parse(&self.search_params, &settings.resource_type, &settings.query, false, &context.base_url, &self.config.limits).map_err(|error| {
            let why = match &error {
                Error::BadRequest(issue) => issue.diagnostics.clone(),
                other => other.to_string(),
            };
            refuse(format!("the filter cannot be applied: {why}"), "Subscription.criteria.extension('backport-filter-criteria')")
        })?;
        Ok(settings)
    }

    /// Inside the transaction that wrote `stored` (a Subscription): its server-side row,
    /// owned by the writer.
    pub(crate) async fn keep_subscription(&self, connection: &mut store::Db, context: &Context, stored: &crate::service::Stored) -> Result<()> {
        if stored.resource.get("status").and_then(Value::as_str) == Some("off") {
            return outbox::turn_off(connection, &stored.id).await;
        }
        let Principal::Authenticated(authenticated) = &context.principal else {
            return Err(Error::Forbidden("only practitioners and system clients subscribe".into()));
        };
        let settings = self.read_settings(context, &stored.resource)?;
        let owner = Owner {
            actor: authenticated.actor.clone(),
            scopes: authenticated.scopes.to_string(),
            patient: authenticated.patient.clone(),
            client_id: authenticated.client_id.clone(),
            client_registered: self.current_client(&context.tenant, &authenticated.client_id).await?.is_some(),
        };
        let heartbeat_ms = settings.heartbeat_seconds.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX / 2_000) * 1_000);
        let owner = serde_json::to_string(&owner)?;
        let text = serde_json::to_string(&settings)?;
        let actions = settings.interactions.join(",");
        let new = outbox::NewState {
            id: &stored.id,
            tenant: &context.tenant,
            topic: &settings.topic,
            resource_type: &settings.resource_type,
            actions: &actions,
            channel: settings.channel.code(),
            owner: &owner,
            settings: &text,
            heartbeat_ms,
        };
        outbox::put_state(connection, &new).await
    }

    /// Inside the transaction that deleted Subscription `id`.
    pub(crate) async fn forget_subscription(&self, connection: &mut store::Db, id: &str) -> Result<()> {
        outbox::turn_off(connection, id).await
    }

    /// Wakes this gateway's delivery task (after a write committed).
    pub(crate) fn wake_deliveries(&self) {
        self.subscriptions.wake.notify_one();
    }

    /// One round of deliveries: every subscription with work due that this gateway can lease.
    /// Returns how many subscriptions it worked on.
    pub async fn deliver_due(self: &std::sync::Arc<Self>) -> Result<usize> {
        #[cfg(feature = "test-support")]
        if self.take_failpoint(crate::runtime::Failpoint::PauseDeliveries) {
            self.arm_failpoint(crate::runtime::Failpoint::PauseDeliveries);
            return Ok(0);
        }
        let now = millis(self.clock.now());
        let bound = self.subscriptions.bound_subscriptions(now);
        let due = {
            let mut connection = self.store.connection().await?;
            outbox::due(&mut connection, now, &bound, 64).await?
        };
        let mut tasks = tokio::task::JoinSet::new();
        for id in due.clone() {
            let fhir = self.clone();
            tasks.spawn(async move {
                // A few subscriptions at a time: requests need the pool's connections too.
                let Ok(_permit) = fhir.subscriptions.deliveries.acquire().await else { return };
                if let Err(error) = fhir.deliver_one(&id).await {
                    tracing::warn!(target: "renraku::notify", subscription = %id, %error, "delivery round failed; retrying");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(due.len())
    }

    /// Delivers one subscription under its lease. No database session is held across
    /// another's acquisition (or across a send): each step takes its own, and every write
    /// goes through `Store::begin_derived` (on SQLite, the in-process write gate), so
    /// deliveries and requests cannot wait on each other in a circle. Delivery state is
    /// written without waiting for the disk on SQLite: a power loss can only undo the newest
    /// leases, numbers and delivered marks together, after which the same events are judged,
    /// numbered alike (the counter is undone with them) and sent again — at least once, as
    /// promised. The events themselves were made durable by the writes that caused them.
    async fn deliver_one(&self, id: &str) -> Result<()> {
        let node = self.subscriptions.node.clone();
        let now = millis(self.clock.now());
        let timeout_cap = i64::try_from(self.config.subscriptions.timeout_ms).unwrap_or(60_000).max(60_000);
        let mut transaction = self.store.begin_derived().await?;
        let leased = outbox::lease(&mut transaction, id, &node, now, now + timeout_cap + LEASE_MARGIN_MS).await?;
        transaction.commit().await?;
        if !leased {
            return Ok(());
        }
        let result = self.deliver_leased(id).await;
        // Settled (and released) by the delivery; one that failed before it could settle is
        // retried after the same backoff as a failed send, not at the next poll.
        if let Err(error) = &result {
            let mut connection = self.store.connection().await?;
            let state = outbox::state(&mut connection, id).await?;
            drop(connection);
            match state {
                Some(state) => self.settle(&state, Err(format!("the delivery could not be prepared ({})", error.status().as_u16())), &[]).await?,
                None => {
                    let mut transaction = self.store.begin_derived().await?;
                    outbox::release(&mut transaction, id, &node).await?;
                    transaction.commit().await?;
                }
            }
        }
        result
    }

    async fn deliver_leased(&self, id: &str) -> Result<()> {
        let limit_of = |settings: &Settings| i64::try_from(settings.max_count.unwrap_or(DEFAULT_MAX_COUNT)).unwrap_or(20);
        let (state, settings, pending) = {
            let mut connection = self.store.connection().await?;
            let Some(state) = outbox::state(&mut connection, id).await? else { return Err(Error::NotFound(format!("Subscription/{id}"))) };
            let settings: Settings = serde_json::from_str(&state.settings)?;
            let pending = outbox::pending(&mut connection, id, limit_of(&settings)).await?;
            (state, settings, pending)
        };
        let owner: Owner = serde_json::from_str(&state.owner)?;
        let context = self.owner_context(&state, &owner);
        let now = millis(self.clock.now());
        let ended = settings.end.as_deref().and_then(|end| chrono::DateTime::parse_from_rfc3339(end).ok()).is_some_and(|end| end.timestamp_millis() <= now);
        if ended {
            // `Subscription.end` has passed: it is off, and what was pending is dropped.
            let mut transaction = self.store.begin_derived().await?;
            outbox::turn_off(&mut transaction, id).await?;
            outbox::release(&mut transaction, id, &self.subscriptions.node).await?;
            return transaction.commit().await;
        }
        if state.channel == "rest-hook" && state.last_sent_at == 0 {
            let sent = self.send(&state, &settings, NotificationType::Handshake, &[], state.events_since_start).await;
            return self.settle(&state, sent, &[]).await;
        }
        // Judge what is pending, oldest first: number what the owner may read now, drop the rest.
        let client_gone = owner.client_registered && self.current_client(&state.tenant, &owner.client_id).await?.is_none();
        let mut visible = Vec::new();
        let mut new_visible = Vec::new();
        let mut hidden = Vec::new();
        let mut withheld = Vec::new();
        for event in &pending {
            let judged = if client_gone { Judged::Hidden } else { self.judge(&context, &settings, event).await? };
            match (judged, event.event_number) {
                (Judged::Visible(resource), number) => {
                    if number.is_none() {
                        new_visible.push(event.seq);
                    }
                    visible.push((event.clone(), resource));
                }
                (Judged::Hidden, None) => hidden.push(event.seq),
                (Judged::Hidden, Some(_)) => withheld.push(event.seq),
            }
        }
        let numbers = {
            let mut transaction = self.store.begin_derived().await?;
            let Some(numbers) = outbox::number(&mut transaction, id, &self.subscriptions.node, millis(self.clock.now()), &new_visible, &hidden).await? else {
                // The lease ran out and another gateway took the subscription over.
                return Ok(());
            };
            if !withheld.is_empty() {
                // Numbered earlier, unreadable now: never sent, and not retried.
                outbox::withhold(&mut transaction, id, &withheld).await?;
            }
            transaction.commit().await?;
            numbers
        };
        let mut next = new_visible.iter().zip(numbers);
        let mut events = Vec::new();
        let mut seqs = Vec::new();
        let mut focuses = Vec::new();
        for (event, resource) in visible {
            let number = match event.event_number {
                Some(number) => number,
                None => match next.next() {
                    Some((_, number)) => number,
                    None => continue,
                },
            };
            seqs.push(event.seq);
            let focus = format!("{}/{}", event.resource_type, event.resource_id);
            if let Some(resource) = &resource {
                focuses.push(resource.clone());
            }
            events.push((event.occurred.clone(), NotifiedEvent {
                number,
                timestamp: event.occurred.clone(),
                focus,
                action: event.action.clone(),
                resource: if settings.payload == Payload::FullResource { resource } else { None },
            }));
        }
        let total = state.events_since_start + i64::try_from(new_visible.len()).unwrap_or_default();
        if events.is_empty() {
            let heartbeat_due = state.heartbeat_ms > 0 && state.last_sent_at + state.heartbeat_ms <= now;
            if heartbeat_due {
                let sent = self.send(&state, &settings, NotificationType::Heartbeat, &[], total).await;
                return self.settle(&state, sent, &[]).await;
            }
            return self.settle(&state, Err(NOTHING_TO_SEND.to_owned()), &[]).await;
        }
        let occurred: Vec<String> = events.iter().map(|(o, _)| o.clone()).collect();
        let notified: Vec<NotifiedEvent> = events.into_iter().map(|(_, e)| e).collect();
        // Recorded before it leaves: a delivery the trail cannot hold is not made.
        if let Err(error) = self.record_delivery(&context, &state, &notified, &focuses).await {
            return self.settle(&state, Err(format!("the audit trail could not record the delivery ({})", error.status().as_u16())), &[]).await;
        }
        let sent = self.send(&state, &settings, NotificationType::EventNotification, &notified, total).await;
        if sent.is_ok() {
            for when in &occurred {
                if let Ok(when) = chrono::DateTime::parse_from_rfc3339(when) {
                    let seconds = (self.clock.now() - when.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0;
                    self.metrics.notification_latency(&state.channel, seconds.max(0.0));
                }
            }
        }
        self.settle(&state, sent, &seqs).await
    }

    /// Records the outcome of a send: delivered (and `active`), or a failure with its backoff.
    async fn settle(&self, state: &StateRow, sent: std::result::Result<(), String>, seqs: &[i64]) -> Result<()> {
        let now = millis(self.clock.now());
        let mut transaction = self.store.begin_derived().await?;
        let connection: &mut store::Db = &mut transaction;
        match sent {
            Ok(()) => {
                self.metrics.notification(&state.channel, "delivered");
                outbox::delivered(connection, &state.id, seqs, now).await?;
            }
            Err(why) if why == NOT_BOUND || why == NOTHING_TO_SEND => {}
            Err(why) => {
                self.metrics.notification(&state.channel, "failed");
                let config = &self.config.subscriptions;
                let failures = state.failures + 1;
                let exponent = u32::try_from(failures - 1).unwrap_or(u32::MAX).min(20);
                let delay = config.retry_base_ms.saturating_mul(1_u64 << exponent).min(config.retry_max_ms);
                let status = if failures >= i64::from(config.failures_before_error) { "error" } else { state.status.as_str() };
                tracing::info!(target: "renraku::notify", subscription = %state.id, failures, %why, "delivery failed");
                outbox::failed(connection, &state.id, failures, now + i64::try_from(delay).unwrap_or(i64::MAX / 2), status, &why).await?;
            }
        }
        outbox::release(connection, &state.id, &self.subscriptions.node).await?;
        transaction.commit().await
    }

    /// The owner's context at the subscription's base.
    fn owner_context(&self, state: &StateRow, owner: &Owner) -> Context {
        let scopes = crate::identity::scopes::Scopes::parse(&owner.scopes).unwrap_or_default();
        Context {
            tenant: state.tenant.clone(),
            principal: Principal::Authenticated(Box::new(Authenticated {
                actor: owner.actor.clone(),
                scopes,
                patient: owner.patient.clone(),
                client_id: owner.client_id.clone(),
            })),
            base_url: self.config.base_url(&state.tenant),
            request_id: format!("notify-{}", uuid::Uuid::new_v4()),
            lenient: false,
            client_address: None,
            purpose_of_use: None,
        }
    }

    /// Whether the owner may learn of `event` now, and what a read would return: a search by
    /// `_id` with the subscription's query under the owner's search grant (a deletion: the
    /// deleted resource under its read grant, for subscriptions without filters).
    async fn judge(&self, context: &Context, settings: &Settings, event: &EventRow) -> Result<Judged> {
        let mut connection = self.store.connection().await?;
        let resource_type = event.resource_type.as_str();
        let decided = |result: Result<crate::policy::Grant>| match result {
            Ok(grant) => Ok(Some(grant)),
            Err(Error::Forbidden(_) | Error::Unauthorized(_) | Error::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        };
        if event.action == "delete" {
            let only_topic_query = settings.filters.iter().all(|(name, _)| name == "_interaction");
            let Some(grant) = decided(self.decide(&mut connection, context, Interaction::Read, Some(resource_type)).await)? else { return Ok(Judged::Hidden) };
            let row = store::current(&mut connection, &grant, resource_type, &event.resource_id).await?;
            return Ok(match row {
                Some(row) if row.deleted && only_topic_query => Judged::Visible(None),
                _ => Judged::Hidden,
            });
        }
        let Some(grant) = decided(self.decide(&mut connection, context, Interaction::Search, Some(resource_type)).await)? else { return Ok(Judged::Hidden) };
        let mut parsed = match crate::search::parse::parse(&self.search_params, resource_type, &settings.query, false, &context.base_url, &self.config.limits) {
            Ok(parsed) => parsed,
            Err(_) => return Ok(Judged::Hidden),
        };
        parsed.criteria.push(Criterion::Id(vec![event.resource_id.clone()]));
        let page = query::search(&mut connection, &grant, &parsed.query(resource_type, 1)).await?;
        let Some(content) = page.rows.into_iter().next().and_then(|row| row.content) else { return Ok(Judged::Hidden) };
        let resource: Value = serde_json::from_str(&content)?;
        if settings.topic.ends_with("/consent-status-changed") && event.action == "update" {
            // Only a change of status is this topic's event.
            let read = decided(self.decide(&mut connection, context, Interaction::Vread, Some(resource_type)).await)?;
            if let Some(read) = read {
                let current = store::version(&mut connection, &read, resource_type, &event.resource_id, event.version_id).await?;
                let before = store::version(&mut connection, &read, resource_type, &event.resource_id, event.version_id - 1).await?;
                let status_of = |row: Option<store::VersionRow>| {
                    row.and_then(|r| r.content).and_then(|c| serde_json::from_str::<Value>(&c).ok()).and_then(|v| v.get("status").cloned())
                };
                if status_of(current) == status_of(before) {
                    return Ok(Judged::Hidden);
                }
            }
        }
        Ok(Judged::Visible(Some(resource)))
    }

    /// Sends one notification on the subscription's channel.
    async fn send(&self, state: &StateRow, settings: &Settings, kind: NotificationType, events: &[NotifiedEvent], total: i64) -> std::result::Result<(), String> {
        let base_url = self.config.base_url(&state.tenant);
        let status = status_of(&state.topic, &base_url, &state.id, &state.status, total, None);
        let bundle = topic::notification(&status, kind, events, settings.payload, &self.now());
        let text = bundle.to_string();
        match &settings.channel {
            Channel::RestHook { endpoint, headers } => {
                let url = url::Url::parse(endpoint).map_err(|e| format!("endpoint: {e}"))?;
                endpoint_allowed(&self.config.subscriptions, &url)?;
                let timeout = settings.timeout_seconds.map_or(self.config.subscriptions.timeout_ms, |s| s * 1_000);
                let mut request = self
                    .subscriptions
                    .http
                    .post(url)
                    .timeout(std::time::Duration::from_millis(timeout))
                    .header("content-type", "application/fhir+json")
                    .body(text);
                for (name, value) in headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let response = request.send().await.map_err(|e| format!("the endpoint could not be reached: {}", without_url(&e)))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("the endpoint answered {}", response.status().as_u16()))
                }
            }
            Channel::Websocket => {
                let now = millis(self.clock.now());
                let mut reached = 0;
                for binding in self.subscriptions.bound(&state.id, now) {
                    if self.binding_token_live(&binding).await && binding.sender.send(text.clone()).is_ok() {
                        reached += 1;
                    }
                }
                if reached == 0 {
                    return Err(NOT_BOUND.to_owned());
                }
                Ok(())
            }
        }
    }

    /// Whether the access token a websocket binding came from is still valid.
    async fn binding_token_live(&self, binding: &crate::runtime::subscriptions::Binding) -> bool {
        let Ok(mut connection) = self.store.connection().await else { return false };
        match store::auth::access_token(&mut connection, &binding.token_digest).await {
            Ok(Some(row)) => !row.revoked && row.expires_at > self.now(),
            _ => false,
        }
    }

    /// Audits a delivery as what it is: the owner learning of these resources (with
    /// disclosure records for another municipality's persons, as for a read).
    async fn record_delivery(&self, context: &Context, state: &StateRow, events: &[NotifiedEvent], focuses: &[Value]) -> Result<()> {
        let mut audit = self.audit(context, Interaction::Read, "notification");
        audit.entity(Entity::Resource(format!("Subscription/{}", state.id)));
        for event in events {
            audit.entity(Entity::Resource(event.focus.clone()));
        }
        let returned: Vec<Value> = focuses.to_vec();
        self.finish_read(context, audit, Ok(returned), |resources| resources.iter().collect()).await?;
        Ok(())
    }

    /// The Subscription `id` as the caller may read it (404 otherwise), with its row.
    async fn readable_subscription(&self, context: &Context, id: &str) -> Result<(StateRow, Settings)> {
        let mut connection = self.store.connection().await?;
        let grant = self.decide(&mut connection, context, Interaction::Read, Some("Subscription")).await?;
        let row = store::current(&mut connection, &grant, "Subscription", id).await?;
        let missing = || Error::NotFound(format!("Subscription/{id} is not known"));
        if row.filter(|r| !r.deleted).is_none() {
            return Err(missing());
        }
        let state = outbox::state(&mut connection, id).await?.ok_or_else(missing)?;
        let settings = serde_json::from_str(&state.settings)?;
        Ok((state, settings))
    }

    /// `GET [base]/Subscription/[id]/$status`
    pub async fn subscription_status(&self, context: &Context, id: &str) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Read, "$status");
        audit.requested(Entity::Resource(format!("Subscription/{id}")));
        let result = self.subscription_status_unaudited(context, id).await;
        self.finish_read(context, audit, result, |_| Vec::new()).await
    }

    async fn subscription_status_unaudited(&self, context: &Context, id: &str) -> Result<Value> {
        let (state, settings) = self.readable_subscription(context, id).await?;
        let status = status_of(&state.topic, &context.base_url, id, &state.status, state.events_since_start, Some(&state.last_error));
        let parameters = topic::status_parameters(&status, NotificationType::QueryStatus, &[], settings.payload);
        Ok(json!({
            "resourceType": "Bundle", "type": "searchset", "total": 1,
            "entry": [{ "fullUrl": format!("urn:uuid:{}", parameters.get("id").and_then(Value::as_str).unwrap_or_default()), "resource": parameters, "search": { "mode": "match" } }]
        }))
    }

    /// `GET [base]/Subscription/[id]/$events?eventsSinceNumber=&eventsUntilNumber=&content=`:
    /// the numbered events again, each judged now (one the caller may no longer read is left
    /// out).
    pub async fn subscription_events(&self, context: &Context, id: &str, query: &[(String, String)]) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Read, "$events");
        audit.requested(Entity::Resource(format!("Subscription/{id}")));
        let result = self.subscription_events_unaudited(context, id, query).await;
        self.finish_read(context, audit, result, |(_, resources)| resources.iter().collect()).await.map(|(bundle, _)| bundle)
    }

    async fn subscription_events_unaudited(&self, context: &Context, id: &str, query: &[(String, String)]) -> Result<(Value, Vec<Value>)> {
        let (state, settings) = self.readable_subscription(context, id).await?;
        let number = |name: &str| -> Result<Option<i64>> {
            match query.iter().find(|(n, _)| n == name) {
                None => Ok(None),
                Some((_, value)) => value.parse::<i64>().map(Some).map_err(|_| Error::bad_request_at(format!("{name} must be an integer"), name.to_owned())),
            }
        };
        let since = number("eventsSinceNumber")?.unwrap_or(1).max(1);
        let until = number("eventsUntilNumber")?.unwrap_or(state.events_since_start);
        let payload = match query.iter().find(|(n, _)| n == "content").map(|(_, v)| v.as_str()) {
            None => settings.payload,
            Some("empty") => Payload::Empty,
            Some("id-only") => Payload::IdOnly,
            Some("full-resource") => Payload::FullResource,
            Some(other) => return Err(Error::bad_request_at(format!("content '{other}' is not empty, id-only or full-resource"), "content")),
        };
        let mut connection = self.store.connection().await?;
        let rows = outbox::numbered(&mut connection, id, since, until.min(since.saturating_add(MAX_EVENTS_PAGE - 1)), MAX_EVENTS_PAGE).await?;
        drop(connection);
        let mut events = Vec::new();
        let mut returned = Vec::new();
        for row in rows {
            let Some(number) = row.event_number else { continue };
            let Judged::Visible(resource) = self.judge(context, &settings, &row).await? else { continue };
            if let Some(resource) = &resource {
                returned.push(resource.clone());
            }
            events.push(NotifiedEvent {
                number,
                timestamp: row.occurred.clone(),
                focus: format!("{}/{}", row.resource_type, row.resource_id),
                action: row.action.clone(),
                resource: if payload == Payload::FullResource { resource } else { None },
            });
        }
        let status = status_of(&state.topic, &context.base_url, id, &state.status, state.events_since_start, None);
        let bundle = topic::notification(&status, NotificationType::QueryEvent, &events, payload, &self.now());
        Ok((bundle, returned))
    }

    /// `POST|GET [base]/Subscription/[id]/$get-ws-binding-token`: a token a websocket client
    /// binds with, living no longer than `access_token` (the caller's, by which the HTTP
    /// layer authenticated it).
    pub async fn websocket_binding_token(&self, context: &Context, id: &str, access_token: &str) -> Result<Value> {
        let mut audit = self.audit(context, Interaction::Read, "$get-ws-binding-token");
        audit.requested(Entity::Resource(format!("Subscription/{id}")));
        let result = self.websocket_binding_token_unaudited(context, id, access_token).await;
        self.finish_read(context, audit, result, |_| Vec::new()).await
    }

    async fn websocket_binding_token_unaudited(&self, context: &Context, id: &str, access_token: &str) -> Result<Value> {
        let (state, settings) = self.readable_subscription(context, id).await?;
        if settings.channel != Channel::Websocket || state.status == "off" {
            return Err(refuse("only an active websocket subscription has binding tokens", "Subscription.channel.type"));
        }
        // Events are judged under the principal that wrote the subscription: only a token of
        // the same client, with the same scopes and context, may listen to them.
        let owner: Owner = serde_json::from_str(&state.owner)?;
        let same_principal = match &context.principal {
            Principal::Authenticated(caller) => {
                caller.actor == owner.actor && caller.client_id == owner.client_id && caller.scopes.to_string() == owner.scopes && caller.patient == owner.patient
            }
            _ => false,
        };
        if !same_principal {
            return Err(Error::Forbidden("only the client (and scopes) that wrote this Subscription may bind to it; write it again (PUT) to take it over".into()));
        }
        let token_digest = digest(access_token);
        let mut connection = self.store.connection().await?;
        let access = store::auth::access_token(&mut connection, &token_digest).await?.ok_or_else(|| Error::Unauthorized("the access token is invalid, expired or revoked".into()))?;
        let access_expires = chrono::DateTime::parse_from_rfc3339(&access.expires_at).map(|t| t.timestamp_millis()).unwrap_or(0);
        let now = millis(self.clock.now());
        let seconds = i64::try_from(self.config.subscriptions.binding_token_seconds).unwrap_or(300);
        let expires_at = (now + seconds * 1_000).min(access_expires);
        drop(connection);
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut transaction = self.store.begin().await?;
        outbox::put_binding(&mut transaction, &digest(&token), id, &context.tenant, &token_digest, expires_at).await?;
        transaction.commit().await?;
        let expiration = chrono::DateTime::from_timestamp_millis(expires_at).map(crate::fhir::dates::format_instant).unwrap_or_default();
        let websocket_url = websocket_url(&context.base_url);
        Ok(json!({
            "resourceType": "Parameters",
            "parameter": [
                { "name": "token", "valueString": token },
                { "name": "expiration", "valueDateTime": expiration },
                { "name": "subscription", "valueString": format!("{}/Subscription/{id}", context.base_url) },
                { "name": "websocket-url", "valueUrl": websocket_url }
            ]
        }))
    }

    /// The subscription a websocket client's binding token binds to at `tenant`, with the
    /// binding's expiry and the access token's digest, and the handshake to send it.
    pub async fn bind_websocket(&self, tenant: &str, token: &str) -> Result<(String, String, i64, String)> {
        let mut connection = self.store.connection().await?;
        let now = millis(self.clock.now());
        let refused = || Error::Unauthorized("the binding token is invalid or expired".into());
        let (id, token_digest, expires_at) = outbox::binding(&mut connection, &digest(token), tenant, now).await?.ok_or_else(refused)?;
        let state = outbox::state(&mut connection, &id).await?.filter(|s| s.status != "off").ok_or_else(refused)?;
        let access = store::auth::access_token(&mut connection, &token_digest).await?.ok_or_else(refused)?;
        if access.revoked || access.expires_at <= self.now() {
            return Err(refused());
        }
        let settings: Settings = serde_json::from_str(&state.settings)?;
        let base_url = self.config.base_url(tenant);
        let status = status_of(&state.topic, &base_url, &id, "active", state.events_since_start, None);
        let handshake = topic::notification(&status, NotificationType::Handshake, &[], settings.payload, &self.now()).to_string();
        Ok((id, token_digest, expires_at, handshake))
    }
}

/// A notification's status for the subscription `subscription` of `topic`.
fn status_of<'a>(topic: &'a str, base_url: &'a str, subscription: &'a str, status: &'a str, events_since_start: i64, error: Option<&'a str>) -> StatusOf<'a> {
    StatusOf { base_url, subscription, topic, status, events_since_start, error }
}

/// What `send` answers when a websocket subscription has no client bound here: not a
/// failure, the events wait.
const NOT_BOUND: &str = "no websocket client is bound";

/// What `settle` is told when judging left nothing to send: not a failure.
const NOTHING_TO_SEND: &str = "nothing to send";

/// The websocket endpoint of a base: `ws(s)://…/{tenant}/fhir/websocket`.
pub fn websocket_url(base_url: &str) -> String {
    let url = base_url.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
    format!("{url}/websocket")
}

/// Tokens are kept by their SHA-256 (lower-case hex), as access tokens are.
fn digest(token: &str) -> String {
    crate::fhir::binary::digest(token.as_bytes())
}

/// A reqwest error's text without the URL (which may carry a secret in its query).
fn without_url(error: &reqwest::Error) -> String {
    let error = error.to_string();
    error.split(" for url").next().unwrap_or_default().to_owned()
}

/// The reference a Subscription's owner is stamped with; only practitioners and system
/// clients subscribe.
fn owner_reference(principal: &Principal) -> Result<Option<String>> {
    match principal {
        Principal::Authenticated(authenticated) => match &authenticated.actor {
            Actor::Practitioner { role, .. } => Ok(Some(format!("PractitionerRole/{role}"))),
            Actor::System { organization, .. } => Ok(Some(format!("Organization/{organization}"))),
            // The test suite's engine tests store Subscriptions too (owned by nobody in
            // particular); their deliveries act for the same unrestricted principal.
            #[cfg(feature = "test-support")]
            Actor::TestUnrestricted => Ok(None),
            _ => Err(Error::Forbidden("only practitioners and system clients subscribe to notifications".into())),
        },
        _ => Err(Error::Forbidden("only practitioners and system clients subscribe to notifications".into())),
    }
}

/// Whether a rest-hook endpoint may be used: `https`, or `http` to a host of
/// `http_hosts`; no credentials in the URL; an address literal must be public unless the host
/// is one of `private_hosts` (names are judged when they are resolved, at every delivery).
pub fn endpoint_allowed(config: &crate::config::SubscriptionSettings, url: &url::Url) -> std::result::Result<(), String> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let listed = |hosts: &[String]| hosts.iter().any(|h| h.eq_ignore_ascii_case(&host));
    match url.scheme() {
        "https" => {}
        "http" if listed(&config.http_hosts) => {}
        "http" => return Err(format!("the endpoint must use https ('{host}' is not allowed plain http)")),
        other => return Err(format!("the endpoint's scheme '{other}' is not http(s)")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the endpoint may not carry credentials: use channel.header".into());
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = literal.parse::<std::net::IpAddr>() {
        if crate::runtime::subscriptions::is_private(address) && !listed(&config.private_hosts) {
            return Err(format!("the endpoint's address {address} is not public"));
        }
    }
    if host.is_empty() {
        return Err("the endpoint has no host".into());
    }
    Ok(())
}
