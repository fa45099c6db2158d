//! Reads configuration files: YAML (or JSON) files and directories of them,
//! several documents per file, `kind: List` wrappers, `${VAR}` expansion in
//! string values (`super::env`). Produces typed documents per kind; skips kinds llmgw does
//! not serve with one warning each. Every error names file, line, document,
//! resource and field.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use serde_norway::Value;

pub use super::env::{Env, ProcessEnv};
use super::env::{Expansion, expand_env};
use super::{
    ConfigError, ErrorList, ObjectMeta, ResourceId, Source, authn::RequestAuthenticationSpec,
    authz::AuthorizationPolicySpec, gateway::GatewaySpec, provider::LlmProviderSpec,
    route::LlmRouteSpec,
};

/// One resource as written, with where it came from.
#[derive(Debug, Clone)]
pub struct Document<S> {
    pub source: Source,
    pub api_version: String,
    pub kind: &'static str,
    pub meta: ObjectMeta,
    pub id: ResourceId,
    pub spec: S,
}

impl<S> Document<S> {
    /// `Kind namespace/name`, as used in messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind, self.id)
    }

    /// An error about `field` (relative to the resource, e.g. `spec.host`) of this resource.
    pub fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: Some(self.source.clone()),
            resource: Some(self.describe()),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything read from the configuration paths, before validation.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    pub providers: Vec<Document<LlmProviderSpec>>,
    pub routes: Vec<Document<LlmRouteSpec>>,
    pub gateways: Vec<Document<GatewaySpec>>,
    pub authorization_policies: Vec<Document<AuthorizationPolicySpec>>,
    pub request_authentications: Vec<Document<RequestAuthenticationSpec>>,
    /// Resources of kinds llmgw does not serve: where, and `apiVersion kind name`.
    pub skipped: Vec<(Source, String)>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// Reads every file named in `paths` (directories: their `*.yaml`, `*.yml`
/// and `*.json` files, sorted, not recursing, skipping dot-files as
/// Kubernetes mounts ConfigMaps with `..data` links). Collects all errors.
pub fn load_paths(paths: &[PathBuf], env: &dyn Env) -> Result<RawConfig, ErrorList> {
    let mut errors = ErrorList::default();
    let mut raw = RawConfig::default();
    for path in paths {
        match list_files(path) {
            Ok(files) => raw.files.extend(files),
            Err(e) => errors.push(e),
        }
    }
    if raw.files.is_empty() && errors.is_empty() {
        errors.push(ConfigError::NoFiles {
            paths: paths.to_vec(),
        });
    }
    for file in raw.files.clone() {
        match fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, env, &mut raw, &mut errors),
            Err(source) => errors.push(ConfigError::Io { path: file, source }),
        }
    }
    let documents = raw.providers.len()
        + raw.routes.len()
        + raw.gateways.len()
        + raw.authorization_policies.len()
        + raw.request_authentications.len()
        + raw.skipped.len();
    if documents == 0 && errors.is_empty() {
        // As for no files: an empty configuration is far more often a file
        // caught half-written (or truncated) than a wish to serve nothing.
        errors.push(ConfigError::NoDocuments {
            files: raw.files.clone(),
        });
    }
    check_duplicates(&raw, &mut errors);
    errors.into_result(raw)
}

fn list_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        let is_config = matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        // Follow links (ConfigMap keys are links into `..data/`).
        if is_config && fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses one file's text into `raw`. Public for tests and for `--config -`.
pub fn load_text(
    file: &Path,
    text: &str,
    env: &dyn Env,
    raw: &mut RawConfig,
    errors: &mut ErrorList,
) {
    let starts = document_start_lines(text);
    for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let source = Source {
            file: file.to_path_buf(),
            document: index + 1,
            line: starts.get(index).copied().unwrap_or(1),
        };
        let value = match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((source.line, 0));
                errors.push(ConfigError::Syntax {
                    path: file.to_path_buf(),
                    line,
                    column,
                    message: strip_location(&e.to_string()),
                });
                // The parser cannot resynchronise after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue; // an empty document (`---` alone)
        }
        load_value(&source, value, env, raw, errors);
    }
}

/// The 1-based line each document of `text` starts on.
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ");
        let t = line.trim();
        // A marker starts a document; so does the first content line of a
        // file that does not begin with one.
        if is_marker || (!seen_content && !t.is_empty() && !t.starts_with('#')) {
            starts.push(i + 1);
            seen_content = true;
        }
    }
    starts
}

fn strip_location(msg: &str) -> String {
    // serde_norway appends " at line L column C"; we print the location first.
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Known kinds: `(group, kind) -> versions`.
const KINDS: &[(&str, &str, &[&str])] = &[
    ("istio.alibabacloud.com", "LLMProvider", &["v1beta1"]),
    ("istio.alibabacloud.com", "LLMRoute", &["v1beta1"]),
    (
        "networking.istio.io",
        "Gateway",
        &["v1alpha3", "v1beta1", "v1"],
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        &["v1beta1", "v1"],
    ),
    (
        "security.istio.io",
        "RequestAuthentication",
        &["v1beta1", "v1"],
    ),
];

fn load_value(
    source: &Source,
    mut value: Value,
    env: &dyn Env,
    raw: &mut RawConfig,
    errors: &mut ErrorList,
) {
    let invalid = |resource: Option<String>, field: &str, message: String| ConfigError::Invalid {
        at: Some(source.clone()),
        resource,
        field: field.to_string(),
        message,
    };
    let Value::Mapping(map) = &value else {
        errors.push(invalid(
            None,
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
        return;
    };
    let get_str = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind)) = (get_str("apiVersion"), get_str("kind")) else {
        errors.push(invalid(
            None,
            "",
            "missing apiVersion or kind (each document must be a Kubernetes resource)".into(),
        ));
        return;
    };

    // `kubectl get -o yaml` output wraps resources in a List.
    if kind == "List" || kind.ends_with("List") && api_version == "v1" {
        match map.get("items") {
            Some(Value::Sequence(items)) => {
                for item in items.clone() {
                    load_value(source, item, env, raw, errors);
                }
            }
            _ => errors.push(invalid(
                None,
                "items",
                "a List needs a sequence of items".into(),
            )),
        }
        return;
    }

    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let meta_str = |key: &str| {
        map.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
    };
    let name_hint = format!(
        "{}/{}",
        meta_str("namespace").unwrap_or(super::DEFAULT_NAMESPACE),
        meta_str("name").unwrap_or("<unnamed>")
    );
    let Some(&(_, known_kind, versions)) = KINDS.iter().find(|(g, k, _)| *g == group && *k == kind)
    else {
        raw.skipped
            .push((source.clone(), format!("{api_version} {kind} {name_hint}")));
        return;
    };
    let resource = Some(format!("{known_kind} {name_hint}"));
    if !versions.contains(&version) {
        errors.push(invalid(
            resource,
            "apiVersion",
            format!(
                "unsupported version {version} of {group} {kind}; llmgw reads {}",
                versions
                    .iter()
                    .map(|v| format!("{group}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        return;
    }
    for key in map.keys() {
        let key = key.as_str().unwrap_or("<non-string key>");
        if !matches!(key, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            errors.push(invalid(
                resource.clone(),
                key,
                "unknown field (a resource has apiVersion, kind, metadata, spec)".into(),
            ));
            return;
        }
    }

    let mut expanded = Expansion::default();
    expand_env(&mut value, "", env, &mut expanded);
    if !expanded.errors.is_empty() {
        for (field, message) in expanded.errors {
            errors.push(invalid(resource.clone(), &field, message));
        }
        return;
    }
    // A type error quotes the value it read, which may come from a variable
    // (a key in the wrong field): name the variable instead of its value.
    let redacted = |(field, message): (String, String)| (field, expanded.redact(message));
    let Value::Mapping(mut map) = value else {
        unreachable!("checked above")
    };
    let meta_value = map.remove("metadata").unwrap_or(Value::Null);
    let meta: ObjectMeta = match typed(meta_value, "metadata").map_err(redacted) {
        Ok(m) => m,
        Err((field, message)) => {
            errors.push(invalid(resource, &field, message));
            return;
        }
    };
    if meta.name.is_empty() {
        errors.push(invalid(
            resource,
            "metadata.name",
            "must not be empty".into(),
        ));
        return;
    }
    let spec = map
        .remove("spec")
        .unwrap_or_else(|| Value::Mapping(Default::default()));

    macro_rules! push {
        ($list:expr) => {{
            let id = ResourceId::of(&meta);
            match typed(spec, "spec").map_err(redacted) {
                Ok(spec) => $list.push(Document {
                    source: source.clone(),
                    api_version: api_version.clone(),
                    kind: known_kind,
                    meta,
                    id,
                    spec,
                }),
                Err((field, message)) => {
                    errors.push(invalid(Some(format!("{known_kind} {id}")), &field, message))
                }
            }
        }};
    }
    match known_kind {
        "LLMProvider" => push!(raw.providers),
        "LLMRoute" => push!(raw.routes),
        "Gateway" => push!(raw.gateways),
        "AuthorizationPolicy" => push!(raw.authorization_policies),
        "RequestAuthentication" => push!(raw.request_authentications),
        _ => unreachable!("KINDS lists exactly these"),
    }
}

/// Deserialises `value` as `T`, giving the failing field's dotted path under `prefix`.
fn typed<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = match inner.as_str() {
            "." | "" => prefix.to_string(),
            p => format!("{prefix}.{p}"),
        };
        (field, strip_location(&e.into_inner().to_string()))
    })
}

fn check_duplicates(raw: &RawConfig, errors: &mut ErrorList) {
    fn check<S>(docs: &[Document<S>], errors: &mut ErrorList) {
        let mut seen: HashMap<&ResourceId, &Source> = HashMap::new();
        for d in docs {
            if let Some(first) = seen.insert(&d.id, &d.source) {
                errors.push(d.error("metadata.name", format!("defined twice (first at {first})")));
            }
        }
    }
    check(&raw.providers, errors);
    check(&raw.routes, errors);
    check(&raw.gateways, errors);
    check(&raw.authorization_policies, errors);
    check(&raw.request_authentications, errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(text: &str, env: &HashMap<String, String>) -> Result<RawConfig, ErrorList> {
        let mut raw = RawConfig::default();
        let mut errors = ErrorList::default();
        load_text(Path::new("test.yaml"), text, env, &mut raw, &mut errors);
        errors.into_result(raw)
    }

    fn one_error(text: &str) -> String {
        let errs = load(text, &env(&[])).expect_err("should fail");
        assert_eq!(errs.0.len(), 1, "{errs}");
        errs.0[0].to_string()
    }

    #[test]
    fn every_unset_variable_of_a_document_is_reported() {
        let text = "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\nspec: {host: \"${HOSTX}\", path: \"${P}\"}\n";
        let errs = load(text, &env(&[])).expect_err("should fail").to_string();
        assert!(
            errs.contains("HOSTX is not set") && errs.contains("spec.host"),
            "{errs}"
        );
        assert!(
            errs.contains("P is not set") && errs.contains("spec.path"),
            "{errs}"
        );
    }

    #[test]
    fn a_variable_in_the_wrong_field_is_named_not_quoted() {
        let text = PROVIDER.replace("stream: false", "stream: ${API_KEY}");
        let errs = load(&text, &env(&[("API_KEY", "sk-LEAKME-123")]))
            .expect_err("a key is not a boolean")
            .to_string();
        assert!(!errs.contains("LEAKME"), "{errs}");
        assert!(
            errs.contains("invalid type: string \"${API_KEY}\", expected a boolean"),
            "{errs}"
        );
        assert!(errs.contains("openAIConfig.stream"), "{errs}");
        // Short values are replaced only as a whole quoted string.
        let text = PROVIDER.replace("stream: false", "stream: ${S}");
        let errs = load(&text, &env(&[("API_KEY", "k"), ("S", "u16")]))
            .expect_err("not a boolean")
            .to_string();
        assert!(errs.contains("string \"${S}\""), "{errs}");
    }

    const PROVIDER: &str = r#"
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata:
  name: p
  namespace: istio-system
spec:
  host: example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig:
        model: m
        stream: false
        apiKey: ${API_KEY}
"#;

    #[test]
    fn unset_variable_names_variable_and_field() {
        let msg = one_error(PROVIDER);
        assert!(msg.contains("API_KEY is not set"), "{msg}");
        assert!(
            msg.contains("spec.configs.defaultConfig.openAIConfig.apiKey"),
            "{msg}"
        );
        assert!(msg.contains("test.yaml:2 (document 1)"), "{msg}");
    }

    #[test]
    fn parses_provider_and_keeps_key_secret() {
        let raw = load(PROVIDER, &env(&[("API_KEY", "sk-secret")])).unwrap();
        let p = &raw.providers[0];
        assert_eq!(p.id.to_string(), "istio-system/p");
        let cfg = p.spec.configs.default_config.as_ref().unwrap();
        let key = cfg
            .openai_config
            .as_ref()
            .unwrap()
            .api_key
            .as_ref()
            .unwrap();
        assert_eq!(key.expose(), "sk-secret");
        assert!(!format!("{:?}", p.spec).contains("sk-secret"));
    }

    #[test]
    fn wrong_type_names_field_path() {
        let text = PROVIDER
            .replace("stream: false", "stream: [1]")
            .replace("${API_KEY}", "k");
        let msg = one_error(&text);
        assert!(
            msg.contains("LLMProvider istio-system/p: spec.configs.defaultConfig.openAIConfig.stream: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_field_is_rejected_with_expected_names() {
        let text = PROVIDER
            .replace("path:", "pathh:")
            .replace("${API_KEY}", "k");
        let msg = one_error(&text);
        assert!(msg.contains("unknown field `pathh`"), "{msg}");
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn syntax_error_has_line() {
        let msg = one_error("a: b\n  c: : d\n");
        assert!(msg.starts_with("test.yaml:2:"), "{msg}");
        assert!(msg.contains("YAML syntax error"), "{msg}");
    }

    #[test]
    fn multi_document_other_kinds_and_lists() {
        let text = r#"
# leading comment
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: Gateway
  metadata: {name: g}
  spec:
    selector: {istio: ingressgateway}
    servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;
        let raw = load(text, &env(&[])).unwrap();
        assert_eq!(raw.skipped.len(), 1);
        assert_eq!(raw.skipped[0].0.line, 3);
        assert!(
            raw.skipped[0].1.contains("ConfigMap default/cm"),
            "{:?}",
            raw.skipped
        );
        assert_eq!(raw.gateways.len(), 1);
        assert_eq!(raw.gateways[0].id.to_string(), "default/g");
        assert_eq!(raw.gateways[0].source.document, 3);
    }

    #[test]
    fn unsupported_version_and_missing_kind() {
        let msg = one_error(
            "apiVersion: security.istio.io/v9\nkind: AuthorizationPolicy\nmetadata: {name: x}\n",
        );
        assert!(msg.contains("unsupported version v9"), "{msg}");
        let msg = one_error("metadata: {name: x}\n");
        assert!(msg.contains("missing apiVersion or kind"), "{msg}");
        let msg = one_error("- 1\n- 2\n");
        assert!(msg.contains("must be a mapping"), "{msg}");
    }

    #[test]
    fn duplicate_resources_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let doc =
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n";
        fs::write(dir.path().join("a.yaml"), doc).unwrap();
        fs::write(dir.path().join("b.yml"), doc).unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let errs = load_paths(&[dir.path().to_path_buf()], &env(&[])).unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        let msg = errs.0[0].to_string();
        assert!(
            msg.contains("b.yml:1 (document 1): Gateway default/g: metadata.name: defined twice"),
            "{msg}"
        );
    }

    #[test]
    fn missing_path_and_empty_dir() {
        let errs = load_paths(&[PathBuf::from("/nonexistent/llmgw")], &env(&[])).unwrap_err();
        assert!(errs.to_string().contains("/nonexistent/llmgw"), "{errs}");
        let dir = tempfile::tempdir().unwrap();
        let errs = load_paths(&[dir.path().to_path_buf()], &env(&[])).unwrap_err();
        assert!(errs.to_string().contains("no YAML files"), "{errs}");
    }

    #[test]
    fn files_without_a_single_resource_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "# nothing yet\n---\n").unwrap();
        let errs = load_paths(&[dir.path().to_path_buf()], &env(&[])).expect_err("empty");
        let text = errs.to_string();
        assert!(
            text.contains("no resources in") && text.contains("a.yaml"),
            "{text}"
        );
    }
}
