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
/// and a module that wants rows calls a store function. Nothing outside it holds a raw
/// connection or transaction either: the rest of the gateway gets the store's opaque
/// `Db` (inside a `store::Connection` or `store::Transaction`), which only store functions
/// can use.
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
            let needles = ["sqlx::query", "sqlx::raw_sql", "query_as(", "query_scalar(", "AnyConnection", "PoolConnection", "sqlx::Transaction", "sqlx::Executor", "AnyPool"];
            if needles.iter().any(|needle| line.contains(needle)) {
                offenders.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "SQL outside src/store/:\n{}", offenders.join("\n"));
}

/// The top-level modules of `src/`, lowest floor first. A module may import only modules
/// on floors below its own, so no import circle can span folders: the identity ground
/// floor knows nothing above it, the policy decides without the store (it reads facts
/// through `policy::facts::FactSource`, which the store implements), the store renders
/// grants without the service, and the runtime knows none of the interactions built on it.
const FLOORS: &[&str] = &[
    "outcome", "clock", "error", "identity", "config", "fhir", "search", "policy", "audit", "store", "runtime", "service",
    "auth", "admin", "demo", "benchmark", "http",
    // The importer is a client of the gateway over HTTP: it uses only the FHIR helpers.
    "import",
];

/// The top-level modules `text` names through `crate::…` paths (`use crate::{a, b::c}`
/// included), outside comments and the unit-test module.
fn imported_modules(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod tests")) {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or_default().split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn modules_import_only_lower_floors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut offenders = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        let Some(first) = relative.components().next() else { continue };
        let module = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        seen.insert(module.clone());
        let Some(floor) = FLOORS.iter().position(|m| *m == module) else {
            offenders.push(format!("{}: the module '{module}' has no floor in FLOORS", relative.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for imported in imported_modules(&text) {
            if imported == module {
                continue;
            }
            match FLOORS.iter().position(|m| *m == imported) {
                Some(other) if other < floor => {}
                Some(_) => offenders.push(format!("{}: '{module}' imports '{imported}', which is not below it", relative.display())),
                None => offenders.push(format!("{}: '{module}' imports '{imported}', which has no floor", relative.display())),
            }
        }
    }
    assert!(seen.len() >= 15, "the modules were found: {seen:?}");
    assert!(offenders.is_empty(), "imports against the floors:\n{}", offenders.join("\n"));
}

/// The checker itself: it sees grouped imports and paths in code, not comments or tests.
#[test]
fn imported_modules_reads_paths_groups_and_skips_comments() {
    let text = "use crate::{store::Store, policy};\n// crate::http in a comment\nfn f() { crate::fhir::set(x); }\n#[cfg(test)]\nmod tests {\n    use crate::demo;\n}\n";
    let found: Vec<String> = imported_modules(text).into_iter().collect();
    assert_eq!(found, ["fhir", "policy", "store"]);
}
