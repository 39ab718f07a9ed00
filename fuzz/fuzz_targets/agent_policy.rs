//! The agent policy's input (`capsa_agent::policy`): any request the host
//! sends, decoded by its method's type, turned into Kata's JSON and
//! decided by a genpolicy-style policy (rules reading nested fields, state
//! kept with `ops`) and by a policy without rules. No panic; a policy
//! without the rule denies; the allow-all policy allows.
#![no_main]

use capsa_agent::policy::{input, AgentPolicy, PolicyError};
use capsa_protocols::agent;
use libfuzzer_sys::fuzz_target;

const RULES: &str = r#"package agent_policy
import rego.v1
default CreateContainerRequest := false
CreateContainerRequest := {"allowed": true, "ops": ops} if {
    every m in input.OCI.Mounts { startswith(m.destination, "/") }
    count(input.OCI.Process.Args) < 100
    ops := [{"op": "add", "path": "/pstate/containers", "value": [input.container_id]}]
}
default ExecProcessRequest := false
ExecProcessRequest if {
    regex.match("^[a-z/ ]*$", concat(" ", input.process.Args))
    not input.process.Terminal
}
default CopyFileRequest := false
CopyFileRequest if { startswith(input.path, "/run/kata-containers/shared/") }
default ReadStreamRequest := true
default WriteStreamRequest := true
"#;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let service = agent::file_descriptor()
        .services()
        .find(|s| s.proto().name() == "AgentService")
        .expect("AgentService");
    let methods: Vec<_> = service.methods().collect();
    let method = &methods[usize::from(selector) % methods.len()];
    let request = method.input_type();
    let Ok(message) = request.parse_from_bytes(payload) else {
        return;
    };
    let json = input::request_json(&*message);
    assert!(json.is_object());
    let mut rules = AgentPolicy::new(RULES).expect("the rules parse");
    match rules.check(request.name(), &json) {
        Ok(()) | Err(PolicyError::Denied { .. }) | Err(PolicyError::Eval { .. }) => {}
        Err(other) => panic!("{other}"),
    }
    let mut empty = AgentPolicy::new("package agent_policy\n").expect("empty policy");
    assert!(matches!(
        empty.check(request.name(), &json),
        Err(PolicyError::Denied { .. })
    ));
    AgentPolicy::allow_all()
        .check(request.name(), &json)
        .expect("allow-all allows");
});
