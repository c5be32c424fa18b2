//! The watchers' WatchDeal calls as raw HTTP/2 streams (the `h2` crate): opening them on a
//! connection, and reading each one's gRPC messages and final status.

use bytes::{Buf, Bytes, BytesMut};
use h2::{
    RecvStream,
    client::{ResponseFuture, SendRequest},
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, uri::Authority};
use prost::Message;
use tokio::net::TcpStream;
use tonic::Code;

use topkart::proto::deal as dealpb;

use crate::options::{Authorization, LoadError};

/// WatchDeal's path.
const WATCH_DEAL: &str = "/topkart.deal.v1.DealService/WatchDeal";
/// The HTTP/2 receive windows of each stream and of each connection: wide enough that the server
/// never waits for this client's window updates.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The bytes before each gRPC message: a compression flag and the message's length.
const GRPC_PREFIX: usize = 5;

/// What each of a connection's streams sends.
#[derive(Clone)]
pub(super) struct WatchRequest {
    authority: Authority,
    authorization: Option<HeaderValue>,
    /// The gRPC-framed WatchDealRequest.
    body: Bytes,
}

impl WatchRequest {
    /// WatchDeal of `deal` on `url` (plain-text HTTP/2, `http://`), with `authorization` if given.
    pub(super) fn new(url: &str, deal: &str, authorization: Option<&Authorization>) -> Result<Self, LoadError> {
        let uri: http::Uri = url.parse()?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("the watchers speak plain-text HTTP/2: {url} is not http://").into());
        }
        let authorization = match authorization {
            Some(value) => Some(HeaderValue::from_str(value.to_str()?)?),
            None => None,
        };
        let message = dealpb::WatchDealRequest { name: deal.to_owned() }.encode_to_vec();
        let mut body = BytesMut::with_capacity(GRPC_PREFIX + message.len());
        body.extend_from_slice(&[0]);
        body.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        body.extend_from_slice(&message);
        Ok(Self {
            authority: uri.authority().ok_or_else(|| format!("{url} names no host"))?.clone(),
            authorization,
            body: body.freeze(),
        })
    }

    pub(super) fn authority(&self) -> &Authority {
        &self.authority
    }
}

/// A new connection, and `streams` WatchDeal calls sent on it.
pub(super) async fn open_streams(request: &WatchRequest, streams: usize) -> Result<Vec<ResponseFuture>, LoadError> {
    let authority = &request.authority;
    let tcp = TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80))).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection): (SendRequest<Bytes>, _) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(tcp)
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("watchers: a connection failed: {err}");
        }
    });
    let uri =
        http::Uri::builder().scheme("http").authority(request.authority.clone()).path_and_query(WATCH_DEAL).build()?;
    let mut responses = Vec::with_capacity(streams);
    for _ in 0..streams {
        // Streams beyond the server's limit per connection are refused (REFUSED_STREAM, which
        // `joined` reports): h2 sends them before the server's SETTINGS are read.
        sender = sender.ready().await?;
        let mut call = http::Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers");
        if let Some(authorization) = &request.authorization {
            call = call.header(http::header::AUTHORIZATION, authorization.clone());
        }
        let (response, mut body) = sender.send_request(call.body(())?, false)?;
        body.send_data(request.body.clone(), true)?;
        responses.push(response);
    }
    Ok(responses)
}

/// One stream: waiting for its response, then reading its messages.
pub(super) enum Stream {
    Opening(ResponseFuture),
    Reading { body: RecvStream, buffer: BytesMut },
}

/// The stream's next message (`None` at its end with OK), with the stream and its index; the
/// status code it ended with otherwise.
pub(super) async fn next_message(index: usize, mut stream: Stream) -> (usize, Stream, Result<Option<Bytes>, Code>) {
    let message = stream.next().await;
    (index, stream, message)
}

impl Stream {
    async fn next(&mut self) -> Result<Option<Bytes>, Code> {
        if let Self::Opening(response) = self {
            let response = response.await.map_err(|_| Code::Unavailable)?;
            if response.status() != StatusCode::OK {
                return Err(Code::Unknown);
            }
            // A call refused at once ends in its headers (gRPC's trailers-only reply).
            if let Some(code) = grpc_status(response.headers()) {
                return if code == Code::Ok { Ok(None) } else { Err(code) };
            }
            *self = Self::Reading { body: response.into_body(), buffer: BytesMut::new() };
        }
        let Self::Reading { body, buffer } = self else { unreachable!("made Reading above") };
        loop {
            if let Some(message) = take_message(buffer) {
                return Ok(Some(message));
            }
            match body.data().await {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    buffer.extend_from_slice(&data);
                }
                Some(Err(_)) => return Err(Code::Unavailable),
                None => {
                    let trailers = body.trailers().await.map_err(|_| Code::Unavailable)?;
                    return match trailers.as_ref().and_then(grpc_status) {
                        Some(Code::Ok) => Ok(None),
                        Some(code) => Err(code),
                        None => Err(Code::Unknown),
                    };
                }
            }
        }
    }
}

/// The first whole gRPC message in `buffer`, taken out of it.
fn take_message(buffer: &mut BytesMut) -> Option<Bytes> {
    let length = u32::from_be_bytes(buffer.get(1..GRPC_PREFIX)?.try_into().ok()?);
    let length = usize::try_from(length).ok()?;
    if buffer.len() < GRPC_PREFIX + length {
        return None;
    }
    buffer.advance(GRPC_PREFIX);
    Some(buffer.split_to(length).freeze())
}

/// The `grpc-status` in `headers`, if there is one.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let code: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_taken_whole_from_what_arrived() {
        let mut buffer = BytesMut::from(&[0, 0, 0, 0, 2, 7, 8, 0, 0, 0][..]);
        assert_eq!(take_message(&mut buffer), Some(Bytes::from_static(&[7, 8])));
        // The next message's prefix has not all arrived.
        assert_eq!(take_message(&mut buffer), None);
        buffer.extend_from_slice(&[0, 1, 9]);
        assert_eq!(take_message(&mut buffer), Some(Bytes::from_static(&[9])));
        assert!(buffer.is_empty());
    }
}
