//! Rivulet: a CloudEvents broker and source/sink framework, API-compatible with Knative
//! Eventing.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod delivery;
pub mod dispatcher;
pub mod egress;
pub mod ingress;
pub mod listener;
pub mod registry;
pub mod runtime;
pub mod server;
#[path = "../sinks/mod.rs"]
pub mod sinks;
#[path = "../sources/mod.rs"]
pub mod sources;
pub mod tls;

pub use rivulet_channels as channels;
pub use rivulet_core::{
    cesql, event, features, filter, install_crypto_provider, log_throttle, metrics, resources,
};
pub use rivulet_store as store;
