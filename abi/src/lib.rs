// SPDX-License-Identifier: GPL-2.0

//! The Mitosis ABI, defined once.
//!
//! This crate is `no_std` and has no dependencies: the kernel module compiles the same
//! source files (`#[path]` modules) and the user-space library depends on it as a crate,
//! so the two sides cannot drift. It holds:
//!
//! - [`ioctl`]: the `/dev/mitosis` ioctl numbers and their `#[repr(C)]` argument structs,
//!   every one with explicit sizes and padding, and a size check at compile time;
//! - [`wire`]: the control messages exchanged between hosts over RDMA SEND/RECV, with a
//!   bounds-checked little-endian codec.
//!
//! See `docs/abi.md` for the reference.

#![no_std]

pub mod ioctl;
pub mod mac;
pub mod packed;
pub mod snapshot;
pub mod wire;
pub mod xsave;
