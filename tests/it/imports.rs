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
    ppr_with(patient, "AD")
}

/// A problem list of one problem, `action` its PRB-1 (AD added, DE deleted).
fn ppr_with(patient: &str, action: &str) -> Vec<u8> {
    jis(&format!(
        "{}PID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\rPRB|{action}|20240401|20054174^胃炎^MDCDX2|P{patient}01|||20240315||20240401|K297^^I10||||N^回復せず^HL70241|20240401|20240301|胃炎\rZPR||20054174^胃炎^MDCDX2|||TSQF^胃炎^MDCDX2\r",
        msh("PPR^ZD1^PPR_ZD1", &format!("PPR{patient}"))
    ))
}

/// An order of two drugs (one Rp each); `dose` is the first drug's.
fn omp(patient: &str, order: &str, dose: &str) -> Vec<u8> {
    omp_of(patient, order, dose, 2)
}

/// A prescription of its first `drugs` (1 or 2) drugs.
fn omp_of(patient: &str, order: &str, dose: &str, drugs: usize) -> Vec<u8> {
    let drug = |rp: &str, code: &str, name: &str, dose: &str| {
        format!(
            "ORC|NW|{order}||{rp}|||||20240401103045|058^入力^花子||110^田中^一郎|||||01^内科^99XY1\rRXE||{code}^{name}^HOT9|{dose}||TAB^錠^MR9P|||||15|TAB^錠^MR9P||||||||||||||||||||20240401103045\rTQ1|1||1013044400000000&内服・経口・１日３回朝昼夕食後&JAMISDP01|||5^d|20240401\rRXR|PO^口^HL70162\r"
        )
    };
    jis(&format!(
        "{}PID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\r{}{}",
        msh("RDE^O11^RDE_O11", &format!("OMP{order}")),
        drug("1", "108665201", "ダーゼン錠５ｍｇ", dose),
        if drugs > 1 { drug("2", "103835401", "ムコダイン錠２５０ｍｇ", "3") } else { String::new() }
    ))
}

/// A blood test's results (as the NHO's OML-11 sample lays them out: SPM, OBR, ORC, OBX).
fn oml(patient: &str) -> Vec<u8> {
    jis(&format!(
        "{}PID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\rPV1|0001|O|01^^^^^C\rSPM|1|000000001219001||023^血清^JC10|||||||||||||202404011500\rOBR|1|000000011000354|000000001219001|E001^血液学的検査^99O03|||20240401|20240401||||||||607^医師^一郎||||||20240402103059\rORC|SC|000000011000354|000000001219001||CM||||20240402103059|||607^医師^一郎\rOBX|1|NM|3A016000002327102^A/G比^JC10||1.7||1.2-2.0||||F|||202404011500\rOBX|2|NM|3A010000002327101^総蛋白^JC10||7.2|g/dl^g/dl^99XYZ|6.70-8.3|N|||F|||202404011500\rOBX|3|ST|3A015000002327101^アルブミン所見^JC10||溶血なし||||||F|||202404011500\r",
        msh("OUL^R22^OUL_R22", &format!("OML{patient}"))
    ))
}

/// Two injections given in one order (the NHO's OMP-12 sample's layout).
fn injections(patient: &str) -> Vec<u8> {
    let given = |code: &str, name: &str, unit: &str| {
        format!("RXA|0|1|20240401080521|20240401130543|{code}^{name}^HOT9|1|{unit}^MR9P||^左手に実施^99IC2|200^看護^花子|09A^021^4^^^N|102ml/hr||||||||CP||20240401130613\r")
    };
    jis(&format!(
        "{}PID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\rPV1|0001|I|32^302^^^^N\rORC|NW|000000000000301||000000000000301_01_001|||||20240401073613|058^入力者^花子||110^医師^一郎\r{}{}RXR|IV^静脈内^HL70162||IVP^点滴ポンプ^HL70164\r",
        msh("RAS^O17^RAS_O17", &format!("INJ{patient}")),
        given("620007329", "ソリタ－Ｔ３号輸液５００ｍＬ", "HON^本"),
        given("620002559", "アドナ注（静脈用）50mg", "AMP^アンプル")
    ))
}

/// `renraku import ssmix2` against `node` as the hospital's EHR; (exit success, output).
fn import(node: &Node, root: &Path, state: &Path) -> (bool, String) {
    let client = Client { tenant: "ina", id: EHR, key: demo_key("ehr-ina-rs384.pem"), kid: "ehr-ina-rs384" };
    import_files("ssmix2", node, &client, &["--facility", FACILITY, "--organization", HOSPITAL], state, &[root.to_owned()])
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
    let problems = storage.write("0012345", "-", "PPR-01", "999999999999999", "20240401100000000", '1', &ppr("0012345"));
    // Order A was changed: the older file is flagged superseded (2), the newer current (1).
    storage.write("0012345", "20240401", "OMP-01", "000000000000101", "20240401103045000", '2', &omp("0012345", "000000000000101", "2"));
    let order_a = storage.write("0012345", "20240401", "OMP-01", "000000000000101", "20240401113045000", '1', &omp("0012345", "000000000000101", "1"));
    let order_b = storage.write("0012345", "20240401", "OMP-01", "000000000000102", "20240401120000000", '1', &omp("0012345", "000000000000102", "4"));
    // Bad input among the good: UTF-8 bytes where ISO-2022-JP belongs; a sex code of no
    // table; a person the gateway does not know; a data type with no mapping.
    let mut corrupted = jis(&format!("{}PID|0001||0012347^^^^PI||", msh("ADT^A08^ADT_A01", "BAD1")));
    corrupted.extend_from_slice("山田^花子^^^^^L^I\r".as_bytes());
    storage.write("0012347", "-", "ADT-00", "999999999999999", "20240401090200000", '1', &corrupted);
    storage.write("0012348", "-", "ADT-00", "999999999999999", "20240401090300000", '1', &adt("0012348", "宮本", "京", "ミヤモト", "ケイ", "X"));
    storage.write("0099999", "-", "PPR-01", "999999999999999", "20240401100100000", '1', &ppr("0099999"));
    storage.write("0012345", "20240401", "OMP-02", "000000000000201", "20240401130000000", '1', &jis(&msh("RDE^O11^RDE_O11", "INJ1")));
    storage.write("0012345", "20240401", "OML-11", "000000011000354", "20240402103059000", '1', &oml("0012345"));
    storage.write("0012345", "20240401", "OMP-12", "000000000000301", "20240401130613000", '1', &injections("0012345"));
    let state = dir.join("import.state");

    // First run: the two persons are registered by the hospital; their clinical messages are
    // refused (the hospital is on no support team yet), and so is the bad input; the
    // import goes on past each and fails at the end.
    let (succeeded, first) = import(&node, &storage.root, &state);
    assert!(!succeeded, "rejections make the exit status non-zero:\n{first}");
    assert_eq!(count(&first, "files read:"), 12, "{first}");
    assert_eq!(count(&first, "superseded"), 1, "{first}");
    assert_eq!(count(&first, "resources created:"), 2, "{first}");
    assert_eq!(count(&first, "rejected:"), 9, "{first}");
    assert!(first.contains("0012347_-_ADT-00") && first.contains("(segment 2, PID-5)") && first.contains("not a character of ISO-2022-JP"), "{first}");
    assert!(first.contains("PID-8: code 'X' is not in table sex"), "{first}");
    assert!(first.contains("no mapping for data type OMP-02"), "{first}");
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
    assert_eq!(count(&second, "resources created:"), 12, "a Condition, two orders of two drugs, a specimen with three results and their report, two injections:\n{second}");
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

    let results = resources(&get(&node, &ehr, &format!("/ina/fhir/Observation?patient={id}&category=laboratory")).await);
    assert_eq!(results.len(), 3);
    let protein = results.iter().find(|o| o["code"]["coding"][0]["code"] == "3A010000002327101").expect("総蛋白");
    assert_eq!(protein["code"]["coding"][0]["system"], "urn:oid:1.2.392.200119.4.504");
    assert_eq!(protein["valueQuantity"], json!({ "value": 7.2, "unit": "g/dl" }), "a local unit code stays text");
    assert_eq!(protein["effectiveDateTime"], "2024-04-01T15:00:00+09:00");
    assert_eq!(protein["interpretation"][0]["coding"][0]["code"], "N");
    let finding = results.iter().find(|o| o["valueString"] == "溶血なし").expect("a text result");
    assert_eq!(finding["status"], "final");
    let reports = resources(&get(&node, &ehr, &format!("/ina/fhir/DiagnosticReport?patient={id}")).await);
    assert_eq!(reports[0]["result"].as_array().map(Vec::len), Some(3));
    assert_eq!(reports[0]["specimen"][0]["reference"], protein["specimen"]["reference"]);
    let given = resources(&get(&node, &ehr, &format!("/ina/fhir/MedicationAdministration?patient={id}")).await);
    assert_eq!(given.len(), 2);
    assert!(given.iter().all(|g| g["status"] == "completed" && g["dosage"]["route"]["coding"][0]["code"] == "IV"), "{given:?}");

    // The import's memory lost: everything is sent again, and nothing changes.
    let (_, third) = import(&node, &storage.root, &dir.join("fresh.state"));
    assert_eq!(count(&third, "resources created:"), 0, "{third}");
    assert_eq!(count(&third, "updated:"), 0, "{third}");
    assert_eq!(count(&third, "unchanged:"), 14, "{third}");
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
        if writes.len() >= 29 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let subtype = |event: &Value| event["subtype"][0]["code"].as_str().unwrap_or_default().to_owned();
    // The person's registration, their twelve clinical resources, all thirteen sent again
    // (unchanged), two deleted, and the support team the hospital formed.
    assert_eq!(writes.iter().filter(|e| subtype(e) == "update").count(), 26, "{seen}");
    assert_eq!(writes.iter().filter(|e| subtype(e) == "delete").count(), 2, "{seen}");
    assert!(writes.iter().all(|event| event.to_string().contains(EHR) && event.to_string().contains(HOSPITAL)), "each names the client: {seen}");
    // The requestor is software, not a person (BALP: DICOM 110150 Application).
    assert!(
        writes.iter().all(|event| event["agent"][0]["requestor"] == true && event["agent"][0]["type"]["coding"][0]["code"] == "110150"),
        "the client is recorded as an application: {seen}"
    );

    // Order A changed again: its second drug was stopped. The newer file is current, the
    // previous one superseded; the stopped drug's MedicationRequest goes with the update.
    let a_of = |o: &&Value| o["identifier"][0]["value"].as_str().is_some_and(|v| v.contains("-000000000000101-"));
    let before = resources(&get(&node, &ehr, &format!("/ina/fhir/MedicationRequest?patient={id}")).await);
    assert_eq!(before.iter().filter(a_of).count(), 2, "{before:?}");
    std::fs::rename(&order_a, order_a.with_file_name(order_a.file_name().unwrap().to_string_lossy().replace("_01_1", "_01_2"))).expect("renamed");
    storage.write("0012345", "20240401", "OMP-01", "000000000000101", "20240402090000000", '1', &omp_of("0012345", "000000000000101", "1", 1));
    let (_, fifth) = import(&node, &storage.root, &state);
    assert_eq!(count(&fifth, "deleted:"), 1, "{fifth}");
    assert_eq!(count(&fifth, "unchanged:"), 1, "{fifth}");
    let after = resources(&get(&node, &ehr, &format!("/ina/fhir/MedicationRequest?patient={id}")).await);
    let remaining: Vec<&str> = after.iter().filter(a_of).filter_map(|o| o["identifier"][0]["value"].as_str()).collect();
    assert_eq!(remaining, vec![format!("{FACILITY}-OMP-01-000000000000101-1-1")], "{after:?}");
    // Sent again with the memory lost, the stopped drug's delete matches nothing and
    // nothing is counted as deleted.
    let (_, sixth) = import(&node, &storage.root, &dir.join("fresher.state"));
    assert_eq!(count(&sixth, "deleted:"), 0, "{sixth}");
    assert_eq!(count(&sixth, "resources created:"), 0, "{sixth}");

    // The problem deleted at the hospital (PRB-1 DE): entered in error, with no clinical
    // status (R4's con-5), as JAMI's draft maps it.
    std::fs::rename(&problems, problems.with_file_name(problems.file_name().unwrap().to_string_lossy().replace("_-_1", "_-_2"))).expect("renamed");
    storage.write("0012345", "-", "PPR-01", "999999999999999", "20240403100000000", '1', &ppr_with("0012345", "DE"));
    let (_, seventh) = import(&node, &storage.root, &state);
    assert_eq!(count(&seventh, "updated:"), 1, "{seventh}");
    let conditions = resources(&get(&node, &ehr, &format!("/ina/fhir/Condition?patient={id}")).await);
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    assert_eq!(conditions[0]["verificationStatus"]["coding"][0]["code"], "entered-in-error");
    assert!(conditions[0].get("clinicalStatus").is_none() && conditions[0].get("abatementDateTime").is_none(), "{}", conditions[0]);

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


/// `text` encoded as MS932 (Shift_JIS as Windows writes it), CRLF line ends.
fn ms932(text: &str) -> Vec<u8> {
    let text = text.replace('\n', "\r\n");
    let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&text);
    assert!(!unmappable, "{text} is representable in MS932");
    bytes.into_owned()
}

/// A Backend Services client of the gateway: its municipality, id, key and key id.
struct Client<'a> {
    tenant: &'a str,
    id: &'a str,
    key: PathBuf,
    kid: &'a str,
}

/// `renraku import KIND` as `client`; (exit success, output).
fn import_files(kind: &str, node: &Node, client: &Client, extra: &[&str], state: &Path, files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(["import", kind, "--base", &format!("{}/{}/fhir", node.base, client.tenant), "--client-id", client.id, "--kid", client.kid, "--quiet"])
        .arg("--key")
        .arg(&client.key)
        .arg("--state")
        .arg(state)
        .args(extra)
        .args(files)
        .env("RENRAKU_LOG", "warn")
        .output()
        .expect("the renraku binary runs");
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

/// 南箕輪村's administrator imports the municipality's roster: a spreadsheet saved as MS932
/// (with 髙, a character only MS932's IBM extensions hold), one professional per line.
async fn a_municipality_imports_its_roster(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let dir = directory.path();
    let data_dir = dir.to_string_lossy().into_owned();
    let settings = ["--demo", "--database-url", config.database_url.as_str(), "--data-dir", data_dir.as_str()];
    let key = dir.join("mm-admin.pem");
    renraku(&["admin", "client", "add", "--role", "municipal-admin", "--tenant", "minamiminowa", "--client-id", "mm-admin", "--key-out", &key.to_string_lossy()], &settings)
        .expect("the administrator's client is registered");
    let node = Node::serve(&settings).await;
    let administrator = Client { tenant: "minamiminowa", id: "mm-admin", key: key.clone(), kid: "mm-admin" };
    let roster = dir.join("名簿.csv");
    std::fs::write(
        &roster,
        ms932(
            "事業所番号,事業所名,事業所種別,事業所電話,事業所住所,職員番号,氏名,氏名カナ,職種,電話,メール\n\
             2070900101,みなみみのわ居宅介護支援センター,居宅介護支援事業所,0265-00-1111,長野県上伊那郡南箕輪村1,001,中村 花子,ナカムラ ハナコ,介護支援専門員,,nakamura@example.jp\n\
             2070900101,みなみみのわ居宅介護支援センター,居宅介護支援事業所,0265-00-1111,長野県上伊那郡南箕輪村1,002,小林 一郎,コバヤシ イチロウ,訪問介護員,,\n\
             2070900202,南箕輪訪問看護ステーション,訪問看護ステーション,0265-00-2222,,101,髙橋 真由美,タカハシ マユミ,看護師,090-0000-0000,\n\
             2070900202,南箕輪訪問看護ステーション,訪問看護ステーション,0265-00-2222,,102,占部 守,ウラベ マモル,占い師,,\n",
        ),
    )
    .expect("the roster is written");
    let (succeeded, first) = import_files("roster", &node, &administrator, &[], &dir.join("state"), std::slice::from_ref(&roster));
    assert!(!succeeded, "{first}");
    assert_eq!(count(&first, "resources created:"), 8, "two offices, three professionals with their roles:\n{first}");
    assert_eq!(count(&first, "unchanged:"), 1, "{first}");
    assert!(first.contains("名簿.csv line 5: 職種: code '占い師' is not in table care-role"), "{first}");

    let admin = bearer(&node, "mm-admin", &key, "mm-admin", "minamiminowa", "system/*.cruds").await;
    let roles = resources(&get(&node, &admin, "/minamiminowa/fhir/PractitionerRole?identifier=https://renraku.example.jp/fhir/sid/staff-no|2070900202-101&_include=PractitionerRole:practitioner&_include=PractitionerRole:organization").await);
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["code"][0]["coding"][0]["code"], "nurse");
    let included = get(&node, &admin, "/minamiminowa/fhir/Practitioner?identifier=https://renraku.example.jp/fhir/sid/staff-no|2070900202-101").await;
    let nurse = &resources(&included)[0];
    assert_eq!(nurse["name"][0]["family"], "髙橋");
    assert_eq!(nurse["name"][0]["given"], json!(["真由美"]));
    assert_eq!(nurse["name"][1]["text"], "タカハシ マユミ");
    assert_eq!(roles[0]["practitioner"]["reference"], format!("Practitioner/{}", nurse["id"].as_str().unwrap_or_default()));
    let office = resources(&get(&node, &admin, "/minamiminowa/fhir/Organization?identifier=https://renraku.example.jp/fhir/sid/care-office-no|2070900202").await);
    assert_eq!(office.len(), 1);
    assert_eq!(office[0]["type"][0]["coding"][0]["code"], "visiting-nurse-station");
    assert_eq!(roles[0]["organization"]["reference"], format!("Organization/{}", office[0]["id"].as_str().unwrap_or_default()));

    // The same roster again, the import's memory lost: nothing changes.
    let (_, second) = import_files("roster", &node, &administrator, &[], &dir.join("fresh"), std::slice::from_ref(&roster));
    assert_eq!(count(&second, "resources created:"), 0, "{second}");
    assert_eq!(count(&second, "unchanged:"), 9, "{second}");
    drop(node);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// A care office's software sends a person's care plan as the ケアプランデータ連携 CSVs
/// (MS932, no header row), as the office's Backend Services client.
async fn a_care_office_imports_a_care_plan(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let dir = directory.path();
    let data_dir = dir.to_string_lossy().into_owned();
    let node = Node::serve(&["--demo", "--database-url", config.database_url.as_str(), "--data-dir", data_dir.as_str()]).await;
    // The office's system: registered by 南箕輪村's administrator, approved by the operator.
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(demo_key("ehr-ina-jwks.json")).expect("the test key set")).expect("JSON");
    let client = json!({
        "client_id": "mm-care-system", "tenant": "minamiminowa", "kind": "system", "name": "居宅介護支援システム",
        "organization": "demo-mm-care-office", "scopes": "system/*.cruds", "jwks": jwks
    });
    let registered = node.http.post(format!("{}/admin/clients", node.base)).bearer_auth("demo-admin-minamiminowa").json(&client).send().await.expect("a reply");
    assert_eq!(registered.status().as_u16(), 201);
    let approved = node.http.post(format!("{}/admin/clients/minamiminowa/mm-care-system/approve", node.base)).bearer_auth("demo-operator").send().await.expect("a reply");
    assert_eq!(approved.status().as_u16(), 200);
    let key = demo_key("ehr-ina-es384.pem");
    let office = bearer(&node, "mm-care-system", &key, "ehr-ina-es384", "minamiminowa", "system/*.cruds").await;

    // The person is registered with the office on the support team (as the README shows);
    // the care-plan software knows them by insurer and insured numbers.
    let registration = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "fullUrl": "urn:uuid:2f1c0a52-0000-4000-8000-000000000001",
          "resource": { "resourceType": "Patient", "active": true,
            "identifier": [{ "system": "https://renraku.example.jp/fhir/sid/care-insured-no", "value": "203851-0000012345" }],
            "name": [{ "family": "佐々木", "given": ["ハル"] }], "managingOrganization": { "reference": "Organization/demo-mm-care-office" } },
          "request": { "method": "POST", "url": "Patient" } },
        { "resource": { "resourceType": "CareTeam", "status": "active", "subject": { "reference": "urn:uuid:2f1c0a52-0000-4000-8000-000000000001" },
            "participant": [{ "member": { "reference": "Organization/demo-mm-care-office" } }] },
          "request": { "method": "POST", "url": "CareTeam" } }
    ]});
    let reply = node.http.post(format!("{}/minamiminowa/fhir", node.base)).bearer_auth(&office).header("content-type", "application/fhir+json").body(registration.to_string()).send().await.expect("a reply");
    assert_eq!(reply.status().as_u16(), 200, "{}", reply.text().await.unwrap_or_default());
    let person = resources(&get(&node, &office, "/minamiminowa/fhir/Patient?identifier=https://renraku.example.jp/fhir/sid/care-insured-no|203851-0000012345").await);
    let id = person[0]["id"].as_str().expect("an id").to_owned();

    let sending = "2070900011_43_2070900202_13_20240401090000";
    let write = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(format!("{name}_{sending}.CSV"));
        std::fs::write(&path, bytes).expect("a care-plan file");
        path
    };
    let mut supplementary = vec!["202407", "203851", "0000012345", "20240401", "ササキ ハル", "佐々木 ハル", "2", "19360512", "3994511", "長野県上伊那郡南箕輪村", "2380-1", "0265-00-3333", "20240315", "20240401", "20250331", "2", "20240315", "22", "19705"];
    supplementary.resize(63, "");
    let files = [
        write("UPHOSOKU_000000", ms932(&(supplementary.join(",") + "\n"))),
        write("UP1KYO", ms932("202407,203851,0000012345,20240401,3994511,長野県上伊那郡南箕輪村,2380-1,鈴木 花子,南箕輪村居宅介護支援事業所,3994511,長野県上伊那郡南箕輪村,1,2070900011,20240401,20230401,21,2,20240315,20240401,20250331,22,\"自宅で暮らし続けたい。\n娘は週末に来られる。\",特になし,\"転倒を防ぎ、通院を続けられるよう支援する。\",,,,\n")),
        write("UP2KYO", ms932(
            "202407,203851,0000012345,20240401,20240401,1,一人で入浴できない,1,自宅の風呂に入れる,週2回は安全に入浴できる,2024/04～2025/03,2024/04～2024/09,1,入浴介助,Y,訪問介護,2070900303,みなみみのわヘルパー,週2回,2024/04～2024/09,,\n\
             202407,203851,0000012345,20240401,20240401,1,一人で入浴できない,1,自宅の風呂に入れる,週2回は安全に入浴できる,2024/04～2025/03,2024/04～2024/09,2,浴室の手すり,Y,福祉用具貸与,2070900404,南箕輪福祉用具,常時,2024/04～2024/09,,\n\
             202407,203851,0000012345,20240401,20240401,2,服薬を忘れる,2,飲み忘れがない,毎日決まった時間に飲める,2024/04～2025/03,2024/04～2024/09,1,服薬確認,Y,訪問看護,2070900202,南箕輪訪問看護ステーション,週1回,2024/04～2024/09,,\n",
        )),
        write("UPPLAN_202404", ms932(
            "202407,203851,0000012345,20240401,202404,2070900011,鈴木 花子,,,20240402,,1000,1100,1,111211,,,,,2070900303,みなみみのわヘルパー,,,,\n\
             202407,203851,0000012345,20240401,202404,2070900011,鈴木 花子,,,20240405,,1000,1100,1,111211,,,,,2070900303,みなみみのわヘルパー,,,,\n\
             202407,203851,0000012345,20240401,202404,2070900011,鈴木 花子,,,20240403,,1400,1500,1,131111,,,,,2070900202,南箕輪訪問看護ステーション,,,,\n",
        )),
        write("UPJSK_202404", ms932("202407,203851,0000012345,20240430,202404,2070900011,鈴木 花子,,,20240402,,1000,1100,1,111211,,,,,2070900303,みなみみのわヘルパー,,,,\n")),
    ];
    // A file the office's software saved with a byte MS932 does not have.
    let mut broken = ms932("202407,203851,0000012345,20240401,");
    broken.push(0xFD);
    let broken_file = write("UP1KYO_BROKEN", broken);
    let mut all = files.to_vec();
    all.push(broken_file);
    let organization = ["--organization", "Organization/demo-mm-care-office"];
    let software = Client { tenant: "minamiminowa", id: "mm-care-system", key: key.clone(), kid: "ehr-ina-es384" };
    let (succeeded, first) = import_files("careplan", &node, &software, &organization, &dir.join("state"), &all);
    assert!(!succeeded, "{first}");
    assert_eq!(count(&first, "rejected:"), 1, "{first}");
    assert!(first.contains("line 1, byte 34: not a character of MS932"), "{first}");
    assert_eq!(count(&first, "resources created:"), 12, "Coverage; two CarePlans, two needs, four goals; three services:\n{first}");
    assert_eq!(count(&first, "updated:"), 1, "the person, as the office's software has them:\n{first}");

    let patient = get(&node, &office, &format!("/minamiminowa/fhir/Patient/{id}")).await;
    assert_eq!(patient["birthDate"], "1936-05-12");
    assert_eq!(patient["name"][1]["text"], "ササキ ハル");
    let coverage = resources(&get(&node, &office, &format!("/minamiminowa/fhir/Coverage?beneficiary=Patient/{id}")).await);
    assert_eq!(coverage[0]["class"][0]["name"], "要介護2");
    let plans = resources(&get(&node, &office, &format!("/minamiminowa/fhir/CarePlan?subject=Patient/{id}")).await);
    assert_eq!(plans.len(), 2);
    let first_table = plans.iter().find(|p| p["title"] == "居宅サービス計画書（1）").expect("第1表");
    assert_eq!(first_table["description"], "転倒を防ぎ、通院を続けられるよう支援する。");
    assert_eq!(first_table["note"][0]["text"], "利用者及び家族の生活に対する意向を踏まえた課題分析の結果: 自宅で暮らし続けたい。\r\n娘は週末に来られる。");
    let second_table = plans.iter().find(|p| p["title"] == "居宅サービス計画書（2）").expect("第2表");
    assert_eq!(second_table["partOf"][0]["reference"], format!("CarePlan/{}", first_table["id"].as_str().unwrap_or_default()));
    assert_eq!(second_table["activity"].as_array().map(Vec::len), Some(3));
    assert_eq!(second_table["addresses"].as_array().map(Vec::len), Some(2));
    assert_eq!(second_table["goal"].as_array().map(Vec::len), Some(4));
    assert_eq!(second_table["activity"][2]["detail"]["performer"][0]["display"], "南箕輪訪問看護ステーション");
    let goals = resources(&get(&node, &office, &format!("/minamiminowa/fhir/Goal?patient={id}")).await);
    assert_eq!(goals.len(), 4);
    let services = resources(&get(&node, &office, &format!("/minamiminowa/fhir/ServiceRequest?patient={id}")).await);
    assert_eq!(services.len(), 3);
    let help = services.iter().find(|s| s["status"] == "active" && s["code"]["coding"][0]["code"] == "111211").expect("the planned home help");
    assert_eq!(help["occurrenceTiming"], json!({ "event": ["2024-04-02", "2024-04-05"], "repeat": { "timeOfDay": ["10:00:00"] } }));
    assert_eq!(services.iter().filter(|s| s["status"] == "completed").count(), 1);

    // Sent again with the memory lost: nothing changes.
    let (_, second) = import_files("careplan", &node, &software, &organization, &dir.join("fresh"), &files);
    assert_eq!(count(&second, "resources created:"), 0, "{second}");
    assert_eq!(count(&second, "updated:"), 0, "{second}");
    assert_eq!(count(&second, "unchanged:"), 13, "{second}");
    drop(node);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// A message of a hospital stay admitted on 2024-04-01 10:00: `kind` is MSH-9
/// (`ADT^A03^ADT_A03`), `occurred` the event's time (EVN-6), `ward` PV1-3's first component,
/// `discharged` PV1-45 (empty while the stay goes on).
fn stay(patient: &str, kind: &str, occurred: &str, ward: &str, discharged: &str) -> Vec<u8> {
    let location = format!("{ward}^302^1^^^N");
    let mut pv1 = vec![""; 46];
    pv1[0] = "PV1";
    pv1[1] = "0001";
    pv1[2] = "I";
    pv1[3] = &location;
    pv1[7] = "110^田中^一郎";
    pv1[17] = "111^宮下^五郎";
    pv1[44] = "20240401100000";
    pv1[45] = discharged;
    jis(&format!(
        "{}EVN||{occurred}||||{occurred}\rPID|0001||{patient}^^^^PI||宮本^京子^^^^^L^I\r{}\r",
        msh(kind, &format!("ADT{occurred}")),
        pv1.join("|")
    ))
}

/// A stay from SS-MIX2's admission and discharge messages (ADT-22, ADT-52): one Encounter,
/// moved on by each later event and never back by an earlier one sent late.
async fn a_hospital_sends_a_stay(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let dir = directory.path();
    let data_dir = dir.to_string_lossy().into_owned();
    let node = Node::serve(&["--demo", "--database-url", config.database_url.as_str(), "--data-dir", data_dir.as_str()]).await;
    let storage = Storage { root: dir.join("ssmix2") };
    let state = dir.join("import.state");
    const ORDER: &str = "999999999999999";
    storage.write("0012345", "-", "ADT-00", ORDER, "20240401090000000", '1', &adt("0012345", "宮本", "京子", "ミヤモト", "キョウコ", "F"));
    let (succeeded, registered) = import(&node, &storage.root, &state);
    assert!(succeeded, "{registered}");
    let ehr = bearer(&node, EHR, &demo_key("ehr-ina-rs384.pem"), "ehr-ina-rs384", "ina", "system/*.cruds").await;
    let found = get(&node, &ehr, &format!("/ina/fhir/Patient?identifier={PATIENT_SYSTEM}|0012345")).await;
    let id = resources(&found)[0]["id"].as_str().expect("the person's id").to_owned();
    let team = json!({
        "resourceType": "CareTeam", "status": "active", "subject": { "reference": format!("Patient/{id}") },
        "participant": [{ "member": { "reference": HOSPITAL } }]
    });
    let reply = node.http.post(format!("{}/ina/fhir/CareTeam", node.base)).bearer_auth(&ehr).header("content-type", "application/fhir+json").body(team.to_string()).send().await.expect("a reply");
    assert_eq!(reply.status().as_u16(), 201);
    let encounters = |query: String| {
        let (node, ehr) = (&node, &ehr);
        async move { resources(&get(node, ehr, &format!("/ina/fhir/Encounter?{query}")).await) }
    };

    // Admitted.
    let admitted = storage.write("0012345", "20240401", "ADT-22", ORDER, "20240401100000000", '1', &stay("0012345", "ADT^A01^ADT_A01", "20240401100000", "32", ""));
    let (succeeded, first) = import(&node, &storage.root, &state);
    assert!(succeeded, "{first}");
    assert_eq!(count(&first, "resources created:"), 1, "{first}");
    let found = encounters(format!("patient={id}")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let encounter = &found[0];
    let encounter_id = encounter["id"].as_str().expect("an id").to_owned();
    assert_eq!(encounter["status"], "arrived", "A01 as JAMI's table maps it");
    assert_eq!(encounter["class"]["code"], "IMP");
    assert_eq!(encounter["subject"]["reference"], format!("Patient/{id}"));
    assert_eq!(encounter["period"], json!({ "start": "2024-04-01T10:00:00+09:00" }));
    assert_eq!(encounter["location"][0]["location"]["display"], "32 302 1");
    assert_eq!(encounter["location"][0]["status"], "active");
    assert_eq!(encounter["participant"][0]["individual"]["display"], "田中 一郎");
    assert_eq!(encounter["participant"][1]["type"][0]["coding"][0]["code"], "ADM");
    assert_eq!(encounter["serviceProvider"]["reference"], HOSPITAL);

    // Discharged ten days later.
    let discharged = storage.write("0012345", "20240410", "ADT-52", ORDER, "20240410150000000", '1', &stay("0012345", "ADT^A03^ADT_A03", "20240410150000", "32", "20240410150000"));
    let (_, second) = import(&node, &storage.root, &state);
    assert_eq!(count(&second, "updated:"), 1, "{second}");
    let encounter = &encounters(format!("patient={id}")).await[0];
    assert_eq!(encounter["id"], encounter_id.as_str(), "one stay, one Encounter");
    assert_eq!(encounter["status"], "finished");
    assert_eq!(encounter["period"]["end"], "2024-04-10T15:00:00+09:00");
    assert_eq!(encounter["location"][0]["status"], "completed");

    // The admission message corrected (another ward) after the discharge: the correction is
    // an earlier event, and the finished stay is kept as it is.
    let renamed = |path: &PathBuf, flag: &str| {
        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
        std::fs::rename(path, path.with_file_name(format!("{}{flag}", &name[..name.len() - 1]))).expect("renamed");
    };
    renamed(&admitted, "2");
    storage.write("0012345", "20240401", "ADT-22", ORDER, "20240411090000000", '1', &stay("0012345", "ADT^A01^ADT_A01", "20240401100000", "35", ""));
    let (succeeded, third) = import(&node, &storage.root, &state);
    assert!(succeeded, "{third}");
    assert_eq!(count(&third, "kept (a later event is on the server):"), 1, "{third}");
    assert_eq!(count(&third, "updated:"), 0, "{third}");
    let encounter = &encounters(format!("patient={id}")).await[0];
    assert_eq!(encounter["status"], "finished", "not reopened: {encounter}");
    assert_eq!(encounter["location"][0]["location"]["display"], "32 302 1");
    let history = get(&node, &ehr, &format!("/ina/fhir/Encounter/{encounter_id}/_history")).await;
    assert_eq!(history["total"], 2, "admitted, discharged: {history}");

    // The discharge cancelled the next day (ADT^A13, a later event): the stay goes on.
    renamed(&discharged, "2");
    storage.write("0012345", "20240410", "ADT-52", ORDER, "20240411100000000", '1', &stay("0012345", "ADT^A13^ADT_A01", "20240411100000", "32", ""));
    let (_, fourth) = import(&node, &storage.root, &state);
    assert_eq!(count(&fourth, "updated:"), 1, "{fourth}");
    let open = encounters(format!("patient={id}&status=in-progress")).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0]["period"].get("end").is_none(), "{}", open[0]);

    // Everything sent again with the import's memory lost: nothing changes.
    let (_, fifth) = import(&node, &storage.root, &dir.join("fresh.state"));
    assert_eq!(count(&fifth, "resources created:"), 0, "{fifth}");
    assert_eq!(count(&fifth, "updated:"), 0, "{fifth}");
    assert_eq!(count(&fifth, "kept (a later event is on the server):"), 1, "the admission: {fifth}");
    let history = get(&node, &ehr, &format!("/ina/fhir/Encounter/{encounter_id}/_history")).await;
    assert_eq!(history["total"], 3, "{history}");

    drop(node);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

both_backends!(a_hospital_imports_its_standardized_storage, a_hospital_sends_a_stay, a_municipality_imports_its_roster, a_care_office_imports_a_care_plan);
