//! Generates the Rust code and the reflection descriptor set from `proto/`, once for every binary.
//! protox parses the contracts in pure Rust, so no system `protoc` is needed.

use std::{env, error::Error, fs, path::PathBuf};

const PROTO_ROOT: &str = "proto";
/// The public contracts: what gateways and generated clients are given.
const PUBLIC: [&str; 2] = ["topkart/deal/v1/deal.proto", "topkart/order/v1/order.proto"];
/// The calls between our services, served to the service role alone.
const INTERNAL: [&str; 1] = ["topkart/deal/internal/v1/holds.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    // sqlx::migrate! embeds migrations/ at build time; a migration added or changed must rebuild.
    println!("cargo:rerun-if-changed=migrations");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Loadable by gateways (Envoy's gRPC-JSON transcoder, say): the public contracts alone. Encoded
    // by protox, which keeps the options that are extensions (`google.api.http`, field behaviour,
    // resources); prost's own types would drop them.
    let mut public = protox::Compiler::new([PROTO_ROOT])?;
    public.include_source_info(true).include_imports(true).open_files(PUBLIC)?;
    fs::write(out_dir.join("topkart_public_descriptor.bin"), public.encode_file_descriptor_set())?;

    // Every contract, for the generated code, server reflection (which lists only what a server
    // serves) and the servers' own knowledge of their methods.
    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_source_info(true).include_imports(true).open_files(PUBLIC.iter().chain(&INTERNAL))?;
    let descriptors = compiler.file_descriptor_set();
    fs::write(out_dir.join("topkart_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    // Every message knows its protobuf name (`prost::Name`), so our codec can tell a request that
    // does not decode (the caller's fault) from a reply that does not (ours).
    let mut messages = prost_build::Config::new();
    messages.enable_type_names();
    // `google.rpc.Status` (a batch's per-request errors) is tonic-types' own, which tonic's status
    // details already decode.
    messages.extern_path(".google.rpc", "::tonic_types::pb");
    tonic_prost_build::configure()
        .codec_path("crate::shared::codec::Codec")
        .compile_fds_with_config(descriptors, messages)?;
    Ok(())
}
