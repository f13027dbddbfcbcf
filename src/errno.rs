// SPDX-License-Identifier: GPL-2.0

//! Errno values the `kernel` crate does not name, as [`Error`]s.

use crate::bindings;
use kernel::prelude::*;

/// `-errno` as an [`Error`] (`errno` is a positive `E*` constant).
pub(crate) fn err(errno: u32) -> Error {
    Error::from_errno(-(errno as i32))
}

pub(crate) fn emsgsize() -> Error {
    err(bindings::EMSGSIZE)
}
pub(crate) fn eproto() -> Error {
    err(bindings::EPROTO)
}
pub(crate) fn ebadmsg() -> Error {
    err(bindings::EBADMSG)
}
pub(crate) fn eremoteio() -> Error {
    err(bindings::EREMOTEIO)
}
pub(crate) fn etimedout() -> Error {
    err(bindings::ETIMEDOUT)
}
pub(crate) fn econnrefused() -> Error {
    err(bindings::ECONNREFUSED)
}
pub(crate) fn ehostunreach() -> Error {
    err(bindings::EHOSTUNREACH)
}
pub(crate) fn enotconn() -> Error {
    err(bindings::ENOTCONN)
}
pub(crate) fn econnreset() -> Error {
    err(bindings::ECONNRESET)
}
pub(crate) fn eacces() -> Error {
    err(bindings::EACCES)
}
pub(crate) fn erange() -> Error {
    err(bindings::ERANGE)
}
pub(crate) fn eaddrinuse() -> Error {
    err(bindings::EADDRINUSE)
}
pub(crate) fn eopnotsupp() -> Error {
    err(bindings::EOPNOTSUPP)
}
