// SPDX-License-Identifier: GPL-2.0

//! Reliable-connected queue pairs over `rdma_cm`: the [`Connection`] value, its state
//! and its teardown. The rest of its life is in sibling files: `cm.rs` (connect,
//! accept, one step per CM event: where a QP is created), `rpc.rs` (the SEND/RECV
//! control channel and the server's request work), `read.rs` (batched one-sided
//! READs), `registrations.rs` (page sets registered for the peer).
//!
//! Life of a [`Connection`]:
//! - client: [`Connection::connect`] resolves the address and route, creates CQs and
//!   the QP (in the device's shared PD, `domain.rs`) on the resolved device in the CM
//!   handler, connects, and waits (bounded) for ESTABLISHED;
//! - server: the listener's CONNECT_REQUEST calls [`Connection::accept`];
//! - either side: a CM disconnect, a failed work request or a timeout calls
//!   [`Connection::fail`], which queues [`Connection::teardown`] on the module's
//!   workqueue (never inside a CM handler); module unload and device removal call
//!   `teardown` directly. Teardown drains the QP (every posted request completes, so
//!   no waiter or buffer is referenced any more), waits for users to leave, then
//!   destroys the QP, CQs, buffers, registrations and the CM id, in that order.

use super::device::{DeviceKey, IbDevice};
use super::domain::Domain;
use super::fastreg::Registration;
pub(crate) use super::owner::Owner;
use super::verbs::{Cq, DmaPage, MappedPage};
use super::waiter::Waiter;
use crate::abi::wire;
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::util::take_all;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use kernel::init::pin_init_array_from_fn;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, ArcBorrow, Mutex};
use kernel::types::Opaque;
use kernel::workqueue::{impl_has_work, new_work, HasWork, Work, WorkItem};

/// Receive buffers per connection (control messages in flight from the peer).
pub(super) const RECV_DEPTH: usize = 16;
/// Send queue depth: every READ slot's batch at once (the pipeline's too), beside an
/// RPC's SEND and a chain of REG_MRs.
pub(crate) const SEND_DEPTH: u32 = 1024;
/// Most READs posted with one doorbell.
pub(crate) const MAX_READ_BATCH: usize = 64;
/// READ batches one connection has in flight at once, each with its own destination
/// pages and waiter: the faults of several children (or of one child and a working-set
/// replay) overlap instead of queueing behind one batch. Every batch's requests fit in
/// the send queue beside an RPC and a chain of registrations. 8: 8 children faulting at
/// random reached 2.2x one child's page rate with 8 slots, 1.4x with 3.
pub(crate) const READ_SLOTS: usize = 8;
/// Doorbells the connection's pipeline keeps in flight at most, in slots of its own
/// ([`Connection::pipeline`]).
pub(crate) const PIPELINE_DEPTH: usize = 4;
const _: () =
    assert!((READ_SLOTS + PIPELINE_DEPTH) * MAX_READ_BATCH + 1 + REG_BATCH <= SEND_DEPTH as usize);
/// Most REG_MR requests chained in one post (well under [`SEND_DEPTH`]).
pub(super) const REG_BATCH: usize = 128;
/// RDMA READs in flight the QP asks for (bounded by the device). rxe allows 128, but a
/// 64-READ batch on the perf kernel (foundation scenario, 2026-11-27) ran at 4,472
/// pages/s with 8 in flight, 5,162 with 16, 2,347 with 32 and 399 with 128: beyond 16
/// the responder falls behind and the requester retransmits.
pub(super) const RD_ATOM: u32 = 16;

/// Log lines a peer can trigger (failed receives, unexpected messages, READ errors):
/// at most this many per second.
pub(super) static PEER_LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);

/// Which end of the connection this host is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Connected out: sends requests, issues READs.
    Client,
    /// Accepted: serves requests.
    Server,
}

pub(super) const CONNECTING: u32 = 0;
pub(super) const UP: u32 = 1;
pub(super) const DOWN: u32 = 2;
pub(super) const DEAD: u32 = 3;

/// Verbs objects of a connection. Dropped fields are released in declaration order
/// after the QP is destroyed in `Drop`.
pub(super) struct Resources {
    pub(super) id: *mut bindings::rdma_cm_id,
    pub(super) recv_bufs: KVec<Pin<KBox<RecvBuf>>>,
    pub(super) send_buf: DmaPage,
    // Held for their `Drop` only (after the QP that uses them is destroyed).
    pub(super) _send_cq: Cq,
    pub(super) _recv_cq: Cq,
    /// The device's shared PD (and its registrations), held while the QP exists.
    pub(super) domain: Arc<Domain>,
    /// Scatter entries the QP accepts in one READ request (at least 1).
    pub(super) read_sges: u32,
}

impl Resources {
    pub(super) fn qp(&self) -> *mut bindings::ib_qp {
        // SAFETY: the QP exists while `Resources` does (created before, destroyed in Drop).
        unsafe { (*self.id).qp }
    }

    pub(super) fn dev(&self) -> &IbDevice {
        // SAFETY: the id is bound to its device while it has a QP, and a device is not
        // unregistered before its ids' resources are gone (device removal tears
        // connections down first).
        unsafe { IbDevice::from_raw((*self.id).device) }
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
pub(super) struct RecvBuf {
    #[pin]
    pub(super) cqe: Opaque<bindings::ib_cqe>,
    pub(super) page: DmaPage,
    pub(super) conn: *const Connection,
    pub(super) index: usize,
}

/// An RC connection to one peer.
///
/// # Invariants
///
/// - Always allocated inside an [`Arc`] (so `&self` can be turned back into one).
/// - `res` is written only while `state == CONNECTING` by the one CM handler that sets the
///   connection up, and by `teardown` after the QP is drained and `rpc_lock`, every
///   read slot's lock and the pipeline's lock have been taken; readers hold `rpc_lock`,
///   a read slot's lock or the pipeline's lock with `state == UP` (or, the
///   server's request work, `rpc_lock` while not closing), or are completion handlers of
///   its CQs (which `teardown` quiesces by draining).
/// - `id`, once set, is the CM id whose `context` points to this connection; it is
///   destroyed only by `teardown`.
#[pin_data(PinnedDrop)]
pub(crate) struct Connection {
    pub(super) role: Role,
    /// Client: the bound of each setup step (address and route resolution).
    pub(super) setup_timeout_ms: u32,
    pub(super) peer_addr: u32,
    pub(super) peer_port: u16,
    pub(super) id: AtomicPtr<bindings::rdma_cm_id>,
    pub(super) state: AtomicU32,
    /// Errno of the connect outcome or of the first failure.
    pub(super) status: AtomicI32,
    pub(super) res: UnsafeCell<Option<Resources>>,
    /// Signalled when connection setup has an outcome.
    #[pin]
    pub(super) connected: Waiter,
    #[pin]
    pub(super) rpc_lock: Mutex<()>,
    #[pin]
    pub(super) teardown_lock: Mutex<()>,
    /// Client: the request SEND. Server: the reply SEND and the REG_MRs before it.
    #[pin]
    pub(super) send_waiter: Waiter,
    /// Client: the expected reply's sequence number, and the receive buffer holding it.
    pub(super) reply_seq: AtomicU64,
    pub(super) reply_slot: AtomicI32,
    pub(super) reply_len: AtomicU32,
    #[pin]
    pub(super) reply_done: Waiter,
    pub(super) next_seq: AtomicU64,
    /// Server: page sets registered for this peer.
    #[pin]
    pub(super) registrations: Mutex<KVec<PeerRegistration>>,
    /// Server: registrations whose REG_MR requests may still be in the send queue
    /// (a reply that failed): freed by `teardown` after the drain, never before.
    #[pin]
    pub(super) retired: Mutex<KVec<Arc<Registration>>>,
    /// Held by the CM handler while it builds the resources and by `teardown` while
    /// it takes them, so a teardown (a connect that timed out) never races the setup.
    #[pin]
    pub(super) setup_lock: Mutex<()>,
    #[pin]
    pub(super) teardown_work: Work<Connection, TEARDOWN>,
    /// Server: received requests waiting for `request_work`, as (receive buffer, length).
    /// A buffer is reposted only after its request was served, so at most
    /// `RECV_DEPTH` wait (the peer's further SENDs wait in RNR retry): bounded by
    /// construction, and the capacity is reserved when the resources are made.
    #[pin]
    pub(super) requests: Mutex<KVec<(usize, usize)>>,
    /// Server: serves `requests` on the module's workqueue, not in the completion
    /// handler (the shared `ib_comp_wq`, which a slow request would hold up).
    #[pin]
    pub(super) request_work: Work<Connection, REQUESTS>,
    /// The module, told about requests (server) and the end of the connection.
    pub(super) owner: Arc<dyn Owner>,
    /// The device the resources were made on, set once at setup; only compared (device
    /// removal), never dereferenced.
    pub(super) device: AtomicPtr<bindings::ib_device>,
    /// When the connection object was made (monotonic ms): a peer's handshake and its
    /// time before authenticating are limited from here.
    pub(super) created_ms: i64,
    /// Server: the peer presented a valid secret once (see [`Connection::authenticated`]).
    pub(super) authenticated: AtomicBool,
    /// The server's challenge (random per connection, sent in the accept's private
    /// data; a client keeps the one it received at ESTABLISHED): every open on the
    /// connection proves the secret against it. `None` until known.
    #[pin]
    pub(super) challenge: Mutex<Option<[u8; 16]>>,
    /// Client: where READ batches run, [`READ_SLOTS`] at a time.
    #[pin]
    pub(super) read_slots: [ReadSlot; READ_SLOTS],
    /// Client: whether a caller has the pipeline ([`Connection::pipeline`]).
    pub(super) pipeline_taken: AtomicBool,
    /// Client: the pipeline's slots' destination pages, under one lock held for a
    /// whole pipelined read, and their waiters (used under that lock).
    #[pin]
    pub(super) pipe_bufs: Mutex<[KVec<DmaPage>; PIPELINE_DEPTH]>,
    #[pin]
    pub(super) pipe_waiters: [Waiter; PIPELINE_DEPTH],
}

/// One READ batch's place on a connection.
///
/// # Invariants
///
/// The destination pages belong to the connection, not to the caller, so that a READ
/// the device completes late (after a timeout) still lands in live, mapped pages: they
/// are freed only by `teardown`, after the QP is drained. A batch into pages the caller
/// lends ([`Connection::read_into`]) holds its own reference and mapping of each, and
/// leaves them in `lent` if it fails, for `teardown` likewise. A batch holds `bufs`' lock
/// from before its post until its bytes were consumed; `waiter` completes only for the
/// requests of that batch.
#[pin_data]
pub(super) struct ReadSlot {
    #[pin]
    pub(super) bufs: Mutex<KVec<DmaPage>>,
    /// Pages lent to a batch that failed (see [`Connection::read_into`]): the device
    /// may still write them, so they stay referenced and mapped until `teardown` has
    /// drained the QP. Taken only under `bufs`' lock, or by `teardown` after the drain.
    #[pin]
    pub(super) lent: Mutex<KVec<MappedPage>>,
    #[pin]
    pub(super) waiter: Waiter,
    /// Batches holding or waiting for this slot (a hint for picking the least busy
    /// one; the lock is what excludes).
    pub(super) users: AtomicU32,
}

impl ReadSlot {
    fn new() -> impl PinInit<Self> {
        pin_init!(ReadSlot {
            bufs <- new_mutex!(KVec::new()),
            lent <- new_mutex!(KVec::new()),
            waiter <- Waiter::new(),
            users: AtomicU32::new(0),
        })
    }
}

// SAFETY: all mutable state is atomics, locks, or `res` under the rules of the type
// invariants; raw pointers are to kernel objects usable from any thread.
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

/// A page set registered for the peer of a server connection, shared by its opens.
pub(super) struct PeerRegistration {
    /// The region's id.
    pub(super) key: u64,
    /// Opens of the region by this peer not closed yet.
    pub(super) opens: u32,
    pub(super) reg: Arc<Registration>,
}

/// A reply received for [`Connection::rpc`].
pub(crate) struct Reply<'a> {
    pub(crate) header: wire::MsgHeader,
    pub(crate) body: &'a [u8],
}

impl Connection {
    pub(super) fn new(
        role: Role,
        peer_addr: u32,
        peer_port: u16,
        setup_timeout_ms: u32,
        owner: Arc<dyn Owner>,
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
            teardown_lock <- new_mutex!(()),
            send_waiter <- Waiter::new(),
            reply_seq: AtomicU64::new(0),
            reply_slot: AtomicI32::new(-1),
            reply_len: AtomicU32::new(0),
            reply_done <- Waiter::new(),
            next_seq: AtomicU64::new(1),
            registrations <- new_mutex!(KVec::new()),
            retired <- new_mutex!(KVec::new()),
            setup_lock <- new_mutex!(()),
            teardown_work <- new_work!("Connection::teardown_work"),
            requests <- new_mutex!(KVec::new()),
            request_work <- new_work!("Connection::request_work"),
            owner,
            device: AtomicPtr::new(ptr::null_mut()),
            created_ms: kernel::time::Ktime::ktime_get().to_ms(),
            authenticated: AtomicBool::new(false),
            challenge <- new_mutex!(None),
            pipeline_taken: AtomicBool::new(false),
            pipe_bufs <- new_mutex!(core::array::from_fn(|_| KVec::new())),
            pipe_waiters <- pin_init_array_from_fn::<_, PIPELINE_DEPTH, Waiter, core::convert::Infallible>(
                |_| Waiter::new()
            ),
            read_slots <- pin_init_array_from_fn::<_, READ_SLOTS, ReadSlot, core::convert::Infallible>(
                |_| ReadSlot::new()
            ),
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

    /// The device this connection runs on (a null key before setup).
    pub(crate) fn device(&self) -> DeviceKey {
        DeviceKey::of(self.device.load(Ordering::Acquire))
    }

    /// The connection's challenge (see the field), once known.
    pub(crate) fn challenge(&self) -> Option<[u8; 16]> {
        *self.challenge.lock()
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

    /// Resources, for a caller holding `rpc_lock`, a read slot's lock or the pipeline's
    /// lock with the state `UP`, or a
    /// completion handler of this connection.
    ///
    /// # Safety
    ///
    /// The caller must be one of the above (type invariant).
    pub(super) unsafe fn res(&self) -> Result<&Resources> {
        // SAFETY: per the caller's guarantee no one writes `res` concurrently.
        unsafe { (*self.res.get()).as_ref() }.ok_or(errno::enotconn())
    }

    /// The module's workqueue (`None` once the module is stopping).
    pub(crate) fn workqueue(&self) -> Option<&kernel::workqueue::Queue> {
        self.owner.workqueue()
    }

    /// Queues `work` (a work item of this connection) on the module's workqueue with
    /// one `Arc` reference for its run; a work already queued keeps the one it has.
    pub(super) fn queue_work<const ID: u64>(&self)
    where
        Self: WorkItem<ID, Pointer = Arc<Self>> + HasWork<Self, ID>,
    {
        // SAFETY: connections live in an `Arc` (type invariant) and `self` is borrowed, so
        // the refcount is non-zero.
        let arc: Arc<Self> = unsafe { ArcBorrow::from_raw(self as *const Self) }.into();
        if let Some(queue) = self.owner.workqueue() {
            // Already queued: the returned reference is dropped, the queued one runs.
            let _ = queue.enqueue::<Arc<Self>, ID>(arc);
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
        self.queue_work::<TEARDOWN>();
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
        for slot in self.read_slots.iter() {
            drop(slot.bufs.lock());
        }
        drop(self.pipe_bufs.lock());
        let regs = take_all(&mut self.registrations.lock());
        COUNTERS
            .mrs_live
            .fetch_sub(regs.len() as u64, Ordering::Relaxed);
        drop(regs);
        drop(take_all(&mut self.retired.lock()));
        // Drained: the device writes none of the READ destinations any more. Freed
        // before the resources, while the device they are mapped on is still held.
        for slot in self.read_slots.iter() {
            drop(take_all(&mut slot.bufs.lock()));
            drop(take_all(&mut slot.lent.lock()));
        }
        for bufs in self.pipe_bufs.lock().iter_mut() {
            drop(take_all(bufs));
        }
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
            count(&COUNTERS.conns_closed, 1);
        }
        self.state.store(DEAD, Ordering::Release);
    }
}

/// Deferred work of a connection, on the module's workqueue.
pub(super) const TEARDOWN: u64 = 0;
pub(super) const REQUESTS: u64 = 1;

impl_has_work! {
    impl HasWork<Self, TEARDOWN> for Connection { self.teardown_work }
    impl HasWork<Self, REQUESTS> for Connection { self.request_work }
}

/// Teardown outside any CM handler, then the owner is told (to drop it from lists).
impl WorkItem<TEARDOWN> for Connection {
    type Pointer = Arc<Connection>;

    fn run(conn: Arc<Connection>) {
        conn.teardown();
        conn.owner.closed(&conn);
    }
}

/// The server's queued requests (see `rpc.rs`).
impl WorkItem<REQUESTS> for Connection {
    type Pointer = Arc<Connection>;

    fn run(conn: Arc<Connection>) {
        conn.serve_requests();
    }
}

#[pinned_drop]
impl PinnedDrop for Connection {
    fn drop(self: Pin<&mut Self>) {
        // Normally already torn down, on the workqueue: then nothing is taken, not even
        // `teardown_lock`. The last reference can go where a page fault holds a pager's
        // lock (a reconnect dropping a dead pooled connection), and lockdep orders
        // `teardown_lock` before the CM's handler mutex, which user-space CM users
        // order after the mmap lock. The state is exact here: no one else holds us.
        if self.state.load(Ordering::Acquire) == DEAD {
            return;
        }
        // Makes every other exit path release the verbs objects.
        self.teardown();
    }
}

impl Waiter {
    /// The raw completion, for waiters completed by hand rather than by a CQ.
    pub(super) fn completion_ptr(&self) -> *mut bindings::completion {
        self.completion_raw()
    }
}

/// Formats a network-order IPv4 address.
pub(crate) struct Ipv4(pub(crate) u32);

impl core::fmt::Display for Ipv4 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0.to_ne_bytes();
        write!(f, "{}.{}.{}.{}", b[0], b[1], b[2], b[3])
    }
}
