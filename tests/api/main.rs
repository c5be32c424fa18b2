//! Integration tests: real gRPC servers on port 0 (and, in `end_to_end`, the real binaries) over a
//! fresh Postgres database per test.

mod concurrency;
mod deals;
mod end_to_end;
mod helpers;
mod orders;
mod reliability;
mod worker;
