// SPDX-License-Identifier: GPL-2.0

//! Working sets: which pages of a snapshot its children on this host touched.
//!
//! A snapshot's pager records the page-cache index of every page a child on this host
//! touched, at its first fault on the page (`snapfs::snapshot_fault`; there is no
//! fault-around, so every page a child maps comes by a fault), in the order of first
//! touches. Pages a demand fault's window read but nobody touched stay out. When the
//! snapshot's last child on this host exits, its inode is evicted and the record
//! moves here; the next resume of the same snapshot on this host reads its first
//! pages (in touch order, lead pages left out) in the descriptor's own batch, then
//! takes the record and reads the rest of those pages in batched READs (before the
//! child runs, or in the background: `replay.rs`), instead of one demand fault after
//! another (REAP's record-and-prefetch). A replay stopped early records the pages it did not read,
//! so an early exit does not shrink the set. The pager also reports a record to the
//! parent (`Pager::drop`), which hands it to the snapshot's first child on other hosts.
//!
//! Bounded: at most [`MAX_WS_PAGES`] pages per record (8 bytes each) and
//! [`MAX_SETS`] records per host (storing one more drops another). Records are
//! keyed like the snapshot inodes (address, port, id, secret): a snapshot reusing an
//! old id never gets another's record.

#![deny(unsafe_code)]

use crate::abi::wire::HotPage;
use crate::counters::{count, COUNTERS};
use crate::pager::PagerKey;
use crate::util::{copy_first, remove_first, swap_remove};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Mutex};

/// Most pages one record holds (128 MiB of snapshot).
pub(crate) const MAX_WS_PAGES: usize = 32768;
/// Most records kept on a host.
const MAX_SETS: usize = 32;

/// The pages children of one pager touched, in order of first touch (page-cache indices
/// of its snapshot file).
pub(crate) struct Trace {
    pages: KVVec<u64>,
}

impl Trace {
    pub(crate) const fn new() -> Self {
        Trace {
            pages: KVVec::new(),
        }
    }

    /// Adds pages; silently stops at [`MAX_WS_PAGES`] or when memory is short (a
    /// record is an optimisation, never a reason to fail a fault).
    pub(crate) fn record(&mut self, indices: impl Iterator<Item = u64>) {
        for i in indices {
            if self.pages.len() >= MAX_WS_PAGES || self.pages.push(i, GFP_KERNEL).is_err() {
                return;
            }
        }
    }

    pub(crate) fn take(&mut self) -> KVVec<u64> {
        core::mem::replace(&mut self.pages, KVVec::new())
    }
}

/// One host's record of a snapshot: the pages its children touched, in order, and
/// the first of them that are not lead pages, with the region page of each, to be
/// read in the next resume's descriptor batch.
struct HostRecord {
    key: PagerKey,
    pages: KVVec<u64>,
    hot: KVec<HotPage>,
}

/// The records of one host.
#[pin_data]
pub(crate) struct WorkingSets {
    #[pin]
    sets: Mutex<KVec<HostRecord>>,
}

impl WorkingSets {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(WorkingSets {
            sets <- new_mutex!(KVec::new()),
        })
    }

    /// Keeps `pages` and their first-touch pages `hot` as the record of `key`,
    /// replacing an older one.
    pub(crate) fn store(&self, key: PagerKey, pages: KVVec<u64>, hot: KVec<HotPage>) {
        if pages.is_empty() {
            return;
        }
        let mut sets = self.sets.lock();
        remove_first(&mut sets, |r| r.key == key);
        if sets.len() >= MAX_SETS {
            drop(swap_remove(&mut sets, 0));
        }
        if sets
            .push(HostRecord { key, pages, hot }, GFP_KERNEL)
            .is_ok()
        {
            count(&COUNTERS.ws_recorded, 1);
        }
    }

    /// Takes the pages of the record of `key`, if any.
    pub(crate) fn take(&self, key: PagerKey) -> Option<KVVec<u64>> {
        remove_first(&mut self.sets.lock(), |r| r.key == key).map(|r| r.pages)
    }

    /// A copy of the first-touch pages of the record of `key`, if there is one.
    pub(crate) fn hot(&self, key: PagerKey) -> Option<KVec<HotPage>> {
        let sets = self.sets.lock();
        let r = sets.iter().find(|r| r.key == key)?;
        copy_first(&r.hot, r.hot.len()).ok()
    }
}
