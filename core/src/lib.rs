//! Rivulet's foundation, shared by every other crate: the CloudEvent and its encodings, CESQL,
//! trigger filters, the resource kinds and their validation, Knative's feature flags, and the
//! metrics registry. It knows nothing of serving, delivering or reconciling.
#![forbid(unsafe_code)]

pub mod cesql;
pub mod event;
pub mod features;
pub mod filter;
pub mod log_throttle;
pub mod metrics;
pub mod resources;

/// Installs ring as the process-wide TLS provider (once; later calls do nothing). The graph is
/// kept ring-only, and two installed providers would make TLS clients panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
