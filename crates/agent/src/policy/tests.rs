use serde_json::json;

use super::*;

fn policy(text: &str) -> AgentPolicy {
    AgentPolicy::new(text).unwrap()
}

fn denied(r: Result<(), PolicyError>) -> String {
    match r {
        Err(e @ PolicyError::Denied { .. }) => e.to_string(),
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn allow_all_allows_every_request() {
    let mut p = AgentPolicy::allow_all();
    for request in [
        "CreateContainerRequest",
        "ExecProcessRequest",
        "SetPolicyRequest",
    ] {
        p.check(request, &json!({})).unwrap();
    }
}

#[test]
fn every_request_of_the_api_is_in_allow_all() {
    let service = capsa_protocols::agent::file_descriptor()
        .services()
        .find(|s| s.proto().name() == "AgentService")
        .unwrap();
    let mut p = AgentPolicy::allow_all();
    for method in service.methods() {
        let request = method.input_type().name().to_string();
        p.check(&request, &json!({}))
            .unwrap_or_else(|e| panic!("{request}: {e}"));
    }
}

#[test]
fn an_undefined_rule_denies_and_names_the_rule() {
    let mut p = policy("package agent_policy\ndefault CreateContainerRequest := true\n");
    p.check("CreateContainerRequest", &json!({})).unwrap();
    assert_eq!(
        denied(p.check("ExecProcessRequest", &json!({}))),
        "ExecProcessRequest is blocked by policy (no rule data.agent_policy.ExecProcessRequest in the policy)"
    );
}

#[test]
fn rules_read_the_input() {
    let mut p = policy(
        r#"package agent_policy
import rego.v1
default ExecProcessRequest := false
ExecProcessRequest if input.process.Args[0] == "ls"
"#,
    );
    p.check("ExecProcessRequest", &json!({"process": {"Args": ["ls"]}}))
        .unwrap();
    assert_eq!(
        denied(p.check("ExecProcessRequest", &json!({"process": {"Args": ["sh"]}}))),
        "ExecProcessRequest is blocked by policy"
    );
}

#[test]
fn rego_v0_policies_still_load() {
    let mut p = policy(
        "package agent_policy\nimport future.keywords.in\ndefault ExecProcessRequest = false\nExecProcessRequest { \"ls\" in input.process.Args }\n",
    );
    p.check("ExecProcessRequest", &json!({"process": {"Args": ["ls"]}}))
        .unwrap();
}

#[test]
fn state_is_kept_with_ops_only_when_allowed() {
    // One container may be created; the second is refused.
    let mut p = policy(
        r#"package agent_policy
import rego.v1
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/created", "value": true}]} if {
    not data.pstate.created
}
CreateContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/refused", "value": true}]} if {
    data.pstate.created
}
"#,
    );
    p.check("CreateContainerRequest", &json!({})).unwrap();
    denied(p.check("CreateContainerRequest", &json!({})));
    let data = serde_json::to_value(p.engine.get_data()).unwrap();
    assert_eq!(
        data["pstate"],
        json!({"created": true}),
        "ops of a denial are not applied"
    );
}

#[test]
fn bad_policies_are_refused_with_the_parser_message() {
    let e = AgentPolicy::new("package agent_policy\nExecProcessRequest := {\n").unwrap_err();
    assert!(matches!(e, PolicyError::Parse(_)), "{e}");
    assert!(
        e.to_string().starts_with("the policy does not parse: "),
        "{e}"
    );
    let e = AgentPolicy::new("package other\ndefault ExecProcessRequest := true\n").unwrap_err();
    assert!(matches!(e, PolicyError::NoPackage), "{e}");
    let big = format!("package agent_policy\n# {}\n", "x".repeat(MAX_POLICY_BYTES));
    assert!(matches!(
        AgentPolicy::new(&big),
        Err(PolicyError::TooLarge(_))
    ));
}

#[test]
fn results_of_another_type_are_engine_errors() {
    let mut p = policy("package agent_policy\nExecProcessRequest := 3\n");
    let e = p.check("ExecProcessRequest", &json!({})).unwrap_err();
    assert!(matches!(e, PolicyError::Eval { .. }), "{e}");
}

#[test]
fn a_runaway_evaluation_is_stopped() {
    // Nine million comparisons: far over the limit.
    let mut p = policy(
        r#"package agent_policy
import rego.v1
ExecProcessRequest if {
    count([x | some x in numbers.range(1, 3000); some y in numbers.range(1, 3000); x > y + 5000]) == 0
}
"#,
    );
    let e = p.check("ExecProcessRequest", &json!({})).unwrap_err();
    assert!(matches!(e, PolicyError::Eval { .. }), "{e}");
}

#[test]
fn allow_requests_failing_policy_turns_denials_into_warnings() {
    let mut p = policy("package agent_policy\ndefault AllowRequestsFailingPolicy := true\n");
    p.check("ExecProcessRequest", &json!({})).unwrap();
}
