//! `renraku import ssmix2` as the central hospital runs it (issue #18): a standardized
//! storage the test writes itself — ISO-2022-JP files in SS-MIX2's folder layout and file
//! naming, with kanji whose bytes are HL7 delimiters, a superseded and a deleted order, a
//! corrupted file, a message of a person the gateway does not know and a data type without a
//! mapping — imported by the `renraku` binary over HTTP as the demo hospital's Backend
//! Services client into a `renraku serve --demo` process. Nothing half-written, the rest
//! continues, a second run changes nothing, and the audit trail shows the client's writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::both_backends;
use crate::nodes::Node;
use crate::production::{bearer, demo_key, renraku};
use crate::support::{new_database, Backend};

/// The hospital's 医療機関コード: Nagano (20), medical (1), 0012345.
const FACILITY: &str = "2010012345";
const PATIENT_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.12010012345";
const HOSPITAL: &str = "Organization/demo-ina-central-hospital";
const EHR: &str = "demo-ehr-ina";

/// `text` (segments ending in CR) encoded as ISO-2022-JP.
fn jis(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::ISO_2022_JP.encode(text);
    assert!(!unmappable, "{text} is representable in ISO-2022-JP");
    bytes.into_owned()
}

fn msh(kind: &str, control: &str) -> String {
    format!("MSH|^~\\&|HIS|2010012345|GW|RCV|20240401090000||{kind}|{control}|P|2.5||||||~ISO IR87||ISO 2022-1994\r")
}

/// A storage under construction.
struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Writes a file where SS-MIX2 puts it; its path under the root.
    #[allow(clippy::too_many_arguments)]
    fn write(&self, patient: &str, date: &str, data_type: &str, order: &str, occurred: &str, flag: char, bytes: &[u8]) -> PathBuf {
        let directory = self.root.join(&patient[..3]).join(&patient[3..6]).join(patient).join(date).join(data_type);
        std::fs::create_dir_all(&directory).expect("the storage's directories");
        let department = if date == "-" { "-" } else { "01" };
        let path = directory.join(format!("{patient}_{date}_{data_type}_{order}_{occurred}_{department}_{flag}"));
        std::fs::write(&path, bytes).expect("a storage file");
        path
    }
}

/// 宮 (0x35 0x5C: '\'), 京 (0x35 0x7E: '~'), 五 (0x38 0x5E: '^'), 万 (0x4B 0x7C: '|') and
/// 侃 (0x34 0x26: '&') in ISO-2022-JP: a parser that split bytes would cut these names.
fn adt(patient: &str, family: &str, given: &str, kana_family: &str, kana_given: &str, sex: &str) -> Vec<u8> {
    jis(&format!(
        "{}EVN||20240401090000\rPID|0001||{patient}^^^^PI||{family}^{given}^^^^^L^I~{kana_family}^{kana_given}^^^^^L^P||19380405|{sex}|||^^^^3960021^JPN^H^長野県伊那市五万侃町１－２||^PRN^PH^^^^^^^^^0265-00-0000\rPV1|0001|O\r",
        msh("ADT^A08^ADT_A01", &format!("ADT{patient}"))
    ))
}

fn ppr(patient: &str) -> Vec<u8> {
    jis(&format!(
        "{}PID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\rPRB|AD|20240401|20054174^胃炎^MDCDX2|P{patient}01|||20240315||20240401|K297^^I10||||N^回復せず^HL70241|20240401|20240301|胃炎\rZPR||20054174^胃炎^MDCDX2|||TSQF^胃炎^MDCDX2\r",
        msh("PPR^ZD1^PPR_ZD1", &format!("PPR{patient}"))
    ))
}

/// An order of two drugs (one Rp each); `dose` is the first drug's.
fn omp(patient: &str, order: &str, dose: &str) -> Vec<u8> {
    let drug = |rp: &str, code: &str, name: &str, dose: &str| {
        format!(
            "ORC|NW|{order}||{rp}|||||20240401103045|058^入力^花子||110^田中^一郎|||||01^内科^99XY1\rRXE||{code}^{name}^HOT9|{dose}||TAB^錠^MR9P|||||15|TAB^錠^MR9P||||||||||||||||||||20240401103045\rTQ1|1||1013044400000000&内服・経口・１日３回朝昼夕食後&JAMISDP01|||5^d|20240401\rRXR|PO^口^HL70162\r"
        )
    };
    jis(&format!(
        "{}PID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\r{}{}",
        msh("RDE^O11^RDE_O11", &format!("OMP{order}")),
        drug("1", "108665201", "ダーゼン錠５ｍｇ", dose),
        drug("2", "103835401", "ムコダイン錠２５０ｍｇ", "3")
    ))
}

/// `renraku import ssmix2` against `node`; (exit success, standard output).
fn import(node: &Node, root: &Path, state: &Path) -> (bool, String) {
    let key = demo_key("ehr-ina-rs384.pem");
    let output = Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(["import", "ssmix2", "--base", &format!("{}/ina/fhir", node.base), "--client-id", EHR])
        .arg("--key")
        .arg(&key)
        .args(["--kid", "ehr-ina-rs384", "--facility", FACILITY, "--organization", HOSPITAL, "--quiet"])
        .arg("--state")
        .arg(state)
        .arg(root)
        .env("RENRAKU_LOG", "warn")
        .output()
        .expect("the renraku binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)))
}

/// The number after `label` in a summary (`created: 3`).
fn count(summary: &str, label: &str) -> usize {
    let at = summary.find(label).unwrap_or_else(|| panic!("'{label}' in {summary}")) + label.len();
    summary[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a number after '{label}' in {summary}"))
}

async fn get(node: &Node, token: &str, path: &str) -> Value {
    let reply = node.http.get(format!("{}{path}", node.base)).bearer_auth(token).send().await.expect("a reply");
    assert_eq!(reply.status().as_u16(), 200, "GET {path}");
    reply.json().await.expect("JSON")
}

fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().into_iter().flatten().filter(|e| e["search"]["mode"] != "include").map(|e| e["resource"].clone()).collect()
}

async fn a_hospital_imports_its_standardized_storage(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let dir = directory.path();
    let data_dir = dir.to_string_lossy().into_owned();
    let settings = ["--demo", "--database-url", config.database_url.as_str(), "--data-dir", data_dir.as_str()];
    // An auditor of 伊那市, to see the trail.
    let auditor_key = dir.join("auditor.pem");
    renraku(
        &["admin", "client", "add", "--role", "municipal-auditor", "--tenant", "ina", "--client-id", "ina-audit", "--key-out", &auditor_key.to_string_lossy()],
        &settings,
    )
    .expect("the auditor's client is registered");
    let node = Node::serve(&settings).await;

    let storage = Storage { root: dir.join("ssmix2") };
    storage.write("0012345", "-", "ADT-00", "999999999999999", "20240401090000000", '1', &adt("0012345", "宮本", "京子", "ミヤモト", "キョウコ", "F"));
    storage.write("0012346", "-", "ADT-00", "999999999999999", "20240401090100000", '1', &adt("0012346", "万代", "五郎", "バンダイ", "ゴロウ", "M"));
    storage.write("0012345", "-", "PPR-01", "999999999999999", "20240401100000000", '1', &ppr("0012345"));
    // Order A was changed: the older file is flagged superseded (2), the newer current (1).
    storage.write("0012345", "20240401", "OMP-01", "000000000000101", "20240401103045000", '2', &omp("0012345", "000000000000101", "2"));
    storage.write("0012345", "20240401", "OMP-01", "000000000000101", "20240401113045000", '1', &omp("0012345", "000000000000101", "1"));
    let order_b = storage.write("0012345", "20240401", "OMP-01", "000000000000102", "20240401120000000", '1', &omp("0012345", "000000000000102", "4"));
    // Bad input among the good: UTF-8 bytes where ISO-2022-JP belongs; a sex code of no
    // table; a person the gateway does not know; a data type with no mapping.
    let mut corrupted = jis(&format!("{}PID|0001||0012347^^^^PI||", msh("ADT^A08^ADT_A01", "BAD1")));
    corrupted.extend_from_slice("山田^花子^^^^^L^I\r".as_bytes());
    storage.write("0012347", "-", "ADT-00", "999999999999999", "20240401090200000", '1', &corrupted);
    storage.write("0012348", "-", "ADT-00", "999999999999999", "20240401090300000", '1', &adt("0012348", "宮本", "京", "ミヤモト", "ケイ", "X"));
    storage.write("0099999", "-", "PPR-01", "999999999999999", "20240401100100000", '1', &ppr("0099999"));
    storage.write("0012345", "20240401", "OML-11", "000000000000201", "20240401130000000", '1', &jis(&msh("OUL^R22^OUL_R22", "LAB1")));
    let state = dir.join("import.state");

    // First run: the two persons are registered by the hospital; their clinical messages are
    // refused (the hospital is on no support team yet), and so is the bad input; the
    // import goes on past each and fails at the end.
    let (succeeded, first) = import(&node, &storage.root, &state);
    assert!(!succeeded, "rejections make the exit status non-zero:\n{first}");
    assert_eq!(count(&first, "files read:"), 10, "{first}");
    assert_eq!(count(&first, "superseded"), 1, "{first}");
    assert_eq!(count(&first, "resources created:"), 2, "{first}");
    assert_eq!(count(&first, "rejected:"), 7, "{first}");
    assert!(first.contains("0012347_-_ADT-00") && first.contains("(segment 2, PID-5)") && first.contains("not a character of ISO-2022-JP"), "{first}");
    assert!(first.contains("PID-8: code 'X' is not in table sex"), "{first}");
    assert!(first.contains("no mapping for data type OML-11"), "{first}");
    assert!(first.contains("0099999_-_PPR-01") && first.contains("matches no resource"), "{first}");
    assert!(first.contains("0012345_-_PPR-01") && first.contains("refused (403)"), "{first}");

    let ehr = bearer(&node, EHR, &demo_key("ehr-ina-rs384.pem"), "ehr-ina-rs384", "ina", "system/*.cruds").await;
    let found = get(&node, &ehr, &format!("/ina/fhir/Patient?identifier={PATIENT_SYSTEM}|0012345")).await;
    let patients = resources(&found);
    assert_eq!(patients.len(), 1, "{found}");
    let patient = &patients[0];
    let id = patient["id"].as_str().expect("an id").to_owned();
    assert_eq!(patient["managingOrganization"]["reference"], HOSPITAL);
    assert_eq!(patient["name"][0]["family"], "宮本");
    assert_eq!(patient["name"][0]["given"], json!(["京子"]));
    assert_eq!(patient["name"][0]["extension"][0]["valueCode"], "IDE");
    assert_eq!(patient["name"][1]["family"], "ミヤモト");
    assert_eq!(patient["name"][1]["extension"][0]["valueCode"], "SYL");
    assert_eq!(patient["address"][0]["text"], "長野県伊那市五万侃町１－２");
    assert_eq!(patient["address"][0]["postalCode"], "396-0021");
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1938-04-05");
    assert_eq!(patient["meta"]["profile"], json!(["http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"]));
    // Found by kana, as a registration desk searches.
    let by_kana = get(&node, &ehr, "/ina/fhir/Patient?name=%E3%83%9F%E3%83%A4%E3%83%A2%E3%83%88").await;
    assert_eq!(resources(&by_kana).iter().filter(|p| p["id"] == id.as_str()).count(), 1, "{by_kana}");

    // The hospital forms the person's support team (it registered the person), then runs the
    // import again: only what was not acknowledged is sent.
    let team = json!({
        "resourceType": "CareTeam", "status": "active", "subject": { "reference": format!("Patient/{id}") },
        "participant": [{ "member": { "reference": HOSPITAL } }]
    });
    let reply = node
        .http
        .post(format!("{}/ina/fhir/CareTeam", node.base))
        .bearer_auth(&ehr)
        .header("content-type", "application/fhir+json")
        .body(team.to_string())
        .send()
        .await
        .expect("a reply");
    assert_eq!(reply.status().as_u16(), 201, "{}", reply.text().await.unwrap_or_default());
    let (_, second) = import(&node, &storage.root, &state);
    assert_eq!(count(&second, "already sent"), 2, "{second}");
    assert_eq!(count(&second, "resources created:"), 5, "one Condition, two orders of two drugs:\n{second}");
    assert_eq!(count(&second, "rejected:"), 4, "{second}");

    let conditions = resources(&get(&node, &ehr, &format!("/ina/fhir/Condition?patient={id}")).await);
    assert_eq!(conditions.len(), 1);
    let codes: Vec<&str> = conditions[0]["code"]["coding"].as_array().expect("codings").iter().filter_map(|c| c["code"].as_str()).collect();
    assert_eq!(codes, vec!["20054174", "TSQF", "K297"]);
    assert_eq!(conditions[0]["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(conditions[0]["onsetDateTime"], "2024-03-01");
    let orders = resources(&get(&node, &ehr, &format!("/ina/fhir/MedicationRequest?patient={id}&_count=50")).await);
    assert_eq!(orders.len(), 4);
    let doses: Vec<(String, f64)> = orders
        .iter()
        .map(|o| (o["identifier"][0]["value"].as_str().unwrap_or_default().to_owned(), o["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"].as_f64().unwrap_or_default()))
        .collect();
    let order_a_first = format!("{FACILITY}-OMP-01-000000000000101-1-1");
    assert!(doses.contains(&(order_a_first, 1.0)), "the current file's dose, not the superseded one's: {doses:?}");
    let drug = orders.iter().find(|o| o["identifier"][0]["value"].as_str().is_some_and(|v| v.ends_with("0102-1-1"))).expect("order B's first drug");
    assert_eq!(drug["medicationCodeableConcept"]["coding"][0], json!({ "system": "http://medis.or.jp/CodeSystem/master-HOT9", "code": "108665201", "display": "ダーゼン錠５ｍｇ" }));
    assert_eq!(drug["dispenseRequest"]["expectedSupplyDuration"], json!({ "value": 5, "unit": "日", "system": "http://unitsofmeasure.org", "code": "d" }));
    assert_eq!(drug["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"], "1013044400000000");
    assert_eq!(drug["authoredOn"], "2024-04-01T10:30:45+09:00");

    // The import's memory lost: everything is sent again, and nothing changes.
    let (_, third) = import(&node, &storage.root, &dir.join("fresh.state"));
    assert_eq!(count(&third, "resources created:"), 0, "{third}");
    assert_eq!(count(&third, "updated:"), 0, "{third}");
    assert_eq!(count(&third, "unchanged:"), 7, "{third}");
    let history = get(&node, &ehr, &format!("/ina/fhir/Patient/{id}/_history")).await;
    assert_eq!(history["total"], 1, "no second version: {history}");

    // The hospital cancels order B: SS-MIX2 renames its file to flag 0; its drugs go.
    let cancelled = order_b.with_file_name(order_b.file_name().unwrap().to_string_lossy().replace("_01_1", "_01_0"));
    std::fs::rename(&order_b, &cancelled).expect("renamed");
    let (_, fourth) = import(&node, &storage.root, &state);
    assert_eq!(count(&fourth, "deleted:"), 2, "{fourth}");
    let orders = resources(&get(&node, &ehr, &format!("/ina/fhir/MedicationRequest?patient={id}")).await);
    assert_eq!(orders.len(), 2);

    // The trail shows the client's transactions with the person, as the auditor sees it.
    let auditor = bearer(&node, "ina-audit", &auditor_key, "ina-audit", "ina", "system/AuditEvent.rs").await;
    let mut seen = Value::Null;
    let mut writes = Vec::new();
    for _ in 0..50 {
        seen = get(&node, &auditor, &format!("/ina/fhir/AuditEvent?patient={id}&_count=200")).await;
        writes = resources(&seen).into_iter().filter(|event| event["action"] != "R" && event["action"] != "E").collect();
        if writes.len() >= 15 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let subtype = |event: &Value| event["subtype"][0]["code"].as_str().unwrap_or_default().to_owned();
    // The person's registration, the Condition and four drugs, all sent again (unchanged),
    // two deleted, and the support team the hospital formed.
    assert_eq!(writes.iter().filter(|e| subtype(e) == "update").count(), 12, "{seen}");
    assert_eq!(writes.iter().filter(|e| subtype(e) == "delete").count(), 2, "{seen}");
    assert!(writes.iter().all(|event| event.to_string().contains(EHR) && event.to_string().contains(HOSPITAL)), "each names the client: {seen}");

    drop(node);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// `--dry-run --out DIR` converts without a gateway: one transaction Bundle per message,
/// each entry a conditional update by identifier (a person and their data refer to each
/// other by identifier, so Bundles can be sent in any later run).
#[test]
fn a_dry_run_writes_the_bundles() {
    let directory = tempfile::tempdir().expect("a directory");
    let storage = Storage { root: directory.path().join("ssmix2") };
    storage.write("0012345", "-", "ADT-00", "999999999999999", "20240401090000000", '1', &adt("0012345", "宮本", "京子", "ミヤモト", "キョウコ", "F"));
    storage.write("0012345", "20240401", "OMP-01", "000000000000101", "20240401113045000", '1', &omp("0012345", "000000000000101", "1"));
    let out = directory.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(["import", "ssmix2", "--dry-run", "--facility", FACILITY, "--quiet"])
        .arg("--out")
        .arg(&out)
        .arg("--state")
        .arg(directory.path().join("state"))
        .arg(&storage.root)
        .output()
        .expect("the renraku binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(out.join("bundles.ndjson")).expect("the bundles");
    let bundles: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(bundles.len(), 2);
    assert_eq!(bundles[0]["entry"][0]["request"], json!({ "method": "PUT", "url": format!("Patient?identifier={PATIENT_SYSTEM}|0012345") }));
    assert_eq!(bundles[1]["entry"].as_array().map(Vec::len), Some(2));
    assert_eq!(bundles[1]["entry"][0]["resource"]["subject"]["reference"], format!("Patient?identifier={PATIENT_SYSTEM}|0012345"));
}

both_backends!(a_hospital_imports_its_standardized_storage);
