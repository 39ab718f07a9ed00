//! Stdio of processes: WriteStdin, CloseStdin, ReadStdout, ReadStderr.

use super::{Sandbox, SandboxError};

impl Sandbox {
    /// Reads at most `len` bytes of stderr, or of stdout (the terminal
    /// with a pty); empty at end of file.
    pub async fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
        stderr: bool,
    ) -> Result<Vec<u8>, SandboxError> {
        if len == 0 {
            return Err(SandboxError::ZeroRead);
        }
        let process = self.process(container_id, exec_id).await?;
        let stdio = &process.stdio;
        let read = if stderr {
            stdio.read_stderr(len as usize).await
        } else {
            stdio.read_stdout(len as usize).await
        };
        read.map_err(|e| SandboxError::Stdio(container_id.to_string(), e))
    }

    /// Writes all of `data` to stdin; returns its length.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, SandboxError> {
        let process = self.process(container_id, exec_id).await?;
        process
            .stdio
            .write_stdin(data)
            .await
            .map_err(|e| SandboxError::Stdio(container_id.to_string(), e))?;
        Ok(data.len())
    }

    /// Closes stdin (the process then reads end of file).
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<(), SandboxError> {
        let process = self.process(container_id, exec_id).await?;
        process.stdio.close_stdin().await;
        Ok(())
    }
}
