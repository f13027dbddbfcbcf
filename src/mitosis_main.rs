// SPDX-License-Identifier: GPL-2.0

//! Mitosis: remote fork for serverless computing, as a loadable module.
//!
//! Where things are:
//! - `chardev.rs`: `/dev/mitosis` and ioctl dispatch (argument validation in `uargs.rs`);
//! - `state.rs`: the module-wide state (devices, connection pool, counters);
//! - `capture.rs`: fork_prepare: a seed task captured into a snapshot;
//! - `restore.rs`: fork_resume: a snapshot restored into the calling launcher;
//! - `pager.rs`: the snapshot-file pager, where a child's page faults are served;
//! - `mm.rs`: mmap-lock guards and VMA views;
//! - `region.rs`: page sets published for peers (test regions and snapshots);
//! - `control.rs`: control messages served to peers (open/close region);
//! - `remote.rs`: regions of peers opened by this host and read with RDMA READ;
//! - `../rdma/`: safe Rust over kernel verbs (device discovery, PD/CQ, RC QPs via
//!   rdma_cm, fast registration, batched READs, completions with timeout);
//! - `../abi/src/`: the ioctl ABI and wire format, shared with user space;
//! - `../ffi/`: generated bindings and the one-line C helpers.

#![recursion_limit = "512"]

use kernel::prelude::*;

/// The generated bindings (see `scripts/gen-bindings.sh`).
#[path = "../ffi/bindings.rs"]
mod bindings;

/// The ABI crate's sources, compiled into the module.
#[path = "../abi/src"]
#[allow(unreachable_pub, missing_docs, dead_code, clippy::all)]
mod abi {
    pub(crate) mod ioctl;
    pub(crate) mod snapshot;
    pub(crate) mod wire;
}

#[path = "../rdma/mod.rs"]
mod rdma;

mod capture;
mod chardev;
mod control;
mod errno;
mod mm;
mod pager;
mod region;
mod remote;
mod restore;
mod state;
mod uargs;
mod util;

module! {
    type: MitosisModule,
    name: "mitosis",
    author: "Mitosis developers",
    description: "Remote fork over RDMA for serverless computing",
    license: "GPL",
}

/// Version string reported by the VERSION ioctl.
pub(crate) const MODULE_VERSION: &str = "0.1.0";

struct MitosisModule {
    state: Pin<KBox<state::Mitosis>>,
}

impl kernel::Module for MitosisModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        check_layout()?;
        let state = state::Mitosis::start(module)?;
        pr_info!("loaded (ABI {})\n", abi::ioctl::ABI_VERSION);
        Ok(MitosisModule { state })
    }
}

impl Drop for MitosisModule {
    fn drop(&mut self) {
        self.state.as_ref().stop();
        pr_info!("unloaded\n");
    }
}

/// The kernel structs whose fields the module reads must have the layout the compiler
/// gave them (bindgen and C disagreeing would mean reading the wrong fields).
fn check_layout() -> Result {
    use bindings::*;
    use core::mem::{offset_of, size_of};
    let mut c = [0 as kernel::ffi::c_ulong; 12];
    // SAFETY: `c` has room for the 12 values the helper writes.
    unsafe { mitosis_layout(c.as_mut_ptr()) };
    let rust = [
        size_of::<mm_struct>(),
        offset_of!(mm_struct, __bindgen_anon_1) + offset_of!(mm_struct__bindgen_ty_1, start_brk),
        size_of::<vm_area_struct>(),
        offset_of!(vm_area_struct, vm_file),
        size_of::<file>(),
        offset_of!(file, __bindgen_anon_2),
        offset_of!(inode, i_private),
        offset_of!(inode, i_data),
        offset_of!(super_block, s_iflags),
        offset_of!(fpstate, regs),
        size_of::<k_sigaction>(),
        offset_of!(file, f_inode),
    ];
    if rust
        .iter()
        .zip(c.iter())
        .any(|(r, c)| *r as u64 != *c as u64)
    {
        pr_err!(
            "generated bindings disagree with the kernel's struct layout: rust {:?} c {:?}\n",
            rust,
            c
        );
        return Err(kernel::error::code::EINVAL);
    }
    Ok(())
}
