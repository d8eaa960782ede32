//! Search, data-driven: one world of resources, one table of query → expected resources,
//! run on both backends.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{Backend, Server};

/// The world: (key, resource). Keys stand for server-assigned ids in the expectations.
fn world() -> Vec<(&'static str, Value)> {
    let jp_name = |kanji_family: &str, kanji_given: &str, kana_family: &str, kana_given: &str| {
        json!([
            { "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE" }],
              "text": format!("{kanji_family} {kanji_given}"), "family": kanji_family, "given": [kanji_given] },
            { "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL" }],
              "text": format!("{kana_family} {kana_given}"), "family": kana_family, "given": [kana_given] }
        ])
    };
    vec![
        ("org", json!({ "resourceType": "Organization", "name": "伊那中央病院", "identifier": [{ "system": "urn:org", "value": "H1" }] })),
        ("doc", json!({ "resourceType": "Practitioner", "name": [{ "family": "佐藤", "given": ["一郎"] }], "gender": "male" })),
        ("nurse", json!({ "resourceType": "Practitioner", "name": [{ "family": "鈴木", "given": ["花子"] }], "gender": "female" })),
        ("yamada", json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.51.1203858", "value": "00012345",
                             "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }], "text": "被保険者番号" } }],
            "name": jp_name("山田", "太郎", "ヤマダ", "タロウ"),
            "gender": "male", "birthDate": "1938-04-12", "active": true,
            "telecom": [{ "system": "email", "value": "taro@example.jp" }],
            "address": [{ "city": "南箕輪村", "state": "長野県" }],
            "managingOrganization": { "reference": "Organization/{org}" },
            "generalPractitioner": [{ "reference": "Practitioner/{doc}" }],
            "meta": { "tag": [{ "system": "urn:renraku:tag", "code": "demo" }] }
        })),
        ("yamaguchi", json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.51.1203858", "value": "00099999" }],
            "name": jp_name("山口", "花", "ヤマグチ", "ハナ"),
            "gender": "female", "birthDate": "1950-11", "active": false, "deceasedDateTime": "2026-10-30",
            "address": [{ "city": "伊那市", "state": "長野県" }],
            // The extension's url as R4's SearchParameter `mothersMaidenName` publishes it.
            "extension": [{ "url": "http://hl7.org/fhir/StructureDefinition/patient-extensions-Patient-mothersMaidenName", "valueString": "田中" }]
        })),
        ("jose", json!({ "resourceType": "Patient", "name": [{ "family": "José", "given": ["María"] }], "gender": "other", "birthDate": "1960" })),
        ("c1", json!({ "resourceType": "Communication", "status": "completed", "subject": { "reference": "Patient/{yamada}" },
                        "sender": { "reference": "Practitioner/{doc}" }, "sent": "2026-11-20T09:00:00+09:00",
                        "category": [{ "coding": [{ "system": "urn:cat", "code": "board" }], "text": "掲示板" }],
                        "payload": [{ "contentString": "血圧安定" }] })),
        ("c2", json!({ "resourceType": "Communication", "status": "completed", "subject": { "reference": "Patient/{yamada}" },
                        "sender": { "reference": "Practitioner/{nurse}" }, "sent": "2026-11-21T10:30:00+09:00",
                        "category": [{ "coding": [{ "system": "urn:cat", "code": "chat" }] }],
                        "payload": [{ "contentString": "訪問しました" }] })),
        ("c3", json!({ "resourceType": "Communication", "status": "in-progress", "subject": { "reference": "Patient/{yamaguchi}" },
                        "sender": { "reference": "Practitioner/{nurse}" }, "sent": "2026-10-01",
                        "payload": [{ "contentString": "x" }] })),
        ("obs1", json!({ "resourceType": "Observation", "status": "final",
                          "code": { "coding": [{ "system": "http://loinc.org", "code": "8310-5", "display": "Body temperature" }], "text": "体温" },
                          "subject": { "reference": "Patient/{yamada}" }, "effectiveDateTime": "2026-11-20",
                          "valueQuantity": { "value": 36.5, "system": "http://unitsofmeasure.org", "code": "Cel" } })),
        ("obs2", json!({ "resourceType": "Observation", "status": "final",
                          "code": { "coding": [{ "system": "http://loinc.org", "code": "8310-5" }] },
                          "subject": { "reference": "Patient/{yamaguchi}" }, "effectiveDateTime": "2026-11-22T08:00:00Z",
                          "valueQuantity": { "value": 38.2, "system": "http://unitsofmeasure.org", "code": "Cel" } })),
        ("sub", json!({ "resourceType": "Subscription", "status": "active", "reason": "掲示板の通知", "criteria": "https://renraku.example.jp/fhir/SubscriptionTopic/board-message",
                         "channel": { "type": "rest-hook", "endpoint": "https://hooks.example.jp/renraku/board" } })),
        ("team", json!({ "resourceType": "CareTeam", "status": "active", "subject": { "reference": "Patient/{yamada}" },
                          "participant": [{ "member": { "reference": "Practitioner/{doc}" } }, { "member": { "reference": "Practitioner/{nurse}" } }] })),
    ]
}

/// Creates the world in order, substituting `{key}` references with assigned ids.
async fn load(server: &Server) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = Vec::new();
    for (key, resource) in world() {
        let mut text = resource.to_string();
        for (known, id) in &ids {
            text = text.replace(&format!("{{{known}}}"), id);
        }
        let resource: Value = serde_json::from_str(&text).expect("json");
        let id = server.create("ina", &resource).await;
        ids.push((key.to_owned(), id));
    }
    ids
}

/// (query, expected match keys in order or as a set) — `ordered` when `_sort` is used.
fn cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        // string: starts-with, case/width/kana-insensitive, whole name without the space
        ("Patient?name=山田", vec!["yamada"]),
        ("Patient?name=やまだ", vec!["yamada"]),
        ("Patient?name=ヤマダ", vec!["yamada"]),
        ("Patient?name=ﾔﾏﾀﾞ", vec!["yamada"]),
        ("Patient?name=山田太郎", vec!["yamada"]),
        ("Patient?name=山田%20太郎", vec!["yamada"]),
        ("Patient?name=やま", vec!["yamada", "yamaguchi"]),
        ("Patient?name=jose", vec!["jose"]),
        ("Patient?name=MARÍA", vec!["jose"]),
        ("Patient?family:exact=山田", vec!["yamada"]),
        ("Patient?family:exact=山", vec![]),
        ("Patient?name:contains=たろ", vec!["yamada"]),
        ("Patient?given=花", vec!["yamaguchi"]),
        ("Patient?address-city=南箕輪", vec!["yamada"]),
        ("Patient?name=山田,山口", vec!["yamada", "yamaguchi"]),
        ("Patient?name=やま&gender=female", vec!["yamaguchi"]),
        // token
        ("Patient?gender=male", vec!["yamada"]),
        ("Patient?gender:not=male", vec!["yamaguchi", "jose"]),
        ("Patient?identifier=urn:oid:1.2.392.100495.20.3.51.1203858|00012345", vec!["yamada"]),
        ("Patient?identifier=00099999", vec!["yamaguchi"]),
        ("Patient?identifier=urn:oid:1.2.392.100495.20.3.51.1203858|", vec!["yamada", "yamaguchi"]),
        ("Patient?identifier=|00012345", vec![]),
        ("Patient?identifier:text=被保険者", vec!["yamada"]),
        ("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|00012345", vec!["yamada"]),
        ("Patient?active=true", vec!["yamada"]),
        ("Patient?email=taro@example.jp", vec!["yamada"]),
        ("Patient?_tag=urn:renraku:tag|demo", vec!["yamada"]),
        ("Observation?code=http://loinc.org|8310-5", vec!["obs1", "obs2"]),
        ("Observation?code:text=体温", vec!["obs1"]),
        ("Observation?code:text=body", vec!["obs1"]),
        ("Communication?category=chat", vec!["c2"]),
        // :missing on several types
        ("Patient?email:missing=true", vec!["yamaguchi", "jose"]),
        ("Patient?email:missing=false", vec!["yamada"]),
        ("Patient?organization:missing=false", vec!["yamada"]),
        ("Patient?birthdate:missing=true", vec![]),
        // reference
        ("Communication?subject=Patient/{yamada}", vec!["c1", "c2"]),
        ("Communication?subject={yamada}", vec!["c1", "c2"]),
        ("Communication?subject:Patient={yamaguchi}", vec!["c3"]),
        ("Communication?subject=http://renraku.test/ina/fhir/Patient/{yamada}", vec!["c1", "c2"]),
        ("Communication?patient={yamada}", vec!["c1", "c2"]),
        ("Communication?sender=Practitioner/{nurse}", vec!["c2", "c3"]),
        ("CareTeam?participant=Practitioner/{nurse}", vec!["team"]),
        // date with prefixes and precision
        ("Patient?birthdate=1938", vec!["yamada"]),
        ("Patient?birthdate=1938-04-12", vec!["yamada"]),
        ("Patient?birthdate=1950-11-05", vec![]),
        ("Patient?birthdate=1950", vec!["yamaguchi"]),
        ("Patient?birthdate=lt1950", vec!["yamada"]),
        ("Patient?birthdate=gt1950", vec!["jose"]),
        ("Patient?birthdate=ge1950", vec!["yamaguchi", "jose"]),
        ("Patient?birthdate=le1950", vec!["yamada", "yamaguchi"]),
        ("Patient?birthdate=ne1950", vec!["yamada", "jose"]),
        ("Patient?birthdate=sa1950", vec!["jose"]),
        ("Patient?birthdate=eb1950", vec!["yamada"]),
        ("Patient?birthdate=ge1930&birthdate=lt1955", vec!["yamada", "yamaguchi"]),
        ("Communication?sent=2026-11-20", vec!["c1"]),
        ("Communication?sent=ge2026-11-20T00:00:00Z", vec!["c1", "c2"]),
        ("Communication?sent=2026-11", vec!["c1", "c2"]),
        ("Observation?date=2026-11-22", vec!["obs2"]),
        ("Observation?date=ap2026-11-21", vec!["obs1", "obs2"]),
        // quantity / number
        ("Observation?value-quantity=36.5", vec!["obs1"]),
        ("Observation?value-quantity=gt37", vec!["obs2"]),
        ("Observation?value-quantity=lt37|http://unitsofmeasure.org|Cel", vec!["obs1"]),
        ("Observation?value-quantity=38.2||Cel", vec!["obs2"]),
        ("Observation?value-quantity=ap42", vec!["obs2"]),
        ("Observation?value-quantity=ap40", vec!["obs1", "obs2"]),
        // chains and reverse chains
        ("Communication?subject:Patient.name=やまだ", vec!["c1", "c2"]),
        ("Communication?subject.name=ヤマグチ", vec!["c3"]),
        ("Communication?subject:Patient.organization.name=伊那中央", vec!["c1", "c2"]),
        ("Communication?sender:Practitioner.gender=female", vec!["c2", "c3"]),
        ("Patient?_has:Observation:subject:value-quantity=gt38", vec!["yamaguchi"]),
        ("Patient?_has:Communication:subject:category=board", vec!["yamada"]),
        ("Practitioner?_has:CareTeam:participant:status=active", vec!["doc", "nurse"]),
        // uri
        ("Subscription?url=https://hooks.example.jp/renraku/board", vec!["sub"]),
        ("Subscription?url=https://hooks.example.jp/renraku", vec![]),
        ("Subscription?url:below=https://hooks.example.jp/renraku", vec!["sub"]),
        ("Subscription?url:above=https://hooks.example.jp/renraku/board/extra", vec!["sub"]),
        ("Subscription?url:below=https://hooks.example.jp/other", vec![]),
        // common parameters
        ("Patient?_id={jose}", vec!["jose"]),
        // Parameters whose expressions the FHIRPath evaluator runs: exists() and extension().
        ("Patient?deceased=true", vec!["yamaguchi"]),
        ("Patient?deceased=false", vec!["yamada", "jose"]),
        ("Patient?mothersMaidenName=田中", vec!["yamaguchi"]),
        ("Patient?mothersMaidenName=山田", vec![]),
        ("Patient?_lastUpdated=gt2000", vec!["yamada", "yamaguchi", "jose"]),
    ]
}

fn substitute(text: &str, ids: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (key, id) in ids {
        text = text.replace(&format!("{{{key}}}"), id);
    }
    text
}

fn key_of(ids: &[(String, String)], id: &str) -> String {
    ids.iter().find(|(_, known)| known == id).map(|(key, _)| key.clone()).unwrap_or_else(|| id.to_owned())
}

fn entries(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

async fn query_table(backend: Backend) {
    let server = Server::start(backend).await;
    let ids = load(&server).await;
    let mut failures = Vec::new();
    for (query, expected) in cases() {
        let path = format!("/ina/fhir/{}", substitute(query, &ids));
        let reply = server.get(&path).await;
        if reply.status.as_u16() != 200 {
            failures.push(format!("{query}: status {} {}", reply.status, reply.text()));
            continue;
        }
        let bundle = reply.json();
        let found: BTreeSet<String> = entries(&bundle, "match").iter().map(|id| key_of(&ids, id)).collect();
        let wanted: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        if found != wanted {
            failures.push(format!("{query}: found {found:?}, expected {wanted:?}"));
        }
        if bundle["total"] != json!(wanted.len()) {
            failures.push(format!("{query}: total {} for {} matches", bundle["total"], wanted.len()));
        }
    }
    assert!(failures.is_empty(), "{} failing queries:\n{}", failures.len(), failures.join("\n"));
}

async fn sorting_includes_and_compartments(backend: Backend) {
    let server = Server::start(backend).await;
    let ids = load(&server).await;
    let keys = |bundle: &Value, mode: &str| entries(bundle, mode).iter().map(|id| key_of(&ids, id)).collect::<Vec<_>>();
    // The timeline: newest first, authors included.
    let timeline = server
        .get(&substitute("/ina/fhir/Communication?subject=Patient/{yamada}&_sort=-sent&_count=20&_include=Communication:sender", &ids))
        .await
        .json();
    assert_eq!(keys(&timeline, "match"), ["c2", "c1"]);
    let mut included = keys(&timeline, "include");
    included.sort();
    assert_eq!(included, ["doc", "nurse"]);
    let ascending = server.get("/ina/fhir/Communication?_sort=sent").await.json();
    assert_eq!(keys(&ascending, "match"), ["c3", "c1", "c2"]);
    let by_birth = server.get("/ina/fhir/Patient?_sort=-birthdate,name").await.json();
    assert_eq!(keys(&by_birth, "match"), ["jose", "yamaguchi", "yamada"]);
    // _revinclude, and :iterate from Communication through Patient to Organization.
    let reverse = server.get(&substitute("/ina/fhir/Patient?_id={yamada}&_revinclude=Communication:subject", &ids)).await.json();
    let mut reverse_included = keys(&reverse, "include");
    reverse_included.sort();
    assert_eq!(reverse_included, ["c1", "c2"]);
    let iterate = server
        .get(&substitute("/ina/fhir/Communication?_id={c1}&_include=Communication:subject&_include:iterate=Patient:organization", &ids))
        .await
        .json();
    let mut iterated = keys(&iterate, "include");
    iterated.sort();
    assert_eq!(iterated, ["org", "yamada"]);
    let everything_referenced = server.get(&substitute("/ina/fhir/Communication?_id={c1}&_include=*", &ids)).await.json();
    let mut star = keys(&everything_referenced, "include");
    star.sort();
    assert_eq!(star, ["doc", "yamada"]);
    // Compartment search.
    let compartment = server.get(&substitute("/ina/fhir/Patient/{yamada}/Communication?_sort=sent", &ids)).await.json();
    assert_eq!(keys(&compartment, "match"), ["c1", "c2"]);
    let observations = server.get(&substitute("/ina/fhir/Patient/{yamada}/Observation", &ids)).await.json();
    assert_eq!(keys(&observations, "match"), ["obs1"]);
    server.get("/ina/fhir/Patient/nobody/Observation").await.expect(404);
    // $everything: the Patient and its compartment, nothing of other people.
    let everything = server.get(&substitute("/ina/fhir/Patient/{yamada}/$everything?_count=100", &ids)).await.json();
    let mut all = keys(&everything, "match");
    all.sort();
    assert_eq!(all, ["c1", "c2", "obs1", "team", "yamada"]);
    let only = server.get(&substitute("/ina/fhir/Patient/{yamada}/$everything?_type=Observation", &ids)).await.json();
    assert_eq!(keys(&only, "match"), ["obs1"]);
    // System search across types.
    let system = server.get(&substitute("/ina/fhir?_type=Patient,Practitioner&_id={doc},{jose},{c1}", &ids)).await.json();
    let mut found = keys(&system, "match");
    found.sort();
    assert_eq!(found, ["doc", "jose"]);
    let tagged = server.get("/ina/fhir?_tag=urn:renraku:tag|demo").await.json();
    assert_eq!(keys(&tagged, "match"), ["yamada"]);
    let one_type = server.get("/ina/fhir?_type=Practitioner&gender=female").await.json();
    assert_eq!(keys(&one_type, "match"), ["nurse"]);
    server.get("/ina/fhir?_type=Nonsense").await.expect(400);
    // Malformed or unknown parameters are 400s naming the parameter.
    for (query, parameter) in [
        ("Patient?nonsense=1", "nonsense"),
        ("Patient?name:fuzzy=x", "name:fuzzy"),
        ("Patient?birthdate=yesterday", "birthdate"),
        ("Patient?gender:missing=maybe", "gender:missing"),
        ("Patient?_sort=nonsense", "_sort"),
        ("Patient?_include=Patient:name", "_include"),
        ("Communication?subject.nonsense=1", "subject.nonsense"),
        ("Observation?value-quantity=abc", "value-quantity"),
    ] {
        let reply = server.get(&format!("/ina/fhir/{query}")).await;
        reply.expect(400);
        assert_eq!(reply.issue_expressions(), [parameter], "{query}");
    }
}

async fn paging_with_sort_survives_concurrent_writes(backend: Backend) {
    let server = Server::start(backend).await;
    for day in 1..=9 {
        server
            .create("ina", &json!({ "resourceType": "Communication", "status": "completed", "sent": format!("2026-11-0{day}") }))
            .await;
    }
    let mut seen = Vec::new();
    let mut next = Some("/ina/fhir/Communication?_sort=-sent&_count=4".to_owned());
    let mut first_page = None;
    let mut round = 0;
    while let Some(url) = next {
        let bundle = server.get(&url.replace("http://renraku.test", "")).await.json();
        if first_page.is_none() {
            first_page = Some(bundle.clone());
        }
        seen.extend(bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["sent"].as_str().unwrap_or_default().to_owned()));
        next = bundle["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "next")).and_then(|l| l["url"].as_str().map(str::to_owned));
        round += 1;
        if round == 1 {
            // Writes between pages: a newer message and an older one.
            server.create("ina", &json!({ "resourceType": "Communication", "status": "completed", "sent": "2026-12-01" })).await;
            server.create("ina", &json!({ "resourceType": "Communication", "status": "completed", "sent": "2026-10-01" })).await;
        }
    }
    let original: Vec<String> = (1..=9).rev().map(|day| format!("2026-11-0{day}")).collect();
    let without_new: Vec<String> = seen.iter().filter(|s| s.as_str() != "2026-10-01").cloned().collect();
    assert_eq!(without_new, original, "each original message exactly once, in order: {seen:?}");
    // The previous link of page two leads back to page one.
    let page_one = first_page.expect("first page");
    let next_url = page_one["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "next")).and_then(|l| l["url"].as_str()).expect("next").to_owned();
    let page_two = server.get(&next_url.replace("http://renraku.test", "")).await.json();
    let previous_url = page_two["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "previous")).and_then(|l| l["url"].as_str()).expect("previous").to_owned();
    let back = server.get(&previous_url.replace("http://renraku.test", "")).await.json();
    let sent = |bundle: &Value| bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["sent"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>();
    // Page one was read before 2026-12-01 was written; going back now shows it as well.
    assert_eq!(sent(&back), ["2026-11-09", "2026-11-08", "2026-11-07", "2026-11-06"]);
}

async fn custom_search_parameter_after_reindex(backend: Backend) {
    let directory = tempfile::tempdir().expect("dir");
    std::fs::write(
        directory.path().join("kana.json"),
        json!({ "resourceType": "SearchParameter", "url": "https://renraku.example.jp/fhir/SearchParameter/Patient-city-kana",
                "name": "city", "status": "active", "code": "city", "base": ["Patient"], "type": "string",
                "expression": "Patient.address.city", "description": "Municipality of the address" }).to_string(),
    )
    .expect("write");
    let dir = directory.path().to_owned();
    // The same database, first without and then with the custom parameter.
    let server = Server::start(backend).await;
    server.create("ina", &json!({ "resourceType": "Patient", "address": [{ "city": "箕輪町" }] })).await;
    server.get("/ina/fhir/Patient?city=箕輪").await.expect(400);
    let restarted = server.restart_with(|config| {
        config.extra_search_parameters = renraku::config::read_search_parameters(&dir).expect("parameters");
    }).await;
    let found = restarted.get("/ina/fhir/Patient?city=箕輪").await;
    found.expect(200);
    assert_eq!(found.json()["total"], 1, "existing data was reindexed");
}


async fn generated_data_is_valid_and_searchable(backend: Backend) {
    let server = Server::start(backend).await;
    let fhir = server.fhir();
    let (patients, practitioners, communications) = fhir
        .generate("minowa", renraku::service::generate::Volume { patients: 120, communications: 600, seed: 7, ..Default::default() })
        .await
        .expect("generate");
    assert_eq!((patients, practitioners, communications), (120, 2, 600));
    let count = |path: &'static str| {
        let server = &server;
        async move { server.get(path).await.json()["total"].as_u64().unwrap_or(0) }
    };
    assert_eq!(count("/minowa/fhir/Patient?_summary=count").await, 120);
    assert_eq!(count("/minowa/fhir/Communication?_summary=count").await, 600);
    assert_eq!(count("/ina/fhir/Communication?_summary=count").await, 0, "only the target municipality");
    let timeline = server.get("/minowa/fhir/Communication?subject=Patient/gen7-p3&_sort=-sent&_include=Communication:sender").await.json();
    let sent: Vec<&str> = timeline["entry"].as_array().into_iter().flatten()
        .filter(|e| e["search"]["mode"] == "match").filter_map(|e| e["resource"]["sent"].as_str()).collect();
    let mut sorted = sent.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(sent, sorted, "newest first");
    let by_kana = count("/minowa/fhir/Patient?name=や").await;
    let by_kanji = count("/minowa/fhir/Patient?name=山").await;
    assert!(by_kana > 0 && by_kanji > 0, "kana {by_kana}, kanji {by_kanji}");
    assert_eq!(count("/minowa/fhir/Patient?identifier=00000042").await, 1);
}

both_backends!(
    query_table,
    sorting_includes_and_compartments,
    paging_with_sort_survives_concurrent_writes,
    custom_search_parameter_after_reindex,
    generated_data_is_valid_and_searchable,
);
