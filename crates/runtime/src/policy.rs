//! The agent policy from the host's side: set it in the guest and keep a
//! copy of what was set in the sandbox's state directory (`capsa policy
//! get`). The guest decides whether a new policy is accepted (its current
//! policy's `SetPolicyRequest` rule); the copy is written only when it was.

use fs_err as fs;
use std::path::{Path, PathBuf};

use capsa_agent_client::AgentClient;

use crate::Error;

/// The last policy the host set, in the sandbox's state directory.
pub const POLICY_FILE: &str = "policy.rego";

fn file(dir: &Path) -> PathBuf {
    dir.join(POLICY_FILE)
}

/// Sends `policy` (Rego text) to the agent; once accepted, keeps it in
/// `state_dir`.
pub async fn set(agent: &AgentClient, state_dir: &Path, policy: &str) -> Result<(), Error> {
    agent.set_policy(policy).await?;
    let path = file(state_dir);
    let tmp = path.with_extension("rego.tmp");
    fs::write(&tmp, policy)?;
    Ok(fs::rename(&tmp, &path)?)
}

/// The last policy the host set in the sandbox of `state_dir`; `None` if
/// it never set one (the guest's default policy is in force).
pub fn get(state_dir: &Path) -> Result<Option<String>, Error> {
    let path = file(state_dir);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
