//! `-p HOSTPORT:CONTAINERPORT[/tcp|/udp]`: a port of the host forwarded
//! to the container by the `portmap` plugin (its `portMappings`
//! capability).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One entry of CNI's `runtimeConfig.portMappings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("port mapping {s:?}: {why} (HOSTPORT:CONTAINERPORT[/tcp|/udp])");
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, proto @ ("tcp" | "udp"))) => (ports, proto),
            Some(_) => return Err(bad("the protocol is not tcp or udp")),
            None => (s, "tcp"),
        };
        let Some((host, container)) = ports.split_once(':') else {
            return Err(bad("no ':' between the ports"));
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("{p:?} is not a port (1-65535)"))),
        };
        Ok(Self {
            host_port: port(host)?,
            container_port: port(container)?,
            protocol: protocol.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse() {
        assert_eq!(
            "8080:80".parse(),
            Ok(PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into()
            })
        );
        let udp: PortMapping = "53:5353/udp".parse().unwrap();
        assert_eq!((udp.host_port, udp.container_port), (53, 5353));
        assert_eq!(udp.protocol, "udp");
        let json = serde_json::to_value(&udp).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"hostPort": 53, "containerPort": 5353, "protocol": "udp"})
        );
    }

    #[test]
    fn bad_mappings_are_refused_naming_the_input() {
        for s in [
            "8080",
            "8080:",
            ":80",
            "0:80",
            "70000:80",
            "a:80",
            "8080:80/sctp",
            "1.2.3.4:80:80",
        ] {
            let err = s.parse::<PortMapping>().unwrap_err();
            assert!(err.contains(&format!("{s:?}")), "{s}: {err}");
        }
    }
}
