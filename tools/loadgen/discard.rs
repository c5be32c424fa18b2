//! A gRPC codec that encodes requests with prost and skips over replies without decoding them, as
//! h2load does: so that comparing two methods' rates (`list-deals` against `health-check`) measures
//! the servers, not the load generator decoding replies on the same cores.

use std::marker::PhantomData;

use prost::bytes::Buf;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Sends `M`, receives the reply's length in bytes.
pub struct DiscardReplies<M>(PhantomData<M>);

impl<M> Default for DiscardReplies<M> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<M: prost::Message + Send + 'static> Codec for DiscardReplies<M> {
    type Encode = M;
    type Decode = usize;
    type Encoder = RequestEncoder<M>;
    type Decoder = ReplySkipper;

    fn encoder(&mut self) -> Self::Encoder {
        RequestEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ReplySkipper
    }
}

pub struct RequestEncoder<M>(PhantomData<M>);

impl<M: prost::Message> Encoder for RequestEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|err| Status::internal(err.to_string()))
    }
}

pub struct ReplySkipper;

impl Decoder for ReplySkipper {
    type Item = usize;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        let length = src.remaining();
        src.advance(length);
        Ok(Some(length))
    }
}
