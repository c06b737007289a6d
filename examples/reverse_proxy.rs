//! A caching reverse proxy in front of any HTTP origin: `CacheLayer` over a hyper client.
//!
//! ```text
//! cargo run --release --example reverse_proxy -- --origin http://127.0.0.1:8000 --listen 127.0.0.1:8080
//! cargo run --release --example reverse_proxy -- --origin http://app:3000 --redis redis://127.0.0.1:6379
//! curl -i localhost:8080/some/page          # Cache-Status: cache-layer; fwd=miss; stored
//! ```
//!
//! Every request is forwarded to `--origin` (hop-by-hop headers removed, `X-Forwarded-For`,
//! `X-Forwarded-Host` and `X-Forwarded-Proto` added). Responses are cached as a shared HTTP cache
//! would per RFC 9111 ([`CacheLayer::shared`]): only the origin's freshness counts (explicit,
//! or heuristic from `Last-Modified`), stale entries are revalidated with conditional requests,
//! `Vary` is matched, unsafe methods invalidate, and requests' `Cache-Control` is honoured.
//! Without `--redis` the entries live in the embedded in-memory store.
//!
//! Options: `--origin URL` (required), `--listen ADDR` (default `127.0.0.1:8080`),
//! `--redis URL`, `--namespace NAME` (default `proxy`), `--max-body-bytes N` (default 1 MiB).

use std::{net::SocketAddr, process::ExitCode, str::FromStr, time::Duration};

use axum::{
    body::Body,
    extract::{ConnectInfo, State},
    http::{
        header, uri::Authority, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode,
        Uri,
    },
    Router,
};
use cache_layer::{Cache, CacheLayer};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// What the proxy was asked to do.
#[derive(Debug)]
struct Args {
    origin: Uri,
    listen: SocketAddr,
    redis: Option<String>,
    namespace: String,
    max_body_bytes: usize,
}

const USAGE: &str = "usage: reverse_proxy --origin http://host:port [--listen 127.0.0.1:8080] \
                     [--redis redis://...] [--namespace proxy] [--max-body-bytes N]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut origin = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let mut redis = None;
    let mut namespace = "proxy".to_owned();
    let mut max_body_bytes = cache_layer::http::DEFAULT_MAX_BODY_BYTES;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--origin" => {
                let uri = Uri::from_str(&value()?).map_err(|e| format!("--origin: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err("--origin must be an http:// URL with a host".into());
                }
                origin = Some(uri);
            }
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--redis" => redis = Some(value()?),
            "--namespace" => namespace = value()?,
            "--max-body-bytes" => {
                max_body_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--max-body-bytes: {e}"))?
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let origin = origin.ok_or_else(|| format!("--origin is required\n{USAGE}"))?;
    Ok(Args {
        origin,
        listen,
        redis,
        namespace,
        max_body_bytes,
    })
}

/// The origin and the pooled client that talks to it.
#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: Authority,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forwards one request to the origin and returns its response (502 when it cannot be reached).
async fn forward(
    State(upstream): State<Upstream>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    if let Some(host) = client_host {
        parts.headers.insert("x-forwarded-host", host);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    parts.version = http::Version::HTTP_11;
    match upstream
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(err) => {
            eprintln!("origin request failed: {err}");
            status(StatusCode::BAD_GATEWAY)
        }
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Cache::builder().namespace(&args.namespace).name("proxy");
    if let Some(url) = &args.redis {
        builder = builder.redis(url.clone());
    }
    let cache = match builder.build() {
        Ok(cache) => cache,
        Err(err) => {
            eprintln!("cache: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Some(authority) = args.origin.authority().cloned() else {
        eprintln!("--origin has no host");
        return ExitCode::from(2);
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let upstream = Upstream {
        client: Client::builder(TokioExecutor::new()).build(connector),
        authority,
    };
    let layer = CacheLayer::shared(cache).max_body_bytes(args.max_body_bytes);
    let app = Router::new()
        .fallback(forward)
        .with_state(upstream)
        .layer(layer);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map_or(args.listen, |a| a);
    println!(
        "reverse_proxy listening on http://{local}/ -> {}",
        args.origin
    );
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(err) = axum::serve(listener, app).await {
        eprintln!("server error: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
