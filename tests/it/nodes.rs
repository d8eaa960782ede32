//! Two gateway processes on one PostgreSQL database (issue #13, and #15's several nodes):
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

use crate::support::{new_database, Backend};

struct Node {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    async fn start(database_url: &str, data_dir: &std::path::Path) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new(env!("CARGO_BIN_EXE_renraku"))
            .args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}"), "--database-url", database_url])
            .arg("--data-dir")
            .arg(data_dir)
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

const DOCTOR: &str = "demo-doctor-ina";
const CARE_MANAGER: &str = "demo-care-manager";
const OPERATOR: &str = "demo-operator";
const PERSON: &str = "/ina/fhir/Patient/demo-yamada-taro";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_gateway_acts_at_the_next_request_on_the_other() {
    let (config, directory, database) = new_database(Backend::Postgres).await;
    let a = Node::start(&config.database_url, directory.path()).await;
    let b = Node::start(&config.database_url, directory.path()).await;
    // Warm: both gateways have verified the doctor's token and judged the person.
    assert_eq!(a.status(DOCTOR, PERSON).await, 200);
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);

    // A member removed from the person's team (by the care manager, through A).
    let team_path = "/minamiminowa/fhir/CareTeam/demo-team-yamada";
    let team = a.read(CARE_MANAGER, team_path).await;
    let mut without_doctor = team.clone();
    without_doctor["participant"] = json!(team["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["member"]["reference"] != "PractitionerRole/demo-role-dr-tanaka")
        .collect::<Vec<_>>());
    a.put(CARE_MANAGER, team_path, &without_doctor).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 404, "team removal");
    a.put(CARE_MANAGER, team_path, &team).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);

    // The person's consent withdrawn.
    let consent_path = "/minamiminowa/fhir/Consent/demo-consent-yamada";
    let consent = a.read(CARE_MANAGER, consent_path).await;
    let mut withdrawn = consent.clone();
    withdrawn["status"] = json!("inactive");
    a.put(CARE_MANAGER, consent_path, &withdrawn).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 404, "consent withdrawal");
    a.put(CARE_MANAGER, consent_path, &consent).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);

    // The wide-area agreement ended (cached agreements, by generation).
    let agreement_path = "/minamiminowa/fhir/Contract/demo-agreement-kamiina";
    let agreement = a.read(OPERATOR, agreement_path).await;
    let mut ended = agreement.clone();
    ended["status"] = json!("terminated");
    a.put(OPERATOR, agreement_path, &ended).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 404, "agreement end");
    a.put(OPERATOR, agreement_path, &agreement).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);

    // The doctor's role set inactive (cached standing, by generation): the token speaks for
    // nobody.
    let role_path = "/ina/fhir/PractitionerRole/demo-role-dr-tanaka";
    let role = a.read(OPERATOR, role_path).await;
    let mut inactive = role.clone();
    inactive["active"] = json!(false);
    a.put(OPERATOR, role_path, &inactive).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 401, "role set inactive");
    a.put(OPERATOR, role_path, &role).await;
    assert_eq!(b.status(DOCTOR, PERSON).await, 200);

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
