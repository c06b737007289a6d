//! [`ResponseFuture`]: the future returned by [`CacheService`](super::CacheService).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::{body::CacheBody, entry::CacheStatus, service::strip_tag_headers};

type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static>>;

pin_project! {
    /// Response future of [`CacheService`](super::CacheService).
    ///
    /// A request that bypasses the cache polls the inner service's future directly; a cacheable
    /// one runs the cache lookup (and, on a miss, the origin call) in a boxed future.
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        Bypass { #[pin] future: F },
        Cached { future: BoxedResponse<B, E> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn bypass(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Bypass { future },
        }
    }

    pub(crate) fn cached(future: BoxedResponse<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Cached { future },
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Bypass { .. } => "bypass",
            Kind::Cached { .. } => "cached",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass { future } => {
                let response = ready!(future.poll(cx))?;
                let mut response = response.map(CacheBody::stream);
                strip_tag_headers(response.headers_mut());
                CacheStatus::Bypass.append_to(response.headers_mut());
                Poll::Ready(Ok(response))
            }
            KindProj::Cached { future } => future.as_mut().poll(cx),
        }
    }
}
