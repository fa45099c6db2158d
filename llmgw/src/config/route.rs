//! `LLMRoute` (`istio.alibabacloud.com/v1beta1`): which requests arriving at
//! which gateways go to which LLM providers, rule by rule, first match wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Labels, StringMatch};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LlmRouteSpec {
    /// Host the route serves: a name, `*.suffix`, or `*`.
    pub host: String,
    /// Gateways the route binds to, `namespace/name` or `name` (same namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub rules: Vec<LlmRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LlmRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any match selects the rule; no matches makes the rule a default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<LlmRequestMatch>,
    #[serde(default)]
    pub backend_refs: Vec<LlmBackendRef>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LlmRequestMatch {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Labels of the workload the request leaves from; for a gateway, its own labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LlmBackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Host (and SNI) sent upstream instead of the provider's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// In-cluster InferencePool backends (not served by llmgw; rejected with a reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<BackendObjectReference>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendObjectReference {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}
