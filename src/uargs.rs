// SPDX-License-Identifier: GPL-2.0

//! Copying and validating ioctl argument structs (see the table in `abi/src/ioctl.rs`).

#![deny(unsafe_code)]

use crate::abi::ioctl::{Header, Pod, ABI_VERSION, MAX_ARG_SIZE};
use crate::errno;
use crate::util::RateLimit;
use kernel::prelude::*;
use kernel::uaccess::{UserPtr, UserSlice};

/// Logs at most 32 rejected-ioctl lines per second, so a misbehaving caller cannot
/// flood the log.
pub(crate) fn log_rejected(args: core::fmt::Arguments<'_>) {
    static LIMIT: RateLimit = RateLimit::new(32);
    if LIMIT.allow() {
        pr_info!("ioctl rejected: {}\n", args);
    }
}

/// Reads the argument struct `T` of `cmd` from user address `arg`.
///
/// `size` is the struct size encoded in the ioctl number: shorter than `T` is
/// `EMSGSIZE`; longer is accepted only if the extra bytes are zero (else `E2BIG`), like
/// `copy_struct_from_user()`. The header must repeat the size (`EBADMSG`) and, when
/// `check_version`, carry [`ABI_VERSION`] (`EPROTO`).
pub(crate) fn read_args<T: Pod>(
    name: &str,
    size: usize,
    arg: usize,
    check_version: bool,
) -> Result<T> {
    let want = core::mem::size_of::<T>();
    if size < want {
        log_rejected(format_args!(
            "{name}: struct of {size} bytes, at least {want} needed (EMSGSIZE)"
        ));
        return Err(errno::emsgsize());
    }
    if size > MAX_ARG_SIZE {
        log_rejected(format_args!(
            "{name}: struct of {size} bytes, over {MAX_ARG_SIZE} (E2BIG)"
        ));
        return Err(E2BIG);
    }
    let mut bytes = KVec::new();
    if UserSlice::new(arg as UserPtr, size)
        .read_all(&mut bytes, GFP_KERNEL)
        .is_err()
    {
        log_rejected(format_args!(
            "{name}: argument at {arg:#x} not readable (EFAULT)"
        ));
        return Err(EFAULT);
    }
    if bytes[want..].iter().any(|&b| b != 0) {
        log_rejected(format_args!(
            "{name}: {} unknown trailing bytes not zero (E2BIG)",
            size - want
        ));
        return Err(E2BIG);
    }
    let hdr = Header::from_bytes(&bytes).ok_or(EFAULT)?;
    if hdr.size as usize != size {
        log_rejected(format_args!(
            "{name}: header says {} bytes, ioctl number {size} (EBADMSG)",
            hdr.size
        ));
        return Err(errno::ebadmsg());
    }
    if check_version && hdr.abi_version != ABI_VERSION {
        log_rejected(format_args!(
            "{name}: ABI version {}, module speaks {ABI_VERSION} (EPROTO)",
            hdr.abi_version
        ));
        return Err(errno::eproto());
    }
    T::from_bytes(&bytes).ok_or(EFAULT)
}

/// Writes `value` back to user address `arg` (only the bytes of `T`).
pub(crate) fn write_args<T: Pod>(arg: usize, value: &T) -> Result {
    UserSlice::new(arg as UserPtr, core::mem::size_of::<T>())
        .writer()
        .write_slice(value.as_bytes())
}

/// `EINVAL` with a log line unless `ok`.
pub(crate) fn require(ok: bool, name: &str, what: &str) -> Result {
    if ok {
        return Ok(());
    }
    log_rejected(format_args!("{name}: {what} (EINVAL)"));
    Err(EINVAL)
}

/// The caller must hold `CAP_SYS_ADMIN` (host-wide effects: test regions); `EPERM`
/// with a log line otherwise.
pub(crate) fn require_admin(name: &str) -> Result {
    if crate::task::CurrentTask::get().is_admin() {
        return Ok(());
    }
    log_rejected(format_args!("{name}: needs CAP_SYS_ADMIN (EPERM)"));
    Err(EPERM)
}
