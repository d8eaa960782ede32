//! SS-MIX2 standardized storage as a hospital keeps it:
//! `root/ID[1-3]/ID[4-6]/患者ID/診療日/データ種別/` holding one message per file, named
//! `患者ID_診療日_データ種別_オーダNo_発生日時_診療科コード_コンディションフラグ`. The
//! condition flag is `1` for the current file, `2` for one a newer file superseded, `0` for
//! a deleted order (layout and flags as the National Hospital Organization's SS-MIX2
//! documents describe them; GitHub nhoHQ/SSMIX2_support_documents, doc/transaction_strage.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file of the storage, as its name describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub path: PathBuf,
    /// The path under the root, with `/` separators (for reports and the import's memory).
    pub relative: String,
    pub patient_id: String,
    /// `YYYYMMDD`, or `-` for data not tied to a day (ADT-00, PPR-01).
    pub date: String,
    pub data_type: String,
    pub order_no: String,
    /// 発生日時, 17 digits (`YYYYMMDDHHMMSSfff`).
    pub occurred: String,
    pub department: String,
    pub flag: char,
}

/// What the import does with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The current version of its order: create or update what it maps to.
    Upsert,
    /// Its order was deleted (flag 0): delete what it mapped to.
    Delete,
}

/// The storage's files in the order they are sent: every patient's ADT-00 first (a person
/// exists before their data refers to them), then by 発生日時; each order's latest file only.
#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<(StoredFile, Action)>,
    /// Files a newer file of the same order supersedes (flag 2, or an older flag 1).
    pub superseded: Vec<StoredFile>,
    /// For each file sent (by its relative path), the files of its order it supersedes:
    /// what they mapped to and it does not is deleted with it.
    pub earlier: BTreeMap<String, Vec<StoredFile>>,
    /// Files that are not SS-MIX2 storage files, or not where their name puts them.
    pub problems: Vec<(String, String)>,
    /// Every file looked at.
    pub read: usize,
}

/// Parses a file name (an extension such as `.hl7` after the flag is allowed).
pub fn parse_name(name: &str) -> Option<(String, String, String, String, String, String, char)> {
    let parts: Vec<&str> = name.split('_').collect();
    let [patient, date, data_type, order_no, occurred, department, flag] = parts.as_slice() else { return None };
    let flag = flag.split('.').next().unwrap_or_default();
    let mut flag_chars = flag.chars();
    let (Some(flag), None) = (flag_chars.next(), flag_chars.next()) else { return None };
    let valid = !patient.is_empty()
        && (*date == "-" || (date.len() == 8 && date.chars().all(|c| c.is_ascii_digit())))
        && data_type.len() == 6
        && occurred.len() == 17
        && occurred.chars().all(|c| c.is_ascii_digit())
        && matches!(flag, '0' | '1' | '2');
    valid.then(|| {
        (
            (*patient).to_owned(),
            (*date).to_owned(),
            (*data_type).to_owned(),
            (*order_no).to_owned(),
            (*occurred).to_owned(),
            (*department).to_owned(),
            flag,
        )
    })
}

/// Walks `root` and plans the import.
pub fn plan(root: &Path) -> std::io::Result<Plan> {
    let mut found = Vec::new();
    let mut plan = Plan::default();
    walk(root, root, &mut found, &mut plan)?;
    // Each order's files, latest 発生日時 last; within one instant the current file (1) wins.
    let mut orders: BTreeMap<(String, String, String, String), Vec<StoredFile>> = BTreeMap::new();
    for file in found {
        let key = (file.patient_id.clone(), file.date.clone(), file.data_type.clone(), file.order_no.clone());
        orders.entry(key).or_default().push(file);
    }
    for (_, mut files) in orders {
        files.sort_by(|a, b| (a.occurred.as_str(), a.flag == '1').cmp(&(b.occurred.as_str(), b.flag == '1')));
        let Some(latest) = files.pop() else { continue };
        if latest.flag != '2' && !files.is_empty() {
            plan.earlier.insert(latest.relative.clone(), files.clone());
        }
        plan.superseded.extend(files);
        match latest.flag {
            '1' => plan.files.push((latest, Action::Upsert)),
            '0' => plan.files.push((latest, Action::Delete)),
            // A superseded file without its successor: nothing current to send.
            _ => plan.superseded.push(latest),
        }
    }
    plan.files.sort_by(|(a, _), (b, _)| {
        let rank = |file: &StoredFile| (file.data_type != "ADT-00", file.occurred.clone(), file.relative.clone());
        rank(a).cmp(&rank(b))
    });
    Ok(plan)
}

fn walk(root: &Path, directory: &Path, found: &mut Vec<StoredFile>, plan: &mut Plan) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(directory)?.flatten().collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, found, plan)?;
            continue;
        }
        plan.read += 1;
        let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        let Some((patient_id, date, data_type, order_no, occurred, department, flag)) = parse_name(&name) else {
            plan.problems.push((relative, "not an SS-MIX2 storage file name (患者ID_診療日_データ種別_オーダNo_発生日時_診療科_フラグ)".to_owned()));
            continue;
        };
        let expected = expected_directory(&patient_id, &date, &data_type);
        let directories: Vec<&str> = relative.rsplit('/').skip(1).collect::<Vec<_>>().into_iter().rev().collect();
        if directories.join("/") != expected {
            plan.problems.push((relative, format!("the file is not where its name puts it ({expected}/)")));
            continue;
        }
        found.push(StoredFile { path, relative, patient_id, date, data_type, order_no, occurred, department, flag });
    }
    Ok(())
}

/// The directory (under the root) a file of this patient, day and data type belongs in.
pub fn expected_directory(patient_id: &str, date: &str, data_type: &str) -> String {
    let first: String = patient_id.chars().take(3).collect();
    let second: String = patient_id.chars().skip(3).take(3).collect();
    format!("{first}/{second}/{patient_id}/{date}/{data_type}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_storage_convention() {
        let parsed = parse_name("9999013_20110701_OMP-01_000000011000185_20110701224603984_01_1").expect("a storage name");
        assert_eq!(parsed.0, "9999013");
        assert_eq!(parsed.2, "OMP-01");
        assert_eq!(parsed.4, "20110701224603984");
        assert_eq!(parsed.6, '1');
        assert!(parse_name("9999013_-_ADT-00_999999999999999_20111220224447339_-_1.hl7").is_some());
        assert!(parse_name("9999013_-_ADT-00_999999999999999_2011122022444733_-_1").is_none(), "16 digits");
        assert!(parse_name("9999013_-_ADT-00_999999999999999_20111220224447339_-_3").is_none(), "flag 3");
        assert!(parse_name("readme.txt").is_none());
        assert_eq!(expected_directory("9999013", "-", "ADT-00"), "999/901/9999013/-/ADT-00");
    }
}
