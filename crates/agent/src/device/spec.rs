//! `Device` messages of CreateContainer: the spec written for the host's
//! device is rewritten for the guest's (as Kata's `update_spec_devices`).
//!
//! The host's spec lists the device at its container path with the host's
//! major:minor, and its device cgroup allows that number. In the guest the
//! same disk has another number: the `linux.devices` entry at the
//! `container_path` gets the guest's, and every `linux.resources.devices`
//! rule of the same type that named the host's number names the guest's.
//! All rewrites are computed from the spec as received, so a guest number
//! that equals another device's host number is not rewritten twice.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::Block;

/// A `Device` message of CreateContainer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequest {
    /// `blk` or `scsi` (Kata's `type`).
    pub kind: String,
    /// The PCI path or the SCSI address.
    pub id: String,
    /// The path of the device's entry in the spec's `linux.devices`.
    pub container_path: String,
    /// Where the host expects it in the guest; may be empty (unused).
    pub vm_path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecDeviceError {
    #[error("device {id:?} ({kind}) has no container path")]
    NoContainerPath { kind: String, id: String },
    #[error("device {id:?} ({kind}): the spec has no linux.devices entry at {container_path:?}")]
    NotInSpec {
        kind: String,
        id: String,
        container_path: String,
    },
}

/// One device's rewrite: the host's number in the spec, the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rewrite {
    typ: LinuxDeviceType,
    host: (i64, i64),
    guest: (i64, i64),
}

/// Rewrites `spec` for `devices` (each request with the device found in
/// the guest); returns one note per device.
pub fn update(
    spec: &mut Spec,
    devices: &[(DeviceRequest, Block)],
) -> Result<Vec<String>, SpecDeviceError> {
    let mut rewrites = Vec::new();
    let mut notes = Vec::new();
    let linux_devices = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.devices_mut().as_mut());
    let mut empty = Vec::new();
    let linux_devices = linux_devices.unwrap_or(&mut empty);
    for (req, block) in devices {
        if req.container_path.is_empty() {
            return Err(SpecDeviceError::NoContainerPath {
                kind: req.kind.clone(),
                id: req.id.clone(),
            });
        }
        let entry = linux_devices
            .iter_mut()
            .find(|d| d.path() == Path::new(&req.container_path))
            .ok_or_else(|| SpecDeviceError::NotInSpec {
                kind: req.kind.clone(),
                id: req.id.clone(),
                container_path: req.container_path.clone(),
            })?;
        let guest = (i64::from(block.major), i64::from(block.minor));
        rewrites.push(Rewrite {
            typ: entry.typ(),
            host: (entry.major(), entry.minor()),
            guest,
        });
        notes.push(format!(
            "device {} is {} ({}:{}, was {}:{} on the host)",
            req.container_path,
            block.node.display(),
            guest.0,
            guest.1,
            entry.major(),
            entry.minor()
        ));
        entry.set_major(guest.0);
        entry.set_minor(guest.1);
    }
    let rules = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.resources_mut().as_mut())
        .and_then(|r| r.devices_mut().as_mut());
    for rule in rules.into_iter().flatten() {
        let (Some(major), Some(minor)) = (rule.major(), rule.minor()) else {
            continue;
        };
        let matching = rewrites
            .iter()
            .find(|r| rule.typ() == Some(r.typ) && r.host == (major, minor));
        if let Some(r) = matching {
            rule.set_major(Some(r.guest.0));
            rule.set_minor(Some(r.guest.1));
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder,
        SpecBuilder,
    };

    fn device(path: &str, major: i64, minor: i64) -> oci_spec::runtime::LinuxDevice {
        LinuxDeviceBuilder::default()
            .path(path)
            .typ(LinuxDeviceType::B)
            .major(major)
            .minor(minor)
            .build()
            .unwrap()
    }

    fn rule(typ: LinuxDeviceType, major: i64, minor: i64) -> oci_spec::runtime::LinuxDeviceCgroup {
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .major(major)
            .minor(minor)
            .access("rwm")
            .build()
            .unwrap()
    }

    fn spec() -> Spec {
        let resources = LinuxResourcesBuilder::default()
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
                rule(LinuxDeviceType::B, 7, 3),
                rule(LinuxDeviceType::C, 7, 3),
                rule(LinuxDeviceType::B, 254, 16),
                rule(LinuxDeviceType::B, 8, 0),
            ])
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .devices(vec![
                device("/dev/xvdb", 7, 3),
                device("/dev/xvdc", 254, 16),
            ])
            .resources(resources)
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    fn found(path: &str, node: &str, major: u32, minor: u32) -> (DeviceRequest, Block) {
        let req = DeviceRequest {
            kind: "blk".into(),
            id: "02/00".into(),
            container_path: path.into(),
            vm_path: String::new(),
        };
        let block = Block {
            node: node.into(),
            major,
            minor,
        };
        (req, block)
    }

    /// A device's path and number.
    type Numbered = (String, i64, i64);

    /// The spec's devices, and the numbers of its cgroup rules.
    fn numbers(spec: &Spec) -> (Vec<Numbered>, Vec<Option<(i64, i64)>>) {
        let linux = spec.linux().as_ref().unwrap();
        let devices = linux.devices().as_ref().unwrap();
        let devices = devices
            .iter()
            .map(|d| (d.path().display().to_string(), d.major(), d.minor()))
            .collect();
        let rules = linux.resources().as_ref().unwrap().devices().as_ref();
        let rules = rules
            .unwrap()
            .iter()
            .map(|r| r.major().zip(r.minor()))
            .collect();
        (devices, rules)
    }

    #[test]
    fn devices_and_their_cgroup_rules_get_the_guest_numbers() {
        let mut spec = spec();
        // xvdb (host 7:3) is 254:16 in the guest, which is xvdc's host
        // number; xvdc (host 254:16) is 254:32.
        let devices = [
            found("/dev/xvdb", "/dev/vdb", 254, 16),
            found("/dev/xvdc", "/dev/vdc", 254, 32),
        ];
        let notes = update(&mut spec, &devices).unwrap();
        assert_eq!(
            notes[0],
            "device /dev/xvdb is /dev/vdb (254:16, was 7:3 on the host)"
        );
        let (devices, rules) = numbers(&spec);
        assert_eq!(
            devices,
            vec![
                ("/dev/xvdb".to_string(), 254, 16),
                ("/dev/xvdc".to_string(), 254, 32)
            ]
        );
        assert_eq!(
            rules,
            vec![
                None,
                Some((254, 16)),
                Some((7, 3)),
                Some((254, 32)),
                Some((8, 0))
            ],
            "the deny-all rule, the char rule and the unrelated rule stay"
        );
    }

    #[test]
    fn a_device_missing_from_the_spec_is_named() {
        let mut spec = spec();
        let err = update(&mut spec, &[found("/dev/xvdz", "/dev/vdb", 254, 16)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device \"02/00\" (blk): the spec has no linux.devices entry at \"/dev/xvdz\""
        );
        let err = update(&mut spec, &[found("", "/dev/vdb", 254, 16)]).unwrap_err();
        assert!(matches!(err, SpecDeviceError::NoContainerPath { .. }));
        let mut bare = SpecBuilder::default().build().unwrap();
        bare.set_linux(None);
        let err = update(&mut bare, &[found("/dev/xvdb", "/dev/vdb", 254, 16)]);
        assert!(matches!(err, Err(SpecDeviceError::NotInSpec { .. })));
    }
}
