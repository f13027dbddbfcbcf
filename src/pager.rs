// SPDX-License-Identifier: GPL-2.0

//! The snapshot-file pager: where a child's page faults are served.
//!
//! Every snapshot a child on this host resumes from becomes one inode of an internal
//! pseudo filesystem ("snapshot file"). Each seed VMA has its own window of the file
//! (`abi::snapshot::window_offset`), and is a `MAP_PRIVATE` mapping of its window: a
//! mapping a child grows or moves (`mremap`) stays in its window, so its new part
//! reads zeros and a later capture finds its pages by file offset. A fault on a page
//! that is not in the page cache calls `read_folio` / `readahead`, which fill the
//! page with one-sided RDMA READs of exactly the present pages (one doorbell per batch)
//! and zero-fill holes locally. The core MM does the rest: copy-on-write when a child
//! writes, sharing of fetched pages among every child of the snapshot on this host,
//! reclaim of clean pages (fetched again when needed). The kernel's readahead is off
//! for snapshot files: a demand fault's batch is sized here (`demand_window`), one
//! page on random access, doubling up to `prefetch_pages` on sequential access; from
//! there on, `readahead_windows` windows ahead of the reader are read in the
//! background (`readahead.rs`), and each window it enters starts the next.
//!
//! Inodes are cached by (parent address, port, snapshot id, secret) while some child
//! maps them; the last unmap evicts the inode, which closes the remote open (the parent
//! drops this host's registration).
//!
//! This file is policy: what a page of a snapshot file holds and how it is fetched. The
//! filesystem, its callbacks and the folios are `snapfs.rs`.

#![deny(unsafe_code)]

use crate::abi::packed::{head_len, PackedIndex, PackedPage};
use crate::abi::snapshot::{
    window_offset, Descriptor, MAX_LEAD_PAGES, PAGE, RUN_PRESENT, VMA_WINDOW,
};
use crate::abi::wire::{runs_from_pages, HotPage, WsRun, MAX_HOT_PAGES, MAX_WS_RUNS};
use crate::counters::{count, COUNTERS};
use crate::params;
use crate::rdma::connection::{Ipv4, MAX_READ_BATCH, PIPELINE_DEPTH};
use crate::rdma::PAGE_SIZE;
use crate::remote::{Checked, Lead, RemoteRegion};
use crate::snapfs::{LockedFolio, Mapping};
use crate::state::Host;
use crate::util::ClearForReuse;
use crate::working_set::Trace;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex, UniqueArc};

/// A demand fault this close (in pages) to the previous one is local: see
/// [`Pager::demand_window`].
const LOCAL_SPAN: u64 = 32;
/// Pages a local demand fault reads around itself.
const LOCAL_WINDOW: u64 = 8;

/// Which snapshot an inode holds. The secret is part of it: ids restart when a parent
/// reloads its module, secrets are random per snapshot, so a new snapshot with an old
/// id never maps the old one's memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PagerKey {
    pub(crate) addr: u32,
    pub(crate) port: u16,
    pub(crate) id: u64,
    pub(crate) secret: [u8; 16],
}

/// The open of a snapshot at its parent.
struct Link {
    /// Shared with the batches reading through it (they hold it without the lock, so
    /// faults of several children overlap); replaced by a reconnect.
    remote: Arc<RemoteRegion>,
    /// Whether the open was handed on (`RemoteRegion::into_open`) to be closed later.
    handed_on: bool,
}

impl Drop for Link {
    /// Tells the parent this host is done with the snapshot (best effort: its
    /// registration also ends with the connection), unless the open was handed on.
    fn drop(&mut self) {
        if !self.handed_on {
            self.remote.close();
        }
    }
}

/// One snapshot as seen from this host: the remote open and the validated descriptor.
pub(crate) struct Pager {
    /// The host's state: its connection pool (to reconnect) and the snapshot
    /// filesystem this pager's inode is cached in.
    host: Arc<Host>,
    /// The snapshot (its secret opens it again after the connection failed).
    key: PagerKey,
    /// The descriptor, validated once by [`Descriptor::parse`] and never changed.
    desc: KVVec<u8>,
    /// The lead pages read and unpacked with it (installed by the first resume, kept
    /// to hand on with the open: [`Checked`]).
    lead: Lead,
    /// Region offset of data page 0 (the descriptor fills the pages before it).
    data_offset: u64,
    /// The open, taken briefly by each batch (which then reads without it: the
    /// connection runs several batches at once) and held across a reconnect.
    link: Pin<KBox<Mutex<Link>>>,
    /// Set when a reconnect failed (parent gone, snapshot revoked): later faults fail
    /// at once instead of each waiting for a connect timeout.
    dead: core::sync::atomic::AtomicBool,
    /// Open files of this snapshot: one per resumed child on this host (its forks share
    /// it), until the last of them unmaps it.
    files: core::sync::atomic::AtomicU32,
    /// The pages children touched, for the host's working-set record.
    trace: Pin<KBox<Mutex<Trace>>>,
    /// Demand-fault streams, one per VMA of each child (hashed into [`STREAMS`]: an
    /// interpreter touches its heap, stack and libraries' data in turn, each with its
    /// own locality, and children of one snapshot fault at once on different pages of
    /// the same VMA). See [`Pager::demand_window`]. A heuristic: races and collisions
    /// only change a window's size.
    streams: [Stream; STREAMS],
    /// Counts stream lookups: the streams' `used` stamps.
    stream_clock: AtomicU64,
}

/// Streams per pager, in sets of [`STREAM_WAYS`].
const STREAMS: usize = 64;
const STREAM_WAYS: usize = 4;
const _: () = assert!(STREAMS % STREAM_WAYS == 0);

/// One demand-fault stream: the page a sequential reader faults on next (past the
/// windows read ahead of it), how far past its faulting page the last window read,
/// and the page of the last fault.
struct Stream {
    /// Whose stream it is: the child's address space and the VMA, hashed (0: nobody's).
    owner: AtomicUsize,
    /// When it was last used ([`Pager::stream_clock`]).
    used: AtomicU64,
    /// The first page not read yet (nor being read ahead).
    next: AtomicU64,
    window: AtomicU64,
    last: AtomicU64,
}

impl Stream {
    const NEW: Stream = Stream {
        owner: AtomicUsize::new(0),
        used: AtomicU64::new(0),
        next: AtomicU64::new(u64::MAX),
        window: AtomicU64::new(0),
        last: AtomicU64::new(u64::MAX),
    };
}

impl Drop for Pager {
    /// The snapshot's last child on this host is gone: what its children fetched is
    /// the working set the next resume here prefetches, and, if it is more than the
    /// record the parent gave us, what the parent hands to the snapshot's first child
    /// on every other host.
    fn drop(&mut self) {
        let dead = self.dead.load(Ordering::Relaxed);
        if params::working_set() {
            let mut pages = self.trace.lock().take();
            // Before the report sorts the pages.
            let hot = self.first_touches(&pages);
            {
                let link = self.link.lock();
                let given: u64 = link.remote.ws_runs.iter().map(|r| u64::from(r.pages)).sum();
                if pages.len() as u64 > given && !dead {
                    report_working_set(&link.remote, &mut pages, &hot);
                }
            }
            self.host.working_sets().store(self.key, pages, hot);
        }
        // The open stays at the parent a while (`open_linger_ms`): the next child of
        // the snapshot here reuses the registration the parent made for this host.
        if params::open_linger_ms() > 0 && !dead {
            // The descriptor and the lead pages go with it: the next resume through it
            // reads neither again.
            let checked = Checked {
                desc: core::mem::replace(&mut self.desc, KVVec::new()),
                lead: core::mem::replace(&mut self.lead, Lead::NONE),
            };
            let open = {
                let mut link = self.link.lock();
                link.handed_on = true;
                link.remote.into_open(Some(checked))
            };
            self.host.snapshot_fs().linger(self.key, open);
        }
    }
}

impl Pager {
    /// A snapshot file of this pager was opened (a child is being resumed).
    pub(crate) fn file_opened(&self) {
        self.files
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    /// A snapshot file's last reference went (the child and its forks unmapped it).
    /// Returns the children left on this host.
    pub(crate) fn file_closed(&self) -> u32 {
        self.files
            .fetch_sub(1, core::sync::atomic::Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// Children on this host mapping the snapshot.
    pub(crate) fn children(&self) -> u32 {
        self.files.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// A pager over an opened snapshot whose descriptor `desc` passed validation, with
    /// the lead pages read with it.
    pub(crate) fn new(
        host: Arc<Host>,
        key: PagerKey,
        remote: Arc<RemoteRegion>,
        desc: KVVec<u8>,
        lead: Lead,
    ) -> Result<Self> {
        let desc_pages = (desc.len() as u64).div_ceil(PAGE);
        // From here on the open is in a `Link`, whose drop closes it on any failure.
        let link = Link {
            remote,
            handed_on: false,
        };
        Ok(Pager {
            host,
            key,
            desc,
            lead,
            data_offset: desc_pages * PAGE,
            link: KBox::pin_init(new_mutex!(link), GFP_KERNEL)?,
            dead: core::sync::atomic::AtomicBool::new(false),
            files: core::sync::atomic::AtomicU32::new(0),
            trace: KBox::pin_init(new_mutex!(Trace::new()), GFP_KERNEL)?,
            streams: [Stream::NEW; STREAMS],
            stream_clock: AtomicU64::new(1),
        })
    }

    /// After a failed READ: a new connection (pooled) and a new open of the same
    /// snapshot, once. A released snapshot or a parent that is gone fails here.
    fn reconnect(&self, link: &mut Link) -> Result {
        // Allocated first: once the parent opened, nothing may fail before the open
        // is either kept or closed.
        let shared = UniqueArc::new_uninit(GFP_KERNEL)?;
        let (conn, _) =
            self.host
                .connection_to(self.key.addr, self.key.port, params::connect_timeout_ms())?;
        let remote = RemoteRegion::open(conn, 0, self.key.id, self.key.secret)?;
        if !remote.same_snapshot(&link.remote) {
            remote.close();
            return Err(EIO);
        }
        // Dropping the old link closes the old open (batches still holding it fail on
        // its connection and read again through this one).
        *link = Link {
            remote: shared.write(remote).into(),
            handed_on: false,
        };
        pr_info!(
            "snapshot {} from {}: reconnected after a failed READ\n",
            self.key.id,
            Ipv4(self.key.addr)
        );
        Ok(())
    }

    /// The open to read through after a batch on `failed` failed: a new one made now,
    /// or the one another batch's reconnect already made.
    fn reopened(&self, failed: &Arc<RemoteRegion>) -> Result<Arc<RemoteRegion>> {
        let mut link = self.link.lock();
        if self.dead.load(Ordering::Relaxed) {
            return Err(crate::errno::enotconn());
        }
        if Arc::ptr_eq(&link.remote, failed) {
            self.reconnect(&mut link)
                .inspect_err(|_| self.dead.store(true, Ordering::Relaxed))?;
        }
        Ok(link.remote.clone())
    }

    pub(crate) fn descriptor(&self) -> Result<Descriptor<'_>> {
        Descriptor::parse_validated(&self.desc).map_err(|_| EINVAL)
    }

    /// Whether the snapshot's status page, read through this pager's open, says that
    /// the snapshot is live and that an open would hand out what this one got (see
    /// `restore::through_lingering`): one READ of one page, no RPC. False on any
    /// failure (the caller then asks the parent).
    pub(crate) fn still_current(&self) -> bool {
        let remote = self.link.lock().remote.clone();
        let Some(off) = remote.status_offset() else {
            return false;
        };
        let mut word = None;
        let read = remote.read_batch(&[off], |_, bytes| {
            word = bytes.first_chunk::<8>().map(|w| u64::from_le_bytes(*w));
            Ok(())
        });
        read.is_ok() && word.is_some_and(|w| remote.still_current(w))
    }

    /// Whether new resumes may share this pager: not once a reconnect failed (it
    /// serves its current children's faults no more; a new resume gets a fresh inode
    /// and open).
    pub(crate) fn shareable(&self) -> bool {
        !self.dead.load(Ordering::Relaxed)
    }

    /// Region offset of the snapshot page at file offset `file_off`, or `None` for a
    /// hole. Checked: the descriptor's data range was compared with the region's size
    /// at resume, and overflow would only send a READ the connection refuses
    /// (`ERANGE`).
    fn locate(&self, desc: &Descriptor<'_>, file_off: u64) -> Option<u64> {
        self.data_offset.checked_add(desc.data_offset_at(file_off)?)
    }

    /// Fills locked folios (order 0, not up to date) with their snapshot content: holes
    /// are zeroed here, present pages come in READ batches of one doorbell each. The
    /// filled ones are marked up to date; the caller unlocks all of them (a folio left
    /// not up to date makes the faulting access fail with `SIGBUS`).
    ///
    /// The batch lives on the heap: a fault can come from deep in the kernel (a user
    /// copy in any system call touching snapshot memory), so this path keeps its
    /// stack small.
    pub(crate) fn fill(&self, folios: &mut [LockedFolio]) -> Result<usize> {
        let desc = self.descriptor()?;
        let mut read = 0usize;
        let mut offs = KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL)?;
        let mut result = Ok(());
        let mut rest = &mut folios[..];
        while !rest.is_empty() {
            // The next batch: up to MAX_READ_BATCH present pages, moved to the front of
            // `rest` in the order of `offs` (the caller does not care about the order),
            // holes zeroed on the way.
            offs.clear_for_reuse();
            let mut n = 0;
            while n < rest.len() && offs.len() < MAX_READ_BATCH {
                match self.locate(&desc, rest[n].index().saturating_mul(PAGE)) {
                    None => {
                        rest[n].fill_zero();
                        count(&COUNTERS.pages_zeroed, 1);
                    }
                    Some(off) => {
                        rest.swap(offs.len(), n);
                        // Within the capacity reserved above: no allocation.
                        offs.push(off, GFP_KERNEL)?;
                    }
                }
                n += 1;
            }
            let (present, _) = rest.split_at_mut(offs.len());
            if !offs.is_empty() {
                match self.read_into(&offs, present) {
                    Ok(()) => read += offs.len(),
                    Err(e) => result = Err(e),
                }
            }
            rest = &mut core::mem::take(&mut rest)[n..];
        }
        result.map(|()| read)
    }

    /// A child on this host touched page-cache page `index` for the first time (its
    /// first fault on it: `snapfs::snapshot_fault`): it goes into the working set.
    pub(crate) fn touched(&self, index: u64) {
        if params::working_set() {
            self.trace.lock().record(core::iter::once(index));
        }
    }

    /// A child touched page `index` of `mapping`, the first of a window read ahead of
    /// it (`snapfs::snapshot_fault` cleared the window's mark): the window after the
    /// last one read ahead of its stream is read now, so that `readahead_windows`
    /// stay ahead of the reader. A mark the stream cannot have set (another child's,
    /// or one left behind when the stream moved on) reads nothing.
    pub(crate) fn window_entered(&self, index: u64, mapping: Mapping<'_>) {
        let Some(stream) = self.find_stream(index / (VMA_WINDOW / PAGE)) else {
            return;
        };
        let window = stream.window.load(Ordering::Relaxed);
        let next = stream.next.load(Ordering::Relaxed);
        let ahead = window.saturating_mul(u64::from(params::readahead_windows()) + 1);
        if window == 0 || index >= next || index < next.saturating_sub(ahead) {
            return;
        }
        let Ok(desc) = self.descriptor() else {
            return;
        };
        let end = next
            .saturating_add(window)
            .min(self.vma_end(&desc, index))
            .max(next);
        // One of the reader's threads moves the stream on.
        if end > next
            && stream
                .next
                .compare_exchange(next, end, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.read_ahead(mapping, next, end);
        }
    }

    /// Reads pages `[first, end)` of `mapping` (at most one batch) in the background:
    /// those whose folios can be taken without waiting and are not up to date. The
    /// first of them is marked: the reader's first access to it reads the next window
    /// ahead ([`Pager::window_entered`]).
    fn read_ahead(&self, mapping: Mapping<'_>, first: u64, end: u64) {
        let mut folios = KVec::new();
        let n = end.saturating_sub(first).min(MAX_READ_BATCH as u64) as usize;
        if n == 0 || folios.reserve(n, GFP_KERNEL).is_err() {
            return;
        }
        for i in first..first + n as u64 {
            let Some(f) = mapping.try_grab(i) else {
                continue;
            };
            if !f.is_uptodate() {
                // Within the capacity reserved above: no allocation.
                if folios.push(f, GFP_KERNEL).is_err() {
                    return;
                }
            }
        }
        // A window already cached (another child's, say) needs no work item nor
        // inode reference.
        let Some(first_folio) = folios.first_mut() else {
            return;
        };
        let Some(inode) = mapping.inode() else {
            return;
        };
        first_folio.mark_readahead();
        // On failure the folios are dropped, unlocked unread: left to the faults.
        if crate::readahead::start(&self.host, inode, folios, None).is_ok() {
            count(&COUNTERS.readahead_windows, 1);
        }
    }

    /// A page fault's fill (`read_folio`, `readahead`): [`Pager::fill`], counted as a
    /// remote fault when it read from the parent.
    pub(crate) fn fault(&self, folios: &mut [LockedFolio]) -> Result {
        let r = self.fill(folios);
        if matches!(r, Ok(n) if n > 0) || r.is_err() {
            count(&COUNTERS.remote_faults, 1);
        }
        r.map(|_| ())
    }

    /// The pages a demand fault at page-cache `index` reads, as `[first, end)` around
    /// it, never outside the page's VMA:
    /// - at the page right after the previous window in the same VMA (a sequential
    ///   reader: the pages in between were in the page cache, so their faults read nothing;
    ///   "same VMA" means the same VMA of the same child), a
    ///   window forward from `index` twice the previous one, up to `prefetch_pages` (at
    ///   most one batch);
    /// - within [`LOCAL_SPAN`] pages of the previous fault in the same VMA (a working
    ///   set with locality, like an interpreter's heap), [`LOCAL_WINDOW`] pages around
    ///   it;
    /// - anywhere else, the page alone: random access costs one page per fault.
    ///
    /// The third value ends what to read ahead in the background, from `end`: once a
    /// sequential window reached `prefetch_pages`, the next `readahead_windows`
    /// windows (the stream's `next` then follows them); else it is `end`.
    fn demand_window(&self, desc: &Descriptor<'_>, index: u64) -> (u64, u64, u64) {
        let max = (params::prefetch_pages() as u64).clamp(1, MAX_READ_BATCH as u64);
        let per_window = VMA_WINDOW / PAGE;
        let stream = self.stream(index / per_window);
        let last = stream.last.swap(index, Ordering::Relaxed);
        let sequential = stream.next.load(Ordering::Relaxed) == index;
        let (first, window) = if sequential {
            let w = stream.window.load(Ordering::Relaxed).saturating_mul(2);
            (index, w.clamp(1, max))
        } else if last.abs_diff(index) <= LOCAL_SPAN {
            let w = LOCAL_WINDOW.min(max);
            (index.saturating_sub(w / 2), w)
        } else {
            (index, 1)
        };
        let vma_end = self.vma_end(desc, index);
        let first = first.max(index - index % per_window);
        let end = first
            .saturating_add(window)
            .min(vma_end)
            .max(index.saturating_add(1));
        let window = end.saturating_sub(index);
        stream.window.store(window, Ordering::Relaxed);
        let ahead_windows = u64::from(params::readahead_windows());
        let ahead_end = if sequential && window == max && max > 1 && ahead_windows > 0 {
            end.saturating_add(window.saturating_mul(ahead_windows))
                .min(vma_end)
        } else {
            end
        };
        stream.next.store(ahead_end, Ordering::Relaxed);
        (first, end, ahead_end)
    }

    /// The end (page index, exclusive) of the window of the snapshot file that holds
    /// VMA contents up to its size; past the page if the VMA is not in the descriptor.
    fn vma_end(&self, desc: &Descriptor<'_>, index: u64) -> u64 {
        let per_window = VMA_WINDOW / PAGE;
        let vma_first = index - index % per_window;
        desc.vma((index / per_window) as usize)
            .and_then(|v| vma_first.checked_add((v.end - v.start) / PAGE))
            .unwrap_or(index.saturating_add(1))
    }

    /// The set of [`STREAM_WAYS`] stream slots of VMA `vma` in the faulting child, and
    /// the stream's owner value.
    fn stream_ways(&self, vma: u64) -> (usize, &[Stream]) {
        let owner = (crate::mm::current_mm_id() ^ (vma as usize).wrapping_mul(0x9E37_79B9)) | 1;
        let set = ((owner as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
            % (STREAMS / STREAM_WAYS);
        (
            owner,
            &self.streams[set * STREAM_WAYS..(set + 1) * STREAM_WAYS],
        )
    }

    /// The stream of VMA `vma` in the faulting child, if it has one (none is made).
    fn find_stream(&self, vma: u64) -> Option<&Stream> {
        let (owner, ways) = self.stream_ways(vma);
        ways.iter()
            .find(|s| s.owner.load(Ordering::Relaxed) == owner)
    }

    /// The stream of VMA `vma` in the faulting child: one of [`STREAM_WAYS`] slots
    /// chosen by hash, the one it already has or else the least recently used (started
    /// afresh), so that a few children's streams rarely evict each other.
    fn stream(&self, vma: u64) -> &Stream {
        let (owner, ways) = self.stream_ways(vma);
        let now = self.stream_clock.fetch_add(1, Ordering::Relaxed);
        let mut victim = &ways[0];
        for s in ways {
            if s.owner.load(Ordering::Relaxed) == owner {
                s.used.store(now, Ordering::Relaxed);
                return s;
            }
            if s.used.load(Ordering::Relaxed) < victim.used.load(Ordering::Relaxed) {
                victim = s;
            }
        }
        victim.owner.store(owner, Ordering::Relaxed);
        victim.used.store(now, Ordering::Relaxed);
        victim.next.store(u64::MAX, Ordering::Relaxed);
        victim.window.store(0, Ordering::Relaxed);
        victim.last.store(u64::MAX, Ordering::Relaxed);
        victim
    }

    /// A demand fault on `folio` (`read_folio`): it and the pages of its window
    /// ([`Pager::demand_window`]) not in the page cache yet, in one batch, and the
    /// windows to read ahead queued before it. A page whose folio another task holds
    /// locked is left out (never waited for: we hold `folio`'s lock).
    pub(crate) fn demand_fault(&self, folio: LockedFolio) -> Result {
        let index = folio.index();
        let (first, end, ahead_end) = match self.descriptor() {
            Ok(desc) => self.demand_window(&desc, index),
            Err(_) => (index, index.saturating_add(1), index.saturating_add(1)),
        };
        let mut batch = KVec::new();
        if let Some(mapping) = folio.mapping() {
            // The windows ahead first, so that their READs go out with this one.
            let ahead_window = end.saturating_sub(index).max(1);
            let mut at = end;
            while at < ahead_end {
                let to = at.saturating_add(ahead_window).min(ahead_end);
                self.read_ahead(mapping, at, to);
                at = to;
            }
            let window = end.saturating_sub(first) as usize;
            if window > 1 && batch.reserve(window, GFP_KERNEL).is_ok() {
                for i in (first..end).filter(|&i| i != index) {
                    let Some(f) = mapping.try_grab(i) else {
                        continue;
                    };
                    if !f.is_uptodate() {
                        // Within the capacity reserved above: no allocation.
                        batch.push(f, GFP_KERNEL)?;
                    }
                }
            }
        }
        if batch.push(folio, GFP_KERNEL).is_err() {
            return Err(ENOMEM);
        }
        self.fault(&mut batch)
    }

    /// Prefetches this host's working-set record of the snapshot, if any, else the
    /// parent's, into `mapping`'s page cache: called at a resume that made a new
    /// pager, before the child runs or in the background while it runs
    /// (`replay.rs`). `go_on` is asked between batches; once it says no, the pages
    /// not read yet go into the record unread. Returns the pages read. Failures are
    /// left to the faults (they fetch what is missing).
    pub(crate) fn replay_working_set(&self, mapping: Mapping<'_>, go_on: &dyn Fn() -> bool) -> u64 {
        if !params::working_set() {
            return 0;
        }
        let local = if params::working_set_local() {
            self.host.working_sets().take(self.key)
        } else {
            None
        };
        let mut between = |read: u64| {
            count(&COUNTERS.ws_pages_replayed, read);
            go_on()
        };
        // The parent's packed copy first: what it holds arrives compressed, and the
        // record's replay below skips pages already in the page cache.
        let unpacked = self.unpack_parents_copy(mapping).unwrap_or(0);
        if unpacked > 0 && !between(unpacked) {
            return unpacked;
        }
        let replayed = match local {
            Some(pages) => self.fetch_indices(mapping, pages.iter().copied(), &mut between),
            None => self.replay_parents_record(mapping, &mut between),
        };
        unpacked + replayed.unwrap_or(0)
    }

    /// Reads the parent's packed copy of the working set (`abi::packed`), if the open
    /// carried one, and puts its pages into `mapping`'s page cache as their encodings
    /// arrive, while the next READs are in flight: only pages the descriptor says are
    /// present, each decompressed straight into its folio and kept only if it comes
    /// out as a whole page (the rest are left to the record's replay and the faults,
    /// with a log line). Returns the pages put there.
    fn unpack_parents_copy(&self, mapping: Mapping<'_>) -> Result<u64> {
        let remote = self.link.lock().remote.clone();
        if remote.packed_pages == 0 {
            return Ok(0);
        }
        // At most `abi::packed::MAX_PACKED_PAGES` (checked by the reply's decoder).
        let mut bytes =
            KVVec::from_elem(0u8, remote.packed_pages as usize * PAGE_SIZE, GFP_KERNEL)?;
        let desc = self.descriptor()?;
        let mut unpacker = Unpacker::new();
        let read = remote.read_packed(&mut bytes, |copy, received| {
            unpacker.step(copy, received, |page| {
                if self
                    .locate(&desc, page.index.saturating_mul(PAGE))
                    .is_none()
                {
                    return Some(false);
                }
                // The connection's pipeline is held meanwhile: a folio someone else
                // has locked (a fault filling it) is left to them, not waited for.
                let mut folio = mapping.try_grab(page.index)?;
                if folio.is_uptodate() {
                    return None;
                }
                Some(
                    folio
                        .fill_by(|dst| crate::packed::unpack_page(&page, dst))
                        .is_ok(),
                )
            })
        });
        let (unpacked, refused) = (unpacker.unpacked, unpacker.refused);
        count(&COUNTERS.pages_fetched, unpacked);
        static LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);
        if unpacker.malformed && LOG.allow() {
            pr_warn!(
                "snapshot {} from {}: its packed working set is malformed, not used\n",
                self.key.id,
                Ipv4(self.key.addr)
            );
        } else if refused > 0 && LOG.allow() {
            pr_warn!(
                "snapshot {} from {}: {} pages of its packed working set refused (not in the descriptor, or not decompressing to a whole page), {} unpacked\n",
                self.key.id,
                Ipv4(self.key.addr),
                refused,
                unpacked
            );
        }
        read.map(|()| unpacked)
    }

    /// Prefetches the working set the parent handed out with the open (an earlier
    /// child on another host reported it): only pages the descriptor says are
    /// present, so a lying parent can make a child read nothing it could not fault in.
    fn replay_parents_record(
        &self,
        mapping: Mapping<'_>,
        between: &mut dyn FnMut(u64) -> bool,
    ) -> Result<u64> {
        let desc = self.descriptor()?;
        let mut pages = KVVec::new();
        {
            let link = self.link.lock();
            for r in link.remote.ws_runs.iter() {
                // The decoder checked that runs end before u64::MAX.
                let end = r.first.saturating_add(u64::from(r.pages));
                for i in r.first..end {
                    if self.locate(&desc, i.saturating_mul(PAGE)).is_some() {
                        pages.push(i, GFP_KERNEL)?;
                    }
                }
            }
        }
        self.fetch_indices(mapping, pages.iter().copied(), between)
    }

    /// Puts the lead pages into `mapping`'s page cache (see [`Self::install`]).
    pub(crate) fn install_lead(&self, mapping: Mapping<'_>) -> u64 {
        self.install(mapping, self.lead.offs.iter().copied(), &self.lead.bytes)
    }

    /// Puts pages read along with the descriptor into `mapping`'s page cache: page
    /// `i` of `bytes` at snapshot-file offset `offs[i]` (where not there yet). They
    /// were read with the descriptor's batch, before this pager existed. Returns the
    /// pages put there.
    pub(crate) fn install(
        &self,
        mapping: Mapping<'_>,
        offs: impl Iterator<Item = u64>,
        bytes: &[u8],
    ) -> u64 {
        let mut installed = 0u64;
        for (off, page) in offs.zip(bytes.chunks_exact(PAGE_SIZE)) {
            // A failure leaves the page to its demand fault.
            if let Ok(mut f) = mapping.grab(off / PAGE) {
                if !f.is_uptodate() && f.fill_with(page).is_ok() {
                    installed += 1;
                }
            }
        }
        count(&COUNTERS.pages_fetched, installed);
        installed
    }

    /// One doorbell of READs, page `offs[i]` straight into `folios[i]` (the snapshot
    /// is immutable: if a READ fails and a late response lands after a retry filled
    /// the folio, it writes the same bytes).
    fn read_into(&self, offs: &[u64], folios: &mut [LockedFolio]) -> Result {
        let remote = self.link.lock().remote.clone();
        let r = if self.dead.load(Ordering::Relaxed) {
            Err(crate::errno::enotconn())
        } else {
            let mut read = |from: &RemoteRegion| {
                LockedFolio::fill_all_by_device(folios, |pages| from.read_batch_into(offs, pages))
            };
            match read(&remote) {
                Ok(()) => Ok(()),
                Err(e) if e == EINVAL || e == crate::errno::erange() => Err(e),
                Err(_) => self.reopened(&remote).and_then(|again| read(&again)),
            }
        };
        match r {
            Ok(()) => {
                count(&COUNTERS.pages_fetched, offs.len() as u64);
                Ok(())
            }
            Err(e) => {
                count(&COUNTERS.fetch_failures, 1);
                static LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);
                if LOG.allow() {
                    pr_warn!(
                        "fetching {} pages of snapshot {} from {} failed ({:?}): the faulting child gets SIGBUS\n",
                        offs.len(),
                        self.key.id,
                        Ipv4(self.key.addr),
                        e
                    );
                }
                Err(e)
            }
        }
    }

    /// Eager mode: brings every present page of the snapshot into `mapping`'s page
    /// cache now. Returns the pages fetched.
    pub(crate) fn fetch_all(&self, mapping: Mapping<'_>) -> Result<u64> {
        self.fetch(mapping, None)
    }

    /// Brings the present pages of VMA `only` (or of every VMA) into `mapping`'s page
    /// cache, in batches of one doorbell. Returns the pages fetched.
    fn fetch(&self, mapping: Mapping<'_>, only: Option<usize>) -> Result<u64> {
        let desc = self.descriptor()?;
        // A validated descriptor's pages all have an index (windows and VMA sizes are
        // bounded), so none is left out here.
        let indices =
            present_pages(&desc, only).filter_map(|(vi, page)| folio_index(vi, page).ok());
        self.fetch_indices(mapping, indices, &mut |_| true)
    }

    /// Brings the pages at page-cache `indices` into `mapping`'s page cache (those not
    /// there yet; an index named twice is read once), in batches of one doorbell, up
    /// to `read_batches` (at most [`PIPELINE_DEPTH`]) of them in flight on the
    /// module's workqueue (`readahead.rs`). `between` gets the pages batches read and
    /// says whether to go on; the pages left when it says no are recorded in the
    /// working set unread, so that stopping a replay early does not shrink the
    /// record (batches in flight then finish on their own). Returns the pages read
    /// from the parent.
    fn fetch_indices(
        &self,
        mapping: Mapping<'_>,
        mut indices: impl Iterator<Item = u64>,
        between: &mut dyn FnMut(u64) -> bool,
    ) -> Result<u64> {
        let depth = params::read_batches(PIPELINE_DEPTH);
        let in_flight = if depth > 1 {
            crate::readahead::Batches::new().ok()
        } else {
            None
        };
        let mut batch: KVec<LockedFolio> = KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL)?;
        let mut fetched = 0u64;
        while let Some(index) = indices.next() {
            // A record may name a page twice (a page reclaimed and fetched again is
            // recorded again): its folio is then locked in this batch already, and
            // grabbing it would wait for ourselves forever (one in a batch in flight
            // is waited for: that batch ends on its own).
            if batch.iter().any(|f| f.index() == index) {
                continue;
            }
            let f = mapping.grab(index)?;
            if f.is_uptodate() {
                continue;
            }
            // Within the capacity reserved above: no allocation.
            batch.push(f, GFP_KERNEL)?;
            if batch.len() == MAX_READ_BATCH {
                let full = core::mem::replace(
                    &mut batch,
                    KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL)?,
                );
                let read = self.fetch_batch(mapping, full, in_flight.as_ref(), depth)?;
                fetched += read;
                if !between(read) {
                    if params::working_set() {
                        self.trace.lock().record(indices);
                    }
                    return Ok(fetched);
                }
            }
        }
        let mut read = self.fetch_batch(mapping, batch, in_flight.as_ref(), depth)?;
        if let Some(batches) = &in_flight {
            read += batches.wait_below(1, batch_timeout_ms())?;
        }
        between(read);
        Ok(fetched + read)
    }

    /// Reads `folios` (locked, not up to date) in one doorbell: queued for the
    /// workqueue once fewer than `depth` batches of `in_flight` are, else (no
    /// pipeline, or the queue refused it) here. Returns the pages read since the
    /// last call: by this batch, or by the batches in flight that finished.
    fn fetch_batch(
        &self,
        mapping: Mapping<'_>,
        mut folios: KVec<LockedFolio>,
        in_flight: Option<&Arc<crate::readahead::Batches>>,
        depth: usize,
    ) -> Result<u64> {
        if folios.is_empty() {
            return Ok(0);
        }
        let mut read = 0;
        if let (Some(batches), Some(inode)) = (in_flight, mapping.inode()) {
            read = batches.wait_below(depth, batch_timeout_ms())?;
            batches.started();
            match crate::readahead::start(&self.host, inode, folios, Some(batches.clone())) {
                Ok(()) => return Ok(read),
                Err(back) => {
                    batches.not_started();
                    folios = back;
                }
            }
        }
        // Unlocks and releases the batch's folios when it returns.
        Ok(read + self.fill(&mut folios)? as u64)
    }

    /// Copies VMA `vi`'s snapshot content into the caller's memory at the seed's
    /// address (anonymous memory the caller just mapped there: a stack), fetching its
    /// present pages first; never-touched pages stay zero.
    #[inline(never)]
    pub(crate) fn copy_vma_to_user(&self, mapping: Mapping<'_>, vi: usize) -> Result {
        self.fetch(mapping, Some(vi))?;
        let desc = self.descriptor()?;
        let vma = desc.vma(vi).ok_or(EINVAL)?;
        for (_, page) in present_pages(&desc, Some(vi)) {
            let f = mapping.grab(folio_index(vi, page)?)?;
            if !f.is_uptodate() {
                return Err(EIO);
            }
            let at = page
                .checked_mul(PAGE)
                .and_then(|off| vma.start.checked_add(off))
                .ok_or(EINVAL)?;
            // The copy goes to anonymous memory, whose faults never need this folio.
            kernel::uaccess::UserSlice::new(at as usize, PAGE_SIZE)
                .writer()
                .write_slice(f.bytes())?;
        }
        Ok(())
    }

    /// The first pages of `touched` (in touch order) a child does not get as lead
    /// pages, with their region pages: what the next resume reads in its descriptor
    /// batch. Empty when memory is short (a record is a hint).
    fn first_touches(&self, touched: &[u64]) -> KVec<HotPage> {
        let (Ok(desc), Ok(mut lead), Ok(mut out)) = (
            self.descriptor(),
            KBox::new([0u64; MAX_LEAD_PAGES], GFP_KERNEL),
            KBox::new([HotPage::default(); MAX_HOT_PAGES], GFP_KERNEL),
        ) else {
            return KVec::new();
        };
        let n_lead = desc.lead_offsets(&mut lead);
        let n = desc.first_touches(
            self.desc.len() as u64,
            &lead[..n_lead],
            touched.iter().copied(),
            &mut out[..],
        );
        crate::util::copy_first(&out[..], n).unwrap_or_default()
    }

    /// The snapshot this pager serves.
    pub(crate) fn key(&self) -> PagerKey {
        self.key
    }
}

/// The longest a fetch waits for one of its batches in flight: its READ, a reconnect
/// and the READ again.
fn batch_timeout_ms() -> u32 {
    params::io_timeout_ms()
        .saturating_mul(2)
        .saturating_add(params::connect_timeout_ms())
}

/// Sends `pages` (sorted here) to the parent as runs, with their first-touch pages
/// `hot`; nothing if empty or short of memory.
fn report_working_set(remote: &RemoteRegion, pages: &mut [u64], hot: &[HotPage]) {
    if pages.is_empty() {
        return;
    }
    let Ok(mut runs) = KVec::from_elem(WsRun::default(), MAX_WS_RUNS, GFP_KERNEL) else {
        return;
    };
    let n = runs_from_pages(pages, &mut runs);
    remote.report_working_set(&runs[..n], hot);
}

/// Page index in the snapshot file of VMA `vi`'s page `page`.
fn folio_index(vi: usize, page: u64) -> Result<u64> {
    (window_offset(vi) / PAGE).checked_add(page).ok_or(EINVAL)
}

/// The present pages of VMA `only` (or of every VMA), as (VMA index, page in VMA).
fn present_pages<'a>(
    desc: &'a Descriptor<'a>,
    only: Option<usize>,
) -> impl Iterator<Item = (usize, u64)> + 'a {
    (0..desc.n_vmas())
        .filter(move |&i| only.is_none_or(|o| o == i))
        .filter_map(|i| Some((i, desc.vma(i)?)))
        .flat_map(move |(i, vma)| {
            let first = vma.first_run as usize;
            (first..first.saturating_add(vma.n_runs as usize))
                .filter_map(move |ri| desc.run(ri))
                .filter(|run| run.kind == RUN_PRESENT)
                .flat_map(move |run| {
                    (0..run.n_pages as u64).map(move |p| (i, run.page.saturating_add(p)))
                })
        })
}

/// Unpacks a packed copy (`abi::packed`) piece by piece, as its bytes arrive.
struct Unpacker {
    /// Whether the table arrived and was checked.
    parsed: bool,
    /// Each page's index and where its encoding ends in the copy, from the table.
    ends: KVVec<(u64, usize)>,
    /// The next page to unpack, and where its encoding starts.
    next: usize,
    at: usize,
    malformed: bool,
    unpacked: u64,
    refused: u64,
}

impl Unpacker {
    fn new() -> Self {
        Unpacker {
            parsed: false,
            ends: KVVec::new(),
            next: 0,
            at: 0,
            malformed: false,
            unpacked: 0,
            refused: 0,
        }
    }

    /// Hands each page whose encoding is among the first `received` bytes of `copy`
    /// (the whole copy, its later bytes not arrived yet) to `put`, in order, once:
    /// `Some(true)` it was put in place, `Some(false)` refused, `None` left alone.
    fn step(
        &mut self,
        copy: &[u8],
        received: usize,
        mut put: impl FnMut(PackedPage<'_>) -> Option<bool>,
    ) -> Result {
        if self.malformed {
            return Ok(());
        }
        let received = received.min(copy.len());
        if !self.parsed {
            let whole = received == copy.len();
            match head_len(&copy[..received]) {
                Some(head) if head <= received => (),
                // The table is not in yet; a count out of bounds is refused below.
                _ if !whole => return Ok(()),
                _ => (),
            }
            let Ok(index) = PackedIndex::parse(copy) else {
                self.malformed = true;
                return Ok(());
            };
            let mut end = index.payload_start();
            self.at = end;
            for page in index.pages() {
                // The lengths were checked to add up within the copy; checked anyway.
                end = end.checked_add(page.encoded.len()).ok_or(EINVAL)?;
                self.ends.push((page.index, end), GFP_KERNEL)?;
            }
            self.parsed = true;
        }
        while let Some(&(index, end)) = self.ends.get(self.next) {
            if end > received {
                break;
            }
            let encoded = copy.get(self.at..end).ok_or(EINVAL)?;
            match put(PackedPage { index, encoded }) {
                Some(true) => self.unpacked += 1,
                Some(false) => self.refused += 1,
                None => (),
            }
            self.next += 1;
            self.at = end;
        }
        Ok(())
    }
}
