//! Guest-wide methods on the wire: GetGuestDetails, OnlineCPUMem,
//! SetGuestDateTime, ReseedRandomDev, CopyFile, GetMetrics; and the
//! request counter of GetMetrics.
//!
//! Blocking work (files, sysfs, ioctls) runs on the blocking pool, in its
//! own task so a client that gives up does not cut it in the middle.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use capsa_protocols::agent;
use ttrpc::asynchronous::{MethodHandler, Service, TtrpcContext};
use ttrpc::{Request, Response};

use crate::guest::{self, copy_file, cpumem, details, metrics, random, time, GuestError};
use crate::sandbox::Sandbox;

const SYS: &str = "/sys";
const PROC: &str = "/proc";

/// `err` as the status of `method`'s reply.
fn to_status(method: &str, err: GuestError) -> ttrpc::Error {
    let path = format!("/grpc.AgentService/{method}");
    super::status::status(&path, err.kind(), &err)
}

/// Runs blocking `op` on the blocking pool; the status of `method` on error.
async fn blocking<T: Send + 'static>(
    method: &str,
    op: impl FnOnce() -> Result<T, GuestError> + Send + 'static,
) -> ttrpc::Result<T> {
    let joined = tokio::task::spawn_blocking(op).await;
    joined
        .map_err(GuestError::from)
        .and_then(|r| r)
        .map_err(|e| to_status(method, e))
}

pub async fn guest_details(
    req: agent::GuestDetailsRequest,
) -> ttrpc::Result<agent::GuestDetailsResponse> {
    blocking("GetGuestDetails", move || {
        details::details(Path::new(SYS), &req)
    })
    .await
}

/// Without `wait` the work goes on after the reply (as in Kata); its
/// failure is then only logged.
pub async fn online_cpu_mem(req: agent::OnlineCPUMemRequest) -> ttrpc::Result<()> {
    const METHOD: &str = "OnlineCPUMem";
    guest::require_init("online CPUs or memory").map_err(|e| to_status(METHOD, e))?;
    let (nb_cpus, cpu_only) = (req.nb_cpus, req.cpu_only);
    let work = move || cpumem::online_cpu_mem(Path::new(SYS), nb_cpus, cpu_only).map(drop);
    if req.wait {
        return blocking(METHOD, work).await;
    }
    tokio::spawn(async move {
        if let Err(status) = blocking(METHOD, work).await {
            tracing::warn!("OnlineCPUMem in the background failed: {status}");
        }
    });
    Ok(())
}

pub async fn set_guest_date_time(req: agent::SetGuestDateTimeRequest) -> ttrpc::Result<()> {
    time::set(req.Sec, req.Usec).map_err(|e| to_status("SetGuestDateTime", e))
}

pub async fn reseed_random_dev(req: agent::ReseedRandomDevRequest) -> ttrpc::Result<()> {
    random::check(&req.data).map_err(|e| to_status("ReseedRandomDev", e))?;
    blocking("ReseedRandomDev", move || random::reseed(&req.data)).await
}

pub async fn copy_file(req: agent::CopyFileRequest) -> ttrpc::Result<()> {
    blocking("CopyFile", move || {
        copy_file::copy_file(Path::new(copy_file::SANDBOX_DIR), &req)
    })
    .await
}

pub async fn get_metrics(sandbox: &Sandbox) -> ttrpc::Result<agent::Metrics> {
    let figures = metrics::AgentFigures {
        containers: sandbox.container_count().await,
        requests: metrics::requests(),
    };
    let text = blocking("GetMetrics", move || {
        Ok(metrics::collect(Path::new(PROC), figures))
    })
    .await?;
    Ok(agent::Metrics {
        metrics: text,
        ..Default::default()
    })
}

/// Counts a request, then hands it to the method's handler.
struct Counted(Box<dyn MethodHandler + Send + Sync>);

#[async_trait]
impl MethodHandler for Counted {
    async fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        metrics::count_request();
        self.0.handler(ctx, req).await
    }
}

/// Makes every method of `services` count its requests for GetMetrics.
pub fn count_requests(services: &mut HashMap<String, Service>) {
    for service in services.values_mut() {
        let methods = std::mem::take(&mut service.methods);
        service.methods = methods
            .into_iter()
            .map(|(name, handler)| {
                let counted: Box<dyn MethodHandler + Send + Sync> = Box::new(Counted(handler));
                (name, counted)
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::status::tests::status_of;
    use ttrpc::Code;

    #[tokio::test]
    async fn refusals_carry_codes_and_messages() {
        let s = status_of(
            reseed_random_dev(agent::ReseedRandomDevRequest::default())
                .await
                .unwrap_err(),
        );
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert_eq!(s.message(), "seed is empty");
        let s = status_of(
            copy_file(agent::CopyFileRequest {
                path: "/etc/passwd".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert_eq!(
            s.message(),
            "copy file path \"/etc/passwd\" is not below /run/kata-containers"
        );
        let s = status_of(
            set_guest_date_time(agent::SetGuestDateTimeRequest {
                Sec: 1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        );
        assert_eq!(s.code(), Code::FAILED_PRECONDITION, "not PID 1");
    }

    #[tokio::test]
    async fn guest_details_answer() {
        let r = guest_details(agent::GuestDetailsRequest::default())
            .await
            .unwrap();
        assert!(r.agent_details.is_some());
    }
}
