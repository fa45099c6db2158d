//! `LLMProvider` (`istio.alibabacloud.com/v1beta1`): an external LLM service,
//! its host and API path, and the model, stream flag and API key the gateway
//! writes into every request it sends there (per route rule if configured).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Labels, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LlmProviderSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// The provider's host name, e.g. `dashscope.aliyuncs.com` (optionally `:port`).
    pub host: String,
    /// The API path requests are rewritten to, e.g. `/compatible-mode/v1/chat/completions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub configs: ProviderConfigs,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderConfigs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProviderConfig>,
    /// Keyed by the `name` of an LLMRoute rule: overrides for requests that
    /// rule sends to this provider.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_specific_configs: BTreeMap<String, ProviderConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderConfig {
    #[serde(
        default,
        rename = "openAIConfig",
        skip_serializing_if = "Option::is_none"
    )]
    pub openai_config: Option<OpenAiConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenAiConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
}
