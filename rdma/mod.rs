// SPDX-License-Identifier: GPL-2.0

//! Safe Rust over kernel RDMA verbs.
//!
//! - `device.rs`: device discovery with an `ib_client` (add/remove);
//! - `verbs.rs`: protection domains, completion queues, DMA-mapped pages (RAII);
//! - `waiter.rs`: a completion-queue entry that wakes a sleeper, with a timeout;
//! - `pages.rs`: sets of pages that can be registered for peers;
//! - `fastreg.rs`: fast registration of page lists (scoped remote access);
//! - `connection.rs`: an RC connection's state and teardown; `cm.rs`: where its QP is
//!   created (connect, accept, CM events); `rpc.rs`: control messages over SEND/RECV;
//!   `read.rs`: batched one-sided READs; `registrations.rs`: the peer's registrations;
//! - `listener.rs`: the `rdma_cm` listener that accepts peers.
//!
//! Every verbs object is owned by a Rust value that releases it in `Drop`; queue pairs are
//! drained before anything they may touch is destroyed.

/// A log line a peer can trigger (failed receives, unexpected messages, READ and SEND
/// errors): rate-limited, so a peer cannot flood the log.
macro_rules! peer_warn {
    ($($arg:tt)*) => {
        if $crate::rdma::connection::PEER_LOG.allow() {
            kernel::pr_warn!($($arg)*);
        }
    };
}

mod cm;
pub(crate) mod connection;
pub(crate) mod device;
pub(crate) mod fastreg;
pub(crate) mod listener;
pub(crate) mod pages;
mod read;
mod registrations;
mod rpc;
pub(crate) mod verbs;
pub(crate) mod waiter;

/// Caller name given to the verbs core for objects we create.
pub(crate) const CALLER: &kernel::str::CStr = kernel::c_str!("mitosis");

/// `PAGE_SIZE` on every architecture this module builds for (x86_64).
pub(crate) const PAGE_SIZE: usize = 4096;

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Counters kept by the verbs layer, since module load.
pub(crate) struct Stats {
    pub(crate) conns_established: AtomicU64,
    pub(crate) conns_failed: AtomicU64,
    pub(crate) conns_accepted: AtomicU64,
    pub(crate) conns_closed: AtomicU64,
    pub(crate) ctrl_msgs_sent: AtomicU64,
    pub(crate) ctrl_msgs_received: AtomicU64,
    pub(crate) read_wrs_posted: AtomicU64,
    pub(crate) read_doorbells: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) read_timeouts: AtomicU64,
    pub(crate) mrs_live: AtomicU64,
}

pub(crate) static STATS: Stats = Stats {
    conns_established: AtomicU64::new(0),
    conns_failed: AtomicU64::new(0),
    conns_accepted: AtomicU64::new(0),
    conns_closed: AtomicU64::new(0),
    ctrl_msgs_sent: AtomicU64::new(0),
    ctrl_msgs_received: AtomicU64::new(0),
    read_wrs_posted: AtomicU64::new(0),
    read_doorbells: AtomicU64::new(0),
    bytes_read: AtomicU64::new(0),
    read_errors: AtomicU64::new(0),
    read_timeouts: AtomicU64::new(0),
    mrs_live: AtomicU64::new(0),
};

/// Adds `n` to a counter.
pub(crate) fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The module's workqueue (connection teardown runs there, outside CM handlers).
static WORKQUEUE: AtomicPtr<crate::bindings::workqueue_struct> =
    AtomicPtr::new(core::ptr::null_mut());

/// Creates the workqueue; called once at module load before anything can queue work.
pub(crate) fn start_workqueue() -> kernel::error::Result {
    // SAFETY: the format is a NUL-terminated string without conversions.
    let wq =
        unsafe { crate::bindings::alloc_workqueue(kernel::c_str!("mitosis").as_char_ptr(), 0, 0) };
    if wq.is_null() {
        return Err(kernel::error::code::ENOMEM);
    }
    WORKQUEUE.store(wq, Ordering::Release);
    Ok(())
}

/// Runs all queued work and destroys the workqueue; called once at module unload after
/// nothing can queue work any more.
pub(crate) fn stop_workqueue() {
    let wq = WORKQUEUE.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !wq.is_null() {
        // SAFETY: `wq` came from `alloc_workqueue`; `destroy_workqueue` drains it first.
        unsafe { crate::bindings::destroy_workqueue(wq) };
    }
}

/// The module's workqueue, between `start_workqueue` and `stop_workqueue`.
pub(crate) fn workqueue() -> Option<&'static kernel::workqueue::Queue> {
    let wq = WORKQUEUE.load(Ordering::Acquire);
    // SAFETY: non-null, `wq` is the live workqueue made by `start_workqueue`; it is
    // destroyed only by `stop_workqueue`, after which nothing queues work (callers are
    // stopped first, see `state.rs`).
    (!wq.is_null()).then(|| unsafe { kernel::workqueue::Queue::from_raw(wq.cast()) })
}
