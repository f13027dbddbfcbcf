// SPDX-License-Identifier: GPL-2.0

//! The current task's FPU state (x86 XSAVE area): saved for a snapshot, and replaced
//! by a peer's image on resume only after `abi::xsave` accepted it.
//!
//! Between `kernel_fpu_begin` and `kernel_fpu_end` the task's user FPU registers are
//! saved in `current->thread.fpu.fpstate->regs` and are reloaded from there on the way
//! back to user mode, so that buffer is what we read and write. Supervisor components
//! (PASID, CET) are never shipped: the capture clears them from the image, the
//! install keeps the child's own.
//!
//! The entry points are not inlined: a buffer format is 1 KiB of stack, which the
//! callers (capture and resume, which may take page faults into snapshot files after
//! this) should not keep.

use crate::abi::xsave::{self, ComponentInfo, XsaveFormat};
use crate::bindings;
use crate::errno;
use core::ptr;
use kernel::prelude::*;

/// Largest FPU image accepted (x86 xsave areas are a few KiB; AMX is 11 KiB).
const MAX_FPU_BYTES: usize = 64 << 10;
/// `KFPU_387 | KFPU_MXCSR`.
const KFPU_DEFAULT: u32 = 3;
/// Where the CPU stores MXCSR_MASK in the legacy region.
const MXCSR_MASK_AT: usize = 28;

/// The current task's saved FPU buffer, borrowed between `kernel_fpu_begin` and
/// `kernel_fpu_end` (the user registers are saved in it and reloaded from it on return
/// to user mode).
///
/// # Invariants
///
/// `fp` is the current task's `fpstate`, `len` its buffer size (checked at least the
/// XSAVE header and at most [`MAX_FPU_BYTES`]); `kernel_fpu_begin` was called and
/// `Drop` calls `kernel_fpu_end`.
struct SavedFpu {
    fp: *mut bindings::fpstate,
    len: usize,
}

impl SavedFpu {
    /// The current task's buffer and its size, checked.
    fn current() -> Result<(*mut bindings::fpstate, usize)> {
        // SAFETY: the current task's fpstate pointer is stable while it runs in the
        // kernel (only a task's own prctl/ptrace paths replace it).
        let fp = unsafe { bindings::mitosis_current_fpstate() };
        // SAFETY: as above; `size` is set once when the fpstate is allocated.
        let len = unsafe { (*fp).size } as usize;
        if !(xsave::HEADER_END..=MAX_FPU_BYTES).contains(&len) {
            return Err(errno::eopnotsupp());
        }
        Ok((fp, len))
    }

    /// Saves the user registers into the buffer. Preemption is off until `Drop`: no
    /// allocation or anything else that sleeps meanwhile.
    fn begin() -> Result<Self> {
        let (fp, len) = Self::current()?;
        // SAFETY: process context; paired with `kernel_fpu_end` in `Drop`.
        unsafe { bindings::kernel_fpu_begin_mask(KFPU_DEFAULT) };
        Ok(SavedFpu { fp, len })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `regs` spans `len` bytes of the fpstate allocation (type invariant);
        // between begin and end nothing else touches it, and `&mut self` is unique.
        unsafe {
            core::slice::from_raw_parts_mut(ptr::addr_of_mut!((*self.fp).regs).cast(), self.len)
        }
    }

    /// This host's buffer format (for checking a peer's image against it).
    fn format(&mut self) -> Result<XsaveFormat> {
        // SAFETY: the fpstate is live (type invariant); plain integer fields.
        let (xfeatures, user_xfeatures) =
            unsafe { ((*self.fp).xfeatures, (*self.fp).user_xfeatures) };
        let len = self.len;
        let b = self.bytes_mut();
        let xcomp_bv = u64::from_le_bytes(b[520..528].try_into().map_err(|_| EINVAL)?);
        let mxcsr_mask = u32::from_le_bytes(
            b[MXCSR_MASK_AT..MXCSR_MASK_AT + 4]
                .try_into()
                .map_err(|_| EINVAL)?,
        );
        let components = XsaveFormat::layout(xcomp_bv, xfeatures, len, component_info)
            .ok_or_else(errno::eopnotsupp)?;
        Ok(XsaveFormat {
            len,
            xfeatures,
            user_xfeatures,
            xcomp_bv,
            mxcsr_mask,
            components,
        })
    }
}

impl Drop for SavedFpu {
    fn drop(&mut self) {
        // SAFETY: `kernel_fpu_begin` was called in `begin` (type invariant).
        unsafe { bindings::kernel_fpu_end() };
    }
}

/// CPUID leaf 0xD, sub-leaf `i`: size, standard offset and alignment of component `i`.
fn component_info(i: usize) -> ComponentInfo {
    let r = core::arch::x86_64::__cpuid_count(0xD, i as u32);
    ComponentInfo {
        size: r.eax,
        standard_offset: r.ebx,
        align64: r.ecx & 2 != 0,
    }
}

/// The current task's FPU image as a snapshot carries it: this host's buffer format,
/// with supervisor components cleared (their `XSTATE_BV` bits and bytes).
#[inline(never)]
pub(crate) fn capture() -> Result<KVVec<u8>> {
    let (_, len) = SavedFpu::current()?;
    let mut image = KVVec::from_elem(0u8, len, GFP_KERNEL)?;
    let mut saved = SavedFpu::begin()?;
    let fmt = saved.format()?;
    if fmt.len != image.len() {
        return Err(EINVAL);
    }
    image.copy_from_slice(saved.bytes_mut());
    drop(saved);
    let supervisor = fmt.xfeatures & !fmt.user_xfeatures;
    let bv = u64::from_le_bytes(image[512..520].try_into().map_err(|_| EINVAL)?) & !supervisor;
    image[512..520].copy_from_slice(&bv.to_le_bytes());
    for (i, c) in fmt.components.iter().enumerate() {
        if supervisor & (1 << i) != 0 {
            if let Some(bytes) = image.get_mut(c.offset..c.offset.saturating_add(c.len)) {
                bytes.fill(0);
            }
        }
    }
    Ok(image)
}

/// Checks a peer's image against this host's format without installing it (the
/// resume's last check before its point of no return).
#[inline(never)]
pub(crate) fn check(image: &[u8]) -> Result {
    let fmt = SavedFpu::begin()?.format()?;
    xsave::check(image, &fmt).map_err(|e| {
        pr_info!("resume: the seed's FPU image is refused ({:?})\n", e);
        errno::eopnotsupp()
    })
}

/// Installs a peer's image as the current task's user FPU state (loaded on return to
/// user mode); the task's supervisor state stays its own.
#[inline(never)]
pub(crate) fn install(image: &[u8]) -> Result {
    let mut saved = SavedFpu::begin()?;
    let fmt = saved.format()?;
    xsave::install(image, saved.bytes_mut(), &fmt).map_err(|_| errno::eopnotsupp())
}
