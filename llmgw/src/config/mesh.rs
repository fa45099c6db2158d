//! Istio `MeshConfig` as given to `--mesh-config`: a MeshConfig document, or
//! the `istio` ConfigMap holding one under `data.mesh`. llmgw reads only
//! `extensionProviders` (the external authorizers CUSTOM policies name).

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use super::{ConfigError, Scalar};

/// The part of MeshConfig llmgw reads; other fields are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
}

/// `extensionProviders[]`: a name and exactly one provider kind.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<EnvoyExtAuthzHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<EnvoyExtAuthzGrpc>,
    /// Every other kind (`zipkin`, `prometheus`, ...), by key.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl ExtensionProvider {
    /// The provider kind's key as written (`envoyExtAuthzHttp`, `zipkin`, ...).
    pub fn kind(&self) -> Option<&str> {
        if self.envoy_ext_authz_http.is_some() {
            Some("envoyExtAuthzHttp")
        } else if self.envoy_ext_authz_grpc.is_some() {
            Some("envoyExtAuthzGrpc")
        } else {
            self.other.keys().next().map(String::as_str)
        }
    }
}

/// `envoyExtAuthzHttp`, with every field of Istio's API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyExtAuthzHttp {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<Scalar>,
    /// Deprecated in Istio; used when `includeRequestHeadersInCheck` is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_headers_in_check: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `envoyExtAuthzGrpc`, with every field of Istio's API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyExtAuthzGrpc {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBody>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestBody {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// Reads `--mesh-config FILE`.
pub fn load_mesh_config(path: &Path) -> Result<MeshConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_mesh_config(&text).map_err(|message| ConfigError::Invalid {
        at: None,
        resource: Some(format!("mesh config {}", path.display())),
        field: String::new(),
        message,
    })
}

/// Parses MeshConfig YAML, accepting the document itself, a ConfigMap
/// (`kind: ConfigMap`, `data.mesh`), or a map with a `mesh` string.
pub fn parse_mesh_config(text: &str) -> Result<MeshConfig, String> {
    let v: Value = serde_norway::from_str(text).map_err(|e| format!("YAML: {e}"))?;
    let v = match &v {
        Value::Null => return Ok(MeshConfig::default()),
        Value::Mapping(m) => {
            let kind = m.get("kind").and_then(Value::as_str);
            if kind == Some("ConfigMap") {
                let mesh = m
                    .get("data")
                    .and_then(|d| d.get("mesh"))
                    .ok_or("ConfigMap has no data.mesh")?;
                let s = mesh.as_str().ok_or("data.mesh must be a string of YAML")?;
                serde_norway::from_str(s).map_err(|e| format!("data.mesh: YAML: {e}"))?
            } else if let Some(kind) = kind {
                return Err(format!(
                    "expected MeshConfig YAML or the istio ConfigMap, got kind {kind}"
                ));
            } else if let (Some(Value::String(s)), None) =
                (m.get("mesh"), m.get("extensionProviders"))
            {
                serde_norway::from_str(s).map_err(|e| format!("mesh: YAML: {e}"))?
            } else {
                v.clone()
            }
        }
        _ => return Err("expected a YAML mapping".into()),
    };
    if matches!(v, Value::Null) {
        return Ok(MeshConfig::default());
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_config_forms() {
        let direct = "extensionProviders:\n- name: a\n  envoyExtAuthzHttp:\n    service: authz.foo.svc.cluster.local\n    port: 8000\n";
        let m = parse_mesh_config(direct).unwrap();
        assert_eq!(m.extension_providers[0].kind(), Some("envoyExtAuthzHttp"));

        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |-\n    accessLogFile: /dev/stdout\n    extensionProviders:\n    - name: a\n      envoyExtAuthzHttp:\n        service: authz\n        port: \"8000\"\n    - name: z\n      zipkin:\n        service: zipkin\n        port: 9411\n";
        let m = parse_mesh_config(cm).unwrap();
        assert_eq!(m.extension_providers.len(), 2);
        assert_eq!(m.extension_providers[1].kind(), Some("zipkin"));

        let data_only = "mesh: |\n  extensionProviders:\n  - name: b\n    envoyExtAuthzHttp: {service: x, port: 1}\n";
        assert_eq!(
            parse_mesh_config(data_only).unwrap().extension_providers[0].name,
            "b"
        );
        assert!(
            parse_mesh_config("")
                .unwrap()
                .extension_providers
                .is_empty()
        );
    }

    #[test]
    fn mesh_config_errors_name_the_field() {
        let e = parse_mesh_config(
            "extensionProviders:\n- name: a\n  envoyExtAuthzHttp:\n    service: s\n    port: 1\n    failOpn: true\n",
        )
        .unwrap_err();
        assert!(
            e.contains("extensionProviders[0].envoyExtAuthzHttp") && e.contains("failOpn"),
            "{e}"
        );
        let e = parse_mesh_config("kind: ConfigMap\ndata: {}\n").unwrap_err();
        assert!(e.contains("data.mesh"), "{e}");
        let e = parse_mesh_config("- a\n- b\n").unwrap_err();
        assert!(e.contains("mapping"), "{e}");
        let e = parse_mesh_config("extensionProviders: 3\n").unwrap_err();
        assert!(e.contains("extensionProviders"), "{e}");
        assert!(parse_mesh_config("a: [").unwrap_err().starts_with("YAML"));
    }
}
