// SPDX-License-Identifier: GPL-2.0

//! Owned verbs objects: protection domain, completion queue, DMA-mapped page.

use super::device::IbDevice;
use super::CALLER;
use crate::bindings;
use core::ptr::NonNull;
use kernel::error::from_err_ptr;
use kernel::page::Page;
use kernel::prelude::*;

/// A kernel protection domain.
///
/// # Invariants
///
/// `0` was returned by `ib_alloc_pd` and is deallocated only in `Drop`.
pub(crate) struct Pd(NonNull<bindings::ib_pd>);

impl Pd {
    pub(crate) fn new(dev: &IbDevice) -> Result<Self> {
        // SAFETY: `dev` is a registered device.
        let pd = from_err_ptr(unsafe {
            bindings::__ib_alloc_pd(dev.as_ptr(), 0, CALLER.as_char_ptr())
        })?;
        NonNull::new(pd).map(Pd).ok_or(ENOMEM)
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::ib_pd {
        self.0.as_ptr()
    }

    /// The lkey covering all local DMA addresses of this PD (local access only).
    pub(crate) fn local_dma_lkey(&self) -> u32 {
        // SAFETY: the PD is live (type invariant).
        unsafe { (*self.0.as_ptr()).local_dma_lkey }
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: the PD is live and every object allocated from it is gone (owners drop
        // MRs and QPs first).
        unsafe { bindings::mitosis_ib_dealloc_pd(self.0.as_ptr()) };
    }
}

// SAFETY: a PD may be used and freed from any thread.
unsafe impl Send for Pd {}
// SAFETY: the verbs core serialises what needs it.
unsafe impl Sync for Pd {}

/// A completion queue whose entries carry `ib_cqe` callbacks.
///
/// # Invariants
///
/// `0` was returned by `ib_alloc_cq` and is freed only in `Drop`.
pub(crate) struct Cq(NonNull<bindings::ib_cq>);

/// Where a CQ's completion handlers run.
#[derive(Clone, Copy)]
pub(crate) enum CqPoll {
    /// In softirq context, right where the device reported the completion: for
    /// handlers that only record a status and wake a sleeper (no extra task switch
    /// between a READ's completion and its waiter).
    Softirq,
    /// In a workqueue, so handlers may sleep (request handlers wait for their reply).
    Workqueue,
}

impl Cq {
    pub(crate) fn new(dev: &IbDevice, entries: i32, poll: CqPoll) -> Result<Self> {
        let ctx = match poll {
            CqPoll::Softirq => bindings::ib_poll_context_IB_POLL_SOFTIRQ,
            CqPoll::Workqueue => bindings::ib_poll_context_IB_POLL_WORKQUEUE,
        };
        // SAFETY: `dev` is a registered device.
        let cq = from_err_ptr(unsafe {
            bindings::__ib_alloc_cq(
                dev.as_ptr(),
                core::ptr::null_mut(),
                entries,
                0,
                ctx,
                CALLER.as_char_ptr(),
            )
        })?;
        NonNull::new(cq).map(Cq).ok_or(ENOMEM)
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::ib_cq {
        self.0.as_ptr()
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: the CQ is live; owners destroy the QPs using it first. `ib_free_cq`
        // waits for a running completion handler to finish.
        unsafe { bindings::ib_free_cq(self.0.as_ptr()) };
    }
}

// SAFETY: a CQ may be freed from any thread.
unsafe impl Send for Cq {}
// SAFETY: the verbs core serialises polling.
unsafe impl Sync for Cq {}

/// A page mapped for DMA by one device.
///
/// # Invariants
///
/// `addr` is the mapping of `page` for `dev` in direction `dir`, unmapped only in `Drop`
/// (before the page is freed). Owners drop it before the device goes (a connection's
/// pages go in its teardown, which device removal runs first).
pub(crate) struct DmaPage {
    page: Page,
    dev: *mut bindings::ib_device,
    addr: u64,
    dir: bindings::dma_data_direction,
}

impl DmaPage {
    /// Allocates a zeroed page and maps it for `dev`.
    pub(crate) fn new(dev: &IbDevice, dir: bindings::dma_data_direction) -> Result<Self> {
        let dev = dev.as_ptr();
        let page = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
        // SAFETY: `dev` is registered and `page` is a valid page we own.
        let addr = unsafe { bindings::mitosis_ib_dma_map_page(dev, page.as_ptr().cast(), dir) };
        // SAFETY: `addr` came from mapping on `dev`.
        if unsafe { bindings::mitosis_ib_dma_mapping_error(dev, addr) } != 0 {
            return Err(ENOMEM);
        }
        Ok(DmaPage {
            page,
            dev,
            addr,
            dir,
        })
    }

    /// The address the device uses (never a physical address: rxe maps to virtual).
    pub(crate) fn dma_addr(&self) -> u64 {
        self.addr
    }

    /// The page's kernel mapping (x86_64 has no highmem: always mapped).
    fn kaddr(&self) -> *mut u8 {
        // SAFETY: `page` is a valid, lowmem page.
        unsafe { bindings::mitosis_page_address(self.page.as_ptr().cast()).cast() }
    }

    /// The page contents, for the CPU. Call after the device finished writing
    /// ([`DmaPage::sync_for_cpu`]).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the page is mapped at `kaddr` for `PAGE_SIZE` bytes and owned by `self`.
        unsafe { core::slice::from_raw_parts(self.kaddr(), super::PAGE_SIZE) }
    }

    /// Mutable contents through a shared reference.
    ///
    /// # Safety
    ///
    /// No other reference to the contents may exist and the device must not be using
    /// the page for the duration of the borrow.
    pub(crate) unsafe fn bytes_mut_unchecked(&self) -> &mut [u8] {
        // SAFETY: the caller guarantees exclusivity.
        unsafe { core::slice::from_raw_parts_mut(self.kaddr(), super::PAGE_SIZE) }
    }

    pub(crate) fn sync_for_cpu(&self) {
        // SAFETY: the mapping is live (type invariant).
        unsafe { bindings::mitosis_ib_dma_sync_for_cpu(self.dev, self.addr, self.dir) };
    }

    pub(crate) fn sync_for_device(&self) {
        // SAFETY: the mapping is live (type invariant).
        unsafe { bindings::mitosis_ib_dma_sync_for_device(self.dev, self.addr, self.dir) };
    }
}

/// A page that someone else filled and holds (a locked page-cache folio's), mapped for
/// one device to write (one READ batch into it), with a page reference of its own.
///
/// # Invariants
///
/// The value owns one reference on `page` (taken in `new`, put in `Drop`) and `addr` is
/// its mapping on `dev` for `DMA_FROM_DEVICE`, unmapped in `Drop` before the reference
/// goes. So a device write that arrives late (after its batch failed or timed out)
/// lands in a live, mapped page as long as the value lives: owners keep it until the
/// QP is drained.
pub(crate) struct MappedPage {
    page: NonNull<bindings::page>,
    dev: *mut bindings::ib_device,
    addr: u64,
}

impl MappedPage {
    /// Maps `page` for `dev` to write, taking a reference of its own.
    pub(crate) fn new(dev: &IbDevice, page: &super::pages::PageRef<'_>) -> Result<Self> {
        let page = page.as_ptr();
        let dev = dev.as_ptr();
        // SAFETY: `page` is live for the borrow (`PageRef`'s invariant): one more
        // reference keeps it so beyond.
        unsafe { bindings::mitosis_get_page(page.as_ptr()) };
        let dir = bindings::dma_data_direction_DMA_FROM_DEVICE;
        // SAFETY: `dev` is registered and `page` a valid page we hold.
        let addr = unsafe { bindings::mitosis_ib_dma_map_page(dev, page.as_ptr(), dir) };
        // SAFETY: `addr` came from mapping on `dev`.
        if unsafe { bindings::mitosis_ib_dma_mapping_error(dev, addr) } != 0 {
            // SAFETY: the reference taken above.
            unsafe { bindings::mitosis_put_page(page.as_ptr()) };
            return Err(ENOMEM);
        }
        Ok(MappedPage { page, dev, addr })
    }

    pub(crate) fn dma_addr(&self) -> u64 {
        self.addr
    }

    /// Makes what the device wrote visible to the CPU.
    pub(crate) fn sync_for_cpu(&self) {
        // SAFETY: the mapping is live (type invariant).
        unsafe {
            bindings::mitosis_ib_dma_sync_for_cpu(
                self.dev,
                self.addr,
                bindings::dma_data_direction_DMA_FROM_DEVICE,
            )
        };
    }
}

impl Drop for MappedPage {
    fn drop(&mut self) {
        // SAFETY: the mapping and the reference are ours (type invariant); owners drop
        // the value only once the device no longer writes the page.
        unsafe {
            bindings::mitosis_ib_dma_unmap_page(
                self.dev,
                self.addr,
                bindings::dma_data_direction_DMA_FROM_DEVICE,
            );
            bindings::mitosis_put_page(self.page.as_ptr());
        }
    }
}

// SAFETY: the mapping and the reference may be released from any thread.
unsafe impl Send for MappedPage {}
// SAFETY: shared access only reads the address.
unsafe impl Sync for MappedPage {}

impl Drop for DmaPage {
    fn drop(&mut self) {
        // SAFETY: the mapping is live; owners drop DMA pages only after the device is
        // done with them (QP drained or destroyed). `page` is freed after this.
        unsafe { bindings::mitosis_ib_dma_unmap_page(self.dev, self.addr, self.dir) };
    }
}

// SAFETY: the page and its mapping may be used and released from any thread.
unsafe impl Send for DmaPage {}
// SAFETY: shared access only reads addresses; contents are accessed under owners' rules.
unsafe impl Sync for DmaPage {}
