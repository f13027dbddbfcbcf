// SPDX-License-Identifier: GPL-2.0

//! Page sets registered for the peer of a server connection, shared by its opens.

use super::connection::*;
use super::fastreg::Registration;
use super::pages::PageSet;
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::util::remove_first;
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

impl Connection {
    /// Keeps `reg` for this peer under `key` (server side), opened once. Fails with
    /// `EEXIST` if there is one already ([`Connection::reopen_registration`]).
    pub(crate) fn add_registration(&self, key: u64, reg: Arc<Registration>) -> Result {
        let mut regs = self.registrations.lock();
        if regs.iter().any(|r| r.key == key) {
            return Err(EEXIST);
        }
        regs.push(PeerRegistration { key, opens: 1, reg }, GFP_KERNEL)?;
        count(&COUNTERS.mrs_live, 1);
        Ok(())
    }

    /// Keeps `reg`, whose REG_MR requests were posted but may not have completed (its
    /// reply failed), until `teardown` has drained the QP.
    pub(crate) fn retire(&self, reg: Arc<Registration>) {
        // If even this small allocation fails, the connection is failing anyway
        // (the reply failed): dropping now is the only option left.
        let _ = self.retired.lock().push(reg, GFP_KERNEL);
    }

    /// Whether the peer holds a registration under `key` now.
    pub(crate) fn has_registration(&self, key: u64) -> bool {
        self.registrations.lock().iter().any(|r| r.key == key)
    }

    /// Opens the registration under `key` once more and returns its chunk size and rkeys,
    /// if there is one: a peer opening a region twice shares one registration.
    pub(crate) fn reopen_registration(&self, key: u64) -> Result<Option<(u64, KVec<u32>)>> {
        let mut regs = self.registrations.lock();
        let Some(entry) = regs.iter_mut().find(|r| r.key == key) else {
            return Ok(None);
        };
        let keys = keys_of(&entry.reg)?;
        entry.opens = entry.opens.saturating_add(1);
        Ok(Some(keys))
    }

    /// The chunk size, rkeys and page count of the registration under `key`, without
    /// opening it again, if there is one.
    pub(crate) fn registration_keys(&self, key: u64) -> Result<Option<(u64, KVec<u32>, usize)>> {
        let regs = self.registrations.lock();
        regs.iter()
            .find(|r| r.key == key)
            .map(|r| keys_of(&r.reg).map(|(c, k)| (c, k, r.reg.page_count())))
            .transpose()
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

    /// Registers `pages` for this peer only (its connection's PD), in chunks of at most
    /// `max_chunk_pages` (and the device's fast-registration limit); returns the
    /// registration and the REG_MR requests to post before the reply that hands out
    /// its keys (server side, from the request work).
    pub(crate) fn register_for_peer(
        &self,
        pages: Arc<PageSet>,
        max_chunk_pages: usize,
    ) -> Result<(Registration, KVec<bindings::ib_reg_wr>)> {
        // SAFETY: called from this connection's request work, which holds `rpc_lock`
        // (type invariant).
        let res = unsafe { self.res()? };
        let dev = res.dev();
        let max = dev.attrs().max_fast_reg_page_list_len as usize;
        Registration::new(
            pages,
            &res.pd,
            dev,
            max.min(max_chunk_pages),
            self.reply_cqe(),
        )
    }
}

/// The chunk size and rkeys of `reg`.
fn keys_of(reg: &Registration) -> Result<(u64, KVec<u32>)> {
    Ok((reg.chunk_bytes(), reg.rkey_vec()?))
}
