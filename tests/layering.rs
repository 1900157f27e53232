//! The layering of rq's modules, checked on its source: the job model <- the store <-
//! the protocol (claims, dependencies, liveness) <- the feeder and the queue's modes <-
//! the command line and the dashboard. A top-level module may use only modules below it:
//! no two top-level modules use each other, however indirectly, and the store and the job
//! model use nothing of the layers above them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What the store may use: the job model and the infrastructure below it.
const BELOW_THE_STORE: &[&str] = &[
    "beats", "error", "fsguard", "host", "job", "lock", "note", "process", "secrets", "time",
];

/// The top-level modules of `src/` and, for each, the top-level modules its code (tests
/// left out) names through `crate::`.
fn module_uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let used = uses.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(list) => list
                        .split('}')
                        .next()
                        .unwrap()
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap())
                        .collect(),
                    None => vec![
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap(),
                    ],
                };
                for name in names {
                    // Lower-case names are modules (`crate::Error` is a re-export).
                    if !name.is_empty()
                        && name != top
                        && name.chars().all(|c| c.is_lowercase() || c == '_')
                    {
                        used.insert(name.to_string());
                    }
                }
            }
        }
    }
    let modules: BTreeSet<String> = uses.keys().cloned().collect();
    for used in uses.values_mut() {
        used.retain(|m| modules.contains(m));
    }
    uses
}

/// Every module `start` reaches through uses.
fn reachable(uses: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![start.to_string()];
    while let Some(m) = next.pop() {
        for used in &uses[&m] {
            if seen.insert(used.clone()) {
                next.push(used.clone());
            }
        }
    }
    seen
}

#[test]
fn no_two_top_level_modules_use_each_other() {
    let uses = module_uses();
    assert!(uses.len() > 20, "the source was not found: {uses:?}");
    let mut cycles = Vec::new();
    for module in uses.keys() {
        if reachable(&uses, module).contains(module) {
            let back: Vec<&String> = uses[module]
                .iter()
                .filter(|m| reachable(&uses, m).contains(module))
                .collect();
            cycles.push(format!("{module} -> {back:?} -> ... -> {module}"));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules in a cycle:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_store_and_the_job_model_use_nothing_above_them() {
    let uses = module_uses();
    let above: Vec<&String> = reachable(&uses, "store")
        .iter()
        .filter(|m| !BELOW_THE_STORE.contains(&m.as_str()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|m| uses.get_key_value(m).unwrap().0)
        .collect();
    assert!(above.is_empty(), "the store uses {above:?}");
    let job = reachable(&uses, "job");
    assert!(
        job.iter().all(|m| m == "error"),
        "the job model uses {job:?}"
    );
}

/// The Rust files of `src/` outside `src/store/`, with their text.
fn outside_the_store() -> Vec<(std::path::PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    let mut found = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            if path != src.join("store") {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            found.push((path, text));
        }
    }
    assert!(found.len() > 30, "the source was not found");
    found
}

/// The database drivers' types stay inside the store: code above it binds parameters and
/// reads columns in the store's own value types (`store::value`). Only `error` wraps the
/// drivers' errors.
#[test]
fn no_driver_types_outside_the_store() {
    let mut named = Vec::new();
    for (path, text) in outside_the_store() {
        if path.ends_with("src/error.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            // The driver crate `postgres`, not rq's own `store::postgres`.
            let pg_driver = code
                .match_indices("postgres::")
                .any(|(at, _)| !code[..at].ends_with("store::"));
            if code.contains("rusqlite") || pg_driver {
                named.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        named.is_empty(),
        "driver types outside the store:\n{}",
        named.join("\n")
    );
}

/// SQL stays inside the store too: code above it runs named operations (`tx.op(...)`) and
/// filters, never statement text of its own. A string literal that opens with a statement
/// keyword outside `src/store/` is such text (help texts open otherwise).
#[test]
fn no_sql_text_outside_the_store() {
    let keywords = [
        "SELECT ", "UPDATE ", "INSERT ", "DELETE ", "WITH ", "CREATE ", "DROP ",
    ];
    let mut found = Vec::new();
    for (path, text) in outside_the_store() {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            // A quote that opens a literal (an escaped one is inside a help text).
            let opens_sql = code.match_indices('"').any(|(at, _)| {
                let rest = &code[at + 1..];
                !code[..at].ends_with('\\') && keywords.iter().any(|k| rest.starts_with(k))
            });
            if opens_sql {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL text outside the store (make it a named operation):\n{}",
        found.join("\n")
    );
}
