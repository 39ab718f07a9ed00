//! PCI paths (Kata's notation) and where they lead in sysfs.
//!
//! A PCI path names a device by the slot of each device from the root bus
//! down, two hex digits each, separated by `/`: `02/00` is the device in
//! slot 0 of the bus behind the bridge (a PCIe root port) in slot 2 of the
//! root bus. Functions are always 0. In sysfs the root bus is
//! `devices/pci0000:00`; the bus behind a bridge is the one entry of the
//! bridge's `pci_bus` directory.

use std::fmt;
use std::path::{Path, PathBuf};

use super::DeviceError;

/// The root bus, relative to the sysfs root.
const ROOT_BUS: &str = "devices/pci0000:00";
/// The PCI domain of every device.
const DOMAIN: &str = "0000";
/// Slots are five bits.
const MAX_SLOT: u8 = 0x1f;
/// Deepest path accepted (a device behind a few bridges).
const MAX_DEPTH: usize = 8;

/// A parsed PCI path: the slots from the root bus down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPath(Vec<u8>);

impl PciPath {
    pub fn parse(text: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::PciPath(text.to_string());
        let slots = text
            .split('/')
            .map(|s| {
                if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                u8::from_str_radix(s, 16)
                    .ok()
                    .filter(|slot| *slot <= MAX_SLOT)
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if slots.len() > MAX_DEPTH {
            return Err(bad());
        }
        Ok(Self(slots))
    }

    /// The device's directory below `sys`, if every bridge on the way is
    /// there (`None` while the device or a bus is missing).
    pub fn device_dir(&self, sys: &Path) -> Result<Option<PathBuf>, DeviceError> {
        let mut dir = sys.join(ROOT_BUS);
        let mut bus = "00".to_string();
        for (depth, slot) in self.0.iter().enumerate() {
            dir.push(format!("{DOMAIN}:{bus}:{slot:02x}.0"));
            if !dir.is_dir() {
                return Ok(None);
            }
            if depth + 1 < self.0.len() {
                match secondary_bus(&dir)? {
                    Some(b) => bus = b,
                    None => return Ok(None),
                }
            }
        }
        Ok(Some(dir))
    }
}

/// The bus behind bridge `dir`: its `pci_bus` directory holds one entry,
/// `0000:<bus>`.
fn secondary_bus(dir: &Path) -> Result<Option<String>, DeviceError> {
    let pci_bus = dir.join("pci_bus");
    let entries = match std::fs::read_dir(&pci_bus) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DeviceError::Sysfs(pci_bus, e)),
    };
    let mut buses = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DeviceError::Sysfs(pci_bus.clone(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.strip_prefix(&format!("{DOMAIN}:")) {
            Some(bus) if bus.len() == 2 => buses.push(bus.to_string()),
            _ => {}
        }
    }
    match buses.as_slice() {
        [] => Ok(None),
        [bus] => Ok(Some(bus.clone())),
        _ => Err(DeviceError::Buses(pci_bus, buses)),
    }
}

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots: Vec<String> = self.0.iter().map(|s| format!("{s:02x}")).collect();
        f.write_str(&slots.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print_back() {
        let p = PciPath::parse("02/00").unwrap();
        assert_eq!(p, PciPath(vec![2, 0]));
        assert_eq!(p.to_string(), "02/00");
        assert_eq!(PciPath::parse("1f").unwrap().to_string(), "1f");
        for bad in ["", "2/0", "02/", "/02", "20", "zz", "02/00/", "002", "+1"] {
            let err = PciPath::parse(bad).unwrap_err();
            assert_eq!(err.to_string(), format!("invalid PCI path {bad:?}"));
        }
        assert!(PciPath::parse(&["01"; 9].join("/")).is_err(), "too deep");
    }

    #[test]
    fn walks_bridges_through_their_secondary_bus() {
        let sys = tempfile::tempdir().unwrap();
        let port = sys.path().join("devices/pci0000:00/0000:00:02.0");
        let path = PciPath::parse("02/00").unwrap();
        assert_eq!(path.device_dir(sys.path()).unwrap(), None, "no bridge");
        std::fs::create_dir_all(port.join("pci_bus/0000:03")).unwrap();
        assert_eq!(path.device_dir(sys.path()).unwrap(), None, "no device");
        std::fs::create_dir_all(port.join("0000:03:00.0")).unwrap();
        assert_eq!(
            path.device_dir(sys.path()).unwrap(),
            Some(port.join("0000:03:00.0"))
        );
        let root = PciPath::parse("02").unwrap();
        assert_eq!(root.device_dir(sys.path()).unwrap(), Some(port.clone()));

        std::fs::create_dir_all(port.join("pci_bus/0000:04")).unwrap();
        let err = path.device_dir(sys.path()).unwrap_err().to_string();
        assert!(err.contains("pci_bus") && err.contains("03"), "{err}");
    }
}
