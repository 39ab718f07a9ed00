//! The configuration file: TOML parsed into capsa's configuration and
//! validated, the driver's checks included (`capsa_hypervisor::parse_config`). A file that passes must give values
//! the checks allow.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/configuration.toml");
    match capsa_hypervisor::parse_config(text, path) {
        Ok(config) => {
            let q = &config.hypervisor.vm;
            assert!((1..=256).contains(&q.default_vcpus));
            assert!(q.default_memory >= 128);
            assert!(config.runtime.state_dir.is_absolute());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("/fuzz/configuration.toml"),
                "the error names the file: {message}"
            );
        }
    }
});
