//! Topkart lightning deals: three gRPC services over one Postgres.
//!
//! - [`deal`]: admins create and update deals; customers list and read them; order-service reserves
//!   and releases units.
//! - [`order`]: customers place, track and cancel orders; admins approve or reject them.
//! - [`worker`]: expires deals every few seconds and performs the daily 00:00 UTC reset.
//! - [`invariants`]: the checks behind `invariant-check`.
//! - [`shared`]: what every binary needs: database, server plumbing, error details, conversions.

/// The allocator of every binary and test of this package. glibc's malloc and free took a fifth
/// to a third of each service's CPU on the hot-deal path (`perf record`, BENCHMARKS.md); most of
/// a call's allocations are small and short-lived, what mimalloc's per-thread free lists are for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod deal;
pub mod invariants;
pub mod order;
pub mod proto;
pub mod shared;
pub mod worker;
