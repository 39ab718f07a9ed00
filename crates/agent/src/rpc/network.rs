//! The network methods on the wire: UpdateInterface, UpdateRoutes,
//! ListInterfaces, ListRoutes, AddARPNeighbors. Only PID 1 changes the
//! network (an agent run on a host must not touch the host's).

use std::sync::Arc;

use capsa_protocols::{agent, types};

use super::status::detached;
use crate::network::{self, link, neigh, route, NetworkError};
use crate::sandbox::{Sandbox, SandboxError};

fn guest_only(sandbox: &Sandbox) -> Result<(), SandboxError> {
    if sandbox.is_init() {
        Ok(())
    } else {
        Err(SandboxError::NotInit("the network"))
    }
}

pub async fn update_interface(
    sandbox: &Arc<Sandbox>,
    req: agent::UpdateInterfaceRequest,
) -> Result<types::Interface, SandboxError> {
    guest_only(sandbox)?;
    let iface = req
        .interface
        .into_option()
        .ok_or(NetworkError::NoInterface)?;
    detached(async move {
        if !iface.devicePath.is_empty() {
            // A hot-plugged NIC: its driver may not be loaded yet.
            let load = || crate::modules::ensure(crate::modules::Class::Net);
            let _ = tokio::task::spawn_blocking(load).await;
        }
        let handle = network::connect().await?;
        Ok(link::update(&handle, &iface).await?)
    })
    .await
}

pub async fn update_routes(
    sandbox: &Arc<Sandbox>,
    req: agent::UpdateRoutesRequest,
) -> Result<agent::Routes, SandboxError> {
    guest_only(sandbox)?;
    let routes = req.routes.into_option().unwrap_or_default().Routes;
    detached(async move {
        let handle = network::connect().await?;
        let now = route::update(&handle, &routes).await?;
        Ok(agent::Routes {
            Routes: now,
            ..Default::default()
        })
    })
    .await
}

pub async fn list_interfaces() -> Result<agent::Interfaces, SandboxError> {
    let handle = network::connect().await?;
    Ok(agent::Interfaces {
        Interfaces: link::list(&handle).await?,
        ..Default::default()
    })
}

pub async fn list_routes() -> Result<agent::Routes, SandboxError> {
    let handle = network::connect().await?;
    Ok(agent::Routes {
        Routes: route::list(&handle).await?,
        ..Default::default()
    })
}

pub async fn add_arp_neighbors(
    sandbox: &Arc<Sandbox>,
    req: agent::AddARPNeighborsRequest,
) -> Result<(), SandboxError> {
    guest_only(sandbox)?;
    let neighbours = req.neighbors.into_option().unwrap_or_default().ARPNeighbors;
    detached(async move {
        let handle = network::connect().await?;
        Ok(neigh::add(&handle, &neighbours).await?)
    })
    .await
}
