//! Helpers for the tests that run brokers on the RabbitMQ named by `RIVULET_RABBITMQ_URI`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

use rivulet_channels::rabbitmq::inspect_queue;
use rivulet_channels::rabbitmq::lapin::types::FieldTable;
use rivulet_channels::rabbitmq::lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

/// The RabbitMQ the tests use.
pub fn rabbitmq_uri() -> String {
    std::env::var("RIVULET_RABBITMQ_URI")
        .unwrap_or_else(|_| rivulet_channels::rabbitmq::DEFAULT_URI.to_owned())
}

pub use crate::unique;

/// A Secret holding the RabbitMQ URI, as a `RabbitMQBroker`'s `spec.config` names it.
pub fn uri_secret(namespace: &str, name: &str, uri: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"uri": uri}
    })
}

/// A `RabbitMQBroker` whose `spec.config` names `config` (a `kind`).
pub fn rabbitmq_broker(namespace: &str, name: &str, config_kind: &str, config: &str) -> Value {
    crate::broker_of_class(namespace, name, "RabbitMQBroker", config_kind, config)
}

/// A direct connection to the test RabbitMQ, to look at what Rivulet made there.
pub async fn connect() -> Connection {
    rivulet::install_crypto_provider();
    Connection::connect(&rabbitmq_uri(), ConnectionProperties::default())
        .await
        .expect("the test RabbitMQ is reachable")
}

/// Whether a queue exists (a passive declare on a channel of its own).
pub async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    let channel = connection.create_channel().await.expect("a channel");
    inspect_queue(&channel, queue).await.is_ok()
}

/// How many messages wait in a queue.
pub async fn queue_depth(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("a channel");
    inspect_queue(&channel, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue} does not exist: {e}"))
        .message_count()
}

/// Waits until someone consumes `queue` (for a source: it declared and bound the queue).
pub async fn wait_consumed(connection: &Connection, queue: &str) {
    crate::wait_for(
        &format!("a consumer on queue {queue}"),
        crate::WAIT,
        || async move {
            let channel = connection.create_channel().await.ok()?;
            let declared = inspect_queue(&channel, queue).await.ok()?;
            (declared.consumer_count() > 0).then_some(())
        },
    )
    .await;
}

/// Whether an exchange exists (a passive declare on a channel of its own).
pub async fn exchange_exists(connection: &Connection, exchange: &str) -> bool {
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .exchange_declare(
            exchange.into(),
            rivulet_channels::rabbitmq::lapin::ExchangeKind::Headers,
            rivulet_channels::rabbitmq::lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
}

/// Deletes a broker through the resource API at `api` and waits until Rivulet removed its
/// exchange from RabbitMQ, so a test does not end (and stop the server) before the cleanup.
pub async fn delete_broker(api: &str, namespace: &str, broker: &str) {
    crate::Api::new(api, api)
        .delete("Broker", namespace, broker)
        .await;
    let connection = connect().await;
    let exchange = rivulet_channels::rabbitmq::exchange_name(namespace, broker);
    crate::wait_for(
        &format!("exchange {exchange} to be deleted"),
        crate::WAIT,
        || {
            let (connection, exchange) = (&connection, exchange.clone());
            async move { (!exchange_exists(connection, &exchange).await).then_some(()) }
        },
    )
    .await;
}

/// Fails the test unless the exchange of broker `namespace/broker` is gone from RabbitMQ.
pub async fn assert_exchange_removed(namespace: &str, broker: &str) {
    let exchange = rivulet_channels::rabbitmq::exchange_name(namespace, broker);
    assert!(
        !exchange_exists(&connect().await, &exchange).await,
        "exchange {exchange} of broker {namespace}/{broker} is still there"
    );
}
