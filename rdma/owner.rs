// SPDX-License-Identifier: GPL-2.0

//! The interface of the RDMA layer to its owner (the module's host state): what the
//! transport needs from it and what it tells it. Connections, the listener and the
//! device client carry the owner as their callback context.

use super::connection::Connection;
use super::device::{DeviceKey, Devices};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::workqueue::Queue;

/// The owner of connections (the module): what the transport needs from it and what
/// it tells it. Every connection, and the listener, carries its owner as its callback
/// context; no callback of this layer reaches module state any other way.
pub(crate) trait Owner: Send + Sync {
    /// The workqueue connection work (teardown, request serving) runs on; `None` once
    /// the owner is stopping (nothing is queued any more).
    fn workqueue(&self) -> Option<&Queue>;
    /// Whether connections may use the RDMA device named `name`.
    fn device_allowed(&self, name: &[u8]) -> bool;
    /// Before anything is allocated or answered: whether a connection request from
    /// (network-order IPv4) `peer` is taken; an error rejects it.
    fn admit(&self, peer: u32) -> Result;
    /// Keeps an accepted connection (the listener does not own it).
    fn accepted(&self, conn: Arc<Connection>) -> Result;
    /// One control request received on an accepted connection (work context).
    fn request(&self, conn: &Connection, msg: &[u8]);
    /// The connection has been torn down (work context): drop it from lists.
    fn closed(&self, conn: &Arc<Connection>);
    /// The devices seen (the device client records them there).
    fn devices(&self) -> &Devices;
    /// The RDMA device `dev` is going away: tear down every connection on it before
    /// returning.
    fn device_removed(&self, dev: DeviceKey);
}
