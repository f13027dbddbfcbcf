// SPDX-License-Identifier: GPL-2.0

//! A completion-queue entry (`struct ib_cqe`) whose completion wakes a sleeper.

use crate::bindings;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::prelude::*;
use kernel::types::Opaque;

/// One outstanding signalled work request at a time can be waited for.
///
/// # Invariants
///
/// `cqe.done` is [`Waiter::done`] and `completion` is initialised; the value is pinned
/// (both C structs are referenced by address: the CQ by `cqe`, the wait queue by itself).
#[pin_data]
pub(crate) struct Waiter {
    #[pin]
    cqe: Opaque<bindings::ib_cqe>,
    #[pin]
    completion: Opaque<bindings::completion>,
    /// `ib_wc_status` of the first completion since [`Waiter::arm`].
    status: AtomicU32,
}

/// Sentinel status: nothing completed yet.
const PENDING: u32 = u32::MAX;

impl Waiter {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Waiter {
            cqe <- Opaque::ffi_init(|p: *mut bindings::ib_cqe| {
                // SAFETY: `p` is valid for writing an `ib_cqe`.
                unsafe { p.write(bindings::ib_cqe { done: Some(Self::done) }) }
            }),
            completion <- Opaque::ffi_init(|p| {
                // SAFETY: `p` points to a pinned, uninitialised `struct completion`.
                unsafe { bindings::mitosis_init_completion(p) }
            }),
            status: AtomicU32::new(PENDING),
        })
    }

    /// The entry to put in `wr_cqe` of the work requests to wait for.
    pub(crate) fn cqe(&self) -> *mut bindings::ib_cqe {
        self.cqe.get()
    }

    /// The raw completion (for waiters completed by hand).
    pub(crate) fn completion_raw(&self) -> *mut bindings::completion {
        self.completion.get()
    }

    /// Resets the waiter before posting.
    pub(crate) fn arm(&self) {
        self.status.store(PENDING, Ordering::Relaxed);
        // SAFETY: the completion is initialised (type invariant).
        unsafe { bindings::mitosis_reinit_completion(self.completion.get()) };
    }

    /// Waits at most `timeout_ms` for a completion; returns its `ib_wc_status`, or
    /// `ETIMEDOUT`.
    pub(crate) fn wait(&self, timeout_ms: u32) -> Result<u32> {
        let jiffies = kernel::time::msecs_to_jiffies(timeout_ms.max(1));
        // SAFETY: the completion is initialised (type invariant).
        let left = unsafe { bindings::wait_for_completion_timeout(self.completion.get(), jiffies) };
        if left == 0 {
            return Err(crate::errno::etimedout());
        }
        Ok(self.status.load(Ordering::Acquire))
    }

    /// [`Waiter::wait`], but a fatal signal ends the wait with `EINTR`: for waits a
    /// user can give up on (a connect to a silent address), never for ones that guard
    /// buffers the device may still write.
    pub(crate) fn wait_killable(&self, timeout_ms: u32) -> Result<u32> {
        let jiffies = kernel::time::msecs_to_jiffies(timeout_ms.max(1));
        // SAFETY: the completion is initialised (type invariant).
        let left = unsafe {
            bindings::wait_for_completion_killable_timeout(self.completion.get(), jiffies)
        };
        match left {
            0 => Err(crate::errno::etimedout()),
            l if l < 0 => Err(EINTR),
            _ => Ok(self.status.load(Ordering::Acquire)),
        }
    }

    /// `ib_cqe.done`: records the status of the first completion and wakes the sleeper.
    unsafe extern "C" fn done(_cq: *mut bindings::ib_cq, wc: *mut bindings::ib_wc) {
        // SAFETY: the CQ core passes a valid work completion whose `wr_cqe` is the `cqe`
        // of a live `Waiter` (owners keep waiters alive until their QP is drained).
        let (cqe, status) = unsafe { ((*wc).__bindgen_anon_1.wr_cqe, (*wc).status) };
        // SAFETY: `cqe` is the `cqe` field of a `Waiter` (see above); `Opaque` is
        // `repr(transparent)`.
        let this =
            unsafe { &*kernel::container_of!(cqe as *const Opaque<bindings::ib_cqe>, Waiter, cqe) };
        let _ = this
            .status
            .compare_exchange(PENDING, status, Ordering::AcqRel, Ordering::Relaxed);
        // SAFETY: the completion is initialised (type invariant).
        unsafe { bindings::complete(this.completion.get()) };
    }
}
