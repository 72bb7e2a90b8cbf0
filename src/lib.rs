//! Rivulet: a CloudEvents broker and source/sink framework, API-compatible with Knative
//! Eventing.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cesql;
pub mod cli;
pub mod delivery;
pub mod dispatcher;
pub mod egress;
pub mod event;
pub mod features;
pub mod filter;
pub mod ingress;
pub mod listener;
pub mod log_throttle;
pub mod metrics;
pub mod registry;
pub mod resources;
pub mod runtime;
pub mod server;
#[path = "../sinks/mod.rs"]
pub mod sinks;
#[path = "../sources/mod.rs"]
pub mod sources;
pub mod store;
pub mod tls;

pub use rivulet_channels as channels;

/// Installs ring as the process-wide TLS provider (once; later calls do nothing). The graph is
/// kept ring-only, and two installed providers would make TLS clients panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
