//! The crate's modules depend on each other one way only: config → backend → engine → bind →
//! session → scope → integration (and the blocking face, beside it). Read from the sources: every
//! `crate::…` path in code (comments and docs aside), resolved through the crate root's
//! re-exports, must name a module of a lower layer or the module itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer; a module may use its own layer's modules only
/// where this list says so (`SAME_LAYER_EDGES`), and any module of a lower layer.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("database_url", 0),
    ("config", 1),
    ("load", 1),
    ("backend", 2),
    ("observe", 2),
    ("engine", 3),
    ("hosts", 4),
    ("bind", 4),
    ("bind_key", 4),
    ("manager", 5),
    ("migrate", 6),
    ("session", 6),
    ("savepoint", 6),
    ("scope", 7),
    ("integration", 8),
    ("blocking", 8),
    ("testing", 9),
];

/// Edges allowed inside a layer: (from, to).
const SAME_LAYER_EDGES: &[(&str, &str)] = &[
    ("load", "config"),
    ("savepoint", "session"),
    ("observe", "backend"),
    ("bind", "hosts"),
];

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in tests/layers.rs: give it one"))
        .1
}

/// The library's files: `src/bin/` holds binaries, crates of their own that use the library
/// from outside, whose `crate::` is their own.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() && path.file_name().is_some_and(|n| n == "bin") && dir.ends_with("src") {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // `//` inside a string (a URL) is rare in this crate's code; `://` marks one.
            Some(i) if !line[..i].ends_with(':') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segments of every `crate::` (or `$crate::`) path in `code`, braces expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                out.push(first_segment(item));
            }
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The crate root's names: each module's own name, and each re-exported item's module.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names: BTreeMap<String, String> = LAYERS
        .iter()
        .map(|(m, _)| ((*m).to_owned(), (*m).to_owned()))
        .collect();
    let code = code(lib);
    let mut rest = code.as_str();
    while let Some(i) = rest.find("pub use ") {
        rest = &rest[i + "pub use ".len()..];
        let end = rest.find(';').expect("a `pub use` ends");
        let item = &rest[..end];
        let module = first_segment(item);
        let after = &item[module.len()..].trim_start_matches("::");
        let items: Vec<&str> = match after.strip_prefix('{') {
            Some(group) => split_top_level(group.trim_end_matches('}')),
            None => vec![after],
        };
        for name in items {
            let name = name.trim().rsplit("::").next().unwrap_or_default().trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.clone());
            }
        }
    }
    names
}

fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a path");
    first
        .as_os_str()
        .to_str()
        .expect("utf-8")
        .trim_end_matches(".rs")
        .to_owned()
}

#[test]
fn modules_depend_on_lower_layers_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = root_names(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut edges = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        for first in crate_paths(&code(&text)) {
            let target = names.get(&first).unwrap_or_else(|| {
                panic!("{}: `crate::{first}` names nothing known", file.display())
            });
            if *target == module {
                continue;
            }
            edges += 1;
            let allowed = layer(target) < layer(&module)
                || SAME_LAYER_EDGES.contains(&(module.as_str(), target.as_str()));
            if !allowed {
                wrong.push(format!(
                    "{}: {module} (layer {}) uses crate::{first}, of {target} (layer {})",
                    file.display(),
                    layer(&module),
                    layer(target)
                ));
            }
        }
    }
    assert!(
        edges > 50,
        "the scan found only {edges} cross-module paths: is it reading the code?"
    );
    assert!(
        wrong.is_empty(),
        "layers pointing the wrong way:\n{}",
        wrong.join("\n")
    );
}

/// The scanner itself: it must see what it is meant to see.
#[test]
fn the_scanner_reads_paths_and_skips_comments() {
    let sample = "use crate::{Bind, engine::{Conn, Pool}, Result};\n\
                  let x = crate::scope::current(); // crate::integration::x\n\
                  /// [`Error`](crate::blocking::Y)\n\
                  $crate::BindManager::new()";
    assert_eq!(
        crate_paths(&code(sample)),
        ["Bind", "engine", "Result", "scope", "BindManager"]
    );
    let names = root_names("pub use engine::BindStatus;\npub use scope::{Scope, atomic};\n");
    assert_eq!(names["BindStatus"], "engine");
    assert_eq!(names["atomic"], "scope");
}
