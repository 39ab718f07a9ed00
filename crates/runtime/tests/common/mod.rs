//! Helpers of the runtime's VM tests.
#![allow(dead_code)]

use capsa_runtime::{Sandbox, VmSize};
use capsa_test_infra::TestEnv;

/// Boots a sandbox with the test's configuration.
pub async fn boot(env: &TestEnv) -> Sandbox {
    let (config, _) = capsa_runtime::load_config(Some(&env.config)).expect("config");
    Sandbox::start(&config, VmSize::default())
        .await
        .expect("sandbox start")
}

/// Reads stdout of `exec_id` until end of file.
pub async fn read_all(sandbox: &Sandbox, cid: &str, exec_id: &str) -> String {
    let mut out = Vec::new();
    loop {
        match sandbox.agent().read_stdout(cid, exec_id, 4096).await {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => out.extend(chunk),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
