// SPDX-License-Identifier: GPL-2.0

//! The snapshot filesystem: an internal pseudo filesystem with one inode per snapshot
//! a child on this host maps, whose page cache is filled by the snapshot's [`Pager`].
//!
//! This file holds every `unsafe` of it: the filesystem type and its mount, the inode
//! cache, the `address_space_operations` the VFS calls on a page-cache miss
//! (`read_folio`, `readahead`), and the types the pager fills pages through
//! ([`LockedFolio`], [`Mapping`], [`File`]). What a page holds is the pager's policy
//! (`pager.rs`, no `unsafe`).
//!
//! Callbacks reach their state through their own context: a folio's inode holds its
//! pager (`i_private`), the superblock holds the [`SnapshotFs`] (`s_fs_info`).

use crate::bindings;
use crate::mm::VmaFile;
use crate::pager::{Pager, PagerKey};
use crate::rdma::connection::MAX_READ_BATCH;
use crate::rdma::pages::{copy_page_bytes, PageRef};
use crate::rdma::PAGE_SIZE;
use crate::remote::OpenAtParent;
use core::ptr::{self, NonNull};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::types::Opaque;

/// `statfs` magic of the snapshot filesystem ("MSNF").
const SNAPSHOT_FS_MAGIC: u64 = 0x4D53_4E46;

/// Most snapshots with live children on this host at once.
const MAX_CACHED: usize = 1024;
/// Most snapshots kept without children (`keep_ms`, `open_linger_ms`); keeping one
/// more drops the one expiring first.
const MAX_KEPT: usize = 16;

/// What a host keeps of a snapshot after its last child here exited.
enum Kept {
    /// The inode with its page cache and its pager's open (`keep_ms`): a warm host.
    Inode(SnapshotInode),
    /// Only the open at the parent (`open_linger_ms`): the parent keeps its
    /// registration for this host, so the next child's open costs a round trip, not a
    /// registration of the whole snapshot; the pages are gone.
    Open(PagerKey, OpenAtParent),
}

impl Kept {
    /// Whether entries of this kind expire at once now (their parameter is 0).
    fn unwanted(&self) -> bool {
        match self {
            Kept::Inode(_) => crate::params::keep_ms() == 0,
            Kept::Open(..) => crate::params::open_linger_ms() == 0,
        }
    }
}

/// A locked, order-0 page-cache folio of a snapshot file that the pager fills.
/// Dropping it unlocks it (and drops the reference [`Mapping::grab`] took): a folio
/// not marked up to date by then makes the faulting access fail with `SIGBUS`.
///
/// # Invariants
///
/// `folio` is locked by us, in the page cache of one of our inodes; when `owned`, we
/// also hold one reference on it.
pub(crate) struct LockedFolio {
    folio: NonNull<bindings::folio>,
    owned: bool,
}

// SAFETY: a locked folio may be filled and unlocked from any thread.
unsafe impl Send for LockedFolio {}

impl LockedFolio {
    /// Page index of the folio in its file (file offset / page size).
    pub(crate) fn index(&self) -> u64 {
        // SAFETY: a live folio (type invariant).
        unsafe { bindings::mitosis_folio_index(self.folio.as_ptr()) as u64 }
    }

    pub(crate) fn is_uptodate(&self) -> bool {
        // SAFETY: as above.
        unsafe { bindings::mitosis_folio_test_uptodate(self.folio.as_ptr()) }
    }

    /// Marks the folio as the first of a window read ahead (`PG_readahead`, as the
    /// kernel's readahead does): fault-around never maps such a folio, so the first
    /// access to it faults, and the fault handler (`snapshot_fault`) clears the mark
    /// and reads the next window ahead.
    pub(crate) fn mark_readahead(&mut self) {
        // SAFETY: locked (type invariant); the flag is the page cache's to use for
        // readahead, which is off for our files (`ra_pages` 0), so no one else sets
        // or reads it but the fault paths above.
        unsafe { bindings::mitosis_folio_set_readahead(self.folio.as_ptr()) };
    }

    /// The page's bytes. Not up to date, they are not the snapshot's yet.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: an order-0 folio we hold locked (type invariant): its one page is
        // mapped (x86-64 has no highmem), and no one writes it but its filler (us).
        unsafe {
            let page = bindings::mitosis_folio_page(self.folio.as_ptr());
            core::slice::from_raw_parts(bindings::mitosis_page_address(page).cast(), PAGE_SIZE)
        }
    }

    /// Fills the page with `bytes` (exactly a page; `EINVAL` otherwise) as
    /// [`fill_by`](Self::fill_by) does.
    pub(crate) fn fill_with(&mut self, bytes: &[u8]) -> Result {
        self.fill_by(|dst| copy_page_bytes(dst, bytes))
    }

    /// Fills the page by `fill` (which gets its bytes to write) and marks it up to date
    /// if `fill` succeeded; a failed fill leaves it not up to date, to be filled again.
    pub(crate) fn fill_by(&mut self, fill: impl FnOnce(&mut [u8]) -> Result) -> Result {
        if self.is_uptodate() {
            return Err(EEXIST);
        }
        // SAFETY: as in `bytes`; the folio is not up to date (checked above), so no
        // mapping reads it while `fill` writes.
        let dst = unsafe {
            let page = bindings::mitosis_folio_page(self.folio.as_ptr());
            core::slice::from_raw_parts_mut(bindings::mitosis_page_address(page).cast(), PAGE_SIZE)
        };
        fill(dst)?;
        self.mark_uptodate();
        Ok(())
    }

    /// Fills every folio of `folios` by a device write into its page: `read` gets the
    /// pages, lent for the call (each folio is locked and not up to date, so nothing
    /// reads them as data meanwhile); if it succeeds every folio is marked up to date,
    /// else none is (`EEXIST` if one is up to date already).
    pub(crate) fn fill_all_by_device(
        folios: &mut [LockedFolio],
        read: impl FnOnce(&[PageRef<'_>]) -> Result,
    ) -> Result {
        if folios.iter().any(|f| f.is_uptodate()) {
            return Err(EEXIST);
        }
        let mut pages = KVec::with_capacity(folios.len(), GFP_KERNEL)?;
        for f in folios.iter() {
            // SAFETY: an order-0 folio we hold locked and referenced (type invariant)
            // for the whole call, not up to date (checked above).
            let page = unsafe { bindings::mitosis_folio_page(f.folio.as_ptr()) };
            let page = NonNull::new(page).ok_or(EINVAL)?;
            // SAFETY: live for this call (above); only the device writes it meanwhile.
            pages.push(unsafe { PageRef::new(page) }, GFP_KERNEL)?;
        }
        read(&pages)?;
        for f in folios.iter_mut() {
            f.mark_uptodate();
        }
        Ok(())
    }

    /// Fills the page with zeros (a hole of the snapshot), marks it up to date.
    pub(crate) fn fill_zero(&mut self) {
        // SAFETY: a locked folio (type invariant): zeroing then marking it up to date
        // is how a filesystem fills a hole.
        unsafe { bindings::mitosis_folio_zero(self.folio.as_ptr()) };
        self.mark_uptodate();
    }

    fn mark_uptodate(&mut self) {
        // SAFETY: locked (type invariant) and filled by the caller.
        unsafe { bindings::mitosis_folio_mark_uptodate(self.folio.as_ptr()) };
    }
}

impl Drop for LockedFolio {
    fn drop(&mut self) {
        // SAFETY: locked by us, and referenced by us when `owned` (type invariant).
        unsafe {
            bindings::folio_unlock(self.folio.as_ptr());
            if self.owned {
                bindings::mitosis_folio_put(self.folio.as_ptr());
            }
        }
    }
}

/// The page cache of a snapshot file.
///
/// # Invariants
///
/// `0` is the live mapping of one of our inodes, for as long as the borrow it came
/// from: of the [`File`], or of a folio locked in it.
#[derive(Clone, Copy)]
pub(crate) struct Mapping<'a>(
    NonNull<bindings::address_space>,
    core::marker::PhantomData<&'a ()>,
);

impl LockedFolio {
    /// The mapping the folio is locked in (one of ours: only our mappings' folios
    /// become `LockedFolio`s).
    pub(crate) fn mapping(&self) -> Option<Mapping<'_>> {
        // SAFETY: a locked page-cache folio keeps its mapping, whose inode cannot be
        // evicted while the folio is locked (type invariant).
        let m = unsafe { bindings::mitosis_folio_mapping(self.folio.as_ptr()) };
        NonNull::new(m).map(|m| Mapping(m, core::marker::PhantomData))
    }
}

impl Mapping<'_> {
    /// The folio at page `index`, locked, with a reference, if that takes no wait for
    /// another folio's lock (created not up to date if it was absent): readahead next
    /// to a folio the caller holds locked.
    pub(crate) fn try_grab(&self, index: u64) -> Option<LockedFolio> {
        let index = usize::try_from(index).ok()?;
        // SAFETY: a live mapping (type invariant).
        let f = kernel::error::from_err_ptr(unsafe {
            bindings::mitosis_grab_folio_nowait(self.0.as_ptr(), index as _)
        })
        .ok()?;
        Some(LockedFolio {
            folio: NonNull::new(f)?,
            owned: true,
        })
    }

    /// A reference on the mapping's inode, which keeps its pager and page cache for
    /// work that outlives the borrow (`None` if the inode is being evicted).
    pub(crate) fn inode(&self) -> Option<SnapshotInode> {
        // SAFETY: a live mapping (type invariant) of one of our inodes; `igrab` takes a
        // reference only on an inode not being freed.
        let inode = unsafe { bindings::igrab((*self.0.as_ptr()).host) };
        // INVARIANT: the reference `igrab` took is the new value's.
        NonNull::new(inode).map(SnapshotInode)
    }

    /// The folio at page `index`, locked, with a reference (created not up to date if
    /// it was absent).
    pub(crate) fn grab(&self, index: u64) -> Result<LockedFolio> {
        let index = usize::try_from(index).map_err(|_| EINVAL)?;
        // SAFETY: a live mapping (type invariant).
        let f = kernel::error::from_err_ptr(unsafe {
            bindings::mitosis_grab_folio(self.0.as_ptr(), index as _)
        })?;
        Ok(LockedFolio {
            folio: NonNull::new(f).ok_or(ENOMEM)?,
            owned: true,
        })
    }
}

/// `address_space_operations::read_folio`.
unsafe extern "C" fn read_folio(_file: *mut bindings::file, folio: *mut bindings::folio) -> i32 {
    let Some(folio) = NonNull::new(folio) else {
        return EINVAL.to_errno();
    };
    // SAFETY: the folio is locked in one of our mappings, so its inode is not evicted.
    let pager = unsafe { folio_pager(folio) };
    // The VFS gives us the folio locked, in our mapping, with its own reference.
    let folio = LockedFolio {
        folio,
        owned: false,
    };
    match pager.demand_fault(folio) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// `address_space_operations::readahead`: the folios of the window arrive locked.
///
/// Batches are on the heap (a fault can come from deep in the kernel, so this path
/// keeps its stack small); without memory for one, each folio is filled on its own.
/// Errors leave folios not up to date: a later fault retries with `read_folio`.
unsafe extern "C" fn readahead(rac: *mut bindings::readahead_control) {
    let mut batch: KVec<LockedFolio> =
        KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL).unwrap_or(KVec::new());
    let mut pager: Option<&Pager> = None;
    loop {
        // SAFETY: `rac` is the VFS's live readahead control; each folio returned is
        // locked, in our mapping, and referenced by the readahead control.
        let f = unsafe { bindings::mitosis_readahead_folio(rac) };
        let Some(folio) = NonNull::new(f) else { break };
        // SAFETY: as in `read_folio`; every folio of one readahead is of one inode.
        let pager = *pager.get_or_insert_with(|| unsafe { folio_pager(folio) });
        let f = LockedFolio {
            folio,
            owned: false,
        };
        if batch.capacity() == 0 {
            let _ = pager.fault(&mut [f]);
            continue;
        }
        if batch.push(f, GFP_KERNEL).is_err() {
            continue;
        }
        if batch.len() == MAX_READ_BATCH {
            let _ = pager.fault(&mut batch);
            // Unlocks the batch's folios.
            crate::util::clear(&mut batch);
        }
    }
    if let Some(pager) = pager {
        let _ = pager.fault(&mut batch);
    }
}

/// How a child's mappings of a snapshot file fault (chosen per open, see
/// [`SnapshotFs::open`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Faults {
    /// The first child of a new pager: no fault-around, so every page it maps comes by
    /// a fault and the working set records exactly the pages it touched.
    EveryPage,
    /// A child joining a pager whose pages are (mostly) cached: fault-around maps up
    /// to 16 cached pages per fault. Its faults still record first touches, but pages
    /// fault-around maps are not recorded (earlier children's touches mostly are).
    AroundCached,
}

/// `file_operations::mmap` of [`Faults::EveryPage`] files.
///
/// # Safety
///
/// Called by the VFS for a file made by [`SnapshotFs::open`], with a VMA being set up.
unsafe extern "C" fn snapshot_file_mmap_every_page(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> i32 {
    // SAFETY: per the contract.
    unsafe { snapshot_file_mmap(file, vma, Faults::EveryPage) }
}

/// `file_operations::mmap` of [`Faults::AroundCached`] files.
///
/// # Safety
///
/// As [`snapshot_file_mmap_every_page`].
unsafe extern "C" fn snapshot_file_mmap_around_cached(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> i32 {
    // SAFETY: per the contract.
    unsafe { snapshot_file_mmap(file, vma, Faults::AroundCached) }
}

/// The page cache's mapping, with the operations of `faults`.
///
/// # Safety
///
/// As [`snapshot_file_mmap_every_page`].
unsafe fn snapshot_file_mmap(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
    faults: Faults,
) -> i32 {
    // SAFETY: per the contract.
    let r = unsafe { bindings::generic_file_mmap(file, vma) };
    if r == 0 {
        // SAFETY: the file holds its inode, whose superblock is ours (its `SnapshotFs`
        // outlives it); the VMA is ours to set up.
        unsafe {
            let fs = fs_of((*(*file).f_inode).i_sb);
            (*vma).vm_ops = fs.vm_ops[faults as usize].get();
        }
    }
    r
}

/// `vm_operations_struct::fault`: `filemap_fault`, which fills a missing page through
/// `read_folio`, then the first touch of each page on this host goes into the
/// snapshot's working set (`Pager::touched`). The folio's `checked` flag (ours: the
/// folio belongs to our filesystem) marks it as recorded, under the folio lock the
/// fault returns with. A folio marked as the first of a window read ahead (never
/// mapped by fault-around) has its mark cleared here, and the pager reads the next
/// window ahead (`Pager::window_entered`).
///
/// # Safety
///
/// Called by the MM for a fault in a VMA of one of our snapshot files.
unsafe extern "C" fn snapshot_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: per the contract.
    let ret = unsafe { bindings::filemap_fault(vmf) };
    // SAFETY: `vmf` is the MM's live fault description; with `VM_FAULT_LOCKED`,
    // `page` is a locked page of the VMA's file, referenced for the fault, so its
    // mapping is ours and live while this block runs.
    unsafe {
        if bindings::mitosis_fault_locked(ret) && !(*vmf).page.is_null() {
            let folio = bindings::mitosis_page_folio((*vmf).page);
            let first = !bindings::mitosis_folio_test_checked(folio);
            if first {
                bindings::mitosis_folio_set_checked(folio);
            }
            let entered = bindings::mitosis_folio_test_clear_readahead(folio);
            let mapping = NonNull::new(bindings::mitosis_folio_mapping(folio));
            if let (Some(f), Some(m), true) = (NonNull::new(folio), mapping, first || entered) {
                let pager = folio_pager(f);
                let index = bindings::mitosis_folio_index(folio) as u64;
                if first {
                    pager.touched(index);
                }
                if entered {
                    // INVARIANT: the mapping of a folio locked in it, for this block.
                    pager.window_entered(index, Mapping(m, core::marker::PhantomData));
                }
            }
        }
    }
    ret
}

/// Snapshot-file operations whose `mmap` is `mmap`.
fn file_operations(
    module: &'static ThisModule,
    mmap: unsafe extern "C" fn(*mut bindings::file, *mut bindings::vm_area_struct) -> i32,
) -> Opaque<bindings::file_operations> {
    let mut v = bindings::file_operations::default();
    v.owner = module.as_ptr().cast();
    v.mmap = Some(mmap);
    v.release = Some(snapshot_file_release);
    Opaque::new(v)
}

/// Snapshot-mapping operations, with fault-around if `map_pages` is set.
fn vm_operations(
    map_pages: Option<
        unsafe extern "C" fn(*mut bindings::vm_fault, usize, usize) -> bindings::vm_fault_t,
    >,
) -> Opaque<bindings::vm_operations_struct> {
    let mut v = bindings::vm_operations_struct::default();
    v.fault = Some(snapshot_fault);
    v.map_pages = map_pages;
    v.page_mkwrite = Some(bindings::filemap_page_mkwrite);
    Opaque::new(v)
}

/// The pager of a folio's inode.
///
/// # Safety
///
/// `folio` is locked in the page cache of one of our inodes (which keeps the inode from
/// eviction) for `'a`.
unsafe fn folio_pager<'a>(folio: NonNull<bindings::folio>) -> &'a Pager {
    // SAFETY: per the contract.
    unsafe { pager_of(bindings::mitosis_folio_inode(folio.as_ptr())) }
}

/// The pager of one of our inodes.
///
/// # Safety
///
/// `inode` is a live inode of the snapshot filesystem, not yet evicted.
/// `release` of a snapshot file: its last reference is gone.
///
/// # Safety
///
/// Called by the VFS for a file made by [`SnapshotFs::open`] (only those use these file
/// operations), with its inode, which the file holds until after this returns.
unsafe extern "C" fn snapshot_file_release(
    inode: *mut bindings::inode,
    _file: *mut bindings::file,
) -> core::ffi::c_int {
    // SAFETY: one of our inodes, live (per the contract).
    let pager = unsafe { pager_of(inode) };
    if pager.file_closed() == 0 && crate::params::keep_ms() > 0 && pager.shareable() {
        // SAFETY: the inode is ours (so is its superblock) and live: the file being
        // released still holds it.
        unsafe { fs_of((*inode).i_sb).keep(inode) };
    }
    0
}

/// The `kept_work` of a [`SnapshotFs`]: drops expired kept inodes.
///
/// # Safety
///
/// Called by the workqueue for the `kept_work` of a live `SnapshotFs` (it cancels the
/// work before it goes).
unsafe extern "C" fn expire_kept(work: *mut bindings::work_struct) {
    let at = core::mem::offset_of!(SnapshotFs, kept_work)
        + core::mem::offset_of!(bindings::delayed_work, work);
    // SAFETY: `work` is the `work` of the `kept_work` of a live `SnapshotFs`.
    let fs = unsafe { &*(work.cast::<u8>().sub(at) as *const SnapshotFs) };
    fs.expire();
}

fn now_ns() -> u64 {
    kernel::time::Ktime::ktime_get().to_ns() as u64
}

unsafe fn pager_of<'a>(inode: *mut bindings::inode) -> &'a Pager {
    // SAFETY: `i_private` is set from `Arc::into_raw` before the inode is used and
    // released in `evict_inode` only.
    unsafe { &*((*inode).i_private as *const Pager) }
}

/// The filesystem state of one of our superblocks.
///
/// # Safety
///
/// `sb` is a live superblock of the snapshot filesystem.
unsafe fn fs_of<'a>(sb: *mut bindings::super_block) -> &'a SnapshotFs {
    // SAFETY: `s_fs_info` is set by `SnapshotFs::pin` when it mounts; the `SnapshotFs`
    // outlives the superblock (its owner, the module, cannot unload while the
    // superblock holds it).
    unsafe { &*((*sb).s_fs_info as *const SnapshotFs) }
}

/// `super_operations::evict_inode`: the last user is gone.
unsafe extern "C" fn evict_inode(inode: *mut bindings::inode) {
    // SAFETY: the VFS evicts a live inode of ours exactly once.
    unsafe {
        bindings::truncate_inode_pages_final(ptr::addr_of_mut!((*inode).i_data));
        bindings::clear_inode(inode);
    }
    // SAFETY: see `pager_of`; nothing uses the inode any more.
    let raw = unsafe { (*inode).i_private } as *const Pager;
    if raw.is_null() {
        return;
    }
    // SAFETY: produced by `Arc::into_raw` in `SnapshotFs::create`.
    let pager = unsafe { Arc::from_raw(raw) };
    // SAFETY: the inode is one of ours, so is its superblock.
    let fs = unsafe { fs_of((*inode).i_sb) };
    // Out of the cache before the pager goes: lookups read cached inodes' pagers under
    // the cache lock.
    fs.forget(inode);
    // The last reference: dropping the pager closes the remote open.
    drop(pager);
    // The inode's pin, taken in `SnapshotFs::create`.
    fs.unpin();
}

/// `file_system_type::init_fs_context`.
unsafe extern "C" fn init_fs_context(fc: *mut bindings::fs_context) -> i32 {
    // SAFETY: `fc` is the VFS's live context.
    let ctx = unsafe { bindings::init_pseudo(fc, SNAPSHOT_FS_MAGIC as _) };
    if ctx.is_null() {
        return ENOMEM.to_errno();
    }
    // SAFETY: `ctx` was just allocated for `fc`; the ops table is static.
    unsafe { (*ctx).ops = &SUPER_OPS };
    0
}

static SUPER_OPS: bindings::super_operations = bindings::super_operations {
    statfs: Some(bindings::simple_statfs),
    drop_inode: Some(bindings::generic_delete_inode),
    evict_inode: Some(evict_inode),
    // SAFETY: all-zero is a valid table (every other callback absent).
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
};

static AOPS: bindings::address_space_operations = bindings::address_space_operations {
    read_folio: Some(read_folio),
    readahead: Some(readahead),
    // Mappings are private: a write copies the page. Anything that still dirties a
    // page-cache folio of ours (a forced write through /proc/PID/mem of a read-only
    // view) must not reach writeback, which we do not have.
    dirty_folio: Some(bindings::noop_dirty_folio),
    // SAFETY: as above.
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
};

/// The filesystem type. Static because its lock-class keys must be in static storage
/// for lockdep; only the VFS writes to it (under its own locks) once `owner` is set.
struct FsType(core::cell::UnsafeCell<bindings::file_system_type>);

// SAFETY: see the type's comment.
unsafe impl Sync for FsType {}

static FS_TYPE: FsType = FsType(core::cell::UnsafeCell::new(bindings::file_system_type {
    name: c"mitosis-snapshot".as_ptr().cast(),
    init_fs_context: Some(init_fs_context),
    kill_sb: Some(bindings::kill_anon_super),
    // SAFETY: all-zero is a valid value for every other field (`owner` is set at
    // load, before the first mount).
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
}));

/// The filesystem's mount, made on first use and dropped with the last pin.
///
/// Why not one mount for the module's lifetime: a superblock holds a reference on its
/// type's owner, so a permanent mount would pin the module forever; without an owner,
/// `__fput` drops the file's module reference *before* it evicts the inode (our code),
/// so an unload racing a child's exit would run freed text. Instead every snapshot
/// inode holds a pin of a mount whose superblock holds the module: the module stays
/// until the last inode is evicted and the superblock is gone. The mount is not
/// internal (`SB_KERNMOUNT` unset), so the last `mntput`, which may come from
/// `evict_inode`, tears the superblock down later in task work, never under us.
///
/// # Invariants
///
/// `mnt` is non-null exactly while `pins` > 0, and then holds one mount reference
/// per pin.
struct Mount {
    mnt: *mut bindings::vfsmount,
    pins: usize,
}

// SAFETY: a mount pointer may be used from any thread.
unsafe impl Send for Mount {}

/// The internal filesystem and the cache of snapshot inodes.
///
/// # Invariants
///
/// `fops` is pinned; every cached inode pointer is live (removed in `evict_inode`) and
/// owns one pin of `mount`.
#[pin_data]
pub(crate) struct SnapshotFs {
    /// File and mapping operations per [`Faults`] (indexed by it).
    #[pin]
    fops: [Opaque<bindings::file_operations>; 2],
    #[pin]
    vm_ops: [Opaque<bindings::vm_operations_struct>; 2],
    module: &'static ThisModule,
    #[pin]
    cache: Mutex<KVec<(PagerKey, *mut bindings::inode)>>,
    #[pin]
    mount: Mutex<Mount>,
    /// What is kept after a snapshot's last child exited, each with the
    /// `CLOCK_MONOTONIC` ns it expires at.
    #[pin]
    kept: Mutex<KVec<(Kept, u64)>>,
    /// Set by `stop`: nothing is kept any more.
    stopped: core::sync::atomic::AtomicBool,
    /// Drops expired `kept` entries (on the system workqueue; cancelled by `stop`).
    #[pin]
    kept_work: Opaque<bindings::delayed_work>,
}

// SAFETY: the C structs are used by the VFS under its own locking; the cache and the
// mount are behind mutexes.
unsafe impl Send for SnapshotFs {}
// SAFETY: as above.
unsafe impl Sync for SnapshotFs {}

/// A reference on a snapshot inode (dropped with `iput`).
///
/// # Invariants
///
/// We own one reference on `0`, a live inode of ours.
pub(crate) struct SnapshotInode(NonNull<bindings::inode>);

impl SnapshotInode {
    /// The inode's pager.
    pub(crate) fn pager(&self) -> &Pager {
        // SAFETY: we hold a reference on the live inode (type invariant), and its pager
        // lives until the inode is evicted.
        unsafe { pager_of(self.0.as_ptr()) }
    }
}

impl Drop for SnapshotInode {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant).
        unsafe { bindings::iput(self.0.as_ptr()) };
    }
}

// SAFETY: an inode reference may be used and dropped (`iput`, which may sleep) from
// any task; work items drop theirs in process context.
unsafe impl Send for SnapshotInode {}

impl SnapshotFs {
    pub(crate) fn new(module: &'static ThisModule) -> impl PinInit<Self> {
        // SAFETY: no mount exists before the module's state does, so the VFS does not
        // read the type yet; the owner is this module, live while the type is used.
        unsafe { (*FS_TYPE.0.get()).owner = module.as_ptr().cast() };
        pin_init!(SnapshotFs {
            fops: [
                file_operations(module, snapshot_file_mmap_every_page),
                file_operations(module, snapshot_file_mmap_around_cached),
            ],
            // The page cache's own fault handler, recording first touches; fault-around
            // (`map_pages`) only for `AroundCached`: without it a page gets into a
            // child's page table only by a fault, so the working set holds the pages
            // children touched, not those a window read along.
            vm_ops: [
                vm_operations(None),
                vm_operations(Some(bindings::filemap_map_pages)),
            ],
            module,
            cache <- new_mutex!(KVec::new()),
            mount <- new_mutex!(Mount {
                mnt: ptr::null_mut(),
                pins: 0,
            }),
            kept <- new_mutex!(KVec::new()),
            stopped: core::sync::atomic::AtomicBool::new(false),
            kept_work <- Opaque::ffi_init(|w: *mut bindings::delayed_work| {
                // SAFETY: `w` is valid for writing; the callback matches the work.
                unsafe { bindings::mitosis_init_delayed_work(w, Some(expire_kept)) }
            }),
        })
    }

    /// Keeps `inode` (whose last child just exited) for `keep_ms`: the next resume of
    /// its snapshot here finds its page cache. Keeping it again pushes its expiry out.
    ///
    /// # Safety
    ///
    /// `inode` is a live inode of this filesystem.
    unsafe fn keep(&self, inode: *mut bindings::inode) {
        let ms = crate::params::keep_ms();
        let until = now_ns().saturating_add(ms as u64 * 1_000_000);
        {
            let mut kept = self.kept.lock();
            let found = kept
                .iter_mut()
                .find(|(k, _)| matches!(k, Kept::Inode(i) if i.0.as_ptr() == inode));
            if let Some(e) = found {
                e.1 = until;
                drop(kept);
                self.expire_in(ms);
                return;
            }
        }
        // SAFETY: live (per the contract); the reference is the entry's.
        unsafe { bindings::ihold(inode) };
        // SAFETY: `inode` is non-null (live).
        let held = SnapshotInode(unsafe { NonNull::new_unchecked(inode) });
        self.add_kept(Kept::Inode(held), ms);
    }

    /// Keeps `open`, the open at the parent of snapshot `key` whose last child here
    /// exited, for `open_linger_ms` (see [`Kept::Open`]); closes it now if that is 0
    /// or the module is stopping.
    pub(crate) fn linger(&self, key: PagerKey, open: OpenAtParent) {
        let ms = crate::params::open_linger_ms();
        if ms > 0 && !self.stopped.load(core::sync::atomic::Ordering::Acquire) {
            self.add_kept(Kept::Open(key, open), ms);
        }
    }

    /// Takes the open of snapshot `key` kept by [`SnapshotFs::linger`], if any (the
    /// caller drops it once its own open of the snapshot holds the registration).
    pub(crate) fn take_open(&self, key: PagerKey) -> Option<OpenAtParent> {
        let mut kept = self.kept.lock();
        let at = kept
            .iter()
            .position(|(k, _)| matches!(k, Kept::Open(k, _) if *k == key))?;
        match crate::util::swap_remove(&mut kept, at) {
            Some((Kept::Open(_, open), _)) => Some(open),
            // Closes nothing else: the position found an open.
            _ => None,
        }
    }

    /// Adds `entry` to what is kept, expiring in `ms`; the entry expiring first goes if
    /// there are [`MAX_KEPT`] already. Without memory for it, `entry` is dropped now.
    fn add_kept(&self, entry: Kept, ms: u32) {
        let until = now_ns().saturating_add(ms as u64 * 1_000_000);
        let mut dropped = None;
        {
            let mut kept = self.kept.lock();
            if kept.len() >= MAX_KEPT {
                // The one expiring first goes (after the lock is dropped).
                let first = (0..kept.len()).min_by_key(|&i| kept[i].1).unwrap_or(0);
                dropped = crate::util::swap_remove(&mut kept, first);
            }
            if kept.reserve(1, GFP_KERNEL).is_err() {
                drop(kept);
                drop(dropped);
                drop(entry);
                return;
            }
            // Within the capacity reserved above: no allocation.
            let _ = kept.push((entry, until), GFP_KERNEL);
        }
        // Evicting a dropped inode, or closing a dropped open, sends a message to the
        // parent: never under the lock.
        drop(dropped);
        self.expire_in(ms);
    }

    /// Queues the expiry work in `ms` (an already queued work keeps its time and
    /// queues itself again for the next expiry).
    fn expire_in(&self, ms: u32) {
        let delay = kernel::time::msecs_to_jiffies(ms);
        // SAFETY: the work was initialised in `new` and lives as long as `self`, which
        // `stop` outlives it by cancelling it; an already queued work stays queued.
        unsafe { bindings::mitosis_queue_delayed_work(self.kept_work.get(), delay) };
    }

    /// Drops the kept entries that expired (all of a kind once its parameter is 0) and
    /// queues itself again for the next expiry.
    fn expire(&self) {
        let now = now_ns();
        let mut expired = KVec::new();
        let next = {
            let mut kept = self.kept.lock();
            if expired.reserve(kept.len(), GFP_KERNEL).is_err() {
                Some(now + 1_000_000_000)
            } else {
                let mut i = 0;
                while i < kept.len() {
                    if kept[i].0.unwanted() || kept[i].1 <= now {
                        if let Some(e) = crate::util::swap_remove(&mut kept, i) {
                            // Within the capacity reserved above: no allocation.
                            let _ = expired.push(e, GFP_KERNEL);
                        }
                    } else {
                        i += 1;
                    }
                }
                kept.iter().map(|e| e.1).min()
            }
        };
        // Evictions close remote opens: never under the lock.
        drop(expired);
        if let Some(at) = next {
            let ms = (at.saturating_sub(now) / 1_000_000).saturating_add(1);
            let delay = kernel::time::msecs_to_jiffies(ms.min(u32::MAX as u64) as u32);
            // SAFETY: as in `keep`.
            unsafe { bindings::mitosis_queue_delayed_work(self.kept_work.get(), delay) };
        }
    }

    /// Stops keeping: cancels the expiry work (waiting for a running one) and drops
    /// what is kept. Called when the module's state goes.
    pub(crate) fn stop(&self) {
        // Inodes evicted below drop their pagers, which would keep their opens.
        self.stopped
            .store(true, core::sync::atomic::Ordering::Release);
        // SAFETY: the work was initialised in `new`.
        unsafe { bindings::cancel_delayed_work_sync(self.kept_work.get()) };
        let kept = crate::util::take_all(&mut self.kept.lock());
        drop(kept);
    }

    /// Mounts the filesystem with `self` as its superblock's `s_fs_info`.
    fn mount(&self) -> Result<*mut bindings::vfsmount> {
        // SAFETY: `FS_TYPE` is static and initialised. Flags 0: not `SB_KERNMOUNT`
        // (see `Mount`).
        let fc = kernel::error::from_err_ptr(unsafe {
            bindings::fs_context_for_mount(FS_TYPE.0.get(), 0)
        })?;
        // SAFETY: a fresh context of ours; the superblock takes `s_fs_info` over, and
        // `self` outlives it (see `fs_of`). `put_fs_context` does not free it.
        let mnt = unsafe {
            (*fc).s_fs_info = self as *const Self as *mut _;
            let mnt = bindings::fc_mount(fc);
            bindings::put_fs_context(fc);
            kernel::error::from_err_ptr(mnt)?
        };
        // Snapshot files carry program text: the pseudo-fs default forbids
        // PROT_EXEC. SAFETY: a superblock just made for us, used by no one yet.
        unsafe { (*(*mnt).mnt_sb).s_iflags &= !(bindings::SB_I_NOEXEC as kernel::ffi::c_ulong) };
        Ok(mnt)
    }

    /// Pins the mount (mounting on first use) and returns it.
    fn pin(&self) -> Result<NonNull<bindings::vfsmount>> {
        let mut m = self.mount.lock();
        if m.mnt.is_null() {
            // The mount's own reference becomes the first pin's.
            m.mnt = self.mount()?;
        } else {
            // SAFETY: `mnt` is live while pinned (type invariant of `Mount`).
            unsafe { bindings::mntget(m.mnt) };
        }
        m.pins += 1;
        NonNull::new(m.mnt).ok_or(ENODEV)
    }

    /// Drops one pin; the last one lets the mount go (torn down in task work).
    fn unpin(&self) {
        let mnt = {
            let mut m = self.mount.lock();
            if m.pins == 0 {
                return;
            }
            m.pins -= 1;
            let mnt = m.mnt;
            if m.pins == 0 {
                m.mnt = ptr::null_mut();
            }
            mnt
        };
        // SAFETY: one reference of ours (type invariant of `Mount`).
        unsafe { bindings::mntput(mnt) };
    }

    /// The inode of snapshot `key`, if a child on this host maps it and its pager still
    /// serves new children (see [`Pager::shareable`]).
    pub(crate) fn lookup(&self, key: PagerKey) -> Option<SnapshotInode> {
        Self::find_live(&self.cache.lock(), key)
    }

    fn find_live(
        cache: &KVec<(PagerKey, *mut bindings::inode)>,
        key: PagerKey,
    ) -> Option<SnapshotInode> {
        cache
            .iter()
            .filter(|(k, _)| *k == key)
            .find_map(|&(_, inode)| {
                // SAFETY: cached inodes are live (type invariant), so is their pager until
                // eviction, which removes them from the cache first under its lock.
                if !unsafe { pager_of(inode) }.shareable() {
                    return None;
                }
                // SAFETY: as above; `igrab` fails on an inode being freed.
                NonNull::new(unsafe { bindings::igrab(inode) }).map(SnapshotInode)
            })
    }

    /// Children on this host mapping a snapshot whose key matches.
    pub(crate) fn children_of(&self, matches: impl Fn(&PagerKey) -> bool) -> u32 {
        self.cache
            .lock()
            .iter()
            .filter(|(k, _)| matches(k))
            // SAFETY: cached inodes are live, so is their pager (type invariant); the
            // cache lock keeps eviction from freeing them meanwhile.
            .map(|&(_, inode)| unsafe { pager_of(inode) }.children())
            .sum()
    }

    fn forget(&self, inode: *mut bindings::inode) {
        crate::util::remove_first(&mut self.cache.lock(), |(_, i)| *i == inode);
    }

    /// The inode of `pager`'s snapshot: a new one cached by its key, or the one a
    /// concurrent resume of the same snapshot created.
    pub(crate) fn create(&self, pager: Pager) -> Result<SnapshotInode> {
        let key = pager.key();
        let mut cache = self.cache.lock();
        // Another child of the same snapshot may have got here first: share its inode.
        if let Some(inode) = Self::find_live(&cache, key) {
            drop(cache);
            // Ours is not needed: dropping it closes its remote open.
            drop(pager);
            return Ok(inode);
        }
        if cache.len() >= MAX_CACHED {
            return Err(ENOSPC);
        }
        cache.reserve(1, GFP_KERNEL)?;
        let pager = Arc::new(pager, GFP_KERNEL)?;
        let mnt = self.pin()?;
        // SAFETY: the mount is live while pinned.
        let inode = kernel::error::from_err_ptr(unsafe {
            bindings::alloc_anon_inode((*mnt.as_ptr()).mnt_sb)
        })
        .inspect_err(|_| self.unpin())?;
        // SAFETY: a fresh inode only we know about.
        unsafe {
            (*inode).i_private = Arc::into_raw(pager) as *mut _;
            (*(*inode).i_mapping).a_ops = &AOPS;
            // Every VMA window of the snapshot (`abi::snapshot::window_offset`) is
            // inside the file.
            bindings::mitosis_i_size_write(inode, i64::MAX);
        }
        // The pin is the inode's now (dropped in `evict_inode`).
        cache.push((key, inode), GFP_KERNEL)?;
        Ok(SnapshotInode(NonNull::new(inode).ok_or(ENOMEM)?))
    }

    /// A read-only file of `inode`, without the kernel's readahead (the pager sizes
    /// each fault's batch itself: [`Pager::demand_fault`]). The file pins the module
    /// until its last `fput`.
    pub(crate) fn open(&self, inode: SnapshotInode, faults: Faults) -> Result<File> {
        // The inode holds a pin, so the mount is set and is the inode's.
        let mnt = self.mount.lock().mnt;
        // SAFETY: `module` is this module, live while we run.
        if mnt.is_null()
            || !unsafe { bindings::mitosis_try_module_get(self.module.as_ptr().cast()) }
        {
            return Err(ENODEV);
        }
        let raw = inode.0.as_ptr();
        // SAFETY: `raw` is ours with a reference `alloc_file_pseudo` takes over on
        // success (taking its own reference on `mnt`, live while the inode's pin is);
        // `fops` is pinned for the module's lifetime.
        let file = kernel::error::from_err_ptr(unsafe {
            bindings::alloc_file_pseudo(
                raw,
                mnt,
                kernel::c_str!("mitosis-snapshot").as_char_ptr(),
                bindings::O_RDONLY as i32,
                self.fops[faults as usize].get(),
            )
        });
        match file {
            Ok(f) => {
                // The file owns the inode reference now (and drops it with itself);
                // its release counts it out.
                core::mem::forget(inode);
                // SAFETY: `raw` is one of our inodes, held by the new file.
                unsafe { pager_of(raw) }.file_opened();
                // SAFETY: a fresh file only we know about.
                let mapping = unsafe {
                    (*f).__bindgen_anon_2.f_ra.ra_pages = 0;
                    (*f).f_mapping
                };
                let Some(mapping) = NonNull::new(mapping) else {
                    // SAFETY: the fresh file's one reference is ours.
                    unsafe { bindings::fput(f) };
                    return Err(EINVAL);
                };
                Ok(File { file: f, mapping })
            }
            Err(e) => {
                // SAFETY: on failure we still own the module reference (and `inode`
                // drops its own).
                unsafe { bindings::mitosis_module_put(self.module.as_ptr().cast()) };
                Err(e)
            }
        }
    }

    /// The pager of a VMA's file, if it is one of our snapshot files. The borrow of the
    /// mmap lock keeps the VMA, so its file and inode, alive.
    pub(crate) fn pager_of_file<'a>(&self, file: &VmaFile<'a>) -> Option<&'a Pager> {
        let file = file.as_ptr();
        // SAFETY: `file` is live while the VMA is (see `VmaFile`).
        let inode = unsafe { (*file).f_inode };
        // SAFETY: as above; our superblocks are the only ones of our type.
        if inode.is_null() || unsafe { (*(*inode).i_sb).s_type != FS_TYPE.0.get() } {
            return None;
        }
        // SAFETY: an inode of ours, held by the file.
        Some(unsafe { pager_of(inode) })
    }
}

/// A snapshot file we hold a reference on (dropped with `fput`).
///
/// # Invariants
///
/// We own one reference on `file`, a file of one of our inodes whose page cache is
/// `mapping`.
pub(crate) struct File {
    file: *mut bindings::file,
    mapping: NonNull<bindings::address_space>,
}

impl File {
    pub(crate) fn as_ptr(&self) -> *mut bindings::file {
        self.file
    }

    /// The file's page cache.
    pub(crate) fn mapping(&self) -> Mapping<'_> {
        Mapping(self.mapping, core::marker::PhantomData)
    }

    /// The file's pager.
    pub(crate) fn pager(&self) -> &Pager {
        // SAFETY: our files are only made over our inodes (type invariant).
        unsafe { pager_of((*self.file).f_inode) }
    }

    /// Another reference to the same open file (not a new open: the snapshot's count
    /// of children does not change).
    pub(crate) fn share(&self) -> File {
        // SAFETY: we own a reference, so the file is live and may gain one.
        unsafe { bindings::mitosis_get_file(self.file) };
        // INVARIANT: the reference just taken is the new value's.
        File {
            file: self.file,
            mapping: self.mapping,
        }
    }

    /// Whether this is the file's last reference: no mapping of it is left.
    pub(crate) fn unmapped(&self) -> bool {
        // SAFETY: we own a reference, so the file is live.
        unsafe { bindings::mitosis_file_count(self.file) <= 1 }
    }
}

// SAFETY: a file reference may be used and dropped (`fput`) from any task.
unsafe impl Send for File {}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant).
        unsafe { bindings::fput(self.file) };
    }
}
