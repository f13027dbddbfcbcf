// SPDX-License-Identifier: GPL-2.0

//! The FPU image of a snapshot: an XSAVE area checked before a child host installs it.
//!
//! The kernel loads a task's saved XSAVE area with `XRSTOR`/`XRSTORS` on the way back
//! to user mode; an area the instruction rejects raises #GP inside the kernel (a WARN,
//! a panic under `panic_on_warn`). So a child host accepts an image only on the terms
//! of the kernel's own `copy_uabi_from_kernel_to_xstate()`: the same buffer format as
//! this host, a header whose reserved bytes are zero, no component user space does not
//! own (supervisor state such as PASID or CET is never taken from a peer), and an MXCSR
//! without bits this CPU reserves. [`install`] then writes the image over the task's
//! buffer *except* the supervisor components, which stay the child's own.

use super::snapshot::{get_u32, get_u64};

/// The legacy (FXSAVE) region, then the 64-byte XSAVE header.
pub const LEGACY_LEN: usize = 512;
pub const HEADER_END: usize = 576;
const MXCSR_AT: usize = 24;
const MXCSR_MASK_AT: usize = 28;
const XSTATE_BV_AT: usize = 512;
const XCOMP_BV_AT: usize = 520;
/// `XCOMP_BV` bit 63: the compacted format (`XSAVES`).
pub const COMPACTED: u64 = 1 << 63;
/// MXCSR mask when the CPU reports 0 (all bits but DAZ, as the kernel assumes).
pub const MXCSR_DEFAULT_MASK: u32 = 0xFFBF;
/// Component count of the XSAVE architecture.
pub const N_COMPONENTS: usize = 64;

/// Why an FPU image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsaveError {
    /// Not the length of this host's buffer (or shorter than the header).
    Length,
    /// `XCOMP_BV` differs from this host's, or reserved header bytes are set.
    Header,
    /// `XSTATE_BV` names a component user space does not own on this host.
    Features,
    /// MXCSR sets a reserved bit.
    Mxcsr,
}

/// Where one state component lies in this host's buffer (`len` 0: not in it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Component {
    pub offset: usize,
    pub len: usize,
}

/// What CPUID leaf 0xD says of one component: its size, its offset in the standard
/// format, and whether the compacted format aligns it to 64 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComponentInfo {
    pub size: u32,
    pub standard_offset: u32,
    pub align64: bool,
}

/// This host's XSAVE buffer format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsaveFormat {
    /// Size of the buffer (`fpstate->size`).
    pub len: usize,
    /// Components the buffer holds (`fpstate->xfeatures`).
    pub xfeatures: u64,
    /// Of those, the ones user space owns (`fpstate->user_xfeatures`); the others are
    /// supervisor state.
    pub user_xfeatures: u64,
    /// `XCOMP_BV` of this host's buffers (0 in the standard format).
    pub xcomp_bv: u64,
    /// The CPU's MXCSR mask (from the legacy region of a saved area; 0 means default).
    pub mxcsr_mask: u32,
    /// Location of every component (index = component number; 0 and 1 live in the
    /// legacy region and are not listed).
    pub components: [Component; N_COMPONENTS],
}

impl XsaveFormat {
    /// Component locations for buffers with `xcomp_bv`, from each component's CPUID
    /// information `info(i)`: standard offsets, or the compacted layout (components in
    /// order after the header, each 64-byte aligned if CPUID says so). `None` if a
    /// component would end past `len`.
    pub fn layout(
        xcomp_bv: u64,
        xfeatures: u64,
        len: usize,
        info: impl Fn(usize) -> ComponentInfo,
    ) -> Option<[Component; N_COMPONENTS]> {
        let mut out = [Component::default(); N_COMPONENTS];
        let mut next = HEADER_END;
        for (i, c) in out.iter_mut().enumerate().skip(2).take(N_COMPONENTS - 3) {
            if xfeatures & (1 << i) == 0 {
                continue;
            }
            let ci = info(i);
            let offset = if xcomp_bv & COMPACTED != 0 {
                let at = if ci.align64 {
                    next.checked_next_multiple_of(64)?
                } else {
                    next
                };
                next = at.checked_add(ci.size as usize)?;
                at
            } else {
                ci.standard_offset as usize
            };
            let end = offset.checked_add(ci.size as usize)?;
            if offset < HEADER_END || end > len {
                return None;
            }
            *c = Component {
                offset,
                len: ci.size as usize,
            };
        }
        Some(out)
    }
}

/// Checks a peer's FPU image against this host's format (see the module docs).
pub fn check(image: &[u8], fmt: &XsaveFormat) -> Result<(), XsaveError> {
    if image.len() != fmt.len || image.len() < HEADER_END {
        return Err(XsaveError::Length);
    }
    if get_u64(image, XCOMP_BV_AT) != fmt.xcomp_bv
        || image[XCOMP_BV_AT + 8..HEADER_END].iter().any(|&b| b != 0)
    {
        return Err(XsaveError::Header);
    }
    let xstate_bv = get_u64(image, XSTATE_BV_AT);
    if xstate_bv & !(fmt.user_xfeatures & fmt.xfeatures) != 0 {
        return Err(XsaveError::Features);
    }
    let mask = match fmt.mxcsr_mask {
        0 => MXCSR_DEFAULT_MASK,
        m => m,
    };
    if get_u32(image, MXCSR_AT) & !mask != 0 {
        return Err(XsaveError::Mxcsr);
    }
    Ok(())
}

/// Installs a peer's FPU image into this task's buffer `dst`: checks it, then copies
/// every byte except the supervisor components, whose state and `XSTATE_BV` bits stay
/// `dst`'s. The CPU's MXCSR mask field keeps `dst`'s value (it describes this CPU).
pub fn install(image: &[u8], dst: &mut [u8], fmt: &XsaveFormat) -> Result<(), XsaveError> {
    check(image, fmt)?;
    if dst.len() != image.len() {
        return Err(XsaveError::Length);
    }
    let supervisor = fmt.xfeatures & !fmt.user_xfeatures;
    let kept_bv = get_u64(dst, XSTATE_BV_AT) & supervisor;
    let mut cpu_mxcsr_mask = [0u8; 4];
    cpu_mxcsr_mask.copy_from_slice(&dst[MXCSR_MASK_AT..MXCSR_MASK_AT + 4]);
    let mut at = 0;
    // Supervisor components sorted by offset (the layout is ordered in both formats).
    let mut kept = fmt
        .components
        .iter()
        .enumerate()
        .filter(|(i, c)| supervisor & (1 << i) != 0 && c.len != 0)
        .map(|(_, c)| *c);
    loop {
        let next = kept.next();
        let until = next.map_or(image.len(), |c| c.offset.min(image.len()));
        if until > at {
            dst[at..until].copy_from_slice(&image[at..until]);
        }
        match next {
            Some(c) => at = at.max(c.offset.saturating_add(c.len).min(image.len())),
            None => break,
        }
    }
    dst[MXCSR_MASK_AT..MXCSR_MASK_AT + 4].copy_from_slice(&cpu_mxcsr_mask);
    let bv = get_u64(image, XSTATE_BV_AT) | kept_bv;
    dst[XSTATE_BV_AT..XSTATE_BV_AT + 8].copy_from_slice(&bv.to_le_bytes());
    Ok(())
}
