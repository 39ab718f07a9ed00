//! `[hypervisor.<driver>]`: one table per driver, as in Kata, whose keys
//! are split in two when it is read: those every driver shares go to one
//! driver-neutral [`VmSettings`], the others to the driver's own settings
//! ([`DriverSettings`]). Both reject keys they do not know, so a table
//! holds exactly the shared keys and its driver's.
//!
//! Adding a driver: its settings struct (a module like [`crate::qemu`]),
//! a variant of [`DriverSettings`] and its arm in
//! [`DriverSettings::from_table`] and [`DriverSettings::name`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::VmSettings;
use crate::qemu::QemuSettings;
use crate::uml::UmlSettings;

/// `[hypervisor]`: the one driver table given (QEMU's when none is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HypervisorConfig {
    /// The keys every driver shares.
    pub vm: VmSettings,
    /// The driver and its own keys.
    pub driver: DriverSettings,
}

impl HypervisorConfig {
    /// The full name of `key` in the driver's table, for messages
    /// (`hypervisor.qemu.default_vcpus`).
    pub fn key(&self, key: &str) -> String {
        format!("hypervisor.{}.{key}", self.driver.name())
    }
}

/// A driver and the keys only it has.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverSettings {
    /// `[hypervisor.qemu]`.
    Qemu(QemuSettings),
    /// `[hypervisor.uml]`: User-Mode Linux.
    Uml(UmlSettings),
}

impl Default for DriverSettings {
    fn default() -> Self {
        Self::Qemu(QemuSettings::default())
    }
}

impl DriverSettings {
    /// The names of the drivers' tables.
    pub const NAMES: &'static [&'static str] = &["qemu", "uml"];

    /// The name of the driver's table (`qemu`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Qemu(_) => "qemu",
            Self::Uml(_) => "uml",
        }
    }

    /// The settings of driver `name` from the keys of its table that are
    /// not shared; `None` for a driver capsa does not have.
    fn from_table(name: &str, table: toml::Table) -> Option<Result<Self, String>> {
        match name {
            "qemu" => Some(typed(name, table).map(Self::Qemu)),
            "uml" => Some(typed(name, table).map(Self::Uml)),
            _ => None,
        }
    }
}

/// The names of the shared keys.
pub(crate) fn shared_keys() -> Vec<String> {
    match toml::Table::try_from(VmSettings::default()) {
        Ok(table) => table.keys().cloned().collect(),
        Err(e) => unreachable!("VmSettings serializes to a table: {e}"),
    }
}

/// `table` as a `T`; an error names the first key that is wrong by itself.
fn typed<T: DeserializeOwned>(driver: &str, table: toml::Table) -> Result<T, String> {
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let alone = |k: &String, v: &toml::Value| {
            let one = toml::Table::from_iter([(k.clone(), v.clone())]);
            T::deserialize(toml::Value::Table(one)).is_err()
        };
        let message = e.to_string().trim_end().replace('\n', " ");
        match table.iter().find(|(k, v)| alone(k, v)) {
            Some((key, _)) => format!("hypervisor.{driver}.{key}: {message}"),
            None => format!("hypervisor.{driver}: {message}"),
        }
    })
}

impl<'de> Deserialize<'de> for HypervisorConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let tables = BTreeMap::<String, toml::Table>::deserialize(deserializer)?;
        if tables.len() > 1 {
            let names: Vec<String> = tables.keys().map(|n| format!("[hypervisor.{n}]")).collect();
            return Err(D::Error::custom(format!(
                "one hypervisor table at most, not {}",
                names.join(" and ")
            )));
        }
        let Some((name, table)) = tables.into_iter().next() else {
            return Ok(Self::default());
        };
        let shared = shared_keys();
        let (vm, own): (toml::Table, toml::Table) =
            table.into_iter().partition(|(k, _)| shared.contains(k));
        let driver = DriverSettings::from_table(&name, own)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "unknown hypervisor `{name}`, expected one of {}",
                    DriverSettings::NAMES.join(", ")
                ))
            })?
            .map_err(D::Error::custom)?;
        let vm = typed(&name, vm).map_err(D::Error::custom)?;
        Ok(Self { vm, driver })
    }
}

/// One driver table: the shared keys, then the driver's.
#[derive(Serialize)]
struct Table<'a, T: Serialize> {
    #[serde(flatten)]
    vm: &'a VmSettings,
    #[serde(flatten)]
    driver: &'a T,
}

impl Serialize for HypervisorConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        let name = self.driver.name();
        let vm = &self.vm;
        match &self.driver {
            DriverSettings::Qemu(driver) => map.serialize_entry(name, &Table { vm, driver })?,
            DriverSettings::Uml(driver) => map.serialize_entry(name, &Table { vm, driver })?,
        }
        map.end()
    }
}

impl DriverSettings {
    /// QEMU's settings, if QEMU is the driver.
    pub fn qemu(&self) -> Option<&QemuSettings> {
        match self {
            Self::Qemu(q) => Some(q),
            Self::Uml(_) => None,
        }
    }
}
