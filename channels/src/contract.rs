//! The channel contract: what every backend must do, written once and run against each.
//!
//! Each case is a public async function taking the backend's name and a [`ChannelConfig`]
//! for a channel nobody else uses; it panics when the backend breaks the contract. The
//! [`channel_contract_tests!`](crate::channel_contract_tests) macro expands into one
//! `#[tokio::test]` per case:
//!
//! ```text
//! mod memory {
//!     rivulet_channels::channel_contract_tests!("memory", fresh_config());
//! }
//! ```
//!
//! The second argument is evaluated once per case and must give a [`ContractFixture`] (or a
//! [`ChannelConfig`]); use a fresh broker name or data folder each time. The crate using the
//! macro needs `tokio` with the `macros` and `rt-multi-thread` features.
//!
//! Backends bounded in size that free space on acknowledgement also run
//! [`full_channel_refuses_until_acknowledged`] with a config giving a small bound.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    Channel, ChannelConfig, ChannelError, Envelope, Prefilter, Received, Subscription,
    SubscriptionSpec,
};

/// A channel configuration for one contract case, with whatever must live as long as the case
/// (a temporary folder, a container handle).
pub struct ContractFixture {
    pub config: ChannelConfig,
    _keep_alive: Option<Box<dyn Any + Send>>,
}

impl ContractFixture {
    pub fn new(config: ChannelConfig) -> Self {
        Self {
            config,
            _keep_alive: None,
        }
    }

    /// Keeps `guard` alive until the case ends.
    pub fn keeping(mut self, guard: impl Any + Send) -> Self {
        self._keep_alive = Some(Box::new(guard));
        self
    }
}

impl From<ChannelConfig> for ContractFixture {
    fn from(config: ChannelConfig) -> Self {
        Self::new(config)
    }
}

/// Expands into one `#[tokio::test]` per contract case for a backend; see [the module
/// documentation](crate::contract). Use it once per module, since the tests are named after
/// the cases.
#[macro_export]
macro_rules! channel_contract_tests {
    ($backend:expr, $fixture:expr $(,)?) => {
        $crate::channel_contract_tests!(@cases $backend, $fixture;
            publish_then_receive_in_order,
            receive_returns_at_most_max,
            receive_waits_for_new_events,
            batch_of_a_thousand_in_one_call,
            hundred_concurrent_publishers,
            subscriptions_are_independent,
            prefilter_routes_only_matching_events,
            unacked_events_are_redelivered_to_a_new_consumer,
            unacked_events_survive_reopening,
            acked_events_are_not_redelivered,
            acks_in_any_order,
            max_in_flight_limits_unacknowledged_events,
            deleted_subscription_stops_delivery,
            events_before_a_subscription_are_not_delivered,
            ensure_subscription_is_idempotent,
            consume_of_unknown_subscription_fails,
            data_and_attributes_round_trip,
            destroy_removes_subscriptions_and_events,
            backlog_counts_what_is_not_acknowledged,
        );
    };
    (@cases $backend:expr, $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: $crate::contract::ContractFixture =
                    ::core::convert::Into::into($fixture);
                $crate::contract::$case($backend, &fixture.config).await;
            }
        )*
    };
}

/// How long an event that should arrive may take.
const ARRIVAL: Duration = Duration::from_secs(15);
/// How long to watch for something that should not happen.
const QUIET: Duration = Duration::from_millis(300);

const SUBSCRIPTION: &str = "contract";

async fn open(backend: &str, config: &ChannelConfig) -> Arc<dyn Channel> {
    crate::open(backend, config.clone())
        .await
        .unwrap_or_else(|e| panic!("opening a {backend} channel failed: {e}"))
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(ARRIVAL, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {ARRIVAL:?} waiting for {what}"))
}

fn all_events() -> SubscriptionSpec {
    SubscriptionSpec {
        prefilter: Prefilter::all(),
        max_in_flight: 0,
        one_per_partition: false,
    }
}

async fn subscribe(channel: &Arc<dyn Channel>, name: &str, spec: &SubscriptionSpec) {
    within(
        "ensure_subscription",
        channel.ensure_subscription(name, spec),
    )
    .await
    .unwrap_or_else(|e| panic!("ensure_subscription({name:?}) failed: {e}"));
}

async fn consume(channel: &Arc<dyn Channel>, name: &str) -> Arc<dyn Subscription> {
    within("consume", channel.consume(name))
        .await
        .unwrap_or_else(|e| panic!("consume({name:?}) failed: {e}"))
}

async fn publish(channel: &Arc<dyn Channel>, events: Vec<Envelope>) {
    let count = events.len();
    within("publish", channel.publish(events))
        .await
        .unwrap_or_else(|e| panic!("publishing {count} events failed: {e}"));
}

/// A small JSON event with id `e-{n}`.
pub fn event(n: usize) -> Envelope {
    event_with(n, &[])
}

/// Like [`event`], with extra attributes (replacing those of the same name).
pub fn event_with(n: usize, extra: &[(&str, &str)]) -> Envelope {
    let mut attributes: Vec<(String, String)> = vec![
        ("specversion".into(), "1.0".into()),
        ("id".into(), format!("e-{n}")),
        ("source".into(), "/rivulet/contract".into()),
        ("type".into(), "dev.rivulet.contract".into()),
        ("datacontenttype".into(), "application/json".into()),
    ];
    for (name, value) in extra {
        match attributes.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = (*value).to_owned(),
            None => attributes.push(((*name).to_owned(), (*value).to_owned())),
        }
    }
    Envelope {
        attributes,
        data: Some(Bytes::from(format!("{{\"n\":{n}}}"))),
        typed: Vec::new(),
    }
}

fn id_of(received: &Received) -> String {
    received
        .envelope
        .attribute("id")
        .unwrap_or("<no id>")
        .to_owned()
}

fn ids(received: &[Received]) -> Vec<String> {
    received.iter().map(id_of).collect()
}

fn expected_ids(range: impl IntoIterator<Item = usize>) -> Vec<String> {
    range.into_iter().map(|n| format!("e-{n}")).collect()
}

/// Receives until exactly `count` events arrived; fails if fewer come in time or a
/// `receive` returns more than it was asked for.
async fn receive_exactly(subscription: &dyn Subscription, count: usize) -> Vec<Received> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let wanted = count - received.len();
        let batch = tokio::time::timeout(ARRIVAL, subscription.receive(wanted))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "expected {count} events, got {} before timing out: {:?}",
                    received.len(),
                    ids(&received)
                )
            })
            .unwrap_or_else(|e| panic!("receive failed after {} events: {e}", received.len()));
        assert!(
            !batch.is_empty(),
            "receive returned no events while {wanted} were expected"
        );
        assert!(
            batch.len() <= wanted,
            "receive({wanted}) returned {} events",
            batch.len()
        );
        received.extend(batch);
    }
    received
}

async fn ack_all(subscription: &dyn Subscription, received: &[Received]) {
    for event in received {
        within("ack", subscription.ack(event.id))
            .await
            .unwrap_or_else(|e| panic!("ack of {} failed: {e}", id_of(event)));
    }
}

/// Publishes a marker event and checks it is the next thing `subscription` gets: whatever was
/// queued before it would come first, so this proves nothing else is pending.
async fn assert_only_marker_pending(channel: &Arc<dyn Channel>, subscription: &dyn Subscription) {
    let marker = event_with(usize::MAX, &[("id", "marker")]);
    publish(channel, vec![marker]).await;
    let next = receive_exactly(subscription, 1).await;
    assert_eq!(
        ids(&next),
        vec!["marker"],
        "an event was delivered that should not have been"
    );
}

/// Asserts an unfinished task stays unfinished for a moment.
async fn assert_still_waiting<T>(task: &tokio::task::JoinHandle<T>, what: &str) {
    tokio::time::sleep(QUIET).await;
    assert!(!task.is_finished(), "{what} returned early");
}

pub async fn publish_then_receive_in_order(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, (0..10).map(event).collect()).await;
    for n in 10..20 {
        publish(&channel, vec![event(n)]).await;
    }
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, 20).await;
    assert_eq!(ids(&received), expected_ids(0..20));
    let distinct: BTreeSet<u64> = received.iter().map(|r| r.id).collect();
    assert_eq!(
        distinct.len(),
        20,
        "ids within a subscription must be unique"
    );
    channel.destroy().await.expect("destroy");
}

pub async fn receive_returns_at_most_max(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, (0..10).map(event).collect()).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let first = within("receive", subscription.receive(3))
        .await
        .expect("receive");
    assert!(
        (1..=3).contains(&first.len()),
        "receive(3) returned {} events",
        first.len()
    );
    let rest = receive_exactly(&*subscription, 10 - first.len()).await;
    let all: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    assert_eq!(all, expected_ids(0..10));
    channel.destroy().await.expect("destroy");
}

pub async fn receive_waits_for_new_events(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let waiting = spawn_receive(&subscription);
    assert_still_waiting(&waiting, "receive on an empty subscription").await;
    publish(&channel, vec![event(0)]).await;
    let received = within("the waiting receive", waiting)
        .await
        .expect("receive task")
        .expect("receive");
    assert_eq!(ids(&received), expected_ids([0]));
    channel.destroy().await.expect("destroy");
}

pub async fn batch_of_a_thousand_in_one_call(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, (0..1_000).map(event).collect()).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, 1_000).await;
    assert_eq!(ids(&received), expected_ids(0..1_000));
    ack_all(&*subscription, &received).await;
    assert_only_marker_pending(&channel, &*subscription).await;
    channel.destroy().await.expect("destroy");
}

pub async fn hundred_concurrent_publishers(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let publishers: Vec<_> = (0..100)
        .map(|publisher| {
            let channel = Arc::clone(&channel);
            tokio::spawn(async move {
                let events = (publisher * 10..publisher * 10 + 10).map(event).collect();
                channel.publish(events).await
            })
        })
        .collect();
    for publisher in publishers {
        within("a concurrent publish", publisher)
            .await
            .expect("publisher task")
            .expect("concurrent publish");
    }
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, 1_000).await;
    let received_ids = ids(&received);
    let distinct: BTreeSet<&String> = received_ids.iter().collect();
    let expected = expected_ids(0..1_000);
    assert_eq!(
        distinct,
        expected.iter().collect(),
        "every event exactly once"
    );
    // The events of one call stay in the order they were given.
    let position: HashMap<&str, usize> = received_ids
        .iter()
        .enumerate()
        .map(|(at, id)| (id.as_str(), at))
        .collect();
    for publisher in 0..100 {
        let positions: Vec<usize> = (publisher * 10..publisher * 10 + 10)
            .map(|n| position[format!("e-{n}").as_str()])
            .collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "events of publisher {publisher} out of order: {positions:?}"
        );
    }
    ack_all(&*subscription, &received).await;
    assert_only_marker_pending(&channel, &*subscription).await;
    channel.destroy().await.expect("destroy");
}

pub async fn subscriptions_are_independent(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, "fast", &all_events()).await;
    subscribe(&channel, "slow", &all_events()).await;
    publish(&channel, (0..50).map(event).collect()).await;

    // "slow" takes nothing yet; "fast" still gets everything.
    let fast = consume(&channel, "fast").await;
    let fast_received = receive_exactly(&*fast, 50).await;
    assert_eq!(ids(&fast_received), expected_ids(0..50));
    ack_all(&*fast, &fast_received).await;

    // Acknowledging on "fast" took nothing from "slow".
    let slow = consume(&channel, "slow").await;
    let slow_received = receive_exactly(&*slow, 50).await;
    assert_eq!(ids(&slow_received), expected_ids(0..50));
    ack_all(&*slow, &slow_received[..25]).await;

    let fast = consume(&channel, "fast").await;
    assert_only_marker_pending(&channel, &*fast).await;
    let slow = consume(&channel, "slow").await;
    let redelivered = receive_exactly(&*slow, 26).await;
    let mut expected = expected_ids(25..50);
    expected.push("marker".into());
    assert_eq!(ids(&redelivered), expected);
    channel.destroy().await.expect("destroy");
}

pub async fn prefilter_routes_only_matching_events(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    let pairs = |pairs: &[(&str, &str)]| SubscriptionSpec {
        prefilter: Prefilter {
            filter: None,
            prefix: Vec::new(),
            exact: pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        },
        max_in_flight: 0,
        one_per_partition: false,
    };
    subscribe(&channel, "orders", &pairs(&[("type", "order.created")])).await;
    subscribe(
        &channel,
        "eu-orders",
        &pairs(&[("type", "order.created"), ("region", "eu")]),
    )
    .await;
    subscribe(&channel, "by-source", &pairs(&[("source", "/other")])).await;
    subscribe(&channel, "everything", &all_events()).await;

    publish(
        &channel,
        vec![
            event_with(0, &[("type", "order.created"), ("region", "eu")]),
            event_with(1, &[("type", "order.created"), ("region", "us")]),
            event_with(2, &[("type", "order.shipped"), ("region", "eu")]),
            event_with(3, &[("source", "/other")]),
            // Matches every prefilter above, so it closes every queue.
            event_with(
                4,
                &[
                    ("type", "order.created"),
                    ("region", "eu"),
                    ("source", "/other"),
                ],
            ),
        ],
    )
    .await;

    for (name, expected) in [
        ("orders", vec![0, 1, 4]),
        ("eu-orders", vec![0, 4]),
        ("by-source", vec![3, 4]),
        ("everything", vec![0, 1, 2, 3, 4]),
    ] {
        let subscription = consume(&channel, name).await;
        let received = receive_exactly(&*subscription, expected.len()).await;
        assert_eq!(
            ids(&received),
            expected_ids(expected),
            "subscription {name}"
        );
    }
    channel.destroy().await.expect("destroy");
}

/// The backends that mark a redelivery as such ([`Received::redelivered`]).
const TELLS_REDELIVERIES: [&str; 2] = ["rabbitmq", "nats"];

pub async fn unacked_events_are_redelivered_to_a_new_consumer(
    backend: &str,
    config: &ChannelConfig,
) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, (0..5).map(event).collect()).await;
    let first = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*first, 5).await;
    assert!(
        received.iter().all(|r| !r.redelivered),
        "a first hand-out is no redelivery"
    );
    ack_all(&*first, &[received[1].clone(), received[3].clone()]).await;

    let second = consume(&channel, SUBSCRIPTION).await;
    let redelivered = receive_exactly(&*second, 3).await;
    assert_eq!(ids(&redelivered), expected_ids([0, 2, 4]));
    if TELLS_REDELIVERIES.contains(&backend) {
        assert!(
            redelivered.iter().all(|r| r.redelivered),
            "events handed out again are marked as redelivered"
        );
    }
    ack_all(&*second, &redelivered).await;

    let third = consume(&channel, SUBSCRIPTION).await;
    assert_only_marker_pending(&channel, &*third).await;
    channel.destroy().await.expect("destroy");
}

pub async fn unacked_events_survive_reopening(backend: &str, config: &ChannelConfig) {
    let durable = crate::backend(backend).is_some_and(|b| b.durable);
    if !durable {
        eprintln!("skipped: backend {backend} is not durable, nothing survives reopening");
        return;
    }
    {
        let channel = open(backend, config).await;
        subscribe(&channel, SUBSCRIPTION, &all_events()).await;
        publish(&channel, (0..5).map(event).collect()).await;
        let subscription = consume(&channel, SUBSCRIPTION).await;
        let received = receive_exactly(&*subscription, 5).await;
        ack_all(&*subscription, &[received[0].clone(), received[2].clone()]).await;
    }
    {
        let channel = open(backend, config).await;
        // The subscription is known again before anyone consumes it.
        publish(&channel, vec![event(5)]).await;
        let subscription = consume(&channel, SUBSCRIPTION).await;
        let redelivered = receive_exactly(&*subscription, 4).await;
        assert_eq!(ids(&redelivered), expected_ids([1, 3, 4, 5]));
        ack_all(&*subscription, &redelivered).await;
    }
    let channel = open(backend, config).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    assert_only_marker_pending(&channel, &*subscription).await;
    channel.destroy().await.expect("destroy");
}

pub async fn acked_events_are_not_redelivered(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, (0..10).map(event).collect()).await;
    let first = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*first, 10).await;
    ack_all(&*first, &received).await;
    let second = consume(&channel, SUBSCRIPTION).await;
    assert_only_marker_pending(&channel, &*second).await;
    channel.destroy().await.expect("destroy");
}

pub async fn acks_in_any_order(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, (0..10).map(event).collect()).await;
    let first = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*first, 10).await;
    // Everything but e-6, in scrambled order.
    let order = [9, 3, 0, 7, 1, 8, 2, 5, 4];
    let scrambled: Vec<Received> = order.iter().map(|&i| received[i].clone()).collect();
    ack_all(&*first, &scrambled).await;

    let second = consume(&channel, SUBSCRIPTION).await;
    let redelivered = receive_exactly(&*second, 1).await;
    assert_eq!(ids(&redelivered), expected_ids([6]));
    ack_all(&*second, &redelivered).await;
    assert_only_marker_pending(&channel, &*second).await;
    channel.destroy().await.expect("destroy");
}

pub async fn max_in_flight_limits_unacknowledged_events(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    let spec = SubscriptionSpec {
        prefilter: Prefilter::all(),
        max_in_flight: 2,
        one_per_partition: false,
    };
    subscribe(&channel, SUBSCRIPTION, &spec).await;
    publish(&channel, (0..5).map(event).collect()).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let held = receive_exactly(&*subscription, 2).await;
    assert_eq!(ids(&held), expected_ids([0, 1]));

    let waiting = spawn_receive(&subscription);
    assert_still_waiting(&waiting, "receive beyond max_in_flight").await;
    ack_all(&*subscription, &held[..1]).await;
    let next = within("receive after an ack", waiting)
        .await
        .expect("receive task")
        .expect("receive");
    assert_eq!(ids(&next), expected_ids([2]), "one slot was freed");
    channel.destroy().await.expect("destroy");
}

pub async fn deleted_subscription_stops_delivery(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let waiting = spawn_receive(&subscription);
    assert_still_waiting(&waiting, "receive on an empty subscription").await;
    within(
        "delete_subscription",
        channel.delete_subscription(SUBSCRIPTION),
    )
    .await
    .expect("delete_subscription");
    let outcome = within("the receive waiting on a deleted subscription", waiting)
        .await
        .expect("receive task");
    assert!(
        match &outcome {
            Err(ChannelError::Closed) => true,
            Ok(events) => events.is_empty(),
            Err(_) => false,
        },
        "receive on a deleted subscription gave {outcome:?}"
    );

    publish(&channel, vec![event(0)]).await;
    match tokio::time::timeout(QUIET, subscription.receive(10)).await {
        Err(_) | Ok(Err(ChannelError::Closed)) => {}
        Ok(Ok(events)) => assert!(
            events.is_empty(),
            "deleted subscription received {:?}",
            ids(&events)
        ),
        Ok(Err(other)) => panic!("receive on a deleted subscription failed oddly: {other}"),
    }
    assert!(
        channel.consume(SUBSCRIPTION).await.is_err(),
        "consume of a deleted subscription succeeded"
    );

    // Created again, it starts empty.
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let again = consume(&channel, SUBSCRIPTION).await;
    assert_only_marker_pending(&channel, &*again).await;
    channel.destroy().await.expect("destroy");
}

pub async fn events_before_a_subscription_are_not_delivered(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, "early", &all_events()).await;
    publish(&channel, vec![event(0)]).await;
    subscribe(&channel, "late", &all_events()).await;
    publish(&channel, vec![event(1)]).await;

    let late = consume(&channel, "late").await;
    assert_eq!(ids(&receive_exactly(&*late, 1).await), expected_ids([1]));
    let early = consume(&channel, "early").await;
    assert_eq!(
        ids(&receive_exactly(&*early, 2).await),
        expected_ids([0, 1])
    );
    channel.destroy().await.expect("destroy");
}

pub async fn ensure_subscription_is_idempotent(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, vec![event(0)]).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    publish(&channel, vec![event(1)]).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, 2).await;
    assert_eq!(
        ids(&received),
        expected_ids([0, 1]),
        "nothing lost or doubled"
    );
    assert_only_marker_pending(&channel, &*subscription).await;
    channel.destroy().await.expect("destroy");
}

pub async fn consume_of_unknown_subscription_fails(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    match channel.consume("never-created").await {
        Err(ChannelError::UnknownSubscription(name)) => assert_eq!(name, "never-created"),
        Err(other) => panic!("expected UnknownSubscription, got {other}"),
        Ok(_) => panic!("consume of a subscription that was never created succeeded"),
    }
    channel.destroy().await.expect("destroy");
}

pub async fn data_and_attributes_round_trip(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(64 * 1024 + 7).collect();
    let mut no_data = event(0);
    no_data.data = None;
    no_data
        .attributes
        .retain(|(name, _)| name != "datacontenttype");
    let mut empty_data = event(1);
    empty_data.data = Some(Bytes::new());
    let mut binary = event_with(2, &[("datacontenttype", "application/octet-stream")]);
    binary.data = Some(Bytes::from(every_byte));
    let mut unusual = event_with(
        3,
        &[
            ("subject", "spaces, commas; \"quotes\" and ünïcödé ✓"),
            ("time", "2026-01-02T03:04:05.678901Z"),
            ("dataschema", "https://example.com/schema?x=1&y=2"),
            ("zextension", ""),
            ("aextension", "0"),
            ("knativebrokerttl", "255"),
            ("flag", "true"),
        ],
    );
    unusual.data = Some(Bytes::from_static(b"12345678901234567890123"));
    // Extensions that are not strings keep their type.
    unusual.typed = vec![
        ("knativebrokerttl".into(), crate::AttributeType::Integer),
        ("flag".into(), crate::AttributeType::Boolean),
    ];
    let sent = vec![no_data, empty_data, binary, unusual];
    publish(&channel, sent.clone()).await;

    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, sent.len()).await;
    for (got, want) in received.iter().zip(&sent) {
        assert_eq!(*got.envelope, *want, "event changed on its way through");
    }
    channel.destroy().await.expect("destroy");
}

pub async fn destroy_removes_subscriptions_and_events(backend: &str, config: &ChannelConfig) {
    {
        let channel = open(backend, config).await;
        subscribe(&channel, SUBSCRIPTION, &all_events()).await;
        publish(&channel, (0..3).map(event).collect()).await;
        channel.destroy().await.expect("destroy");
    }
    let channel = open(backend, config).await;
    assert!(
        matches!(
            channel.consume(SUBSCRIPTION).await,
            Err(ChannelError::UnknownSubscription(_))
        ),
        "a subscription survived destroy"
    );
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    assert_only_marker_pending(&channel, &*subscription).await;
    channel.destroy().await.expect("destroy");
}

/// For backends bounded in size that free space as events are acknowledged (not in
/// [`channel_contract_tests!`](crate::channel_contract_tests), since not every backend has
/// such a bound): `config` must bound the channel to well under 10,000 events of 8 KiB.
/// Past the bound, publishing fails with [`ChannelError::Full`] and stores nothing; once
/// the subscription has acknowledged what it holds, publishing works again, and every event
/// that was accepted is delivered.
pub async fn full_channel_refuses_until_acknowledged(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    let data = Bytes::from(vec![b'x'; 8 * 1024]);
    let big = |n: usize| Envelope {
        data: Some(data.clone()),
        ..event(n)
    };
    let mut accepted = 0;
    loop {
        assert!(accepted < 10_000, "{backend}: never refused an event");
        match within("publish", channel.publish(vec![big(accepted)])).await {
            Ok(()) => accepted += 1,
            Err(ChannelError::Full(_)) => break,
            Err(other) => panic!("{backend}: expected a full channel, got {other}"),
        }
    }
    assert!(accepted > 0, "{backend}: refused the first event");
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, accepted).await;
    assert_eq!(ids(&received), expected_ids(0..accepted));
    ack_all(&*subscription, &received).await;
    within("publish after acknowledgements", async {
        loop {
            match channel.publish(vec![big(accepted)]).await {
                Ok(()) => break,
                Err(ChannelError::Full(_)) => tokio::time::sleep(QUIET / 10).await,
                Err(other) => panic!("{backend}: publishing after acks failed: {other}"),
            }
        }
    })
    .await;
    let next = receive_exactly(&*subscription, 1).await;
    assert_eq!(
        ids(&next),
        expected_ids([accepted]),
        "the refused event was stored"
    );
    channel.destroy().await.expect("destroy");
}

/// A [`ChannelConfig`] without backend settings, for tests.
pub fn config(
    namespace: &str,
    broker: &str,
    data_dir: impl Into<std::path::PathBuf>,
) -> ChannelConfig {
    ChannelConfig {
        namespace: namespace.to_owned(),
        broker: broker.to_owned(),
        data_dir: data_dir.into(),
        settings: BTreeMap::new(),
    }
}

/// A [`config`] for a broker name no other case of this process uses, on a server shared by
/// every case (the one named by the environment variable `server_env`, else
/// `default_server`, given to the backend as `setting`), so its streams, topics or queues
/// start empty.
pub fn shared_server_config(
    setting: &str,
    server_env: &str,
    default_server: &str,
) -> ChannelConfig {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let broker = format!(
        "b-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut config = config("contract", &broker, std::env::temp_dir());
    let server = std::env::var(server_env).unwrap_or_else(|_| default_server.to_owned());
    config.settings.insert(setting.into(), server);
    config
}

/// A `receive(10)` left waiting in a task of its own.
fn spawn_receive(
    subscription: &Arc<dyn Subscription>,
) -> tokio::task::JoinHandle<Result<Vec<Received>, ChannelError>> {
    let subscription = Arc::clone(subscription);
    tokio::spawn(async move { subscription.receive(10).await })
}

/// Waits until the subscription's backlog is `expected` (backends may count a moment late).
async fn assert_backlog(channel: &Arc<dyn Channel>, expected: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let backlog = channel.backlog(SUBSCRIPTION).await.expect("backlog");
        if backlog == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: backlog {backlog:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn backlog_counts_what_is_not_acknowledged(backend: &str, config: &ChannelConfig) {
    let channel = open(backend, config).await;
    subscribe(&channel, SUBSCRIPTION, &all_events()).await;
    if channel
        .backlog(SUBSCRIPTION)
        .await
        .expect("backlog")
        .is_none()
    {
        eprintln!("skipped: backend {backend} does not count its backlog (documented)");
        channel.destroy().await.expect("destroy");
        return;
    }
    assert!(
        matches!(
            channel.backlog("no-such-subscription").await,
            Err(ChannelError::UnknownSubscription(_))
        ),
        "an unknown subscription is an error"
    );
    assert_backlog(&channel, 0, "nothing published").await;
    publish(&channel, (0..5).map(event).collect()).await;
    assert_backlog(&channel, 5, "five waiting").await;
    let subscription = consume(&channel, SUBSCRIPTION).await;
    let received = receive_exactly(&*subscription, 5).await;
    // Handed out and unacknowledged still counts: deleting now would lose them.
    assert_backlog(&channel, 5, "five handed out").await;
    ack_all(&*subscription, &received[..2]).await;
    assert_backlog(&channel, 3, "two acknowledged").await;
    ack_all(&*subscription, &received[2..]).await;
    assert_backlog(&channel, 0, "all acknowledged").await;
    channel.destroy().await.expect("destroy");
}
