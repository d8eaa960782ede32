//! Embeds the StructureDefinitions under `profiles/structure-definitions/` into the binary,
//! so the gateway needs no files beside it at run time.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let directory = Path::new("profiles/structure-definitions");
    println!("cargo:rerun-if-changed={}", directory.display());
    // The project's own profiles, and the folders beside them (`core/`: R4's own profiles).
    let list = |folder: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(folder).map(|entries| entries.filter_map(Result::ok).map(|entry| entry.path()).collect()).unwrap_or_default()
    };
    let mut files: Vec<_> = list(directory);
    for folder in files.clone().into_iter().filter(|path| path.is_dir()) {
        println!("cargo:rerun-if-changed={}", folder.display());
        files.extend(list(&folder));
    }
    files.retain(|path| path.extension().is_some_and(|ext| ext == "json"));
    files.sort();
    let mut source = String::from("&[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let name = path.strip_prefix(directory).unwrap_or(path).to_string_lossy().into_owned();
        let _ = writeln!(source, "    ({name:?}, include_str!({:?})),", absolute.display().to_string());
    }
    source.push_str("]\n");
    let out = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    if let Err(error) = std::fs::write(Path::new(&out).join("profiles.rs"), source) {
        println!("cargo:warning=cannot write the embedded profile list: {error}");
    }
}
