// SPDX-License-Identifier: GPL-2.0

//! The module's own bindings: RDMA verbs, RDMA CM, miscdevice, completions, work items
//! and the C helpers. Generated at build time by `scripts/gen-bindings.sh`.

#![allow(
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::all
)]

// Blocklisted by the kernel's bindgen flags and mapped by hand, as in `rust/bindings`.
pub type __kernel_size_t = usize;
pub type __kernel_ssize_t = isize;
pub type __kernel_ptrdiff_t = isize;

include!("bindings_generated.rs");
