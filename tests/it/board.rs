//! The board (掲示板) and chat of a support team spanning three municipalities (issue #16):
//! posts and replies listed newest first and by thread, the board profile enforced, read
//! state (既読 n/m with names) and unread counts per member, and a member who leaves.

use renraku::fhir::board::BoardChange;
use serde_json::{json, Value};

use crate::both_backends;
use crate::policy::{agreement, care_team, consent, entry_ids, patient, Caller};
use crate::support::{Backend, Reply, Server};

both_backends!(a_team_talks_on_the_board_and_sees_who_has_read_what);

const PERSON: &str = "demo-yamada-taro";
/// A second person (a registrar's PUT needs a UUID for a new Patient).
const HANAKO: &str = "7d0f3c52-6a1e-4b8e-9c2d-5f4a3b2c1d0e";
const KIND: &str = "https://renraku.example.jp/fhir/CodeSystem/communication-kind";

fn message(kind: &str, sender: &str, sent: &str, text: &str, parent: Option<&str>) -> Value {
    let mut message = json!({
        "resourceType": "Communication", "status": "completed",
        "category": [{ "coding": [{ "system": KIND, "code": kind }] }],
        "subject": { "reference": format!("Patient/{PERSON}") },
        "sender": { "reference": format!("PractitionerRole/{sender}") },
        "sent": sent,
        "payload": [{ "contentString": text }]
    });
    if let Some(parent) = parent {
        message["inResponseTo"] = json!([{ "reference": format!("Communication/{parent}") }]);
    }
    message
}

async fn posted(server: &Server, caller: &Caller, body: Value) -> String {
    let reply = caller.post(server, &body).await;
    reply.expect(201);
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// `name` → value of the first part called so, in one `item` of a `$read-status` answer.
fn item_parts(status: &Value, communication: &str) -> Vec<Value> {
    status["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|item| item["part"][0]["valueReference"]["reference"] == format!("Communication/{communication}"))
        .and_then(|item| item["part"].as_array().cloned())
        .unwrap_or_default()
}

fn integer(parts: &[Value], name: &str) -> i64 {
    parts.iter().find(|p| p["name"] == name).and_then(|p| p["valueInteger"].as_i64()).unwrap_or(-1)
}

fn names(parts: &[Value], name: &str) -> Vec<String> {
    let mut found: Vec<String> = parts
        .iter()
        .filter(|p| p["name"] == name)
        .map(|p| {
            let reference = if name == "reader" { &p["part"][0]["valueReference"] } else { &p["valueReference"] };
            reference["display"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    found.sort();
    found
}

async fn unread(server: &Server, caller: &Caller, path: &str) -> Value {
    let reply = caller.get(server, path).await;
    reply.expect(200);
    reply.json()
}

fn counts(unread: &Value) -> (i64, i64, i64) {
    let total = unread["parameter"][0]["valueInteger"].as_i64().unwrap_or(-1);
    let person = unread["parameter"].as_array().into_iter().flatten().find(|p| p["name"] == "person");
    let part = |name: &str| person.and_then(|p| p["part"].as_array()).into_iter().flatten().find(|x| x["name"] == name).and_then(|x| x["valueInteger"].as_i64()).unwrap_or(0);
    (total, part("board"), part("chat"))
}

async fn mark(server: &Server, caller: &Caller, parameters: Vec<Value>) -> Reply {
    let body = json!({ "resourceType": "Parameters", "parameter": parameters });
    server
        .send(axum::http::Method::POST, &format!("/{}/fhir/Patient/{PERSON}/$mark-read", caller.tenant), &[("authorization", &format!("Bearer {}", caller.token))], &body)
        .await
}

async fn a_team_talks_on_the_board_and_sees_who_has_read_what(backend: Backend) {
    let server = Server::start_with(backend, |config| config.demo = true).await;
    let care_manager = Caller::demo("minamiminowa", "demo-care-manager");
    let doctor = Caller::demo("ina", "demo-doctor-ina");
    let nurse = Caller::demo("minowa", "demo-nurse-minowa");
    let operator = Caller::demo("minamiminowa", "demo-operator");
    let admin = Caller::demo("minamiminowa", "demo-admin-minamiminowa");
    let outsider = Caller::demo("ina", "demo-ehr-ina");

    // 箕輪町 joins under a second agreement; the visiting nurse joins the team.
    operator
        .put(&server, &agreement("agreement-minowa", &["203858", "203831"], "executed", &["read", "search-type", "create", "update"]))
        .await
        .expect(201);
    let mut team = admin.get(&server, "CareTeam/demo-team-yamada").await.json();
    team["participant"].as_array_mut().unwrap().push(json!({ "member": { "reference": "PractitionerRole/demo-role-ns-sato" } }));
    admin.put(&server, &team).await.expect(200);

    // What notifications will build on: each change announced once it committed.
    let mut events = server.fhir().board_events.subscribe();
    // A post, a reply under it, a later post by the nurse, and a chat message.
    let post = posted(&server, &care_manager, message("board", "demo-role-cm-suzuki", "2026-11-25T09:00:00+09:00", "デイサービスを週2回に増やします。", None)).await;
    let reply = posted(&server, &doctor, message("board", "demo-role-dr-tanaka", "2026-11-25T12:00:00+09:00", "了解しました。", Some(&post))).await;
    let later = posted(&server, &nurse, message("board", "demo-role-ns-sato", "2026-11-26T10:00:00+09:00", "仙骨部に発赤があります。", None)).await;
    let chat = posted(&server, &doctor, message("chat", "demo-role-dr-tanaka", "2026-11-26T11:00:00+09:00", "明日伺います。", None)).await;

    let announced: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let announced_posts: Vec<(String, String, Option<String>)> = announced
        .iter()
        .filter_map(|event| match &event.change {
            BoardChange::Posted { item, kind, reply_to } => Some((item.clone(), kind.clone(), reply_to.clone())),
            BoardChange::Read { .. } => None,
        })
        .collect();
    assert_eq!(announced_posts, vec![
        (post.clone(), "board".to_owned(), None),
        (reply.clone(), "board".to_owned(), Some(post.clone())),
        (later.clone(), "board".to_owned(), None),
        (chat.clone(), "chat".to_owned(), None),
    ]);
    assert!(announced.iter().all(|event| event.patient == PERSON));

    // The board, newest first (posts only), and a thread.
    let board = format!("Communication?subject=Patient/{PERSON}&category={KIND}|board&in-response-to:missing=true&_sort=-sent");
    assert_eq!(doctor.search_ids(&server, &board).await, vec![format!("Communication/{later}"), format!("Communication/{post}")]);
    assert_eq!(nurse.search_ids(&server, &format!("Communication?in-response-to=Communication/{post}")).await, vec![format!("Communication/{reply}")]);

    // A board message meets the board's profile (it says when it was sent), and is sent by
    // its writer: a missing sender is the writer's role, another's is refused.
    let mut undated = message("board", "demo-role-dr-tanaka", "2026-11-26T12:00:00+09:00", "いつ?", None);
    undated.as_object_mut().unwrap().remove("sent");
    let refused = doctor.post(&server, &undated).await;
    refused.expect(422);
    assert_eq!(refused.issue_expressions(), ["Communication.sent"]);
    let forged = doctor.post(&server, &message("board", "demo-role-cm-suzuki", "2026-11-26T12:00:00+09:00", "代筆", None)).await;
    forged.expect(422);
    assert_eq!(forged.issue_expressions(), ["Communication.sender"]);
    // Nor by a patch of one's own post.
    let patch = json!([{ "op": "replace", "path": "/sender/reference", "value": "PractitionerRole/demo-role-dr-tanaka" }]);
    let patched = server
        .request(
            axum::http::Method::PATCH,
            &format!("/minamiminowa/fhir/Communication/{post}"),
            &[("authorization", "Bearer demo-care-manager"), ("content-type", "application/json-patch+json")],
            Some(patch.to_string().into_bytes()),
        )
        .await;
    patched.expect(422);
    assert_eq!(patched.issue_expressions(), ["Communication.sender"]);
    let mut unsigned = message("chat", "x", "2026-11-26T12:00:00+09:00", "署名なし", None);
    unsigned.as_object_mut().unwrap().remove("sender");
    let signed = doctor.post(&server, &unsigned).await;
    signed.expect(201);
    assert_eq!(signed.json()["sender"]["reference"], "PractitionerRole/demo-role-dr-tanaka");
    let unsigned_chat = signed.json()["id"].as_str().unwrap().to_owned();
    mark(&server, &care_manager, vec![json!({ "name": "communication", "valueReference": { "reference": format!("Communication/{unsigned_chat}") } })]).await.expect(200);

    // Nobody has read the first post yet: 既読 0/2, the doctor and the nurse unread, by name.
    let status_path = format!("Patient/{PERSON}/$read-status?communication={post},{later}");
    let status = unread(&server, &care_manager, &status_path).await;
    let first = item_parts(&status, &post);
    assert_eq!((integer(&first, "replies"), integer(&first, "readCount"), integer(&first, "teamSize")), (1, 0, 2));
    assert_eq!(names(&first, "unread"), vec!["佐藤 美咲".to_owned(), "田中 一郎".to_owned()]);

    // The doctor reads the post; the nurse reads everything up to now.
    mark(&server, &doctor, vec![json!({ "name": "communication", "valueReference": { "reference": format!("Communication/{post}") } })]).await.expect(200);
    let read = std::iter::from_fn(|| events.try_recv().ok()).last().map(|event| event.change);
    assert_eq!(read, Some(BoardChange::Read { reader: "PractitionerRole/demo-role-dr-tanaka".into(), items: vec![post.clone()], through: None }));
    mark(&server, &nurse, vec![json!({ "name": "through", "valueInstant": "2026-11-26T23:00:00+09:00" })]).await.expect(200);
    let status = unread(&server, &care_manager, &status_path).await;
    let first = item_parts(&status, &post);
    assert_eq!((integer(&first, "readCount"), integer(&first, "teamSize")), (2, 2));
    assert_eq!(names(&first, "reader"), vec!["佐藤 美咲".to_owned(), "田中 一郎".to_owned()]);
    // The doctor of 伊那市 sees the same counts and names: no agreement joins 伊那市 and
    // 箕輪町, and the doctor may not read 箕輪町's directory, but the nurse is on the same
    // team and is named to it.
    let seen_by_doctor = item_parts(&unread(&server, &doctor, &status_path).await, &post);
    assert_eq!(integer(&seen_by_doctor, "readCount"), 2);
    assert_eq!(names(&seen_by_doctor, "reader"), vec!["佐藤 美咲".to_owned(), "田中 一郎".to_owned()]);
    doctor.get(&server, "PractitionerRole/demo-role-ns-sato").await.expect(404);
    assert!(names(&first, "unread").is_empty());
    let second = item_parts(&status, &later);
    assert_eq!((integer(&second, "readCount"), integer(&second, "teamSize")), (0, 2), "the nurse's own post is not hers to read");

    // Unread counts, per member: the care manager has the reply, the nurse's post and the chat.
    let listed = unread(&server, &care_manager, &format!("Patient/{PERSON}/$unread?items=true")).await;
    assert_eq!(counts(&listed), (3, 2, 1));
    let items: Vec<String> = listed["parameter"].as_array().into_iter().flatten().filter(|p| p["name"] == "item")
        .map(|p| p["valueReference"]["reference"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(items, vec![format!("Communication/{chat}"), format!("Communication/{later}"), format!("Communication/{reply}")], "newest first");
    assert_eq!(counts(&unread(&server, &care_manager, "Patient/$unread").await), (3, 2, 1));
    assert_eq!(counts(&unread(&server, &doctor, "Patient/$unread").await), (1, 1, 0));
    assert_eq!(counts(&unread(&server, &nurse, "Patient/$unread").await), (0, 0, 0));
    mark(&server, &care_manager, vec![json!({ "name": "communication", "valueReference": { "reference": format!("Communication/{chat}") } })]).await.expect(200);
    assert_eq!(counts(&unread(&server, &care_manager, "Patient/$unread").await), (2, 2, 0));

    // Someone outside the team learns nothing, and marks nothing.
    mark(&server, &outsider, vec![json!({ "name": "communication", "valueReference": { "reference": format!("Communication/{post}") } })]).await.expect(404);
    outsider.get(&server, &status_path).await.expect(404);
    assert_eq!(counts(&unread(&server, &outsider, "Patient/$unread").await), (0, 0, 0));
    assert_eq!(counts(&unread(&server, &outsider, &format!("Patient/{PERSON}/$unread")).await), (0, 0, 0));

    // The nurse leaves the team: her read stays counted, and she sees nothing any more.
    let mut team = admin.get(&server, "CareTeam/demo-team-yamada").await.json();
    team["participant"].as_array_mut().unwrap().retain(|p| p["member"]["reference"] != "PractitionerRole/demo-role-ns-sato");
    admin.put(&server, &team).await.expect(200);
    let status = unread(&server, &care_manager, &status_path).await;
    let first = item_parts(&status, &post);
    assert_eq!((integer(&first, "readCount"), integer(&first, "teamSize")), (2, 1));
    let nurse_read = first.iter().find(|p| p["name"] == "reader" && p["part"][0]["valueReference"]["reference"] == "PractitionerRole/demo-role-ns-sato").cloned();
    assert_eq!(nurse_read.map(|r| r["part"][2]["valueBoolean"].clone()), Some(json!(false)));
    nurse.get(&server, &status_path).await.expect(404);
    let after_marks = message("board", "demo-role-cm-suzuki", "2026-11-27T09:00:00+09:00", "週末の予定です。", None);
    let after_marks = posted(&server, &care_manager, after_marks).await;
    assert_eq!(counts(&unread(&server, &nurse, &format!("Patient/{PERSON}/$unread")).await), (0, 0, 0));
    assert_eq!(counts(&unread(&server, &nurse, "Patient/$unread").await), (0, 0, 0), "her team link ended: nothing counted for her");
    assert_eq!(counts(&unread(&server, &doctor, &format!("Patient/{PERSON}/$unread")).await), (2, 2, 0));
    assert_eq!(counts(&unread(&server, &doctor, "Patient/$unread").await), (2, 2, 0));
    assert!(nurse.search_ids(&server, &board).await.is_empty());

    // The hospital joins the team as an organization: its EHR (a system client) writes for
    // the hospital — unsigned, the hospital is the sender; one of the hospital's
    // PractitionerRoles may be named; another organization's role, or another organization,
    // is refused.
    let mut team = admin.get(&server, "CareTeam/demo-team-yamada").await.json();
    team["participant"].as_array_mut().unwrap().push(json!({ "member": { "reference": "Organization/demo-ina-central-hospital" } }));
    admin.put(&server, &team).await.expect(200);
    let ehr = outsider;
    let mut unsigned = message("board", "none", "2026-11-28T09:00:00+09:00", "検査結果を登録しました。", None);
    unsigned.as_object_mut().unwrap().remove("sender");
    let signed = ehr.post(&server, &unsigned).await;
    signed.expect(201);
    assert_eq!(signed.json()["sender"]["reference"], "Organization/demo-ina-central-hospital");
    let results = signed.json()["id"].as_str().unwrap().to_owned();
    let orders = posted(&server, &ehr, message("board", "demo-role-dr-tanaka", "2026-11-28T09:05:00+09:00", "田中医師の指示を登録しました。", None)).await;
    let forged = ehr.post(&server, &message("board", "demo-role-cm-suzuki", "2026-11-28T09:10:00+09:00", "代筆", None)).await;
    forged.expect(422);
    assert_eq!(forged.issue_expressions(), ["Communication.sender"]);
    let mut other_office = message("board", "none", "2026-11-28T09:15:00+09:00", "代筆", None);
    other_office["sender"] = json!({ "reference": "Organization/demo-care-office" });
    let forged = ehr.post(&server, &other_office).await;
    forged.expect(422);
    assert_eq!(forged.issue_expressions(), ["Communication.sender"]);

    // The whole board, newest first, a page of two at a time following the `next` links
    // (the page is read from the board's own index, `board_items`).
    let newest_first: Vec<String> = [&orders, &results, &after_marks, &later, &post].iter().map(|id| format!("Communication/{id}")).collect();
    assert_eq!(paged(&server, &care_manager, &format!("{board}&_count=2")).await, newest_first);
    // Oldest first too, and the chat alone.
    let oldest_first: Vec<String> = newest_first.iter().rev().cloned().collect();
    assert_eq!(paged(&server, &care_manager, &format!("{}&_count=2", board.replace("_sort=-sent", "_sort=sent"))).await, oldest_first);
    let chats = format!("Communication?subject=Patient/{PERSON}&category={KIND}|chat&_sort=-sent&_count=5");
    assert_eq!(care_manager.search_ids(&server, &chats).await, vec![format!("Communication/{unsigned_chat}"), format!("Communication/{chat}")]);

    // A post entered in error is still listed (a search finds it, with its status), but is
    // nobody's unread item any more.
    let (_, before, _) = counts(&unread(&server, &doctor, &format!("Patient/{PERSON}/$unread")).await);
    let mut withdrawn = care_manager.get(&server, &format!("Communication/{after_marks}")).await.json();
    withdrawn["status"] = json!("entered-in-error");
    care_manager.put(&server, &withdrawn).await.expect(200);
    assert_eq!(paged(&server, &care_manager, &format!("{board}&_count=2")).await, newest_first);
    assert_eq!(care_manager.get(&server, &format!("{board}&_count=2")).await.json()["total"], 5, "the board's total");
    assert_eq!(care_manager.get(&server, &format!("{board}&_count=2&_total=none")).await.json().get("total"), None);
    assert_eq!(nurse.get(&server, &format!("{board}&_count=2")).await.json()["total"], 0);
    let listed = care_manager.get(&server, &format!("{board}&status=entered-in-error")).await.json();
    assert_eq!(entry_ids(&listed, "match"), vec![format!("Communication/{after_marks}")]);
    let (_, after, _) = counts(&unread(&server, &doctor, &format!("Patient/{PERSON}/$unread")).await);
    assert_eq!(after, before - 1);
    // Someone outside the team pages through nothing.
    assert!(paged(&server, &nurse, &format!("{board}&_count=2")).await.is_empty());

    // A post on this board naming a second person the nurse supports (as its recipient) is
    // hers to read through that person — that post only: the board's other items stay
    // hidden from her, in the page, its total and her unread count alike.
    care_manager.put(&server, &patient(HANAKO, "山田", "demo-mm-care-office")).await.expect(201);
    care_manager.put(&server, &consent("6b1e2d3c-4f5a-4b6c-8d7e-9f0a1b2c3d4e", HANAKO, "active", "demo-mm-care-office")).await.expect(201);
    care_manager.put(&server, &care_team("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", HANAKO, &["PractitionerRole/demo-role-cm-suzuki", "PractitionerRole/demo-role-ns-sato"])).await.expect(201);
    let mut naming_both = message("board", "demo-role-cm-suzuki", "2026-11-29T09:00:00+09:00", "ご家族にもお伝えください。", None);
    naming_both["recipient"] = json!([{ "reference": format!("Patient/{HANAKO}") }]);
    let naming_both = posted(&server, &care_manager, naming_both).await;
    assert_eq!(paged(&server, &nurse, &format!("{board}&_count=2")).await, vec![format!("Communication/{naming_both}")]);
    assert_eq!(nurse.get(&server, &board).await.json()["total"], 1);
    assert_eq!(counts(&unread(&server, &nurse, &format!("Patient/{PERSON}/$unread")).await), (1, 1, 0));
    let mut expected = vec![format!("Communication/{naming_both}")];
    expected.extend(newest_first);
    assert_eq!(paged(&server, &care_manager, &format!("{board}&_count=2")).await, expected);
}

/// Every match of a search, following its `next` links.
async fn paged(server: &Server, caller: &Caller, query: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut next = Some(query.to_owned());
    while let Some(query) = next.take() {
        let reply = caller.get(server, &query).await;
        reply.expect(200);
        let bundle = reply.json();
        found.extend(entry_ids(&bundle, "match"));
        next = bundle["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(|url| {
            url.split_once("/fhir/").map(|(_, rest)| rest.to_owned()).unwrap_or_default()
        });
        assert!(found.len() < 100, "paging ends");
    }
    found
}
