//! No import cycles between the modules of any crate of the workspace.
//!
//! A module is a source file (`a/b.rs` or `a/b/mod.rs` is `a::b`). An edge
//! is a path `crate::x::y` or `super::y` in its non-test code, resolved to
//! the longest module prefix. A module and its own ancestors or descendants
//! may refer to each other (that is how Rust nests modules); siblings and
//! cousins must form a DAG, so each module can be read after the ones it
//! uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// Test-only modules (their own files, or after `#[cfg(test)]`) are left
/// out: tests may reach anywhere.
fn is_test_module(m: &Module) -> bool {
    m.iter()
        .any(|s| s == "tests" || s.ends_with("_tests") || s == "fake" || s == "bed")
}

/// The paths `crate::a::b` and `super::a` in `code`, as segment lists
/// (`super` resolved against `m`).
fn paths(m: &Module, code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        for (root, base) in [("crate::", Vec::new()), ("super::", parent(m))] {
            let mut rest = line;
            while let Some(i) = rest.find(root) {
                let before = rest[..i].chars().last();
                rest = &rest[i + root.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let mut p = base.clone();
                for seg in rest.split("::") {
                    let name: String = seg
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if name.is_empty() {
                        break;
                    }
                    let whole = name.len() == seg.len();
                    p.push(name);
                    if !whole {
                        break;
                    }
                }
                out.push(p);
            }
        }
    }
    out
}

fn parent(m: &Module) -> Module {
    m[..m.len().saturating_sub(1)].to_vec()
}

fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for f in &files {
        let m = module_of(src, f);
        if m.is_empty() || is_test_module(&m) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for p in paths(&m, code) {
            let Some(target) = (1..=p.len())
                .rev()
                .map(|k| p[..k].to_vec())
                .find(|t| modules.contains(t))
            else {
                continue;
            };
            if target.starts_with(&m) || m.starts_with(&target) {
                continue;
            }
            g.entry(m.clone()).or_default().insert(target);
        }
    }
    g
}

/// A cycle through the graph, if there is one (depth-first search).
fn find_cycle(g: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        g: &BTreeMap<Module, BTreeSet<Module>>,
        v: &Module,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in g.get(v).into_iter().flatten() {
            match state.get(w).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|x| x == w).unwrap_or(0);
                    let mut c = stack[i..].to_vec();
                    c.push(w.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(g, w, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.keys() {
        if state.get(v).copied().unwrap_or(0) == 0
            && let Some(c) = visit(g, v, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn show(c: &[Module]) -> String {
    c.iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut checked = 0;
    for e in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = e.path().join("src");
        if !src.is_dir() {
            continue;
        }
        checked += 1;
        if let Some(c) = find_cycle(&graph(&src)) {
            found.push(format!("{}: {}", e.file_name().to_string_lossy(), show(&c)));
        }
    }
    assert!(checked >= 8, "only {checked} crates found under {crates:?}");
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_a_cycle_between_siblings_and_not_between_a_module_and_its_child() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod c; use c::X; use crate::b::Y;").unwrap();
    // a child using its parent is how Rust nests modules: no cycle
    std::fs::write(src.join("a/c.rs"), "use super::Z; pub struct X;").unwrap();
    // a path in a comment or in a test module is not an import
    std::fs::write(
        src.join("b.rs"),
        "// crate::a::W\npub struct Y;\n#[cfg(test)]\nmod tests { use crate::a::W; }",
    )
    .unwrap();
    assert_eq!(find_cycle(&graph(src)), None);
    // b using its sibling a, which uses b, is a cycle
    std::fs::write(src.join("b.rs"), "use crate::a::c::X;\nuse crate::a::W;").unwrap();
    let c = find_cycle(&graph(src)).map(|c| show(&c));
    assert!(
        c.as_deref() == Some("a -> b -> a") || c.as_deref() == Some("b -> a -> b"),
        "{c:?}"
    );
}
