//! SCSI addresses (Kata's `scsi-id:lun`) and where they lead in sysfs.
//!
//! The disk of a virtio-scsi controller appears as
//! `bus/scsi/devices/<host>:0:<id>:<lun>` (channel 0). The kernel finds a
//! hot-plugged disk by itself, but as Kata's agent does, every SCSI host is
//! asked to scan for the address (`class/scsi_host/host*/scan`): that is
//! harmless when the disk is there already.

use std::fmt;
use std::path::{Path, PathBuf};

use super::DeviceError;

/// The SCSI devices, relative to the sysfs root.
const DEVICES: &str = "bus/scsi/devices";
/// The SCSI hosts, relative to the sysfs root.
const HOSTS: &str = "class/scsi_host";

/// A parsed SCSI address: target id and LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiAddr {
    pub id: u16,
    pub lun: u32,
}

impl ScsiAddr {
    pub fn parse(text: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::ScsiAddr(text.to_string());
        let (id, lun) = text.split_once(':').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(id) || !digits(lun) {
            return Err(bad());
        }
        Ok(Self {
            id: id.parse().map_err(|_| bad())?,
            lun: lun.parse().map_err(|_| bad())?,
        })
    }

    /// The device's directory below `sys` if it is there: the first
    /// `<host>:0:<id>:<lun>` entry.
    pub fn device_dir(&self, sys: &Path) -> Result<Option<PathBuf>, DeviceError> {
        let devices = sys.join(DEVICES);
        let suffix = format!(":0:{}:{}", self.id, self.lun);
        let entries = match std::fs::read_dir(&devices) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DeviceError::Sysfs(devices, e)),
        };
        let mut found: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DeviceError::Sysfs(devices.clone(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let host = name.strip_suffix(&suffix);
            if host.is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit())) {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found.into_iter().next())
    }

    /// Asks every SCSI host below `sys` to scan for this address. A host
    /// that refuses is logged.
    pub fn scan(&self, sys: &Path) {
        let hosts = sys.join(HOSTS);
        let Ok(entries) = std::fs::read_dir(&hosts) else {
            tracing::debug!(dir = %hosts.display(), "no SCSI host to scan");
            return;
        };
        let request = format!("0 {} {}", self.id, self.lun);
        for entry in entries.flatten() {
            let scan = entry.path().join("scan");
            if let Err(e) = std::fs::write(&scan, &request) {
                tracing::warn!(file = %scan.display(), error = %e, "cannot scan the SCSI host");
            }
        }
    }
}

impl fmt::Display for ScsiAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.lun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        assert_eq!(ScsiAddr::parse("1:0").unwrap(), ScsiAddr { id: 1, lun: 0 });
        assert_eq!(ScsiAddr::parse("0:7").unwrap().to_string(), "0:7");
        for bad in [
            "", "1", "1:", ":1", "a:0", "1:0:0", "-1:0", "1:+2", "99999:0",
        ] {
            let err = ScsiAddr::parse(bad).unwrap_err();
            assert_eq!(err.to_string(), format!("invalid SCSI address {bad:?}"));
        }
    }

    #[test]
    fn finds_the_device_on_any_host_and_scans_every_host() {
        let sys = tempfile::tempdir().unwrap();
        let addr = ScsiAddr { id: 1, lun: 2 };
        assert_eq!(addr.device_dir(sys.path()).unwrap(), None);
        let devices = sys.path().join(DEVICES);
        for other in ["2:0:1:20", "2:0:11:2", "x2:0:1:2", "target2:0:1"] {
            std::fs::create_dir_all(devices.join(other)).unwrap();
        }
        assert_eq!(addr.device_dir(sys.path()).unwrap(), None);
        std::fs::create_dir_all(devices.join("2:0:1:2")).unwrap();
        assert_eq!(
            addr.device_dir(sys.path()).unwrap(),
            Some(devices.join("2:0:1:2"))
        );

        let hosts = sys.path().join(HOSTS);
        for h in ["host0", "host2"] {
            std::fs::create_dir_all(hosts.join(h)).unwrap();
        }
        addr.scan(sys.path());
        for h in ["host0", "host2"] {
            let req = std::fs::read_to_string(hosts.join(h).join("scan")).unwrap();
            assert_eq!(req, "0 1 2");
        }
    }
}
