// SPDX-License-Identifier: GPL-2.0

//! The control channel of a connection: receive buffers, SEND with a bounded wait,
//! request/reply RPCs (client) and requests served on the module's workqueue (server).

use super::connection::*;
use crate::abi::wire;
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::util::take_all;
use core::ptr;
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::types::Opaque;

impl Connection {
    pub(super) fn post_recv(res: &Resources, buf: &RecvBuf) -> Result {
        let mut sge = bindings::ib_sge {
            addr: buf.page.dma_addr(),
            length: wire::MSG_SIZE as u32,
            lkey: res.domain.pd().local_dma_lkey(),
        };
        let mut wr = bindings::ib_recv_wr::default();
        wr.__bindgen_anon_1.wr_cqe = buf.cqe.get();
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        buf.page.sync_for_device();
        // SAFETY: the QP is live; `wr` and `sge` are copied by the post; the buffer stays
        // mapped until the QP is drained.
        kernel::error::to_result(unsafe {
            bindings::mitosis_ib_post_recv(res.qp(), &wr, ptr::null_mut())
        })
    }

    /// `ib_cqe.done` of receive buffers (recv CQ, workqueue context: may sleep).
    pub(super) unsafe extern "C" fn recv_done(_cq: *mut bindings::ib_cq, wc: *mut bindings::ib_wc) {
        // SAFETY: the core passes a valid completion; `wr_cqe` is a `RecvBuf::cqe`.
        let (cqe, status, len) =
            unsafe { ((*wc).__bindgen_anon_1.wr_cqe, (*wc).status, (*wc).byte_len) };
        // SAFETY: `cqe` is the `cqe` field of a pinned `RecvBuf` alive until the QP is
        // drained (which completes all receives first).
        let buf = unsafe {
            &*kernel::container_of!(cqe as *const Opaque<bindings::ib_cqe>, RecvBuf, cqe)
        };
        // SAFETY: `conn` owns the buffer (type invariant of `RecvBuf`).
        let conn = unsafe { &*buf.conn };
        if status != bindings::ib_wc_status_IB_WC_SUCCESS {
            if status != bindings::ib_wc_status_IB_WC_WR_FLUSH_ERR {
                peer_warn!(
                    "receive failed on connection to {}: wc status {}\n",
                    Ipv4(conn.peer_addr),
                    status
                );
                conn.fail(errno::econnreset());
            }
            return;
        }
        count(&COUNTERS.ctrl_msgs_received, 1);
        buf.page.sync_for_cpu();
        // SAFETY: we are a completion handler of this connection (type invariant).
        let Ok(res) = (unsafe { conn.res() }) else {
            return;
        };
        let len = (len as usize).min(wire::MSG_SIZE);
        match conn.role {
            Role::Client => {
                let is_reply = matches!(wire::decode(&buf.page.bytes()[..len]), Ok((h, _)) if h.seq == conn.reply_seq.load(Ordering::Acquire));
                if is_reply {
                    // The RPC caller parses the buffer in place and reposts it.
                    conn.reply_len.store(len as u32, Ordering::Relaxed);
                    conn.reply_slot.store(buf.index as i32, Ordering::Release);
                    // SAFETY: the reply waiter is never posted; completing it by hand is
                    // its only use.
                    unsafe { bindings::complete(conn.reply_done.completion_ptr()) };
                    return;
                }
                peer_warn!(
                    "dropped unexpected control message from {}\n",
                    Ipv4(conn.peer_addr)
                );
            }
            Role::Server => {
                // Served on the module's workqueue; the buffer comes back there.
                let queued = conn.requests.lock().push((buf.index, len), GFP_KERNEL);
                if queued.is_ok() {
                    conn.queue_work::<REQUESTS>();
                    return;
                }
                conn.fail(errno::econnreset());
                return;
            }
        }
        if Self::post_recv(res, buf).is_err() {
            conn.fail(errno::econnreset());
        }
    }

    /// Sends a request built by `encode(seq, buf)` and waits (bounded) for the reply with
    /// the same sequence number, which `parse` reads in place. `during` runs once the
    /// request is sent and before the wait, so that its work (a READ batch: it must
    /// not need an RPC of this connection) overlaps the round trip; it runs only if
    /// the send succeeded.
    pub(crate) fn rpc<T, U>(
        &self,
        timeout_ms: u32,
        encode: impl FnOnce(u64, &mut [u8]) -> Result<usize>,
        during: impl FnOnce() -> U,
        parse: impl FnOnce(Reply<'_>) -> Result<T>,
    ) -> Result<(T, U)> {
        let _guard = self.rpc_lock.lock();
        if !self.is_up() {
            return Err(errno::enotconn());
        }
        // SAFETY: `rpc_lock` held and the state is UP.
        let res = unsafe { self.res()? };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.reply_slot.store(-1, Ordering::Relaxed);
        self.reply_seq.store(seq, Ordering::Release);
        self.reply_done.arm();
        // `during` starts without waiting for the SEND's completion: on rxe that
        // came 1.6-2.6 ms after the post (the reply 0.7 ms later), against 0.4 ms
        // for a READ's round trip, and it delayed `during`'s READs by as much.
        // SAFETY: `rpc_lock` serialises request sends; the completion is waited for
        // below, before the lock (and so the send buffer) can go to another send.
        unsafe { self.send_only(res, |buf| encode(seq, buf))? };
        let overlapped = during();
        self.wait_send(timeout_ms)?;
        self.reply_done
            .wait(timeout_ms)
            .inspect_err(|e| self.fail(*e))?;
        let slot = self.reply_slot.swap(-1, Ordering::AcqRel);
        let buf = usize::try_from(slot)
            .ok()
            .and_then(|i| res.recv_bufs.get(i))
            .ok_or(errno::econnreset())?;
        let len = self.reply_len.load(Ordering::Relaxed) as usize;
        let parsed = match wire::decode(&buf.page.bytes()[..len]) {
            Ok((header, body)) => parse(Reply { header, body }),
            Err(_) => Err(errno::ebadmsg()),
        };
        if Self::post_recv(res, buf).is_err() {
            self.fail(errno::econnreset());
        }
        Ok((parsed?, overlapped))
    }

    /// Sends a message that gets no reply, built by `encode(seq, buf)`.
    pub(crate) fn notify(
        &self,
        timeout_ms: u32,
        encode: impl FnOnce(u64, &mut [u8]) -> Result<usize>,
    ) -> Result {
        let _guard = self.rpc_lock.lock();
        if !self.is_up() {
            return Err(errno::enotconn());
        }
        // SAFETY: `rpc_lock` held and the state is UP.
        let res = unsafe { self.res()? };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `rpc_lock` serialises sends.
        unsafe { self.send_and_wait(res, timeout_ms, |buf| encode(seq, buf)) }
    }

    /// Server side, from the request handler: sends a reply built by `encode(buf)` and
    /// waits for it to be sent.
    pub(crate) fn reply(
        &self,
        timeout_ms: u32,
        encode: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result {
        // SAFETY: called from this connection's request work, which holds `rpc_lock`
        // (type invariant).
        let res = unsafe { self.res()? };
        // SAFETY: the request work is the only sender on a server connection and runs
        // one request at a time.
        unsafe { self.send_and_wait(res, timeout_ms, encode) }
    }

    /// Encodes a message into the send buffer, posts the SEND, and waits (bounded) for
    /// it to complete. Any failure fails the connection.
    ///
    /// # Safety
    ///
    /// The caller must be the only user of the send buffer (holding `rpc_lock` on a
    /// client connection, or being the receive handler of a server connection).
    pub(super) unsafe fn send_and_wait(
        &self,
        res: &Resources,
        timeout_ms: u32,
        encode: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result {
        // SAFETY: exclusive per the caller's guarantee.
        unsafe { self.send_only(res, encode)? };
        self.wait_send(timeout_ms)
    }

    /// Encodes a message into the send buffer and posts its SEND; the caller waits for
    /// the completion ([`Connection::wait_send`]) before the send buffer is used again.
    ///
    /// # Safety
    ///
    /// As for [`Connection::send_and_wait`].
    unsafe fn send_only(
        &self,
        res: &Resources,
        encode: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result {
        self.send_waiter.arm();
        // SAFETY: exclusive per the caller's guarantee; the previous SEND completed
        // (every send's completion is waited for before the next).
        let len = encode(unsafe { res.send_buf.bytes_mut_unchecked() })?;
        self.post_send(res, len, self.send_waiter.cqe())
    }

    /// Waits for the signalled request of the last post; a failure fails the connection.
    pub(super) fn wait_send(&self, timeout_ms: u32) -> Result {
        let status = self
            .send_waiter
            .wait(timeout_ms)
            .inspect_err(|e| self.fail(*e))?;
        if status != bindings::ib_wc_status_IB_WC_SUCCESS {
            peer_warn!(
                "SEND to {} failed: wc status {}\n",
                Ipv4(self.peer_addr),
                status
            );
            self.fail(errno::econnreset());
            return Err(errno::econnreset());
        }
        Ok(())
    }

    /// Posts the REG_MR requests `regs` in batches of at most [`REG_BATCH`] (one
    /// doorbell each, the last request signalled) and waits (bounded) for each batch:
    /// when this returns `Ok`, every MR is valid. A failure fails the connection.
    ///
    /// # Safety
    ///
    /// As for [`Connection::send_and_wait`] (the send waiter is used).
    pub(super) unsafe fn post_regs_and_wait(
        &self,
        res: &Resources,
        regs: &mut [bindings::ib_reg_wr],
        timeout_ms: u32,
    ) -> Result {
        for batch in regs.chunks_mut(REG_BATCH) {
            self.send_waiter.arm();
            self.post_regs(res, batch)?;
            // A REG_MR that fails moves the QP to the error state: the signalled last
            // one then completes flushed, never successfully.
            self.wait_send(timeout_ms)?;
        }
        Ok(())
    }

    /// Posts the REG_MR requests `regs` (at most [`REG_BATCH`]) with one doorbell, the
    /// last one signalled.
    fn post_regs(&self, res: &Resources, regs: &mut [bindings::ib_reg_wr]) -> Result {
        let n = regs.len();
        if n == 0 || n > REG_BATCH {
            return Err(EINVAL);
        }
        for i in 0..n {
            let next: *mut bindings::ib_send_wr = match regs.get_mut(i + 1) {
                Some(r) => &mut r.wr,
                None => ptr::null_mut(),
            };
            regs[i].wr.next = next;
        }
        regs[n - 1].wr.send_flags = bindings::ib_send_flags_IB_SEND_SIGNALED as i32;
        // SAFETY: the QP is live; the chain lives until the post returns.
        let r = unsafe { bindings::mitosis_ib_post_send(res.qp(), &regs[0].wr, ptr::null_mut()) };
        if r != 0 {
            self.fail(errno::econnreset());
            return Err(Error::from_errno(r));
        }
        Ok(())
    }

    /// Posts one signalled SEND of `len` bytes of the send buffer.
    pub(super) fn post_send(
        &self,
        res: &Resources,
        len: usize,
        cqe: *mut bindings::ib_cqe,
    ) -> Result {
        let mut sge = bindings::ib_sge {
            addr: res.send_buf.dma_addr(),
            length: len as u32,
            lkey: res.domain.pd().local_dma_lkey(),
        };
        let mut send = bindings::ib_send_wr::default();
        send.__bindgen_anon_1.wr_cqe = cqe;
        send.sg_list = &mut sge;
        send.num_sge = 1;
        send.opcode = bindings::ib_wr_opcode_IB_WR_SEND;
        send.send_flags = bindings::ib_send_flags_IB_SEND_SIGNALED as i32;
        res.send_buf.sync_for_device();
        // SAFETY: the QP is live; the request and its SGE live until the post returns
        // (the provider copies them); the send buffer stays mapped until drained.
        let r = unsafe { bindings::mitosis_ib_post_send(res.qp(), &send, ptr::null_mut()) };
        if r != 0 {
            self.fail(errno::econnreset());
            return Err(Error::from_errno(r));
        }
        count(&COUNTERS.ctrl_msgs_sent, 1);
        Ok(())
    }

    /// Serves the queued requests in order (server connections). Holds `rpc_lock`,
    /// which server connections use for nothing else, so `teardown` waits for it
    /// before the resources go.
    pub(super) fn serve_requests(&self) {
        let _serving = self.rpc_lock.lock();
        loop {
            // In arrival order: a peer's close must not overtake its open.
            let batch = take_all(&mut self.requests.lock());
            if batch.is_empty() {
                break;
            }
            for &(index, len) in batch.iter() {
                self.serve(index, len);
            }
        }
    }

    /// Serves the request in receive buffer `index` and reposts the buffer (request
    /// work, `rpc_lock` held).
    pub(super) fn serve(&self, index: usize, len: usize) {
        if self.is_closing() {
            // Going down: the buffers are dropped with the resources.
            return;
        }
        // SAFETY: `rpc_lock` held, and the resources exist from accept (before any
        // receive) until teardown, which waits for `rpc_lock` (type invariant).
        let Ok(res) = (unsafe { self.res() }) else {
            return;
        };
        let Some(buf) = res.recv_bufs.get(index) else {
            return;
        };
        if self.role == Role::Server {
            self.owner
                .request(self, &buf.page.bytes()[..len.min(wire::MSG_SIZE)]);
        }
        if Self::post_recv(res, buf).is_err() {
            self.fail(errno::econnreset());
        }
    }
}
