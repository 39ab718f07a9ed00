//! The last step in the container's init process, right before `execve`.

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};

/// libcontainer's default executor, after restoring default signal
/// dispositions: the Rust runtime of the agent ignores `SIGPIPE`, and an
/// ignored signal stays ignored across `execve`, so without this the
/// workload would never die of a broken pipe.
#[derive(Clone)]
pub struct WorkloadExecutor;

impl Executor for WorkloadExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // SAFETY: restoring SIG_DFL installs no handler; this process is
        // single-threaded here (the container's init just before execve).
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
            .map_err(|e| ExecutorError::Other(format!("cannot reset SIGPIPE: {e}")))?;
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(|e| ExecutorError::Other(format!("cannot clear the signal mask: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
