//! Code generated from `proto/` by `build.rs`, in modules that mirror the protobuf packages.

#![allow(clippy::all, missing_docs)]

pub mod google {
    /// The annotations gateways read (`google.api.http`, field behaviour, resources); only their
    /// messages are generated, prost having no extensions.
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
    pub mod r#type {
        include!(concat!(env!("OUT_DIR"), "/google.r#type.rs"));
    }
}

pub mod topkart {
    pub mod deal {
        pub mod v1 {
            tonic::include_proto!("topkart.deal.v1");
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("topkart.order.v1");
        }
    }
}

pub use google::r#type::Money;
pub use topkart::deal::v1 as deal;
pub use topkart::order::v1 as order;

/// Descriptors of every contract in `proto/` (with their imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/topkart_descriptor.bin"));
