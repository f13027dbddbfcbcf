// SPDX-License-Identifier: GPL-2.0

//! The module's counters, in one place: the ABI's counter list (`abi::ioctl`'s
//! `counters!`) declares both this running set and the `STATUS` struct it is read into.

use crate::abi::ioctl::LiveCounters;
use core::sync::atomic::{AtomicU64, Ordering};

/// Counters since module load. Static because every layer counts (the verbs layer, the
/// pager, resume) and the numbers must survive nothing but the module itself.
pub(crate) static COUNTERS: LiveCounters = LiveCounters::new();

/// Adds `n` to a counter.
pub(crate) fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
