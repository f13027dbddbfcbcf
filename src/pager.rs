// SPDX-License-Identifier: GPL-2.0

//! The snapshot-file pager: where a child's page faults are served.
//!
//! Every snapshot a child on this host resumes from becomes one inode of an internal
//! pseudo filesystem ("snapshot file"). Each seed VMA has its own window of the file
//! (`abi::snapshot::window_offset`), and is a `MAP_PRIVATE` mapping of its window: a
//! mapping a child grows or moves (`mremap`) stays in its window, so its new part
//! reads zeros and a later capture finds its pages by file offset. A fault on a page
//! that is not in the page cache calls `read_folio` / `readahead` here, which fill the
//! page with one-sided RDMA READs of exactly the present pages (one doorbell per batch)
//! and zero-fill holes locally. The core MM does the rest: copy-on-write when a child
//! writes, sharing of fetched pages among every child of the snapshot on this host,
//! reclaim of clean pages (fetched again when needed). The readahead window of each
//! child's file is the `prefetch_pages` module parameter.
//!
//! Inodes are cached by (parent address, port, snapshot id, secret) while some child
//! maps them;
//! the last unmap evicts the inode, which closes the remote open (the parent drops this
//! host's registration).

use crate::abi::snapshot::{window_offset, Descriptor, PAGE, RUN_PRESENT};
use crate::bindings;
use crate::rdma::connection::{Ipv4, MAX_READ_BATCH};
use crate::rdma::PAGE_SIZE;
use crate::remote::RemoteRegion;
use crate::util::ClearForReuse;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::types::Opaque;

/// Pages fetched, hole pages zero-filled, failed fetches (counters since load).
pub(crate) static PAGES_FETCHED: AtomicU64 = AtomicU64::new(0);
pub(crate) static PAGES_ZEROED: AtomicU64 = AtomicU64::new(0);
pub(crate) static FETCH_FAILURES: AtomicU64 = AtomicU64::new(0);

/// `statfs` magic of the snapshot filesystem ("MSNF").
const SNAPSHOT_FS_MAGIC: u64 = 0x4D53_4E46;

/// Most snapshots with live children on this host at once.
const MAX_CACHED: usize = 1024;

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
    remote: RemoteRegion,
}

impl Drop for Link {
    /// Tells the parent this host is done with the snapshot (best effort: its
    /// registration also ends with the connection).
    fn drop(&mut self) {
        self.remote.close();
    }
}

/// One snapshot as seen from this host: the remote open and the validated descriptor.
pub(crate) struct Pager {
    key: PagerKey,
    /// To open the snapshot again after the connection failed.
    secret: [u8; 16],
    /// The descriptor, validated once by [`Descriptor::parse`] and never changed.
    desc: KVVec<u8>,
    /// Region offset of data page 0 (the descriptor fills the pages before it).
    data_offset: u64,
    /// One batch at a time (faults on one snapshot are serialised here; the
    /// connection serialises batches anyway).
    link: Pin<KBox<Mutex<Link>>>,
    /// Set when a reconnect failed (parent gone, snapshot revoked): later faults fail
    /// at once instead of each waiting for a connect timeout.
    dead: core::sync::atomic::AtomicBool,
}

impl Pager {
    /// A pager over an opened snapshot whose descriptor `desc` passed validation.
    pub(crate) fn new(
        key: PagerKey,
        secret: [u8; 16],
        remote: RemoteRegion,
        desc: KVVec<u8>,
    ) -> Result<Self> {
        let desc_pages = (desc.len() as u64).div_ceil(PAGE);
        Ok(Pager {
            key,
            secret,
            desc,
            data_offset: desc_pages * PAGE,
            link: KBox::pin_init(new_mutex!(Link { remote }), GFP_KERNEL)?,
            dead: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// After a failed READ: a new connection (pooled) and a new open of the same
    /// snapshot, once. A released snapshot or a parent that is gone fails here.
    fn reconnect(&self, link: &mut Link) -> Result {
        let (conn, _) = crate::state::get().connection_to(
            self.key.addr,
            self.key.port,
            crate::state::connect_timeout_ms(),
        )?;
        let remote = RemoteRegion::open(conn, 0, self.key.id, self.secret)?;
        if remote.size != link.remote.size || remote.info != link.remote.info {
            remote.close();
            return Err(EIO);
        }
        // Dropping the old link closes the old open.
        *link = Link { remote };
        pr_info!(
            "snapshot {} from {}: reconnected after a failed READ\n",
            self.key.id,
            Ipv4(self.key.addr)
        );
        Ok(())
    }

    pub(crate) fn descriptor(&self) -> Result<Descriptor<'_>> {
        Descriptor::parse_validated(&self.desc).map_err(|_| EINVAL)
    }

    /// Whether a reconnect failed: new resumes must not share this pager.
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Region offset of the snapshot page at file offset `file_off`, or `None` for a
    /// hole. Checked: the descriptor's data range was compared with the region's size
    /// at resume, and overflow would only send a READ the connection refuses
    /// (`ERANGE`).
    fn locate(&self, desc: &Descriptor<'_>, file_off: u64) -> Option<u64> {
        self.data_offset.checked_add(desc.data_offset_at(file_off)?)
    }

    /// Fills locked, not-uptodate folios (order 0) with their snapshot content, marks
    /// the filled ones uptodate and unlocks all of them. A folio left not uptodate
    /// makes the faulting child's access fail with SIGBUS.
    ///
    /// The batch lives on the heap: a fault can come from deep in the kernel (a user
    /// copy in any system call touching snapshot memory), so this path keeps its
    /// stack small.
    fn fill(&self, folios: &[NonNull<bindings::folio>]) -> Result {
        let desc = self.descriptor();
        let batch = KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL)
            .and_then(|o| Ok((o, KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL)?)));
        let mut result = desc.as_ref().map(|_| ()).map_err(|e| *e);
        let (mut offs, mut pending) = match batch {
            Ok(b) => b,
            Err(e) => {
                result = Err(e.into());
                (KVec::new(), KVec::new())
            }
        };
        for &f in folios {
            let f = f.as_ptr();
            let (Ok(desc), Ok(())) = (desc.as_ref(), result.as_ref()) else {
                // SAFETY: the folio is locked by our caller's contract.
                unsafe { bindings::folio_unlock(f) };
                continue;
            };
            // SAFETY: a locked page-cache folio of our inode.
            let file_off = unsafe { bindings::mitosis_folio_index(f) } as u64 * PAGE;
            match self.locate(desc, file_off) {
                None => {
                    // SAFETY: locked folio; zeroing then marking uptodate is how a
                    // filesystem fills a hole.
                    unsafe {
                        bindings::mitosis_folio_zero(f);
                        bindings::mitosis_folio_mark_uptodate(f);
                        bindings::folio_unlock(f);
                    }
                    PAGES_ZEROED.fetch_add(1, Ordering::Relaxed);
                }
                Some(off) => {
                    // Within the capacity reserved above: these pushes do not allocate.
                    let pushed = offs
                        .push(off, GFP_KERNEL)
                        .and_then(|()| pending.push(f, GFP_KERNEL));
                    if pushed.is_err() {
                        // SAFETY: locked by our caller's contract.
                        unsafe { bindings::folio_unlock(f) };
                        result = Err(ENOMEM);
                        continue;
                    }
                    if offs.len() == MAX_READ_BATCH {
                        if let Err(e) = self.read_into(&offs, &pending) {
                            result = Err(e);
                        }
                        offs.clear_for_reuse();
                        pending.clear_for_reuse();
                    }
                }
            }
        }
        if !offs.is_empty() {
            if let Err(e) = self.read_into(&offs, &pending) {
                result = Err(e);
            }
        }
        result
    }

    /// One doorbell of READs into `folios`, which are unlocked afterwards.
    fn read_into(&self, offs: &[u64], folios: &[*mut bindings::folio]) -> Result {
        let mut link = self.link.lock();
        let copy = |i: usize, bytes: &[u8]| -> Result {
            let f = *folios.get(i).ok_or(EINVAL)?;
            // SAFETY: `f` is a locked order-0 folio of ours, not uptodate, so no one
            // else reads or writes its page; x86-64 has no highmem.
            unsafe {
                let dst = bindings::mitosis_page_address(bindings::mitosis_folio_page(f));
                ptr::copy_nonoverlapping(bytes.as_ptr(), dst.cast(), PAGE_SIZE.min(bytes.len()));
            }
            Ok(())
        };
        let r = if self.dead.load(Ordering::Relaxed) {
            Err(crate::errno::enotconn())
        } else {
            match link.remote.read_batch(offs, copy) {
                Ok(()) => Ok(()),
                Err(e) if e == EINVAL || e == crate::errno::erange() => Err(e),
                Err(_) => self
                    .reconnect(&mut link)
                    .inspect_err(|_| self.dead.store(true, Ordering::Relaxed))
                    .and_then(|()| link.remote.read_batch(offs, copy)),
            }
        };
        for &f in folios {
            // SAFETY: `f` is locked by our caller's contract; on success every page
            // was filled above.
            unsafe {
                if r.is_ok() {
                    bindings::mitosis_folio_mark_uptodate(f);
                }
                bindings::folio_unlock(f);
            }
        }
        match r {
            Ok(()) => {
                PAGES_FETCHED.fetch_add(offs.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                FETCH_FAILURES.fetch_add(1, Ordering::Relaxed);
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
    pub(crate) fn fetch_all(&self, mapping: *mut bindings::address_space) -> Result<u64> {
        self.fetch(mapping, None)
    }

    /// Brings the present pages of VMA `only` (or of every VMA) into `mapping`'s page
    /// cache, in batches of one doorbell. Returns the pages fetched.
    fn fetch(&self, mapping: *mut bindings::address_space, only: Option<usize>) -> Result<u64> {
        let desc = self.descriptor()?;
        let mut batch = [NonNull::<bindings::folio>::dangling(); MAX_READ_BATCH];
        let mut n = 0;
        let mut fetched = 0u64;
        let flush = |batch: &[NonNull<bindings::folio>]| -> Result {
            let r = self.fill(batch);
            for f in batch {
                // SAFETY: we hold the reference `grab_folio` returned.
                unsafe { bindings::mitosis_folio_put(f.as_ptr()) };
            }
            r
        };
        for (vi, page) in present_pages(&desc, only) {
            let f = match grab_folio(mapping, vi, page) {
                Ok(f) => f,
                Err(e) => {
                    // The folios gathered so far are locked: fill (and so unlock)
                    // them before failing.
                    let _ = flush(&batch[..n]);
                    return Err(e);
                }
            };
            // SAFETY: a locked folio we hold a reference on.
            if unsafe { bindings::mitosis_folio_test_uptodate(f.as_ptr()) } {
                // SAFETY: as above.
                unsafe {
                    bindings::folio_unlock(f.as_ptr());
                    bindings::mitosis_folio_put(f.as_ptr());
                }
                continue;
            }
            batch[n] = f;
            n += 1;
            fetched += 1;
            if n == MAX_READ_BATCH {
                flush(&batch[..n])?;
                n = 0;
            }
        }
        if n > 0 {
            flush(&batch[..n])?;
        }
        Ok(fetched)
    }

    /// Copies VMA `vi`'s snapshot content into the caller's memory at the seed's
    /// address (anonymous memory the caller just mapped there: a stack), fetching its
    /// present pages first; never-touched pages stay zero.
    #[inline(never)]
    pub(crate) fn copy_vma_to_user(
        &self,
        mapping: *mut bindings::address_space,
        vi: usize,
    ) -> Result {
        self.fetch(mapping, Some(vi))?;
        let desc = self.descriptor()?;
        let vma = desc.vma(vi).ok_or(EINVAL)?;
        for (_, page) in present_pages(&desc, Some(vi)) {
            let f = grab_folio(mapping, vi, page)?;
            // SAFETY: a locked folio of ours we hold a reference on; a filled one holds
            // the page's content, x86-64 has no highmem. The copy goes to anonymous
            // memory, whose faults never need this folio.
            let r = unsafe {
                if bindings::mitosis_folio_test_uptodate(f.as_ptr()) {
                    let src =
                        bindings::mitosis_page_address(bindings::mitosis_folio_page(f.as_ptr()));
                    let bytes = core::slice::from_raw_parts(src as *const u8, PAGE_SIZE);
                    let at = page
                        .checked_mul(PAGE)
                        .and_then(|off| vma.start.checked_add(off))
                        .ok_or(EINVAL);
                    at.and_then(|at| {
                        kernel::uaccess::UserSlice::new(at as usize, PAGE_SIZE)
                            .writer()
                            .write_slice(bytes)
                    })
                } else {
                    Err(EIO)
                }
            };
            // SAFETY: as above.
            unsafe {
                bindings::folio_unlock(f.as_ptr());
                bindings::mitosis_folio_put(f.as_ptr());
            }
            r?;
        }
        Ok(())
    }
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

/// The page-cache folio of VMA `vi`'s page `page`, locked, with a reference (created
/// not up to date if it was absent).
fn grab_folio(
    mapping: *mut bindings::address_space,
    vi: usize,
    page: u64,
) -> Result<NonNull<bindings::folio>> {
    let index = (window_offset(vi) / PAGE).checked_add(page).ok_or(EINVAL)?;
    // SAFETY: `mapping` is our inode's live mapping.
    let f =
        kernel::error::from_err_ptr(unsafe { bindings::mitosis_grab_folio(mapping, index as _) })?;
    NonNull::new(f).ok_or(ENOMEM)
}

/// `address_space_operations::read_folio`.
unsafe extern "C" fn read_folio(_file: *mut bindings::file, folio: *mut bindings::folio) -> i32 {
    // SAFETY: the VFS calls us with a locked folio of one of our inodes, whose
    // `i_private` is its pager until eviction (which cannot run while the folio is
    // being read).
    let pager = unsafe { pager_of(bindings::mitosis_folio_inode(folio)) };
    let Some(f) = NonNull::new(folio) else {
        return EINVAL.to_errno();
    };
    match pager.fill(&[f]) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// `address_space_operations::readahead`: the folios of the window arrive locked.
///
/// Batches are on the heap (see [`Pager::fill`]); without memory for one, each folio
/// is filled on its own.
unsafe extern "C" fn readahead(rac: *mut bindings::readahead_control) {
    let mut batch: KVec<NonNull<bindings::folio>> =
        KVec::with_capacity(MAX_READ_BATCH, GFP_KERNEL).unwrap_or(KVec::new());
    let mut pager: Option<&Pager> = None;
    loop {
        // SAFETY: `rac` is the VFS's live readahead control; each folio returned is
        // locked and in our mapping.
        let f = unsafe { bindings::mitosis_readahead_folio(rac) };
        let Some(f) = NonNull::new(f) else { break };
        // SAFETY: as in `read_folio`.
        let p = *pager
            .get_or_insert_with(|| unsafe { pager_of(bindings::mitosis_folio_inode(f.as_ptr())) });
        // Errors leave folios not uptodate: a later fault retries with read_folio.
        if batch.capacity() == 0 {
            let _ = p.fill(&[f]);
            continue;
        }
        let _ = batch.push(f, GFP_KERNEL);
        if batch.len() == MAX_READ_BATCH {
            let _ = p.fill(&batch);
            batch.clear_for_reuse();
        }
    }
    if let (Some(p), false) = (pager, batch.is_empty()) {
        let _ = p.fill(&batch);
    }
}

/// The pager of one of our inodes.
///
/// # Safety
///
/// `inode` is a live inode of the snapshot filesystem, not yet evicted.
unsafe fn pager_of<'a>(inode: *mut bindings::inode) -> &'a Pager {
    // SAFETY: `i_private` is set from `Arc::into_raw` before the inode is used and
    // released in `evict_inode` only.
    unsafe { &*((*inode).i_private as *const Pager) }
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
    // The module is loaded while our superblock exists (see `Mount`), so its state is.
    let fs = crate::state::try_get().map(|s| s.snapshot_fs());
    // Out of the cache before the pager goes: lookups read cached inodes' pagers under
    // the cache lock.
    if let Some(fs) = fs {
        fs.forget(inode);
    }
    // The last reference: dropping the pager closes the remote open.
    drop(pager);
    if let Some(fs) = fs {
        // The inode's pin, taken in `SnapshotFs::create`.
        fs.unpin();
    }
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
    #[pin]
    fops: Opaque<bindings::file_operations>,
    module: &'static ThisModule,
    #[pin]
    cache: Mutex<KVec<(PagerKey, *mut bindings::inode)>>,
    #[pin]
    mount: Mutex<Mount>,
}

// SAFETY: the C structs are used by the VFS under its own locking; the cache and the
// mount are behind mutexes.
unsafe impl Send for SnapshotFs {}
// SAFETY: as above.
unsafe impl Sync for SnapshotFs {}

impl SnapshotFs {
    pub(crate) fn new(module: &'static ThisModule) -> impl PinInit<Self> {
        // SAFETY: no mount exists before the module's state does, so the VFS does not
        // read the type yet; the owner is this module, live while the type is used.
        unsafe { (*FS_TYPE.0.get()).owner = module.as_ptr().cast() };
        pin_init!(SnapshotFs {
            fops <- Opaque::ffi_init(move |f: *mut bindings::file_operations| {
                let mut v = bindings::file_operations::default();
                v.owner = module.as_ptr().cast();
                v.mmap = Some(bindings::generic_file_mmap);
                // SAFETY: `f` is valid for writing.
                unsafe { f.write(v) };
            }),
            module,
            cache <- new_mutex!(KVec::new()),
            mount <- new_mutex!(Mount {
                mnt: ptr::null_mut(),
                pins: 0,
            }),
        })
    }

    /// Pins the mount (mounting on first use) and returns it.
    fn pin(&self) -> Result<NonNull<bindings::vfsmount>> {
        let mut m = self.mount.lock();
        if m.mnt.is_null() {
            // SAFETY: `FS_TYPE` is static and initialised. Flags 0: not `SB_KERNMOUNT`
            // (see `Mount`).
            let mnt = kernel::error::from_err_ptr(unsafe {
                bindings::vfs_kern_mount(
                    FS_TYPE.0.get(),
                    0,
                    c"mitosis-snapshot".as_ptr().cast_mut().cast(),
                    ptr::null_mut(),
                )
            })?;
            // Snapshot files carry program text: the pseudo-fs default forbids
            // PROT_EXEC. SAFETY: a superblock just made for us, used by no one yet.
            unsafe {
                (*(*mnt).mnt_sb).s_iflags &= !(bindings::SB_I_NOEXEC as kernel::ffi::c_ulong)
            };
            // The mount's own reference becomes the first pin's.
            m.mnt = mnt;
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

    /// The inode of snapshot `key` with a reference, if a child on this host maps it
    /// and its pager is healthy (one whose reconnect failed serves its current
    /// children's faults no more: a new resume gets a fresh inode and open).
    pub(crate) fn lookup(&self, key: PagerKey) -> Option<NonNull<bindings::inode>> {
        Self::find_live(&self.cache.lock(), key)
    }

    fn find_live(
        cache: &KVec<(PagerKey, *mut bindings::inode)>,
        key: PagerKey,
    ) -> Option<NonNull<bindings::inode>> {
        cache
            .iter()
            .filter(|(k, _)| *k == key)
            .find_map(|&(_, inode)| {
                // SAFETY: cached inodes are live (type invariant), so is their pager until
                // eviction, which removes them from the cache first under its lock.
                if unsafe { pager_of(inode) }.is_dead() {
                    return None;
                }
                // SAFETY: as above; `igrab` fails on an inode being freed.
                NonNull::new(unsafe { bindings::igrab(inode) })
            })
    }

    fn forget(&self, inode: *mut bindings::inode) {
        crate::util::remove_first(&mut self.cache.lock(), |(_, i)| *i == inode);
    }

    /// The inode of `pager`'s snapshot (one reference, for the caller): a new one cached
    /// by its key, or the one a concurrent resume of the same snapshot created.
    pub(crate) fn create(&self, pager: Pager) -> Result<NonNull<bindings::inode>> {
        let key = pager.key;
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
            // File offsets are user virtual addresses.
            bindings::mitosis_i_size_write(inode, i64::MAX);
        }
        // The pin is the inode's now (dropped in `evict_inode`).
        cache.push((key, inode), GFP_KERNEL)?;
        NonNull::new(inode).ok_or(ENOMEM)
    }

    /// A read-only file of `inode` (consumes one inode reference) whose readahead
    /// window is `prefetch` pages. The file pins the module until its last `fput`.
    pub(crate) fn open(&self, inode: NonNull<bindings::inode>, prefetch: u32) -> Result<File> {
        // The inode holds a pin, so the mount is set and is the inode's.
        let mnt = self.mount.lock().mnt;
        // SAFETY: `module` is this module, live while we run.
        if mnt.is_null()
            || !unsafe { bindings::mitosis_try_module_get(self.module.as_ptr().cast()) }
        {
            // SAFETY: we own the reference.
            unsafe { bindings::iput(inode.as_ptr()) };
            return Err(ENODEV);
        }
        // SAFETY: `inode` is ours with a reference `alloc_file_pseudo` takes over on
        // success (taking its own reference on `mnt`, live while the inode's pin is);
        // `fops` is pinned for the module's lifetime.
        let file = unsafe {
            bindings::alloc_file_pseudo(
                inode.as_ptr(),
                mnt,
                kernel::c_str!("mitosis-snapshot").as_char_ptr(),
                bindings::O_RDONLY as i32,
                self.fops.get(),
            )
        };
        match kernel::error::from_err_ptr(file) {
            Ok(f) => {
                // SAFETY: a fresh file only we know about.
                unsafe { (*f).__bindgen_anon_2.f_ra.ra_pages = prefetch };
                Ok(File(f))
            }
            Err(e) => {
                // SAFETY: on failure we still own the inode reference and the module
                // reference.
                unsafe {
                    bindings::iput(inode.as_ptr());
                    bindings::mitosis_module_put(self.module.as_ptr().cast());
                }
                Err(e)
            }
        }
    }

    /// Whether `file` is one of our snapshot files, and its pager.
    pub(crate) fn pager_of_file(&self, file: *mut bindings::file) -> Option<&Pager> {
        if file.is_null() {
            return None;
        }
        // SAFETY: `file` is a live file (its VMA is held under the mmap lock).
        let inode = unsafe { (*file).f_inode };
        // SAFETY: as above; our superblocks are the only ones of our type.
        if inode.is_null() || unsafe { (*(*inode).i_sb).s_type != FS_TYPE.0.get() } {
            return None;
        }
        // SAFETY: an inode of ours, held by the file.
        Some(unsafe { pager_of(inode) })
    }
}

/// A file reference we own (dropped with `fput`).
pub(crate) struct File(*mut bindings::file);

impl File {
    pub(crate) fn as_ptr(&self) -> *mut bindings::file {
        self.0
    }

    /// The file's page cache.
    pub(crate) fn mapping(&self) -> *mut bindings::address_space {
        // SAFETY: the file is live while we hold it.
        unsafe { (*self.0).f_mapping }
    }

    /// The file's pager.
    pub(crate) fn pager(&self) -> &Pager {
        // SAFETY: our files are only made over our inodes.
        unsafe { pager_of((*self.0).f_inode) }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { bindings::fput(self.0) };
    }
}
