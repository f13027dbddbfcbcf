// SPDX-License-Identifier: GPL-2.0

//! The packed working set (`abi::packed`): where a parent compresses the working set
//! it keeps for a snapshot, once per kept record, and where a child's host unpacks a
//! copy it read into the snapshot file's page cache.
//!
//! Why: a new host's first child reads the whole record before (or while) it runs,
//! and under emulation each page on the wire costs the receiving vCPU far more than
//! decompressing one (rxe checksums and copies every byte): about 90-170 us against
//! about 15 us. The pages of an interpreter's working set compress 1.9-2.8x with
//! LZO-RLE, which the kernel has built in (zram's default). The child's host reads the
//! copy several doorbells deep and unpacks it as it arrives (`remote::read_packed`,
//! `pager::Unpacker`).

#![deny(unsafe_code)]

use crate::abi::packed::{PackedPage, PackedWriter, PAGE_BYTES};
use crate::abi::snapshot::{Descriptor, PAGE};
use crate::abi::wire::{WsRun, MAX_WS_PAGES};
use crate::lzo;
use crate::rdma::connection::Owner;
use crate::rdma::pages::{copy_page_bytes, PageSet};
use crate::rdma::PAGE_SIZE;
use crate::region::Region;
use crate::state::Host;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// Writes page `page` of a copy into `dst` (a page): stored bytes copied, a stream
/// decompressed, which must come out as exactly one page.
pub(crate) fn unpack_page(page: &PackedPage<'_>, dst: &mut [u8]) -> Result {
    if dst.len() != PAGE_BYTES {
        return Err(EINVAL);
    }
    if page.is_stored() {
        return copy_page_bytes(dst, page.encoded);
    }
    if lzo::decompress(page.encoded, dst)? != PAGE_BYTES {
        return Err(crate::errno::ebadmsg());
    }
    Ok(())
}

/// The region pages of `runs` (page-cache indices of the snapshot file) the
/// snapshot holds, as (index, region page), in the order of the runs.
fn present_pages(region: &Region, runs: &[WsRun]) -> Result<KVVec<(u64, usize)>> {
    let pages = &region.pages;
    let desc_len = usize::try_from(region.info).map_err(|_| EINVAL)?;
    let desc_pages = desc_len.div_ceil(PAGE_SIZE);
    // The descriptor fills the region's first pages: this host wrote it.
    let mut desc = KVVec::with_capacity(desc_len, GFP_KERNEL)?;
    for i in 0..desc_pages {
        let p = pages.get(i).ok_or(EINVAL)?;
        let want = (desc_len - desc.len()).min(PAGE_SIZE);
        desc.extend_from_slice(&p.bytes()[..want], GFP_KERNEL)?;
    }
    let desc = Descriptor::parse(&desc).map_err(|_| EINVAL)?;
    let mut out = KVVec::new();
    for r in runs {
        // Runs were checked by the wire decoder: they end before u64::MAX.
        for index in r.first..r.first.saturating_add(u64::from(r.pages)) {
            let Some(data_off) = index.checked_mul(PAGE).and_then(|o| desc.data_offset_at(o))
            else {
                continue;
            };
            let page = (data_off / PAGE)
                .checked_add(desc_pages as u64)
                .and_then(|p| usize::try_from(p).ok())
                .filter(|&p| p < pages.len())
                .ok_or(EINVAL)?;
            if out.len() as u64 >= MAX_WS_PAGES {
                return Ok(out);
            }
            out.push((index, page), GFP_KERNEL)?;
        }
    }
    Ok(out)
}

/// Compresses the pages of `runs` that snapshot `region` holds into a copy
/// (`abi::packed`), in pages ready to register; `None` when the copy would not save
/// an eighth of the bytes (pages that do not compress, such as the benchmark's
/// pattern: a copy would cost the parent their memory again and each opener their
/// registration, for nothing).
pub(crate) fn pack(region: &Region, runs: &[WsRun]) -> Result<Option<PageSet>> {
    let present = present_pages(region, runs)?;
    let budget = present.len().saturating_mul(PAGE_BYTES) / 8 * 7;
    let pages = present.iter().map(|&(index, page)| {
        let bytes = region.pages.get(page).ok_or(EINVAL)?.bytes();
        Ok((index, bytes))
    });
    pack_pages(present.len(), pages, budget)
}

/// Compresses `n` pages, each (page-cache index, its bytes), into a copy
/// (`abi::packed`) in pages ready to register; `None` once the copy grows past
/// `budget` bytes.
pub(crate) fn pack_pages<'a>(
    n: usize,
    pages: impl Iterator<Item = Result<(u64, &'a [u8])>>,
    budget: usize,
) -> Result<Option<PageSet>> {
    let mut writer = PackedWriter::new(n).ok_or(E2BIG)?;
    let head_len = writer.header_len();
    let mut out = KVVec::from_elem(0u8, head_len, GFP_KERNEL)?;
    let mut scratch = KVVec::from_elem(0u8, lzo::worst(PAGE_BYTES), GFP_KERNEL)?;
    let mut wrk = lzo::Workspace::new()?;
    for (i, page) in pages.enumerate() {
        let (index, src) = page?;
        let n = lzo::compress(src, &mut scratch, &mut wrk)?;
        let encoded = if n < PAGE_BYTES { &scratch[..n] } else { src };
        out.extend_from_slice(encoded, GFP_KERNEL)?;
        writer
            .entry(&mut out[..head_len], i, index, encoded.len())
            .ok_or(EINVAL)?;
        if out.len() > budget {
            return Ok(None);
        }
    }
    writer.finish(&mut out[..head_len]).ok_or(EINVAL)?;
    PageSet::new(out.len().div_ceil(PAGE_SIZE), |i, page| {
        let from = i * PAGE_SIZE;
        let to = (from + PAGE_SIZE).min(out.len());
        page.write(0, out.get(from..to).ok_or(EINVAL)?)
    })
    .map(Some)
}

/// One packing of a snapshot's working set, queued on the module's workqueue: the
/// compression of up to 32,768 pages takes a while under emulation and must not hold
/// up the connection whose request kept the record.
#[pin_data]
pub(crate) struct PackJob {
    region: Arc<Region>,
    #[pin]
    work: Work<PackJob>,
}

impl_has_work! {
    impl HasWork<Self> for PackJob { self.work }
}

impl WorkItem for PackJob {
    type Pointer = Pin<KBox<PackJob>>;

    fn run(this: Pin<KBox<PackJob>>) {
        let region = &this.region;
        let Some((generation, runs)) = region.record_to_pack() else {
            return;
        };
        let started = kernel::time::Ktime::ktime_get();
        match pack(region, &runs) {
            Ok(Some(copy)) => {
                let pages = copy.len();
                if region.offer_packed(generation, Some(copy)) {
                    pr_info!(
                        "snapshot {}: working set of {} runs packed into {} pages in {} ms\n",
                        region.id,
                        runs.len(),
                        pages,
                        (kernel::time::Ktime::ktime_get() - started).to_ms()
                    );
                }
            }
            Ok(None) => {
                region.offer_packed(generation, None);
                pr_info!(
                    "snapshot {}: its working set does not compress, children read it unpacked\n",
                    region.id
                );
            }
            Err(e) => pr_warn!(
                "snapshot {}: packing its working set failed ({:?}); children read it unpacked\n",
                region.id,
                e
            ),
        }
    }
}

/// Queues the packing of `region`'s working set (best effort: without it children
/// read the record page by page).
pub(crate) fn start(host: &Host, region: Arc<Region>) {
    let Some(queue) = host.workqueue() else {
        return;
    };
    if let Ok(job) = KBox::pin_init(
        pin_init!(PackJob {
            region,
            work <- new_work!("PackJob::work"),
        }),
        GFP_KERNEL,
    ) {
        queue.enqueue(job);
    }
}
