//! The message-broker backends (RabbitMQ, NATS JetStream, Kafka) as brokers, sources and sinks, and the other sources and sinks.

mod apiserversource;
mod kafka;
mod kafka_adapters;
mod nats_adapters;
mod nats_broker;
mod podspecable;
mod queue_depth;
mod rabbitmq;
mod rabbitmq_adapters;
mod sinks;
mod sources;
