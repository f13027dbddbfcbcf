// SPDX-License-Identifier: GPL-2.0

//! One protection domain per device, shared by every connection on it, and the page
//! sets registered in it once for every peer.
//!
//! A snapshot is registered once (right after its prepare, or by the first open from
//! any host), not once per host: a host's open only hands out the keys, whatever the
//! snapshot's size.
//! What keeps a peer to the snapshots it holds the secret of is not its own PD any
//! more but what a READ must name: an rkey with a fresh key byte and an address inside
//! a registration's I/O address range, which starts at a random page-aligned base
//! (about 2^50 choices) that only the open's reply carries. A wrong guess moves the
//! guessing peer's connection to the error state (an RC responder's remote access
//! error), so each guess costs a new connection. docs/design.md has the argument.

use super::device::IbDevice;
use super::fastreg::Registration;
use super::pages::PageSet;
use super::verbs::Pd;
use crate::bindings;
use crate::util::remove_first;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

/// A device's protection domain and the registrations shared in it.
///
/// # Invariants
///
/// `dev` is the registered device `pd` was allocated on (only compared). The device
/// client drops its `Domain` when the device goes, after every connection on it was
/// torn down; registrations hold the PD (an `Arc`), so it outlives their MRs.
#[pin_data]
pub(crate) struct Domain {
    dev: *mut bindings::ib_device,
    /// Registered page sets by key (a region id, or its packed copy's key), dropped
    /// before the PD.
    #[pin]
    shared: Mutex<KVec<Shared>>,
    /// Held while a registration is made, so that concurrent first opens of one
    /// snapshot from several hosts make it once.
    #[pin]
    making: Mutex<()>,
    pd: Arc<Pd>,
}

struct Shared {
    key: u64,
    reg: Arc<Registration>,
}

// SAFETY: `dev` is only compared; the PD and the lists are usable from any thread.
unsafe impl Send for Domain {}
// SAFETY: as above; shared state is under mutexes.
unsafe impl Sync for Domain {}

impl Domain {
    /// A new domain on the registered device `dev`.
    pub(super) fn new(dev: &IbDevice) -> Result<Arc<Self>> {
        let pd = Arc::new(Pd::new(dev)?, GFP_KERNEL)?;
        Arc::pin_init(
            pin_init!(Domain {
                dev: dev.as_ptr(),
                shared <- new_mutex!(KVec::new()),
                making <- new_mutex!(()),
                pd,
            }),
            GFP_KERNEL,
        )
    }

    pub(super) fn is_on(&self, dev: *mut bindings::ib_device) -> bool {
        self.dev == dev
    }

    /// The device (registered while the domain is in the device client's list).
    pub(super) fn device_ptr(&self) -> *mut bindings::ib_device {
        self.dev
    }

    pub(crate) fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// The registration of exactly `pages` under `key`, if one was made.
    pub(super) fn lookup(&self, key: u64, pages: &Arc<PageSet>) -> Option<Arc<Registration>> {
        self.shared
            .lock()
            .iter()
            .find(|s| s.key == key && s.reg.covers(pages))
            .map(|s| s.reg.clone())
    }

    /// Serialises the making of registrations (see the field).
    pub(super) fn making(
        &self,
    ) -> kernel::sync::lock::Guard<'_, (), kernel::sync::lock::mutex::MutexBackend> {
        self.making.lock()
    }

    /// Keeps `reg` under `key`, replacing an older one (a packed copy made again):
    /// peers that were given the older one keep it through their own references.
    pub(super) fn insert(&self, key: u64, reg: Arc<Registration>) -> Result {
        let mut shared = self.shared.lock();
        match shared.iter_mut().find(|s| s.key == key) {
            Some(s) => s.reg = reg,
            None => shared.push(Shared { key, reg }, GFP_KERNEL)?,
        }
        Ok(())
    }

    /// Drops the registration under `key` (a snapshot's release): its keys stop
    /// working once no peer's open holds it either.
    pub(crate) fn forget(&self, key: u64) -> bool {
        remove_first(&mut self.shared.lock(), |s| s.key == key).is_some()
    }
}
