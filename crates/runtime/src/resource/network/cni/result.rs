//! What a CNI plugin prints: a result on success, an error object on
//! failure (CNI spec, "Result Types"). Decoded leniently: fields capsa
//! does not use are ignored, unknown versions too.

use serde::Deserialize;

/// A plugin's successful ADD result (only what capsa reads of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for an interface in the container, empty on the host.
    #[serde(default)]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// `10.4.0.2/24`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteConfig {
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
}

/// A plugin's error object (exit status non-zero).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// What a failed plugin said: its error object, else its output as text
/// (bounded: a plugin is not trusted to be brief).
pub fn describe_failure(stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<PluginError>(stdout) {
        return e.to_string();
    }
    let text = [stdout, stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    const MAX: usize = 500;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "no output".into(),
        None => text,
    }
}

impl CniResult {
    /// The container side's first address (`10.4.0.2/24`), if any.
    pub fn container_address(&self) -> Option<&str> {
        self.ips
            .iter()
            .find(|ip| {
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_none_or(|i| !i.sandbox.is_empty())
            })
            .map(|ip| ip.address.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_result_is_read() {
        let text = r#"{"cniVersion":"1.0.0","interfaces":[
            {"name":"capsa0","mac":"aa:bb:cc:00:00:01"},
            {"name":"veth1234","mac":"aa:bb:cc:00:00:02"},
            {"name":"eth0","mac":"aa:bb:cc:00:00:03","sandbox":"/run/capsa/x/netns"}],
            "ips":[{"interface":2,"address":"10.4.0.2/24","gateway":"10.4.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let r: CniResult = serde_json::from_str(text).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.container_address(), Some("10.4.0.2/24"));
        assert_eq!(r.ips[0].gateway.as_deref(), Some("10.4.0.1"));
        assert_eq!(r.routes[0].dst, "0.0.0.0/0");
    }

    #[test]
    fn an_old_result_without_interface_indexes_is_read() {
        let text =
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.4.0.9/24"}],"future":1}"#;
        let r: CniResult = serde_json::from_str(text).unwrap();
        assert_eq!(r.container_address(), Some("10.4.0.9/24"));
    }

    #[test]
    fn a_plugin_error_names_code_message_and_details() {
        let out = br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}"#;
        let said = describe_failure(out, b"");
        assert_eq!(said, "code 11: failed to allocate (range full)");
        assert_eq!(describe_failure(b"", b"  boom\n"), "boom");
        assert_eq!(describe_failure(b"", b""), "no output");
        let long = "x".repeat(2000);
        assert!(describe_failure(long.as_bytes(), b"").chars().count() <= 501);
    }
}
