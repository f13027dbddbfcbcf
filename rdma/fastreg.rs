// SPDX-License-Identifier: GPL-2.0

//! Fast registration of page lists: the only way a peer can read our memory.
//!
//! A [`Registration`] makes a [`PageSet`] readable (and only readable) by RDMA READs
//! carrying its keys, on one PD (a device's, shared by its connections). The set is cut
//! into chunks of at most the device's `max_fast_reg_page_list_len` pages; each chunk
//! is one fast-reg MR. The set's I/O virtual address space starts at a random
//! page-aligned base drawn for the registration (chunk `i` at `base + i * chunk
//! bytes`), so peers never learn a kernel address and a READ must name an address only
//! an open's reply gives out. Dropping the registration deregisters every MR (any later
//! READ with those keys fails on the wire) and unmaps the pages.

use super::device::IbDevice;
use super::pages::PageSet;
use super::verbs::Pd;
use super::PAGE_SIZE;
use crate::bindings;
use core::ptr::NonNull;
use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::sync::Arc;

/// A random page-aligned address below 2^62: about 2^50 choices a peer would have to
/// guess, each wrong guess costing it its connection.
fn random_iova_base() -> u64 {
    let mut b = [0u8; 8];
    crate::util::random_bytes(&mut b);
    (u64::from_le_bytes(b) >> 2) & !(PAGE_SIZE as u64 - 1)
}

/// One fast-reg MR over consecutive pages of the set.
///
/// # Invariants
///
/// `mr` was allocated on the owning registration's PD; `sg[..nents]` is mapped on
/// `dev`. Both are released in `Drop`, MR first.
struct Chunk {
    mr: NonNull<bindings::ib_mr>,
    sg: KVVec<bindings::scatterlist>,
    dev: *mut bindings::ib_device,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: `mr` is live (type invariant); deregistering invalidates its keys.
        unsafe { bindings::mitosis_ib_dereg_mr(self.mr.as_ptr()) };
        // SAFETY: the scatterlist was mapped on `dev` with `sg.len()` entries.
        unsafe {
            bindings::mitosis_ib_dma_unmap_sg(
                self.dev,
                self.sg.as_mut_ptr(),
                self.sg.len() as i32,
                bindings::dma_data_direction_DMA_TO_DEVICE,
            )
        };
    }
}

/// A page set registered for remote READ on one PD.
pub(crate) struct Registration {
    chunks: KVec<Chunk>,
    chunk_pages: usize,
    /// Where the set's I/O address space starts (random, page-aligned, below 2^62).
    iova_base: u64,
    /// Keeps the pages alive while peers may read them.
    pages: Arc<PageSet>,
    /// The PD the MRs were allocated on, released after them.
    _pd: Arc<Pd>,
}

// SAFETY: MRs and mappings may be released from any thread.
unsafe impl Send for Registration {}
// SAFETY: shared access only reads keys.
unsafe impl Sync for Registration {}

impl Registration {
    /// Maps and allocates MRs for `pages` on `pd` (device `dev`), at most `max_chunk_pages`
    /// pages per MR. Returns the registration and the REG_MR work requests that must be
    /// posted (in order, before the keys are handed out) on a QP of `pd`; each carries
    /// `cqe` so a flushed request completes safely.
    pub(crate) fn new(
        pages: Arc<PageSet>,
        pd: &Arc<Pd>,
        dev: &IbDevice,
        max_chunk_pages: usize,
        cqe: *mut bindings::ib_cqe,
    ) -> Result<(Self, KVec<bindings::ib_reg_wr>)> {
        let dev = dev.as_ptr();
        let chunk_pages = max_chunk_pages.max(1);
        let n_chunks = pages.len().div_ceil(chunk_pages);
        let iova_base = random_iova_base();
        let mut chunks = KVec::with_capacity(n_chunks, GFP_KERNEL)?;
        let mut wrs = KVec::with_capacity(n_chunks, GFP_KERNEL)?;
        for ci in 0..n_chunks {
            let first = ci * chunk_pages;
            let n = (pages.len() - first).min(chunk_pages);
            // One entry per run of one folio's pages: the MR still maps them page by
            // page (`ib_map_mr_sg` with 4 KiB pages), but a huge page is one entry to
            // set and DMA-map instead of 512.
            let nents = pages.runs(first, n).count();
            let mut sg = KVVec::with_capacity(nents, GFP_KERNEL)?;
            for _ in 0..nents {
                sg.push(bindings::scatterlist::default(), GFP_KERNEL)?;
            }
            // SAFETY: `sg` has `nents` entries.
            unsafe { bindings::sg_init_table(sg.as_mut_ptr(), nents as u32) };
            let mut covered = 0;
            for (i, (page, len)) in pages.runs(first, n).enumerate().take(nents) {
                // SAFETY: `i < nents`; the `len` pages from `page` are consecutive pages
                // of one folio owned by the set, which outlives the mapping.
                unsafe {
                    bindings::mitosis_sg_set_pages(
                        sg.as_mut_ptr().add(i),
                        page.as_ptr().cast(),
                        len as u32,
                    )
                };
                covered += len;
            }
            if covered != n {
                return Err(EINVAL);
            }
            // SAFETY: `sg` is an initialised table of `n` entries on `dev`.
            let mapped = unsafe {
                bindings::mitosis_ib_dma_map_sg(
                    dev,
                    sg.as_mut_ptr(),
                    nents as i32,
                    bindings::dma_data_direction_DMA_TO_DEVICE,
                )
            };
            if mapped <= 0 {
                return Err(ENOMEM);
            }
            // SAFETY: `pd` is live.
            let mr = match from_err_ptr(unsafe {
                bindings::ib_alloc_mr(
                    pd.as_ptr(),
                    bindings::ib_mr_type_IB_MR_TYPE_MEM_REG,
                    n as u32,
                )
            }) {
                Ok(mr) => mr,
                Err(e) => {
                    // SAFETY: mapped just above.
                    unsafe {
                        bindings::mitosis_ib_dma_unmap_sg(
                            dev,
                            sg.as_mut_ptr(),
                            nents as i32,
                            bindings::dma_data_direction_DMA_TO_DEVICE,
                        )
                    };
                    return Err(e);
                }
            };
            let chunk = Chunk {
                mr: NonNull::new(mr).ok_or(ENOMEM)?,
                sg,
                dev,
            };
            // SAFETY: `mr` is live and unregistered; a fresh random key byte (never the
            // one before) makes stale keys of earlier uses of this MR fail, and a guess
            // of the key byte right only once in 255.
            unsafe { bindings::mitosis_ib_update_fast_reg_key(mr) };
            // SAFETY: the mapped scatterlist has `mapped` entries covering `n` pages,
            // which fit the MR (allocated for `n` pages).
            let nmapped = unsafe {
                bindings::ib_map_mr_sg(
                    mr,
                    chunk.sg.as_ptr() as *mut _,
                    mapped,
                    core::ptr::null_mut(),
                    PAGE_SIZE as u32,
                )
            };
            if nmapped != mapped {
                return Err(EINVAL);
            }
            // Below 2^62 + 2^52 for any set that fits memory: no overflow.
            let iova = ((ci * chunk_pages * PAGE_SIZE) as u64)
                .checked_add(iova_base)
                .ok_or(EINVAL)?;
            // SAFETY: `mr` is live; its I/O address space is rebased before registration
            // (page-aligned, as mapped), so peers address the set, not the kernel.
            unsafe { (*mr).iova = iova };
            let mut wr = bindings::ib_reg_wr::default();
            wr.wr.opcode = bindings::ib_wr_opcode_IB_WR_REG_MR;
            wr.wr.__bindgen_anon_1.wr_cqe = cqe;
            wr.mr = mr;
            // SAFETY: `mr` is live.
            wr.key = unsafe { (*mr).rkey };
            wr.access = bindings::ib_access_flags_IB_ACCESS_REMOTE_READ as i32;
            chunks.push(chunk, GFP_KERNEL)?;
            wrs.push(wr, GFP_KERNEL)?;
        }
        Ok((
            Registration {
                chunks,
                chunk_pages,
                iova_base,
                pages,
                _pd: pd.clone(),
            },
            wrs,
        ))
    }

    /// Pages registered.
    pub(crate) fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// Whether this registers exactly `pages` (the same set, not equal contents).
    pub(crate) fn covers(&self, pages: &Arc<PageSet>) -> bool {
        Arc::ptr_eq(&self.pages, pages)
    }

    /// The I/O address of the set's first byte (byte `off` is at `iova_base + off`).
    pub(crate) fn iova_base(&self) -> u64 {
        self.iova_base
    }

    /// Bytes covered by each key (the last may cover less).
    pub(crate) fn chunk_bytes(&self) -> u64 {
        (self.chunk_pages * PAGE_SIZE) as u64
    }

    /// Remote keys, one per chunk, in order.
    pub(crate) fn rkeys(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        // SAFETY: each MR is live while `self` is.
        self.chunks.iter().map(|c| unsafe { (*c.mr.as_ptr()).rkey })
    }

    /// The remote keys, copied (to send without holding the registration).
    pub(crate) fn rkey_vec(&self) -> Result<KVec<u32>> {
        let mut keys = KVec::with_capacity(self.chunks.len(), GFP_KERNEL)?;
        for k in self.rkeys() {
            keys.push(k, GFP_KERNEL)?;
        }
        Ok(keys)
    }
}
