//! Two gateway processes on one database (issue #13, and #15's several nodes on PostgreSQL):
//! each caches verified tokens, directory standings and agreements, and a change written
//! through one must act at the very next request served by the other — a revoked token, a
//! withdrawn consent, a member removed from the team, an agreement ended, a role set
//! inactive. The caches are warm (the other gateway has just answered the same request).
//!
//! The processes are the `renraku` binary itself (`serve --demo`), so this tests what an
//! operator runs: nothing is shared between them but the database.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{new_database, Backend};

/// A `renraku serve` process of the test's own.
pub struct Node {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    async fn start(database_url: &str, data_dir: &std::path::Path) -> Node {
        let data_dir = data_dir.to_string_lossy();
        Node::serve(&["--demo", "--database-url", database_url, "--data-dir", &data_dir]).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("the process can be waited for")
    }

    /// Starts `renraku serve` with `settings` on a free port and waits until it is ready.
    pub async fn serve(settings: &[&str]) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_renraku"))
            .args(["serve", "--listen", &listen, "--public-base-url", &format!("http://{listen}")])
            .args(settings)
            .env("RENRAKU_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the renraku binary starts");
        let node = Node { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        for _ in 0..300 {
            if let Ok(reply) = node.http.get(format!("{}/healthz", node.base)).send().await {
                if reply.status().is_success() {
                    return node;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway at {} did not become healthy", node.base);
    }

    async fn status(&self, token: &str, path: &str) -> u16 {
        let reply = self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.expect("a reply");
        reply.status().as_u16()
    }

    async fn read(&self, token: &str, path: &str) -> Value {
        let reply = self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.expect("a reply");
        assert_eq!(reply.status().as_u16(), 200, "{path}");
        reply.json().await.expect("JSON")
    }

    async fn put(&self, token: &str, path: &str, body: &Value) {
        let reply = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("a reply");
        let status = reply.status().as_u16();
        assert_eq!(status, 200, "PUT {path}: {}", reply.text().await.unwrap_or_default());
    }
}

impl Node {
    /// An administrative request's status.
    async fn admin(&self, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>) -> u16 {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        request.send().await.expect("a reply").status().as_u16()
    }

    /// The status of a request without credentials, redirects not followed.
    async fn unauthenticated(&self, path: &str) -> u16 {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("a client");
        client.get(format!("{}{path}", self.base)).send().await.expect("a reply").status().as_u16()
    }
}

/// (what, who writes it, the resource's path, the change, what the doctor then gets).
type Change = (&'static str, &'static str, &'static str, fn(&mut Value), u16);

const DOCTOR: &str = "demo-doctor-ina";
const CARE_MANAGER: &str = "demo-care-manager";
const OPERATOR: &str = "demo-operator";
const PERSON: &str = "/ina/fhir/Patient/demo-yamada-taro";

/// On PostgreSQL, as several nodes run; on SQLite, two processes on one database file, as
/// `renraku admin` beside a running gateway is (and as SQLite's gateway reads the counters
/// on a connection of its own, which must see what another process committed).
async fn a_change_through_one_gateway_acts_at_the_next_request_on_the_other(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let a = Node::start(&config.database_url, directory.path()).await;
    let b = Node::start(&config.database_url, directory.path()).await;
    // Warm: both gateways have verified the doctor's token and judged the person.
    assert_eq!(a.status(DOCTOR, PERSON).await, 200);
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);

    // Each change is made through A by someone entitled to it, must act at B's next request,
    // and is then undone (B must see that too).
    let changes: [Change; 4] = [
        ("team removal", CARE_MANAGER, "/minamiminowa/fhir/CareTeam/demo-team-yamada", |team| {
            let kept: Vec<Value> = team["participant"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["member"]["reference"] != "PractitionerRole/demo-role-dr-tanaka")
                .cloned()
                .collect();
            team["participant"] = json!(kept);
        }, 404),
        ("consent withdrawal", CARE_MANAGER, "/minamiminowa/fhir/Consent/demo-consent-yamada", |consent| {
            consent["status"] = json!("inactive");
        }, 404),
        // Cached agreements, by generation.
        ("agreement end", OPERATOR, "/minamiminowa/fhir/Contract/demo-agreement-kamiina", |agreement| {
            agreement["status"] = json!("terminated");
        }, 404),
        // Cached standing, by generation: the token speaks for nobody.
        ("role set inactive", OPERATOR, "/ina/fhir/PractitionerRole/demo-role-dr-tanaka", |role| {
            role["active"] = json!(false);
        }, 401),
    ];
    for (what, writer, path, change, refused) in changes {
        let before = a.read(writer, path).await;
        let mut changed = before.clone();
        change(&mut changed);
        a.put(writer, path, &changed).await;
        assert_eq!(b.status(DOCTOR, PERSON).await, refused, "{what}");
        a.put(writer, path, &before).await;
        assert_eq!(b.status(DOCTOR, PERSON).await, 200, "{what} undone");
    }

    // A municipality and an app registered through A are served by B at its next request;
    // the app removed through A gets nothing more from B (the `registry` generation).
    let added = json!({ "slug": "tatsuno", "code": "203823", "name": "辰野町" });
    assert_eq!(a.admin(OPERATOR, reqwest::Method::POST, "/admin/tenants", Some(&added)).await, 201);
    let metadata = b.http.get(format!("{}/tatsuno/fhir/metadata", b.base)).send().await.expect("a reply");
    assert_eq!(metadata.status().as_u16(), 200, "a municipality added through A");
    let app = json!({
        "client_id": "ina-new-app", "tenant": "ina", "kind": "public",
        "redirect_uris": ["http://127.0.0.1:9000/callback"], "scopes": "openid user/*.rs"
    });
    assert_eq!(a.admin(OPERATOR, reqwest::Method::POST, "/admin/clients", Some(&app)).await, 201);
    // A known app is sent back to its redirect URI (here with an error: no response_type);
    // an unknown one is refused on the spot.
    let authorize = "/ina/auth/authorize?client_id=ina-new-app&redirect_uri=http%3A%2F%2F127.0.0.1%3A9000%2Fcallback";
    assert_eq!(b.unauthenticated(authorize).await, 303, "an app registered through A");
    assert_eq!(a.admin(OPERATOR, reqwest::Method::DELETE, "/admin/clients/ina/ina-new-app", None).await, 204);
    assert_eq!(b.unauthenticated(authorize).await, 400, "an app removed through A");

    // The token revoked through A (cached token, by generation).
    let revoked = a
        .http
        .post(format!("{}/ina/auth/revoke", a.base))
        .form(&[("token", DOCTOR)])
        .send()
        .await
        .expect("a reply");
    assert_eq!(revoked.status().as_u16(), 200);
    assert_eq!(b.status(DOCTOR, PERSON).await, 401, "revocation");
    assert_eq!(a.status(DOCTOR, PERSON).await, 401);
    drop((a, b));
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// Writers on two gateways at once: conditional creates of one person through both make
/// exactly one Patient; reads and writes through both keep every municipality's audit chain
/// gap-free: both chainers together chain each write's queued event once, both projectors
/// project each read's event once, and what the gateways (killed, not stopped) left queued is
/// chained by `renraku audit verify`, which then verifies the chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_write_one_person_once_and_one_unbroken_trail() {
    let (config, directory, database) = new_database(Backend::Postgres).await;
    let a = Node::start(&config.database_url, directory.path()).await;
    let b = Node::start(&config.database_url, directory.path()).await;
    let person = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:example:registration", "value": "NODES-1" }],
        "name": [{ "family": "唐沢", "given": ["清"] }],
        "managingOrganization": { "reference": "Organization/demo-mm-care-office" }
    });
    let mut attempts = Vec::new();
    for round in 0..16 {
        let node = if round % 2 == 0 { &a } else { &b };
        let request = node
            .http
            .post(format!("{}/minamiminowa/fhir/Patient", node.base))
            .bearer_auth(CARE_MANAGER)
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "identifier=urn:example:registration|NODES-1")
            .body(person.to_string());
        attempts.push(request);
        // Reads and board posts through both gateways at the same time, as the doctor.
        let note = json!({
            "resourceType": "Communication", "status": "completed",
            "subject": { "reference": "Patient/demo-yamada-taro" },
            "payload": [{ "contentString": format!("往診予定 {round}") }]
        });
        let writer = node
            .http
            .post(format!("{}/ina/fhir/Communication", node.base))
            .bearer_auth(DOCTOR)
            .header("content-type", "application/fhir+json")
            .body(note.to_string());
        attempts.push(writer);
        let reader = node.http.get(format!("{}{PERSON}", node.base)).bearer_auth(DOCTOR);
        attempts.push(reader);
    }
    let statuses = send_all_at_once(attempts).await;
    assert!(statuses.iter().all(|s| matches!(s, 200 | 201)), "{statuses:?}");
    let found = a.read(CARE_MANAGER, "/minamiminowa/fhir/Patient?identifier=urn:example:registration|NODES-1").await;
    assert_eq!(found["total"], 1, "one person, whichever gateway created it: {found}");
    drop((a, b));
    let output = Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(["audit", "verify", "--database-url", &config.database_url])
        .arg("--data-dir")
        .arg(directory.path())
        .arg("--demo")
        .env("RENRAKU_LOG", "warn")
        .output()
        .expect("the binary runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}{}", String::from_utf8_lossy(&output.stderr));
    for chain in ["ina:", "minamiminowa:"] {
        assert!(report.contains(chain), "{report}");
    }
    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&config.database_url).await.expect("database");
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_queue").fetch_one(&mut connection).await.expect("count");
    assert_eq!(queued, 0, "verification chained what the gateways left queued");
    // Every one of the 48 requests left its event (more: sign-in at start, disclosures).
    let chained: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE chain IN ('ina', 'minamiminowa')").fetch_one(&mut connection).await.expect("count");
    assert!(chained >= 48, "{chained} events chained");
    drop(connection);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// Sends the requests concurrently; their statuses, in order (0 where none came).
async fn send_all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<u16> {
    let handles: Vec<_> =
        requests.into_iter().map(|request| tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or_default() })).collect();
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap_or_default());
    }
    statuses
}

/// Notifications across gateways (issue #17): a rest-hook subscription is delivered exactly
/// once per event whichever gateway wrote it (the gateways lease the subscription through
/// the database), and a websocket client bound on B hears of a write made on A (woken by
/// PostgreSQL's NOTIFY: the gateways' own poll is set to a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_each_event_once_and_reach_each_others_websockets() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use crate::subscriptions::{board_message, events, rest_hook, status_value, subscription, Receiver};

    let (config, directory, database) = new_database(Backend::Postgres).await;
    // The gateways poll only once a minute here: what crosses from one to the other within
    // the test is carried by PostgreSQL's NOTIFY wake-up.
    let settings = directory.path().join("renraku.toml");
    std::fs::write(&settings, "[subscriptions]\nhttp_hosts = [\"127.0.0.1\"]\nprivate_hosts = [\"127.0.0.1\"]\npoll_ms = 60000\n").expect("a configuration file");
    let data_dir = directory.path().to_string_lossy().to_string();
    let settings = settings.to_string_lossy().to_string();
    let flags = ["--demo", "--database-url", config.database_url.as_str(), "--data-dir", data_dir.as_str(), "--config", settings.as_str()];
    let a = Node::serve(&flags).await;
    let b = Node::serve(&flags).await;
    let receiver = Receiver::start().await;
    let post = |node: &Node, token: &str, path: &str, body: &Value| {
        node.http
            .post(format!("{}{path}", node.base))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
    };
    let filter = "Communication?subject=Patient/demo-yamada-taro";
    let hook = post(&a, DOCTOR, "/ina/fhir/Subscription", &subscription("board-message", &[filter], rest_hook(&receiver.url, "id-only")));
    assert_eq!(hook.send().await.expect("a reply").status().as_u16(), 201);
    assert_eq!(status_value(&receiver.next().await.1, "type"), "handshake");

    // A websocket subscription, bound on B.
    let websocket = subscription("board-message", &[filter], json!({ "type": "websocket", "payload": "application/fhir+json" }));
    let created: Value = post(&a, DOCTOR, "/ina/fhir/Subscription", &websocket).send().await.expect("a reply").json().await.expect("JSON");
    let id = created["id"].as_str().expect("an id").to_owned();
    let minted: Value = post(&b, DOCTOR, &format!("/ina/fhir/Subscription/{id}/$get-ws-binding-token"), &json!({}))
        .send()
        .await
        .expect("a reply")
        .json()
        .await
        .expect("JSON");
    let token = minted["parameter"][0]["valueString"].as_str().expect("a binding token").to_owned();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{}/ina/fhir/websocket", b.base.replacen("http", "ws", 1))).await.expect("B's websocket");
    socket.send(Message::Text(format!("bind-with-token: {token}").into())).await.expect("sent");
    let mut next_json = async || -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a message within 10 s").expect("open").expect("a frame");
            if let Message::Text(text) = frame {
                return serde_json::from_str(text.as_str()).expect("JSON");
            }
        }
    };
    assert_eq!(status_value(&next_json().await, "type"), "handshake");

    // Six posts, written alternately through A and B.
    let mut posted = Vec::new();
    for n in 0..6 {
        let node = if n % 2 == 0 { &a } else { &b };
        let reply = post(node, CARE_MANAGER, "/minamiminowa/fhir/Communication", &board_message(Some("board"), &format!("投稿 {n}"), None)).send().await.expect("a reply");
        assert_eq!(reply.status().as_u16(), 201);
        let body: Value = reply.json().await.expect("JSON");
        posted.push(body["id"].as_str().expect("an id").to_owned());
    }
    // The rest-hook receiver gets each event exactly once, numbered 1 to 6.
    let mut numbers = Vec::new();
    while numbers.len() < 6 {
        numbers.extend(events(&receiver.next().await.1).into_iter().map(|(number, _)| number));
    }
    assert!(receiver.quiet_for(Duration::from_millis(800)).await, "no event is delivered twice");
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
    // The websocket client on B hears of all six, those written on A included.
    let mut heard = Vec::new();
    while heard.len() < 6 {
        heard.extend(events(&next_json().await).into_iter().map(|(_, focus)| focus.rsplit('/').next().unwrap_or_default().to_owned()));
    }
    heard.sort();
    posted.sort();
    assert_eq!(heard, posted);
    drop((a, b));
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

both_backends!(a_change_through_one_gateway_acts_at_the_next_request_on_the_other);
