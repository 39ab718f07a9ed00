//! What CNI plugins print (a result, or an error object when they fail),
//! as capsa reads it, and the configuration list a user writes.
#![no_main]

use capsa_runtime::resource::network::cni::{describe_failure, CniResult, Conflist};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(result) = serde_json::from_slice::<CniResult>(rest) {
                if let Some(address) = result.container_address() {
                    assert!(result.ips.iter().any(|ip| ip.address == address));
                }
            }
        }
        1 => {
            // A failed plugin's stdout and stderr, split at the first NUL.
            let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let (out, err) = rest.split_at(cut);
            let said = describe_failure(out, err);
            assert!(!said.is_empty());
            if serde_json::from_slice::<capsa_runtime::resource::network::cni::PluginError>(out)
                .is_err()
            {
                assert!(said.chars().count() <= 501, "{said:?}");
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            match Conflist::parse(text, "fuzz.conflist") {
                Ok(list) => {
                    assert!(!list.plugins.is_empty() && !list.name.is_empty());
                    for i in 0..list.plugins.len() {
                        let t = list.plugin_type(i);
                        assert!(!t.is_empty() && !t.contains('/'), "{t:?}");
                        let conf = list.plugin_config(i, None, &Default::default());
                        assert_eq!(conf["name"], list.name.as_str());
                    }
                }
                Err(e) => assert!(e.to_string().contains("fuzz.conflist"), "{e}"),
            }
        }
    }
});
