//! grpc.Health: Check and Version.

use async_trait::async_trait;
use capsa_protocols::{health, health_ttrpc};
use ttrpc::asynchronous::TtrpcContext;

/// The agent's version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The version of the agent API, as Kata's agent reports it.
pub const API_VERSION: &str = "0.0.1";

/// The health service: the agent answers, so it serves.
pub struct HealthRpc;

#[async_trait]
impl health_ttrpc::Health for HealthRpc {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        Ok(health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: health::CheckRequest,
    ) -> ttrpc::Result<health::VersionCheckResponse> {
        Ok(health::VersionCheckResponse {
            agent_version: AGENT_VERSION.to_string(),
            grpc_version: API_VERSION.to_string(),
            ..Default::default()
        })
    }
}
