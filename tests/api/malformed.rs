//! Requests that do not decode, sent as raw bytes to every RPC of both APIs (the methods are read
//! from the descriptor set, so a new RPC is covered without touching this file): invalid UTF-8 in a
//! string field, a truncated body, a bad wire type, a length that runs past the end. Each must get
//! INVALID_ARGUMENT with reason `MALFORMED_REQUEST` in its service's domain, and nothing is written.

use bytes::{Buf, BufMut};
use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Type};
use sqlx::PgPool;
use tonic::{
    Code, Request, Status,
    codec::{DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_types::StatusExt;
use topkart::{proto::FILE_DESCRIPTOR_SET, shared::auth::Role};

use crate::helpers::*;

/// Sends bytes as they are and ignores whatever a reply holds.
#[derive(Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// One of our RPCs: its HTTP/2 path and the fully qualified name of its request message.
struct Rpc {
    path: String,
    request: String,
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the descriptor set decodes")
}

fn rpcs_of(files: &FileDescriptorSet, package: &str) -> Vec<Rpc> {
    let file = files.file.iter().find(|file| file.package() == package).expect("the package");
    file.service
        .iter()
        .flat_map(|service| {
            service.method.iter().map(move |method| Rpc {
                path: format!("/{package}.{}/{}", service.name(), method.name()),
                request: method.input_type().trim_start_matches('.').to_owned(),
            })
        })
        .collect()
}

fn message<'f>(files: &'f FileDescriptorSet, full_name: &str) -> &'f DescriptorProto {
    files
        .file
        .iter()
        .flat_map(|file| file.message_type.iter().map(move |message| (file.package(), message)))
        .find(|(package, message)| format!("{package}.{}", message.name()) == full_name)
        .map(|(_, message)| message)
        .unwrap_or_else(|| panic!("no message {full_name}"))
}

/// The fields (number and name) leading from `full_name` to a string field, through message fields.
fn path_to_a_string(files: &FileDescriptorSet, full_name: &str, depth: usize) -> Option<Vec<(u32, String)>> {
    let message = message(files, full_name);
    let step = |field: &prost_types::FieldDescriptorProto| (field.number() as u32, field.name().to_owned());
    if let Some(field) = message.field.iter().find(|field| field.r#type() == Type::String) {
        return Some(vec![step(field)]);
    }
    if depth == 0 {
        return None;
    }
    message.field.iter().filter(|field| field.r#type() == Type::Message).find_map(|field| {
        let mut path = vec![step(field)];
        path.extend(path_to_a_string(files, field.type_name().trim_start_matches('.'), depth - 1)?);
        Some(path)
    })
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A body whose innermost string field, at `path`, holds bytes that are not UTF-8.
fn invalid_utf8_at(path: &[(u32, String)]) -> Vec<u8> {
    path.iter().rev().fold(vec![0xff, 0xfe, 0xfd], |inner, (number, _)| {
        let mut outer = Vec::new();
        varint(u64::from(number << 3 | 2), &mut outer);
        varint(inner.len() as u64, &mut outer);
        outer.extend(inner);
        outer
    })
}

async fn call_raw(channel: &Channel, role: Role, path: &str, body: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let mut request = Request::new(body);
    let bearer = topkart::shared::auth::bearer(&token(role, "alice")).unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.unary(request, path, RawCodec).await.map(drop)
}

async fn row_counts(pool: &PgPool) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "select (select count(*) from deals), (select count(*) from reservations), (select count(*) from orders),
                (select count(*) from waitlist_entries)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn a_request_that_does_not_decode_is_malformed_request_on_every_rpc_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_deal(10).await;
    let before = row_counts(&pool).await;
    let files = descriptors();
    let apis = [
        ("topkart.deal.v1", &app.deal_channel, topkart::deal::DOMAIN),
        ("topkart.deal.internal.v1", &app.deal_channel, topkart::deal::DOMAIN),
        ("topkart.order.v1", &app.order_channel, topkart::order::DOMAIN),
    ];

    let mut failures = Vec::new();
    let mut calls = 0;
    for (package, channel, domain) in apis {
        for rpc in rpcs_of(&files, package) {
            let string = path_to_a_string(&files, &rpc.request, 3)
                .unwrap_or_else(|| panic!("{} has a string field within three levels", rpc.request));
            let bodies = [
                ("invalid UTF-8 in a string", invalid_utf8_at(&string)),
                ("a key with no value after it", vec![0x08]),
                ("wire type 7", vec![0x0f, 0x01]),
                ("a length past the end", vec![0x0a, 0x05, b'a']),
                (
                    "a varint of eleven bytes",
                    vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                ),
            ];
            // Internal methods are the service role's; the rest are tried as an admin. The decoder
            // runs before any authorization, so the role only has to pass the callers layer.
            let role = if rpc.path.contains(".internal.") { Role::Service } else { Role::Admin };
            for (what, body) in bodies {
                calls += 1;
                let outcome = call_raw(channel, role, &rpc.path, body).await;
                let utf8 = what.starts_with("invalid UTF-8");
                let field = utf8.then(|| string.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join("."));
                if let Err(why) = malformed_request(outcome, domain, &rpc.request, field.as_deref()) {
                    failures.push(format!("{} with {what}: {why}", rpc.path));
                }
            }
        }
    }
    assert_eq!(calls, 20 * 5, "every RPC of the three services was tried");
    assert!(failures.is_empty(), "{} calls failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(row_counts(&pool).await, before, "a request that did not decode wrote something");
    assert_invariants(&pool).await;
}

/// Whether `outcome` is INVALID_ARGUMENT `MALFORMED_REQUEST` in `domain`, naming `request` in its
/// message and, when given, `field` in its `BadRequest`.
fn malformed_request(
    outcome: Result<(), Status>,
    domain: &str,
    request: &str,
    field: Option<&str>,
) -> Result<(), String> {
    let status = outcome.err().ok_or("accepted")?;
    let details = status.get_error_details();
    if let Some(field) = field {
        let named: Vec<_> =
            details.bad_request().iter().flat_map(|bad| &bad.field_violations).map(|v| v.field.clone()).collect();
        if named != [field] {
            return Err(format!("expected the field {field}, got {named:?}"));
        }
    }
    let info = details.error_info().cloned();
    let reason = info.as_ref().map(|info| (info.reason.as_str(), info.domain.as_str()));
    if status.code() != Code::InvalidArgument || reason != Some(("MALFORMED_REQUEST", domain)) {
        return Err(format!("got {:?} {reason:?}: {:?}", status.code(), status.message()));
    }
    if !status.message().contains(request) {
        return Err(format!("the message does not name {request}: {:?}", status.message()));
    }
    Ok(())
}
