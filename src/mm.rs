// SPDX-License-Identifier: GPL-2.0

//! Address-space access for capture and restore: the mmap lock as a guard, VMA views
//! and the special mappings (vDSO, vvar) by name.

use crate::bindings;
use crate::rdma::pages::PageSpan;
use core::ptr::{self, NonNull};
use kernel::prelude::*;

/// Most VMAs a snapshot may hold (the kernel's default `vm.max_map_count` is 65530).
pub(crate) const MAX_VMAS: usize = 65536;
/// Most pages taken per GUP call: one PMD's worth, so a huge page comes in one call.
pub(crate) const GUP_BATCH: usize = 512;

/// Pages a PMD maps (x86-64: 2 MiB).
pub(crate) const PMD_PAGES: usize = 512;
/// Bytes a PMD maps.
pub(crate) const PMD_BYTES: u64 = (PMD_PAGES * crate::rdma::PAGE_SIZE) as u64;

/// Room for one GUP call's pages and the spans made of them, allocated once per
/// capture (4 KiB of pointers and 8 KiB of spans are too much for a kernel stack).
pub(crate) struct GupBatch {
    got: KVVec<*mut bindings::page>,
    spans: KVVec<Option<PageSpan>>,
}

impl GupBatch {
    pub(crate) fn new() -> Result<Self> {
        let mut spans = KVVec::with_capacity(GUP_BATCH, GFP_KERNEL)?;
        for _ in 0..GUP_BATCH {
            spans.push(None, GFP_KERNEL)?;
        }
        Ok(GupBatch {
            got: KVVec::from_elem(ptr::null_mut(), GUP_BATCH, GFP_KERNEL)?,
            spans,
        })
    }

    /// The spans the last [`MmapReadGuard::take_pages`] made, in order, taken out.
    pub(crate) fn take_spans(&mut self) -> impl Iterator<Item = PageSpan> + '_ {
        self.spans.iter_mut().map_while(Option::take)
    }
}

/// Whether the current task has a page mapped at `addr` (GUP's fast path: never
/// faults, needs no lock).
pub(crate) fn page_present(addr: u64) -> bool {
    let mut page = ptr::null_mut::<bindings::page>();
    // SAFETY: `page` has room for one pointer.
    let r = unsafe { bindings::get_user_pages_fast_only(addr as _, 1, 0, &mut page) };
    match NonNull::new(page) {
        // SAFETY: the reference GUP just took, dropped with the `PageSpan`.
        Some(p) if r == 1 => {
            drop(unsafe { PageSpan::from_raw(p) });
            true
        }
        _ => false,
    }
}

/// Unmaps `[start, start + len)` of the current process.
pub(crate) fn unmap(start: u64, len: u64) -> Result {
    // SAFETY: unmapping a range of the current process (the kernel checks it).
    kernel::error::to_result(unsafe { bindings::vm_munmap(start as _, len as _) })
}

/// A file a mapping can be made of.
///
/// # Safety
///
/// `file_ptr` returns a live file on which the implementor holds a reference for as
/// long as it lives.
pub(crate) unsafe trait MapSource {
    fn file_ptr(&self) -> *mut bindings::file;
}

// SAFETY: a snapshot `File` owns a reference on its file (its type invariant).
unsafe impl MapSource for crate::snapfs::File {
    fn file_ptr(&self) -> *mut bindings::file {
        self.as_ptr()
    }
}

// SAFETY: an `OpenFile` owns a reference on its file (its type invariant).
unsafe impl MapSource for crate::vfs::OpenFile {
    fn file_ptr(&self) -> *mut bindings::file {
        self.as_ptr()
    }
}

/// Maps `len` bytes at exactly `addr` (`MAP_FIXED_NOREPLACE` must be in `flags`) from
/// `file` at `offset`, or anonymous memory; `EEXIST` if the range is taken.
pub(crate) fn map(
    file: Option<&dyn MapSource>,
    addr: u64,
    len: u64,
    prot: u32,
    flags: u32,
    offset: u64,
) -> Result {
    let f = file.map_or(ptr::null_mut(), |f| f.file_ptr());
    // SAFETY: `f` is null or a file we hold; the kernel checks the rest.
    let got =
        unsafe { bindings::vm_mmap(f, addr as _, len as _, prot as _, flags as _, offset as _) }
            as u64;
    if got == addr {
        return Ok(());
    }
    if got > u64::MAX - 4095 {
        return Err(Error::from_errno(got as i64 as i32));
    }
    Err(Error::from_errno(-(bindings::EEXIST as i32)))
}

/// `mmap_read_lock` held on an mm for the guard's lifetime.
///
/// # Invariants
///
/// `mm` is live (the current task's) and read-locked by this guard.
pub(crate) struct MmapReadGuard(NonNull<bindings::mm_struct>);

impl MmapReadGuard {
    /// Read-locks the current task's mm.
    pub(crate) fn current() -> Result<Self> {
        let mm = current_mm()?;
        // SAFETY: the current task's mm is live while the task runs.
        unsafe { bindings::mitosis_mmap_read_lock(mm.as_ptr()) };
        Ok(MmapReadGuard(mm))
    }

    pub(crate) fn mm(&self) -> *mut bindings::mm_struct {
        self.0.as_ptr()
    }

    /// The mm's layout fields.
    pub(crate) fn layout(&self) -> MmLayout {
        let m = self.mm();
        // SAFETY: the mm is read-locked (type invariant); plain integer fields.
        unsafe {
            let f = &(*m).__bindgen_anon_1;
            MmLayout {
                start_code: f.start_code as u64,
                end_code: f.end_code as u64,
                start_data: f.start_data as u64,
                end_data: f.end_data as u64,
                start_brk: f.start_brk as u64,
                brk: f.brk as u64,
                start_stack: f.start_stack as u64,
                arg_start: f.arg_start as u64,
                arg_end: f.arg_end as u64,
                env_start: f.env_start as u64,
                env_end: f.env_end as u64,
            }
        }
    }

    /// Takes the pages from `addr` on (`want` at most, at least 1, at most
    /// [`GUP_BATCH`]): present pages and THP subpages, swapped-out pages read back,
    /// PROT_NONE pages through `FOLL_FORCE`. With `pin`, as long-term pins
    /// (`FOLL_LONGTERM`: pages in movable or CMA memory are migrated first; a read-only
    /// pin needs the page exclusive, so an anonymous page shared with the parent after
    /// `fork()` is copied now); without, as plain references (nothing copied: the
    /// parent's next write to such a page copies it, because our reference keeps it
    /// from being reused). The pages go to `batch` as spans, one per folio met, in
    /// order ([`GupBatch::take_spans`]). Returns how many pages were taken; 0 when
    /// the first page was never touched (or is the shared zero page): a hole.
    pub(crate) fn take_pages(
        &self,
        addr: u64,
        want: usize,
        pin: bool,
        batch: &mut GupBatch,
    ) -> Result<usize> {
        let want = want.clamp(1, GUP_BATCH);
        // Spans of the previous call not taken are dropped now.
        batch.take_spans().for_each(drop);
        let got = &mut batch.got[..];
        let flags = bindings::FOLL_FORCE | bindings::FOLL_DUMP;
        // References first through GUP's lockless walk (the mm is the current task's,
        // type invariant): it visits each table once for the batch instead of walking
        // from the top per page. It stops at the first page it cannot take without
        // the slow path (not present, PROT_NONE, the zero page), which then decides.
        let fast = if pin {
            0
        } else {
            // SAFETY: `got` has room for `want` pointers.
            unsafe { bindings::get_user_pages_fast_only(addr as _, want as _, 0, got.as_mut_ptr()) }
        };
        // SAFETY: the mm is read-locked (type invariant; `locked` = NULL keeps it so);
        // `got` has room for `want` pointers.
        let r = unsafe {
            if fast > 0 {
                fast as kernel::ffi::c_long
            } else if pin {
                bindings::pin_user_pages_remote(
                    self.mm(),
                    addr as _,
                    want as _,
                    (flags | bindings::FOLL_LONGTERM) as u32,
                    got.as_mut_ptr(),
                    ptr::null_mut(),
                )
            } else {
                bindings::get_user_pages_remote(
                    self.mm(),
                    addr as _,
                    want as _,
                    flags as u32,
                    got.as_mut_ptr(),
                    ptr::null_mut(),
                )
            }
        };
        if r == -(bindings::EFAULT as kernel::ffi::c_long) || r == 0 {
            return Ok(0);
        }
        if r < 0 {
            return Err(Error::from_errno(r as i32));
        }
        let n = (r as usize).min(want);
        if got[..n].iter().any(|p| p.is_null()) {
            // GUP fills every slot it counts: a null one would be a kernel bug. The
            // other pages' references are still ours to drop.
            for p in got[..n].iter().filter_map(|&p| NonNull::new(p)) {
                // SAFETY: a page GUP returned with one pin or reference we own.
                unsafe { PageSpan::from_gup(&[p], pin, drop) };
            }
            return Err(EFAULT);
        }
        // SAFETY: `NonNull<T>` has the layout of `*mut T`, and no pointer is null.
        let taken: &[NonNull<bindings::page>] =
            unsafe { core::slice::from_raw_parts(got.as_ptr().cast(), n) };
        let mut spans = batch.spans.iter_mut();
        // SAFETY: GUP returned each page with one pin (or reference, as asked) that we
        // now own; every span has at least one page, so `want` slots hold them all.
        unsafe {
            PageSpan::from_gup(taken, pin, |span| {
                if let Some(slot) = spans.next() {
                    *slot = Some(span);
                }
            })
        };
        Ok(n)
    }

    /// Takes the transparent huge page a PMD maps whole at `addr` (PMD-aligned) as one
    /// span of [`PMD_PAGES`] pages under one reference; `None` when there is none (not
    /// mapped so, or changed meanwhile: the caller then takes the pages by GUP
    /// batches).
    pub(crate) fn take_pmd_mapped(&self, addr: u64) -> Option<PageSpan> {
        self.pmd_mapped_page(addr)?;
        let mut page = ptr::null_mut::<bindings::page>();
        // SAFETY: `page` has room for one pointer.
        let r = unsafe { bindings::get_user_pages_fast_only(addr as _, 1, 0, &mut page) };
        let page = NonNull::new(page).filter(|_| r == 1)?;
        // SAFETY: GUP returned the page with one reference, which we now own.
        let span = unsafe { PageSpan::from_raw(page) };
        // Held now, and still the page the PMD maps whole: all of its huge page is
        // what the seed has at `addr` (the PMD maps a huge page from its head). A
        // split or a migration in between gives another answer.
        if self.pmd_mapped_page(addr) != Some(page) {
            return None;
        }
        span.widen(PMD_PAGES)
    }

    /// The first VMA ending above `addr`.
    pub(crate) fn vma_from(&self, addr: u64) -> Option<VmaView<'_>> {
        // SAFETY: the mm is read-locked (type invariant).
        let vma = unsafe { bindings::find_vma(self.mm(), addr as _) };
        NonNull::new(vma).map(|v| VmaView::read(v))
    }
}

impl Drop for MmapReadGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `current` (type invariant).
        unsafe { bindings::mitosis_mmap_read_unlock(self.mm()) };
    }
}

/// `mmap_write_lock` held on the current mm.
///
/// # Invariants
///
/// As [`MmapReadGuard`], write-locked.
pub(crate) struct MmapWriteGuard(NonNull<bindings::mm_struct>);

impl MmapWriteGuard {
    pub(crate) fn current() -> Result<Self> {
        let mm = current_mm()?;
        // SAFETY: the current task's mm is live while the task runs.
        let r = unsafe { bindings::mitosis_mmap_write_lock_killable(mm.as_ptr()) };
        if r != 0 {
            return Err(EINTR);
        }
        Ok(MmapWriteGuard(mm))
    }

    pub(crate) fn mm(&self) -> *mut bindings::mm_struct {
        self.0.as_ptr()
    }

    /// Sets the mm's layout fields (what `/proc/PID/stat`, `cmdline`, `environ` and
    /// `brk` use). Values were checked like `prctl(PR_SET_MM_MAP)` checks them; the
    /// argument and environment ranges are written under `arg_lock`, as readers of
    /// `/proc/PID/cmdline` take it.
    pub(crate) fn set_layout(&self, l: &MmLayout) {
        let m = self.mm();
        // SAFETY: the mm is write-locked (type invariant): no one else writes these
        // fields; `arg_lock` orders the argument ranges with lockless readers.
        unsafe {
            let f = &mut (*m).__bindgen_anon_1;
            f.start_code = l.start_code as _;
            f.end_code = l.end_code as _;
            f.start_data = l.start_data as _;
            f.end_data = l.end_data as _;
            f.start_brk = l.start_brk as _;
            f.brk = l.brk as _;
            f.start_stack = l.start_stack as _;
            bindings::mitosis_mm_arg_lock(m);
            f.arg_start = l.arg_start as _;
            f.arg_end = l.arg_end as _;
            f.env_start = l.env_start as _;
            f.env_end = l.env_end as _;
            bindings::mitosis_mm_arg_unlock(m);
        }
    }
}

/// The layout fields of an mm (`struct prctl_mm_map`'s addresses).
pub(crate) struct MmLayout {
    pub(crate) start_code: u64,
    pub(crate) end_code: u64,
    pub(crate) start_data: u64,
    pub(crate) end_data: u64,
    pub(crate) start_brk: u64,
    pub(crate) brk: u64,
    pub(crate) start_stack: u64,
    pub(crate) arg_start: u64,
    pub(crate) arg_end: u64,
    pub(crate) env_start: u64,
    pub(crate) env_end: u64,
}

impl Drop for MmapWriteGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `current` (type invariant).
        unsafe { bindings::mitosis_mmap_write_unlock(self.mm()) };
    }
}

fn current_mm() -> Result<NonNull<bindings::mm_struct>> {
    // SAFETY: `current` is always valid in process context; a kernel thread has no mm.
    NonNull::new(unsafe { bindings::mitosis_current_mm() }).ok_or(EINVAL)
}

/// An identity of the current task's address space (its `mm_struct`'s address, 0 in
/// a kernel thread): told apart, never dereferenced.
pub(crate) fn current_mm_id() -> usize {
    current_mm().map_or(0, |mm| mm.as_ptr() as usize)
}

/// Which special mapping a VMA is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Special {
    None,
    Vdso,
    Vvar,
    /// Another `VM_IO`/`VM_PFNMAP`/`VM_MIXEDMAP` mapping (device memory): never
    /// captured.
    Other,
}

/// The file a VMA maps, valid while the mmap lock guard it was read under (`'a`) is
/// held: the VMA holds a reference on it.
///
/// # Invariants
///
/// `0` is a live file for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct VmaFile<'a>(NonNull<bindings::file>, core::marker::PhantomData<&'a ()>);

impl VmaFile<'_> {
    pub(crate) fn as_ptr(&self) -> *mut bindings::file {
        self.0.as_ptr()
    }
}

/// What capture and restore need of one VMA, read under the mmap lock (`'a`).
#[derive(Clone, Copy)]
pub(crate) struct VmaView<'a> {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) flags: u64,
    pub(crate) file: Option<VmaFile<'a>>,
    /// File offset of `start`, in pages (`vm_pgoff`).
    pub(crate) pgoff: u64,
    /// The VMA has an `anon_vma`: it may hold anonymous (copied-on-write) pages. A
    /// private file mapping without one holds only its file's page-cache pages.
    pub(crate) has_anon: bool,
    /// Private anonymous memory (no file, no operations: `vma_is_anonymous`). Its
    /// never-touched pages have no page-table entries, so page tables alone say which
    /// pages exist.
    pub(crate) anonymous: bool,
    pub(crate) special: Special,
}

impl VmaView<'_> {
    fn read(vma: NonNull<bindings::vm_area_struct>) -> Self {
        let v = vma.as_ptr();
        // SAFETY: the caller holds the mmap lock of the VMA's mm, so it is live and its
        // fields are stable.
        let (start, end, flags, file, pgoff, ops, has_anon) = unsafe {
            (
                (*v).__bindgen_anon_1.__bindgen_anon_1.vm_start as u64,
                (*v).__bindgen_anon_1.__bindgen_anon_1.vm_end as u64,
                (*v).__bindgen_anon_2.vm_flags as u64,
                (*v).vm_file,
                (*v).vm_pgoff as u64,
                (*v).vm_ops,
                !(*v).anon_vma.is_null(),
            )
        };
        let mut special = Special::None;
        if flags & (bindings::VM_IO | bindings::VM_PFNMAP | bindings::VM_MIXEDMAP) as u64 != 0 {
            special = Special::Other;
        }
        if file.is_null() && !ops.is_null() {
            // SAFETY: `ops` is the VMA's live operations table.
            if let Some(name_fn) = unsafe { (*ops).name } {
                // SAFETY: `name` of a special mapping returns a static string or null.
                let name = unsafe { name_fn(v) };
                if !name.is_null() {
                    // SAFETY: a NUL-terminated static string.
                    let name = unsafe { kernel::str::CStr::from_char_ptr(name) };
                    special = match name.as_bytes() {
                        b"[vdso]" => Special::Vdso,
                        b"[vvar]" => Special::Vvar,
                        _ => Special::Other,
                    };
                }
            }
        }
        VmaView {
            start,
            end,
            flags,
            file: NonNull::new(file).map(|f| VmaFile(f, core::marker::PhantomData)),
            pgoff,
            has_anon,
            anonymous: file.is_null() && ops.is_null(),
            special,
        }
    }
}
