//! `[hypervisor.uml]`: the keys only the User-Mode Linux driver has (its
//! constraints are checked by the driver, `capsa-hypervisor`'s `uml`
//! module). The shared keys mean what they mean for every driver; for
//! UML, `kernel` is the UML kernel, which is both the hypervisor and the
//! guest's kernel.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The User-Mode Linux driver's own keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UmlSettings {
    /// The vhost-user vsock backend (UML has no vhost-vsock).
    pub vhost_user_vsock_daemon: PathBuf,
    /// capsa's own keys: the unprivileged host uid and gid (not 0) the
    /// UML kernel, its guest processes and its helpers run as, in their
    /// jails.
    pub jail_uid: u32,
    pub jail_gid: u32,
}

impl Default for UmlSettings {
    fn default() -> Self {
        Self {
            vhost_user_vsock_daemon: "/usr/local/bin/vhost-device-vsock".into(),
            jail_uid: 1_900_000,
            jail_gid: 1_900_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::DriverSettings;

    #[test]
    fn the_table_selects_uml_its_keys_split_from_the_shared_ones() {
        let text =
            "[hypervisor.uml]\nkernel = \"/k/linux-uml\"\ndefault_memory = 256\njail_uid = 1234\n";
        let c = crate::parse(text, Path::new("/c.toml")).unwrap();
        assert_eq!(c.hypervisor.driver.name(), "uml");
        assert_eq!(c.hypervisor.key("jail_uid"), "hypervisor.uml.jail_uid");
        assert_eq!(c.hypervisor.vm.kernel, Path::new("/k/linux-uml"));
        assert_eq!(c.hypervisor.vm.default_memory, 256);
        let DriverSettings::Uml(u) = &c.hypervisor.driver else {
            panic!("not UML: {:?}", c.hypervisor.driver);
        };
        assert_eq!((u.jail_uid, u.jail_gid), (1234, 1_900_000));
        // Printed, it reads back the same, in one `[hypervisor.uml]`.
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("[hypervisor.uml]"), "{printed}");
        assert_eq!(crate::parse(&printed, Path::new("/c.toml")).unwrap(), c);
        // Nothing of UML is a shared key, and QEMU's keys are not UML's.
        let shared = crate::driver::shared_keys();
        let own = toml::Table::try_from(UmlSettings::default()).unwrap();
        assert!(own.keys().all(|k| !shared.contains(k)), "{own:?}");
        let err = crate::parse(
            "[hypervisor.uml]\nmachine_type = \"q35\"\n",
            Path::new("/c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("machine_type"), "{err}");
    }
}
