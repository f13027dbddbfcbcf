// SPDX-License-Identifier: GPL-2.0

//! Background batch reads: where windows ahead of a child reading a VMA in sequence,
//! and the batches of an eager fetch or a working-set replay, are read.
//!
//! The pager decides what to read and takes the batch's folios locked; a [`Window`]
//! work item on the module's workqueue reads them in one doorbell, so that several
//! doorbells are in flight while the task that queued them goes on:
//! - ahead of a sequential reader ([`Pager::demand_fault`] starts it once a child's
//!   fault window reached its largest size, and the child's first access to each
//!   window, whose first folio is marked, starts the next: `Pager::window_entered`);
//!   the folios are taken without waiting for any (`Mapping::try_grab`), the child
//!   works through the windows before meanwhile;
//! - for a fetch of many pages (`Pager::fetch_indices`: eager mode, working-set
//!   replay), whose caller keeps up to a few batches in flight and waits for them
//!   through [`Batches`].
//!
//! A child that reaches a batch still in flight waits for its folios' locks, as for
//! any read in progress; a batch whose read failed is left not up to date, so the
//! child's fault reads those pages again.
//!
//! [`Pager::demand_fault`]: crate::pager::Pager::demand_fault

#![deny(unsafe_code)]

use crate::rdma::connection::Owner;
use crate::snapfs::{LockedFolio, SnapshotInode};
use crate::state::Host;
use core::cell::Cell;
use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, Arc, CondVar, Mutex};
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// One batch read in the background, queued on the module's workqueue.
#[pin_data]
pub(crate) struct Window {
    /// A reference on the snapshot's inode: keeps the pager and its page cache alive
    /// until the read ends (`rmmod`'s stop drains the workqueue before the snapshot
    /// filesystem goes).
    inode: SnapshotInode,
    /// The batch's folios, locked and not up to date; taken by the read, which
    /// unlocks them when done (a `Cell`: the work item is pinned, they are not).
    folios: Cell<KVec<LockedFolio>>,
    /// The fetch waiting for this batch, if any.
    fetch: Option<Arc<Batches>>,
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
        // A failure leaves the pages to the children's faults (the pager logs it).
        let read = this.inode.pager().fill(&mut folios);
        // Unlocked, filled or not, before the fetch hears of it.
        drop(folios);
        if let Some(fetch) = &this.fetch {
            fetch.finished(read);
        }
    }
}

/// Queues the read of `folios` (locked, not up to date, of `inode`'s page cache), for
/// `fetch` if given (which must count it in flight first). Gives the folios back when
/// it cannot (short of memory, the module stopping).
pub(crate) fn start(
    host: &Host,
    inode: SnapshotInode,
    folios: KVec<LockedFolio>,
    fetch: Option<Arc<Batches>>,
) -> core::result::Result<(), KVec<LockedFolio>> {
    let Some(queue) = host.workqueue() else {
        return Err(folios);
    };
    let Ok(window) = KBox::pin_init(
        pin_init!(Window {
            inode,
            folios: Cell::new(KVec::new()),
            fetch,
            work <- new_work!("readahead::Window::work"),
        }),
        GFP_KERNEL,
    ) else {
        return Err(folios);
    };
    window.folios.set(folios);
    queue.enqueue(window);
    Ok(())
}

/// The batches one fetch has in flight, and what they read.
#[pin_data]
pub(crate) struct Batches {
    #[pin]
    tally: Mutex<Tally>,
    /// Signalled whenever a batch finishes.
    #[pin]
    finished: CondVar,
}

struct Tally {
    in_flight: usize,
    /// Pages read by finished batches, not yet handed to the fetch.
    read: u64,
    /// The first failure of a batch.
    failed: Option<Error>,
}

impl Batches {
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Batches {
                tally <- new_mutex!(Tally {
                    in_flight: 0,
                    read: 0,
                    failed: None,
                }),
                finished <- new_condvar!("readahead::Batches::finished"),
            }),
            GFP_KERNEL,
        )
    }

    /// A batch is about to be queued.
    pub(crate) fn started(&self) {
        self.tally.lock().in_flight += 1;
    }

    /// A batch counted by [`Batches::started`] was not queued after all.
    pub(crate) fn not_started(&self) {
        let mut t = self.tally.lock();
        t.in_flight = t.in_flight.saturating_sub(1);
    }

    fn finished(&self, read: Result<usize>) {
        let mut t = self.tally.lock();
        t.in_flight = t.in_flight.saturating_sub(1);
        match read {
            Ok(n) => t.read = t.read.saturating_add(n as u64),
            Err(e) => {
                t.failed.get_or_insert(e);
            }
        }
        drop(t);
        self.finished.notify_all();
    }

    /// Waits until fewer than `most` batches are in flight, each wait for a batch at
    /// most `timeout_ms`; returns the pages read by batches that finished since the
    /// last call, or the first batch's failure, `ETIMEDOUT`, or `EINTR` on a signal.
    /// Batches still in flight when it fails finish on their own.
    pub(crate) fn wait_below(&self, most: usize, timeout_ms: u32) -> Result<u64> {
        let jiffies = kernel::time::msecs_to_jiffies(timeout_ms.max(1));
        let mut t = self.tally.lock();
        while t.in_flight >= most && t.failed.is_none() {
            match self.finished.wait_interruptible_timeout(&mut t, jiffies) {
                kernel::sync::CondVarTimeoutResult::Woken { .. } => (),
                kernel::sync::CondVarTimeoutResult::Timeout => {
                    return Err(crate::errno::etimedout())
                }
                kernel::sync::CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
            }
        }
        if let Some(e) = t.failed {
            return Err(e);
        }
        Ok(core::mem::take(&mut t.read))
    }
}
