//! `Config::from_toml` (the configuration file's parser and its validation) on arbitrary text.
//!
//! Nothing may panic; a configuration that is accepted validates again unchanged (validation
//! is idempotent: Cinder's fix-ups are applied once), and its sibling configurations (engine,
//! control) can be built from it.
#![no_main]

use heartsink::config::Config;
use heartsink::proto::keyring::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::from_toml(text) {
        let engine = c.engine(Keyring::from_strs(&["k"], 0));
        assert!(engine.workers >= 1);
        let control = c.control();
        assert!(control.liveness.validate().is_ok());
        assert!(c.settings().max_inflated >= 1024);
    }
});
