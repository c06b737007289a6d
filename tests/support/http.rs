//! An HTTP client for the `CacheLayer` tests: one request per fresh connection, the target on the
//! wire exactly as given (paths with `..` or `%2F`, absolute-form targets), and HTTP/2 with prior
//! knowledge.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The header's value, `""` when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// A fresh hit (a stale one has a negative ttl).
    pub fn is_hit(&self) -> bool {
        self.cache_status().starts_with("cache-layer; hit; ttl=")
            && !self.cache_status().contains("ttl=-")
    }
}

async fn into_reply(response: hyper::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// HTTP/1.1 over a fresh connection; `target` goes on the wire as given (origin or absolute
/// form); `Host: shop.test` unless `headers` has one.
pub async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder().method(method).uri(target);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request = request.header("host", "shop.test");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    into_reply(response).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[]).await
}

/// An HTTP/2 GET (prior knowledge): `uri` carries `:scheme` and `:authority`; `body`, when given,
/// is sent as DATA frames without `Content-Length`.
pub async fn send_h2(
    addr: SocketAddr,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&'static str>,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method("GET")
        .uri(uri)
        .version(http::Version::HTTP_2);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = match body {
        // A streamed body has no size hint, so hyper sends no content-length.
        Some(text) => {
            let frame = hyper::body::Frame::data(Bytes::from_static(text.as_bytes()));
            let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(frame)]);
            http_body_util::StreamBody::new(frames).boxed()
        }
        None => Full::new(Bytes::new()).boxed(),
    };
    let response = sender
        .send_request(request.body(body).unwrap())
        .await
        .unwrap();
    into_reply(response).await
}
