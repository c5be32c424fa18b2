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
        pub mod internal {
            pub mod v1 {
                tonic::include_proto!("topkart.deal.internal.v1");
            }
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("topkart.order.v1");
        }
    }
}

pub use google::r#type::Money;
pub use topkart::deal::internal::v1 as holds;
pub use topkart::deal::v1 as deal;
pub use topkart::order::v1 as order;

/// Descriptors of every contract in `proto/` (with their imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/topkart_descriptor.bin"));

/// Descriptors of the public contracts alone (with their imports), for gateways: not the internal
/// `topkart.deal.internal.v1`.
pub const PUBLIC_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/topkart_public_descriptor.bin"));

#[cfg(test)]
mod tests {
    //! The descriptor set keeps the annotations gateways read. Read through just enough of
    //! `google.protobuf.FileDescriptorSet` to reach each method's `google.api.http` (field 72295728
    //! of `MethodOptions`), since prost's own descriptor types drop extensions.

    use super::google::api::{HttpRule, http_rule::Pattern};

    #[derive(Clone, PartialEq, prost::Message)]
    struct FileSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct File {
        #[prost(message, repeated, tag = "6")]
        service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Service {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        method: Vec<Method>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Method {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, optional, tag = "4")]
        options: Option<MethodOptions>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct MethodOptions {
        #[prost(message, optional, tag = "72295728")]
        http: Option<HttpRule>,
    }

    /// Every method of the services in descriptor set `set` with its HTTP rule, `service/method`.
    fn http_rules(set: &[u8]) -> Vec<(String, Option<HttpRule>)> {
        let set = <FileSet as prost::Message>::decode(set).unwrap();
        set.file
            .into_iter()
            .flat_map(|file| file.service)
            .flat_map(|service| {
                let name = service.name;
                service.method.into_iter().map(move |method| {
                    (format!("{name}/{}", method.name), method.options.and_then(|options| options.http))
                })
            })
            .collect()
    }

    #[test]
    fn gateways_get_every_public_rpc_with_its_http_rule_and_no_internal_one() {
        let public = http_rules(super::PUBLIC_DESCRIPTOR_SET);
        assert_eq!(public.len(), 15, "{public:?}");
        for (method, rule) in &public {
            assert!(rule.is_some(), "{method} has no HTTP rule");
            assert!(!method.starts_with("HoldService/"), "{method} is internal");
        }
        let all = http_rules(super::FILE_DESCRIPTOR_SET);
        let internal: Vec<_> = all.iter().filter(|(method, _)| method.starts_with("HoldService/")).collect();
        assert_eq!((all.len(), internal.len()), (20, 5));
        assert!(internal.iter().all(|(_, rule)| rule.is_none()), "{internal:?}");
    }

    #[test]
    fn join_waitlist_is_a_custom_method_on_the_deal_s_entries() {
        let rule = http_rules(super::PUBLIC_DESCRIPTOR_SET)
            .into_iter()
            .find(|(method, _)| method == "DealService/JoinWaitlist")
            .unwrap()
            .1
            .unwrap();
        assert_eq!(rule.pattern, Some(Pattern::Post("/v1/{deal=deals/*}/waitlistEntries:join".into())));
        assert_eq!(rule.body, "*");
    }
}
