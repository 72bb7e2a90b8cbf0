//! Event-type discovery: EventTypes made from the events brokers see.
//!
//! Ingress hands every accepted request's events to an
//! [`Observer`](rivulet_broker::ingress::Observer), which only tries to put
//! them on a bounded queue: a full queue drops the observation (counted in
//! `rivulet_eventtype_observations_dropped_total`), so discovery never slows or fails
//! ingress. A background worker ([`worker`]) creates an EventType for each new
//! (broker, type, source pattern), infers the payload schema ([`schema`]) and writes it to the
//! EventType's status only when it changed, at most once per `min_write_interval`. A broker
//! gets at most `max_per_broker` auto-created EventTypes; events past it are counted in
//! `rivulet_eventtypes_capped_total` and get none.
//! [`query`] filters EventType lists, [`xregistry`] serves the CloudEvents xRegistry view,
//! [`scaffold`] writes function skeletons from a schema.
#![forbid(unsafe_code)]

use std::time::Duration;

pub mod pattern;
pub mod query;
pub mod scaffold;
pub mod schema;
pub mod worker;
pub mod xregistry;

/// The default of [`DiscoverySettings::max_per_broker`].
pub const DEFAULT_MAX_PER_BROKER: usize = 1000;

/// How discovery behaves; part of `rivulet serve`'s options.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Create EventTypes for the events brokers accept (`--no-eventtype-autocreate` turns it
    /// off; schemas are still inferred for EventTypes applied by hand).
    pub autocreate: bool,
    /// Requests waiting for the worker at most; more are dropped and counted.
    pub queue_capacity: usize,
    /// Source patterns per (broker, type) that get their own EventType; sources beyond it
    /// share one EventType whose source is `*`.
    pub max_sources_per_type: usize,
    /// The shortest time between two status writes of one EventType.
    pub min_write_interval: Duration,
    /// Schema versions kept per EventType.
    pub max_schema_versions: usize,
    /// EventTypes auto-created per broker at most (`--eventtype-max-per-broker`). Past it,
    /// events are still accepted but new classes get no EventType; EventTypes applied by
    /// hand do not count and are not limited.
    pub max_per_broker: usize,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            autocreate: true,
            queue_capacity: 1024,
            max_sources_per_type: 20,
            min_write_interval: Duration::from_secs(1),
            max_schema_versions: 10,
            max_per_broker: DEFAULT_MAX_PER_BROKER,
        }
    }
}
