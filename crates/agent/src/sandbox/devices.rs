//! `Device` messages of CreateContainer: each device is waited for in the
//! guest, then the spec is rewritten for the guest's numbers.

use oci_spec::runtime::Spec;

use super::SandboxError;
use crate::device::spec::{self as devspec, DeviceRequest};
use crate::device::{self, Source};

/// Finds every device of `requests` (in order, each bounded by the hotplug
/// timeout) and rewrites `spec` for them; returns the notes to log.
pub(super) async fn apply(
    spec: &mut Spec,
    requests: Vec<DeviceRequest>,
) -> Result<Vec<String>, SandboxError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let found = tokio::task::spawn_blocking(move || {
        let system = device::System::guest();
        let mut found = Vec::with_capacity(requests.len());
        for (index, req) in requests.into_iter().enumerate() {
            let block = Source::parse(&req.kind, &req.id)
                .and_then(|source| system.wait(&source, device::hotplug_timeout()))
                .map_err(|source| SandboxError::Device {
                    index,
                    id: req.id.clone(),
                    source,
                })?;
            found.push((req, block));
        }
        Ok::<_, SandboxError>(found)
    })
    .await??;
    Ok(devspec::update(spec, &found)?)
}
