// SPDX-License-Identifier: GPL-2.0

//! Background readahead: where the windows ahead of a child reading a VMA in sequence
//! are read.
//!
//! The pager decides what to read ahead ([`Pager::demand_fault`] starts it once a
//! child's sequential fault window reached its largest size, and each window the child
//! enters starts the next: `Pager::touched`). The fault takes the window's folios
//! locked, without waiting for any (`Mapping::try_grab`), and hands them here: a work
//! item on the module's workqueue reads them in one doorbell while the child works
//! through the windows before. A child that reaches a window still in flight waits
//! for its folios' locks, as for any read in progress; a window whose read failed is
//! left not up to date, so the child's fault reads those pages again.
//!
//! [`Pager::demand_fault`]: crate::pager::Pager::demand_fault

#![deny(unsafe_code)]

use crate::counters::{count, COUNTERS};
use crate::rdma::connection::Owner;
use crate::snapfs::{File, LockedFolio};
use crate::state::Host;
use core::cell::Cell;
use kernel::prelude::*;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// One window read ahead, queued on the module's workqueue.
#[pin_data]
pub(crate) struct Window {
    /// Another reference to the child's snapshot file: keeps the pager and its page
    /// cache alive until the read ends, and pins the module (so `rmmod`, whose stop
    /// drains the workqueue, waits for it).
    file: File,
    /// The window's folios, locked and not up to date; taken by the read, which
    /// unlocks them when done (a `Cell`: the work item is pinned, they are not).
    folios: Cell<KVec<LockedFolio>>,
    #[pin]
    work: Work<Window>,
}

impl_has_work! {
    impl HasWork<Self> for Window { self.work }
}

impl WorkItem for Window {
    type Pointer = Pin<KBox<Window>>;

    fn run(this: Pin<KBox<Window>>) {
        let mut folios = this.folios.take();
        // A failure leaves the pages to the child's faults (the pager logs it).
        let _ = this.file.pager().fill(&mut folios);
        // Dropping the folios unlocks them, filled or not.
    }
}

/// Queues the read of `folios` (locked, not up to date, of `file`'s page cache). On
/// failure (short of memory, the module stopping) they are dropped unread: unlocked,
/// left to the child's faults.
pub(crate) fn start(host: &Host, file: File, folios: KVec<LockedFolio>) -> Result {
    let queue = host.workqueue().ok_or(ENODEV)?;
    let window = KBox::pin_init(
        pin_init!(Window {
            file,
            folios: Cell::new(folios),
            work <- new_work!("readahead::Window::work"),
        }),
        GFP_KERNEL,
    )?;
    queue.enqueue(window);
    count(&COUNTERS.readahead_windows, 1);
    Ok(())
}
