//! containerd's runtime options for non-runc runtimes
//! (`runtimeoptions.v1.Options`: `type_url` = 1, `config_path` = 2,
//! `config_body` = 3), as the CRI plugin sends them from
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>.options]`.
//! Decoded by hand: the message is not among the `containerd-shim-protos`
//! types.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

/// `ConfigPath` of the runtime options, if set.
pub fn config_path(options: Option<&Any>) -> Option<PathBuf> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == 2 {
            let path = input.read_string().ok()?;
            return (!path.is_empty()).then(|| PathBuf::from(path));
        }
        let wire_type = containerd_shim::protos::protobuf::rt::WireType::new(wire)?;
        input.skip_field(wire_type).ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(fields: &[(u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, s) in fields {
            out.push(((n << 3) | 2) as u8);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    #[test]
    fn reads_config_path() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: encode(&[(1, "x"), (2, "/etc/capsa/c.toml")]),
            ..Default::default()
        };
        assert_eq!(
            config_path(Some(&any)),
            Some(PathBuf::from("/etc/capsa/c.toml"))
        );
    }

    #[test]
    fn other_options_give_nothing() {
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: encode(&[(2, "/x")]),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&any)), None);
        assert_eq!(config_path(None), None);
        let empty = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: encode(&[(1, "t")]),
            ..Default::default()
        };
        assert_eq!(config_path(Some(&empty)), None);
    }
}
