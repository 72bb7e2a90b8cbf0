//! Helpers for the tests that use the NATS server named by `RIVULET_NATS_URL` (default
//! `nats://127.0.0.1:4222`).

use rivulet_channels::nats::async_nats;

pub use crate::unique;

/// The NATS server the tests use.
pub fn nats_url() -> String {
    std::env::var("RIVULET_NATS_URL").unwrap_or_else(|_| rivulet_channels::nats::DEFAULT_URL.into())
}

/// A client of [`nats_url`].
pub async fn client() -> async_nats::Client {
    async_nats::connect(nats_url())
        .await
        .expect("the NATS server is reachable (start it with test.sh)")
}
