//! The policy's `input`: a request as JSON, the way Kata's agent builds it.
//!
//! Kata's agent serialises its generated protobuf structs with serde, so a
//! policy sees:
//! - every field, set or not, under its `.proto` name, with `_` appended
//!   when the name is a Rust keyword (rust-protobuf's escaping:
//!   `Mount.type` is `type_`);
//! - integers (also 64-bit ones) and floats as JSON numbers, enums as their
//!   number, `bytes` as an array of numbers;
//! - an unset message field as `null`, maps as objects;
//! - a `oneof` as one field named after the oneof: `null`, or an object
//!   with one key, the field's name in CamelCase (serde's externally tagged
//!   enum).
//!
//! CopyFileRequest is the exception, as in Kata: the policy sees
//! [`copy_file_input`] (no data; the symlink target as text).
//!
//! This is deliberately not protobuf's canonical JSON mapping (which drops
//! default values, writes 64-bit integers as strings and bytes as base64):
//! policies written for Kata's agent (`genpolicy`) read Kata's form.

use protobuf::reflect::{ReflectFieldRef, ReflectValueRef, RuntimeType};
use protobuf::MessageDyn;
use serde_json::{Map, Value};

use capsa_protocols::agent::CopyFileRequest;

/// rust-protobuf's list of names it escapes with a trailing `_`.
const RUST_KEYWORDS: &[&str] = &[
    "_", "as", "async", "await", "break", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
    "return", "static", "self", "Self", "struct", "super", "true", "trait", "type", "unsafe",
    "use", "while", "continue", "box", "const", "where", "virtual", "proc", "alignof", "become",
    "offsetof", "priv", "pure", "sizeof", "typeof", "unsized", "yield", "do", "abstract", "final",
    "override", "macro",
];

/// The field name a Kata policy reads.
fn field_name(proto_name: &str) -> String {
    if RUST_KEYWORDS.contains(&proto_name) {
        format!("{proto_name}_")
    } else {
        proto_name.to_string()
    }
}

/// `errno_ret` → `ErrnoRet`: the variant name of a oneof member.
fn camel_case(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        })
        .collect()
}

/// `message` as the policy's input (Kata's serde form).
pub fn request_json(message: &dyn MessageDyn) -> Value {
    let descriptor = message.descriptor_dyn();
    if descriptor.name() == "CopyFileRequest" {
        if let Some(copy) = message.downcast_ref::<CopyFileRequest>() {
            return copy_file_input(copy);
        }
    }
    message_json(message)
}

fn message_json(message: &dyn MessageDyn) -> Value {
    let descriptor = message.descriptor_dyn();
    let mut object = Map::new();
    for oneof in descriptor.oneofs().filter(|o| !o.is_synthetic()) {
        object.insert(oneof.name().to_string(), Value::Null);
    }
    for field in descriptor.fields() {
        if let Some(oneof) = field.containing_oneof() {
            if let Some(value) = field.get_singular(message) {
                let mut variant = Map::new();
                variant.insert(camel_case(field.name()), value_json(value));
                object.insert(oneof.name().to_string(), Value::Object(variant));
            }
            continue;
        }
        let value = match field.get_reflect(message) {
            ReflectFieldRef::Optional(optional) => match optional.value() {
                Some(v) => value_json(v),
                None if matches!(field.singular_runtime_type(), RuntimeType::Message(_)) => {
                    Value::Null
                }
                None => value_json(field.get_singular_field_or_default(message)),
            },
            ReflectFieldRef::Repeated(repeated) => {
                Value::Array(repeated.into_iter().map(value_json).collect())
            }
            ReflectFieldRef::Map(map) => Value::Object(
                (&map)
                    .into_iter()
                    .map(|(k, v)| (key_string(k), value_json(v)))
                    .collect(),
            ),
        };
        object.insert(field_name(field.name()), value);
    }
    Value::Object(object)
}

/// A map key as serde_json writes it (numbers and booleans as text).
fn key_string(key: ReflectValueRef) -> String {
    match value_json(key) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn value_json(value: ReflectValueRef) -> Value {
    match value {
        ReflectValueRef::U32(v) => v.into(),
        ReflectValueRef::U64(v) => v.into(),
        ReflectValueRef::I32(v) => v.into(),
        ReflectValueRef::I64(v) => v.into(),
        ReflectValueRef::F32(v) => {
            serde_json::Number::from_f64(v.into()).map_or(Value::Null, Value::Number)
        }
        ReflectValueRef::F64(v) => {
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        ReflectValueRef::Bool(v) => v.into(),
        ReflectValueRef::String(v) => v.into(),
        ReflectValueRef::Bytes(v) => Value::Array(v.iter().map(|b| (*b).into()).collect()),
        ReflectValueRef::Enum(_, v) => v.into(),
        ReflectValueRef::Message(m) => message_json(&*m),
    }
}

/// Kata's `PolicyCopyFileRequest`: the request without its data (which may
/// be large and is no matter of policy), with the file type spelled out and
/// a symlink's target as text.
pub fn copy_file_input(req: &CopyFileRequest) -> Value {
    let file_type = match req.file_mode & libc::S_IFMT {
        libc::S_IFREG => "Regular",
        libc::S_IFDIR => "Directory",
        libc::S_IFLNK => "Symlink",
        _ => "Unknown",
    };
    let symlink_target =
        (file_type == "Symlink").then(|| String::from_utf8_lossy(&req.data).into_owned());
    serde_json::json!({
        "path": req.path,
        "file_type": file_type,
        "symlink_target": symlink_target,
        "file_size": req.file_size,
        "file_mode": req.file_mode,
        "dir_mode": req.dir_mode,
        "uid": req.uid,
        "gid": req.gid,
        "offset": req.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_protocols::{agent, oci};

    #[test]
    fn every_field_under_kata_names() {
        let req = agent::ExecProcessRequest {
            container_id: "c".into(),
            exec_id: "e".into(),
            process: protobuf::MessageField::some(oci::Process {
                Args: vec!["sh".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = request_json(&req);
        assert_eq!(json["container_id"], "c");
        assert_eq!(json["exec_id"], "e");
        assert_eq!(json["string_user"], Value::Null, "unset message: null");
        assert_eq!(json["process"]["Args"][0], "sh");
        assert_eq!(json["process"]["Terminal"], false, "defaults are present");
        assert!(json["process"]["Env"].as_array().unwrap().is_empty());
    }

    #[test]
    fn keywords_get_an_underscore_bytes_are_numbers() {
        let req = agent::CreateContainerRequest {
            OCI: protobuf::MessageField::some(oci::Spec {
                Mounts: vec![oci::Mount {
                    destination: "/d".into(),
                    type_: "bind".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = request_json(&req);
        assert_eq!(json["OCI"]["Mounts"][0]["type_"], "bind");
        let seed = agent::ReseedRandomDevRequest {
            data: vec![1, 255],
            ..Default::default()
        };
        assert_eq!(request_json(&seed)["data"], serde_json::json!([1, 255]));
    }

    #[test]
    fn copy_file_is_kata_policy_form() {
        let req = CopyFileRequest {
            path: "/run/kata-containers/shared/l".into(),
            file_mode: libc::S_IFLNK | 0o777,
            data: b"..data/x".to_vec(),
            ..Default::default()
        };
        let json = request_json(&req);
        assert_eq!(json["file_type"], "Symlink");
        assert_eq!(json["symlink_target"], "..data/x");
        assert!(json.get("data").is_none());
    }
}
