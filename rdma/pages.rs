// SPDX-License-Identifier: GPL-2.0

//! Pages that can be registered for remote reading: pages the module allocated (test
//! regions, snapshot descriptors) and pages of a seed's address space it captured.
//!
//! Captured memory is held per folio, not per page: a seed's transparent huge page is
//! one [`PageSpan`] of up to 512 pages under one reference, so capturing, holding and
//! releasing a 1 GiB seed costs about as many operations as `fork()` copying its page
//! tables (one per PMD), not one per 4 KiB page.

use crate::bindings;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::prelude::*;

use super::PAGE_SIZE;

/// A page the holder of `'a` keeps alive and lets the caller write (a locked page-cache
/// folio's page that is not up to date), lent to the device for one READ batch.
///
/// # Invariants
///
/// `page` is a live `struct page` for `'a`, and nothing reads its bytes as data while
/// it is lent (it is not up to date, and locked).
pub(crate) struct PageRef<'a> {
    page: NonNull<bindings::page>,
    _borrow: PhantomData<&'a mut ()>,
}

impl PageRef<'_> {
    /// # Safety
    ///
    /// `page` is live for the returned lifetime, and only the borrower writes it then.
    pub(crate) unsafe fn new(page: NonNull<bindings::page>) -> Self {
        PageRef {
            page,
            _borrow: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> NonNull<bindings::page> {
        self.page
    }
}

/// How a [`PageSpan`] holds its pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hold {
    /// One plain reference on the folio (allocation, GUP), dropped with `put_page`.
    Reference,
    /// One long-term pin per page (`pin_user_pages_remote` with `FOLL_LONGTERM`: the
    /// pages were moved out of movable and CMA memory first), dropped with
    /// `unpin_user_page_range_dirty_lock`.
    Pin,
}

/// Consecutive pages of one folio (a single page for small folios and allocations),
/// held together.
///
/// # Invariants
///
/// `first` is a live `struct page`; the `n >= 1` pages from it belong to its folio,
/// so their `struct page`s are consecutive in the memory map and their bytes
/// consecutive in the kernel's direct map. The value owns one reference on that folio
/// (`Reference`) or one pin on each of the `n` pages (`Pin`), so no frame of the span
/// can be freed or reused while it lives.
pub(crate) struct PageSpan {
    first: NonNull<bindings::page>,
    n: u32,
    hold: Hold,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl Send for PageSpan {}
// SAFETY: shared access only reads the pointer.
unsafe impl Sync for PageSpan {}

impl PageSpan {
    /// Takes over one reference the caller holds on `page` (from GUP or allocation).
    ///
    /// # Safety
    ///
    /// `page` is live and the caller owns one reference on it, which it gives up.
    pub(crate) unsafe fn from_raw(page: NonNull<bindings::page>) -> Self {
        PageSpan {
            first: page,
            n: 1,
            hold: Hold::Reference,
        }
    }

    /// Takes over the references or pins GUP returned in `pages`, one span for each
    /// longest prefix of consecutive pages of one folio, handed to `out` in order
    /// (references of a span beyond the first are dropped: one keeps the folio).
    ///
    /// # Safety
    ///
    /// Every pointer in `pages` is a live page on which the caller owns one pin
    /// (`pinned`) or one reference, which it gives up.
    pub(crate) unsafe fn from_gup(
        pages: &[NonNull<bindings::page>],
        pinned: bool,
        mut out: impl FnMut(PageSpan),
    ) {
        let stride = core::mem::size_of::<bindings::page>();
        let mut i = 0;
        while i < pages.len() {
            let first = pages[i];
            // SAFETY: `first` is live (caller).
            let room =
                unsafe { bindings::mitosis_folio_pages_from(first.as_ptr()) }.max(1) as usize;
            let mut n = 1usize;
            // A page of the same folio is the next `struct page` of the memory map.
            while i + n < pages.len()
                && n < room
                && pages[i + n].as_ptr() as usize == first.as_ptr() as usize + n * stride
            {
                n += 1;
            }
            let hold = if pinned {
                Hold::Pin
            } else {
                if n > 1 {
                    // SAFETY: the caller owns `n` references on this folio (GUP takes
                    // one per page); one stays with the span.
                    unsafe { bindings::mitosis_put_page_refs(first.as_ptr(), (n - 1) as i32) };
                }
                Hold::Reference
            };
            // INVARIANT: `n` pages of `first`'s folio from `first`, held as `hold` says.
            out(PageSpan {
                first,
                n: n as u32,
                hold,
            });
            i += n;
        }
    }

    /// This one-page span as the `n` pages of its folio from its page, under the same
    /// reference; `None` (the span dropped) when the folio has fewer pages from there
    /// or the span is not one referenced page.
    pub(crate) fn widen(mut self, n: usize) -> Option<Self> {
        if self.n != 1 || self.hold != Hold::Reference || n == 0 {
            return None;
        }
        // SAFETY: the page is live (type invariant).
        let room = unsafe { bindings::mitosis_folio_pages_from(self.first.as_ptr()) } as usize;
        if room < n {
            return None;
        }
        // INVARIANT: `n` pages of the folio from `first`, whose one reference we hold.
        self.n = u32::try_from(n).ok()?;
        Some(self)
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

    /// Pages in the span.
    pub(crate) fn len(&self) -> usize {
        self.n as usize
    }

    /// Page `k` of the span.
    pub(crate) fn page(&self, k: usize) -> Option<PageView<'_>> {
        if k >= self.len() {
            return None;
        }
        // INVARIANT: pages of one folio are consecutive `struct page`s (type
        // invariant), alive while `self` is borrowed.
        Some(PageView {
            page: self.first.as_ptr().wrapping_add(k),
            _owner: PhantomData,
        })
    }

    /// Whether the pages are anonymous memory (written only through copy-on-write by
    /// their private mappings) rather than page cache or shmem that others may write.
    pub(crate) fn is_anon(&self) -> bool {
        // SAFETY: the page is live (type invariant).
        unsafe { bindings::mitosis_page_anon(self.first.as_ptr()) }
    }

    /// Copies `src` into the span's first page at byte `off`.
    pub(crate) fn write(&self, off: usize, src: &[u8]) -> Result {
        let end = off.checked_add(src.len()).ok_or(EINVAL)?;
        if end > PAGE_SIZE {
            return Err(EINVAL);
        }
        // SAFETY: the page is live (type invariant); x86-64 has no highmem, so its
        // kernel address is permanent.
        let base = unsafe { bindings::mitosis_page_address(self.first.as_ptr()) } as *mut u8;
        // SAFETY: `[off, end)` lies within the page; `src` cannot overlap a page only
        // this module writes.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), base.add(off), src.len()) };
        Ok(())
    }
}

/// Copies one whole page, `src` into `dst` (each exactly a page long), eight bytes at a
/// time (the kernel's `copy_page`). `memcpy` on a CPU with fast short `rep movsb`
/// (FSRM, as the test guests' `-cpu max` has) copies byte by byte, which an emulated
/// CPU runs about 8x slower: 6.6 us against 0.8 us a page under TCG.
pub(crate) fn copy_page_bytes(dst: &mut [u8], src: &[u8]) -> Result {
    if dst.len() != PAGE_SIZE || src.len() != PAGE_SIZE {
        return Err(EINVAL);
    }
    // SAFETY: both are a page long and do not overlap (`dst` is borrowed mutably).
    unsafe { bindings::mitosis_copy_page(dst.as_mut_ptr().cast(), src.as_ptr().cast()) };
    Ok(())
}

impl Drop for PageSpan {
    fn drop(&mut self) {
        // SAFETY: we own one reference on the folio, or one pin on each page, as
        // `hold` says (type invariant).
        unsafe {
            match self.hold {
                Hold::Reference => bindings::mitosis_put_page(self.first.as_ptr()),
                Hold::Pin => bindings::unpin_user_page_range_dirty_lock(
                    self.first.as_ptr(),
                    self.n as _,
                    false,
                ),
            }
        }
    }
}

/// One page of a [`PageSpan`] or [`PageSet`], borrowed from it.
///
/// # Invariants
///
/// `page` is a live page held by the owner borrowed for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct PageView<'a> {
    page: *mut bindings::page,
    _owner: PhantomData<&'a PageSpan>,
}

impl<'a> PageView<'a> {
    pub(crate) fn as_ptr(&self) -> *mut bindings::page {
        self.page
    }

    /// The page's bytes (stable for the pages sets hold: copies, or anonymous pages
    /// their seeds only change by copy-on-write).
    pub(crate) fn bytes(&self) -> &'a [u8] {
        // SAFETY: the page is live for `'a` (type invariant) and lowmem on x86-64: its
        // kernel address is permanent and spans `PAGE_SIZE` bytes.
        unsafe {
            core::slice::from_raw_parts(
                bindings::mitosis_page_address(self.page) as *const u8,
                PAGE_SIZE,
            )
        }
    }

    /// A fresh page with this page's contents (not zeroed first: `copy_page`
    /// overwrites all of it).
    pub(crate) fn copy(&self) -> Result<PageSpan> {
        // SAFETY: the page is live for `'a` (type invariant); a non-null result is a
        // fresh page with one reference.
        let p = unsafe { bindings::mitosis_alloc_page_copy(self.page) };
        // SAFETY: as above.
        NonNull::new(p)
            .map(|p| unsafe { PageSpan::from_raw(p) })
            .ok_or(ENOMEM)
    }
}

/// A span and the set's index of its first page.
struct Placed {
    start: usize,
    span: PageSpan,
}

/// Pages in order; page `i` holds bytes `[i * PAGE_SIZE, (i + 1) * PAGE_SIZE)`.
///
/// Registrations hold an `Arc` of the set, so pages outlive every registration that lets
/// a peer read them.
///
/// # Invariants
///
/// `spans[k].start` is the sum of the lengths of the spans before `k`; `len` is the sum
/// of all.
pub(crate) struct PageSet {
    spans: KVVec<Placed>,
    len: usize,
}

impl PageSet {
    pub(crate) const fn empty() -> Self {
        PageSet {
            spans: KVVec::new(),
            len: 0,
        }
    }

    /// Allocates `n` zeroed pages, each filled by `fill(index, page)`.
    pub(crate) fn new(n: usize, mut fill: impl FnMut(usize, &PageSpan) -> Result) -> Result<Self> {
        let mut set = PageSet::empty();
        set.spans.reserve(n, GFP_KERNEL)?;
        for i in 0..n {
            let page = PageSpan::alloc_zeroed()?;
            fill(i, &page)?;
            set.push(page)?;
        }
        Ok(set)
    }

    /// Appends `span`'s pages.
    pub(crate) fn push(&mut self, span: PageSpan) -> Result {
        let start = self.len;
        let len = start.checked_add(span.len()).ok_or(E2BIG)?;
        self.spans.push(Placed { start, span }, GFP_KERNEL)?;
        // INVARIANT: the new span starts after all earlier ones.
        self.len = len;
        Ok(())
    }

    /// Appends every page of `other`, in order.
    pub(crate) fn append(&mut self, other: PageSet) -> Result {
        self.spans.reserve(other.spans.len(), GFP_KERNEL)?;
        for placed in other.spans.into_iter() {
            self.push(placed.span)?;
        }
        Ok(())
    }

    /// Pages in the set.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The index of the span holding page `i`: the last one starting at or before it
    /// (type invariant: starts ascend).
    fn span_of(&self, i: usize) -> Option<usize> {
        match self.spans.binary_search_by(|p| p.start.cmp(&i)) {
            Ok(k) => Some(k),
            Err(k) => k.checked_sub(1),
        }
    }

    /// Page `i`.
    pub(crate) fn get(&self, i: usize) -> Option<PageView<'_>> {
        let placed = self.spans.get(self.span_of(i)?)?;
        placed.span.page(i - placed.start)
    }

    /// Stores `value` (little-endian) in the first 8 bytes of page `i` with one aligned
    /// 8-byte store, so that a reader (a remote READ) sees each byte old or new.
    /// Only for the one page of a set its owner updates after publishing it (a
    /// snapshot's status page), never a page read as stable data.
    pub(crate) fn store_word(&self, i: usize, value: u64) -> Result {
        let page = self.get(i).ok_or(EINVAL)?;
        // SAFETY: the page is live while `self` is borrowed (type invariant of
        // `PageView`); x86-64 has no highmem, so its kernel address is permanent and
        // page-aligned.
        let word = unsafe { bindings::mitosis_page_address(page.page) } as *mut u64;
        // SAFETY: `word` is aligned and valid for 8 bytes; every access to it from
        // this host goes through atomics (this store), the device reads it by DMA.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(word) }
            .store(value.to_le(), core::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Pages `[start, start + n)` (those of them in the set) as runs of consecutive
    /// pages of one folio, in order: each run's first page and its length. A
    /// registration maps one scatterlist entry per run (a huge page's 512 pages in
    /// one).
    pub(crate) fn runs(
        &self,
        start: usize,
        n: usize,
    ) -> impl Iterator<Item = (PageView<'_>, usize)> + '_ {
        let end = start.saturating_add(n).min(self.len);
        let first = self.span_of(start).unwrap_or(self.spans.len());
        self.spans
            .get(first..)
            .unwrap_or(&[])
            .iter()
            .map_while(move |p| {
                if p.start >= end {
                    return None;
                }
                let from = start.saturating_sub(p.start);
                let to = (end - p.start).min(p.span.len());
                Some((p.span.page(from)?, to.checked_sub(from)?))
            })
    }
}
