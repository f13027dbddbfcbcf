// SPDX-License-Identifier: GPL-2.0

//! Small `KVec` helpers the 6.12 `kernel` crate lacks.

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

/// Removes the first element matching `pred`.
pub(crate) fn remove_first<T, A: Allocator>(
    v: &mut Vec<T, A>,
    pred: impl FnMut(&T) -> bool,
) -> Option<T> {
    let i = v.iter().position(pred)?;
    swap_remove(v, i)
}

/// Takes every element out, leaving `v` empty.
pub(crate) fn take_all<T>(v: &mut KVec<T>) -> KVec<T> {
    core::mem::replace(v, KVec::new())
}
