// SPDX-License-Identifier: GPL-2.0

//! A new snapshot registered right after its prepare, before any host opens it.
//!
//! A snapshot's registration is made once per device and shared by every peer
//! (`rdma/domain.rs`). Its REG_MR requests need a queue pair of the device that is
//! up; made here on whichever connection of this host is, the first open from any
//! host finds it and the parent does no per-page work for it. A host with no live
//! connection leaves it to that first open.

#![deny(unsafe_code)]

use crate::control::MAX_CHUNK_PAGES;
use crate::params;
use crate::rdma::connection::{Connection, Owner};
use crate::region::Region;
use crate::state::Host;
use kernel::prelude::*;
use kernel::time::Ktime;

/// Log lines of failed registrations: at most this many per second.
static LOG: crate::util::RateLimit = crate::util::RateLimit::new(4);

/// Registers `region` on `conn` (a work item's body).
fn register(region: &Region, conn: &Connection) {
    // Queued by the prepare's last call: let the parent return from it first.
    crate::util::sleep_one_tick();
    let started = Ktime::ktime_get();
    let made = conn.register_ahead(
        region.id,
        &region.pages,
        MAX_CHUNK_PAGES,
        params::io_timeout_ms(),
        || region.is_live(),
    );
    match made {
        Ok(()) => pr_info!(
            "snapshot {}: registered for remote opens in {} ms ({} pages)\n",
            region.id,
            (Ktime::ktime_get() - started).to_ms(),
            region.pages.len()
        ),
        Err(e) => {
            if LOG.allow() {
                pr_info!(
                    "snapshot {}: not registered ahead ({:?}): its first open registers it\n",
                    region.id,
                    e
                );
            }
        }
    }
}

/// Queues the registration of snapshot `id` on a live connection of this host, if it
/// has one (best effort: without it the first open registers).
pub(crate) fn start(host: &Host, id: u64) {
    let (Some(queue), Some(region), Some(conn)) = (
        host.workqueue(),
        host.find_region(id),
        host.any_live_connection(),
    ) else {
        return;
    };
    let _ = queue.try_spawn(GFP_KERNEL, move || register(&region, &conn));
}
