// SPDX-License-Identifier: GPL-2.0

//! Safe Rust over kernel RDMA verbs.
//!
//! - `device.rs`: device discovery with an `ib_client` (add/remove);
//! - `domain.rs`: the protection domain a device's connections share, and the page
//!   sets registered in it once for every peer;
//! - `verbs.rs`: protection domains, completion queues, DMA-mapped pages (RAII);
//! - `waiter.rs`: a completion-queue entry that wakes a sleeper, with a timeout;
//! - `pages.rs`: sets of pages that can be registered for peers;
//! - `fastreg.rs`: fast registration of page lists (scoped remote access);
//! - `connection.rs`: an RC connection's state and teardown; `cm.rs`: where its QP is
//!   created (connect, accept, CM events); `rpc.rs`: control messages over SEND/RECV;
//!   `read.rs`: batched one-sided READs; `registrations.rs`: the peer's registrations;
//! - `listener.rs`: the `rdma_cm` listener that accepts peers;
//! - `owner.rs`: the [`connection::Owner`] trait, the layer's interface to the module.
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
pub(crate) mod domain;
pub(crate) mod fastreg;
pub(crate) mod listener;
mod owner;
pub(crate) mod pages;
pub(crate) mod read;
mod registrations;
mod rpc;
pub(crate) mod verbs;
pub(crate) mod waiter;

/// Caller name given to the verbs core for objects we create.
pub(crate) const CALLER: &kernel::str::CStr = kernel::c_str!("mitosis");

/// `PAGE_SIZE` on every architecture this module builds for (x86_64).
pub(crate) const PAGE_SIZE: usize = 4096;

use core::sync::atomic::{AtomicPtr, Ordering};

/// A workqueue of the module's own (connection teardown and request serving run there,
/// outside CM and completion handlers).
///
/// # Invariants
///
/// `wq` is the live workqueue made by `new` until `destroy` swaps it out.
pub(crate) struct Workqueue {
    wq: AtomicPtr<crate::bindings::workqueue_struct>,
}

impl Workqueue {
    pub(crate) fn new() -> kernel::error::Result<Self> {
        // SAFETY: the format is a NUL-terminated string without conversions.
        let wq = unsafe {
            crate::bindings::alloc_workqueue(kernel::c_str!("mitosis").as_char_ptr(), 0, 0)
        };
        if wq.is_null() {
            return Err(kernel::error::code::ENOMEM);
        }
        Ok(Workqueue {
            wq: AtomicPtr::new(wq),
        })
    }

    /// The queue, until [`Workqueue::destroy`].
    pub(crate) fn get(&self) -> Option<&kernel::workqueue::Queue> {
        let wq = self.wq.load(Ordering::Acquire);
        // SAFETY: non-null, `wq` is live (type invariant); the owner destroys it only
        // after nothing can queue work any more (see `state.rs`).
        (!wq.is_null()).then(|| unsafe { kernel::workqueue::Queue::from_raw(wq.cast()) })
    }

    /// Runs all queued work and destroys the queue (idempotent). Never from a work
    /// item of this queue.
    pub(crate) fn destroy(&self) {
        let wq = self.wq.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !wq.is_null() {
            // SAFETY: `wq` came from `alloc_workqueue`; `destroy_workqueue` drains it.
            unsafe { crate::bindings::destroy_workqueue(wq) };
        }
    }
}

impl Drop for Workqueue {
    fn drop(&mut self) {
        self.destroy();
    }
}
