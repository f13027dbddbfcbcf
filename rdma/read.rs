// SPDX-License-Identifier: GPL-2.0

//! The READ path: batches of one-sided RDMA READs into the connection's own pages, or
//! straight into pages the caller lends.

use super::connection::*;
use super::pages::PageRef;
use super::verbs::{DmaPage, MappedPage};
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::util::{push_within_capacity, take_all};
use core::ptr;
use core::sync::atomic::Ordering;
use kernel::prelude::*;

/// Doorbells one caller keeps in flight at most ([`Connection::pipeline_slots`]).
pub(crate) const PIPELINE_DEPTH: usize = 4;

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
        consume: impl FnMut(usize, &[u8]) -> Result,
    ) -> Result {
        self.post_in_slot(slot, remote, timeout_ms)?.finish(consume)
    }

    /// READ slots a caller that keeps several doorbells in flight takes in turn: the
    /// [`PIPELINE_DEPTH`] least busy of those the `read_batches` parameter allows
    /// (fewer if it allows fewer), all different, so that the caller never waits for
    /// a slot it holds itself. At least one.
    pub(crate) fn pipeline_slots(&self) -> Result<KVec<usize>> {
        let slots = crate::params::read_batches(READ_SLOTS);
        let mut picked = KVec::with_capacity(PIPELINE_DEPTH, GFP_KERNEL)?;
        for _ in 0..slots.min(PIPELINE_DEPTH) {
            let best = (0..slots)
                .filter(|i| !picked.contains(i))
                .min_by_key(|&i| self.read_slots[i].users.load(Ordering::Relaxed))
                .ok_or(EINVAL)?;
            // Within the capacity reserved above: no allocation.
            picked.push(best, GFP_KERNEL)?;
        }
        Ok(picked)
    }

    /// Posts one doorbell of READs (as [`Self::read_pages`] does) into slot `slot`'s own
    /// pages and returns without waiting: the caller can work, or post into another
    /// slot, while it is in flight, and takes the bytes with [`InFlight::finish`].
    pub(crate) fn post_read(
        &self,
        slot: usize,
        remote: &[(u64, u32)],
        timeout_ms: u32,
    ) -> Result<InFlight<'_>> {
        let n = remote.len();
        if n == 0 || n > MAX_READ_BATCH {
            return Err(EINVAL);
        }
        let slot = self.read_slots.get(slot).ok_or(EINVAL)?;
        self.post_in_slot(slot, remote, timeout_ms)
    }

    fn post_in_slot<'a>(
        &'a self,
        slot: &'a ReadSlot,
        remote: &[(u64, u32)],
        timeout_ms: u32,
    ) -> Result<InFlight<'a>> {
        let n = remote.len();
        let mut bufs = slot.bufs.lock();
        if !self.is_up() {
            return Err(errno::enotconn());
        }
        // SAFETY: a read slot's lock held and the state is UP.
        let res = unsafe { self.res()? };
        while bufs.len() < n {
            let page = DmaPage::new(res.dev(), bindings::dma_data_direction_DMA_FROM_DEVICE)?;
            bufs.push(page, GFP_KERNEL)?;
        }
        let mut sges = KVec::with_capacity(n, GFP_KERNEL)?;
        for buf in bufs[..n].iter() {
            sges.push(sge(res, buf.dma_addr()), GFP_KERNEL)?;
        }
        // The destination pages belong to the slot and stay mapped until the QP is
        // drained, whatever happens to this batch.
        self.post(slot, res, remote, &mut sges)?;
        slot.users.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight {
            conn: self,
            slot,
            bufs,
            n,
            timeout_ms,
            waited: false,
        })
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
            let posted = self.post(slot, res, remote, &mut sges);
            match posted.and_then(|()| self.complete(slot, n, timeout_ms)) {
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
    /// `slot`, whose lock the caller holds until [`Self::complete`] returned for it and
    /// whose destinations it keeps mapped until the QP is drained if that fails. A
    /// failed post fails the connection.
    fn post(
        &self,
        slot: &ReadSlot,
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
            wr.wr.__bindgen_anon_1.wr_cqe = slot.waiter.cqe();
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
        slot.waiter.arm();
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

    /// Waits (bounded) for the doorbell of `n` pages posted on `slot`. A timeout or an
    /// error fails the connection.
    fn complete(&self, slot: &ReadSlot, n: usize, timeout_ms: u32) -> Result {
        let status = match slot.waiter.wait(timeout_ms) {
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

/// A doorbell of READs in flight in one of a connection's slots
/// ([`Connection::post_read`]).
///
/// # Invariants
///
/// Holds the slot's lock from the post until the doorbell completed (or failed, and
/// with it the connection): its destinations are the slot's pages. Dropped without
/// [`Self::finish`], it waits (bounded) for the doorbell before it lets the slot go.
pub(crate) struct InFlight<'a> {
    conn: &'a Connection,
    slot: &'a ReadSlot,
    bufs: kernel::sync::lock::Guard<'a, KVec<DmaPage>, kernel::sync::lock::mutex::MutexBackend>,
    n: usize,
    timeout_ms: u32,
    waited: bool,
}

impl InFlight<'_> {
    /// Waits (bounded) for the doorbell, then hands page `i`'s bytes to
    /// `consume(i, bytes)`, under the slot's lock (the rule of
    /// [`Connection::read_pages`]).
    pub(crate) fn finish(mut self, mut consume: impl FnMut(usize, &[u8]) -> Result) -> Result {
        self.waited = true;
        self.conn.complete(self.slot, self.n, self.timeout_ms)?;
        for (i, b) in self.bufs[..self.n].iter().enumerate() {
            b.sync_for_cpu();
            consume(i, b.bytes())?;
        }
        Ok(())
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.waited {
            // Bounded; a failure fails the connection, whose teardown frees the
            // slot's pages only after the QP is drained.
            let _ = self.conn.complete(self.slot, self.n, self.timeout_ms);
        }
        self.slot.users.fetch_sub(1, Ordering::Relaxed);
    }
}
