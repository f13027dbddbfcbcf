// SPDX-License-Identifier: GPL-2.0

//! Regions published for peers: pages a peer may read after opening the region with
//! its id and secret. Snapshots are published through the same path.

#![deny(unsafe_code)]

use crate::abi::ioctl::{fill_pattern, MAX_REGION_BYTES};
use crate::abi::mac::{constant_time_eq, descriptor_mac, open_proof};
use crate::abi::snapshot::status_word;
use crate::abi::wire::{HotPage, OpenRegionReply, WsRun};
use crate::rdma::pages::PageSet;
use crate::rdma::PAGE_SIZE;
use crate::util::copy_first;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

/// Pages named by `runs` (each at most `u32::MAX`, so no overflow in `u64`).
fn run_pages(runs: &[WsRun]) -> u64 {
    runs.iter().map(|r| u64::from(r.pages)).sum()
}

/// Most regions live on one host at once.
pub(crate) const MAX_REGIONS: usize = 1024;
/// Pages all test regions of a host may hold together (1 GiB).
const MAX_TEST_REGION_PAGES: usize = (1 << 30) / PAGE_SIZE;

/// A test region's pages: `size` bytes filled with the pattern of `seed`. Allocated
/// before the registry's lock is taken (hundreds of MiB must not be allocated under a
/// host-wide lock).
pub(crate) fn pattern_pages(size: u64, seed: u64) -> Result<PageSet> {
    if size == 0 || size % PAGE_SIZE as u64 != 0 || size > MAX_REGION_BYTES {
        return Err(EINVAL);
    }
    let n = (size / PAGE_SIZE as u64) as usize;
    PageSet::new(n, |i, page| {
        let mut chunk = [0u8; 256];
        for part in 0..PAGE_SIZE / chunk.len() {
            let off = (i * PAGE_SIZE + part * chunk.len()) as u64;
            fill_pattern(seed, off, &mut chunk);
            page.write(part * chunk.len(), &chunk)?;
        }
        Ok(())
    })
}

/// The processes a snapshot came from (process ids in the seed's pid namespace): the
/// seed, ended at its capture, and the process that prepared it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Origin {
    pub(crate) seed_pid: u32,
    pub(crate) parent_pid: u32,
}

pub(crate) struct Region {
    pub(crate) id: u64,
    secret: [u8; 16],
    pub(crate) size: u64,
    pub(crate) pages: Arc<PageSet>,
    /// For snapshots: the descriptor's length (it fills the first pages); 0 for test
    /// regions. Sent to peers with the keys.
    pub(crate) info: u64,
    /// For snapshots: the descriptor's MAC under the secret (sent with the keys).
    pub(crate) desc_mac: [u8; 16],
    /// For snapshots: pages after the descriptor holding the packed lead pages, what a
    /// child needs first (sent with the keys); 0 for test regions. A snapshot's last
    /// page is its status page (`abi::snapshot::status_word`).
    pub(crate) lead_pages: u32,
    /// When it was published (monotonic ms).
    pub(crate) created_ms: i64,
    /// For snapshots: who it came from.
    pub(crate) origin: Origin,
    /// Cleared when the region is destroyed: no new registrations.
    live: AtomicBool,
    /// For snapshots: the working set an opener reported (`control.rs`), handed to
    /// later openers with the keys; empty until then.
    working_set: Pin<KBox<Mutex<ParentRecord>>>,
}

/// A snapshot's working set as the parent keeps it: its pages as runs, and the first
/// of them in the order children first touched them.
#[derive(Default)]
struct ParentRecord {
    runs: KVec<WsRun>,
    hot: KVec<HotPage>,
    /// Counts the records kept: a packed copy is taken only for the record it was
    /// made from.
    generation: u64,
    /// The record's pages compressed (`packed.rs`), once made; an older record's copy
    /// until then.
    packed: Option<Arc<PageSet>>,
    /// Counts the changes of what an open reply hands out (a record kept, a packed
    /// copy made): the version in the snapshot's status word.
    version: u64,
}

/// Collects at most `n` entries (the count the wire decoder checked) into a new
/// vector, or `None` when memory is short.
fn collect_bounded<T>(n: usize, items: impl Iterator<Item = T>) -> Option<KVec<T>> {
    let mut out = KVec::with_capacity(n, GFP_KERNEL).ok()?;
    for x in items.take(n) {
        // Within the capacity reserved above: no allocation.
        out.push(x, GFP_KERNEL).ok()?;
    }
    Some(out)
}

impl Region {
    /// Keeps `runs` (validated by the wire decoder: at most `wire::MAX_WS_PAGES` pages)
    /// and `hot` (its first-touch pages, at most `wire::MAX_HOT_PAGES`) as the
    /// snapshot's working set if it has none yet or the kept one names fewer pages: a
    /// child that exits at once does not fix a small record for good, and records
    /// grow as children on other hosts fetch more (a record is a hint: failing to
    /// keep one is not an error). Returns whether it was kept.
    pub(crate) fn offer_working_set(
        &self,
        (n_runs, runs): (usize, impl Iterator<Item = WsRun>),
        (n_hot, hot): (usize, impl Iterator<Item = HotPage>),
    ) -> bool {
        if self.info == 0 {
            return false;
        }
        let (Some(runs), Some(hot)) = (collect_bounded(n_runs, runs), collect_bounded(n_hot, hot))
        else {
            return false;
        };
        let mut ws = self.working_set.lock();
        if run_pages(&runs) <= run_pages(&ws.runs) {
            return false;
        }
        ws.runs = runs;
        ws.hot = hot;
        ws.generation = ws.generation.wrapping_add(1);
        self.changed(&mut ws);
        true
    }

    /// The kept record's runs to pack, with its generation (copied: packing runs
    /// without the lock).
    pub(crate) fn record_to_pack(&self) -> Option<(u64, KVec<WsRun>)> {
        let ws = self.working_set.lock();
        if ws.runs.is_empty() {
            return None;
        }
        let runs = copy_first(&ws.runs, ws.runs.len()).ok()?;
        Some((ws.generation, runs))
    }

    /// Keeps `copy` as the packed record (`None`: the record is not worth packing, no
    /// copy) if the record it was made from (generation `generation`) is still the
    /// one kept. Returns whether it was kept.
    pub(crate) fn offer_packed(&self, generation: u64, copy: Option<PageSet>) -> bool {
        let copy = match copy.map(|c| Arc::new(c, GFP_KERNEL)).transpose() {
            Ok(copy) => copy,
            Err(_) => return false,
        };
        let mut ws = self.working_set.lock();
        if ws.generation != generation {
            return false;
        }
        // No copy where there was none hands out nothing new: the status word stays
        // (hosts keep reusing their opens).
        let changed = copy.is_some() || ws.packed.is_some();
        ws.packed = copy;
        if changed {
            self.changed(&mut ws);
        }
        true
    }

    /// What an open hands out changed: a new version in the status word.
    fn changed(&self, ws: &mut ParentRecord) {
        ws.version = ws.version.wrapping_add(1);
        self.write_status(ws);
    }

    /// Writes the status word (`abi::snapshot::status_word`) into the snapshot's
    /// status page, its last (snapshots only). Under the record's lock: writers
    /// never interleave.
    fn write_status(&self, ws: &ParentRecord) {
        if self.info != 0 {
            let word = status_word(self.is_live(), ws.version);
            // The page is there: a snapshot is published with it.
            let _ = self
                .pages
                .store_word(self.pages.len().saturating_sub(1), word);
        }
    }

    /// The status word as an open reply carries it, read before anything else the
    /// reply hands out: if that changes meanwhile, the reply's word is already out
    /// of date and the host asks again. 0 for test regions.
    pub(crate) fn status(&self) -> u64 {
        if self.info == 0 {
            return 0;
        }
        status_word(self.is_live(), self.working_set.lock().version)
    }

    /// Marks the region released: no new registrations, and, before any key is
    /// revoked, a status word that sends every host back to the parent.
    fn retire(&self) {
        self.live.store(false, Ordering::Release);
        self.write_status(&self.working_set.lock());
    }

    /// The packed copy of the working set, if one was made.
    pub(crate) fn packed(&self) -> Option<Arc<PageSet>> {
        self.working_set.lock().packed.clone()
    }

    /// The snapshot's working set as it fits in an open reply with `n_keys` keys:
    /// its first-touch pages, then its first runs (copied: the caller sends them
    /// without holding the lock).
    pub(crate) fn working_set(&self, n_keys: usize) -> Result<(KVec<HotPage>, KVec<WsRun>)> {
        let ws = self.working_set.lock();
        let hot = copy_first(&ws.hot, OpenRegionReply::room_for_hot(n_keys))?;
        let runs = copy_first(&ws.runs, OpenRegionReply::room_for_runs(n_keys, hot.len()))?;
        Ok((hot, runs))
    }

    /// Compares `secret` in constant time.
    pub(crate) fn secret_matches(&self, secret: &[u8; 16]) -> bool {
        constant_time_eq(&self.secret, secret)
    }

    /// Whether `proof` shows the secret for the connection challenged with
    /// `challenge` (constant time).
    pub(crate) fn proof_matches(&self, challenge: &[u8; 16], proof: &[u8; 16]) -> bool {
        constant_time_eq(&open_proof(&self.secret, challenge, self.id), proof)
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// Regions of this host by id.
pub(crate) struct Registry {
    next_id: u64,
    regions: KVec<Arc<Region>>,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Registry {
            next_id: 1,
            regions: KVec::new(),
        }
    }

    /// Publishes test-region `pages` (from [`pattern_pages`]), within the host-wide
    /// budget for test regions.
    pub(crate) fn publish_test_region(&mut self, pages: PageSet) -> Result<(u64, [u8; 16])> {
        let held: usize = self
            .regions
            .iter()
            .filter(|r| r.info == 0)
            .map(|r| r.pages.len())
            .sum();
        if held.saturating_add(pages.len()) > MAX_TEST_REGION_PAGES {
            return Err(ENOSPC);
        }
        self.publish(pages, 0, &[], 0, Origin::default())
    }

    /// Publishes `pages` under a fresh id and random secret; `desc` is the snapshot
    /// descriptor the pages start with (empty for test regions), whose MAC peers get,
    /// followed by `lead_pages` pages of packed lead pages; a snapshot's last page is its
    /// status page, written here.
    pub(crate) fn publish(
        &mut self,
        pages: PageSet,
        info: u64,
        desc: &[u8],
        lead_pages: u32,
        origin: Origin,
    ) -> Result<(u64, [u8; 16])> {
        if self.regions.len() >= MAX_REGIONS {
            return Err(ENOSPC);
        }
        let mut secret = [0u8; 16];
        crate::util::random_bytes(&mut secret);
        let id = self.next_id;
        let region = Arc::new(
            Region {
                id,
                secret,
                size: (pages.len() * PAGE_SIZE) as u64,
                pages: Arc::new(pages, GFP_KERNEL)?,
                info,
                desc_mac: descriptor_mac(&secret, desc),
                lead_pages,
                created_ms: kernel::time::Ktime::ktime_get().to_ms(),
                origin,
                live: AtomicBool::new(true),
                working_set: KBox::pin_init(new_mutex!(ParentRecord::default()), GFP_KERNEL)?,
            },
            GFP_KERNEL,
        )?;
        // The status page: live, version 0.
        region.write_status(&region.working_set.lock());
        self.regions.reserve(1, GFP_KERNEL)?;
        self.regions.push(region, GFP_KERNEL)?;
        self.next_id += 1;
        Ok((id, secret))
    }

    /// Snapshots live and the pages they hold.
    /// The snapshots (oldest first), at most `max`, and how many there are.
    pub(crate) fn snapshots(&self, max: usize) -> Result<(KVec<Arc<Region>>, usize)> {
        let all = self.regions.iter().filter(|r| r.info != 0);
        let total = all.clone().count();
        let mut out = KVec::with_capacity(total.min(max), GFP_KERNEL)?;
        for r in all.take(max) {
            out.push(r.clone(), GFP_KERNEL)?;
        }
        Ok((out, total))
    }

    pub(crate) fn snapshot_totals(&self) -> (u64, u64) {
        self.regions
            .iter()
            .filter(|r| r.info != 0)
            .fold((0, 0), |(n, p), r| (n + 1, p + r.pages.len() as u64))
    }

    pub(crate) fn find(&self, id: u64) -> Option<Arc<Region>> {
        self.regions.iter().find(|r| r.id == id).cloned()
    }

    /// Unpublishes region `id`; the caller then drops its registrations on every
    /// connection (pages are freed with the last registration).
    pub(crate) fn remove(&mut self, id: u64) -> Result<Arc<Region>> {
        let region = crate::util::remove_first(&mut self.regions, |r| r.id == id).ok_or(ENOENT)?;
        region.retire();
        Ok(region)
    }

    pub(crate) fn len(&self) -> usize {
        self.regions.len()
    }

    /// Removes every region (module unload).
    pub(crate) fn clear(&mut self) {
        for r in self.regions.iter() {
            r.retire();
        }
        drop(crate::util::take_all(&mut self.regions));
    }
}
