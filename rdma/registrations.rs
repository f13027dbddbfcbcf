// SPDX-License-Identifier: GPL-2.0

//! Page sets a server connection's peer holds open (registered once per device in its
//! domain, `domain.rs`, and shared with every peer), counted by its opens.

use super::connection::*;
use super::fastreg::Registration;
use super::pages::PageSet;
use crate::counters::{count, COUNTERS};
use crate::util::remove_first;
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

impl Connection {
    /// Keeps `reg` for this peer under `key` (server side), opened once. Fails with
    /// `EEXIST` if it holds one already ([`Connection::reopen_registration`]).
    pub(crate) fn add_registration(&self, key: u64, reg: Arc<Registration>) -> Result {
        let mut regs = self.registrations.lock();
        if regs.iter().any(|r| r.key == key) {
            return Err(EEXIST);
        }
        regs.push(PeerRegistration { key, opens: 1, reg }, GFP_KERNEL)?;
        count(&COUNTERS.mrs_live, 1);
        Ok(())
    }

    /// Keeps `reg`, whose REG_MR requests were posted but may not have completed, until
    /// `teardown` has drained the QP.
    pub(crate) fn retire(&self, reg: Arc<Registration>) {
        // If even this small allocation fails, the connection is failing anyway
        // (its REG_MRs failed): dropping now is the only option left.
        let _ = self.retired.lock().push(reg, GFP_KERNEL);
    }

    /// Whether the peer holds a registration under `key` now.
    pub(crate) fn has_registration(&self, key: u64) -> bool {
        self.registrations.lock().iter().any(|r| r.key == key)
    }

    /// Opens the registration under `key` once more, if the peer holds one: a peer
    /// opening a region twice shares one hold.
    pub(crate) fn reopen_registration(&self, key: u64) -> Option<Arc<Registration>> {
        let mut regs = self.registrations.lock();
        let entry = regs.iter_mut().find(|r| r.key == key)?;
        entry.opens = entry.opens.saturating_add(1);
        Some(entry.reg.clone())
    }

    /// The registration the peer holds under `key`, without opening it again.
    pub(crate) fn registration(&self, key: u64) -> Option<Arc<Registration>> {
        let regs = self.registrations.lock();
        regs.iter().find(|r| r.key == key).map(|r| r.reg.clone())
    }

    /// Closes one open of the registration under `key`; the last close drops it.
    pub(crate) fn release_registration(&self, key: u64) {
        let mut regs = self.registrations.lock();
        let last = match regs.iter_mut().find(|r| r.key == key) {
            Some(entry) => {
                entry.opens = entry.opens.saturating_sub(1);
                entry.opens == 0
            }
            None => false,
        };
        if last {
            drop(remove_first(&mut regs, |r| r.key == key));
            COUNTERS.mrs_live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops the registration under `key` whatever its opens (its keys stop working).
    /// Returns whether there was one.
    pub(crate) fn remove_registration(&self, key: u64) -> bool {
        let removed = remove_first(&mut self.registrations.lock(), |r| r.key == key);
        if removed.is_some() {
            COUNTERS.mrs_live.fetch_sub(1, Ordering::Relaxed);
        }
        removed.is_some()
    }

    /// The registration of `pages` under `key` in this connection's device domain,
    /// shared with every peer: made now (in chunks of at most `max_chunk_pages`, and the
    /// device's fast-registration limit) if no peer's open made it before, its REG_MRs
    /// posted on this connection and waited for (bounded by `timeout_ms`), so that its
    /// keys work on every connection of the device when this returns. The caller holds
    /// `rpc_lock` (the request work of a server connection, or
    /// [`Self::register_ahead`]).
    pub(crate) fn shared_registration(
        &self,
        key: u64,
        pages: &Arc<PageSet>,
        max_chunk_pages: usize,
        timeout_ms: u32,
    ) -> Result<Arc<Registration>> {
        // SAFETY: the caller holds `rpc_lock` (see above).
        let res = unsafe { self.res()? };
        let domain = &res.domain;
        if let Some(reg) = domain.lookup(key, pages) {
            return Ok(reg);
        }
        let _making = domain.making();
        // Made by another peer's open while we waited.
        if let Some(reg) = domain.lookup(key, pages) {
            return Ok(reg);
        }
        let dev = res.dev();
        let max = dev.attrs().max_fast_reg_page_list_len as usize;
        let (reg, mut wrs) = Registration::new(
            pages.clone(),
            domain.pd(),
            dev,
            max.min(max_chunk_pages),
            self.send_waiter.cqe(),
        )?;
        let reg = Arc::new(reg, GFP_KERNEL)?;
        // SAFETY: the caller holds `rpc_lock`: the send waiter is ours.
        if let Err(e) = unsafe { self.post_regs_and_wait(res, &mut wrs, timeout_ms) } {
            // Some REG_MRs may still be queued: only teardown, after the drain, frees.
            self.retire(reg);
            return Err(e);
        }
        domain.insert(key, reg.clone())?;
        Ok(reg)
    }

    /// [`Self::shared_registration`] from outside the request work (a snapshot
    /// registered ahead of its first open): waits for `rpc_lock` (a request or RPC in
    /// progress on this connection), and does nothing unless the connection is up.
    /// Forgets what it made if `still_wanted` says no once it is shared (a release
    /// that ran meanwhile forgot before it was there).
    pub(crate) fn register_ahead(
        &self,
        key: u64,
        pages: &Arc<PageSet>,
        max_chunk_pages: usize,
        timeout_ms: u32,
        still_wanted: impl Fn() -> bool,
    ) -> Result {
        let _rpc = self.rpc_lock.lock();
        if !self.is_up() {
            return Err(crate::errno::enotconn());
        }
        self.shared_registration(key, pages, max_chunk_pages, timeout_ms)?;
        if !still_wanted() {
            self.forget_shared(key);
        }
        Ok(())
    }

    /// Drops the shared registration under `key` from this connection's device domain
    /// (peers holding it keep it until they close).
    pub(crate) fn forget_shared(&self, key: u64) {
        // SAFETY: called with `rpc_lock` held (the request work, `register_ahead`).
        if let Ok(res) = unsafe { self.res() } {
            res.domain.forget(key);
        }
    }
}
