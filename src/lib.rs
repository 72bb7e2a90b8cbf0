//! Rivulet: a CloudEvents broker and source/sink framework, API-compatible with Knative
//! Eventing.
#![forbid(unsafe_code)]

pub mod cli;
pub mod server;

pub use rivulet_broker::{auth, delivery, dispatcher, egress, ingress, listener, tls};
pub use rivulet_channels as channels;
pub use rivulet_control::{api, runtime};
pub use rivulet_core::{
    cesql, event, features, filter, install_crypto_provider, log_throttle, metrics, resources,
};
pub use rivulet_discovery as discovery;
pub use rivulet_sinks as sinks;
pub use rivulet_sources as sources;
pub use rivulet_store as store;
