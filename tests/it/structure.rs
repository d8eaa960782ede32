//! Checks of the code's shape that the compiler cannot make: the project's own sources are
//! the data.

use std::path::{Path, PathBuf};

fn sources(directory: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Only `src/store/` runs SQL: every statement is written once there, for both backends,
/// and a module that wants rows calls a store function.
#[test]
fn sql_only_in_the_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 20, "the sources were found: {files:?}");
    let store = root.join("src").join("store");
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&store)) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            if ["sqlx::query", "sqlx::raw_sql", "query_as(", "query_scalar("].iter().any(|needle| line.contains(needle)) {
                offenders.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "SQL outside src/store/:\n{}", offenders.join("\n"));
}
