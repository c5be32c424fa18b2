//! Replies encoded once and sent as bytes. A message that many calls send unchanged — a watched
//! deal's latest version, the first page of live deals — is encoded by the first call that needs it,
//! and every call after copies its bytes instead of building and encoding the message again.
//!
//! tonic's generated routes encode every reply they send, so a method served this way has a route
//! of its own (`deal::routes`) whose codec, [`ReplyCodec`], takes a [`Reply`]: a message, encoded
//! as usual, or the bytes of one.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use prost::{Message, Name};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
};

use super::codec::{self, MessageDecoder};

/// A reply of type `T`: the message itself, or its encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    Message(T),
    /// `T`'s protobuf encoding, as [`encode`] makes it.
    Encoded(Bytes),
}

impl<T: Message + Default> Reply<T> {
    /// The message, decoded if it was sent as bytes (for a caller that needs the message itself).
    pub fn into_message(self) -> Result<T, Status> {
        match self {
            Self::Message(message) => Ok(message),
            Self::Encoded(bytes) => T::decode(bytes).map_err(|err| {
                tracing::error!(error = %err, "a reply we encoded does not decode");
                Status::internal("internal error")
            }),
        }
    }
}

/// `message`'s protobuf encoding, to be sent as a [`Reply::Encoded`]. Encodings concatenate:
/// the bytes of two messages of one type decode as their merge, their repeated fields appended.
pub fn encode(message: &impl Message) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// The codec of a route that replies with [`Reply<T>`] and takes `U`: requests decode as with
/// every other route ([`codec::Codec`]).
#[derive(Debug, Clone)]
pub struct ReplyCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ReplyCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ReplyCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = Reply<T>;
    type Decode = U;
    type Encoder = ReplyEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReplyEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder::default()
    }
}

/// Encodes a message, or copies the bytes of one.
#[derive(Debug)]
pub struct ReplyEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReplyEncoder<T> {
    type Item = Reply<T>;
    type Error = Status;

    fn encode(&mut self, item: Reply<T>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        write(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        codec::buffer_settings()
    }
}

/// Writes `reply`'s encoding to `buf`.
fn write<T: Message>(reply: Reply<T>, buf: &mut impl BufMut) -> Result<(), Status> {
    match reply {
        // tonic's buffer grows as needed, so this cannot run out of room.
        Reply::Message(message) => message.encode(buf).map_err(|err| Status::internal(err.to_string())),
        Reply::Encoded(bytes) => {
            buf.put_slice(&bytes);
            Ok(())
        }
    }
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
        assert_eq!(Bytes::from(parts.concat()), encode(&page));
        assert_eq!(Reply::<ListDealsResponse>::Encoded(Bytes::from(parts.concat())).into_message().unwrap(), page);
    }

    #[test]
    fn a_reply_sent_as_bytes_is_the_bytes_of_the_message() {
        let message = deal("deals/a", 7);
        let mut sent = Vec::new();
        for reply in [Reply::Message(message.clone()), Reply::Encoded(encode(&message))] {
            let mut buf = bytes::BytesMut::new();
            write(reply, &mut buf).unwrap();
            sent.push(buf.freeze());
        }
        assert_eq!(sent[0], sent[1]);
        assert_eq!(Deal::decode(sent[0].clone()).unwrap(), message);
    }
}
