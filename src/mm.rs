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

    /// Makes the VMA at `addr` grow down on faults below it (a stack).
    pub(crate) fn set_growsdown(&self, addr: u64) -> Result {
        // SAFETY: the mm is write-locked (type invariant).
        let vma = unsafe { bindings::find_vma(self.mm(), addr as _) };
        let vma = NonNull::new(vma).ok_or(EFAULT)?;
        if VmaView::read(vma).start > addr {
            return Err(EFAULT);
        }
        // SAFETY: `vma` belongs to the write-locked mm.
        unsafe { bindings::mitosis_vma_set_growsdown(vma.as_ptr()) };
        Ok(())
    }
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
    /// Another `VM_IO`/`VM_PFNMAP` mapping: cannot be captured.
    Other,
}

/// What capture and restore need of one VMA, read under the mmap lock.
#[derive(Clone, Copy)]
pub(crate) struct VmaView {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) flags: u64,
    pub(crate) file: *mut bindings::file,
    pub(crate) special: Special,
}

impl VmaView {
    fn read(vma: NonNull<bindings::vm_area_struct>) -> Self {
        let v = vma.as_ptr();
        // SAFETY: the caller holds the mmap lock of the VMA's mm, so it is live and its
        // fields are stable.
        let (start, end, flags, file, ops) = unsafe {
            (
                (*v).__bindgen_anon_1.__bindgen_anon_1.vm_start as u64,
                (*v).__bindgen_anon_1.__bindgen_anon_1.vm_end as u64,
                (*v).__bindgen_anon_2.vm_flags as u64,
                (*v).vm_file,
                (*v).vm_ops,
            )
        };
        let mut special = Special::None;
        if flags & (bindings::VM_IO | bindings::VM_PFNMAP) as u64 != 0 {
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
            special,
        }
    }
}
