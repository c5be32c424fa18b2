//! Bodies that count the gRPC messages passing through them, for `grpc_*_msg_{sent,received}_total`,
//! and end their call when its status passes (a reply's trailers) or the body ends without one.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use metrics::Counter;

/// Where a body stands in gRPC's length-prefixed framing (a flag byte, a 4-byte big-endian length,
/// the message), over data chunks cut anywhere.
#[derive(Debug, Default)]
pub struct Framing {
    prefix: [u8; 5],
    prefix_read: usize,
    message_left: u64,
}

impl Framing {
    /// Reads `data`; returns how many messages began in it.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut began = 0;
        while !data.is_empty() {
            if self.message_left > 0 {
                let skipped = self.message_left.min(data.len() as u64);
                self.message_left -= skipped;
                data = &data[skipped as usize..];
                continue;
            }
            let taken = (self.prefix.len() - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + taken].copy_from_slice(&data[..taken]);
            self.prefix_read += taken;
            data = &data[taken..];
            if self.prefix_read == self.prefix.len() {
                began += 1;
                self.message_left = u64::from((&self.prefix[1..]).get_u32());
                self.prefix_read = 0;
            }
        }
        began
    }
}

pin_project_lite::pin_project! {
    /// A request body, its messages counted as they pass; `failed` is set if it fails before its
    /// end (on a server: the caller reset the stream or closed its connection while sending it).
    pub struct Counted<B> {
        #[pin]
        body: B,
        framing: Framing,
        messages: Counter,
        failed: Option<Arc<AtomicBool>>,
    }
}

impl<B> Counted<B> {
    pub fn new(body: B, messages: Counter, failed: Option<Arc<AtomicBool>>) -> Self {
        Self { body, framing: Framing::default(), messages, failed }
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    count(this.framing, this.messages, data);
                }
            }
            Some(Err(_)) => {
                if let Some(failed) = this.failed {
                    failed.store(true, Ordering::Relaxed);
                }
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn count(framing: &mut Framing, messages: &Counter, data: &Bytes) {
    let began = framing.feed(data);
    if began > 0 {
        messages.increment(began);
    }
}

/// How a call's reply ended.
pub enum Ended<'a> {
    /// With its status: a reply's trailers, or the headers of a trailers-only reply.
    Status(&'a HeaderMap),
    /// The transport failed before the status came: the stream was reset, the connection lost.
    Failed,
    /// Dropped before its status came: whoever waited for it stopped waiting.
    Dropped,
}

/// A call that ends once.
pub trait Ending: Send + 'static {
    fn end(&mut self, how: Ended<'_>);
}

pin_project_lite::pin_project! {
    /// A reply's body: its messages counted, and its call ended when the trailers pass, or when it
    /// ends or fails without them.
    pub struct Reply<B, E> {
        #[pin]
        body: B,
        framing: Framing,
        messages: Counter,
        call: E,
    }
}

impl<B, E> Reply<B, E> {
    pub fn new(body: B, messages: Counter, call: E) -> Self {
        Self { body, framing: Framing::default(), messages, call }
    }
}

impl<B: http_body::Body<Data = Bytes>, E: Ending> http_body::Body for Reply<B, E> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    count(this.framing, this.messages, data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.call.end(Ended::Status(trailers));
                }
            }
            // tonic sends a handler's error as trailers: an error here is the transport's (the
            // stream was reset, the connection closed), as is an end before the trailers.
            Some(Err(_)) | None => this.call.end(Ended::Failed),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend(std::iter::repeat_n(7, length as usize));
        framed
    }

    #[test]
    fn messages_are_counted_however_the_chunks_cut_them() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for chunk in [1, 2, 4, 5, 6, 7, 64, stream.len()] {
            let mut framing = Framing::default();
            let began: u64 = stream.chunks(chunk).map(|piece| framing.feed(piece)).sum();
            assert_eq!(began, 4, "chunks of {chunk}");
        }
    }
}
