// SPDX-License-Identifier: GPL-2.0

//! A set of kernel pages that can be registered for remote reading.

use kernel::page::Page;
use kernel::prelude::*;

/// Pages in order; page `i` holds bytes `[i * PAGE_SIZE, (i + 1) * PAGE_SIZE)`.
///
/// Registrations hold an `Arc` of the set, so pages outlive every registration that lets
/// a peer read them.
pub(crate) struct PageSet {
    pages: KVVec<Page>,
}

impl PageSet {
    /// Allocates `n` pages, each filled by `fill(index, page)`.
    pub(crate) fn new(n: usize, mut fill: impl FnMut(usize, &Page) -> Result) -> Result<Self> {
        let mut pages = KVVec::with_capacity(n, GFP_KERNEL)?;
        for i in 0..n {
            let page = Page::alloc_page(GFP_KERNEL)?;
            fill(i, &page)?;
            pages.push(page, GFP_KERNEL)?;
        }
        Ok(PageSet { pages })
    }

    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    pub(crate) fn pages(&self) -> &[Page] {
        &self.pages
    }
}
