//! Generates the agent API (messages and async ttRPC services) from our own
//! `.proto` files with the pure-Rust parser (no `protoc` needed).

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &[
    "protos/agent.proto",
    "protos/oci.proto",
    "protos/types.proto",
    "protos/health.proto",
    "protos/tracing.proto",
    "protos/cgroups_v2.proto",
];

fn main() {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Codegen::new()
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generate the agent protocol");
    strip_inner_attributes();
}

/// The generated files start with inner attributes (`#![allow(...)]`), which
/// `include!` cannot take; `src/lib.rs` puts the same allowances on the
/// modules that include them.
fn strip_inner_attributes() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for entry in std::fs::read_dir(&out).expect("read OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read generated file");
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
                .collect();
            std::fs::write(&path, kept.join("\n")).expect("write generated file");
        }
    }
}
