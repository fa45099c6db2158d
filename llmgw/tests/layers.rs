//! The layers of `llmgw/src` only point down: a top-level module imports
//! (`crate::...`) only modules below it in this order, so the house stays
//! readable top to bottom. `docs/architecture.md` explains each layer.

use std::path::Path;

/// Bottom first. `http` and `observe` are at the bottom (anyone may use
/// them); `l4` reads the model; `cli` is the command line on top.
const LAYERS: &[&str] = &[
    "http", "observe", "client", "config", "model", "l4", "policy", "llm", "proxy", "serve", "cli",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

/// `crate::NAME` references in code (comments are skipped).
fn references(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src directory").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_only_import_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        // lib.rs and main.rs sit outside the layers.
        let Some(own) = rank(&top) else {
            assert!(
                top == "lib" || top == "main",
                "{} is in no layer: add {top} to LAYERS (and to docs/architecture.md)",
                rel.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(f).expect("readable");
        for (line, name) in references(&text) {
            match rank(&name) {
                Some(r) if r > own => upward.push(format!(
                    "{}:{line}: {top} imports {name}, a layer above it",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(upward.is_empty(), "{}", upward.join("\n"));
}

#[test]
fn the_check_sees_a_reference() {
    assert_eq!(
        references("use crate::model::Snapshot;\n// crate::serve\nlet x = crate::proxy::a;"),
        [(1, "model".to_string()), (3, "proxy".to_string())]
    );
}
