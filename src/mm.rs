// SPDX-License-Identifier: GPL-2.0

//! Address-space access for capture and restore: the mmap lock as a guard, VMA views
//! and the special mappings (vDSO, vvar) by name.

use crate::bindings;
use core::ptr::NonNull;
use kernel::prelude::*;

/// Most VMAs a snapshot may hold (the kernel's default `vm.max_map_count` is 65530).
pub(crate) const MAX_VMAS: usize = 65536;

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

    /// The first VMA ending above `addr`.
    pub(crate) fn vma_from(&self, addr: u64) -> Option<VmaView> {
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

/// What capture and restore need of one VMA, read under the mmap lock.
#[derive(Clone, Copy)]
pub(crate) struct VmaView {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) flags: u64,
    pub(crate) file: *mut bindings::file,
    /// File offset of `start`, in pages (`vm_pgoff`).
    pub(crate) pgoff: u64,
    pub(crate) special: Special,
}

impl VmaView {
    fn read(vma: NonNull<bindings::vm_area_struct>) -> Self {
        let v = vma.as_ptr();
        // SAFETY: the caller holds the mmap lock of the VMA's mm, so it is live and its
        // fields are stable.
        let (start, end, flags, file, pgoff, ops) = unsafe {
            (
                (*v).__bindgen_anon_1.__bindgen_anon_1.vm_start as u64,
                (*v).__bindgen_anon_1.__bindgen_anon_1.vm_end as u64,
                (*v).__bindgen_anon_2.vm_flags as u64,
                (*v).vm_file,
                (*v).vm_pgoff as u64,
                (*v).vm_ops,
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
            file,
            pgoff,
            special,
        }
    }
}
