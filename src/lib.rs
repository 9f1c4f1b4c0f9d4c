//! Herald: a notification dispatch gateway. One gRPC front door for every platform channel,
//! durable queues in Redis, per-platform policy, retries, fallback and delivery receipts.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod channels;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod ingest;
pub mod live;
pub mod model;
pub mod policy;
pub mod ratelimit;
pub mod receipts;
pub mod store;
pub mod telemetry;
pub mod webhooks;

/// Generated from `proto/herald/v1/herald.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("herald.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herald_descriptor");
}
