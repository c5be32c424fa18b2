//! Integration tests: real gRPC servers on port 0 (and, in `end_to_end`, the real binaries) over a
//! fresh Postgres database per test.

mod authorization;
mod batch_calls;
mod cluster;
mod concurrency;
mod crashes;
mod deals;
mod end_to_end;
mod fairness;
mod faults;
mod grpc_web;
mod helpers;
mod hostile;
mod jwks;
mod malformed;
mod migrations;
mod model;
mod orders;
mod postgres_restart;
mod processes;
mod reliability;
mod surge;
mod tls;
mod traces;
mod waitlist;
mod watch;
mod worker;
mod worker_failures;
