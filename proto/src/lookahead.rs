//! Request bodies that say they have ended as soon as they have. hyper's
//! HTTP/2 client sets END_STREAM on a body's last DATA frame only when
//! `is_end_stream()` is already true after it, and tonic's encoder learns that
//! its one message was the last only on the next poll. So every unary or
//! server-streaming call sent its request as three writes (HEADERS, DATA, an
//! empty DATA with END_STREAM), each one a wake-up of the server on a Run's
//! path. `Lookahead` polls the body once more, without waiting, after each
//! data frame, so the last one carries the end of the stream.

use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tonic::codegen::{Service, http};

type Polled<B> = Result<Frame<<B as Body>::Data>, <B as Body>::Error>;

/// A body that reads one frame ahead of its reader when that frame is ready.
pub struct Lookahead<B: Body> {
    inner: B,
    /// The frame read ahead, handed out on the next poll.
    next: Option<Polled<B>>,
    /// The inner body has returned its end.
    ended: bool,
}

// Nothing of it is ever pinned: the frame read ahead is only moved.
impl<B: Body + Unpin> Unpin for Lookahead<B> {}

impl<B: Body + Unpin> Lookahead<B> {
    pub fn new(inner: B) -> Self {
        Lookahead {
            inner,
            next: None,
            ended: false,
        }
    }
}

impl<B: Body + Unpin> Body for Lookahead<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Polled<B>>> {
        let this = self.get_mut();
        let frame = match this.next.take() {
            Some(f) => f,
            None if this.ended => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(f) => f,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        if !this.ended {
            // Pending registers the waker, which at worst wakes the reader
            // once for nothing.
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(f)) => this.next = Some(f),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

/// A client service whose requests' bodies look ahead (see above).
#[derive(Debug, Clone)]
pub struct LookaheadRequests<S>(pub S);

impl<S> Service<http::Request<tonic::body::Body>> for LookaheadRequests<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0
            .call(req.map(|b| tonic::body::Body::new(Lookahead::new(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// Frames handed out one per poll; `None` in the script is one Pending.
    struct Scripted(VecDeque<Option<&'static str>>, bool);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.pop_front() {
                Some(Some(s)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(s))))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => {
                    self.1 = true;
                    Poll::Ready(None)
                }
            }
        }
    }

    fn poll(b: &mut Lookahead<Scripted>) -> Poll<Option<String>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(b).poll_frame(&mut cx).map(|f| {
            f.map(|f| String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
        })
    }

    #[test]
    fn the_last_ready_frame_says_the_body_has_ended() {
        let mut b = Lookahead::new(Scripted(VecDeque::from([Some("only")]), false));
        assert!(!b.is_end_stream());
        assert_eq!(poll(&mut b), Poll::Ready(Some("only".into())));
        assert!(b.is_end_stream(), "known ended right after its last frame");
        assert_eq!(poll(&mut b), Poll::Ready(None));
        assert_eq!(b.size_hint().exact(), Some(0));
    }

    #[test]
    fn frames_keep_their_order_across_pending_and_read_ahead() {
        let script = [Some("a"), Some("b"), None, Some("c"), None, None, Some("d")];
        let mut b = Lookahead::new(Scripted(VecDeque::from(script), false));
        let mut seen = Vec::new();
        let mut pendings = 0;
        loop {
            match poll(&mut b) {
                Poll::Ready(Some(s)) => {
                    seen.push(s);
                    // Only what is really ended says so.
                    assert_eq!(b.is_end_stream(), seen.len() == 4, "after {seen:?}");
                }
                Poll::Ready(None) => break,
                Poll::Pending => pendings += 1,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d"]);
        assert!(
            pendings >= 1,
            "a Pending with nothing read ahead reaches the reader"
        );
        assert!(b.inner.1);
    }
}
