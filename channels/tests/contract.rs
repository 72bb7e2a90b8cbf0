//! The channel contract run against every backend built into this crate.

use rivulet_channels::contract::{self, ContractFixture};

mod memory {
    use super::*;

    rivulet_channels::channel_contract_tests!(
        "memory",
        contract::config("contract", "memory", std::env::temp_dir())
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_channel_refuses_until_acknowledged() {
        let mut config = contract::config("contract", "memory", std::env::temp_dir());
        config.settings.insert("maxBytes".into(), "64Ki".into());
        contract::full_channel_refuses_until_acknowledged("memory", &config).await;
    }
}

mod embedded {
    use super::*;

    /// A channel in a fresh temporary folder, removed when the case ends.
    fn fixture() -> ContractFixture {
        let folder = tempfile::tempdir().expect("cannot create a temporary folder");
        let config = contract::config("contract", "embedded", folder.path());
        ContractFixture::new(config).keeping(folder)
    }

    rivulet_channels::channel_contract_tests!("embedded", fixture());
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;

    /// A broker nobody else uses on the NATS server named by `RIVULET_NATS_URL` (default
    /// `nats://127.0.0.1:4222`).
    fn fixture() -> ContractFixture {
        ContractFixture::new(contract::shared_server_config(
            "url",
            "RIVULET_NATS_URL",
            rivulet_channels::nats::DEFAULT_URL,
        ))
    }

    rivulet_channels::channel_contract_tests!("nats", fixture());
}

// Needs a Kafka-protocol server: built with the `kafka-tests` feature, which ./test.sh turns
// on after starting one (a bare `cargo test` leaves these tests out).
#[cfg(feature = "kafka-tests")]
mod kafka {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Held for the whole of a case: the Kafka cases run one at a time, because tansu 0.6
    /// sometimes reports a topic as unknown while others are created and deleted, and
    /// librdkafka 2.12 crashes on its answer to a fetch of an unknown topic.
    struct OneAtATime;

    static RUNNING: AtomicBool = AtomicBool::new(false);

    impl OneAtATime {
        fn take() -> Self {
            while RUNNING
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            OneAtATime
        }
    }

    impl Drop for OneAtATime {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }

    /// A broker nobody else uses on the Kafka server named by `RIVULET_KAFKA_BOOTSTRAP`
    /// (default `127.0.0.1:9092`). One partition: the contract expects one order across
    /// everything published, which Kafka keeps only within a partition.
    fn fixture() -> ContractFixture {
        let turn = OneAtATime::take();
        let mut config = contract::shared_server_config(
            "bootstrap.servers",
            "RIVULET_KAFKA_BOOTSTRAP",
            "127.0.0.1:9092",
        );
        config
            .settings
            .insert("default.topic.partitions".into(), "1".into());
        ContractFixture::new(config).keeping(turn)
    }

    rivulet_channels::channel_contract_tests!("kafka", fixture());
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;

    /// A broker nobody else uses on the RabbitMQ server named by `RIVULET_RABBITMQ_URI`
    /// (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
    fn fixture() -> ContractFixture {
        ContractFixture::new(contract::shared_server_config(
            "uri",
            "RIVULET_RABBITMQ_URI",
            rivulet_channels::rabbitmq::DEFAULT_URI,
        ))
    }

    rivulet_channels::channel_contract_tests!("rabbitmq", fixture());
}
