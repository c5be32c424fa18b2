//! Generated-input tests that need no database: property tests of the deal and order rules against
//! an independent reading of the README, and a bounded fuzzer of everything the services decode.
//! They use only the library's public API.

mod deal_rules;
mod decode_fuzz;
mod order_rules;
