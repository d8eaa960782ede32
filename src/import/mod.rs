//! `renraku import`: the client that runs at the hospital, the care office or the
//! municipality, converts what existing systems write (SS-MIX2 storage, ケアプランデータ連携
//! CSVs, directory rosters) into FHIR and sends it to the gateway over HTTP as a SMART
//! Backend Services client — so the gateway stays the only place that decides and audits.
//!
//! - [`hl7`]: ISO-2022-JP decoding and HL7 v2 parsing, and CSV rows in the same shape;
//! - [`mapping`]: the one engine interpreting the declarative mappings of `mappings/`;
//! - [`ssmix2`]: the standardized storage's layout, file names and condition flags;
//! - this module: MS932 CSV decoding and grouping, one transaction Bundle per message (or
//!   row group; created or updated by identifier, so a second run changes nothing), the
//!   import's memory (what was acknowledged, for incremental and resumed runs), progress and
//!   the summary.

pub mod hl7;
pub mod mapping;
pub mod ssmix2;

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use hl7::Problem;
use mapping::{Mappings, Produced};
use ssmix2::{Action, StoredFile};

/// Where the Bundles go.
pub enum Target {
    /// `--dry-run --out DIR`: `DIR/bundles.ndjson`, one Bundle per line.
    Files(PathBuf),
    /// The gateway, as a SMART Backend Services client.
    Gateway(Gateway),
}

/// The gateway and the client's credentials.
pub struct Gateway {
    /// The municipality's FHIR base, e.g. `https://renraku.example.jp/ina/fhir`.
    pub base: String,
    pub client_id: String,
    /// The client's private key (PEM, RSA for RS384 or EC P-384 for ES384).
    pub key: PathBuf,
    /// The key's id in the client's registered JWKS.
    pub kid: String,
    pub scope: String,
}

/// What the import is given besides the storage.
pub struct Options {
    /// The hospital's 10-digit 医療機関コード (SS-MIX2's patient identifier system; empty for
    /// the CSV imports).
    pub facility: String,
    /// The gateway's Organization of the hospital (`Organization/…`), the registrar of the
    /// persons its ADT-00 registers.
    pub organization: Option<String>,
    /// Only files whose 発生日時 is on or after this day (`YYYYMMDD`).
    pub since: Option<String>,
    /// The import's memory: a line per file sent (digest and path). Files already in it
    /// with the same content are not sent again.
    pub state: PathBuf,
    pub mappings: Mappings,
    pub progress: bool,
    /// How many persons are imported side by side (each person's files one after another).
    pub jobs: usize,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files_read: usize,
    pub messages_converted: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
    /// Resources the server already held from a later event (`keepLater`): left as they are.
    pub kept: usize,
    pub already_sent: usize,
    pub superseded: usize,
    pub ignored: usize,
    pub before_since: usize,
    /// `(file, reason)`.
    pub rejected: Vec<(String, String)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "files read: {}", self.files_read)?;
        writeln!(f, "messages converted: {}", self.messages_converted)?;
        writeln!(
            f,
            "resources created: {}, updated: {}, unchanged: {}, deleted: {}, kept (a later event is on the server): {}",
            self.created, self.updated, self.unchanged, self.deleted, self.kept
        )?;
        writeln!(
            f,
            "skipped: already sent {}, superseded {}, not mapped (withdrawals) {}, before --since {}",
            self.already_sent, self.superseded, self.ignored, self.before_since
        )?;
        writeln!(f, "rejected: {}", self.rejected.len())?;
        for (file, reason) in &self.rejected {
            writeln!(f, "  {file}: {reason}")?;
        }
        Ok(())
    }
}

/// One import's delivery: to the gateway or to the dry run's file, remembering what was
/// acknowledged, counting what happened.
///
/// Shared by the persons imported side by side (`--jobs`): each lock is held only to count or
/// to remember, never across a request to the gateway.
struct Run {
    summary: Mutex<Summary>,
    memory: Mutex<Memory>,
    sender: Option<Sender>,
    out: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl Run {
    fn start(options: &Options, target: &Target) -> Result<Run, String> {
        let memory = Memory::open(&options.state)?;
        let (sender, out) = match target {
            Target::Gateway(gateway) => (Some(Sender::new(gateway)?), None),
            Target::Files(directory) => {
                std::fs::create_dir_all(directory).map_err(|e| format!("{}: {e}", directory.display()))?;
                let path = directory.join("bundles.ndjson");
                let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                (None, Some(Mutex::new(std::io::BufWriter::new(file))))
            }
        };
        Ok(Run { summary: Mutex::new(Summary::default()), memory: Mutex::new(memory), sender, out })
    }

    /// Counts something in the summary.
    fn count(&self, change: impl FnOnce(&mut Summary)) {
        change(&mut self.summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    fn remember(&self, unit: &str, digest: &str) -> Result<(), String> {
        self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remember(unit, digest)
    }

    /// Whether `unit` (a file, a row) was acknowledged before with this content.
    fn sent_before(&self, unit: &str, digest: &str) -> bool {
        let sent = self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sent(unit, digest);
        if sent {
            self.count(|s| s.already_sent += 1);
        }
        sent
    }

    /// Sends (or writes) one unit's Bundle; a refusal is recorded and the import goes on.
    async fn deliver(&self, unit: &str, digest: &str, outgoing: Result<Option<Outgoing>, Problem>) -> Result<(), String> {
        let Outgoing { mut bundle, guards } = match outgoing {
            Ok(Some(outgoing)) => outgoing,
            Ok(None) => {
                self.count(|s| s.ignored += 1);
                return Ok(());
            }
            Err(problem) => {
                self.count(|s| s.rejected.push((unit.to_owned(), problem.to_string())));
                return Ok(());
            }
        };
        self.count(|s| s.messages_converted += 1);
        if let Some(out) = &self.out {
            let mut out = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            return writeln!(out, "{bundle}").map_err(|e| e.to_string());
        }
        let Some(sender) = &self.sender else { return Ok(()) };
        for guard in &guards {
            if let Some(reference) = sender.held_from_later_event(guard).await? {
                self.count(|s| s.kept += 1);
                leave_out(&mut bundle, guard, &reference);
            }
        }
        if bundle.get("entry").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            return self.remember(unit, digest);
        }
        match sender.transaction(&bundle).await? {
            Ok(counts) => {
                self.count(|s| {
                    s.created += counts.created;
                    s.updated += counts.updated;
                    s.unchanged += counts.unchanged;
                    s.deleted += counts.deleted;
                });
                self.remember(unit, digest)?;
            }
            Err(reason) => self.count(|s| s.rejected.push((unit.to_owned(), reason))),
        }
        Ok(())
    }

    fn finish(self) -> Result<Summary, String> {
        if let Some(out) = self.out {
            out.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).flush().map_err(|e| e.to_string())?;
        }
        let mut summary = self.summary.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Persons imported side by side report in their own order: list by file.
        summary.rejected.sort();
        Ok(summary)
    }
}

/// Imports an SS-MIX2 standardized storage.
/// Persons are imported side by side, `options.jobs` at a time; each person's files in
/// the plan's order (their ADT-00 first, then by 発生日時), one after another.
pub async fn ssmix2(root: &Path, options: &Options, target: &Target) -> Result<Summary, String> {
    use futures_util::stream::{self, TryStreamExt};
    let plan = ssmix2::plan(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let run = Run::start(options, target)?;
    run.count(|s| {
        s.files_read = plan.read;
        s.superseded = plan.superseded.len();
        s.rejected.extend(plan.problems.iter().cloned());
    });
    let progress = progress_bar(options.progress, plan.files.len());
    let mut persons: Vec<Vec<&(StoredFile, Action)>> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for planned in &plan.files {
        let at = *position.entry(planned.0.patient_id.as_str()).or_insert_with(|| {
            persons.push(Vec::new());
            persons.len() - 1
        });
        if let Some(files) = persons.get_mut(at) {
            files.push(planned);
        }
    }
    let (shared, plan, bar) = (&run, &plan, &progress);
    stream::iter(persons.into_iter().map(Ok::<_, String>))
        .try_for_each_concurrent(options.jobs.max(1), |files| async move {
            let (run, progress) = (shared, bar);
            for (file, action) in files {
                progress.set_message(file.relative.clone());
                progress.inc(1);
                if options.since.as_deref().is_some_and(|since| file.occurred.as_str() < since) {
                    run.count(|s| s.before_since += 1);
                    continue;
                }
                let bytes = std::fs::read(&file.path).map_err(|e| format!("{}: {e}", file.relative))?;
                let digest = hex::encode(Sha256::digest(&bytes));
                if run.sent_before(&file.relative, &digest) {
                    continue;
                }
                let earlier = plan.earlier.get(&file.relative).map_or(&[][..], Vec::as_slice);
                run.deliver(&file.relative, &digest, bundle_of(file, action, &bytes, earlier, options)).await?;
            }
            Ok(())
        })
        .await?;
    progress.finish_and_clear();
    run.finish()
}

/// Imports CSV files, each with the mapping of its data type (`(file, data type)`): one
/// transaction per row, or per group of rows the mapping's `groupBy` columns make (a care
/// plan's person and date). MS932, or UTF-8 after a byte-order mark.
pub async fn csv_files(files: &[(PathBuf, String)], options: &Options, target: &Target) -> Result<Summary, String> {
    let run = Run::start(options, target)?;
    for (path, data_type) in files {
        run.count(|s| s.files_read += 1);
        let name = path.display().to_string();
        let Some(mapping) = options.mappings.for_data_type(data_type) else {
            run.count(|s| s.rejected.push((name, format!("no mapping for data type {data_type}"))));
            continue;
        };
        let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        let table = match csv_rows(&bytes) {
            Ok(table) => table,
            Err(problem) => {
                run.count(|s| s.rejected.push((name, problem.to_string())));
                continue;
            }
        };
        let (header, rows): (&[Vec<String>], &[Vec<String>]) = if mapping.header { table.split_at(1.min(table.len())) } else { (&[], &table) };
        let header: &[String] = header.first().map_or(&[], Vec::as_slice);
        // Rows in groups, in the order their first row appears; line numbers as a
        // spreadsheet shows them.
        let first_line = if mapping.header { 2 } else { 1 };
        let mut groups: Vec<(Vec<&str>, Vec<usize>)> = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let key: Vec<&str> = if mapping.group_by.is_empty() {
                vec![]
            } else {
                mapping.group_by.iter().map(|column| row.get(column.saturating_sub(1)).map_or("", String::as_str)).collect()
            };
            match groups.iter_mut().find(|(k, _)| !mapping.group_by.is_empty() && *k == key) {
                Some((_, members)) => members.push(index),
                None => groups.push((key, vec![index])),
            }
        }
        let progress = progress_bar(options.progress, groups.len());
        for (_, members) in &groups {
            progress.inc(1);
            let lines: Vec<String> = members.iter().map(|i| (i + first_line).to_string()).collect();
            let unit = format!("{name} line {}", lines.join(","));
            let cells: Vec<&[String]> = members.iter().filter_map(|i| rows.get(*i)).map(Vec::as_slice).collect();
            let joined: Vec<String> = cells.iter().map(|row| row.join("\u{1f}")).collect();
            let digest = hex::encode(Sha256::digest(joined.join("\u{1e}").as_bytes()));
            if run.sent_before(&unit, &digest) {
                continue;
            }
            let message = hl7::Message::rows(header, cells);
            let variables = HashMap::from([("dataType".to_owned(), data_type.clone())]);
            let outgoing = mapping::convert(mapping, &message, &given(options, &variables)).map(|produced| Outgoing::of(produced.iter().map(upsert_entry).collect(), &produced));
            run.deliver(&unit, &digest, outgoing).await?;
        }
        progress.finish_and_clear();
    }
    run.finish()
}

/// The data type of a care-plan file (ケアプランデータ連携, 標準仕様 4.1): the name's prefix
/// (`UPHOSOKU`, `UP1KYO`, `UP2KYO`, `UPPLAN`, `UPJSK`, …), in the order the files of one
/// sending must be read — the person first, then the plan's tables, then the month's — and by
/// the name's closing 14-digit sequence.
pub fn careplan_order(files: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut typed: Vec<(PathBuf, String)> = files
        .iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().to_uppercase()).unwrap_or_default();
            (path.clone(), name.split('_').next().unwrap_or_default().to_owned())
        })
        .collect();
    let rank = |data_type: &str| ["UPHOSOKU", "UP1KYO", "UP2KYO", "UP3KYO", "UPPLAN", "UPJSK", "UPSIKYU"].iter().position(|t| *t == data_type).unwrap_or(usize::MAX);
    let sequence = |path: &Path| {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        stem.rsplit('_').next().unwrap_or_default().to_owned()
    };
    typed.sort_by_key(|(path, data_type)| (sequence(path), rank(data_type), path.clone()));
    typed
}

/// A CSV file's rows (the first is the header): UTF-8 after a byte-order mark, otherwise
/// MS932 (Shift_JIS as Windows writes it), decoded without replacement.
fn csv_rows(bytes: &[u8]) -> Result<Vec<Vec<String>>, Problem> {
    let text = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(utf8) => std::str::from_utf8(utf8).map(str::to_owned).map_err(|e| Problem::new(format!("byte {}", e.valid_up_to() + 3), "not UTF-8"))?,
        None => hl7::decode_strictly(encoding_rs::SHIFT_JIS, bytes).map_err(|bad| {
            let line = bad.before.matches('\n').count() + 1;
            Problem::new(
                format!("line {line}, byte {}", bad.offset),
                "not a character of MS932 (Shift_JIS); save the file as MS932 or as UTF-8 with a byte-order mark",
            )
        })?,
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Problem::new(e.position().map_or_else(String::new, |p| format!("line {}", p.line())), format!("not CSV: {e}")))?;
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        rows.push(record.iter().map(str::to_owned).collect());
    }
    Ok(rows)
}

/// The importer's variables for the mapping.
fn given(options: &Options, more: &HashMap<String, String>) -> HashMap<String, String> {
    let mut given = more.clone();
    given.insert("facility".to_owned(), options.facility.clone());
    if let Some(organization) = &options.organization {
        given.insert("organization".to_owned(), organization.clone());
    }
    given
}

fn progress_bar(wanted: bool, total: usize) -> indicatif::ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} eta {eta} {wide_msg}") {
        bar.set_style(style);
    }
    bar
}

/// The transaction Bundle of one stored file: None when the mapping does not map its
/// message type (a withdrawal such as ADT^A23). `earlier` are the files of the same order
/// it supersedes: what they mapped to and the current file no longer does (a drug taken off
/// a changed prescription) is deleted in the same transaction. A superseded file that cannot
/// be read or converted names nothing to delete (it was never sent either, or was sent as it
/// was then).
fn bundle_of(file: &StoredFile, action: &Action, bytes: &[u8], earlier: &[StoredFile], options: &Options) -> Result<Option<Outgoing>, Problem> {
    let Some(produced) = produced_by(file, bytes, options)? else { return Ok(None) };
    let mut entries: Vec<Value> = match action {
        Action::Upsert => produced.iter().map(upsert_entry).collect(),
        // A person is not deleted by an import (registration is the registrar's decision).
        Action::Delete => produced.iter().filter(|p| p.resource_type != "Patient").map(delete_entry).collect(),
    };
    let mut named: HashSet<(String, String, String)> = produced.iter().map(identity).collect();
    for predecessor in earlier {
        let Ok(bytes) = std::fs::read(&predecessor.path) else { continue };
        let Ok(Some(then)) = produced_by(predecessor, &bytes, options) else { continue };
        for gone in then.iter().filter(|p| p.resource_type != "Patient") {
            if named.insert(identity(gone)) {
                entries.push(delete_entry(gone));
            }
        }
    }
    let guarded: &[Produced] = if matches!(action, Action::Upsert) { &produced } else { &[] };
    Ok(Outgoing::of(entries, guarded))
}

/// One message's transaction, with what the importer checks before sending it.
struct Outgoing {
    bundle: Value,
    guards: Vec<Guard>,
}

impl Outgoing {
    /// A transaction of `entries` (None when there are none); `produced` are the resources
    /// written, whose mapping may say to keep a version from a later event (`keepLater`).
    fn of(entries: Vec<Value>, produced: &[Produced]) -> Option<Outgoing> {
        if entries.is_empty() {
            return None;
        }
        let guards = produced
            .iter()
            .filter_map(|p| {
                let path = p.keep_later.clone()?;
                let time = p.event_time()?;
                Some(Guard { condition: condition(p), placeholder: p.placeholder(), path, time })
            })
            .collect();
        Some(Outgoing { bundle: json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries }), guards })
    }
}

/// A resource the server may hold from a later event than the message's (`keepLater`).
struct Guard {
    /// The conditional update's search (`Encounter?identifier=…`).
    condition: String,
    placeholder: String,
    /// The mapping's FHIRPath to the event's time, and the message's.
    path: String,
    time: String,
}

/// Takes the guarded resource's entry out of `bundle`; the message's other resources refer
/// to the one on the server instead (`reference`, `Encounter/…`).
fn leave_out(bundle: &mut Value, guard: &Guard, reference: &str) {
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        entries.retain(|entry| entry.get("fullUrl").and_then(Value::as_str) != Some(guard.placeholder.as_str()));
    }
    crate::fhir::references::rewrite(bundle, &HashMap::from([(guard.placeholder.clone(), reference.to_owned())]));
}

/// What one stored file maps to (None for a message type the mapping ignores).
fn produced_by(file: &StoredFile, bytes: &[u8], options: &Options) -> Result<Option<Vec<Produced>>, Problem> {
    let mapping = options
        .mappings
        .for_data_type(&file.data_type)
        .ok_or_else(|| Problem::new("", format!("no mapping for data type {} (mappings/ssmix2/)", file.data_type)))?;
    let text = hl7::decode_iso_2022_jp(bytes)?;
    let message = hl7::Message::parse(&text)?;
    if mapping::ignored(mapping, &message) {
        return Ok(None);
    }
    let in_message = message.repetitions(message.segment_names().iter().position(|n| *n == "PID").unwrap_or(usize::MAX), 3);
    let patient = in_message.first().map(|r| r.value(1, 1)).unwrap_or_default();
    if patient != file.patient_id {
        return Err(Problem::new("PID-3", format!("the message is of patient '{patient}', its file name says '{}'", file.patient_id)));
    }
    let file_variables = HashMap::from([
        ("patientId".to_owned(), file.patient_id.clone()),
        ("orderNo".to_owned(), file.order_no.clone()),
        ("dataType".to_owned(), file.data_type.clone()),
        ("occurred".to_owned(), file.occurred.clone()),
    ]);
    let given = given(options, &file_variables);
    Ok(Some(mapping::convert(mapping, &message, &given)?))
}

/// A produced resource's identity on the server: its type and first identifier.
fn identity(produced: &Produced) -> (String, String, String) {
    (produced.resource_type.clone(), produced.system.clone(), produced.value.clone())
}

/// What a search by token needs escaped in a query value (`|` separates system and code).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b':').remove(b'/');

fn condition(produced: &Produced) -> String {
    format!(
        "{}?identifier={}|{}",
        produced.resource_type,
        utf8_percent_encode(&produced.system, QUERY_VALUE),
        utf8_percent_encode(&produced.value, QUERY_VALUE)
    )
}

fn upsert_entry(produced: &Produced) -> Value {
    json!({
        "fullUrl": produced.placeholder(),
        "resource": produced.resource,
        "request": { "method": "PUT", "url": condition(produced) }
    })
}

fn delete_entry(produced: &Produced) -> Value {
    json!({ "request": { "method": "DELETE", "url": condition(produced) } })
}

/// The import's memory: `digest path` lines, appended (and flushed) as each file is
/// acknowledged, so an interrupted import resumes where it stopped.
struct Memory {
    sent: HashSet<(String, String)>,
    file: std::fs::File,
}

impl Memory {
    fn open(path: &Path) -> Result<Memory, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(format!("{}: {error}", path.display())),
        };
        let sent = text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(digest, relative)| (relative.to_owned(), digest.to_owned()))
            .collect();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Memory { sent, file })
    }

    fn sent(&self, relative: &str, digest: &str) -> bool {
        self.sent.contains(&(relative.to_owned(), digest.to_owned()))
    }

    fn remember(&mut self, relative: &str, digest: &str) -> Result<(), String> {
        writeln!(self.file, "{digest} {relative}").and_then(|()| self.file.sync_data()).map_err(|e| format!("the import's memory: {e}"))?;
        self.sent.insert((relative.to_owned(), digest.to_owned()));
        Ok(())
    }
}

/// What one transaction did.
#[derive(Debug, Default)]
struct Counts {
    created: usize,
    updated: usize,
    unchanged: usize,
    deleted: usize,
}

/// Sends transactions with a Backend Services token, fetched again when it expires.
struct Sender {
    http: reqwest::Client,
    base: String,
    client_id: String,
    key: Vec<u8>,
    kid: String,
    scope: String,
    token_url: Mutex<Option<String>>,
    token: Mutex<Option<String>>,
}

impl Sender {
    fn new(gateway: &Gateway) -> Result<Sender, String> {
        let key = std::fs::read(&gateway.key).map_err(|e| format!("{}: {e}", gateway.key.display()))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().map_err(|e| e.to_string())?;
        Ok(Sender {
            http,
            base: gateway.base.trim_end_matches('/').to_owned(),
            client_id: gateway.client_id.clone(),
            key,
            kid: gateway.kid.clone(),
            scope: gateway.scope.clone(),
            token_url: Mutex::new(None),
            token: Mutex::new(None),
        })
    }

    /// The token in use, fetched when there is none (persons imported side by side share it).
    async fn token(&self) -> Result<String, String> {
        let held = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match held {
            Some(token) => Ok(token),
            None => self.authenticate().await,
        }
    }

    /// Forgets a token the gateway no longer accepts (expired).
    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// A token by SMART Backend Services (client_credentials with a signed assertion).
    async fn authenticate(&self) -> Result<String, String> {
        let known = self.token_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let token_url = match known {
            Some(url) => url,
            None => {
                let discovery = format!("{}/.well-known/smart-configuration", self.base);
                let configuration: Value = self.http.get(&discovery).send().await.map_err(|e| format!("{discovery}: {e}"))?.json().await.map_err(|e| format!("{discovery}: {e}"))?;
                let url = configuration.get("token_endpoint").and_then(Value::as_str).ok_or_else(|| format!("{discovery} names no token_endpoint"))?.to_owned();
                *self.token_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(url.clone());
                url
            }
        };
        let assertion = sign_client_assertion(&self.client_id, &token_url, &self.key, &self.kid)?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.scope.as_str()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
        ];
        let reply = self.http.post(&token_url).form(&form).send().await.map_err(|e| format!("{token_url}: {e}"))?;
        let status = reply.status();
        let answer: Value = reply.json().await.unwrap_or(Value::Null);
        let token = answer.get("access_token").and_then(Value::as_str).filter(|_| status.is_success()).ok_or_else(|| {
            format!("the gateway refused the client '{}' a token ({status}): {}", self.client_id, answer.get("error_description").or(answer.get("error")).and_then(Value::as_str).unwrap_or(""))
        })?;
        *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.to_owned());
        Ok(token.to_owned())
    }

    /// Whether the server holds the guarded resource from a later event than the message's:
    /// its reference (`Encounter/…`) if so. A resource the client may not read, or none, is
    /// not held (the transaction then decides); a gateway that fails to answer stops the
    /// import, as a failed transaction does (its memory lets it resume).
    async fn held_from_later_event(&self, guard: &Guard) -> Result<Option<String>, String> {
        let url = format!("{}/{}", self.base, guard.condition);
        let (status, found) = self.exchange(|token| self.http.get(&url).bearer_auth(token).header("accept", "application/fhir+json")).await?;
        match status {
            200 => {}
            // Sending anyway could undo a later event: stop, as for a failed transaction.
            500..=599 => return Err(format!("the gateway failed ({status}) reading {}: {}", guard.condition, reasons(&found))),
            _ => return Ok(None),
        }
        let stored = found
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|entry| entry.pointer("/search/mode").and_then(Value::as_str) != Some("include"))
            .find_map(|entry| entry.get("resource"));
        let Some(stored) = stored else { return Ok(None) };
        let held = mapping::event_time(&guard.path, stored).is_some_and(|time| mapping::later(&time, &guard.time));
        let reference = match (stored.get("resourceType").and_then(Value::as_str), stored.get("id").and_then(Value::as_str)) {
            (Some(kind), Some(id)) if held => Some(format!("{kind}/{id}")),
            _ => None,
        };
        Ok(reference)
    }

    /// Posts one transaction: Ok(counts) when it committed, Ok(Err(reason)) when the gateway
    /// refused it (nothing of it was written), Err when the gateway cannot be reached or keeps
    /// failing (the import stops; its memory lets it resume).
    async fn transaction(&self, bundle: &Value) -> Result<Result<Counts, String>, String> {
        let body = bundle.to_string();
        let (status, answer) = self
            .exchange(|token| {
                self.http
                    .post(&self.base)
                    .bearer_auth(token)
                    .header("content-type", "application/fhir+json")
                    .header("accept", "application/fhir+json")
                    .body(body.clone())
            })
            .await?;
        match status {
            200 => Ok(Ok(counts(&answer))),
            500..=599 => Err(format!("the gateway failed ({status}): {}", reasons(&answer))),
            _ => Ok(Err(format!("refused ({status}): {}", reasons(&answer)))),
        }
    }

    /// Sends one request with the client's token and answers its final status and JSON body
    /// (Null where there is none): a token the gateway no longer accepts (expired) is fetched
    /// again once; a connection that fails, or a 429, 502, 503 or 504, is tried again up to
    /// three times. Err when the gateway cannot be reached.
    async fn exchange(&self, request: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let mut refreshed = false;
        let mut attempt = 0u32;
        loop {
            let token = self.token().await?;
            let reply = match request(&token).send().await {
                Ok(reply) => reply,
                Err(error) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "the gateway did not answer; trying again");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    continue;
                }
                Err(error) => return Err(format!("the gateway did not answer: {error}")),
            };
            let status = reply.status().as_u16();
            let answer: Value = reply.json().await.unwrap_or(Value::Null);
            match status {
                401 if !refreshed => {
                    refreshed = true;
                    self.forget_token();
                }
                429 | 502 | 503 | 504 if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(1000 * u64::from(attempt))).await;
                }
                _ => return Ok((status, answer)),
            }
        }
    }
}

/// The counts of a transaction-response.
fn counts(response: &Value) -> Counts {
    let mut counts = Counts::default();
    for entry in response.get("entry").and_then(Value::as_array).into_iter().flatten() {
        let status = entry.pointer("/response/status").and_then(Value::as_str).unwrap_or_default();
        // The gateway's notes on an entry that changed nothing ("no change: …", "no match: …").
        let noted = |prefix: &str| {
            entry
                .pointer("/response/outcome/issue")
                .and_then(Value::as_array)
                .is_some_and(|issues| issues.iter().any(|issue| issue.get("diagnostics").and_then(Value::as_str).is_some_and(|d| d.starts_with(prefix))))
        };
        let (unchanged, no_match) = (noted("no change"), noted("no match"));
        match status.split(' ').next().unwrap_or_default() {
            "201" => counts.created += 1,
            "200" if unchanged => counts.unchanged += 1,
            "200" => counts.updated += 1,
            "204" if no_match => {}
            "204" => counts.deleted += 1,
            _ => {}
        }
    }
    counts
}

/// An OperationOutcome's issues as one line: diagnostics with their element paths.
fn reasons(outcome: &Value) -> String {
    let issues: Vec<String> = outcome
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|issue| {
            let text = issue.get("diagnostics").and_then(Value::as_str).unwrap_or_default();
            let paths: Vec<&str> = issue.get("expression").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            if paths.is_empty() {
                text.to_owned()
            } else {
                format!("{text} ({})", paths.join(", "))
            }
        })
        .collect();
    if issues.is_empty() {
        "no OperationOutcome".to_owned()
    } else {
        issues.join("; ")
    }
}

/// A client assertion (RFC 7523) for SMART Backend Services: RS384 for an RSA key, ES384
/// for an EC key, valid for four minutes.
pub fn sign_client_assertion(client_id: &str, audience: &str, pem: &[u8], kid: &str) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let (algorithm, key) = match EncodingKey::from_rsa_pem(pem) {
        Ok(key) => (Algorithm::RS384, key),
        Err(_) => (Algorithm::ES384, EncodingKey::from_ec_pem(pem).map_err(|e| format!("not an RSA or EC private key: {e}"))?),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "exp": now + 240, "iat": now, "jti": uuid::Uuid::new_v4().to_string()
    });
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resource whose mapping says `keepLater` is guarded with its event's time; held from a
    /// later event, it leaves its transaction and the message's other resources refer to the
    /// one on the server instead of its placeholder.
    #[test]
    fn a_kept_resource_leaves_its_transaction() {
        let stay = Produced {
            resource_type: "Encounter".into(),
            system: "urn:test".into(),
            value: "stay-1".into(),
            resource: json!({ "resourceType": "Encounter", "period": { "start": "2024-04-01T10:00:00+09:00" } }),
            keep_later: Some("period.start".into()),
        };
        let unguarded = Produced { keep_later: None, value: "stay-2".into(), ..stay.clone() };
        let note = json!({
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
            "resource": { "resourceType": "Observation", "encounter": { "reference": stay.placeholder() } },
            "request": { "method": "POST", "url": "Observation" }
        });
        let outgoing = Outgoing::of(vec![upsert_entry(&stay), upsert_entry(&unguarded), note], &[stay.clone(), unguarded]).expect("a transaction");
        assert_eq!(outgoing.guards.len(), 1, "only the resource whose mapping says keepLater");
        let guard = outgoing.guards.first().expect("the stay's guard");
        assert_eq!(guard.time, "2024-04-01T10:00:00+09:00");
        assert_eq!(guard.condition, "Encounter?identifier=urn:test|stay-1");
        let mut bundle = outgoing.bundle.clone();
        leave_out(&mut bundle, guard, "Encounter/e1");
        let entries = bundle["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 2, "{bundle}");
        assert!(entries.iter().all(|e| e["fullUrl"] != stay.placeholder().as_str()));
        assert_eq!(entries[1]["resource"]["encounter"]["reference"], "Encounter/e1");
        assert!(Outgoing::of(Vec::new(), &[stay]).is_none(), "no entries, no transaction");
    }
}
