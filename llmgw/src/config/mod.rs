//! Configuration: the Kubernetes resources llmgw accepts, as written by users.
//! One file per kind holds its serde types (they mirror the YAML and reject
//! unknown fields as the CRD would); `load` reads files into them. The
//! compiler (`crate::model`) validates them into the form the data path reads.

pub mod authn;
pub mod authz;
pub mod duration;
pub mod env;
pub mod error;
pub mod gateway;
pub mod load;
pub mod mesh;
pub mod provider;
pub mod route;
pub mod settings;

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use error::{ConfigError, ErrorList};
pub use load::{Document, RawConfig, load_paths};
pub use settings::Settings;

/// Namespace a resource without `metadata.namespace` lives in (as `kubectl apply`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata` of a resource. Only the fields llmgw reads; the rest of a
/// Kubernetes object's metadata (uid, managedFields, ...) is accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `namespace/name` of a resource, the way Istio names them in logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceId {
    pub namespace: String,
    pub name: String,
}

impl ResourceId {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            name: meta.name.clone(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex`; empty
/// means "present" when used on a header.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Istio's `WorkloadSelector` (`labels`) and AuthorizationPolicy's
/// `selector` (`matchLabels`): all listed labels must be on the gateway.
pub type Labels = BTreeMap<String, String>;

/// True when every label of `selector` is present with the same value in `labels`.
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A scalar that Istio types as a string but users often write as a number
/// (`ports: [8080]`); YAML gives us either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            U(u64),
            B(bool),
        }
        Ok(Scalar(
            match Any::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected a string or a number"))?
            {
                Any::S(s) => s,
                Any::I(i) => i.to_string(),
                Any::U(u) => u.to_string(),
                Any::B(b) => b.to_string(),
            },
        ))
    }
}

/// Where a resource came from: file and document index (1-based) and the
/// line its document starts on, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file.display(),
            self.line,
            self.document
        )
    }
}

/// A value that must never be printed: API keys. `Debug`, `Display` and
/// `Serialize` all print `<redacted>`; only [`Secret::expose`] gives the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}
