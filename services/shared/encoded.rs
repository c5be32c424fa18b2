//! Replies encoded once and sent as bytes. A message that many calls send unchanged — a watched
//! deal's latest version, the first page of live deals — is encoded and framed by the first call
//! that needs it, and every call after sends the same bytes instead of building, encoding and
//! framing the message again.
//!
//! tonic's generated routes encode every reply they send, into a buffer of their own, so a method
//! served this way has a route of its own (`deal::routes`) built from [`route`]: requests decode as
//! on every other route, and each reply — a [`Reply`], a message or its [`Framed`] bytes — goes to
//! HTTP/2 as it is.

pub mod route;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::Status;

/// The length of a gRPC message's prefix: the compressed flag and the message's length.
const PREFIX_BYTES: usize = 5;

/// A reply of type `T`: the message itself, or its frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    Message(T),
    Framed(Framed),
}

impl<T: Message + Default> Reply<T> {
    /// The message, decoded if it was sent as bytes (for a caller that needs the message itself).
    pub fn into_message(self) -> Result<T, Status> {
        match self {
            Self::Message(message) => Ok(message),
            Self::Framed(framed) => T::decode(framed.message()).map_err(|err| {
                tracing::error!(error = %err, "a reply we encoded does not decode");
                Status::internal("internal error")
            }),
        }
    }
}

impl<T: Message> Reply<T> {
    /// The reply's frame, made now if it is a message.
    pub fn into_framed(self) -> Framed {
        match self {
            Self::Message(message) => Framed::of(&message),
            Self::Framed(framed) => framed,
        }
    }
}

/// `message`'s protobuf encoding, to be framed by [`Framed::concat`]. Encodings concatenate: the
/// bytes of two messages of one type decode as their merge, their repeated fields appended.
pub fn encode(message: &impl Message) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// A reply's gRPC message as it goes on the wire: not compressed, its length, its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed(Bytes);

impl Framed {
    /// The frame of `message`.
    pub fn of(message: &impl Message) -> Self {
        let length = message.encoded_len();
        let mut frame = prefixed(length);
        message.encode_raw(&mut frame);
        Self(frame.freeze())
    }

    /// The frame of the message whose encoding is `parts`, concatenated (see [`encode`]).
    pub fn concat(parts: &[&[u8]]) -> Self {
        let mut frame = prefixed(parts.iter().map(|part| part.len()).sum());
        for part in parts {
            frame.extend_from_slice(part);
        }
        Self(frame.freeze())
    }

    /// The message's encoding, without its prefix.
    pub fn message(&self) -> Bytes {
        self.0.slice(PREFIX_BYTES..)
    }

    /// The frame's bytes, prefix and message.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// A buffer holding the prefix of a message of `length` bytes, with room for the message. Replies
/// here are at most a page of deals, far below the 4 GiB a prefix can say.
fn prefixed(length: usize) -> BytesMut {
    let mut frame = BytesMut::with_capacity(PREFIX_BYTES + length);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(length).expect("a reply under 4 GiB"));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::deal::{Deal, ListDealsResponse};

    fn deal(name: &str, units: i32) -> Deal {
        Deal { name: name.into(), product_name: "Kettle".into(), available_units: units, ..Deal::default() }
    }

    #[test]
    fn encoded_pages_concatenate_into_the_page_a_message_would_encode() {
        let page =
            ListDealsResponse { deals: vec![deal("deals/a", 3), deal("deals/b", 0)], next_page_token: "t".into() };
        let parts = [
            encode(&ListDealsResponse { deals: vec![page.deals[0].clone()], ..Default::default() }),
            encode(&ListDealsResponse { deals: vec![page.deals[1].clone()], ..Default::default() }),
            encode(&ListDealsResponse { next_page_token: "t".into(), ..Default::default() }),
        ];
        let framed = Framed::concat(&parts.iter().map(|part| &part[..]).collect::<Vec<_>>());
        assert_eq!(framed, Framed::of(&page));
        assert_eq!(Reply::<ListDealsResponse>::Framed(framed).into_message().unwrap(), page);
    }

    #[test]
    fn a_frame_is_the_uncompressed_flag_the_length_and_the_message() {
        let message = deal("deals/a", 7);
        let frame = Reply::Message(message.clone()).into_framed().into_bytes();
        let encoded = message.encode_to_vec();
        assert_eq!(frame[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, encoded.len());
        assert_eq!(frame[5..], encoded[..]);
        assert_eq!(Framed::of(&message).message(), Bytes::from(encoded));
    }
}
