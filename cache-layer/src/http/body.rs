//! [`CacheBody`]: the response body of [`CacheService`](super::CacheService), and buffering of
//! origin bodies up to the size limit.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response produced by [`CacheService`](super::CacheService).
    ///
    /// A response served from the cache (or just stored in it) has its whole body in memory; a
    /// response that bypassed the cache, or that was not cacheable, streams the origin's body
    /// through unchanged (including what was read ahead while deciding whether it fits the size
    /// limit).
    pub struct CacheBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Full { data: Option<Bytes> },
        Stream { #[pin] body: B },
        Replay {
            // Frames read ahead from `rest` while buffering.
            frames: VecDeque<Frame<Bytes>>,
            // An error `rest` returned while buffering; yielded after `frames`.
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> CacheBody<B> {
    /// A body made of `data` (empty when `data` is empty).
    pub(crate) fn full(data: Bytes) -> Self {
        let data = if data.is_empty() { None } else { Some(data) };
        CacheBody {
            kind: Kind::Full { data },
        }
    }

    /// An empty body (HEAD, 304).
    pub(crate) fn empty() -> Self {
        CacheBody {
            kind: Kind::Full { data: None },
        }
    }

    /// The origin's body, streamed through.
    pub(crate) fn stream(body: B) -> Self {
        CacheBody {
            kind: Kind::Stream { body },
        }
    }

    fn replay(
        frames: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        CacheBody {
            kind: Kind::Replay {
                frames,
                error,
                rest,
            },
        }
    }
}

impl<B: Body> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "full",
            Kind::Stream { .. } => "stream",
            Kind::Replay { .. } => "replay",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

impl<B: Body> Body for CacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map(to_bytes))),
            KindProj::Replay {
                frames,
                error,
                rest,
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(err) = error.take() {
                    return Poll::Ready(Some(Err(err)));
                }
                match rest.as_mut() {
                    Some(rest) => rest
                        .as_mut()
                        .poll_frame(cx)
                        .map(|frame| frame.map(|f| f.map(to_bytes))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Replay {
                frames,
                error,
                rest,
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|rest| rest.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { body } => body.size_hint(),
            Kind::Replay { frames, rest, .. } => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |rest| rest.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(buffered.saturating_add(rest.lower()));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered.saturating_add(upper));
                }
                hint
            }
        }
    }
}

/// The outcome of reading an origin body up to the size limit.
pub(crate) enum Buffered<B: Body> {
    /// The whole body, within the limit and without trailers.
    Complete(Bytes),
    /// Over the limit, with trailers, or failed midway: what was read plus the rest, to be passed
    /// through to the client unchanged.
    Passthrough(CacheBody<B>, PassReason),
}

/// Why a buffered body is passed through instead of cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassReason {
    TooLarge,
    Trailers,
    BodyError,
}

/// Reads `body` into memory as long as it stays within `limit` bytes.
pub(crate) async fn buffer<B: Body>(body: B, limit: usize) -> Buffered<B> {
    // A declared length over the limit: stream it through without reading anything.
    if body.size_hint().lower() > limit as u64 {
        return Buffered::Passthrough(CacheBody::stream(body), PassReason::TooLarge);
    }
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let frame = to_bytes(frame);
                match frame.data_ref() {
                    Some(data) => {
                        total = total.saturating_add(data.len());
                        frames.push_back(frame);
                        if total > limit {
                            let body = CacheBody::replay(frames, None, Some(body));
                            return Buffered::Passthrough(body, PassReason::TooLarge);
                        }
                    }
                    None => {
                        frames.push_back(frame);
                        let body = CacheBody::replay(frames, None, Some(body));
                        return Buffered::Passthrough(body, PassReason::Trailers);
                    }
                }
            }
            Some(Err(err)) => {
                let body = CacheBody::replay(frames, Some(err), None);
                return Buffered::Passthrough(body, PassReason::BodyError);
            }
        }
    }
    let data = match frames.len() {
        0 => Bytes::new(),
        1 => frames
            .pop_front()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(total);
            for frame in frames {
                if let Some(data) = frame.data_ref() {
                    all.extend_from_slice(data);
                }
            }
            Bytes::from(all)
        }
    };
    Buffered::Complete(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames = (0..n).map(move |i| Ok(Frame::data(Bytes::from(vec![i as u8; size]))));
        StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>()))
    }

    async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> Vec<u8>
    where
        B::Error: fmt::Debug,
    {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_whole() {
        match buffer(chunks(3, 10), 100).await {
            Buffered::Complete(data) => assert_eq!(data.len(), 30),
            Buffered::Passthrough(..) => panic!("should fit"),
        }
        match buffer(Full::new(Bytes::from_static(b"abc")), 3).await {
            Buffered::Complete(data) => assert_eq!(&data[..], b"abc"),
            Buffered::Passthrough(..) => panic!("should fit"),
        }
    }

    #[tokio::test]
    async fn large_bodies_pass_through_intact() {
        let expected = collect(chunks(10, 1000)).await;
        match buffer(chunks(10, 1000), 2500).await {
            Buffered::Passthrough(body, reason) => {
                assert_eq!(reason, PassReason::TooLarge);
                assert_eq!(collect(body).await, expected);
            }
            Buffered::Complete(_) => panic!("over the limit"),
        }
        // Declared length over the limit: nothing is read ahead.
        match buffer(Full::new(Bytes::from(vec![1u8; 50])), 10).await {
            Buffered::Passthrough(body, PassReason::TooLarge) => {
                assert_eq!(body.size_hint().exact(), Some(50));
                assert_eq!(collect(body).await, vec![1u8; 50]);
            }
            _ => panic!("over the limit"),
        }
    }

    #[tokio::test]
    async fn errors_midway_reach_the_client() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("boom")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        match buffer(body, 100).await {
            Buffered::Passthrough(mut body, PassReason::BodyError) => {
                let first = body.frame().await.unwrap().unwrap();
                assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"ab"));
                assert!(body.frame().await.unwrap().is_err());
            }
            _ => panic!("expected the error to be passed through"),
        }
    }
}
