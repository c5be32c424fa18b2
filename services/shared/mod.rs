//! Pieces every binary shares: the database pool and migrations, the gRPC server plumbing (health,
//! reflection, graceful shutdown), error details, and the conversions between protobuf and domain
//! values (money, timestamps, resource names, pages), request coalescing, replies encoded once, and
//! a runtime on a thread of its own.

pub mod auth;
pub mod call;
pub mod cli;
pub mod coalesce;
pub mod codec;
pub mod customers;
pub mod db;
pub mod encoded;
pub mod hold_times;
pub mod layers;
pub mod methods;
pub mod metrics;
pub mod migrations;
pub mod money;
pub mod names;
pub mod otel;
pub mod paging;
pub mod quantity;
pub mod runtime_thread;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod time;
