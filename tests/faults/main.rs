//! Backend outages under load: each test stops and starts one service, so no other test of a service shares this binary.

mod kafka_faults;
mod nats_faults;
mod rabbitmq_faults;
