// SPDX-License-Identifier: GPL-2.0

//! The kernel's LZO (`lib/lzo`, built in: zram and zswap use it), safe: LZO-RLE
//! compression of a buffer with its workspace, and bounds-checked decompression of
//! untrusted streams.

use crate::bindings;
use kernel::prelude::*;

/// Scratch memory the compressor needs (`LZO1X_1_MEM_COMPRESS` bytes).
pub(crate) struct Workspace(KVVec<u8>);

impl Workspace {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: returns a constant.
        let len = unsafe { bindings::mitosis_lzo1x_1_mem_compress() };
        Ok(Workspace(KVVec::from_elem(0u8, len, GFP_KERNEL)?))
    }
}

/// Bytes the compressor may write for `len` input bytes (`lzo1x_worst_compress`).
pub(crate) const fn worst(len: usize) -> usize {
    len + len / 16 + 64 + 3 + 2
}

/// Compresses `src` into `dst` (at least [`worst`]`(src.len())` bytes); returns
/// the compressed length.
pub(crate) fn compress(src: &[u8], dst: &mut [u8], wrk: &mut Workspace) -> Result<usize> {
    if dst.len() < worst(src.len()) {
        return Err(EINVAL);
    }
    let mut out_len = dst.len();
    // SAFETY: `src` and `dst` are valid for their lengths, `dst` holds the worst
    // case, and the workspace has the size the compressor asks for.
    let r = unsafe {
        bindings::lzorle1x_1_compress(
            src.as_ptr(),
            src.len(),
            dst.as_mut_ptr(),
            &mut out_len,
            wrk.0.as_mut_ptr().cast(),
        )
    };
    if r != bindings::LZO_E_OK as i32 || out_len > dst.len() {
        return Err(EINVAL);
    }
    Ok(out_len)
}

/// Decompresses `src` into `dst`; returns the bytes written. The safe decoder
/// checks every input and output bound (`src` is hostile).
pub(crate) fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize> {
    let mut out_len = dst.len();
    // SAFETY: both buffers are valid for their lengths; `lzo1x_decompress_safe`
    // never reads or writes past them.
    let r = unsafe {
        bindings::lzo1x_decompress_safe(src.as_ptr(), src.len(), dst.as_mut_ptr(), &mut out_len)
    };
    if r != bindings::LZO_E_OK as i32 || out_len > dst.len() {
        return Err(crate::errno::ebadmsg());
    }
    Ok(out_len)
}
