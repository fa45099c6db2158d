//! LLMProviders: the ones that select this gateway, one per host, and the
//! rewrite each applies per route rule (`routeSpecificConfigs` over
//! `defaultConfig`, the `Authorization` value built once and marked sensitive).

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use http::HeaderValue;

use super::{Compiler, SelectedProvider, parse_path, route::rule_name, split_host_port};
use crate::{
    config::{
        load::Document,
        provider::{LlmProviderSpec, OpenAiConfig},
        route::LlmRouteSpec,
        selector_matches,
    },
    model::route::{Provider, Upstream, provider_host_header},
};

impl Compiler<'_> {
    pub(super) fn providers<'a>(
        &mut self,
        docs: &'a [Document<LlmProviderSpec>],
        routes: &[Document<LlmRouteSpec>],
    ) -> BTreeMap<String, SelectedProvider<'a>> {
        let mut by_host: BTreeMap<String, SelectedProvider<'a>> = BTreeMap::new();
        let rule_names: HashSet<String> = routes
            .iter()
            .flat_map(|r| {
                r.spec
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| rule_name(rule, i))
            })
            .collect();
        for doc in docs {
            for key in doc.spec.configs.route_specific_configs.keys() {
                if !rule_names.contains(key) {
                    self.errors.push(doc.error(
                        format!("spec.configs.routeSpecificConfigs.{key}"),
                        format!("no LLMRoute has a rule named {key:?}; the keys are rule names"),
                    ));
                }
            }
            let selected = doc
                .spec
                .workload_selector
                .as_ref()
                .is_none_or(|s| selector_matches(&s.labels, &self.settings.workload_labels));
            if !selected {
                continue;
            }
            let host = doc.spec.host.trim().to_ascii_lowercase();
            if let Err(m) = split_host_port(&host) {
                self.errors.push(doc.error("spec.host", m));
                continue;
            }
            if let Some(path) = &doc.spec.path
                && let Err(m) = parse_path(path)
            {
                self.errors.push(doc.error("spec.path", m));
            }
            if let Some(prev) = by_host.get(&host) {
                self.errors.push(doc.error(
                    "spec.host",
                    format!(
                        "host {host} is already served by LLMProvider {} ({}); a provider host must be unique",
                        prev.doc.id, prev.doc.source
                    ),
                ));
                continue;
            }
            by_host.insert(
                host.clone(),
                SelectedProvider {
                    provider: Arc::new(Provider {
                        id: doc.id.clone(),
                        label: doc.id.to_string(),
                        host,
                    }),
                    doc,
                },
            );
        }
        by_host
    }
}

/// The rewrite for requests that rule `rule` sends to provider `p`:
/// `routeSpecificConfigs[rule]` field by field over `defaultConfig`.
pub(super) fn upstream(
    p: &SelectedProvider<'_>,
    rule: &str,
    host_rewrite: Option<&str>,
) -> Result<Upstream, (String, String)> {
    let spec = &p.doc.spec;
    let default = spec
        .configs
        .default_config
        .as_ref()
        .and_then(|c| c.openai_config.as_ref());
    let specific = spec
        .configs
        .route_specific_configs
        .get(rule)
        .and_then(|c| c.openai_config.as_ref());
    fn pick<T>(
        specific: Option<&OpenAiConfig>,
        default: Option<&OpenAiConfig>,
        f: impl Fn(&OpenAiConfig) -> Option<T>,
    ) -> Option<T> {
        specific.and_then(&f).or_else(|| default.and_then(&f))
    }
    let model = pick(specific, default, |c| c.model.clone());
    let stream = pick(specific, default, |c| c.stream);
    let api_key = pick(specific, default, |c| c.api_key.clone());
    let authorization = match api_key {
        Some(key) => {
            let field = if specific.and_then(|c| c.api_key.as_ref()).is_some() {
                format!("spec.configs.routeSpecificConfigs.{rule}.openAIConfig.apiKey")
            } else {
                "spec.configs.defaultConfig.openAIConfig.apiKey".to_string()
            };
            if key.expose().is_empty() {
                return Err((field, "is empty".into()));
            }
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    (
                        field,
                        "contains characters not allowed in a header".to_string(),
                    )
                })?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let (h, port) = split_host_port(&p.provider.host).map_err(|m| ("spec.host".to_string(), m))?;
    let port = port.unwrap_or(443);
    let host = match host_rewrite {
        Some(r) => r.trim().to_ascii_lowercase(),
        None => h.to_string(),
    };
    let path = match &spec.path {
        Some(path) => Some(parse_path(path).map_err(|m| ("spec.path".to_string(), m))?),
        None => None,
    };
    let host_header = HeaderValue::from_str(&provider_host_header(&host, port))
        .map_err(|_| ("spec.host".to_string(), "is not a header value".to_string()))?;
    Ok(Upstream {
        provider: p.doc.id.clone(),
        authority: format!("{h}:{port}"),
        host,
        port,
        host_header,
        path,
        model,
        stream,
        authorization,
    })
}
