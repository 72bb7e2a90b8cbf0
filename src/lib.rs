//! Rivulet: a CloudEvents broker and source/sink framework, API-compatible with Knative
//! Eventing.
#![forbid(unsafe_code)]

pub mod cli;
pub mod server;

pub use rivulet_broker::{
    auth, delivery, dispatcher, egress, ingress, journal, listener, telemetry, tls,
};
pub use rivulet_channels as channels;
pub use rivulet_console as console;
pub use rivulet_control::{api, graph, runtime};
pub use rivulet_core::{
    cesql, event, features, filter, install_crypto_provider, log_throttle, metrics, resources,
};
pub use rivulet_discovery as discovery;
pub use rivulet_messaging as messaging;
pub use rivulet_sinks as sinks;
pub use rivulet_sources as sources;
pub use rivulet_store as store;

#[cfg(test)]
mod tests {
    use rivulet_control::runtime::resync_order;

    /// With every crate linked, each reconciler comes after the kinds it reads and before the
    /// kinds that read it, and none is left out.
    #[test]
    fn the_resync_order_keeps_every_registered_dependency() {
        let order = resync_order();
        let position = |kind: &str| order.iter().position(|r| r.kind == kind);
        for reconciler in &order {
            let at = position(reconciler.kind).unwrap();
            for earlier in reconciler.after {
                if let Some(earlier_at) = position(earlier) {
                    assert!(earlier_at < at, "{earlier} before {}", reconciler.kind);
                }
            }
            for later in reconciler.before {
                if let Some(later_at) = position(later) {
                    assert!(at < later_at, "{} before {later}", reconciler.kind);
                }
            }
        }
        for (first, then) in [
            ("ConfigMap", "Broker"),
            ("EventPolicy", "Broker"),
            ("Broker", "Trigger"),
            ("HttpForwardSink", "Trigger"),
            ("Trigger", "PingSource"),
            ("EventDisplaySink", "ApiServerSource"),
            ("Broker", "EventType"),
            ("InMemoryChannel", "Subscription"),
            ("Channel", "Subscription"),
            ("Broker", "Subscription"),
            ("Subscription", "Sequence"),
            ("Subscription", "Parallel"),
            ("Sequence", "Trigger"),
            ("KafkaChannel", "Trigger"),
        ] {
            assert!(
                position(first).unwrap() < position(then).unwrap(),
                "{first} before {then}: {:?}",
                order.iter().map(|r| r.kind).collect::<Vec<_>>()
            );
        }
        assert_eq!(
            order.len(),
            29,
            "every kind with a reconciler is registered once"
        );
    }
}
