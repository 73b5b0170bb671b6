//! The per-user infra network namespace, bridges, veth pairs, IPAM and port publishing.

pub mod nft;
