//! `renraku generate`: realistic synthetic data for benchmarks — Japanese names in kanji and
//! kana, insurance-style identifiers, birth dates, Practitioners, and a bulletin-board
//! history of Communications per person.
//!
//! Resources are validated and indexed exactly like any write (the same validator and the
//! same extraction), but written in bulk: many resources per transaction and many rows per
//! INSERT, so that millions of resources load in minutes. Generation is deterministic for a
//! given seed.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::identity::{Interaction, Principal};
use crate::fhir::dates::format_instant;
use crate::service::Fhir;
use crate::store::{self, BulkRow};

/// (kanji, kana) family names, common in Nagano.
const FAMILY: &[(&str, &str)] = &[
    ("山田", "ヤマダ"), ("佐藤", "サトウ"), ("鈴木", "スズキ"), ("高橋", "タカハシ"), ("田中", "タナカ"),
    ("伊藤", "イトウ"), ("渡辺", "ワタナベ"), ("小林", "コバヤシ"), ("中村", "ナカムラ"), ("加藤", "カトウ"),
    ("丸山", "マルヤマ"), ("宮下", "ミヤシタ"), ("北原", "キタハラ"), ("唐沢", "カラサワ"), ("春日", "カスガ"),
    ("酒井", "サカイ"), ("清水", "シミズ"), ("松澤", "マツザワ"), ("有賀", "アルガ"), ("伊東", "イトウ"),
];
/// (kanji, kana) given names.
const GIVEN: &[(&str, &str)] = &[
    ("太郎", "タロウ"), ("花子", "ハナコ"), ("一郎", "イチロウ"), ("和子", "カズコ"), ("茂", "シゲル"),
    ("幸子", "サチコ"), ("清", "キヨシ"), ("節子", "セツコ"), ("勇", "イサム"), ("美代子", "ミヨコ"),
    ("博", "ヒロシ"), ("久子", "ヒサコ"), ("正", "タダシ"), ("文子", "フミコ"), ("進", "ススム"),
];
const BOARD_TEXT: &[&str] = &[
    "本日訪問しました。血圧は安定しています。",
    "服薬状況を確認しました。飲み忘れはありません。",
    "デイサービスの利用日を変更したいとのことです。",
    "食欲がやや低下しています。経過を見ます。",
    "ご家族から連絡がありました。",
];

/// How much to generate, and whom the generated persons are connected to.
#[derive(Debug, Clone, Default)]
pub struct Volume {
    pub patients: usize,
    pub communications: usize,
    pub seed: u64,
    /// The Organization id that registered every generated person (`managingOrganization`).
    pub registrar: Option<String>,
    /// A CareTeam member (`PractitionerRole/…` or `Organization/…`) on an active support
    /// team of every generated person, who also gets an active sharing Consent.
    pub team_member: Option<String>,
}

/// A tiny deterministic generator (SplitMix64): benchmarks must be reproducible.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    /// One of `items`, uniformly (the default of `T` for an empty list).
    fn pick<T: Copy + Default>(&mut self, items: &[T]) -> T {
        let index = self.below(items.len());
        items.get(index).copied().unwrap_or_default()
    }
}

const BATCH: usize = 2000;

impl Fhir {
    /// Generates `volume` into `tenant`; returns (patients, practitioners, communications).
    pub async fn generate(&self, tenant: &str, volume: Volume) -> Result<(usize, usize, usize)> {
        let mut random = Random(volume.seed);
        let practitioners = (volume.patients / 50).max(1);
        let now = self.clock.now();
        let mut batch: Vec<Value> = Vec::with_capacity(BATCH);
        let prefix = format!("gen{}", volume.seed);
        for n in 0..practitioners {
            let (family, family_kana) = random.pick(FAMILY);
            let (given, given_kana) = random.pick(GIVEN);
            batch.push(json!({
                "resourceType": "Practitioner",
                "id": format!("{prefix}-pr{n}"),
                "name": names(family, given, family_kana, given_kana),
                "gender": if n % 2 == 0 { "female" } else { "male" },
            }));
            self.flush_if_full(tenant, &mut batch).await?;
        }
        for n in 0..volume.patients {
            let (family, family_kana) = random.pick(FAMILY);
            let (given, given_kana) = random.pick(GIVEN);
            let year = 1925 + random.below(40);
            let mut patient = json!({
                "resourceType": "Patient",
                "id": format!("{prefix}-p{n}"),
                "identifier": [{ "system": "urn:oid:1.2.392.100495.20.3.51.1202096", "value": format!("{:08}", n) }],
                "active": true,
                "name": names(family, given, family_kana, given_kana),
                "gender": if random.below(2) == 0 { "female" } else { "male" },
                "birthDate": format!("{year}-{:02}-{:02}", 1 + random.below(12), 1 + random.below(28)),
                "address": [{ "state": "長野県", "city": "伊那市" }],
                "generalPractitioner": [{ "reference": format!("Practitioner/{prefix}-pr{}", random.below(practitioners)) }],
            });
            if let Some(registrar) = &volume.registrar {
                crate::fhir::set(&mut patient, "managingOrganization", json!({ "reference": format!("Organization/{registrar}") }));
            }
            batch.push(patient);
            if let Some(member) = &volume.team_member {
                let subject = json!({ "reference": format!("Patient/{prefix}-p{n}") });
                batch.push(json!({
                    "resourceType": "CareTeam",
                    "id": format!("{prefix}-team{n}"),
                    "status": "active",
                    "subject": subject,
                    "participant": [{ "member": { "reference": member } }],
                }));
                batch.push(json!({
                    "resourceType": "Consent",
                    "id": format!("{prefix}-consent{n}"),
                    "status": "active",
                    "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] }, "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
                    "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
                    "patient": subject,
                    "provision": { "type": "permit" },
                }));
            }
            self.flush_if_full(tenant, &mut batch).await?;
        }
        for n in 0..volume.communications {
            let patient = random.below(volume.patients.max(1));
            let sent = now - chrono::Duration::seconds(random.below(2 * 365 * 86_400) as i64);
            batch.push(json!({
                "resourceType": "Communication",
                "id": format!("{prefix}-c{n}"),
                "status": "completed",
                "category": [{ "coding": [{ "system": "https://renraku.example.jp/fhir/CodeSystem/channel", "code": if n % 3 == 0 { "chat" } else { "board" } }] }],
                "subject": { "reference": format!("Patient/{prefix}-p{patient}") },
                "sender": { "reference": format!("Practitioner/{prefix}-pr{}", random.below(practitioners)) },
                "sent": format_instant(sent),
                "payload": [{ "contentString": random.pick(BOARD_TEXT) }],
            }));
            self.flush_if_full(tenant, &mut batch).await?;
        }
        self.flush(tenant, &mut batch).await?;
        self.store.optimize().await?;
        Ok((volume.patients, practitioners, volume.communications))
    }

    async fn flush_if_full(&self, tenant: &str, batch: &mut Vec<Value>) -> Result<()> {
        if batch.len() >= BATCH {
            self.flush(tenant, batch).await?;
        }
        Ok(())
    }

    /// Validates, stamps and indexes a batch, and writes it in one transaction.
    async fn flush(&self, tenant: &str, batch: &mut Vec<Value>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let last_updated = format_instant(self.clock.now());
        let mut rows = Vec::with_capacity(batch.len());
        for resource in batch.drain(..) {
            let validated = self.validator.validate(resource).map_err(Error::Unprocessable)?;
            let mut resource = validated.into_inner();
            if let Some(meta) = resource.as_object_mut() {
                meta.insert("meta".into(), json!({ "versionId": "1", "lastUpdated": last_updated }));
            }
            let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
            let id = resource.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            let index = self.index_of(&resource_type, &id, &resource);
            rows.push(BulkRow {
                resource_type,
                id,
                content: serde_json::to_string(&resource)?,
                index,
            });
        }
        let context = super::Context {
            tenant: tenant.to_owned(),
            principal: Principal::Operator,
            base_url: self.config.base_url(tenant),
            request_id: "generate".to_owned(),
            lenient: false,
            client_address: None,
            purpose_of_use: None,
        };
        let grant = self.decide_now(&context, Interaction::Create, None).await?.for_write()?;
        let mut transaction = self.store.begin().await?;
        store::bulk_insert_new(&mut transaction, &grant, &last_updated, rows).await?;
        transaction.commit().await
    }
}

fn names(family: &str, given: &str, family_kana: &str, given_kana: &str) -> Value {
    let representation = |code: &str| {
        json!([{ "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": code }])
    };
    json!([
        { "extension": representation("IDE"), "use": "official", "text": format!("{family} {given}"), "family": family, "given": [given] },
        { "extension": representation("SYL"), "use": "official", "text": format!("{family_kana} {given_kana}"), "family": family_kana, "given": [given_kana] }
    ])
}
