//! Notifications (issue #17): topic-based Subscriptions delivered to a real HTTP receiver
//! and a real websocket client that the test starts, each event judged under the
//! subscriber's access at the moment it is delivered — in the demo's setting: the doctor of
//! 伊那市 on 山田 太郎's support team (a person of 南箕輪村) subscribes to his board.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::both_backends;
use crate::policy::Caller;
use crate::support::{Backend, Reply, Server};

both_backends!(
    rest_hook_notifications_carry_only_what_the_subscriber_may_read_now,
    a_failing_receiver_is_retried_marked_error_and_recovers,
    subscriptions_the_server_would_not_honour_are_refused,
    websocket_clients_bind_with_a_token_and_receive_replies,
    an_acknowledged_write_is_notified_after_a_crash,
    every_topic_notifies_its_own_events,
    redirects_and_names_of_private_addresses_are_not_followed,
);

const PERSON: &str = "demo-yamada-taro";
const KIND: &str = "https://renraku.example.jp/fhir/CodeSystem/communication-kind";
const TOPICS: &str = "https://renraku.example.jp/fhir/SubscriptionTopic/";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// Where the receiver hands what it was sent, and how many requests it still fails.
type ReceiverState = (tokio::sync::mpsc::UnboundedSender<(HeaderMap, Value)>, Arc<AtomicUsize>);

/// A receiver of rest-hook notifications on a loopback port: what it was sent (headers and
/// Bundle) arrives on a channel; it answers 500 while `failing` is above zero.
pub struct Receiver {
    pub url: String,
    notifications: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Value)>>,
    pub failing: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (sender, notifications) = tokio::sync::mpsc::unbounded_channel();
        let failing = Arc::new(AtomicUsize::new(0));
        let state = (sender, failing.clone());
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State((sender, failing)): axum::extract::State<ReceiverState>,
                     headers: HeaderMap,
                     body: String| async move {
                        if failing.load(Ordering::SeqCst) > 0 {
                            failing.fetch_sub(1, Ordering::SeqCst);
                            return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        let bundle: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        let _ = sender.send((headers, bundle));
                        axum::http::StatusCode::OK
                    },
                ),
            )
            // An endpoint that has moved: a notification must not follow it.
            .route("/moved", axum::routing::post(|| async { (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", "/hook")]) }))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().expect("an address").port());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, notifications: tokio::sync::Mutex::new(notifications), failing }
    }

    /// The next notification (waiting up to ten seconds).
    pub async fn next(&self) -> (HeaderMap, Value) {
        let mut notifications = self.notifications.lock().await;
        tokio::time::timeout(Duration::from_secs(10), notifications.recv()).await.expect("a notification within 10 s").expect("the receiver runs")
    }

    /// Whether a notification arrives within `wait`.
    pub async fn quiet_for(&self, wait: Duration) -> bool {
        let mut notifications = self.notifications.lock().await;
        tokio::time::timeout(wait, notifications.recv()).await.is_err()
    }
}

/// The SubscriptionStatus parameter `name` of a notification Bundle.
pub fn status_value(bundle: &Value, name: &str) -> String {
    let parameters = &bundle["entry"][0]["resource"]["parameter"];
    let found = parameters.as_array().into_iter().flatten().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null);
    ["valueCode", "valueString", "valueCanonical"].iter().find_map(|k| found[*k].as_str().map(str::to_owned)).unwrap_or_default()
}

/// The notification events of a Bundle: (event number, focus reference).
pub fn events(bundle: &Value) -> Vec<(i64, String)> {
    let parameters = &bundle["entry"][0]["resource"]["parameter"];
    parameters
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "notification-event")
        .map(|event| {
            let parts = event["part"].as_array().cloned().unwrap_or_default();
            let part = |name: &str| parts.iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null);
            let number = part("event-number")["valueString"].as_str().and_then(|n| n.parse().ok()).unwrap_or(-1);
            let focus = part("focus")["valueReference"]["reference"].as_str().unwrap_or_default().to_owned();
            (number, focus)
        })
        .collect()
}

pub fn subscription(topic: &str, filters: &[&str], channel: Value) -> Value {
    let filters: Vec<Value> = filters.iter().map(|f| json!({ "url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f })).collect();
    json!({
        "resourceType": "Subscription", "status": "requested", "reason": "山田 太郎さんの掲示板",
        "criteria": format!("{TOPICS}{topic}"),
        "_criteria": { "extension": filters },
        "channel": channel
    })
}

pub fn rest_hook(endpoint: &str, content: &str) -> Value {
    json!({
        "type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
        "_payload": { "extension": [{ "url": format!("{BACKPORT}backport-payload-content"), "valueCode": content }] },
        "header": ["Authorization: Bearer hook-secret"]
    })
}

pub fn board_message(kind: Option<&str>, text: &str, parent: Option<&str>) -> Value {
    let mut message = json!({
        "resourceType": "Communication", "status": "completed",
        "subject": { "reference": format!("Patient/{PERSON}") },
        "sender": { "reference": "PractitionerRole/demo-role-cm-suzuki" },
        "sent": "2026-12-01T09:00:00+09:00",
        "payload": [{ "contentString": text }]
    });
    if let Some(kind) = kind {
        message["category"] = json!([{ "coding": [{ "system": KIND, "code": kind }] }]);
    }
    if let Some(parent) = parent {
        message["inResponseTo"] = json!([{ "reference": format!("Communication/{parent}") }]);
    }
    message
}

async fn created(reply: Reply) -> String {
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text());
    reply.json()["id"].as_str().expect("an id").to_owned()
}

/// Waits until no event is waiting for delivery (every pending one was judged and sent or
/// dropped).
async fn drained(server: &Server) {
    let mut connection = server.database_directly().await;
    for _ in 0..200 {
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subscription_events WHERE delivered = 0")
            .fetch_one(&mut connection)
            .await
            .expect("the outbox can be counted");
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox did not drain");
}

fn fast_retries(config: &mut renraku::Config) {
    config.demo = true;
    config.subscriptions.retry_base_ms = 50;
    config.subscriptions.retry_max_ms = 200;
    config.subscriptions.failures_before_error = 2;
    config.subscriptions.poll_ms = 50;
}

async fn rest_hook_notifications_carry_only_what_the_subscriber_may_read_now(backend: Backend) {
    let server = Server::start_with(backend, fast_retries).await;
    let receiver = Receiver::start().await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let hospital_ehr = Caller::demo("ina", "demo-ehr-ina");
    let admin = Caller::demo("minamiminowa", "demo-admin-minamiminowa");
    let auditor = Caller::demo("minamiminowa", "demo-auditor-minamiminowa");

    // The doctor subscribes to the person's board, with the full resources.
    let asked = subscription("board-message", &[&format!("Communication?subject=Patient/{PERSON}")], rest_hook(&receiver.url, "full-resource"));
    let reply = doctor.post(&server, &asked).await;
    let stored = reply.json();
    let id = created(reply).await;
    assert_eq!(stored["status"], "active");
    let owner = stored["extension"].as_array().into_iter().flatten().find(|e| e["url"].as_str().is_some_and(|u| u.ends_with("subscription-owner"))).cloned();
    assert_eq!(owner.map(|o| o["valueReference"]["reference"].clone()), Some(json!("PractitionerRole/demo-role-dr-tanaka")));

    // The endpoint is greeted first, with the subscription's header.
    let (headers, handshake) = receiver.next().await;
    assert_eq!(headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer hook-secret"));
    assert_eq!(handshake["type"], "history");
    assert_eq!(status_value(&handshake, "type"), "handshake");

    // A Subscription is its owner's alone: the hospital's own EHR, at the same base, neither
    // reads nor finds it.
    hospital_ehr.get(&server, &format!("Subscription/{id}")).await.expect(404);
    assert!(hospital_ehr.search_ids(&server, "Subscription").await.is_empty());
    assert_eq!(doctor.search_ids(&server, "Subscription").await, vec![format!("Subscription/{id}")]);

    // A board post: event 1, with the post as the doctor would read it.
    let post = created(care_manager.post(&server, &board_message(Some("board"), "デイサービスを週2回に増やします。", None)).await).await;
    let (_, notification) = receiver.next().await;
    assert_eq!(status_value(&notification, "type"), "event-notification");
    assert_eq!(status_value(&notification, "events-since-subscription-start"), "1");
    assert_eq!(events(&notification), vec![(1, format!("http://renraku.test/ina/fhir/Communication/{post}"))]);
    assert_eq!(notification["entry"][1]["resource"]["id"], post.as_str());
    assert_eq!(notification["entry"][1]["resource"]["payload"][0]["contentString"], "デイサービスを週2回に増やします。");

    // A Communication that is not a board or chat item is not this topic's; a chat message is.
    created(care_manager.post(&server, &board_message(None, "電話連絡の記録", None)).await).await;
    let chat = created(care_manager.post(&server, &board_message(Some("chat"), "明日伺います。", None)).await).await;
    let (_, notification) = receiver.next().await;
    assert_eq!(events(&notification), vec![(2, format!("http://renraku.test/ina/fhir/Communication/{chat}"))]);

    // Consent withdrawn: the doctor learns nothing of the next post — not even that there
    // was one (the event is not numbered).
    let mut consent = care_manager.get(&server, "Consent/demo-consent-yamada").await.json();
    consent["status"] = json!("inactive");
    care_manager.put(&server, &consent).await.expect(200);
    created(care_manager.post(&server, &board_message(Some("board"), "同意撤回中の投稿", None)).await).await;
    drained(&server).await;
    assert!(receiver.quiet_for(Duration::from_millis(300)).await);
    consent["status"] = json!("active");
    care_manager.put(&server, &consent).await.expect(200);
    let after = created(care_manager.post(&server, &board_message(Some("board"), "同意が戻りました。", None)).await).await;
    let (_, notification) = receiver.next().await;
    assert_eq!(events(&notification), vec![(3, format!("http://renraku.test/ina/fhir/Communication/{after}"))]);

    // An agreement ended: the doctor of 伊那市 hears nothing of 南箕輪村's person.
    let operator = Caller::demo("ina", "demo-operator");
    let agreements = operator.search_ids(&server, "Contract").await;
    let agreement_path = agreements.first().expect("the demo's agreement").clone();
    let mut agreement = operator.get(&server, &agreement_path).await.json();
    agreement["status"] = json!("terminated");
    operator.put(&server, &agreement).await.expect(200);
    created(care_manager.post(&server, &board_message(Some("board"), "協定終了中の投稿", None)).await).await;
    drained(&server).await;
    assert!(receiver.quiet_for(Duration::from_millis(300)).await);
    agreement["status"] = json!("executed");
    operator.put(&server, &agreement).await.expect(200);

    // Off the team: nothing either.
    let mut team = admin.get(&server, "CareTeam/demo-team-yamada").await.json();
    let kept: Vec<Value> = team["participant"].as_array().into_iter().flatten().filter(|p| p["member"]["reference"] != "PractitionerRole/demo-role-dr-tanaka").cloned().collect();
    team["participant"] = json!(kept);
    admin.put(&server, &team).await.expect(200);
    created(care_manager.post(&server, &board_message(Some("board"), "チーム外の医師には届かない", None)).await).await;
    drained(&server).await;
    assert!(receiver.quiet_for(Duration::from_millis(300)).await);

    // $status counts what was delivered; $events replays from a number (judged now: the
    // doctor, off the team, gets the numbers but no focus he may no longer read).
    let status = doctor.get(&server, &format!("Subscription/{id}/$status")).await;
    status.expect(200);
    let status = status.json();
    let parameters = &status["entry"][0]["resource"];
    let value = |name: &str| parameters["parameter"].as_array().into_iter().flatten().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(value("events-since-subscription-start")["valueString"], "3");
    assert_eq!(value("status")["valueCode"], "active");
    hospital_ehr.get(&server, &format!("Subscription/{id}/$status")).await.expect(404);
    let replay = doctor.get(&server, &format!("Subscription/{id}/$events?eventsSinceNumber=2")).await;
    replay.expect(200);
    assert!(events(&replay.json()).is_empty(), "nothing the doctor may no longer read is replayed");
    team["participant"].as_array_mut().expect("participants").push(json!({ "member": { "reference": "PractitionerRole/demo-role-dr-tanaka" } }));
    admin.put(&server, &team).await.expect(200);
    let replay = doctor.get(&server, &format!("Subscription/{id}/$events?eventsSinceNumber=2&content=id-only")).await;
    replay.expect(200);
    let replayed = replay.json();
    assert_eq!(events(&replayed).iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(status_value(&replayed, "type"), "query-event");

    // Every delivery is audited; one to another municipality's professional is also a
    // disclosure in the person's municipality's chain.
    let trail = auditor.get(&server, "AuditEvent?subtype=notification").await;
    trail.expect(200);
    assert!(trail.json()["total"].as_i64().unwrap_or(0) >= 3, "{}", trail.text());

    // Set off, it gets nothing more.
    let mut off = doctor.get(&server, &format!("Subscription/{id}")).await.json();
    off["status"] = json!("off");
    doctor.put(&server, &off).await.expect(200);
    created(care_manager.post(&server, &board_message(Some("board"), "停止後の投稿", None)).await).await;
    assert!(receiver.quiet_for(Duration::from_millis(500)).await);
}

async fn a_failing_receiver_is_retried_marked_error_and_recovers(backend: Backend) {
    let server = Server::start_with(backend, |config| {
        fast_retries(config);
        config.metrics_token = Some("metrics-secret".into());
    })
    .await;
    let receiver = Receiver::start().await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    receiver.failing.store(4, Ordering::SeqCst);
    let asked = subscription("care-team-changed", &[&format!("CareTeam?patient=Patient/{PERSON}")], rest_hook(&receiver.url, "id-only"));
    let id = created(doctor.post(&server, &asked).await).await;
    let status_of = || async {
        let reply = doctor.get(&server, &format!("Subscription/{id}/$status")).await;
        let bundle = reply.json();
        status_value(&bundle, "status")
    };
    // After two failures in a row the status is `error`…
    let mut seen_error = false;
    for _ in 0..100 {
        if status_of().await == "error" {
            seen_error = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_error, "the subscription reports error after repeated failures");
    // …and `active` again once the receiver answers (the handshake finally arrives).
    let (_, handshake) = receiver.next().await;
    assert_eq!(status_value(&handshake, "type"), "handshake");
    for _ in 0..100 {
        if status_of().await == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of().await, "active");
    assert_eq!(receiver.failing.load(Ordering::SeqCst), 0, "every failure was retried");

    // A team change is then delivered (id-only: the focus, no resource).
    let admin = Caller::demo("minamiminowa", "demo-admin-minamiminowa");
    let mut team = admin.get(&server, "CareTeam/demo-team-yamada").await.json();
    team["name"] = json!("山田 太郎さんの支援チーム（改）");
    admin.put(&server, &team).await.expect(200);
    let (_, notification) = receiver.next().await;
    assert_eq!(events(&notification), vec![(1, "http://renraku.test/ina/fhir/CareTeam/demo-team-yamada".to_owned())]);
    assert!(notification["entry"][1].get("resource").is_none());
    assert_eq!(notification["entry"][1]["fullUrl"], "http://renraku.test/ina/fhir/CareTeam/demo-team-yamada");

    // A quiet subscription with a heartbeat period hears heartbeats (empty payload: no focus).
    let mut quiet = subscription("consent-status-changed", &[&format!("Consent?patient=Patient/{PERSON}")], rest_hook(&receiver.url, "empty"));
    quiet["channel"]["extension"] = json!([{ "url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1 }]);
    created(doctor.post(&server, &quiet).await).await;
    assert_eq!(status_value(&receiver.next().await.1, "type"), "handshake");
    let (_, heartbeat) = receiver.next().await;
    assert_eq!(status_value(&heartbeat, "type"), "heartbeat");
    assert_eq!(heartbeat["entry"].as_array().map(Vec::len), Some(1));

    // What operators watch: deliveries and failures per channel, latency, the outbox depth.
    let metrics = server.request(Method::GET, "/metrics", &[("authorization", "Bearer metrics-secret")], None).await;
    metrics.expect(200);
    let text = metrics.text();
    assert!(text.contains("renraku_notifications_total{channel=\"rest-hook\",outcome=\"failed\"} 4"), "{text}");
    assert!(text.contains("renraku_notification_latency_seconds"), "{text}");
    assert!(text.contains("renraku_notification_outbox_depth"), "{text}");
}

async fn subscriptions_the_server_would_not_honour_are_refused(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let hook = |endpoint: &str| rest_hook(endpoint, "id-only");
    let filter = format!("Communication?subject=Patient/{PERSON}");
    let cases: Vec<(&str, Value, &str)> = vec![
        ("an unknown topic", subscription("no-such-topic", &[], hook("https://ehr.example.jp/hook")), "Subscription.criteria"),
        ("a filter the topic does not offer", subscription("board-message", &["code=1234"], hook("https://ehr.example.jp/hook")), "Subscription.criteria.extension('backport-filter-criteria')"),
        ("a filter for another type", subscription("board-message", &["Observation?subject=Patient/x"], hook("https://ehr.example.jp/hook")), "Subscription.criteria.extension('backport-filter-criteria')"),
        ("the generic topic without a type", subscription("resource-changed", &[], hook("https://ehr.example.jp/hook")), "Subscription.criteria"),
        ("a malformed filter value", subscription("resource-changed", &["Observation?date=yesterday"], hook("https://ehr.example.jp/hook")), "Subscription.criteria.extension('backport-filter-criteria')"),
        ("an email channel", subscription("board-message", &[&filter], json!({ "type": "email", "endpoint": "mailto:dr@example.jp" })), "Subscription.channel.type"),
        ("plain http to a host not allowed", subscription("board-message", &[&filter], hook("http://ehr.example.jp/hook")), "Subscription.channel.endpoint"),
        ("a private address", subscription("board-message", &[&filter], hook("https://10.1.2.3/hook")), "Subscription.channel.endpoint"),
        ("credentials in the URL", subscription("board-message", &[&filter], hook("https://user:pw@ehr.example.jp/hook")), "Subscription.channel.endpoint"),
        ("an unknown payload content", subscription("board-message", &[&filter], rest_hook("https://ehr.example.jp/hook", "everything")), "Subscription.channel.payload.extension('backport-payload-content')"),
    ];
    for (what, body, expression) in cases {
        let reply = doctor.post(&server, &body).await;
        assert_eq!(reply.status.as_u16(), 422, "{what}: {}", reply.text());
        assert_eq!(reply.issue_expressions(), [expression], "{what}");
    }
    // The generic topic with a type and a filter is fine; a municipal administrator (no
    // clinical content) does not subscribe; a Subscription is not patched.
    let generic = subscription("resource-changed", &["Observation?patient=Patient/demo-yamada-taro&_interaction=create"], hook("https://ehr.example.jp/hook"));
    let id = created(doctor.post(&server, &generic).await).await;
    let from_minamiminowa = subscription("board-message", &[&format!("Communication?subject=Patient/{PERSON}&sender-municipality=203858")], hook("https://ehr.example.jp/hook"));
    created(doctor.post(&server, &from_minamiminowa).await).await;
    let admin = Caller::demo("minamiminowa", "demo-admin-minamiminowa");
    admin.post(&server, &generic).await.expect(403);
    let patch = json!([{ "op": "replace", "path": "/channel/endpoint", "value": "https://elsewhere.example.jp/hook" }]);
    let reply = server
        .request(
            Method::PATCH,
            &format!("/ina/fhir/Subscription/{id}"),
            &[("authorization", "Bearer demo-doctor-ina"), ("content-type", "application/json-patch+json")],
            Some(patch.to_string().into_bytes()),
        )
        .await;
    reply.expect(422);

    // A Subscription does not hold up the deletion of its owner's directory entry (which the
    // administrator cannot see it refers to); it then delivers nothing.
    let nurse = crate::policy::practitioner(&server, "ina", "sub-owner", "sub-office", "user/*.cruds").await;
    created(nurse.post(&server, &generic).await).await;
    let operator = Caller::demo("ina", "demo-operator");
    operator.delete(&server, "PractitionerRole/role-sub-owner").await.expect(204);

    // The CapabilityStatement publishes the topics and the operations.
    let metadata = server.get("/ina/fhir/metadata").await.json();
    let entry = metadata["rest"][0]["resource"].as_array().into_iter().flatten().find(|r| r["type"] == "Subscription").cloned().expect("a Subscription entry");
    let topics: Vec<&str> = entry["extension"].as_array().into_iter().flatten().filter_map(|e| e["valueCanonical"].as_str()).collect();
    assert!(topics.contains(&"https://renraku.example.jp/fhir/SubscriptionTopic/board-message"), "{topics:?}");
    assert_eq!(topics.len(), 6);
    let operations: Vec<&str> = entry["operation"].as_array().into_iter().flatten().filter_map(|o| o["name"].as_str()).collect();
    assert_eq!(operations, ["status", "events", "get-ws-binding-token"]);
}

/// Serves the gateway on a loopback port (websockets need a real socket).
async fn listening(server: &Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("an address");
    let router = server.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("127.0.0.1:{}", address.port())
}

async fn websocket_clients_bind_with_a_token_and_receive_replies(backend: Backend) {
    let server = Server::start_with(backend, fast_retries).await;
    let address = listening(&server).await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let asked = subscription("board-reply", &[&format!("Communication?subject=Patient/{PERSON}")], json!({ "type": "websocket", "payload": "application/fhir+json" }));
    let id = created(doctor.post(&server, &asked).await).await;
    let minted = server.request(Method::POST, &format!("/ina/fhir/Subscription/{id}/$get-ws-binding-token"), &[("authorization", "Bearer demo-doctor-ina")], None).await;
    minted.expect(200);
    let parameters = minted.json();
    let value = |name: &str| parameters["parameter"].as_array().into_iter().flatten().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null);
    let token = value("token")["valueString"].as_str().expect("a binding token").to_owned();
    assert_eq!(value("websocket-url")["valueUrl"], "ws://renraku.test/ina/fhir/websocket");
    // Nobody else gets one: not another owner (404, as for a missing one), not the same
    // professional through another app (its scopes are not those the events are judged by).
    let ehr = server.request(Method::POST, &format!("/ina/fhir/Subscription/{id}/$get-ws-binding-token"), &[("authorization", "Bearer demo-ehr-ina")], None).await;
    ehr.expect(404);
    let other_token = doctor_token(&server, "another-app", "user/*.rs", chrono::Duration::hours(1)).await;
    let refused = server.request(Method::POST, &format!("/ina/fhir/Subscription/{id}/$get-ws-binding-token"), &[("authorization", &format!("Bearer {other_token}"))], None).await;
    refused.expect(403);
    // Event numbers are bounded, not overflowed.
    doctor.get(&server, &format!("Subscription/{id}/$events?eventsSinceNumber=9223372036854775807")).await.expect(200);

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ina/fhir/websocket")).await.expect("the websocket opens");
    socket.send(tokio_tungstenite::tungstenite::Message::Text("bind-with-token: not-a-token".into())).await.expect("sent");
    let refused = read_json(&mut socket).await;
    assert_eq!(refused["type"], "error");
    socket.send(tokio_tungstenite::tungstenite::Message::Text(format!("bind-with-token: {token}").into())).await.expect("sent");
    let handshake = read_json(&mut socket).await;
    assert_eq!(status_value(&handshake, "type"), "handshake");

    // A post is not a reply; the reply under it arrives (id-only, the default).
    let post = created(care_manager.post(&server, &board_message(Some("board"), "訪問日を変更します。", None)).await).await;
    let reply = created(care_manager.post(&server, &board_message(Some("board"), "承知しました。", Some(&post))).await).await;
    let notification = read_json(&mut socket).await;
    assert_eq!(status_value(&notification, "type"), "event-notification");
    assert_eq!(events(&notification), vec![(1, format!("http://renraku.test/ina/fhir/Communication/{reply}"))]);

    socket.send(tokio_tungstenite::tungstenite::Message::Text(json!({ "type": "ping" }).to_string().into())).await.expect("sent");
    assert_eq!(read_json(&mut socket).await["type"], "pong");

    // A binding lives no longer than the access token it came from: one that expires in two
    // seconds (of the same client and scopes as the demo token that wrote the subscription)
    // gives a binding the server closes when it ends.
    let short = doctor_token(&server, "demo", "user/*.cruds", chrono::Duration::seconds(2)).await;
    let minted = server.request(Method::POST, &format!("/ina/fhir/Subscription/{id}/$get-ws-binding-token"), &[("authorization", &format!("Bearer {short}"))], None).await;
    minted.expect(200);
    let token = minted.json()["parameter"][0]["valueString"].as_str().expect("a binding token").to_owned();
    let (mut second, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ina/fhir/websocket")).await.expect("the websocket opens");
    second.send(tokio_tungstenite::tungstenite::Message::Text(format!("bind-with-token: {token}").into())).await.expect("sent");
    assert_eq!(status_value(&read_json(&mut second).await, "type"), "handshake");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match second.next().await {
                None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the server closes a binding whose access token expired");
    // Unbinding: the first socket is told, and hears nothing more.
    socket.send(tokio_tungstenite::tungstenite::Message::Text(format!("unbind-from-token: {}", value("token")["valueString"].as_str().unwrap_or_default()).into())).await.expect("sent");
    assert_eq!(read_json(&mut socket).await["type"], "unbound");
}

async fn read_json(socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a message within 10 s").expect("open").expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

async fn an_acknowledged_write_is_notified_after_a_crash(backend: Backend) {
    let server = Server::start_with(backend, fast_retries).await;
    let receiver = Receiver::start().await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let asked = subscription("board-message", &[&format!("Communication?subject=Patient/{PERSON}")], rest_hook(&receiver.url, "id-only"));
    created(doctor.post(&server, &asked).await).await;
    let (_, handshake) = receiver.next().await;
    assert_eq!(status_value(&handshake, "type"), "handshake");

    // The gateway acknowledges the post, then "crashes" before notifying anyone.
    server.fhir().arm_failpoint(renraku::runtime::Failpoint::PauseDeliveries);
    let post = created(care_manager.post(&server, &board_message(Some("board"), "再起動をまたぐ投稿", None)).await).await;
    assert!(receiver.quiet_for(Duration::from_millis(400)).await);
    let server = server.restart_with(fast_retries).await;
    let (_, notification) = receiver.next().await;
    assert_eq!(events(&notification), vec![(1, format!("http://renraku.test/ina/fhir/Communication/{post}"))]);
    drop(server);
}

/// The topics not exercised above, each with an event it must notify and one it must not.
async fn every_topic_notifies_its_own_events(backend: Backend) {
    let server = Server::start_with(backend, fast_retries).await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let operator = Caller::demo("ina", "demo-operator");
    let subscribe = async |caller: &Caller, topic: &str, filter: &str, content: &str| -> Receiver {
        let receiver = Receiver::start().await;
        let filters: Vec<&str> = if filter.is_empty() { Vec::new() } else { vec![filter] };
        created(caller.post(&server, &subscription(topic, &filters, rest_hook(&receiver.url, content))).await).await;
        assert_eq!(status_value(&receiver.next().await.1, "type"), "handshake");
        receiver
    };
    let consents = subscribe(&care_manager, "consent-status-changed", &format!("Consent?patient=Patient/{PERSON}"), "id-only").await;
    let registrations = subscribe(&care_manager, "patient-registered", "Patient?organization=Organization/demo-mm-care-office", "full-resource").await;
    let observations = subscribe(&doctor, "resource-changed", &format!("Observation?patient=Patient/{PERSON}&_interaction=create"), "full-resource").await;
    let deletions = subscribe(&doctor, "resource-changed", "Observation?_interaction=delete", "id-only").await;

    // A Consent updated without a change of status is not this topic's event; a withdrawal is.
    let mut consent = care_manager.get(&server, "Consent/demo-consent-yamada").await.json();
    consent["dateTime"] = json!("2026-04-11");
    care_manager.put(&server, &consent).await.expect(200);
    drained(&server).await;
    consent["status"] = json!("inactive");
    care_manager.put(&server, &consent).await.expect(200);
    let (_, notification) = consents.next().await;
    assert_eq!(events(&notification), vec![(1, "http://renraku.test/minamiminowa/fhir/Consent/demo-consent-yamada".to_owned())]);
    consent["status"] = json!("active");
    care_manager.put(&server, &consent).await.expect(200);
    assert_eq!(events(&consents.next().await.1).first().map(|e| e.0), Some(2));

    // A person registered by the office.
    let person = json!({ "resourceType": "Patient", "name": [{ "family": "佐々木", "given": ["次郎"] }],
                         "managingOrganization": { "reference": "Organization/demo-mm-care-office" } });
    let registered = created(care_manager.post(&server, &person).await).await;
    let (_, notification) = registrations.next().await;
    assert_eq!(events(&notification), vec![(1, format!("http://renraku.test/minamiminowa/fhir/Patient/{registered}"))]);
    assert_eq!(notification["entry"][1]["resource"]["name"][0]["family"], "佐々木");

    // Any type, by its own search parameters: an Observation created is one subscription's
    // event, its deletion the other's.
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "体温" },
                              "subject": { "reference": format!("Patient/{PERSON}") },
                              "valueQuantity": { "value": 37.8, "unit": "℃", "system": "http://unitsofmeasure.org", "code": "Cel" } });
    let measured = created(care_manager.post(&server, &observation).await).await;
    let (_, notification) = observations.next().await;
    assert_eq!(events(&notification), vec![(1, format!("http://renraku.test/ina/fhir/Observation/{measured}"))]);
    assert_eq!(notification["entry"][1]["resource"]["valueQuantity"]["value"], 37.8);
    care_manager.delete(&server, &format!("Observation/{measured}")).await.expect(204);
    let (_, notification) = deletions.next().await;
    assert_eq!(events(&notification), vec![(1, format!("http://renraku.test/ina/fhir/Observation/{measured}"))]);
    assert_eq!(notification["entry"][1]["request"]["method"], "DELETE");
    drained(&server).await;
    assert!(observations.quiet_for(Duration::from_millis(200)).await, "a create-only subscription hears no deletion");

    // A subscription made through an app stops when the app is removed.
    let app = json!({ "client_id": "ina-notify-app", "tenant": "ina", "kind": "public",
                      "redirect_uris": ["http://127.0.0.1:9000/callback"], "scopes": "openid user/*.cruds" });
    let registered_app = server.request(Method::POST, "/admin/clients", &[("authorization", "Bearer demo-operator"), ("content-type", "application/json")], Some(app.to_string().into_bytes())).await;
    registered_app.expect(201);
    let app_token = doctor_token(&server, "ina-notify-app", "user/*.cruds", chrono::Duration::hours(1)).await;
    let through_app = Caller::demo("ina", &app_token);
    let board = subscribe(&through_app, "board-message", &format!("Communication?subject=Patient/{PERSON}"), "id-only").await;
    created(care_manager.post(&server, &board_message(Some("board"), "アプリ経由の購読へ", None)).await).await;
    assert_eq!(events(&board.next().await.1).len(), 1);
    operator_removes(&server, "/admin/clients/ina/ina-notify-app").await;
    created(care_manager.post(&server, &board_message(Some("board"), "アプリ削除後の投稿", None)).await).await;
    drained(&server).await;
    assert!(board.quiet_for(Duration::from_millis(300)).await, "nothing reaches a subscription whose app was removed");
    drop(operator);
}

async fn operator_removes(server: &Server, path: &str) {
    server.request(Method::DELETE, path, &[("authorization", "Bearer demo-operator")], None).await.expect(204);
}

/// SSRF: a redirect is a failure, not a hop; a host name that resolves to a non-public address
/// is refused at delivery unless the host is allowed (here only the address itself is).
async fn redirects_and_names_of_private_addresses_are_not_followed(backend: Backend) {
    let server = Server::start_with(backend, |config| {
        fast_retries(config);
        config.subscriptions.http_hosts = vec!["127.0.0.1".into(), "localhost".into()];
        config.subscriptions.private_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let receiver = Receiver::start().await;
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let filter = format!("Communication?subject=Patient/{PERSON}");
    let moved = receiver.url.replace("/hook", "/moved");
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let mut ids = Vec::new();
    for endpoint in [moved, by_name] {
        ids.push(created(doctor.post(&server, &subscription("board-message", &[&filter], rest_hook(&endpoint, "id-only"))).await).await);
    }
    for id in &ids {
        let mut status = String::new();
        for _ in 0..200 {
            let reply = doctor.get(&server, &format!("Subscription/{id}/$status")).await;
            status = status_value(&reply.json(), "status");
            if status == "error" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, "error", "Subscription/{id}");
    }
    assert!(receiver.quiet_for(Duration::from_millis(300)).await, "nothing reached the receiver");
}

/// A token of the demo's doctor (伊那市, on the person's team) issued to `client_id` with
/// `scopes`, as the authorization server would issue it through that client.
async fn doctor_token(server: &Server, client_id: &str, scopes: &str, lifetime: chrono::Duration) -> String {
    let grant = renraku::auth::tokens::TokenGrant {
        tenant: "ina".into(),
        actor: renraku::identity::Actor::Practitioner {
            tenant: "ina".into(),
            practitioner: "demo-dr-tanaka".into(),
            role: "demo-role-dr-tanaka".into(),
            organization: "demo-ina-central-hospital".into(),
        },
        scopes: renraku::identity::scopes::Scopes::parse(scopes).expect("scopes"),
        patient: None,
        client_id: client_id.into(),
        lifetime,
    };
    let mut connection = server.fhir().store.connection().await.expect("a connection");
    renraku::auth::tokens::issue(&mut connection, server.fhir().clock.now(), &grant).await.expect("a token").access_token
}
