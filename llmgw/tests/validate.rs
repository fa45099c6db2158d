//! What `llmgw validate` prints for each configuration fixture
//! (`tests/fixtures/`, described in its README), as snapshots: the compiled
//! configuration and its JSON dump for the valid ones, the errors for the
//! invalid ones.

use std::{collections::HashMap, path::Path};

use llmgw::{
    config::{
        ErrorList, RawConfig, Settings,
        load::{load_paths, load_text},
    },
    model::{compile, dump},
};

fn env() -> HashMap<String, String> {
    [
        ("API_KEY".to_string(), "sk-test-123".to_string()),
        ("LOCAL_IP".to_string(), "10.1.2.3".to_string()),
    ]
    .into()
}

/// The fixture as loaded under its path relative to `tests/` (so errors
/// name the same file on every machine).
fn load_fixture(path: &Path, raw: &mut RawConfig) -> ErrorList {
    let text = std::fs::read_to_string(path).expect("fixture");
    let name = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"))
        .unwrap_or(path);
    let mut errors = ErrorList::default();
    load_text(name, &text, &env(), raw, &mut errors);
    errors
}

#[test]
fn valid_configurations_compile_to_what_validate_prints() {
    insta::glob!("fixtures/valid/*.yaml", |path| {
        let mut raw = RawConfig::default();
        let errors = load_fixture(path, &mut raw);
        assert!(errors.is_empty(), "{errors}");
        let snapshot = compile(&raw, &Settings::default()).unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string_pretty(&dump::dump(&snapshot)).expect("JSON");
        insta::assert_snapshot!(format!(
            "{}configuration is valid\n\n--- --json\n{json}\n",
            dump::describe(&snapshot)
        ));
    });
}

#[test]
fn invalid_configurations_name_file_document_and_field() {
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        // Relative paths: the errors name `../examples/...` everywhere.
        let mut raw = load_paths(
            &[
                "../examples/quickstart".into(),
                "../examples/security".into(),
            ],
            &env(),
        )
        .expect("the examples load");
        let errors = load_fixture(path, &mut raw);
        let text = if errors.is_empty() {
            compile(&raw, &Settings::default())
                .err()
                .unwrap_or_else(|| panic!("{} compiled", path.display()))
                .to_string()
        } else {
            errors.to_string()
        };
        insta::assert_snapshot!(text);
    });
}
