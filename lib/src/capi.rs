//! C ABI over [`crate::Mitosis`] (header: `lib/include/mitosis.h`).
//!
//! Every function returns 0 or a negative errno; nothing panics across the boundary.

use crate::{Forked, Mitosis, ResumeOptions, Resumed, SnapshotHandle};
use mitosis_abi::ioctl::StatusArgs;
use std::ffi::{c_char, CStr};
use std::io;
use std::sync::Mutex;

/// What a resumed child learns from its resume (`struct mitosis_resumed`): times in
/// nanoseconds of `CLOCK_MONOTONIC`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// When the resume call entered the module (the kernel's clock, without a time
    /// namespace's offset).
    pub resume_start_ns: u64,
    /// From then to the child's first instruction.
    pub resume_ns: u64,
    /// Of which in the module: all of it, then getting the connection, the open RPC,
    /// and reading the descriptor batch and any working-set record.
    pub in_module_ns: u64,
    pub connect_ns: u64,
    pub open_ns: u64,
    pub fetch_ns: u64,
    /// Pages read before the child ran: all (eager), or those of the descriptor's
    /// batch and the working-set record.
    pub eager_pages: u64,
    pub prefetched_pages: u64,
    /// Network round trips of the call (RPCs and READ doorbells).
    pub round_trips: u64,
}

impl From<&Resumed> for ResumeReport {
    fn from(r: &Resumed) -> Self {
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        ResumeReport {
            resume_start_ns: r.resume_start_ns,
            resume_ns: ns(r.resume),
            in_module_ns: ns(r.in_module),
            connect_ns: ns(r.connect),
            open_ns: ns(r.open),
            fetch_ns: ns(r.fetch),
            eager_pages: r.eager_pages,
            prefetched_pages: r.prefetched_pages,
            round_trips: r.round_trips,
        }
    }
}

/// The report of the resume that made this process (set in the child, where
/// `mitosis_fork_prepare` returns 0).
static RESUMED: Mutex<Option<ResumeReport>> = Mutex::new(None);

fn errno(e: io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens `/dev/mitosis`; on success stores a handle in `*out`.
///
/// # Safety
///
/// `out` must be a valid pointer to write a pointer to.
#[no_mangle]
pub unsafe extern "C" fn mitosis_open(out: *mut *mut Mitosis) -> i32 {
    if out.is_null() {
        return -libc::EINVAL;
    }
    match Mitosis::open() {
        Ok(m) => {
            // SAFETY: `out` is valid per the contract.
            unsafe { *out = Box::into_raw(Box::new(m)) };
            0
        }
        Err(e) => errno(e),
    }
}

/// Closes a handle from [`mitosis_open`] (NULL is ignored).
///
/// # Safety
///
/// `m` must come from `mitosis_open` and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn mitosis_close(m: *mut Mitosis) {
    if !m.is_null() {
        // SAFETY: `m` came from `Box::into_raw` in `mitosis_open`.
        drop(unsafe { Box::from_raw(m) });
    }
}

/// Pings the module; stores its ABI version in `*abi_version`.
///
/// # Safety
///
/// `m` from `mitosis_open`; `abi_version` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn mitosis_version(m: *const Mitosis, abi_version: *mut u32) -> i32 {
    // SAFETY: per the contract.
    let (Some(m), false) = (unsafe { m.as_ref() }, abi_version.is_null()) else {
        return -libc::EINVAL;
    };
    match m.version() {
        Ok(v) => {
            // SAFETY: checked non-null; valid per the contract.
            unsafe { *abi_version = v.abi_version };
            0
        }
        Err(e) => errno(e),
    }
}

/// Fills `*out` (`out_size` bytes, normally `sizeof(struct mitosis_status)`) with the
/// module status. A caller built against an older, shorter struct gets its prefix; a
/// longer one gets zeros past what this library knows. Sizes below the fixed part
/// (header, counts, devices) are refused with `-EINVAL`.
///
/// # Safety
///
/// `m` from `mitosis_open`; `out` valid for writing `out_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn mitosis_status(
    m: *const Mitosis,
    out: *mut StatusArgs,
    out_size: usize,
) -> i32 {
    // SAFETY: per the contract.
    let (Some(m), false) = (unsafe { m.as_ref() }, out.is_null()) else {
        return -libc::EINVAL;
    };
    if out_size < core::mem::offset_of!(StatusArgs, counters) {
        return -libc::EINVAL;
    }
    match m.status() {
        Ok(s) => {
            // SAFETY: `out` is valid for `out_size` bytes (contract).
            unsafe { copy_prefix(&s, out, out_size) };
            0
        }
        Err(e) => errno(e),
    }
}

/// The common arguments of resume and release: a handle, a handle string and one flag
/// bit.
///
/// # Safety
///
/// `m` is null or from `mitosis_open`; `handle` is null or a valid C string.
unsafe fn fork_args<'a>(
    m: *const Mitosis,
    handle: *const c_char,
    flags: u32,
) -> Result<(&'a Mitosis, SnapshotHandle), i32> {
    // SAFETY: per the contract.
    let m = unsafe { m.as_ref() }.ok_or(-libc::EINVAL)?;
    if flags & !1 != 0 {
        return Err(-libc::EINVAL);
    }
    // SAFETY: per the contract.
    Ok((m, unsafe { handle_arg(handle) }?))
}

/// Parses a NUL-terminated handle string.
///
/// # Safety
///
/// `s` is null or a valid C string.
unsafe fn handle_arg(s: *const c_char) -> Result<SnapshotHandle, i32> {
    if s.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: per the contract.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str()
        .map_err(|_| -libc::EINVAL)?
        .parse()
        .map_err(|_| -libc::EINVAL)
}

/// Snapshots the caller: 1 in the caller (handle text in `handle`), 0 in each
/// resumed child, or a negative errno.
///
/// # Safety
///
/// `m` from `mitosis_open`; `handle` valid for writing `handle_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mitosis_fork_prepare(
    m: *const Mitosis,
    handle: *mut c_char,
    handle_len: u32,
) -> i32 {
    // SAFETY: per the contract.
    let (Some(m), false) = (unsafe { m.as_ref() }, handle.is_null()) else {
        return -libc::EINVAL;
    };
    match m.fork_prepare() {
        Ok(Forked::Child(r)) => {
            // The seed was single-threaded, so no one holds the lock in the child.
            if let Ok(mut last) = RESUMED.lock() {
                *last = Some(ResumeReport::from(&r));
            }
            0
        }
        Ok(Forked::Parent(p)) => {
            let text = p.handle.to_string();
            if text.len() + 1 > handle_len as usize {
                let _ = m.fork_release(&p.handle, false);
                return -libc::ENAMETOOLONG;
            }
            // SAFETY: `handle` has room for the text and its NUL (checked).
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), handle.cast(), text.len());
                *handle.add(text.len()) = 0;
            }
            1
        }
        Err(e) => errno(e),
    }
}

/// In a resumed child, fills `*out` (`out_size` bytes, normally
/// `sizeof(struct mitosis_resumed)`) with the report of the resume that made this
/// process; a shorter struct gets its prefix, a longer one zeros past it. `-ENOENT`
/// in a process that was not resumed, `-EINVAL` for a null `out` or a size below 8.
///
/// # Safety
///
/// `out` valid for writing `out_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn mitosis_resumed(out: *mut ResumeReport, out_size: usize) -> i32 {
    if out.is_null() || out_size < core::mem::size_of::<u64>() {
        return -libc::EINVAL;
    }
    let Some(r) = RESUMED.lock().ok().and_then(|last| *last) else {
        return -libc::ENOENT;
    };
    // SAFETY: `out` is valid for `out_size` bytes (contract).
    unsafe { copy_prefix(&r, out, out_size) };
    0
}

/// The size-taking copy-out of the C ABI: the first `out_size` bytes of `src` to
/// `out`, zeros past the end of `src` when the caller's struct is longer.
///
/// # Safety
///
/// `out` valid for writing `out_size` bytes; `T` a plain `repr(C)` struct of integers.
unsafe fn copy_prefix<T: Copy>(src: &T, out: *mut T, out_size: usize) {
    let n = out_size.min(core::mem::size_of::<T>());
    // SAFETY: `src` spans `size_of::<T>() >= n` bytes; `out` spans `out_size` bytes
    // (contract), `n` of them copied and the rest zeroed.
    unsafe {
        let dst = out.cast::<u8>();
        core::ptr::copy_nonoverlapping((src as *const T).cast::<u8>(), dst, n);
        core::ptr::write_bytes(dst.add(n), 0, out_size - n);
    }
}

/// Becomes a child of the snapshot; returns only on failure (negative errno).
///
/// # Safety
///
/// `m` from `mitosis_open`; `handle` a C string.
#[no_mangle]
pub unsafe extern "C" fn mitosis_fork_resume(
    m: *const Mitosis,
    handle: *const c_char,
    flags: u32,
) -> i32 {
    // SAFETY: per the contract.
    let (m, h) = match unsafe { fork_args(m, handle, flags) } {
        Ok(v) => v,
        Err(e) => return e,
    };
    let opts = ResumeOptions {
        eager: flags & 1 != 0,
        ..Default::default()
    };
    errno(m.fork_resume(&h, opts))
}

/// Ends a snapshot of this host (`MITOSIS_RELEASE_FORCE`: children lose access too).
///
/// # Safety
///
/// `m` from `mitosis_open`; `handle` a C string.
#[no_mangle]
pub unsafe extern "C" fn mitosis_fork_release(
    m: *const Mitosis,
    handle: *const c_char,
    flags: u32,
) -> i32 {
    // SAFETY: per the contract.
    let (m, h) = match unsafe { fork_args(m, handle, flags) } {
        Ok(v) => v,
        Err(e) => return e,
    };
    match m.fork_release(&h, flags & 1 != 0) {
        Ok(()) => 0,
        Err(e) => errno(e),
    }
}
