// SPDX-License-Identifier: GPL-2.0

//! Small `KVec` helpers the 6.12 `kernel` crate lacks.

use core::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use kernel::alloc::Allocator;
use kernel::prelude::*;

/// Removes element `i` by swapping the last one into its place (order is not kept).
pub(crate) fn swap_remove<T, A: Allocator>(v: &mut Vec<T, A>, i: usize) -> Option<T> {
    let len = v.len();
    if i >= len {
        return None;
    }
    v.as_mut_slice().swap(i, len - 1);
    // SAFETY: `len - 1 < len`: the element is initialised; shrinking the length first
    // means it is owned only by the returned value.
    unsafe {
        v.set_len(len - 1);
        Some(core::ptr::read(v.as_ptr().add(len - 1)))
    }
}

/// Appends `x` if `v` has room for it without allocating; gives it back otherwise.
pub(crate) fn push_within_capacity<T, A: Allocator>(
    v: &mut Vec<T, A>,
    x: T,
) -> core::result::Result<(), T> {
    let len = v.len();
    match v.spare_capacity_mut().first_mut() {
        Some(slot) => {
            slot.write(x);
            // SAFETY: the element at `len` was just initialised, within the capacity.
            unsafe { v.set_len(len + 1) };
            Ok(())
        }
        None => Err(x),
    }
}

/// Removes the first element matching `pred`.
pub(crate) fn remove_first<T, A: Allocator>(
    v: &mut Vec<T, A>,
    pred: impl FnMut(&T) -> bool,
) -> Option<T> {
    let i = v.iter().position(pred)?;
    swap_remove(v, i)
}

/// Drops every element, keeping the allocation.
pub(crate) fn clear<T>(v: &mut KVec<T>) {
    while swap_remove(v, v.len().wrapping_sub(1)).is_some() {}
}

/// A new vector holding the first `max` entries of `from` (all of them if fewer).
pub(crate) fn copy_first<T: Copy>(from: &[T], max: usize) -> Result<KVec<T>> {
    let n = from.len().min(max);
    let mut out = KVec::with_capacity(n, GFP_KERNEL)?;
    out.extend_from_slice(&from[..n], GFP_KERNEL)?;
    Ok(out)
}

/// Takes every element out, leaving `v` empty.
pub(crate) fn take_all<T>(v: &mut KVec<T>) -> KVec<T> {
    core::mem::replace(v, KVec::new())
}

/// At most `burst` events per second (log lines a peer or caller could otherwise flood).
pub(crate) struct RateLimit {
    window_start_ms: AtomicI64,
    in_window: AtomicU32,
    burst: u32,
}

impl RateLimit {
    pub(crate) const fn new(burst: u32) -> Self {
        RateLimit {
            window_start_ms: AtomicI64::new(0),
            in_window: AtomicU32::new(0),
            burst,
        }
    }

    /// Whether one more event fits in the current one-second window.
    pub(crate) fn allow(&self) -> bool {
        let now = kernel::time::Ktime::ktime_get().to_ms();
        if now - self.window_start_ms.load(Ordering::Relaxed) >= 1000 {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.in_window.store(0, Ordering::Relaxed);
        }
        self.in_window.fetch_add(1, Ordering::Relaxed) < self.burst
    }
}

/// Fills `out` with random bytes from the kernel's CRNG.
pub(crate) fn random_bytes(out: &mut [u8]) {
    // SAFETY: `out` is valid for writing `out.len()` bytes.
    unsafe { crate::bindings::get_random_bytes(out.as_mut_ptr().cast(), out.len()) };
}

/// Sleeps one scheduler tick without counting as load (process context only): a work
/// item that does this first lets the task that queued it go on before the work takes
/// the CPU, on a host with one.
pub(crate) fn sleep_one_tick() {
    // SAFETY: called from process context (work items), where sleeping is allowed.
    unsafe { kernel::bindings::schedule_timeout_idle(1) };
}

/// Emptying a `KVec` while keeping its allocation.
pub(crate) trait ClearForReuse {
    fn clear_for_reuse(&mut self);
}

impl<T: Copy> ClearForReuse for KVec<T> {
    fn clear_for_reuse(&mut self) {
        // SAFETY: `T: Copy` has no destructor, so forgetting the elements is fine.
        unsafe { self.set_len(0) };
    }
}
