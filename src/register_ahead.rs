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
use kernel::sync::Arc;
use kernel::time::Ktime;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// Log lines of failed registrations: at most this many per second.
static LOG: crate::util::RateLimit = crate::util::RateLimit::new(4);

/// The registration of one snapshot, queued on the module's workqueue.
#[pin_data]
pub(crate) struct RegisterJob {
    region: Arc<Region>,
    conn: Arc<Connection>,
    #[pin]
    work: Work<RegisterJob>,
}

impl_has_work! {
    impl HasWork<Self> for RegisterJob { self.work }
}

impl WorkItem for RegisterJob {
    type Pointer = Pin<KBox<RegisterJob>>;

    fn run(this: Pin<KBox<RegisterJob>>) {
        // Queued by the prepare's last call: let the parent return from it first.
        crate::util::sleep_one_tick();
        let region = &this.region;
        let started = Ktime::ktime_get();
        let made = this.conn.register_ahead(
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
    if let Ok(job) = KBox::pin_init(
        pin_init!(RegisterJob {
            region,
            conn,
            work <- new_work!("RegisterJob::work"),
        }),
        GFP_KERNEL,
    ) {
        queue.enqueue(job);
    }
}
