//! The HTTP side of a route whose replies are [`Reply`]s: it decodes the request as every route
//! does (`shared::codec`) and hands each reply's frame to HTTP/2 as it is, then the trailers tonic
//! would send. tonic's `Grpc` would copy every reply into an encode buffer of its own and frame it
//! there: for WatchDeal, whose every message goes to thousands of streams, that buffer's work was
//! an eighth of deal-service's CPU per message (BENCHMARKS.md).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use http_body::Frame;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use prost::{Message, Name};
use tonic::{
    Code, Status,
    body::Body,
    codegen::tokio_stream::{self, Stream},
    metadata::MetadataValue,
};

use super::{PREFIX_BYTES, Reply};
use crate::shared::{codec, server::MAX_REQUEST_BYTES};

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

/// The one request message of a unary or server-streaming call, with the call's metadata and
/// extensions, as tonic's routes give it to a handler. A body that is not one whole, uncompressed
/// message of at most [`MAX_REQUEST_BYTES`] is refused with a status, as on every route.
pub async fn request<U, B>(request: http::Request<B>) -> Result<tonic::Request<U>, Status>
where
    U: Message + Name + Default,
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(encoding) = request.headers().get("grpc-encoding").filter(|encoding| *encoding != "identity") {
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            encoding.to_str().unwrap_or("?")
        ));
        status.metadata_mut().insert("grpc-accept-encoding", MetadataValue::from_static("identity"));
        return Err(status);
    }
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, PREFIX_BYTES + MAX_REQUEST_BYTES).collect().await.map_err(|err| {
        if err.downcast_ref::<LengthLimitError>().is_some() {
            too_large(&format!("more than {MAX_REQUEST_BYTES}"))
        } else {
            Status::from_error(err)
        }
    })?;
    let message = one_message::<U>(body.to_bytes())?;
    Ok(tonic::Request::from_http(http::Request::from_parts(parts, message)))
}

/// The message of `body`, which must hold exactly one gRPC message.
fn one_message<U: Message + Name + Default>(mut body: Bytes) -> Result<U, Status> {
    if body.len() < PREFIX_BYTES {
        return Err(codec::malformed_body::<U>("the body holds no whole gRPC message"));
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        return Err(codec::malformed_body::<U>("the message is flagged compressed without a grpc-encoding"));
    }
    if length > MAX_REQUEST_BYTES {
        return Err(too_large(&length.to_string()));
    }
    if body.len() != length {
        return Err(codec::malformed_body::<U>("the body is not one whole gRPC message"));
    }
    codec::decode_request(body)
}

/// OUT_OF_RANGE for a request message of `found` bytes, as tonic's routes answer one over the limit.
fn too_large(found: &str) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {found} bytes, the limit is: {MAX_REQUEST_BYTES} bytes"
    ))
}

/// A unary call's HTTP response: its reply's frame and the OK trailers, or its error.
pub fn unary<T: Message + Send + 'static>(reply: Result<tonic::Response<Reply<T>>, Status>) -> http::Response<Body> {
    server_streaming(reply.map(|reply| reply.map(|message| tokio_stream::once(Ok(message)))))
}

/// A server-streaming call's HTTP response: each reply's frame as it comes, then the trailers of
/// the stream's end (OK) or of its first error; or the error that refused the call.
pub fn server_streaming<T, S>(replies: Result<tonic::Response<S>, Status>) -> http::Response<Body>
where
    T: Message + Send + 'static,
    S: Stream<Item = Result<Reply<T>, Status>> + Send + 'static,
{
    let response = match replies {
        Ok(response) => response,
        Err(status) => return status.into_http(),
    };
    let (metadata, replies, extensions) = response.into_parts();
    let mut http = http::Response::new(Body::new(ReplyBody { replies, ended: false }));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(CONTENT_TYPE, GRPC_CONTENT_TYPE);
    *http.extensions_mut() = extensions;
    http
}

pin_project! {
    /// A response body of replies' frames, ended by the trailers of the call's status.
    struct ReplyBody<S> {
        #[pin]
        replies: S,
        ended: bool,
    }
}

impl<T, S> http_body::Body for ReplyBody<S>
where
    T: Message,
    S: Stream<Item = Result<Reply<T>, Status>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let frame = match ready!(this.replies.poll_next(cx)) {
            Some(Ok(reply)) => Frame::data(reply.into_framed().into_bytes()),
            Some(Err(status)) => {
                *this.ended = true;
                Frame::trailers(trailers(&status))
            }
            None => {
                *this.ended = true;
                Frame::trailers(trailers(&Status::new(Code::Ok, "")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// The trailers of a call ending with `status`. A status that cannot be written as headers (tonic
/// percent-encodes messages and base64-encodes details, so none here) ends the call INTERNAL.
fn trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.clear();
        let _ = Status::internal("internal error").add_header(&mut trailers);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tonic_types::StatusExt;

    use super::*;
    use crate::{
        proto::deal::{Deal, WatchDealRequest},
        shared::{codec::MALFORMED_REQUEST, encoded::Framed},
    };

    fn framed(flag: u8, length: usize, message: &[u8]) -> Bytes {
        let mut body = Vec::new();
        body.put_u8(flag);
        body.put_u32(length as u32);
        body.extend_from_slice(message);
        Bytes::from(body)
    }

    fn assert_malformed(result: Result<WatchDealRequest, Status>) {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let info = status.get_error_details().error_info().cloned().expect("an ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), (MALFORMED_REQUEST, crate::deal::DOMAIN));
    }

    #[test]
    fn a_body_of_one_whole_message_is_that_message() {
        let request = WatchDealRequest { name: "deals/x".into() };
        let message = request.encode_to_vec();
        assert_eq!(one_message::<WatchDealRequest>(framed(0, message.len(), &message)).unwrap(), request);
        assert_eq!(one_message::<WatchDealRequest>(framed(0, 0, &[])).unwrap(), WatchDealRequest::default());
    }

    #[test]
    fn a_body_that_is_not_one_whole_uncompressed_message_is_malformed() {
        let message = WatchDealRequest { name: "deals/x".into() }.encode_to_vec();
        assert_malformed(one_message(Bytes::new()));
        assert_malformed(one_message(Bytes::from_static(&[0, 0, 0])));
        assert_malformed(one_message(framed(1, message.len(), &message)));
        assert_malformed(one_message(framed(0, message.len() + 1, &message)));
        let mut two = framed(0, message.len(), &message).to_vec();
        two.extend_from_slice(&framed(0, message.len(), &message));
        assert_malformed(one_message(Bytes::from(two)));
        // Invalid UTF-8 in the name: the field is named, as on every route.
        assert_malformed(one_message(framed(0, 3, &[0x0a, 0x01, 0xff])));
    }

    #[test]
    fn a_message_over_the_limit_is_out_of_range() {
        let status = one_message::<WatchDealRequest>(framed(0, MAX_REQUEST_BYTES + 1, &[])).unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange);
    }

    async fn frames_of(response: http::Response<Body>) -> Vec<Frame<Bytes>> {
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.expect("no transport error"));
        }
        frames
    }

    fn grpc_status(frame: &Frame<Bytes>) -> &str {
        frame.trailers_ref().expect("trailers")["grpc-status"].to_str().unwrap()
    }

    #[tokio::test]
    async fn replies_go_as_their_frames_then_the_trailers_of_the_end() {
        let deal = Deal { name: "deals/a".into(), available_units: 3, ..Deal::default() };
        let replies = vec![Ok(Reply::Framed(Framed::of(&deal))), Ok(Reply::Message(deal.clone()))];
        let response = server_streaming(Ok(tonic::Response::new(tokio_stream::iter(replies))));
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        let frames = frames_of(response).await;
        assert_eq!(frames.len(), 3);
        for frame in &frames[..2] {
            assert_eq!(frame.data_ref().unwrap(), &Framed::of(&deal).into_bytes());
        }
        assert_eq!(grpc_status(&frames[2]), "0");
    }

    #[tokio::test]
    async fn an_error_in_the_stream_ends_it_with_its_status_and_a_refusal_is_trailers_only() {
        let replies: Vec<Result<Reply<Deal>, Status>> = vec![
            Ok(Reply::Message(Deal::default())),
            Err(Status::unavailable("going")),
            Ok(Reply::Message(Deal::default())),
        ];
        let frames = frames_of(server_streaming(Ok(tonic::Response::new(tokio_stream::iter(replies))))).await;
        assert_eq!(frames.len(), 2, "nothing after the error");
        assert_eq!(grpc_status(&frames[1]), "14");
        assert_eq!(frames[1].trailers_ref().unwrap()["grpc-message"], "going");

        let refused = unary::<Deal>(Err(Status::not_found("no such deal")));
        assert_eq!(refused.headers()["grpc-status"], "5");
        assert!(frames_of(refused).await.is_empty());
    }
}
