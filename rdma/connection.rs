// SPDX-License-Identifier: GPL-2.0

//! Reliable-connected queue pairs over `rdma_cm`: where a QP is created, connected,
//! accepted and torn down; control messages over SEND/RECV; batched one-sided READs.
//!
//! Life of a [`Connection`]:
//! - client: [`Connection::connect`] resolves the address and route, creates PD, CQs
//!   and the QP on the resolved device in the CM handler, connects, and waits (bounded)
//!   for ESTABLISHED;
//! - server: the listener's CONNECT_REQUEST calls [`Connection::accept`];
//! - either side: a CM disconnect, a failed work request or a timeout calls
//!   [`Connection::fail`], which queues [`Connection::teardown`] on the module's
//!   workqueue (never inside a CM handler); module unload and device removal call
//!   `teardown` directly. Teardown drains the QP (every posted request completes, so
//!   no waiter or buffer is referenced any more), waits for users to leave, then
//!   destroys the QP, CQs, buffers, registrations, PD and the CM id, in that order.

use super::fastreg::Registration;
use super::verbs::{Cq, DmaPage, Pd};
use super::waiter::Waiter;
use super::{count, workqueue, CALLER, STATS};
use crate::abi::wire;
use crate::bindings;
use crate::errno;
use crate::util::{remove_first, take_all};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, ArcBorrow, Mutex};
use kernel::types::Opaque;

/// Receive buffers per connection (control messages in flight from the peer).
const RECV_DEPTH: usize = 16;
/// Send queue depth: a READ batch, or a reply with one REG_MR per chunk.
pub(crate) const SEND_DEPTH: u32 = 256;
/// Most READs posted with one doorbell.
pub(crate) const MAX_READ_BATCH: usize = 64;
/// Most REG_MR requests chained in one post (well under [`SEND_DEPTH`]).
const REG_BATCH: usize = 128;
/// RDMA READs in flight the QP asks for (bounded by the device).
const RD_ATOM: u32 = 16;

/// Log lines a peer can trigger (failed receives, unexpected messages, READ errors):
/// at most this many per second.
static PEER_LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);

/// Which end of the connection this host is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Connected out: sends requests, issues READs.
    Client,
    /// Accepted: serves requests.
    Server,
}

const CONNECTING: u32 = 0;
const UP: u32 = 1;
const DOWN: u32 = 2;
const DEAD: u32 = 3;

/// Handles one control request received on a server connection (work context).
pub(crate) type RequestHandler = fn(&Connection, &[u8]);
/// Told when a connection has been torn down (work context), to drop it from lists.
pub(crate) type ClosedHandler = fn(&Arc<Connection>);

/// Verbs objects of a connection. Dropped fields are released in declaration order
/// after the QP is destroyed in `Drop`.
struct Resources {
    id: *mut bindings::rdma_cm_id,
    recv_bufs: KVec<Pin<KBox<RecvBuf>>>,
    send_buf: DmaPage,
    // Held for their `Drop` only (after the QP that uses them is destroyed).
    _send_cq: Cq,
    _recv_cq: Cq,
    pd: Pd,
}

impl Resources {
    fn qp(&self) -> *mut bindings::ib_qp {
        // SAFETY: the QP exists while `Resources` does (created before, destroyed in Drop).
        unsafe { (*self.id).qp }
    }

    fn dev(&self) -> *mut bindings::ib_device {
        // SAFETY: the id is bound to a device while it has a QP.
        unsafe { (*self.id).device }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        // SAFETY: the QP was created on `id` by `rdma_create_qp` and the owner drained
        // it, so nothing references the buffers or CQs dropped next.
        unsafe { bindings::rdma_destroy_qp(self.id) };
    }
}

/// One receive buffer; its `cqe` identifies it in completions.
///
/// # Invariants
///
/// `conn` points to the connection owning this buffer (it outlives its resources).
#[pin_data]
struct RecvBuf {
    #[pin]
    cqe: Opaque<bindings::ib_cqe>,
    page: DmaPage,
    conn: *const Connection,
    index: usize,
}

/// An RC connection to one peer.
///
/// # Invariants
///
/// - Always allocated inside an [`Arc`] (so `&self` can be turned back into one).
/// - `res` is written only while `state == CONNECTING` by the one CM handler that sets the
///   connection up, and by `teardown` after the QP is drained and `rpc_lock` and `io_lock`
///   have been taken; readers hold `rpc_lock` or `io_lock` with `state == UP` (or, the
///   server's request work, `rpc_lock` while not closing), or are completion handlers of
///   its CQs (which `teardown` quiesces by draining).
/// - `id`, once set, is the CM id whose `context` points to this connection; it is
///   destroyed only by `teardown`.
#[pin_data(PinnedDrop)]
pub(crate) struct Connection {
    role: Role,
    /// Client: the bound of each setup step (address and route resolution).
    setup_timeout_ms: u32,
    peer_addr: u32,
    peer_port: u16,
    id: AtomicPtr<bindings::rdma_cm_id>,
    state: AtomicU32,
    /// Errno of the connect outcome or of the first failure.
    status: AtomicI32,
    res: UnsafeCell<Option<Resources>>,
    /// Signalled when connection setup has an outcome.
    #[pin]
    connected: Waiter,
    #[pin]
    rpc_lock: Mutex<()>,
    #[pin]
    io_lock: Mutex<()>,
    #[pin]
    teardown_lock: Mutex<()>,
    /// Client: the request SEND. Server: the reply SEND and the REG_MRs before it.
    #[pin]
    send_waiter: Waiter,
    #[pin]
    read_waiter: Waiter,
    /// Client: the expected reply's sequence number, and the receive buffer holding it.
    reply_seq: AtomicU64,
    reply_slot: AtomicI32,
    reply_len: AtomicU32,
    #[pin]
    reply_done: Waiter,
    next_seq: AtomicU64,
    /// Server: page sets registered for this peer.
    #[pin]
    registrations: Mutex<KVec<PeerRegistration>>,
    /// Server: registrations whose REG_MR requests may still be in the send queue
    /// (a reply that failed): freed by `teardown` after the drain, never before.
    #[pin]
    retired: Mutex<KVec<Arc<Registration>>>,
    /// Held by the CM handler while it builds the resources and by `teardown` while
    /// it takes them, so a teardown (a connect that timed out) never races the setup.
    #[pin]
    setup_lock: Mutex<()>,
    #[pin]
    teardown_work: Opaque<bindings::work_struct>,
    /// Server: received requests waiting for `request_work`, as (receive buffer, length).
    /// A buffer is reposted only after its request was served, so at most
    /// `RECV_DEPTH` wait (the peer's further SENDs wait in RNR retry): bounded by
    /// construction, and the capacity is reserved when the resources are made.
    #[pin]
    requests: Mutex<KVec<(usize, usize)>>,
    /// Server: serves `requests` on the module's workqueue, not in the completion
    /// handler (the shared `ib_comp_wq`, which a slow request would hold up).
    #[pin]
    request_work: Opaque<bindings::work_struct>,
    on_request: Option<RequestHandler>,
    on_closed: ClosedHandler,
    /// The device the resources were made on, set once at setup; only compared (device
    /// removal), never dereferenced.
    device: AtomicPtr<bindings::ib_device>,
    /// When the connection object was made (monotonic ms): a peer's handshake and its
    /// time before authenticating are limited from here.
    created_ms: i64,
    /// Server: the peer presented a valid secret once (see [`Connection::authenticated`]).
    authenticated: AtomicBool,
    /// Client: the READ destinations, owned by the connection so that a READ the
    /// device completes late (after a timeout) still lands in live, mapped pages: they
    /// are freed only by `teardown`, after the QP is drained. Taken under `io_lock`.
    #[pin]
    read_bufs: Mutex<KVec<DmaPage>>,
}

// SAFETY: all mutable state is atomics, locks, or `res` under the rules of the type
// invariants; raw pointers are to kernel objects usable from any thread.
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

/// A page set registered for the peer of a server connection, shared by its opens.
struct PeerRegistration {
    /// The region's id.
    key: u64,
    /// Opens of the region by this peer not closed yet.
    opens: u32,
    reg: Arc<Registration>,
}

/// A reply received for [`Connection::rpc`].
pub(crate) struct Reply<'a> {
    pub(crate) header: wire::MsgHeader,
    pub(crate) body: &'a [u8],
}

impl Connection {
    fn new(
        role: Role,
        peer_addr: u32,
        peer_port: u16,
        setup_timeout_ms: u32,
        on_request: Option<RequestHandler>,
        on_closed: ClosedHandler,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Connection {
            role,
            setup_timeout_ms,
            peer_addr,
            peer_port,
            id: AtomicPtr::new(ptr::null_mut()),
            state: AtomicU32::new(CONNECTING),
            status: AtomicI32::new(0),
            res: UnsafeCell::new(None),
            connected <- Waiter::new(),
            rpc_lock <- new_mutex!(()),
            io_lock <- new_mutex!(()),
            teardown_lock <- new_mutex!(()),
            send_waiter <- Waiter::new(),
            read_waiter <- Waiter::new(),
            reply_seq: AtomicU64::new(0),
            reply_slot: AtomicI32::new(-1),
            reply_len: AtomicU32::new(0),
            reply_done <- Waiter::new(),
            next_seq: AtomicU64::new(1),
            registrations <- new_mutex!(KVec::new()),
            retired <- new_mutex!(KVec::new()),
            setup_lock <- new_mutex!(()),
            teardown_work <- Opaque::ffi_init(|w| {
                // SAFETY: `w` is a pinned, uninitialised work item.
                unsafe { bindings::mitosis_init_work(w, Some(Self::teardown_work_fn)) }
            }),
            requests <- new_mutex!(KVec::new()),
            request_work <- Opaque::ffi_init(|w| {
                // SAFETY: `w` is a pinned, uninitialised work item.
                unsafe { bindings::mitosis_init_work(w, Some(Self::request_work_fn)) }
            }),
            on_request,
            on_closed,
            device: AtomicPtr::new(ptr::null_mut()),
            created_ms: kernel::time::Ktime::ktime_get().to_ms(),
            authenticated: AtomicBool::new(false),
            read_bufs <- new_mutex!(KVec::new()),
        }? Error)
    }

    /// Peer IPv4 address (network order) and port.
    pub(crate) fn peer(&self) -> (u32, u16) {
        (self.peer_addr, self.peer_port)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Failed or torn down (its teardown is queued or done).
    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), DOWN | DEAD)
    }

    /// The device this connection runs on (null before setup), for comparison only.
    pub(crate) fn device(&self) -> *mut bindings::ib_device {
        self.device.load(Ordering::Acquire)
    }

    /// Server: records that the peer proved it holds a secret (an open succeeded).
    /// Connections that never do are reaped (see [`Connection::is_stale`]).
    pub(crate) fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    pub(crate) fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// An accepted connection that is still setting up after `handshake_ms`, or up
    /// without having authenticated after `idle_ms`: a peer holding resources for
    /// nothing.
    pub(crate) fn is_stale(&self, now_ms: i64, handshake_ms: u32, idle_ms: u32) -> bool {
        let age = now_ms.saturating_sub(self.created_ms);
        match self.state.load(Ordering::Acquire) {
            CONNECTING => age > handshake_ms as i64,
            UP => !self.authenticated() && age > idle_ms as i64,
            _ => false,
        }
    }

    /// Resources, for a caller holding `rpc_lock` or `io_lock` with the state `UP`, or a
    /// completion handler of this connection.
    ///
    /// # Safety
    ///
    /// The caller must be one of the above (type invariant).
    unsafe fn res(&self) -> Result<&Resources> {
        // SAFETY: per the caller's guarantee no one writes `res` concurrently.
        unsafe { (*self.res.get()).as_ref() }.ok_or(errno::enotconn())
    }

    /// Connects to `addr:port` (IPv4, network-order address), waiting at most
    /// `timeout_ms` for the whole setup.
    pub(crate) fn connect(
        addr: u32,
        port: u16,
        timeout_ms: u32,
        on_closed: ClosedHandler,
    ) -> Result<Arc<Self>> {
        let conn = Arc::pin_init(
            Self::new(Role::Client, addr, port, timeout_ms, None, on_closed),
            GFP_KERNEL,
        )?;
        // SAFETY: `init_net` is the initial network namespace, alive forever; the handler
        // and context stay valid until the id is destroyed in `teardown`.
        let id = kernel::error::from_err_ptr(unsafe {
            bindings::__rdma_create_kernel_id(
                ptr::addr_of_mut!(bindings::init_net),
                Some(cm_event_handler),
                &*conn as *const Self as *mut _,
                bindings::rdma_ucm_port_space_RDMA_PS_TCP,
                bindings::ib_qp_type_IB_QPT_RC,
                CALLER.as_char_ptr(),
            )
        })?;
        conn.id.store(id, Ordering::Release);
        conn.connected.arm();
        let dst = sockaddr_in(addr, port);
        // SAFETY: `id` is live; `dst` is a valid `sockaddr_in` for the call.
        let r = unsafe {
            bindings::rdma_resolve_addr(
                id,
                ptr::null_mut(),
                &dst as *const _ as *const bindings::sockaddr,
                timeout_ms as _,
            )
        };
        let outcome = if r != 0 {
            Err(Error::from_errno(r))
        } else {
            match conn.connected.wait_killable(timeout_ms) {
                Err(e) => Err(e),
                Ok(_) => match conn.status.load(Ordering::Acquire) {
                    0 => Ok(()),
                    e => Err(Error::from_errno(e)),
                },
            }
        };
        match outcome {
            Ok(()) => {
                count(&STATS.conns_established, 1);
                Ok(conn)
            }
            Err(e) => {
                count(&STATS.conns_failed, 1);
                // On the module's workqueue: the caller may hold the mmap lock (a
                // fault reconnecting), and destroying a CM id waits for its handler,
                // which user-space CM users order after the mmap lock.
                conn.fail(e);
                Err(e)
            }
        }
    }

    /// Accepts a CONNECT_REQUEST on the new `id` (called from the CM handler). On error
    /// the caller returns non-zero and the CM destroys `id`.
    fn accept(
        id: *mut bindings::rdma_cm_id,
        event: &bindings::rdma_cm_event,
        on_request: RequestHandler,
        on_closed: ClosedHandler,
    ) -> Result<Arc<Self>> {
        // SAFETY: the CM passes a live id with a resolved route.
        let (addr, port) = unsafe { peer_of(id) };
        let conn = Arc::pin_init(
            Self::new(Role::Server, addr, port, 0, Some(on_request), on_closed),
            GFP_KERNEL,
        )?;
        let result = (|| {
            // SAFETY: we are in the CM handler of `id`, setting it up.
            unsafe { conn.create_resources(id)? };
            // SAFETY: `id` is live; the context stays valid until `teardown` destroys it.
            unsafe { (*id).context = &*conn as *const Self as *mut _ };
            // SAFETY: for CONNECT_REQUEST the union holds connection parameters.
            let theirs = unsafe { event.param.conn };
            // SAFETY: `id` has a device.
            let attrs = unsafe { &(*(*id).device).attrs };
            let mut param = bindings::rdma_conn_param::default();
            param.responder_resources = (theirs.initiator_depth as u32)
                .min(attrs.max_qp_rd_atom as u32)
                .min(RD_ATOM) as u8;
            param.initiator_depth = (theirs.responder_resources as u32)
                .min(attrs.max_qp_init_rd_atom as u32)
                .min(RD_ATOM) as u8;
            param.retry_count = 7;
            param.rnr_retry_count = 7;
            // SAFETY: in the CM handler of `id` with a QP created on it.
            kernel::error::to_result(unsafe { bindings::rdma_accept(id, &mut param) })
        })();
        match result {
            Ok(()) => {
                conn.id.store(id, Ordering::Release);
                Ok(conn)
            }
            Err(e) => {
                // The CM destroys `id` itself when we return an error: tear down only ours.
                // SAFETY: `id` is live; clear our context before it goes.
                unsafe { (*id).context = ptr::null_mut() };
                conn.teardown();
                Err(e)
            }
        }
    }

    /// Creates PD, CQs, QP and receive buffers on `id`'s device and posts the receives.
    ///
    /// # Safety
    ///
    /// Called once, from the CM handler of `id` while `state == CONNECTING`.
    unsafe fn create_resources(&self, id: *mut bindings::rdma_cm_id) -> Result {
        // SAFETY: address (and route) resolution bound `id` to a device.
        let dev = unsafe { (*id).device };
        if dev.is_null() {
            return Err(ENODEV);
        }
        if !super::device::allowed(dev) {
            return Err(ENODEV);
        }
        let pd = Pd::new(dev)?;
        let send_cq = Cq::new(dev, SEND_DEPTH as i32 + 1)?;
        let recv_cq = Cq::new(dev, RECV_DEPTH as i32 + 1)?;
        let send_buf = DmaPage::new(dev, bindings::dma_data_direction_DMA_TO_DEVICE)?;
        let mut recv_bufs = KVec::with_capacity(RECV_DEPTH, GFP_KERNEL)?;
        for index in 0..RECV_DEPTH {
            let page = DmaPage::new(dev, bindings::dma_data_direction_DMA_FROM_DEVICE)?;
            let buf = KBox::pin_init(
                pin_init!(RecvBuf {
                    cqe <- Opaque::ffi_init(|p: *mut bindings::ib_cqe| {
                        // SAFETY: `p` is valid for writing.
                        unsafe { p.write(bindings::ib_cqe { done: Some(Self::recv_done) }) }
                    }),
                    page,
                    conn: self as *const Self,
                    index,
                }),
                GFP_KERNEL,
            )?;
            recv_bufs.push(buf, GFP_KERNEL)?;
        }
        let mut attr = bindings::ib_qp_init_attr::default();
        attr.send_cq = send_cq.as_ptr();
        attr.recv_cq = recv_cq.as_ptr();
        attr.cap.max_send_wr = SEND_DEPTH;
        attr.cap.max_recv_wr = RECV_DEPTH as u32;
        attr.cap.max_send_sge = 1;
        attr.cap.max_recv_sge = 1;
        attr.sq_sig_type = bindings::ib_sig_type_IB_SIGNAL_REQ_WR;
        attr.qp_type = bindings::ib_qp_type_IB_QPT_RC;
        // SAFETY: `id` is bound to `dev`, `pd` and the CQs belong to `dev`.
        kernel::error::to_result(unsafe { bindings::rdma_create_qp(id, pd.as_ptr(), &mut attr) })?;
        let res = Resources {
            id,
            recv_bufs,
            send_buf,
            _send_cq: send_cq,
            _recv_cq: recv_cq,
            pd,
        };
        for buf in res.recv_bufs.iter() {
            Self::post_recv(&res, buf)?;
        }
        self.device.store(dev, Ordering::Release);
        // SAFETY: caller guarantees we are the only writer (CONNECTING, in the handler).
        unsafe { *self.res.get() = Some(res) };
        Ok(())
    }

    fn post_recv(res: &Resources, buf: &RecvBuf) -> Result {
        let mut sge = bindings::ib_sge {
            addr: buf.page.dma_addr(),
            length: wire::MSG_SIZE as u32,
            lkey: res.pd.local_dma_lkey(),
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
    unsafe extern "C" fn recv_done(_cq: *mut bindings::ib_cq, wc: *mut bindings::ib_wc) {
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
                if PEER_LOG.allow() {
                    pr_warn!(
                        "receive failed on connection to {}: wc status {}\n",
                        Ipv4(conn.peer_addr),
                        status
                    );
                }
                conn.fail(errno::econnreset());
            }
            return;
        }
        count(&STATS.ctrl_msgs_received, 1);
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
                if PEER_LOG.allow() {
                    pr_warn!(
                        "dropped unexpected control message from {}\n",
                        Ipv4(conn.peer_addr)
                    );
                }
            }
            Role::Server => {
                // Served on the module's workqueue; the buffer comes back there.
                let queued = conn.requests.lock().push((buf.index, len), GFP_KERNEL);
                if queued.is_ok() {
                    conn.queue_arc_work(conn.request_work.get());
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
    /// the same sequence number, which `parse` reads in place.
    pub(crate) fn rpc<T>(
        &self,
        timeout_ms: u32,
        encode: impl FnOnce(u64, &mut [u8]) -> Result<usize>,
        parse: impl FnOnce(Reply<'_>) -> Result<T>,
    ) -> Result<T> {
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
        // SAFETY: `rpc_lock` serialises request sends.
        unsafe { self.send_and_wait(res, timeout_ms, &mut [], |buf| encode(seq, buf))? };
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
        parsed
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
        unsafe { self.send_and_wait(res, timeout_ms, &mut [], |buf| encode(seq, buf)) }
    }

    /// Server side, from the request handler: posts `regs` (REG_MR requests, in order)
    /// then a reply built by `encode(buf)`, and waits for the reply to be sent.
    pub(crate) fn reply(
        &self,
        timeout_ms: u32,
        regs: &mut [bindings::ib_reg_wr],
        encode: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result {
        // SAFETY: called from this connection's request work, which holds `rpc_lock`
        // (type invariant).
        let res = unsafe { self.res()? };
        // SAFETY: the request work is the only sender on a server connection and runs
        // one request at a time.
        unsafe { self.send_and_wait(res, timeout_ms, regs, encode) }
    }

    /// Encodes a message into the send buffer, posts `regs` then the SEND, and waits
    /// (bounded) for the SEND to complete. Any failure fails the connection.
    ///
    /// # Safety
    ///
    /// The caller must be the only user of the send buffer (holding `rpc_lock` on a
    /// client connection, or being the receive handler of a server connection).
    unsafe fn send_and_wait(
        &self,
        res: &Resources,
        timeout_ms: u32,
        regs: &mut [bindings::ib_reg_wr],
        encode: impl FnOnce(&mut [u8]) -> Result<usize>,
    ) -> Result {
        // A large registration (a 1 GiB snapshot is ~570 MRs) does not fit the send
        // queue in one chain: post it in signalled batches first, each waited for.
        let mut regs = regs;
        while regs.len() > REG_BATCH {
            let (head, tail) = regs.split_at_mut(REG_BATCH);
            self.send_waiter.arm();
            self.post_regs(res, head)?;
            self.wait_send(timeout_ms)?;
            regs = tail;
        }
        self.send_waiter.arm();
        // SAFETY: exclusive per the caller's guarantee; the previous SEND completed
        // (every send waits for its completion before returning).
        let len = encode(unsafe { res.send_buf.bytes_mut_unchecked() })?;
        self.post_send(res, len, regs, self.send_waiter.cqe())?;
        self.wait_send(timeout_ms)
    }

    /// Waits for the signalled request of the last post; a failure fails the connection.
    fn wait_send(&self, timeout_ms: u32) -> Result {
        let status = self
            .send_waiter
            .wait(timeout_ms)
            .inspect_err(|e| self.fail(*e))?;
        if status != bindings::ib_wc_status_IB_WC_SUCCESS {
            if PEER_LOG.allow() {
                pr_warn!(
                    "SEND to {} failed: wc status {}\n",
                    Ipv4(self.peer_addr),
                    status
                );
            }
            self.fail(errno::econnreset());
            return Err(errno::econnreset());
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

    /// Posts `regs` then one signalled SEND of `len` bytes of the send buffer, with one
    /// doorbell.
    fn post_send(
        &self,
        res: &Resources,
        len: usize,
        regs: &mut [bindings::ib_reg_wr],
        cqe: *mut bindings::ib_cqe,
    ) -> Result {
        let mut sge = bindings::ib_sge {
            addr: res.send_buf.dma_addr(),
            length: len as u32,
            lkey: res.pd.local_dma_lkey(),
        };
        let mut send = bindings::ib_send_wr::default();
        send.__bindgen_anon_1.wr_cqe = cqe;
        send.sg_list = &mut sge;
        send.num_sge = 1;
        send.opcode = bindings::ib_wr_opcode_IB_WR_SEND;
        send.send_flags = bindings::ib_send_flags_IB_SEND_SIGNALED as i32;
        let n = regs.len();
        for i in 0..n {
            let next: *mut bindings::ib_send_wr = match regs.get_mut(i + 1) {
                Some(r) => &mut r.wr,
                None => &mut send,
            };
            regs[i].wr.next = next;
        }
        let first: *const bindings::ib_send_wr = match regs.first() {
            Some(r) => &r.wr,
            None => &send,
        };
        res.send_buf.sync_for_device();
        // SAFETY: the QP is live; the chain and its SGEs live until the post returns
        // (the provider copies them); the send buffer stays mapped until drained.
        let r = unsafe { bindings::mitosis_ib_post_send(res.qp(), first, ptr::null_mut()) };
        if r != 0 {
            self.fail(errno::econnreset());
            return Err(Error::from_errno(r));
        }
        count(&STATS.ctrl_msgs_sent, 1);
        Ok(())
    }

    /// Reads one page from each `(remote address, rkey)` of `remote` (at most
    /// [`MAX_READ_BATCH`]) with one doorbell, waits (bounded) for all of them, then
    /// hands page `i`'s bytes to `consume(i, bytes)`. The destinations are the
    /// connection's own DMA pages: after a timeout or error the connection fails and
    /// they stay allocated until `teardown` has drained the QP, so a late response
    /// never lands in freed memory. `consume` runs under the connection's I/O lock: it
    /// must not fault on user memory (copy to kernel memory only).
    pub(crate) fn read_pages(
        &self,
        remote: &[(u64, u32)],
        timeout_ms: u32,
        mut consume: impl FnMut(usize, &[u8]) -> Result,
    ) -> Result {
        let n = remote.len();
        if n == 0 || n > MAX_READ_BATCH {
            return Err(EINVAL);
        }
        let _guard = self.io_lock.lock();
        if !self.is_up() {
            return Err(errno::enotconn());
        }
        // SAFETY: `io_lock` held and the state is UP.
        let res = unsafe { self.res()? };
        let mut bufs = self.read_bufs.lock();
        while bufs.len() < n {
            let page = DmaPage::new(res.dev(), bindings::dma_data_direction_DMA_FROM_DEVICE)?;
            bufs.push(page, GFP_KERNEL)?;
        }
        let mut sges = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut wrs: KVec<bindings::ib_rdma_wr> = KVec::with_capacity(n, GFP_KERNEL)?;
        for (i, &(raddr, rkey)) in remote.iter().enumerate() {
            sges.push(
                bindings::ib_sge {
                    addr: bufs[i].dma_addr(),
                    length: super::PAGE_SIZE as u32,
                    lkey: res.pd.local_dma_lkey(),
                },
                GFP_KERNEL,
            )?;
            let mut wr = bindings::ib_rdma_wr::default();
            // Every request carries the waiter: an unsignalled one that fails completes.
            wr.wr.__bindgen_anon_1.wr_cqe = self.read_waiter.cqe();
            wr.wr.num_sge = 1;
            wr.wr.opcode = bindings::ib_wr_opcode_IB_WR_RDMA_READ;
            wr.remote_addr = raddr;
            wr.rkey = rkey;
            wrs.push(wr, GFP_KERNEL)?;
        }
        for i in 0..n {
            wrs[i].wr.sg_list = &mut sges[i];
            if i + 1 < n {
                let next: *mut bindings::ib_send_wr = &mut wrs[i + 1].wr;
                wrs[i].wr.next = next;
            }
        }
        wrs[n - 1].wr.send_flags = bindings::ib_send_flags_IB_SEND_SIGNALED as i32;
        self.read_waiter.arm();
        // SAFETY: the QP is live; the chain is valid until the post returns; the
        // destination pages belong to the connection and stay mapped until its QP is
        // drained.
        let r = unsafe { bindings::mitosis_ib_post_send(res.qp(), &wrs[0].wr, ptr::null_mut()) };
        if r != 0 {
            count(&STATS.read_errors, 1);
            self.fail(errno::econnreset());
            return Err(Error::from_errno(r));
        }
        count(&STATS.read_doorbells, 1);
        count(&STATS.read_wrs_posted, n as u64);
        let status = match self.read_waiter.wait(timeout_ms) {
            Ok(s) => s,
            Err(e) => {
                count(&STATS.read_timeouts, 1);
                if PEER_LOG.allow() {
                    pr_warn!(
                        "READ of {} pages from {} timed out\n",
                        n,
                        Ipv4(self.peer_addr)
                    );
                }
                self.fail(e);
                return Err(e);
            }
        };
        if status != bindings::ib_wc_status_IB_WC_SUCCESS {
            count(&STATS.read_errors, 1);
            if PEER_LOG.allow() {
                pr_warn!(
                    "READ from {} failed: wc status {}\n",
                    Ipv4(self.peer_addr),
                    status
                );
            }
            // The QP is in error now: every later request would flush.
            self.fail(errno::econnreset());
            return Err(if status == bindings::ib_wc_status_IB_WC_REM_ACCESS_ERR {
                errno::eremoteio()
            } else {
                EIO
            });
        }
        count(&STATS.bytes_read, (n * super::PAGE_SIZE) as u64);
        for (i, b) in bufs[..n].iter().enumerate() {
            b.sync_for_cpu();
            consume(i, b.bytes())?;
        }
        Ok(())
    }

    /// Keeps `reg` for this peer under `key` (server side), opened once. Fails with
    /// `EEXIST` if there is one already ([`Connection::reopen_registration`]).
    pub(crate) fn add_registration(&self, key: u64, reg: Arc<Registration>) -> Result {
        let mut regs = self.registrations.lock();
        if regs.iter().any(|r| r.key == key) {
            return Err(EEXIST);
        }
        regs.push(PeerRegistration { key, opens: 1, reg }, GFP_KERNEL)?;
        count(&STATS.mrs_live, 1);
        Ok(())
    }

    /// Keeps `reg`, whose REG_MR requests were posted but may not have completed (its
    /// reply failed), until `teardown` has drained the QP.
    pub(crate) fn retire(&self, reg: Arc<Registration>) {
        // If even this small allocation fails, the connection is failing anyway
        // (the reply failed): dropping now is the only option left.
        let _ = self.retired.lock().push(reg, GFP_KERNEL);
    }

    /// Opens the registration under `key` once more and returns its chunk size and rkeys,
    /// if there is one: a peer opening a region twice shares one registration.
    pub(crate) fn reopen_registration(&self, key: u64) -> Result<Option<(u64, KVec<u32>)>> {
        let mut regs = self.registrations.lock();
        let Some(entry) = regs.iter_mut().find(|r| r.key == key) else {
            return Ok(None);
        };
        let mut keys = KVec::with_capacity(entry.reg.rkeys().len(), GFP_KERNEL)?;
        for k in entry.reg.rkeys() {
            keys.push(k, GFP_KERNEL)?;
        }
        entry.opens = entry.opens.saturating_add(1);
        Ok(Some((entry.reg.chunk_bytes(), keys)))
    }

    /// Closes one open of the registration under `key`; the last close drops it.
    pub(crate) fn release_registration(&self, key: u64) {
        let mut regs = self.registrations.lock();
        let last = match regs.iter_mut().find(|r| r.key == key) {
            Some(entry) => {
                entry.opens = entry.opens.saturating_sub(1);
                entry.opens == 0
            }
            None => false,
        };
        if last {
            drop(remove_first(&mut regs, |r| r.key == key));
            STATS.mrs_live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops the registration under `key` whatever its opens (its keys stop working).
    /// Returns whether there was one.
    pub(crate) fn remove_registration(&self, key: u64) -> bool {
        let removed = remove_first(&mut self.registrations.lock(), |r| r.key == key);
        if removed.is_some() {
            STATS.mrs_live.fetch_sub(1, Ordering::Relaxed);
        }
        removed.is_some()
    }

    /// The PD and device for registering memory for this peer (server side, from the
    /// request handler).
    pub(crate) fn with_pd<T>(
        &self,
        f: impl FnOnce(&Pd, *mut bindings::ib_device) -> Result<T>,
    ) -> Result<T> {
        // SAFETY: called from this connection's request work, which holds `rpc_lock`
        // (type invariant).
        let res = unsafe { self.res()? };
        f(&res.pd, res.dev())
    }

    /// The cqe that REG_MR requests posted with [`Connection::reply`] must carry.
    pub(crate) fn reply_cqe(&self) -> *mut bindings::ib_cqe {
        self.send_waiter.cqe()
    }

    /// Queues `work` (a work item of this connection) on the module's workqueue with
    /// one `Arc` reference for its run; a work already queued keeps the one it has.
    fn queue_arc_work(&self, work: *mut bindings::work_struct) {
        // SAFETY: connections live in an `Arc` (type invariant) and `self` is borrowed, so
        // the refcount is non-zero.
        let arc: Arc<Self> = unsafe { ArcBorrow::from_raw(self as *const Self) }.into();
        let raw = Arc::into_raw(arc);
        // SAFETY: the work item is initialised; the workqueue lives until unload, which
        // destroys it (running this work) before freeing anything.
        if !unsafe { bindings::mitosis_queue_work(workqueue(), work) } {
            // SAFETY: `raw` came from `Arc::into_raw` just above.
            drop(unsafe { Arc::from_raw(raw) });
        }
    }

    /// Serves the queued requests in order (server connections). Holds `rpc_lock`,
    /// which server connections use for nothing else, so `teardown` waits for it
    /// before the resources go.
    unsafe extern "C" fn request_work_fn(work: *mut bindings::work_struct) {
        // SAFETY: `work` is the `request_work` of a connection queued by
        // `queue_arc_work`, which leaked one `Arc` reference for this run.
        let conn = unsafe {
            Arc::from_raw(kernel::container_of!(
                work as *const Opaque<bindings::work_struct>,
                Connection,
                request_work
            ))
        };
        let _serving = conn.rpc_lock.lock();
        loop {
            // In arrival order: a peer's close must not overtake its open.
            let batch = take_all(&mut conn.requests.lock());
            if batch.is_empty() {
                break;
            }
            for &(index, len) in batch.iter() {
                conn.serve(index, len);
            }
        }
    }

    /// Serves the request in receive buffer `index` and reposts the buffer (request
    /// work, `rpc_lock` held).
    fn serve(&self, index: usize, len: usize) {
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
        if let Some(handler) = self.on_request {
            handler(self, &buf.page.bytes()[..len.min(wire::MSG_SIZE)]);
        }
        if Self::post_recv(res, buf).is_err() {
            self.fail(errno::econnreset());
        }
    }

    /// Marks the connection failed with `err` and queues its teardown.
    pub(crate) fn fail(&self, err: Error) {
        let prev = self.state.swap(DOWN, Ordering::AcqRel);
        if prev == DEAD {
            self.state.store(DEAD, Ordering::Release);
            return;
        }
        if prev == DOWN {
            return;
        }
        let _ =
            self.status
                .compare_exchange(0, err.to_errno(), Ordering::AcqRel, Ordering::Relaxed);
        self.queue_arc_work(self.teardown_work.get());
    }

    unsafe extern "C" fn teardown_work_fn(work: *mut bindings::work_struct) {
        // SAFETY: `work` is the `teardown_work` of a connection queued by `fail`, which
        // leaked one `Arc` reference for this run.
        let conn = unsafe {
            Arc::from_raw(kernel::container_of!(
                work as *const Opaque<bindings::work_struct>,
                Connection,
                teardown_work
            ))
        };
        conn.teardown();
        (conn.on_closed)(&conn);
    }

    /// Tears the connection down (idempotent, may sleep, never from a CM handler of this
    /// connection's id).
    pub(crate) fn teardown(&self) {
        let _t = self.teardown_lock.lock();
        if self.state.swap(DOWN, Ordering::AcqRel) == DEAD {
            self.state.store(DEAD, Ordering::Release);
            return;
        }
        // A setup running in the CM handler (a connect that timed out meanwhile)
        // finishes first; one starting later sees DOWN and builds nothing.
        drop(self.setup_lock.lock());
        // SAFETY: `teardown_lock` held and setup over or never to run: the only
        // writer is us.
        if let Some(res) = unsafe { (*self.res.get()).as_ref() } {
            if self.role == Role::Client || !self.id.load(Ordering::Acquire).is_null() {
                // SAFETY: `res.id` is live. Errors only mean "not connected".
                unsafe { bindings::rdma_disconnect(res.id) };
            }
            // SAFETY: the QP is live. Afterwards every posted request has completed and
            // completion handlers are idle.
            unsafe { bindings::ib_drain_qp(res.qp()) };
        }
        // Wait for users of the resources to leave (they see DOWN and stop).
        drop(self.rpc_lock.lock());
        drop(self.io_lock.lock());
        let regs = take_all(&mut self.registrations.lock());
        STATS
            .mrs_live
            .fetch_sub(regs.len() as u64, Ordering::Relaxed);
        drop(regs);
        drop(take_all(&mut self.retired.lock()));
        // Drained: the device writes none of the READ destinations any more. Freed
        // before the resources, while the device they are mapped on is still held.
        drop(take_all(&mut self.read_bufs.lock()));
        // SAFETY: drained and users gone: no one reads `res` any more.
        let res = unsafe { (*self.res.get()).take() };
        let had_res = res.is_some();
        drop(res);
        let id = self.id.swap(ptr::null_mut(), Ordering::AcqRel);
        if !id.is_null() {
            // SAFETY: `id` is ours; this waits for a running handler and stops events.
            unsafe { bindings::rdma_destroy_id(id) };
        }
        if had_res {
            count(&STATS.conns_closed, 1);
        }
        self.state.store(DEAD, Ordering::Release);
    }

    /// Handles a CM event for this connection (CM handler context: must not sleep long
    /// or destroy the id).
    fn on_cm_event(&self, id: *mut bindings::rdma_cm_id, event: &bindings::rdma_cm_event) {
        let connecting = self.state.load(Ordering::Acquire) == CONNECTING;
        // `status`: 0 or a negative errno. A client's `connect` waits for the outcome
        // and tears down on failure; an accepted connection has no waiter, so a failed
        // handshake (the peer rejected, went unreachable, or never sent RTU) is torn
        // down here, or it would hold its slot and resources for good.
        let finish = |status: i32| {
            if !connecting {
                return;
            }
            if self.role == Role::Server && status != 0 {
                self.fail(Error::from_errno(status));
                return;
            }
            self.status.store(status, Ordering::Release);
            // SAFETY: `connected` is only completed by hand.
            unsafe { bindings::complete(self.connected.completion_ptr()) };
        };
        match event.event {
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_RESOLVED => {
                // SAFETY: `id` is live (we are in its handler).
                let r = unsafe { bindings::rdma_resolve_route(id, self.setup_timeout_ms as _) };
                if r != 0 {
                    finish(r);
                }
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_RESOLVED => {
                let _setup = self.setup_lock.lock();
                if self.state.load(Ordering::Acquire) != CONNECTING {
                    // Torn down meanwhile (the connect timed out): build nothing.
                    return;
                }
                // SAFETY: first and only setup of this connection, in its handler,
                // serialised with teardown by `setup_lock`.
                let r = unsafe { self.create_resources(id) }.and_then(|()| {
                    // SAFETY: `id` has a device.
                    let attrs = unsafe { &(*(*id).device).attrs };
                    let mut param = bindings::rdma_conn_param::default();
                    param.responder_resources = (attrs.max_qp_rd_atom as u32).min(RD_ATOM) as u8;
                    param.initiator_depth = (attrs.max_qp_init_rd_atom as u32).min(RD_ATOM) as u8;
                    param.retry_count = 7;
                    param.rnr_retry_count = 7;
                    // SAFETY: in the handler of `id`, which has a QP.
                    kernel::error::to_result(unsafe {
                        bindings::rdma_connect_locked(id, &mut param)
                    })
                });
                if let Err(e) = r {
                    finish(e.to_errno());
                }
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ESTABLISHED => {
                if connecting {
                    self.state.store(UP, Ordering::Release);
                    if self.role == Role::Server {
                        count(&STATS.conns_accepted, 1);
                    }
                    finish(0);
                }
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_ERROR
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_ERROR
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_UNREACHABLE => {
                finish(errno::ehostunreach().to_errno())
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_REJECTED => {
                finish(errno::econnrefused().to_errno())
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_ERROR => {
                finish(errno::econnreset().to_errno())
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_DISCONNECTED
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_DEVICE_REMOVAL
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_CHANGE => {
                if connecting {
                    finish(errno::econnreset().to_errno());
                } else {
                    self.fail(errno::econnreset());
                }
            }
            _ => {}
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Connection {
    fn drop(self: Pin<&mut Self>) {
        // Normally already torn down; makes every exit path release the verbs objects.
        self.teardown();
    }
}

impl Waiter {
    /// The raw completion, for waiters completed by hand rather than by a CQ.
    fn completion_ptr(&self) -> *mut bindings::completion {
        self.completion_raw()
    }
}

/// Handler of every CM id the module creates: the listener (context NULL; it only gets
/// CONNECT_REQUEST) and connections (context = the connection).
pub(crate) unsafe extern "C" fn cm_event_handler(
    id: *mut bindings::rdma_cm_id,
    event: *mut bindings::rdma_cm_event,
) -> i32 {
    // SAFETY: the CM passes a valid event.
    let event = unsafe { &*event };
    if event.event == bindings::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_REQUEST {
        // SAFETY: `id` is the new connection's id.
        return match super::listener::on_connect_request(id, event) {
            Ok(()) => 0,
            Err(_) => -1,
        };
    }
    // SAFETY: `id` is live in its own handler.
    let ctx = unsafe { (*id).context };
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL context is a connection that outlives its id (type invariant).
    let conn = unsafe { &*(ctx as *const Connection) };
    conn.on_cm_event(id, event);
    0
}

/// Accepts `id` as a server connection (called by the listener).
pub(crate) fn accept(
    id: *mut bindings::rdma_cm_id,
    event: &bindings::rdma_cm_event,
    on_request: RequestHandler,
    on_closed: ClosedHandler,
) -> Result<Arc<Connection>> {
    Connection::accept(id, event, on_request, on_closed)
}

fn sockaddr_in(addr: u32, port: u16) -> bindings::sockaddr_in {
    let mut sa = bindings::sockaddr_in::default();
    sa.sin_family = bindings::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = addr;
    sa
}

/// Peer address of an id with a resolved route.
///
/// # Safety
///
/// `id` must be live.
pub(crate) unsafe fn peer_of(id: *mut bindings::rdma_cm_id) -> (u32, u16) {
    // SAFETY: the destination of an IPv4 connection is a `sockaddr_in`.
    let sa =
        unsafe { &*(ptr::addr_of!((*id).route.addr.dst_addr) as *const bindings::sockaddr_in) };
    (sa.sin_addr.s_addr, u16::from_be(sa.sin_port))
}

/// Formats a network-order IPv4 address.
pub(crate) struct Ipv4(pub(crate) u32);

impl core::fmt::Display for Ipv4 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0.to_ne_bytes();
        write!(f, "{}.{}.{}.{}", b[0], b[1], b[2], b[3])
    }
}
