//! The agent policy: a Rego policy, evaluated in process with `regorus`,
//! decides every request of the agent API (Kata's agent policy).
//!
//! - The rule of a request is `data.agent_policy.<request message name>`
//!   (`CreateContainerRequest`, `ExecProcessRequest`, ...), its `input` the
//!   request as JSON in Kata's form ([`input`]).
//! - A rule evaluates to a boolean, or to an object `{allowed, ops}` whose
//!   `ops` (JSON-patch operations) change the policy's `data` when the
//!   request is allowed: policies keep state there (`data.pstate`, empty at
//!   first), as genpolicy's do.
//! - An undefined rule denies (fail closed); a denial is `PERMISSION_DENIED`
//!   ("`<Rule> is blocked by policy`"); an engine error (a builtin failing
//!   in strict mode, the time limit, a result of another type) is
//!   `INTERNAL`.
//! - `SetPolicy` is itself decided by the current policy
//!   (`SetPolicyRequest`), so a policy can lock itself.
//! - Bounds: [`MAX_POLICY_BYTES`], [`MAX_LINE_BYTES`], [`MAX_LINES`] on a
//!   policy's text, [`EVAL_TIME_LIMIT`] on each evaluation.
//! - Kata's `AllowRequestsFailingPolicy` (a policy that sets it to `true`
//!   turns denials into warnings, for debugging) is honoured.

pub mod guard;
pub mod input;

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use capsa_protocols::policy::{rule, ALLOW_ALL, DEFAULT_POLICY_PATH, PACKAGE};
use regorus::utils::limits::{ExecutionTimerConfig, PolicyLengthConfig};
use serde_json::Value;

/// The largest policy text accepted, bytes. genpolicy's policies are some
/// hundred KiB; a Kubernetes annotation (base64) holds at most 256 KiB.
pub const MAX_POLICY_BYTES: usize = 2 * 1024 * 1024;
/// The longest line of a policy, bytes (genpolicy writes long lines of
/// data, e.g. environment variables of CUDA images over 1 KiB).
pub const MAX_LINE_BYTES: u32 = 64 * 1024;
/// The most lines of a policy.
pub const MAX_LINES: usize = 100_000;
/// The longest one evaluation may take (checked by the engine as it
/// works): a policy that loops is an error, not a hung agent.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_secs(2);
/// Overrides [`DEFAULT_POLICY_PATH`] (tests of the agent on a host).
pub const POLICY_FILE_ENV: &str = "CAPSA_AGENT_POLICY_FILE";

/// The source name of the policy in the engine.
const SOURCE: &str = "agent_policy.rego";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is {0} bytes, more than the {MAX_POLICY_BYTES} allowed")]
    TooLarge(usize),
    #[error("the policy does not parse: {0}")]
    Parse(String),
    #[error("the policy has no package {PACKAGE}")]
    NoPackage,
    /// The request is denied: names the rule.
    #[error("{rule} is blocked by policy{detail}")]
    Denied { rule: String, detail: String },
    #[error("policy evaluation of {rule} failed: {message}")]
    Eval { rule: String, message: String },
}

impl PolicyError {
    fn eval(rule: &str, message: impl ToString) -> Self {
        Self::Eval {
            rule: rule.to_string(),
            message: message.to_string(),
        }
    }
}

/// A rule's answer as Kata's agent reads it.
#[derive(serde::Deserialize)]
struct Verdict {
    allowed: bool,
    #[serde(default)]
    ops: Option<json_patch::Patch>,
}

/// The policy in force and its state.
pub struct AgentPolicy {
    engine: regorus::Engine,
    allow_failures: bool,
    /// The policy's text, for `capsa policy get` and logs.
    text: String,
}

impl std::fmt::Debug for AgentPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPolicy")
            .field("bytes", &self.text.len())
            .field("allow_failures", &self.allow_failures)
            .finish()
    }
}

fn new_engine(rego_v0: bool) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(rego_v0);
    // As Kata: a builtin's error makes its expression undefined.
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    engine.set_policy_length_config(PolicyLengthConfig {
        max_col: NonZeroU32::new(MAX_LINE_BYTES).expect("non-zero"),
        max_file_bytes: NonZeroUsize::new(MAX_POLICY_BYTES).expect("non-zero"),
        max_lines: NonZeroUsize::new(MAX_LINES).expect("non-zero"),
    });
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(64).expect("non-zero"),
    });
    engine
        .add_data(regorus::Value::from(serde_json::json!({ "pstate": {} })))
        .expect("an object is valid data");
    engine
}

impl AgentPolicy {
    /// A policy from its Rego text: refused if it is too large, does not
    /// parse (the parser's message), or has no `agent_policy` package.
    /// Rego v1 first (regorus' default, and what genpolicy writes), then v0
    /// for older policies.
    pub fn new(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let mut engine = new_engine(false);
        let packages = match engine.add_policy(SOURCE.into(), text.into()) {
            Ok(package) => vec![package],
            Err(v1) => {
                engine = new_engine(true);
                match engine.add_policy(SOURCE.into(), text.into()) {
                    Ok(package) => vec![package],
                    Err(_) => return Err(PolicyError::Parse(v1.to_string())),
                }
            }
        };
        if !packages.iter().any(|p| p == &format!("data.{PACKAGE}")) {
            return Err(PolicyError::NoPackage);
        }
        let mut policy = Self {
            engine,
            allow_failures: false,
            text: text.to_string(),
        };
        policy.allow_failures = matches!(
            policy.evaluate(
                "AllowRequestsFailingPolicy",
                &Value::Object(Default::default())
            ),
            Ok(Some(Verdict { allowed: true, .. }))
        );
        if policy.allow_failures {
            tracing::warn!("the policy sets AllowRequestsFailingPolicy: denials are only logged");
        }
        Ok(policy)
    }

    /// Allows every request.
    pub fn allow_all() -> Self {
        Self::new(ALLOW_ALL).expect("the built-in policy is valid")
    }

    /// The policy the agent starts with: the file [`DEFAULT_POLICY_PATH`]
    /// (or `$CAPSA_AGENT_POLICY_FILE`). Without the file (an agent on a
    /// host, an initrd built before policies) the built-in allow-all
    /// policy, which is what the file holds; a file that cannot be read
    /// or does not parse leaves a policy that denies everything.
    pub fn load_default() -> Self {
        let path = std::env::var(POLICY_FILE_ENV).unwrap_or_else(|_| DEFAULT_POLICY_PATH.into());
        match std::fs::read_to_string(&path) {
            Ok(text) => match Self::new(&text) {
                Ok(policy) => {
                    tracing::info!(%path, bytes = text.len(), "agent policy loaded");
                    policy
                }
                Err(e) => {
                    tracing::error!(%path, "agent policy refused, denying every request: {e}");
                    Self::deny_all()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(%path, "no agent policy file: every request is allowed");
                Self::allow_all()
            }
            Err(e) => {
                tracing::error!(%path, "cannot read the agent policy, denying every request: {e}");
                Self::deny_all()
            }
        }
    }

    /// Defines no rule: every request is denied.
    fn deny_all() -> Self {
        Self::new(&format!("package {PACKAGE}\n")).expect("an empty package is valid")
    }

    /// The policy's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the rule of `request` (a message name) on `input`; `None`
    /// if the rule is undefined.
    fn evaluate(&mut self, request: &str, input: &Value) -> Result<Option<Verdict>, PolicyError> {
        self.engine.set_input(regorus::Value::from(input.clone()));
        let results = self
            .engine
            .eval_query(rule(request), false)
            .map_err(|e| PolicyError::eval(request, e))?;
        let value = match results.result.as_slice() {
            [] => return Ok(None),
            [one] => match one.expressions.as_slice() {
                [expr] => &expr.value,
                _ => return Err(PolicyError::eval(request, "not one expression")),
            },
            _ => return Err(PolicyError::eval(request, "more than one result")),
        };
        match value {
            regorus::Value::Undefined => Ok(None),
            regorus::Value::Bool(allowed) => Ok(Some(Verdict {
                allowed: *allowed,
                ops: None,
            })),
            regorus::Value::Object(_) => {
                let json =
                    serde_json::to_value(value).map_err(|e| PolicyError::eval(request, e))?;
                serde_json::from_value(json)
                    .map(Some)
                    .map_err(|e| PolicyError::eval(request, format!("result {value}: {e}")))
            }
            other => Err(PolicyError::eval(
                request,
                format!("result {other} is neither a boolean nor {{allowed, ops}}"),
            )),
        }
    }

    /// Decides a request of type `request` (its message name) with `input`
    /// (see [`input::request_json`]). Allowed: the rule's `ops` are applied
    /// to the policy's data.
    pub fn check(&mut self, request: &str, input: &Value) -> Result<(), PolicyError> {
        let verdict = self.evaluate(request, input);
        let prints = self.engine.take_prints().unwrap_or_default().join(" ");
        let detail = |what: &str| {
            if prints.is_empty() {
                what.to_string()
            } else {
                format!("{what}: {prints}")
            }
        };
        let denied = match verdict? {
            Some(Verdict { allowed: true, ops }) => {
                if let Some(ops) = ops {
                    self.apply(request, &ops)?;
                }
                return Ok(());
            }
            Some(Verdict { allowed: false, .. }) => PolicyError::Denied {
                rule: request.to_string(),
                detail: detail(""),
            },
            None => PolicyError::Denied {
                rule: request.to_string(),
                detail: detail(&format!(" (no rule {} in the policy)", rule(request))),
            },
        };
        if self.allow_failures {
            tracing::warn!("{denied} (ignored: AllowRequestsFailingPolicy)");
            return Ok(());
        }
        Err(denied)
    }

    /// Applies a rule's JSON-patch operations to the policy's data.
    fn apply(&mut self, request: &str, ops: &json_patch::Patch) -> Result<(), PolicyError> {
        let mut data = serde_json::to_value(self.engine.get_data())
            .map_err(|e| PolicyError::eval(request, e))?;
        json_patch::patch(&mut data, ops)
            .map_err(|e| PolicyError::eval(request, format!("ops: {e}")))?;
        self.engine.clear_data();
        self.engine
            .add_data(regorus::Value::from(data))
            .map_err(|e| PolicyError::eval(request, e))
    }
}

#[cfg(test)]
mod tests;
