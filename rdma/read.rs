// SPDX-License-Identifier: GPL-2.0

//! The READ path: batches of one-sided RDMA READs into the connection's own pages, or
//! straight into pages the caller lends.

use super::connection::*;
use super::pages::PageRef;
use super::verbs::{DmaPage, MappedPage};
use super::waiter::Waiter;
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::util::{push_within_capacity, take_all};
use core::ptr;
use core::sync::atomic::Ordering;
use kernel::prelude::*;

impl Connection {
    /// Reads one page from each `(remote address, rkey)` of `remote` (at most
    /// [`MAX_READ_BATCH`]) with one doorbell (pages contiguous under one key share a
    /// request, up to the `read_pages_per_wr` parameter), waits (bounded) for all of them, then
    /// hands page `i`'s bytes to `consume(i, bytes)`. Up to [`READ_SLOTS`] batches run at
    /// once on a connection, each in its own slot. The destinations are the slot's
    /// pages, owned by the connection: after a timeout or error the connection fails and
    /// they stay allocated until `teardown` has drained the QP, so a late response
    /// never lands in freed memory. `consume` runs under the slot's lock: it must not
    /// fault on user memory (copy to kernel memory only: such a fault could need a slot
    /// of this connection).
    pub(crate) fn read_pages(
        &self,
        remote: &[(u64, u32)],
        timeout_ms: u32,
        consume: impl FnMut(usize, &[u8]) -> Result,
    ) -> Result {
        let n = remote.len();
        if n == 0 || n > MAX_READ_BATCH {
            return Err(EINVAL);
        }
        self.in_some_slot(|slot| self.read_in_slot(slot, remote, timeout_ms, consume))
    }

    /// The least busy of the connection's READ slots (racing callers may pick the same
    /// one: its lock orders them), with its user count raised for `run`.
    fn in_some_slot<T>(&self, run: impl FnOnce(&ReadSlot) -> Result<T>) -> Result<T> {
        let slots = crate::params::read_batches(READ_SLOTS);
        let slot = self.read_slots[..slots]
            .iter()
            .min_by_key(|s| s.users.load(Ordering::Relaxed))
            .ok_or(EINVAL)?;
        slot.users.fetch_add(1, Ordering::Relaxed);
        let r = run(slot);
        slot.users.fetch_sub(1, Ordering::Relaxed);
        r
    }

    fn read_in_slot(
        &self,
        slot: &ReadSlot,
        remote: &[(u64, u32)],
        timeout_ms: u32,
        mut consume: impl FnMut(usize, &[u8]) -> Result,
    ) -> Result {
        let n = remote.len();
        let mut bufs = slot.bufs.lock();
        if !self.is_up() {
            return Err(errno::enotconn());
        }
        // SAFETY: a read slot's lock held and the state is UP.
        let res = unsafe { self.res()? };
        let mut sges = destinations(res, &mut bufs, n)?;
        // The destination pages belong to the slot and stay mapped until the QP is
        // drained, whatever happens to this batch.
        self.post(&slot.waiter, res, remote, &mut sges)?;
        self.complete(&slot.waiter, n, timeout_ms)?;
        for (i, b) in bufs[..n].iter().enumerate() {
            b.sync_for_cpu();
            consume(i, b.bytes())?;
        }
        Ok(())
    }

    /// The connection's pipeline, for a caller that keeps several doorbells in flight
    /// (as many as the `read_batches` parameter allows, at most [`PIPELINE_DEPTH`]):
    /// `None` while another caller has it, or when one batch at a time is allowed (the
    /// caller then reads a doorbell at a time through [`Self::read_pages`]).
    ///
    /// The pipeline has slots of its own under one lock, held for the whole read: a
    /// caller holding several of the shared slots' locks at once could wait for one
    /// another caller holds while that one waits for one of its own.
    pub(crate) fn pipeline(&self, timeout_ms: u32) -> Result<Option<Pipeline<'_>>> {
        let depth = crate::params::read_batches(READ_SLOTS).min(PIPELINE_DEPTH);
        if depth < 2
            || self
                .pipeline_taken
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return Ok(None);
        }
        let pipe = Pipeline {
            conn: self,
            bufs: self.pipe_bufs.lock(),
            pending: [0; PIPELINE_DEPTH],
            depth,
            timeout_ms,
        };
        if !self.is_up() {
            return Err(errno::enotconn());
        }
        Ok(Some(pipe))
    }

    /// Reads one page from each `(remote address, rkey)` of `remote` (at most
    /// [`MAX_READ_BATCH`]) straight into page `i` of `dst` with one doorbell, and waits
    /// (bounded) for all of them: no copy. Each page is mapped for the device with a
    /// reference of the batch's own; if the batch fails (the connection then fails too),
    /// the references and mappings stay with the slot until `teardown` has drained the
    /// QP, so a response arriving late writes a live page, which its owner may have
    /// filled again meanwhile (with the same bytes, for a READ of the same remote page:
    /// callers lend pages only for immutable remote data, never for memory they read
    /// as anything else while it is lent).
    pub(crate) fn read_into(
        &self,
        remote: &[(u64, u32)],
        dst: &[PageRef<'_>],
        timeout_ms: u32,
    ) -> Result {
        let n = remote.len();
        if n == 0 || n > MAX_READ_BATCH || dst.len() != n {
            return Err(EINVAL);
        }
        self.in_some_slot(|slot| {
            let _slot = slot.bufs.lock();
            if !self.is_up() {
                return Err(errno::enotconn());
            }
            // SAFETY: a read slot's lock held and the state is UP.
            let res = unsafe { self.res()? };
            // Room to keep the pages after a failure, reserved before anything is
            // posted: keeping them then allocates nothing and so cannot fail.
            let mut lent = slot.lent.lock();
            lent.reserve(n, GFP_KERNEL)?;
            let mut mapped = KVec::with_capacity(n, GFP_KERNEL)?;
            let mut sges = KVec::with_capacity(n, GFP_KERNEL)?;
            for p in dst {
                let m = MappedPage::new(res.dev(), p)?;
                sges.push(sge(res, m.dma_addr()), GFP_KERNEL)?;
                mapped.push(m, GFP_KERNEL)?;
            }
            let posted = self.post(&slot.waiter, res, remote, &mut sges);
            match posted.and_then(|()| self.complete(&slot.waiter, n, timeout_ms)) {
                Ok(()) => {
                    for m in mapped.iter() {
                        m.sync_for_cpu();
                    }
                    Ok(())
                }
                Err(e) => {
                    for m in take_all(&mut mapped) {
                        // Within the capacity reserved above, so it fits; were it not
                        // to, leaking the page beats unmapping it under the device.
                        if let Err(m) = push_within_capacity(&mut lent, m) {
                            core::mem::forget(m);
                        }
                    }
                    Err(e)
                }
            }
        })
    }

    /// Posts one doorbell of READs, page `i` of `remote` into `sges[i]` (pages
    /// contiguous under one key share a request, up to `read_pages_per_wr`), on
    /// the slot whose `waiter` it is, which the caller holds until [`Self::complete`]
    /// returned for it, keeping its destinations mapped until the QP is drained if that
    /// fails. A failed post fails the connection.
    fn post(
        &self,
        waiter: &Waiter,
        res: &Resources,
        remote: &[(u64, u32)],
        sges: &mut [bindings::ib_sge],
    ) -> Result {
        let n = remote.len();
        if n == 0 || sges.len() != n {
            return Err(EINVAL);
        }
        // One request per run of pages contiguous under one key (at most `per_wr`),
        // scattered into that many local pages: fewer requests on the wire.
        let per_wr = crate::params::read_pages_per_wr().min(res.read_sges) as usize;
        let mut wrs: KVec<bindings::ib_rdma_wr> = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut i = 0;
        while i < n {
            let (raddr, rkey) = remote[i];
            let mut pages = 1;
            while pages < per_wr
                && remote.get(i + pages).is_some_and(|&(a, k)| {
                    k == rkey && Some(a) == raddr.checked_add((pages * super::PAGE_SIZE) as u64)
                })
            {
                pages += 1;
            }
            let mut wr = bindings::ib_rdma_wr::default();
            // Every request carries the waiter: an unsignalled one that fails completes.
            wr.wr.__bindgen_anon_1.wr_cqe = waiter.cqe();
            wr.wr.num_sge = pages as i32;
            wr.wr.opcode = bindings::ib_wr_opcode_IB_WR_RDMA_READ;
            wr.remote_addr = raddr;
            wr.rkey = rkey;
            // `sges` is not moved while the requests are built and posted.
            wr.wr.sg_list = &mut sges[i];
            wrs.push(wr, GFP_KERNEL)?;
            i += pages;
        }
        let n_wrs = wrs.len();
        for w in 1..n_wrs {
            let next: *mut bindings::ib_send_wr = &mut wrs[w].wr;
            wrs[w - 1].wr.next = next;
        }
        wrs[n_wrs - 1].wr.send_flags = bindings::ib_send_flags_IB_SEND_SIGNALED as i32;
        waiter.arm();
        // SAFETY: the QP is live; the chain is valid until the post returns; the
        // destination pages stay mapped until the QP is drained (the caller's promise).
        let r = unsafe { bindings::mitosis_ib_post_send(res.qp(), &wrs[0].wr, ptr::null_mut()) };
        if r != 0 {
            count(&COUNTERS.read_errors, 1);
            self.fail(errno::econnreset());
            return Err(Error::from_errno(r));
        }
        count(&COUNTERS.read_doorbells, 1);
        count(&COUNTERS.read_wrs_posted, n_wrs as u64);
        Ok(())
    }

    /// Waits (bounded) for the doorbell of `n` pages posted with `waiter`. A timeout or
    /// an error fails the connection.
    fn complete(&self, waiter: &Waiter, n: usize, timeout_ms: u32) -> Result {
        let status = match waiter.wait(timeout_ms) {
            Ok(s) => s,
            Err(e) => {
                count(&COUNTERS.read_timeouts, 1);
                peer_warn!(
                    "READ of {} pages from {} timed out\n",
                    n,
                    Ipv4(self.peer_addr)
                );
                self.fail(e);
                return Err(e);
            }
        };
        if status != bindings::ib_wc_status_IB_WC_SUCCESS {
            count(&COUNTERS.read_errors, 1);
            peer_warn!(
                "READ from {} failed: wc status {}\n",
                Ipv4(self.peer_addr),
                status
            );
            // The QP is in error now: every later request would flush.
            self.fail(errno::econnreset());
            return Err(if status == bindings::ib_wc_status_IB_WC_REM_ACCESS_ERR {
                errno::eremoteio()
            } else {
                EIO
            });
        }
        count(&COUNTERS.bytes_read, (n * super::PAGE_SIZE) as u64);
        Ok(())
    }
}

/// A scatter entry for one local page at `addr` (a DMA address on the connection's
/// device).
fn sge(res: &Resources, addr: u64) -> bindings::ib_sge {
    bindings::ib_sge {
        addr,
        length: super::PAGE_SIZE as u32,
        lkey: res.domain.pd().local_dma_lkey(),
    }
}

/// The destinations of a batch of `n` pages: the first `n` of `bufs` (a slot's own
/// pages, grown as needed), as scatter entries.
fn destinations(
    res: &Resources,
    bufs: &mut KVec<DmaPage>,
    n: usize,
) -> Result<KVec<bindings::ib_sge>> {
    while bufs.len() < n {
        let page = DmaPage::new(res.dev(), bindings::dma_data_direction_DMA_FROM_DEVICE)?;
        bufs.push(page, GFP_KERNEL)?;
    }
    let mut sges = KVec::with_capacity(n, GFP_KERNEL)?;
    for buf in bufs[..n].iter() {
        sges.push(sge(res, buf.dma_addr()), GFP_KERNEL)?;
    }
    Ok(sges)
}

/// A connection's pipeline, held by one caller ([`Connection::pipeline`]): up to
/// [`PIPELINE_DEPTH`] doorbells in flight, each in a slot of the pipeline's own.
///
/// # Invariants
///
/// Holds the pipeline's lock and its claim (`pipeline_taken`) for its whole life.
/// `pending[i]` is the page count of the doorbell in flight in slot `i` (0: none):
/// its destinations are `bufs[i]`, which stay the connection's (freed by `teardown`
/// after the QP is drained). Dropped with doorbells in flight, it waits (bounded) for
/// them first.
pub(crate) struct Pipeline<'a> {
    conn: &'a Connection,
    bufs: kernel::sync::lock::Guard<
        'a,
        [KVec<DmaPage>; PIPELINE_DEPTH],
        kernel::sync::lock::mutex::MutexBackend,
    >,
    pending: [usize; PIPELINE_DEPTH],
    depth: usize,
    timeout_ms: u32,
}

impl Pipeline<'_> {
    /// Slots in the pipeline (2 to [`PIPELINE_DEPTH`]).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Posts one doorbell of READs (as [`Connection::read_pages`] does) into slot
    /// `i`, which must be free, and returns without waiting.
    pub(crate) fn post(&mut self, i: usize, remote: &[(u64, u32)]) -> Result {
        let n = remote.len();
        if n == 0 || n > MAX_READ_BATCH || i >= self.depth || self.pending[i] != 0 {
            return Err(EINVAL);
        }
        let conn = self.conn;
        if !conn.is_up() {
            return Err(errno::enotconn());
        }
        // SAFETY: the pipeline's lock held and the state is UP.
        let res = unsafe { conn.res()? };
        let mut sges = destinations(res, &mut self.bufs[i], n)?;
        conn.post(&conn.pipe_waiters[i], res, remote, &mut sges)?;
        self.pending[i] = n;
        Ok(())
    }

    /// Waits (bounded) for slot `i`'s doorbell, then hands page `p`'s bytes to
    /// `consume(p, bytes)` (the rule of [`Connection::read_pages`]).
    pub(crate) fn finish(
        &mut self,
        i: usize,
        mut consume: impl FnMut(usize, &[u8]) -> Result,
    ) -> Result {
        let n = core::mem::take(self.pending.get_mut(i).ok_or(EINVAL)?);
        if n == 0 {
            return Err(EINVAL);
        }
        self.conn
            .complete(&self.conn.pipe_waiters[i], n, self.timeout_ms)?;
        for (p, b) in self.bufs[i][..n].iter().enumerate() {
            b.sync_for_cpu();
            consume(p, b.bytes())?;
        }
        Ok(())
    }
}

impl Drop for Pipeline<'_> {
    fn drop(&mut self) {
        for i in 0..self.depth {
            let n = core::mem::take(&mut self.pending[i]);
            if n != 0 {
                // Bounded; a failure fails the connection, whose teardown frees the
                // pages only after the QP is drained.
                let _ = self
                    .conn
                    .complete(&self.conn.pipe_waiters[i], n, self.timeout_ms);
            }
        }
        self.conn.pipeline_taken.store(false, Ordering::Release);
    }
}
