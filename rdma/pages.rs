// SPDX-License-Identifier: GPL-2.0

//! Pages that can be registered for remote reading: pages the module allocated (test
//! regions, snapshot descriptors) and pages of a seed's address space it captured.

use crate::bindings;
use core::ptr::NonNull;
use kernel::prelude::*;

use super::PAGE_SIZE;

/// How a [`PageRef`] holds its page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hold {
    /// A plain reference (allocation, short-lived GUP), dropped with `put_page`.
    Reference,
    /// A long-term pin (`pin_user_pages_remote` with `FOLL_LONGTERM`: the page was
    /// moved out of movable and CMA memory first), dropped with `unpin_user_page`.
    Pin,
}

/// One reference (or pin) on a kernel page.
///
/// # Invariants
///
/// `page` is a live `struct page` on which this value owns one reference or pin, as
/// `hold` says, so the frame cannot be freed or reused while the value lives.
pub(crate) struct PageRef {
    page: NonNull<bindings::page>,
    hold: Hold,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl Send for PageRef {}
// SAFETY: shared access only reads the pointer.
unsafe impl Sync for PageRef {}

impl PageRef {
    /// Takes over one reference the caller holds on `page` (from GUP or allocation).
    ///
    /// # Safety
    ///
    /// `page` is live and the caller owns one reference on it, which it gives up.
    pub(crate) unsafe fn from_raw(page: NonNull<bindings::page>) -> Self {
        PageRef {
            page,
            hold: Hold::Reference,
        }
    }

    /// Takes over one long-term pin the caller holds on `page` (`FOLL_PIN |
    /// FOLL_LONGTERM`).
    ///
    /// # Safety
    ///
    /// `page` is live and the caller owns one pin on it, which it gives up.
    pub(crate) unsafe fn from_pinned(page: NonNull<bindings::page>) -> Self {
        PageRef {
            page,
            hold: Hold::Pin,
        }
    }

    /// A fresh zeroed page.
    pub(crate) fn alloc_zeroed() -> Result<Self> {
        // SAFETY: plain allocation; a non-null result carries one reference.
        let p = unsafe { bindings::mitosis_alloc_zeroed_page() };
        // SAFETY: a fresh page with its one reference.
        NonNull::new(p)
            .map(|p| unsafe { Self::from_raw(p) })
            .ok_or(ENOMEM)
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }

    /// Whether the page is anonymous memory (written only through copy-on-write by its
    /// private mappings) rather than page cache or shmem that others may write.
    pub(crate) fn is_anon(&self) -> bool {
        // SAFETY: the page is live (type invariant).
        unsafe { bindings::mitosis_page_anon(self.as_ptr()) }
    }

    /// The page's bytes (stable for the pages sets hold: copies, or anonymous pages
    /// their seeds only change by copy-on-write).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the page is live while `self` is (type invariant) and lowmem on
        // x86-64: its kernel address is permanent and spans `PAGE_SIZE` bytes.
        unsafe {
            core::slice::from_raw_parts(
                bindings::mitosis_page_address(self.as_ptr()) as *const u8,
                PAGE_SIZE,
            )
        }
    }

    /// A fresh page with this page's contents.
    pub(crate) fn copy(&self) -> Result<Self> {
        let copy = Self::alloc_zeroed()?;
        copy.write(0, self.bytes())?;
        Ok(copy)
    }

    /// Copies `src` into the page at byte `off`.
    pub(crate) fn write(&self, off: usize, src: &[u8]) -> Result {
        let end = off.checked_add(src.len()).ok_or(EINVAL)?;
        if end > PAGE_SIZE {
            return Err(EINVAL);
        }
        // SAFETY: the page is live (type invariant); x86-64 has no highmem, so its
        // kernel address is permanent.
        let base = unsafe { bindings::mitosis_page_address(self.as_ptr()) } as *mut u8;
        // SAFETY: `[off, end)` lies within the page; `src` cannot overlap a page only
        // this module writes.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), base.add(off), src.len()) };
        Ok(())
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: we own one reference or pin, as `hold` says (type invariant).
        unsafe {
            match self.hold {
                Hold::Reference => bindings::mitosis_put_page(self.as_ptr()),
                Hold::Pin => bindings::unpin_user_page(self.as_ptr()),
            }
        }
    }
}

/// Pages in order; page `i` holds bytes `[i * PAGE_SIZE, (i + 1) * PAGE_SIZE)`.
///
/// Registrations hold an `Arc` of the set, so pages outlive every registration that lets
/// a peer read them.
pub(crate) struct PageSet {
    pages: KVVec<PageRef>,
}

impl PageSet {
    /// Allocates `n` zeroed pages, each filled by `fill(index, page)`.
    pub(crate) fn new(n: usize, mut fill: impl FnMut(usize, &PageRef) -> Result) -> Result<Self> {
        let mut pages = KVVec::with_capacity(n, GFP_KERNEL)?;
        for i in 0..n {
            let page = PageRef::alloc_zeroed()?;
            fill(i, &page)?;
            pages.push(page, GFP_KERNEL)?;
        }
        Ok(PageSet { pages })
    }

    /// A set of pages the caller already holds.
    pub(crate) fn from_pages(pages: KVVec<PageRef>) -> Self {
        PageSet { pages }
    }

    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    pub(crate) fn pages(&self) -> &[PageRef] {
        &self.pages
    }
}
