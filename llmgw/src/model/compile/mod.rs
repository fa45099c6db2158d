//! From raw resources to a [`Snapshot`]: one file per kind (gateways and
//! their TLS, providers, routes, policies), each adding to one [`Compiler`]
//! that collects every error with its file, document and field.

pub(crate) mod authn;
pub(crate) mod authz;
pub(crate) mod extauthz;
mod gateway;
mod policy;

pub(crate) use policy::applies;
mod provider;
mod route;
#[cfg(test)]
mod tests;
mod tls;

use std::{path::PathBuf, sync::Arc};

use http::uri::PathAndQuery;

use super::{Snapshot, route::Provider};
use crate::config::{
    ErrorList, RawConfig, Settings, gateway::GatewaySpec, load::Document,
    provider::LlmProviderSpec, selector_matches,
};

/// Compiles `raw` for the gateway described by `settings`. Collects every
/// error; a snapshot is returned only when there are none.
pub fn compile(raw: &RawConfig, settings: &Settings) -> Result<Snapshot, ErrorList> {
    let mut c = Compiler {
        settings,
        errors: ErrorList::default(),
        warnings: Vec::new(),
        watched: Vec::new(),
    };
    for (source, what) in &raw.skipped {
        c.warnings
            .push(format!("{source}: skipped {what}: not a kind llmgw serves"));
    }
    let providers = c.providers(&raw.providers, &raw.routes);
    let gateways: Vec<&Document<GatewaySpec>> = raw
        .gateways
        .iter()
        .filter(|g| selector_matches(&g.spec.selector, &settings.workload_labels))
        .collect();
    if gateways.is_empty() {
        let labels: Vec<String> = settings
            .workload_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        c.warnings.push(format!(
            "no Gateway selects this gateway's labels ({}; see --workload-labels): \
             nothing will be served",
            labels.join(",")
        ));
    }
    let mut listeners = c.listeners(&gateways);
    c.bind_routes(
        &raw.routes,
        &raw.gateways,
        &gateways,
        &providers,
        &mut listeners,
    );
    let security = c.policies(raw, &listeners);
    let Compiler {
        errors,
        warnings,
        watched,
        ..
    } = c;
    errors.into_result(Snapshot {
        listeners,
        providers: providers.into_values().map(|p| p.provider).collect(),
        policies: security.policies,
        authn: security.authn,
        ext_authz: security.ext_authz,
        warnings,
        watched,
    })
}

pub(crate) struct Compiler<'a> {
    settings: &'a Settings,
    errors: ErrorList,
    warnings: Vec<String>,
    watched: Vec<PathBuf>,
}

struct SelectedProvider<'a> {
    provider: Arc<Provider>,
    doc: &'a Document<LlmProviderSpec>,
}

fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    if s.contains('/') {
        return Err(format!("{s:?} is not a host name (no scheme, no path)"));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("{s:?}: {p:?} is not a port"))?;
            (h, Some(port))
        }
        _ => (s, None),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !valid {
        return Err(format!("{s:?} is not a host name (no scheme, no path)"));
    }
    Ok((host, port))
}

fn parse_path(p: &str) -> Result<PathAndQuery, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    p.parse::<PathAndQuery>()
        .map_err(|e| format!("{p:?} is not a valid path: {e}"))
}
