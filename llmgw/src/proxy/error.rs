//! Every way a request can fail in the proxy, and the one place that turns
//! a failure into a status and a body: the OpenAI error JSON shape, except
//! where Istio's exact text is the contract (`RBAC: access denied`).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;
use thiserror::Error;

use super::body::ProxyBody;
use crate::client::UpstreamError;
use crate::llm::rewrite::JsonError;
use crate::{config::ResourceId, model::routing::NoRoute, policy::LocalReply};

#[derive(Debug, Error)]
pub enum ProxyError {
    /// An AuthorizationPolicy denied the request.
    #[error("RBAC: access denied")]
    Denied { policy: Option<ResourceId> },
    /// Refused with an answer given elsewhere: a JWT rejection (Envoy's
    /// texts, 401/403) or an external authorizer's denial.
    #[error("{reason}")]
    Refused {
        reply: Box<LocalReply>,
        reason: String,
    },
    #[error(
        "no route for {}host {host:?}",
        if matches!(why, NoRoute::Connect) { "CONNECT to " } else { "" }
    )]
    NoRoute { host: String, why: NoRoute },
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    BadJson(#[from] JsonError),
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("the request body arrives slower than {min_rate} bytes a second ({got} bytes so far)")]
    BodyTooSlow { min_rate: u64, got: u64 },
    /// Request bodies held by requests in flight reached `--max-buffered-bodies`.
    #[error("the gateway holds {limit} bytes of request bodies already; retry shortly")]
    BodiesFull { limit: u64 },
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("the request body is encoded ({0}); send it uncompressed, the gateway rewrites it")]
    Encoded(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Denied { .. } => StatusCode::FORBIDDEN,
            ProxyError::Refused { reply, .. } => reply.status,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadJson(_) | ProxyError::ClientBody(_) | ProxyError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::BodyTimeout(_) | ProxyError::BodyTooSlow { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::BodiesFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Encoded(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// OpenAI's `error.type` and `error.code` for this failure.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ProxyError::Denied { .. } | ProxyError::Refused { .. } => {
                ("permission_error", "access_denied")
            }
            ProxyError::NoRoute { .. } => ("invalid_request_error", "route_not_found"),
            ProxyError::TooLarge { .. } => ("invalid_request_error", "request_too_large"),
            ProxyError::BadJson(_) => ("invalid_request_error", "invalid_json"),
            ProxyError::ClientBody(_) | ProxyError::BadRequest(_) => {
                ("invalid_request_error", "invalid_request")
            }
            ProxyError::BodyTimeout(_) | ProxyError::BodyTooSlow { .. } => {
                ("invalid_request_error", "request_timeout")
            }
            ProxyError::BodiesFull { .. } => ("server_error", "overloaded"),
            ProxyError::Encoded(_) => ("invalid_request_error", "unsupported_content_encoding"),
            ProxyError::Upstream(e) if e.is_timeout() => ("server_error", "upstream_timeout"),
            ProxyError::Upstream(UpstreamError::Tls { .. }) => {
                ("server_error", "upstream_tls_error")
            }
            ProxyError::Upstream(_) => ("server_error", "upstream_unavailable"),
        }
    }

    /// The response the client gets.
    pub fn to_response(&self) -> Response<ProxyBody> {
        if let ProxyError::Refused { reply, .. } = self {
            let mut resp = Response::new(ProxyBody::full(reply.body.clone()));
            *resp.status_mut() = reply.status;
            *resp.headers_mut() = reply.headers.clone();
            return resp;
        }
        let status = self.status();
        let (content_type, body) = match self {
            // Istio's exact answer.
            ProxyError::Denied { .. } => ("text/plain", Bytes::from_static(b"RBAC: access denied")),
            _ => {
                let (ty, code) = self.kind();
                let v = json!({"error": {
                    "message": self.to_string(),
                    "type": ty,
                    "param": null,
                    "code": code,
                }});
                ("application/json", Bytes::from(v.to_string()))
            }
        };
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let ProxyError::BodiesFull { .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(r: Response<ProxyBody>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn denied_is_istios_text() {
        let r = ProxyError::Denied { policy: None }.to_response();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(body(r).await, "RBAC: access denied");
    }

    #[tokio::test]
    async fn others_are_openai_errors() {
        let cases = [
            (ProxyError::TooLarge { limit: 10 }, 413, "request_too_large"),
            (
                ProxyError::BadJson(JsonError::NotObject),
                400,
                "invalid_json",
            ),
            (
                ProxyError::Upstream(UpstreamError::ResponseTimeout {
                    authority: "a:443".into(),
                    after: Duration::from_secs(1),
                }),
                504,
                "upstream_timeout",
            ),
            (
                ProxyError::Upstream(UpstreamError::Connect {
                    authority: "a:443".into(),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                }),
                502,
                "upstream_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let r = e.to_response();
            assert_eq!(r.status(), status);
            let v: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert!(v["error"]["type"].is_string());
            assert!(v["error"].as_object().unwrap().contains_key("param"));
        }
    }
}
