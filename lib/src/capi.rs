//! C ABI over [`crate::Mitosis`] (header: `lib/include/mitosis.h`).
//!
//! Every function returns 0 or a negative errno; nothing panics across the boundary.

use crate::Mitosis;
use mitosis_abi::ioctl::StatusArgs;
use std::io;

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

/// Fills `*out` with the module status (`struct mitosis_status` in the header).
///
/// # Safety
///
/// `m` from `mitosis_open`; `out` valid for writing a `StatusArgs`.
#[no_mangle]
pub unsafe extern "C" fn mitosis_status(m: *const Mitosis, out: *mut StatusArgs) -> i32 {
    // SAFETY: per the contract.
    let (Some(m), false) = (unsafe { m.as_ref() }, out.is_null()) else {
        return -libc::EINVAL;
    };
    match m.status() {
        Ok(s) => {
            // SAFETY: checked non-null; valid per the contract.
            unsafe { out.write(s) };
            0
        }
        Err(e) => errno(e),
    }
}
