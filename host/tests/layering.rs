//! The house rules of host/src (issue 17), checked on the sources: no module imports one that
//! imports it back (directly or around a circle), and the folders depend one way,
//! `cli` → `http` → `tenants` → `policy` → `plugins` → `observe`, with `policy::values` (the
//! contract's values) a leaf that every layer may import. A module and its own submodules are
//! one unit (a folder's top file owns its children) and are not counted as a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the library (`a::b` for src/a/b.rs) and its source without its tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let name = rel.to_string_lossy().replace('/', "::");
                if name == "lib" || name == "main" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
                // Comments (doc links included) are not imports.
                let code: Vec<&str> = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
                out.insert(name, code.join("\n"));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The paths after each `crate::` and `super::` in `code`, as module paths from the root.
fn paths(module: &str, code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (prefix, base) in
        [("crate::", String::new()), ("super::", module.rsplit_once("::").map_or("", |p| p.0).to_owned())]
    {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(':');
            found.push(if base.is_empty() { path.to_owned() } else { format!("{base}::{path}") });
        }
    }
    found
}

/// Module -> the modules it imports (not itself, not its own submodules or parent).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let resolve = |path: &str| {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| modules.contains_key(m))
    };
    let family = |a: &str, b: &str| a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
    modules
        .iter()
        .map(|(name, code)| {
            let deps =
                paths(name, code).iter().filter_map(|p| resolve(p)).filter(|d| d != name && !family(name, d)).collect();
            (name.clone(), deps)
        })
        .collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = graph();
    assert!(graph.len() > 30, "the sources were read: {:?}", graph.keys());
    // Depth-first search; a back edge is a circle, reported with its path.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| *s == m) {
            circles.push(format!("{} -> {m}", stack[at..].join(" -> ")));
            return;
        }
        stack.push(m);
        for d in &graph[m] {
            visit(d, graph, stack, done, circles);
        }
        stack.pop();
        done.insert(m);
    }
    let (mut stack, mut done, mut circles) = (Vec::new(), BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        visit(m, &graph, &mut stack, &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn folders_depend_one_way() {
    const ORDER: [&str; 6] = ["cli", "http", "tenants", "policy", "plugins", "observe"];
    let rank = |m: &str| ORDER.iter().position(|f| *f == m.split("::").next().unwrap_or(m));
    let graph = graph();
    let mut upward = Vec::new();
    for (m, deps) in &graph {
        for d in deps.iter().filter(|d| *d != "policy::values") {
            let (Some(a), Some(b)) = (rank(m), rank(d)) else { panic!("{m} or {d} is in no known folder") };
            if a > b {
                upward.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against {ORDER:?}:\n{}", upward.join("\n"));
    assert_eq!(graph["policy::values"], BTreeSet::new(), "the contract's values import nothing of tollgate");
}
