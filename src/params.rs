// SPDX-License-Identifier: GPL-2.0

//! The module parameters (declared in `ffi/helpers.c` with `module_param_named`), read
//! through typed accessors that apply their bounds. The writable ones (0644) may change
//! at any time, so each read is one volatile load of a plain integer.

use crate::bindings;
use core::ptr;

/// Upper bound of every timeout (module parameters and per-call values): a wait on
/// the network never blocks longer.
pub(crate) const MAX_TIMEOUT_MS: u32 = 60_000;

/// Largest readahead window, in pages.
const MAX_PREFETCH_PAGES: u32 = 256;

/// Readahead window of snapshot files, in pages.
pub(crate) fn prefetch_pages() -> u32 {
    // SAFETY: a module parameter: a plain, always-initialised integer.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_prefetch_pages)) }
        .min(MAX_PREFETCH_PAGES)
}

/// Most windows read ahead of a sequential reader.
pub(crate) const MAX_READAHEAD_WINDOWS: u32 = 4;

/// Windows read ahead of a child reading a VMA in sequence (0: none).
pub(crate) fn readahead_windows() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_readahead_windows)) }
        .min(MAX_READAHEAD_WINDOWS)
}

/// Bound of a connection's setup (address, route, handshake).
pub(crate) fn connect_timeout_ms() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_connect_timeout_ms)) }
        .clamp(1, MAX_TIMEOUT_MS)
}

/// Bound of one request or READ batch on an established connection.
pub(crate) fn io_timeout_ms() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_io_timeout_ms)) }
        .clamp(1, MAX_TIMEOUT_MS)
}

/// Whether children may be resumed only by callers without privilege (see
/// `CurrentTask::is_unprivileged`).
pub(crate) fn unprivileged_children() -> bool {
    // SAFETY: as above (a `bool` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_unprivileged_children)) }
}

/// Whether captures hold pages with long-term pins instead of references.
pub(crate) fn pin_pages() -> bool {
    // SAFETY: as above (a `bool` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_pin_pages)) }
}

/// Whether resumes map clean file mappings from this host's own files (`vfs.rs`).
pub(crate) fn local_files() -> bool {
    // SAFETY: as above (a `bool` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_local_files)) }
}

/// The `working_set` parameter: 0, 1 or 2 (anything else counts as 1).
fn working_set_mode() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_working_set)) }
}

/// Whether snapshots' working sets are recorded, reported and replayed.
pub(crate) fn working_set() -> bool {
    working_set_mode() != 0
}

/// Whether a resume may replay this host's own record (else only the parent's).
pub(crate) fn working_set_local() -> bool {
    working_set_mode() != 2
}

/// Whether a resume reads the snapshot's lead pages with its descriptor.
pub(crate) fn lead_pages() -> bool {
    // SAFETY: as above (a `bool` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_lead_pages)) }
}

/// Whether a resume may go through a lingering open without an RPC while the
/// snapshot's status page says it is live and unchanged.
pub(crate) fn reuse_open() -> bool {
    // SAFETY: as above (a `bool` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_reuse_open)) }
}

/// Longest `open_linger_ms`.
const MAX_LINGER_MS: u32 = 60_000;

/// How long a host keeps its open of a snapshot at the parent after the snapshot's
/// last child here exited.
pub(crate) fn open_linger_ms() -> u32 {
    // SAFETY: as above (a `uint` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_open_linger_ms)) }
        .min(MAX_LINGER_MS)
}

/// Whether a resume prefetches its working set in the background while the child runs.
pub(crate) fn replay_async() -> bool {
    // SAFETY: as above (a `bool` parameter).
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_replay_async)) }
}

/// Most local pages (scatter entries) one READ request may carry.
pub(crate) const MAX_READ_PAGES_PER_WR: u32 = 16;

/// READ batches one connection runs at once (1 to `max`, the connection's slots).
pub(crate) fn read_batches(max: usize) -> usize {
    // SAFETY: as above.
    let v = unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_read_batches)) };
    (v as usize).clamp(1, max)
}

/// Most first-touch pages a resume reads in its descriptor batch (at most `max`).
pub(crate) fn first_touch_pages(max: usize) -> usize {
    // SAFETY: as above.
    let v = unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_first_touch_pages)) };
    (v as usize).min(max)
}

/// Most contiguous pages one READ request carries (at least 1).
pub(crate) fn read_pages_per_wr() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_read_pages_per_wr)) }
        .clamp(1, MAX_READ_PAGES_PER_WR)
}

/// Longest `keep_ms`: an hour.
const MAX_KEEP_MS: u32 = 3_600_000;

/// How long a snapshot's pages stay on this host after its last child here exited.
pub(crate) fn keep_ms() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_keep_ms)) }.min(MAX_KEEP_MS)
}

/// The port the listener accepts peers on (0: no listener).
pub(crate) fn listen_port() -> u16 {
    // SAFETY: read-only module parameter (0444), set before `init`.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_listen_port)) }
}

/// The only RDMA device name connections may use; empty for any.
pub(crate) fn device_name() -> &'static [u8] {
    // SAFETY: a read-only (0444) string parameter, set before `init` and never freed
    // while the module is loaded.
    let p = unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_device)) };
    if p.is_null() {
        return b"";
    }
    // SAFETY: as above; the string is NUL-terminated.
    unsafe { kernel::str::CStr::from_char_ptr(p) }.as_bytes()
}
