// SPDX-License-Identifier: GPL-2.0

//! Regions of peers opened by this host, read with one-sided RDMA READs.

#![deny(unsafe_code)]

use crate::abi::ioctl::read_flags;
use crate::abi::mac::open_proof;
use crate::abi::wire::{
    CloseRegion, HotPage, Kind, OpenRegion, OpenRegionReply, WorkingSetParts, WorkingSetReport,
    WsRun,
};
use crate::errno;
use crate::params;
use crate::rdma::connection::{Connection, MAX_READ_BATCH};
use crate::rdma::pages::{copy_page_bytes, PageRef};
use crate::rdma::PAGE_SIZE;
use crate::util::ClearForReuse;
use kernel::prelude::*;
use kernel::sync::{Arc, UniqueArc};
use kernel::uaccess::UserSliceWriter;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// How many `io_timeout_ms` an open may take.
const OPEN_TIMEOUT_FACTOR: u32 = 10;

/// An opened peer region: where each byte is and with which key.
pub(crate) struct RemoteRegion {
    pub(crate) handle: u64,
    conn: Arc<Connection>,
    region_id: u64,
    pub(crate) size: u64,
    /// The region's `info` (a snapshot's descriptor length).
    pub(crate) info: u64,
    /// A snapshot's descriptor MAC, as the peer sent it (checked by the reader).
    pub(crate) desc_mac: [u8; 16],
    /// A snapshot's status word when the peer granted this open
    /// (`abi::snapshot::status_word`; 0 for test regions and peers that never let
    /// an open be reused).
    pub(crate) status: u64,
    /// Pages after a snapshot's descriptor holding copies of what a child needs
    /// first, as the peer announced them (checked by the reader).
    pub(crate) lead_pages: u32,
    chunk_bytes: u64,
    keys: Grant,
    /// Pages of the parent's packed copy of the working set (`abi::packed`; 0: none),
    /// read with `packed_keys` like the region with `keys`.
    pub(crate) packed_pages: u32,
    packed_keys: Grant,
    /// A snapshot's working set as an earlier opener reported it to the peer
    /// (ascending, disjoint, at most `wire::MAX_WS_PAGES` pages; not trusted beyond
    /// that: the pager keeps only pages its descriptor says are present).
    pub(crate) ws_runs: KVec<WsRun>,
    /// The first pages of that working set in the order children first touched them
    /// (at most `wire::MAX_HOT_PAGES`; checked by the reader against its descriptor).
    pub(crate) hot: KVec<HotPage>,
}

/// What one read did.
pub(crate) struct ReadOutcome {
    pub(crate) doorbells: u64,
    pub(crate) reads: u64,
}

impl RemoteRegion {
    /// Opens region `region_id` of the peer over `conn`.
    pub(crate) fn open(
        conn: Arc<Connection>,
        handle: u64,
        region_id: u64,
        secret: [u8; 16],
    ) -> Result<Self> {
        Self::open_during(conn, handle, region_id, secret, || ()).map(|(r, ())| r)
    }

    /// [`Self::open`], running `during` (READs through another open of this
    /// connection's peer, no RPC) while the open's round trip is in flight.
    pub(crate) fn open_during<U>(
        conn: Arc<Connection>,
        handle: u64,
        region_id: u64,
        secret: [u8; 16],
        during: impl FnOnce() -> U,
    ) -> Result<(Self, U)> {
        // The secret never travels: a proof for this connection's challenge does.
        let challenge = conn.challenge().ok_or_else(errno::eproto)?;
        let req = OpenRegion {
            region_id,
            proof: open_proof(&secret, &challenge, region_id),
        };
        // The first open of a region from any host makes the parent register all its
        // pages (a 1 GiB snapshot: ~570 MRs): allow it more than one I/O bound.
        let ((facts, (rkeys, packed_rkeys), (ws_runs, hot)), overlapped) = conn.rpc(
            params::io_timeout_ms().saturating_mul(OPEN_TIMEOUT_FACTOR),
            |seq, buf| req.encode(seq, buf).map_err(|_| EINVAL),
            during,
            |reply| {
                if reply.header.kind != Kind::OpenRegionReply {
                    return Err(errno::ebadmsg());
                }
                if reply.header.status < 0 {
                    return Err(Error::from_errno(reply.header.status));
                }
                let r = OpenRegionReply::decode(reply.body).map_err(|_| errno::ebadmsg())?;
                let keys = collect(r.n_keys(), |i| r.rkey(i))?;
                let packed_keys = collect(r.n_packed_keys(), |i| r.packed_rkey(i))?;
                let runs = collect(r.n_runs(), |i| r.run(i))?;
                let hot = collect(r.n_hot(), |i| r.hot(i))?;
                Ok((r.facts, (keys, packed_keys), (runs, hot)))
            },
        )?;
        let region = RemoteRegion {
            handle,
            conn,
            region_id,
            size: facts.size,
            info: facts.info,
            status: facts.status,
            desc_mac: facts.desc_mac,
            lead_pages: facts.lead_pages,
            chunk_bytes: facts.chunk_bytes,
            keys: Grant {
                base: facts.iova_base,
                rkeys,
            },
            packed_pages: facts.packed_pages,
            packed_keys: Grant {
                base: facts.packed_iova_base,
                rkeys: packed_rkeys,
            },
            ws_runs,
            hot,
        };
        Ok((region, overlapped))
    }

    /// This open, shared (by a pager and the work it queues); closed if that fails.
    pub(crate) fn into_shared(self) -> Result<Arc<Self>> {
        match UniqueArc::new_uninit(GFP_KERNEL) {
            Ok(shared) => Ok(shared.write(self).into()),
            Err(e) => {
                self.close();
                Err(e.into())
            }
        }
    }

    /// Region offset of a snapshot's status page (its last page); `None` for test
    /// regions.
    pub(crate) fn status_offset(&self) -> Option<u64> {
        if self.info == 0 {
            return None;
        }
        self.size.checked_sub(PAGE_SIZE as u64)
    }

    /// Whether the status word `word`, read from the status page, says that the
    /// snapshot is live and an open would hand out what this one got: then this open
    /// may serve another child without asking the parent.
    pub(crate) fn still_current(&self, word: u64) -> bool {
        self.status & 1 == 1 && word == self.status
    }

    /// Whether `other` is an open of the same snapshot content as this one: same
    /// size, descriptor (length and MAC) and lead pages, so that what was read through
    /// one holds for the other.
    pub(crate) fn same_snapshot(&self, other: &RemoteRegion) -> bool {
        self.size == other.size
            && self.info == other.info
            && self.desc_mac == other.desc_mac
            && self.lead_pages == other.lead_pages
    }

    /// Reads the pages at region offsets `offs` (at most [`MAX_READ_BATCH`], each
    /// page-aligned and inside the region) with one doorbell; page `i`'s bytes go to
    /// `consume(i, bytes)` (kernel memory only: it runs under a READ slot's lock of
    /// the connection).
    pub(crate) fn read_batch(
        &self,
        offs: &[u64],
        consume: impl FnMut(usize, &[u8]) -> Result,
    ) -> Result {
        if offs.len() > MAX_READ_BATCH {
            return Err(EINVAL);
        }
        let remote = self.locate_pages(offs)?;
        self.conn
            .read_pages(&remote, params::io_timeout_ms(), consume)
    }

    /// Remote address and key of each page at `offs` (page-aligned, inside the
    /// region: `ERANGE` otherwise).
    fn locate_pages(&self, offs: &[u64]) -> Result<KVec<(u64, u32)>> {
        // On the heap: this runs in page faults, which may come from deep stacks.
        let mut remote = KVec::with_capacity(offs.len(), GFP_KERNEL)?;
        for &off in offs {
            if off % PAGE_SIZE as u64 != 0 || off >= self.size {
                return Err(errno::erange());
            }
            remote.push(self.locate(off).ok_or(EINVAL)?, GFP_KERNEL)?;
        }
        Ok(remote)
    }

    /// [`Self::read_batch`] straight into pages the caller lends (`dst[i]` gets the
    /// page at `offs[i]`): no copy (see [`Connection::read_into`]).
    pub(crate) fn read_batch_into(&self, offs: &[u64], dst: &[PageRef<'_>]) -> Result {
        if offs.len() > MAX_READ_BATCH || dst.len() != offs.len() {
            return Err(EINVAL);
        }
        let remote = self.locate_pages(offs)?;
        self.conn.read_into(&remote, dst, params::io_timeout_ms())
    }

    /// Reads the parent's packed copy of the working set whole into `out` (exactly
    /// [`Self::packed_pages`] pages), one batch of READs per doorbell, several
    /// doorbells in flight through the connection's pipeline
    /// ([`Connection::pipeline`]; a doorbell at a time while another reader has it).
    /// After each doorbell's bytes are in, `progress(out, received)` gets the copy and
    /// how many of its first bytes arrived, while the next doorbells are in flight.
    pub(crate) fn read_packed(
        &self,
        out: &mut [u8],
        mut progress: impl FnMut(&[u8], usize) -> Result,
    ) -> Result {
        let pages = self.packed_pages as usize;
        if out.len() != pages.checked_mul(PAGE_SIZE).ok_or(EINVAL)? {
            return Err(EINVAL);
        }
        let doorbell = MAX_READ_BATCH * PAGE_SIZE;
        let doorbells = out.len().div_ceil(doorbell);
        let len = out.len();
        let range = |k: usize| (k * doorbell, ((k + 1) * doorbell).min(len));
        let timeout = params::io_timeout_ms();
        let mut remote = KVec::with_capacity(MAX_READ_BATCH.min(pages), GFP_KERNEL)?;
        let Some(mut pipe) = self.conn.pipeline(timeout)? else {
            // Another reader has the connection's pipeline: a doorbell at a time.
            for k in 0..doorbells {
                let (from, to) = range(k);
                self.read_doorbell(
                    &self.packed_keys,
                    from as u64,
                    &mut out[from..to],
                    &mut remote,
                )?;
                progress(out, to)?;
            }
            return Ok(());
        };
        // Doorbell `k` goes to slot `k % depth`, once the doorbell `depth` before it
        // left it.
        let depth = pipe.depth();
        for k in 0..doorbells + depth {
            let slot = k % depth;
            if let Some((from, to)) = k.checked_sub(depth).map(range) {
                pipe.finish(slot, copy_into(&mut out[from..to]))?;
                progress(out, to)?;
            }
            if k < doorbells {
                let (from, to) = range(k);
                let n = (to - from) / PAGE_SIZE;
                self.pages_at(&self.packed_keys, from as u64, n, &mut remote)?;
                pipe.post(slot, &remote)?;
            }
        }
        Ok(())
    }

    /// The remote address and key of each of the `n` pages from byte `off` of the
    /// registration granted as `keys`, into `remote`.
    fn pages_at(&self, keys: &Grant, off: u64, n: usize, remote: &mut KVec<(u64, u32)>) -> Result {
        remote.clear_for_reuse();
        for p in 0..n {
            let at = off.checked_add((p * PAGE_SIZE) as u64).ok_or(EINVAL)?;
            remote.push(keys.locate(self.chunk_bytes, at).ok_or(EINVAL)?, GFP_KERNEL)?;
        }
        Ok(())
    }

    /// One doorbell of READs: the `dst.len() / PAGE_SIZE` pages (at most
    /// [`MAX_READ_BATCH`]) from byte `off` of the registration granted as `keys`,
    /// into `dst` (kernel memory: the copy runs under a READ slot's lock). `remote`
    /// is scratch for the request list.
    fn read_doorbell(
        &self,
        keys: &Grant,
        off: u64,
        dst: &mut [u8],
        remote: &mut KVec<(u64, u32)>,
    ) -> Result {
        self.pages_at(keys, off, dst.len() / PAGE_SIZE, remote)?;
        self.conn
            .read_pages(remote, params::io_timeout_ms(), copy_into(dst))
    }

    /// Remote address and key of the page at `off`. Past the end (only with
    /// `UNCHECKED`), the last key, with an address outside it.
    fn locate(&self, off: u64) -> Option<(u64, u32)> {
        self.keys.locate(self.chunk_bytes, off)
    }

    /// Reads `[offset, offset + length)` into `out`, `batch` pages per doorbell.
    pub(crate) fn read(
        &self,
        offset: u64,
        length: u64,
        mut out: UserSliceWriter,
        batch: usize,
        flags: u32,
    ) -> Result<ReadOutcome> {
        let page = PAGE_SIZE as u64;
        if offset % page != 0
            || length % page != 0
            || length == 0
            || batch == 0
            || batch > MAX_READ_BATCH
        {
            return Err(EINVAL);
        }
        let end = offset.checked_add(length).ok_or(errno::erange())?;
        if flags & read_flags::UNCHECKED == 0 && end > self.size {
            return Err(errno::erange());
        }
        // A bounce buffer in kernel memory: the copy to the caller may fault, which
        // must not happen under a READ slot's lock (the fault could need the slot).
        let mut bounce = KVVec::from_elem(0u8, batch * PAGE_SIZE, GFP_KERNEL)?;
        let mut remote = KVec::with_capacity(batch, GFP_KERNEL)?;
        let mut outcome = ReadOutcome {
            doorbells: 0,
            reads: 0,
        };
        let mut off = offset;
        while off < end {
            let n = (((end - off) / page) as usize).min(batch);
            self.read_doorbell(&self.keys, off, &mut bounce[..n * PAGE_SIZE], &mut remote)?;
            out.write_slice(&bounce[..n * PAGE_SIZE])?;
            outcome.doorbells += 1;
            outcome.reads += n as u64;
            off += n as u64 * page;
        }
        Ok(outcome)
    }

    /// Reports the pages this host's children touched, and the first of them in
    /// their order (best effort, no reply).
    pub(crate) fn report_working_set(&self, runs: &[WsRun], hot: &[HotPage]) {
        let _ = self.conn.notify(params::io_timeout_ms(), |seq, buf| {
            WorkingSetReport::encode(self.region_id, runs, hot, seq, buf).map_err(|_| EINVAL)
        });
    }

    /// Tells the peer we are done (best effort: its registration also ends with the
    /// connection).
    pub(crate) fn close(&self) {
        close_at_parent(&self.conn, self.region_id);
    }

    /// [`close`](Self::close), sent from the module's workqueue (at once when it
    /// cannot be queued): a resume that ends an open does not wait for the SEND's
    /// completion (about 1 ms under emulation) before its child runs. A later open
    /// of the same region by this host is counted by the parent before this close
    /// arrives, or after it: either way the parent's count of opens stays right.
    pub(crate) fn close_soon(&self) {
        let Some(queue) = self.conn.workqueue() else {
            return self.close();
        };
        match KBox::pin_init(
            pin_init!(CloseJob {
                conn: self.conn.clone(),
                region_id: self.region_id,
                work <- new_work!("CloseJob::work"),
            }),
            GFP_KERNEL,
        ) {
            Ok(job) => queue.enqueue(job),
            Err(_) => self.close(),
        }
    }

    /// The open, to be closed later by dropping the result: what a host keeps at the
    /// parent after its last child of a snapshot exited, so that the next child's
    /// open reuses the registration the parent made for it (and can read the
    /// descriptor through it while that open is in flight), with what the last pager
    /// read and checked (`checked`). The caller must not also
    /// [`close`](Self::close) this value.
    pub(crate) fn into_open(self: &Arc<Self>, checked: Option<Checked>) -> OpenAtParent {
        OpenAtParent {
            region: self.clone(),
            checked,
            close_on_drop: true,
        }
    }
}

/// Entries `0..n` of a decoded reply (`n` checked by its decoder) as a vector; a
/// missing one is a malformed reply.
fn collect<T>(n: usize, get: impl Fn(usize) -> Option<T>) -> Result<KVec<T>> {
    let mut out = KVec::with_capacity(n, GFP_KERNEL)?;
    for i in 0..n {
        out.push(get(i).ok_or(errno::ebadmsg())?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// A registration as an open's reply grants it: its keys, one per `chunk_bytes`, and
/// the remote address of its first byte.
struct Grant {
    base: u64,
    rkeys: KVec<u32>,
}

impl Grant {
    /// Remote address and key of byte `off` (past the end, the last key, with an
    /// address outside it; `None` if the address would overflow).
    fn locate(&self, chunk_bytes: u64, off: u64) -> Option<(u64, u32)> {
        let last = self.rkeys.len().checked_sub(1)?;
        let chunk = (off.checked_div(chunk_bytes)? as usize).min(last);
        Some((self.base.checked_add(off)?, *self.rkeys.get(chunk)?))
    }
}

/// Copies of snapshot pages read with the descriptor: page `i` of `bytes` is the
/// snapshot-file page at `offs[i]`.
pub(crate) struct Lead {
    pub(crate) offs: KVVec<u64>,
    pub(crate) bytes: KVVec<u8>,
}

impl Lead {
    pub(crate) const NONE: Lead = Lead {
        offs: KVVec::new(),
        bytes: KVVec::new(),
    };
}

/// What a snapshot's resume on this host read and checked that never changes: its
/// validated descriptor (checked against the MAC the parent sent with this open) and
/// its unpacked lead pages. Kept with a lingering open, so that a resume through it
/// reads neither again.
pub(crate) struct Checked {
    pub(crate) desc: KVVec<u8>,
    pub(crate) lead: Lead,
}

/// One open of a region at its parent, kept after its readers are gone: dropping it
/// closes the open (the parent drops its registration for this host with its last
/// open), unless a new reader took it over ([`OpenAtParent::take_over`]).
pub(crate) struct OpenAtParent {
    region: Arc<RemoteRegion>,
    /// What the open's last pager had read and checked, if it handed that on.
    checked: Option<Checked>,
    /// Cleared when a reader takes the open over: then it stays open.
    close_on_drop: bool,
}

impl OpenAtParent {
    /// The open, to read through while it lasts (its keys stay valid until the
    /// parent revokes them).
    pub(crate) fn region(&self) -> &RemoteRegion {
        &self.region
    }

    /// The descriptor and lead pages kept with the open, once.
    pub(crate) fn take_checked(&mut self) -> Option<Checked> {
        self.checked.take()
    }

    /// The open itself, for a new reader that holds it from now on (and closes it
    /// in its turn).
    pub(crate) fn take_over(mut self) -> Arc<RemoteRegion> {
        self.close_on_drop = false;
        self.region.clone()
    }
}

impl Drop for OpenAtParent {
    fn drop(&mut self) {
        if self.close_on_drop {
            self.region.close_soon();
        }
    }
}

/// One close of a region at its parent, queued on the module's workqueue (see
/// [`RemoteRegion::close_soon`]). Stopping the module tears the connections down
/// before it drains the queue: a close left then finds its connection down and sends
/// nothing (the parent dropped the registrations with the connection).
#[pin_data]
struct CloseJob {
    conn: Arc<Connection>,
    region_id: u64,
    #[pin]
    work: Work<CloseJob>,
}

impl_has_work! {
    impl HasWork<Self> for CloseJob { self.work }
}

impl WorkItem for CloseJob {
    type Pointer = Pin<KBox<CloseJob>>;

    fn run(this: Pin<KBox<CloseJob>>) {
        close_at_parent(&this.conn, this.region_id);
    }
}

/// Tells the parent at the other end of `conn` that one open of `region_id` is over
/// (best effort: a connection that is gone took its registrations with it).
fn close_at_parent(conn: &Connection, region_id: u64) {
    let req = CloseRegion { region_id };
    let _ = conn.notify(params::io_timeout_ms(), |seq, buf| {
        req.encode(seq, buf).map_err(|_| EINVAL)
    });
}

/// A consumer of a doorbell's pages that copies page `i` to `i * PAGE_SIZE` of `dst`.
fn copy_into(dst: &mut [u8]) -> impl FnMut(usize, &[u8]) -> Result + '_ {
    move |i, bytes| {
        let page = dst.get_mut(i * PAGE_SIZE..(i + 1) * PAGE_SIZE);
        copy_page_bytes(page.ok_or(EINVAL)?, bytes)
    }
}
