//! Rivulet: a CloudEvents broker and source/sink framework, API-compatible with Knative
//! Eventing.
#![forbid(unsafe_code)]

pub mod cli;
pub mod registry;
pub mod server;
#[path = "../sinks/mod.rs"]
pub mod sinks;
#[path = "../sources/mod.rs"]
pub mod sources;

pub use rivulet_broker::{auth, delivery, dispatcher, egress, ingress, listener, tls};
pub use rivulet_channels as channels;
pub use rivulet_control::{api, runtime};
pub use rivulet_core::{
    cesql, event, features, filter, install_crypto_provider, log_throttle, metrics, resources,
};
pub use rivulet_store as store;
