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
//! - `packed.rs`: working sets compressed by a parent, unpacked by a child's host;
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

/// Compile-time checks of those bindings against the C compiler's layout (see
/// `scripts/gen-layout.sh` and `ffi/layout.list`).
mod layout {
    include!("../ffi/layout_generated.rs");
}

/// The ABI crate's sources, compiled into the module.
#[path = "../abi/src"]
#[allow(unreachable_pub, missing_docs, dead_code, clippy::all)]
mod abi {
    pub(crate) mod ioctl;
    pub(crate) mod mac;
    pub(crate) mod packed;
    pub(crate) mod snapshot;
    pub(crate) mod wire;
    pub(crate) mod xsave;
}

#[path = "../rdma/mod.rs"]
mod rdma;

mod capture;
mod chardev;
mod control;
mod counters;
mod errno;
mod fpu;
mod lzo;
mod miscdev;
mod mm;
mod packed;
mod page_table;
mod pager;
mod params;
mod readahead;
mod region;
mod register_ahead;
mod remote;
mod replay;
mod restore;
mod snapfs;
mod state;
mod task;
mod uargs;
mod util;
mod vfs;
mod working_set;

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
    /// Everything the module runs; dropping it is the unload (see `state.rs`).
    _state: Pin<KBox<state::Mitosis>>,
}

impl kernel::Module for MitosisModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let state = KBox::pin_init(state::Mitosis::start(module), GFP_KERNEL)?;
        pr_info!("loaded (ABI {})\n", abi::ioctl::ABI_VERSION);
        Ok(MitosisModule { _state: state })
    }
}

impl Drop for MitosisModule {
    fn drop(&mut self) {
        // `_state` is dropped after this, its fields in unload order.
        pr_info!("unloading\n");
    }
}
