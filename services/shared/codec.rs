//! The protobuf codec of every generated server and client (build.rs names it). It encodes as
//! tonic-prost does; what it changes is a request that does not decode — invalid UTF-8 in a string,
//! a truncated or malformed body — which tonic-prost answers with INTERNAL, the code that means a bug
//! of ours. Here it is the caller's: INVALID_ARGUMENT, reason `MALFORMED_REQUEST` in the service's
//! domain, a message naming what did not decode. A reply that does not decode (on the client side)
//! stays INTERNAL: that one is a server's fault.

use std::{collections::HashMap, marker::PhantomData};

use prost::{Message, Name};
use tonic::{
    Code, Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

use super::methods;

/// The reason of a request that does not decode.
pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";

/// The buffer a call's replies are encoded into, grown when a reply needs more. tonic's default of
/// 8 KiB is held by every open stream for its whole life, and again by each chunk HTTP/2 has not
/// sent yet: a WatchDeal stream's messages are ~0.2 KiB (BENCHMARKS.md).
const ENCODE_BUFFER_BYTES: usize = 1024;
/// tonic's default: a stream's messages are handed to HTTP/2 once they reach 32 KiB together.
const ENCODE_YIELD_BYTES: usize = 32 * 1024;

/// Encodes `T` and decodes `U`: a server encodes replies and decodes requests, a client the other
/// way round.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder::default()
    }
}

/// How every reply is buffered: [`ENCODE_BUFFER_BYTES`], [`ENCODE_YIELD_BYTES`].
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(ENCODE_BUFFER_BYTES, ENCODE_YIELD_BYTES)
}

/// Decodes one `U`, saying whose fault it is when it cannot.
#[derive(Debug)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U> Default for MessageDecoder<U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<U: Message + Name + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_request(buf).map(Some)
    }
}

/// Decodes a `U` from `buf`, saying whose fault it is when it cannot, as every route does.
pub fn decode_request<U: Message + Name + Default>(buf: impl bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|err| undecodable(&U::full_name(), &err))
}

/// INVALID_ARGUMENT `MALFORMED_REQUEST` for a request of `U`'s method whose body holds no single
/// whole gRPC message: `what` says what is wrong with it.
pub fn malformed_body<U: Name>(what: &str) -> Status {
    malformed(&U::full_name(), "", what.to_owned())
}

/// The status for a `message_type` that did not decode.
fn undecodable(message_type: &str, err: &prost::DecodeError) -> Status {
    let (field, what) = describe(err);
    if methods::request_domain(message_type).is_none() {
        let field = if field.is_empty() { field } else { format!("{field}: ") };
        return Status::internal(format!("the reply is not a valid {message_type}: {field}{what}"));
    }
    malformed(message_type, &field, what)
}

/// INVALID_ARGUMENT `MALFORMED_REQUEST` in the domain of the method taking `message_type`, naming
/// `field` (when not empty) and what was wrong with it.
fn malformed(message_type: &str, field: &str, what: String) -> Status {
    let domain = methods::request_domain(message_type).unwrap_or_default();
    tracing::debug!(message_type, field, error = what, "request does not decode");
    let message = if field.is_empty() {
        format!("the request is not a valid {message_type}: {what}")
    } else {
        format!("the request is not a valid {message_type}: {field}: {what}")
    };
    let mut details = ErrorDetails::with_error_info(MALFORMED_REQUEST, domain, HashMap::new());
    if !field.is_empty() {
        details.add_bad_request_violation(field, what);
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The path of the field that did not decode (`deal.product_name`; empty when the body itself is
/// broken) and what was wrong with it.
///
/// prost's text is `failed to decode Protobuf message: Deal.product_name: CreateDealRequest.deal:
/// invalid string value: …`, innermost field first; a field is `Message.field`, which no
/// description looks like, since descriptions hold spaces.
fn describe(err: &prost::DecodeError) -> (String, String) {
    let text = err.to_string();
    let mut rest = text.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&text);
    let mut fields = Vec::new();
    while let Some((segment, after)) = rest.split_once(": ") {
        let Some((message, field)) = segment.split_once('.') else { break };
        let identifier = |word: &str| !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier(message) || !identifier(field) {
            break;
        }
        fields.push(field);
        rest = after;
    }
    fields.reverse();
    (fields.join("."), rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::deal::{CreateDealRequest, Deal};

    fn decode_error() -> prost::DecodeError {
        // Field 1 as a varint with nothing after the key.
        CreateDealRequest::decode(&[0x08][..]).unwrap_err()
    }

    #[test]
    fn a_request_that_does_not_decode_is_the_callers_fault_in_its_services_domain() {
        let status = undecodable(&CreateDealRequest::full_name(), &decode_error());
        assert_eq!(status.code(), Code::InvalidArgument);
        let info = status.get_error_details().error_info().cloned().expect("an ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), (MALFORMED_REQUEST, crate::deal::DOMAIN));
        assert!(status.message().starts_with("the request is not a valid topkart.deal.v1.CreateDealRequest: "));
        assert!(!status.message().contains("failed to decode"), "{}", status.message());
    }

    #[test]
    fn a_string_that_is_not_utf8_is_named_by_its_path_from_the_request() {
        // CreateDealRequest.deal (1) holding Deal.product_name (2) = 0xff.
        let err = CreateDealRequest::decode(&[0x0a, 0x03, 0x12, 0x01, 0xff][..]).unwrap_err();
        assert_eq!(
            describe(&err),
            ("deal.product_name".into(), "invalid string value: data is not UTF-8 encoded".into())
        );
        let status = undecodable(&CreateDealRequest::full_name(), &err);
        let violations = status.get_error_details().bad_request().cloned().expect("a BadRequest").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "deal.product_name");
        assert!(status.message().ends_with(": deal.product_name: invalid string value: data is not UTF-8 encoded"));
    }

    #[test]
    fn a_description_holding_a_colon_is_not_taken_for_a_field() {
        // Field 1 of CreateDealRequest is a message: a varint there is the wrong wire type.
        let err = CreateDealRequest::decode(&[0x08, 0x01][..]).unwrap_err();
        let (field, what) = describe(&err);
        assert_eq!(field, "deal");
        assert!(what.starts_with("invalid wire type: Varint"), "{what}");
        let status = undecodable(&CreateDealRequest::full_name(), &CreateDealRequest::decode(&[0x0f][..]).unwrap_err());
        assert!(status.get_error_details().bad_request().is_none(), "a broken body names no field");
    }

    #[test]
    fn a_reply_that_does_not_decode_is_internal() {
        let status = undecodable(&Deal::full_name(), &decode_error());
        assert_eq!(status.code(), Code::Internal);
        assert!(status.get_error_details().error_info().is_none());
    }
}
