//! The request path as named phases over one [`Ctx`]: `accept` (authority,
//! listener, client address) → `authenticate` (JWT) → `authorize` (CUSTOM,
//! DENY, ALLOW) → `route` (server, rule, or the https redirect) →
//! `select_backend` (weighted) → `prepare_body` (read, rewrite) → `send`
//! → `respond` (stream through the usage tap, reshape) → `log`. Never
//! panics on input; every failure becomes a `ProxyError` and so one response.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Response, header};
use hyper::body::Incoming;

use super::{
    ConnInfo, Worker,
    body::{ProxyBody, UpstreamBody},
    context::Ctx,
    error::ProxyError,
    outbound::{append_forwarded, provider_request},
    record::{MAX_LOGGED_MODEL, clip},
    request_body::read_body,
    request_id::X_REQUEST_ID,
    respond::{redirect, reshape, strip_hop_by_hop},
    security,
};
use crate::{
    client::UpstreamIncoming,
    http::{authority::normalize_host, forwarded, path::normalize_path},
    llm::{
        convert::Convert,
        rewrite::{self, BodyRewrite},
        usage::UsageTap,
    },
    model::{
        Protocol,
        routing::{self, NoRoute},
    },
    policy::{CheckRequest, extauthz::Attributes},
};

/// The hyper service function.
pub async fn handle(
    req: http::Request<Incoming>,
    conn: Arc<ConnInfo>,
    worker: Arc<Worker>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut ctx = Ctx::new(req, conn, worker);
    Ok(match run(&mut ctx).await {
        Ok(Reply::Upstream(resp)) => respond(ctx, resp).await,
        Ok(Reply::Local(resp)) => local(ctx, resp, None),
        Err(e) => {
            let resp = e.to_response();
            local(ctx, resp, Some(&e))
        }
    })
}

/// What the phases came to.
enum Reply {
    /// An answer the gateway gives itself (a redirect).
    Local(Response<ProxyBody>),
    /// The provider's answer, to stream back.
    Upstream(Response<UpstreamIncoming>),
}

async fn run(ctx: &mut Ctx) -> Result<Reply, ProxyError> {
    accept(ctx)?;
    authenticate(ctx).await?;
    authorize(ctx).await?;
    if let Some(local) = route(ctx)? {
        return Ok(Reply::Local(local));
    }
    let body = prepare_body(ctx).await?;
    send(ctx, body).await.map(Reply::Upstream)
}

/// The authority (one `Host` at most), the listener the connection came on,
/// and the client address (`--num-trusted-proxies`).
fn accept(ctx: &mut Ctx) -> Result<(), ProxyError> {
    let headers = &ctx.parts.headers;
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: more than one Host is a bad request (Envoy: 400).
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    ctx.authority = ctx
        .parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
        .to_string();
    ctx.rec.host = normalize_host(&ctx.authority);
    let Some(i) = ctx
        .live
        .snapshot
        .listeners
        .iter()
        .position(|l| l.local == ctx.conn.listen)
    else {
        // The listener was removed by a reload while this connection was open.
        return Err(no_route(ctx, NoRoute::Host));
    };
    ctx.listener = i;
    let trusted = ctx.worker().proxy.opts.num_trusted_proxies;
    ctx.rec.client = forwarded::remote_addr(&ctx.parts.headers, ctx.conn.peer.ip(), trusted);
    Ok(())
}

/// RequestAuthentication: verifies a token if there is one (and removes it
/// unless forwarded); the identity policies see. Then the path policies and
/// routing see (a token may have been taken from the query).
async fn authenticate(ctx: &mut Ctx) -> Result<(), ProxyError> {
    let scheme = match ctx.listener().map(|l| l.protocol) {
        Some(Protocol::Https) => "https",
        _ => "http",
    };
    ctx.identity =
        security::authenticate(&ctx.live, &mut ctx.parts, scheme, &ctx.authority).await?;
    ctx.raw_path = ctx
        .parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    ctx.path = normalize_path(&ctx.raw_path);
    Ok(())
}

/// AuthorizationPolicy in Istio's order: CUSTOM (the external authorizer,
/// which may want the body), then DENY and ALLOW.
async fn authorize(ctx: &mut Ctx) -> Result<(), ProxyError> {
    let view = ctx.policy_view(&ctx.parts.headers);
    if let Some(provider) = security::custom_provider(&ctx.live.snapshot, &view) {
        let snapshot = &ctx.live.snapshot;
        // A provider that checks bodies needs the body now; later phases reuse it.
        if snapshot.ext_authz.body_settings(&provider).is_some() {
            read_client_body(ctx).await?;
        }
        // The authorizer sees the request as Envoy's filters do, after the
        // connection manager added its headers: X-Forwarded-For with the
        // peer, X-Forwarded-Proto, X-Request-Id.
        let mut seen = ctx.parts.headers.clone();
        let trusted = ctx.worker().proxy.opts.num_trusted_proxies;
        append_forwarded(&ctx.parts.headers, &mut seen, &ctx.conn, trusted);
        seen.insert(X_REQUEST_ID, ctx.rec.request_id.clone());
        let check = CheckRequest {
            method: &ctx.parts.method,
            host: &ctx.authority,
            path_and_query: &ctx.raw_path,
            headers: &seen,
            body: ctx.body.as_ref(),
            attrs: Some(Attributes {
                source: ctx.conn.peer,
                destination: ctx.conn.local,
                scheme: ctx.scheme(),
                protocol: ctx.rec.protocol,
                request_id: ctx.rec.request_id.to_str().unwrap_or(""),
            }),
        };
        let client = &ctx.worker().client;
        let allowed = security::check_custom(&ctx.live, client, &provider, &check).await?;
        allowed.apply_to_request(&mut ctx.parts.headers);
        ctx.downstream = Some(allowed);
    }
    security::authorize(&ctx.live.snapshot, &ctx.policy_view(&ctx.parts.headers))
}

/// The server (by SNI on HTTPS, by host on HTTP) and the rule that serve
/// the request, then its backend; `Some` is a local answer (the https
/// redirect of a plain-HTTP server that asks for one).
fn route(ctx: &mut Ctx) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    if ctx.parts.method == Method::CONNECT {
        // Never forwarded: a 2xx to a CONNECT would turn the connection
        // into a tunnel to the provider.
        return Err(no_route(ctx, NoRoute::Connect));
    }
    let live = ctx.live.clone();
    let Some(listener) = live.snapshot.listeners.get(ctx.listener) else {
        return Err(no_route(ctx, NoRoute::Host));
    };
    let host = &ctx.rec.host;
    let server = if ctx.conn.tls {
        routing::server_for_sni(listener, ctx.conn.sni.as_deref())
    } else {
        routing::server_for(listener, host)
    };
    let Some(server) = server else {
        return Err(no_route(ctx, NoRoute::Host));
    };
    if server.https_redirect {
        return Ok(Some(redirect(host, &ctx.raw_path)));
    }
    let rule = match routing::route_in(listener, server, host, &ctx.parts.headers) {
        Ok(routed) => routed.rule.clone(),
        Err(why) => return Err(no_route(ctx, why)),
    };
    ctx.rec.rule = Some(rule);
    select_backend(ctx);
    Ok(None)
}

/// The backend of the rule, by weight.
fn select_backend(ctx: &mut Ctx) {
    let Some(rule) = &ctx.rec.rule else { return };
    let roll = fastrand::u64(..rule.total_weight.max(1));
    let picked = rule.pick(roll);
    ctx.rec.backend = rule
        .backends
        .iter()
        .position(|b| std::ptr::eq(b, picked))
        .unwrap_or(0);
    ctx.rec.model.clone_from(&picked.upstream.model);
    ctx.upstream = Some(picked.upstream.clone());
}

/// The body the provider gets: read (bounded), then the provider's rewrite
/// of an OpenAI JSON body (model, stream, usage); decides how the answer
/// is reshaped for the client.
async fn prepare_body(ctx: &mut Ctx) -> Result<Bytes, ProxyError> {
    read_client_body(ctx).await?;
    let body = ctx.body.clone().unwrap_or_default();
    if body.is_empty() && !matches!(ctx.parts.method, Method::POST | Method::PUT | Method::PATCH) {
        // Nothing to rewrite: GET /v1/models, DELETE, a CORS preflight.
        return Ok(body);
    }
    if let Some(enc) = ctx.parts.headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ProxyError::Encoded(
            String::from_utf8_lossy(enc.as_bytes()).into_owned(),
        ));
    }
    let Some(up) = &ctx.upstream else {
        return Ok(body);
    };
    // RFC 8259 lets a parser ignore a byte order mark.
    let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
    let rw = rewrite::rewrite(
        json,
        &BodyRewrite {
            model: up.model.as_deref(),
            stream: up.stream,
        },
    )?;
    ctx.rec.model = rw.model.map(|m| clip(m, MAX_LOGGED_MODEL));
    ctx.rec.stream = rw.stream;
    // The provider's `stream` overrode the client's: answer in the shape
    // the client asked for.
    let accept = ctx
        .parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    ctx.convert = Convert::choose(rw.client_stream, rw.stream, rw.client_usage, accept);
    Ok(Bytes::from(rw.body))
}

/// Reads the client's body once, into `ctx.body`.
async fn read_client_body(ctx: &mut Ctx) -> Result<(), ProxyError> {
    if ctx.body.is_some() {
        return Ok(());
    }
    let body = match ctx.incoming.take() {
        Some(b) => {
            let proxy = &ctx.rec.worker.proxy;
            read_body(b, &ctx.parts.headers, proxy, &mut ctx.body_hold).await?
        }
        None => Bytes::new(),
    };
    ctx.body = Some(body);
    Ok(())
}

/// The provider request, through this worker's pool.
async fn send(ctx: &mut Ctx, body: Bytes) -> Result<Response<UpstreamIncoming>, ProxyError> {
    let Some(up) = ctx.upstream.clone() else {
        return Err(no_route(ctx, NoRoute::Rule));
    };
    let req = provider_request(ctx, &up, body)?;
    let resp = ctx
        .worker()
        .client
        .send(&up.authority, up.tls_name(), req)
        .await?;
    Ok(resp)
}

/// The provider's answer to the client: hop-by-hop headers dropped, the
/// authorizer's response headers added, the body streamed through the
/// usage tap (and reshaped when the client asked for the other shape). The
/// record goes with the body and is logged when it ends.
async fn respond(mut ctx: Ctx, resp: Response<UpstreamIncoming>) -> Response<ProxyBody> {
    ctx.rec.status = resp.status().as_u16();
    ctx.rec.upstream_status = Some(ctx.rec.status);
    ctx.rec.ttfb = Some(ctx.rec.start.elapsed());
    let tap = UsageTap::for_response(resp.headers(), ctx.rec.stream);
    let (mut parts, mut body) = resp.into_parts();
    let watch = ctx
        .worker()
        .stalls
        .watch(body.canceller(), ctx.conn.state.clone());
    strip_hop_by_hop(&mut parts.headers);
    if let Some(a) = &ctx.downstream {
        a.apply_to_response(&mut parts.headers);
    }
    let idle = ctx.worker().proxy.opts.stream_idle_timeout;
    let convert = ctx.convert;
    let body = UpstreamBody::new(body, ctx.rec, tap, idle, watch);
    let body = match convert {
        Some(c) if parts.status.is_success() && c.applies_to(&parts.headers) => {
            reshape(&mut parts, body, c).await
        }
        _ => ProxyBody::Upstream(Box::new(body)),
    };
    Response::from_parts(parts, body)
}

/// An answer the gateway gives itself (an error, a redirect), logged now.
fn local(
    mut ctx: Ctx,
    mut resp: Response<ProxyBody>,
    error: Option<&ProxyError>,
) -> Response<ProxyBody> {
    ctx.rec.status = resp.status().as_u16();
    if let Some(a) = &ctx.downstream {
        a.apply_to_response(resp.headers_mut());
    }
    ctx.rec.bytes_sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
    log(&mut ctx, error);
    resp
}

/// Reports the request to metrics and the access log, with the failure it
/// ended with, if any (once; a record dropped unlogged, when the client
/// left, reports itself).
fn log(ctx: &mut Ctx, error: Option<&ProxyError>) {
    if let Some(e) = error {
        ctx.rec.fail(e);
    }
    ctx.rec.log();
}

fn no_route(ctx: &Ctx, why: NoRoute) -> ProxyError {
    ProxyError::NoRoute {
        host: ctx.rec.host.clone(),
        why,
    }
}
