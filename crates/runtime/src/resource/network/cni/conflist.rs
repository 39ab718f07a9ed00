//! A CNI network configuration list (`.conflist`): a named chain of
//! plugin configurations run in order on ADD and in reverse on DEL.

use std::path::Path;

use serde_json::{Map, Value};

use super::CniError;

/// The network configuration list that `capsa run --network bridge` uses
/// when none is installed: the bridge `capsa0` with host-local addresses
/// from 10.4.0.0/24 (apart from containerd's 10.88.0.0/16 and podman's
/// 10.88.0.0/16 and 10.89.0.0/24), NAT to the outside, and portmap for
/// `-p`.
pub const DEFAULT_CONFLIST: &str = include_str!("capsa-bridge.conflist");

/// A parsed, checked configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflist {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's configuration object, as written (it has a `type`).
    pub plugins: Vec<Map<String, Value>>,
}

impl Conflist {
    /// Parses a configuration list; `origin` (a file, "built-in") names it
    /// in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CniError> {
        let bad = |why: String| CniError::BadConflist {
            origin: origin.into(),
            why,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let Value::Object(mut list) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let string = |list: &Map<String, Value>, key: &str| match list.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(bad(format!("no {key:?} string"))),
        };
        let name = string(&list, "name")?;
        let cni_version = string(&list, "cniVersion")?;
        let Some(Value::Array(plugins)) = list.remove("plugins") else {
            return Err(bad("no \"plugins\" array".into()));
        };
        if plugins.is_empty() {
            return Err(bad("\"plugins\" is empty".into()));
        }
        let plugins = plugins
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::Object(p) if valid_type(p.get("type")) => Ok(p),
                _ => Err(bad(format!(
                    "plugin {i} is not an object with a plugin \"type\" (a file name)"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name,
            cni_version,
            plugins,
        })
    }

    /// Reads and parses the configuration list in `path`.
    pub fn load(path: &Path) -> Result<Self, CniError> {
        let text = std::fs::read_to_string(path).map_err(|source| CniError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The configuration plugin `index` gets on stdin: its own object with
    /// the list's `name` and `cniVersion`, the previous result, and the
    /// runtime's values for the capabilities it declares.
    pub fn plugin_config(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        runtime: &Map<String, Value>,
    ) -> Value {
        let mut conf = self.plugins[index].clone();
        conf.insert("name".into(), self.name.clone().into());
        conf.insert("cniVersion".into(), self.cni_version.clone().into());
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let wanted: Map<String, Value> = runtime
            .iter()
            .filter(|(cap, _)| {
                conf.get("capabilities")
                    .and_then(|c| c.get(cap.as_str()))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !wanted.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(wanted));
        }
        Value::Object(conf)
    }

    /// Plugin `index`'s type: the executable's file name.
    pub fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether a plugin of the list takes `capability` (`portMappings`).
    pub fn has_capability(&self, capability: &str) -> bool {
        self.plugins.iter().any(|p| {
            p.get("capabilities")
                .and_then(|c| c.get(capability))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
    }

    /// The list as JSON again (what a record keeps).
    pub fn to_value(&self) -> Value {
        let mut list = Map::new();
        list.insert("cniVersion".into(), self.cni_version.clone().into());
        list.insert("name".into(), self.name.clone().into());
        list.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().cloned().map(Value::Object).collect()),
        );
        Value::Object(list)
    }
}

/// A plugin type is a file name in a plugin directory: no path.
fn valid_type(t: Option<&Value>) -> bool {
    matches!(t, Some(Value::String(s))
        if !s.is_empty() && s != "." && s != ".." && !s.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_list_parses() {
        let list = Conflist::parse(DEFAULT_CONFLIST, "built-in").unwrap();
        assert_eq!(list.name, "capsa");
        let types: Vec<_> = (0..list.plugins.len())
            .map(|i| list.plugin_type(i))
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert!(list.has_capability("portMappings"));
        assert_eq!(list.plugins[0]["bridge"], "capsa0");
        let back = Conflist::parse(&list.to_value().to_string(), "again").unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn each_plugin_gets_name_version_previous_result_and_its_capabilities() {
        let list = Conflist::parse(DEFAULT_CONFLIST, "built-in").unwrap();
        let mut runtime = Map::new();
        runtime.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080}]),
        );
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": []});
        let bridge = list.plugin_config(0, None, &runtime);
        assert_eq!(bridge["name"], "capsa");
        assert_eq!(bridge["cniVersion"], list.cni_version);
        assert!(bridge.get("prevResult").is_none());
        assert!(bridge.get("runtimeConfig").is_none(), "{bridge}");
        let portmap = list.plugin_config(1, Some(&prev), &runtime);
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
    }

    #[test]
    fn bad_lists_are_refused_naming_their_origin() {
        for (text, why) in [
            ("[", "EOF"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "name",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
                "cniVersion",
            ),
            (r#"{"name":"n","cniVersion":"1.0.0"}"#, "plugins"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#, "empty"),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../sbin/x"}]}"#,
                "plugin 0",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{}]}"#,
                "plugin 0",
            ),
        ] {
            let err = Conflist::parse(text, "/etc/x.conflist")
                .unwrap_err()
                .to_string();
            assert!(err.contains("/etc/x.conflist"), "{err}");
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
