//! MeshConfig's extension providers: every `envoyExtAuthzHttp` and
//! `envoyExtAuthzGrpc` provider validated; other kinds kept by name so a
//! CUSTOM policy naming one gets a clear error.

use crate::config::{
    ConfigError, ErrorList, Scalar,
    duration::parse_duration,
    mesh::{EnvoyExtAuthzGrpc, EnvoyExtAuthzHttp, MeshConfig, RequestBody},
};
use http::{HeaderName, HeaderValue, StatusCode, Uri, uri::PathAndQuery};
use std::sync::Arc;

use crate::model::extauthz::*;

/// Compiles MeshConfig's extension providers. Every `envoyExtAuthzHttp`
/// provider is validated; other kinds are kept by name so a CUSTOM policy
/// naming one gets a clear error.
pub(crate) fn compile(mesh: &MeshConfig, errors: &mut ErrorList) -> ExtAuthz {
    let mut out = ExtAuthz::default();
    for (i, p) in mesh.extension_providers.iter().enumerate() {
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError::Invalid {
                at: None,
                resource: Some(format!("mesh config extensionProviders[{i}] ({})", p.name)),
                field: field.to_string(),
                message,
            })
        };
        if p.name.is_empty() {
            err("name", "extension provider name must not be empty".into());
            continue;
        }
        if out.providers.contains_key(&p.name) {
            err(
                "name",
                format!(
                    "extension provider name must be unique, found duplicate: {}",
                    p.name
                ),
            );
            continue;
        }
        let kinds = usize::from(p.envoy_ext_authz_http.is_some())
            + usize::from(p.envoy_ext_authz_grpc.is_some())
            + p.other.len();
        if kinds != 1 {
            err(
                "",
                format!("exactly one provider kind must be set, found {kinds}"),
            );
            out.providers.insert(p.name.clone(), Provider::Invalid);
            continue;
        }
        let compiled = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
            (Some(h), _) => compile_http(&p.name, h).map(|c| Provider::Http(Arc::new(c))),
            (_, Some(g)) => GrpcProvider::compile(&p.name, g).map(|c| Provider::Grpc(Arc::new(c))),
            _ => Ok(Provider::Other(p.kind().unwrap_or("unknown").to_string())),
        };
        let provider = compiled.unwrap_or_else(|list| {
            for (f, m) in list {
                err(&format!("{}.{f}", p.kind().unwrap_or("")), m);
            }
            Provider::Invalid
        });
        out.providers.insert(p.name.clone(), provider);
    }
    out
}

/// The fields of [`Common`] as a provider kind's YAML gives them.
pub(super) struct CommonRaw<'a> {
    pub service: &'a str,
    pub port: Option<&'a Scalar>,
    pub timeout: Option<&'a String>,
    pub fail_open: bool,
    pub status_on_error: Option<&'a Scalar>,
    pub request_body: Option<&'a RequestBody>,
}

/// Validates `service`, `port`, `timeout`, `statusOnError` and
/// `includeRequestBodyInCheck`, reporting each problem through `e`.
pub(super) fn compile_common(
    name: &str,
    raw: CommonRaw<'_>,
    e: &mut impl FnMut(&str, String),
) -> Common {
    let CommonRaw {
        service,
        port,
        timeout,
        fail_open,
        status_on_error,
        request_body,
    } = raw;
    let host = match service.rsplit_once('/') {
        Some((_ns, host)) => host,
        None => service,
    }
    .trim()
    .to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if service.is_empty() {
        e("service", "service must not be empty".into());
    } else if !host_ok {
        e(
            "service",
            format!("{:?} is not [namespace/]hostname", service),
        );
    }
    let port = match port {
        None => {
            e("port", "port is required".into());
            0
        }
        Some(s) => match s.0.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                e(
                    "port",
                    format!("port must be in the range [1, 65535], found: {}", s.0),
                );
                0
            }
        },
    };
    let timeout = match timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                e("timeout", "must be greater than 0".into());
                DEFAULT_TIMEOUT
            }
            Err(m) => {
                e("timeout", m);
                DEFAULT_TIMEOUT
            }
        },
    };
    let status_on_error = match status_on_error {
        None => DEFAULT_STATUS_ON_ERROR,
        Some(s) if s.0.is_empty() => DEFAULT_STATUS_ON_ERROR,
        Some(s) => match s
            .0
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(c) if c.canonical_reason().is_some() && c.as_u16() >= 200 => c,
            _ => {
                e(
                    "statusOnError",
                    format!(
                        "unsupported statusOnError {:?}: not an HTTP status code",
                        s.0
                    ),
                );
                DEFAULT_STATUS_ON_ERROR
            }
        },
    };
    let body = match request_body {
        None => None,
        Some(b) if b.max_request_bytes == 0 => {
            e(
                "includeRequestBodyInCheck.maxRequestBytes",
                "must be greater than 0".into(),
            );
            None
        }
        Some(b) => Some(BodySettings {
            max_request_bytes: b.max_request_bytes as usize,
            allow_partial_message: b.allow_partial_message,
        }),
    };
    Common {
        name: name.to_string(),
        host,
        port,
        timeout,
        fail_open,
        status_on_error,
        body,
    }
}

fn compile_http(name: &str, h: &EnvoyExtAuthzHttp) -> Result<HttpProvider, Vec<(String, String)>> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let mut e = |f: &str, m: String| errs.push((f.to_string(), m));
    let common = compile_common(
        name,
        CommonRaw {
            service: &h.service,
            port: h.port.as_ref(),
            timeout: h.timeout.as_ref(),
            fail_open: h.fail_open,
            status_on_error: h.status_on_error.as_ref(),
            request_body: h.include_request_body_in_check.as_ref(),
        },
        &mut e,
    );
    let path_prefix = h.path_prefix.clone().unwrap_or_default();
    if !path_prefix.is_empty() {
        if !path_prefix.starts_with('/') {
            e(
                "pathPrefix",
                format!("pathPrefix must begin with `/`, found: {path_prefix:?}"),
            );
        } else if path_prefix.parse::<PathAndQuery>().is_err() || path_prefix.contains('?') {
            e("pathPrefix", format!("invalid pathPrefix {path_prefix:?}"));
        }
    }
    let mut patterns = |field: &str, items: &[String]| -> Vec<HeaderPattern> {
        let mut out = Vec::new();
        for (i, s) in items.iter().enumerate() {
            match HeaderPattern::parse(s) {
                Ok(p) => out.push(p),
                Err(m) => e(&format!("{field}[{i}]"), m),
            }
        }
        out
    };
    let include_request_headers = if h.include_request_headers_in_check.is_empty() {
        patterns("includeHeadersInCheck", &h.include_headers_in_check)
    } else {
        patterns(
            "includeRequestHeadersInCheck",
            &h.include_request_headers_in_check,
        )
    };
    let headers_to_upstream_on_allow =
        patterns("headersToUpstreamOnAllow", &h.headers_to_upstream_on_allow);
    let headers_to_downstream_on_deny = patterns(
        "headersToDownstreamOnDeny",
        &h.headers_to_downstream_on_deny,
    );
    let headers_to_downstream_on_allow = patterns(
        "headersToDownstreamOnAllow",
        &h.headers_to_downstream_on_allow,
    );
    let mut additional_headers = Vec::new();
    for (k, v) in &h.include_additional_headers_in_check {
        let f = format!("includeAdditionalHeadersInCheck.{k}");
        match (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => additional_headers.push((n, v)),
            (Err(_), _) => e(&f, format!("{k:?} is not a header name")),
            (_, Err(_)) => e(&f, "value has characters a header cannot carry".into()),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(HttpProvider {
        common,
        path_prefix,
        include_request_headers,
        additional_headers,
        headers_to_upstream_on_allow,
        headers_to_downstream_on_deny,
        headers_to_downstream_on_allow,
    })
}

impl GrpcProvider {
    pub(crate) fn compile(
        name: &str,
        g: &EnvoyExtAuthzGrpc,
    ) -> Result<GrpcProvider, Vec<(String, String)>> {
        let mut errs: Vec<(String, String)> = Vec::new();
        let mut e = |f: &str, m: String| errs.push((f.to_string(), m));
        let common = compile_common(
            name,
            CommonRaw {
                service: &g.service,
                port: g.port.as_ref(),
                timeout: g.timeout.as_ref(),
                fail_open: g.fail_open,
                status_on_error: g.status_on_error.as_ref(),
                request_body: g.include_request_body_in_check.as_ref(),
            },
            &mut e,
        );
        // Both always form for a validated host, port and timeout.
        let uri = Uri::builder()
            .scheme("http")
            .authority(format!("{}:{}", common.host, common.port).as_str())
            .path_and_query(CHECK_PATH)
            .build();
        let ms = common.timeout.as_millis().max(1);
        let grpc_timeout = http::HeaderValue::from_str(&format!("{ms}m"));
        let built = match (uri, grpc_timeout) {
            (Ok(u), Ok(t)) => Some((u, t)),
            (Err(err), _) => {
                e(
                    "service",
                    format!("{:?} does not form a URI: {err}", g.service),
                );
                None
            }
            (_, Err(_)) => {
                e("timeout", "not a gRPC timeout".into());
                None
            }
        };
        match built {
            Some((uri, grpc_timeout)) if errs.is_empty() => Ok(GrpcProvider {
                common,
                uri,
                grpc_timeout,
                pack_as_bytes: g
                    .include_request_body_in_check
                    .as_ref()
                    .is_some_and(|b| b.pack_as_bytes),
            }),
            _ => Err(errs),
        }
    }
}
