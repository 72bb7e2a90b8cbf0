//! The channel contract run against every backend built into this crate.

use rivulet_channels::contract::{self, ContractFixture};

mod memory {
    use super::*;

    rivulet_channels::channel_contract_tests!(
        "memory",
        contract::config("contract", "memory", std::env::temp_dir())
    );
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
