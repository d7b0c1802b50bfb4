//! Tidy: the architecture invariants of ARCHITECTURE.md checked by reading the source.
//!
//! - Layers: a top-level folder of `src/` imports (`crate::<folder>`, doc links included)
//!   only folders of lower layers, so the crate has no import cycle; `client` sees only the
//!   domain.
//! - Only `tools/process.rs` spawns programs.
//! - Only the store knows the task directory's file names.
//! - No BullMQ or Redis below the engine (domain, config, store, tools, pipeline).
//! - Only config reads `TUBESCRIBE_*` environment variables.
//! - One composition root: only `app/runtime.rs` starts workers or our own Redis.
//! - Every module starts with a `//!` saying what it owns.
//!
//! Unit-test modules (`#[cfg(test)] mod …`) are left out: tests may reach anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom to top; a folder may import only folders with a smaller rank.
const LAYERS: &[(&str, u32)] = &[
    ("domain", 1),
    ("config", 2),
    ("store", 3),
    ("tools", 4),
    ("observe", 5),
    ("pipeline", 6),
    ("engine", 7),
    ("app", 8),
    ("server", 9),
    ("client", 9),
    ("cli", 10),
];

/// One source file: its path under `src/`, its top-level folder and its text without unit
/// tests.
struct Source {
    rel: String,
    top: String,
    body: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `.rs` file under `src/` (sorted), with its unit-test module cut off.
fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            let top = rel
                .split('/')
                .next()
                .expect("non-empty")
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&p).expect("source is UTF-8");
            let body = match text.find("#[cfg(test)]\nmod ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            Source { rel, top, body }
        })
        .collect()
}

/// `body` without `//` comments (line and doc comments), for checks on code only.
fn code_only(body: &str) -> String {
    body.lines()
        .map(|l| match l.find("//") {
            // keep `//` inside string literals such as URLs (`"https://…"`)
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level folders `body` refers to as `crate::<name>` (also inside `use crate::{…}`).
fn crate_refs(body: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
        rest = after;
    }
    found
}

fn rank(folder: &str) -> Option<u32> {
    LAYERS.iter().find(|(f, _)| *f == folder).map(|(_, r)| *r)
}

#[test]
fn every_top_level_module_has_a_layer() {
    for s in sources() {
        if s.top == "lib" || s.top == "main" {
            continue;
        }
        assert!(
            rank(&s.top).is_some(),
            "{}: top-level module `{}` has no layer in tests/tidy.rs and ARCHITECTURE.md",
            s.rel,
            s.top
        );
    }
}

#[test]
fn imports_point_down_the_layers() {
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in sources() {
        let Some(own) = rank(&s.top) else { continue };
        for to in crate_refs(&s.body) {
            let Some(r) = rank(&to) else { continue };
            let allowed = if s.top == "client" {
                to == "domain"
            } else {
                to == s.top || r < own
            };
            if !allowed {
                wrong
                    .entry(format!("{} ({})", s.rel, s.top))
                    .or_default()
                    .push(to);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways (layers: {LAYERS:?}): {wrong:#?}"
    );
}

/// Fails when the code (comments left out) of a source file that `applies` to contains one
/// of `patterns`; `rule` says what to do instead.
fn forbid(applies: impl Fn(&Source) -> bool, patterns: &[&str], rule: &str) {
    for s in sources().iter().filter(|s| applies(s)) {
        let code = code_only(&s.body);
        for pat in patterns {
            assert!(!code.contains(pat), "{} uses `{pat}`: {rule}", s.rel);
        }
    }
}

#[test]
fn only_the_process_runner_spawns_programs() {
    forbid(
        |s| s.rel != "tools/process.rs",
        &["Command::new", "process::Command"],
        "programs are started through tools::process only",
    );
}

#[test]
fn only_the_store_knows_file_names() {
    let store = std::fs::read_to_string(src_dir().join("store/mod.rs")).unwrap();
    // The fixed names the store owns: `pub const X: &str = "name";` in its `names` module.
    let names: Vec<String> = store
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub const ")?;
            let v = l.split('"').nth(1)?;
            v.contains('.').then(|| format!("\"{v}\""))
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "\"manifest.json\""),
        "the store's file names were not found: {names:?}"
    );
    for s in sources() {
        if s.top == "store" {
            continue;
        }
        let code = code_only(&s.body);
        for n in &names {
            assert!(
                !code.contains(n.as_str()),
                "{} spells the task file name {n}: ask the store (store::names / TaskDir)",
                s.rel
            );
        }
    }
}

#[test]
fn no_queue_or_redis_below_the_engine() {
    forbid(
        |s| {
            matches!(
                s.top.as_str(),
                "domain" | "config" | "store" | "tools" | "pipeline"
            )
        },
        &["bullmq", "redis::", "use redis"],
        "stage work and what it stands on know nothing of the queue",
    );
}

#[test]
fn only_config_reads_tubescribe_environment() {
    for s in sources() {
        if s.top == "config" {
            continue;
        }
        let code = code_only(&s.body);
        for (i, _) in code.match_indices("\"TUBESCRIBE_") {
            let before = &code[..i];
            let call = ["var(", "var_os(", "set_var(", "remove_var("]
                .iter()
                .any(|f| before.trim_end().ends_with(f));
            assert!(
                !call,
                "{} reads a TUBESCRIBE_* variable: only config reads the environment",
                s.rel
            );
        }
    }
}

#[test]
fn one_composition_root() {
    forbid(
        |s| s.rel != "app/runtime.rs" && s.top != "engine" && s.rel != "tools/redis_embed.rs",
        &["Workers::start", "redis_embed::ensure"],
        "start-up goes through app::runtime",
    );
}

#[test]
fn every_module_says_what_it_owns() {
    for s in sources() {
        let text = std::fs::read_to_string(src_dir().join(&s.rel)).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} does not start with a `//!` comment saying what it owns",
            s.rel
        );
    }
}

#[test]
fn the_checks_see_what_they_check() {
    // Guards against a tidy test that passes because it reads nothing.
    let all = sources();
    assert!(all.len() > 30, "only {} source files found", all.len());
    assert!(crate_refs("use crate::{domain::Stage, store};") == ["domain", "store"]);
    assert_eq!(crate_refs("x: crate::engine::Workers"), ["engine"]);
    assert_eq!(code_only("let a = 1; // crate::cli"), "let a = 1; ");
    assert_eq!(
        code_only("let u = \"https://x\";"),
        "let u = \"https://x\";"
    );
    assert!(all
        .iter()
        .any(|s| s.rel == "tools/process.rs" && code_only(&s.body).contains("Command::new")));
}
