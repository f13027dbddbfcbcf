// SPDX-License-Identifier: GPL-2.0

//! Background working-set replay: where a resumed child's working set is prefetched
//! while the child already runs.
//!
//! A resume that made a new pager has a record of the pages earlier children of the
//! snapshot touched (this host's, or the parent's). Read before the resume returns,
//! the record's transfer and the child's own start-up work add up; read here, on the
//! module's workqueue, they overlap. The child's fault on a page the replay has not
//! reached yet reads it at once (behind at most the replay's batch in flight); a page
//! in the batch being read waits for that batch (its folio is locked). The replay
//! stops between batches once no mapping of the snapshot file is left (the child and
//! its forks exited): the pages it did not read go into the record unread.

#![deny(unsafe_code)]

use crate::rdma::connection::Owner;
use crate::snapfs::File;
use crate::state::Host;
use kernel::prelude::*;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// One replay queued on the module's workqueue.
#[pin_data]
pub(crate) struct Replay {
    /// Another reference to the child's snapshot file: keeps the pager and its page
    /// cache alive until the replay ends, and pins the module (so `rmmod`, whose stop
    /// drains the workqueue, waits for it).
    file: File,
    #[pin]
    work: Work<Replay>,
}

impl_has_work! {
    impl HasWork<Self> for Replay { self.work }
}

impl WorkItem for Replay {
    type Pointer = Pin<KBox<Replay>>;

    fn run(this: Pin<KBox<Replay>>) {
        let file = &this.file;
        file.pager()
            .replay_working_set(file.mapping(), &|| !file.unmapped());
    }
}

/// Queues the replay of `file`'s working set. Fails when short of memory or while the
/// module stops (the caller leaves the pages to the child's faults).
pub(crate) fn start(host: &Host, file: &File) -> Result {
    let queue = host.workqueue().ok_or(ENODEV)?;
    let replay = KBox::pin_init(
        pin_init!(Replay {
            file: file.share(),
            work <- new_work!("Replay::work"),
        }),
        GFP_KERNEL,
    )?;
    queue.enqueue(replay);
    Ok(())
}
