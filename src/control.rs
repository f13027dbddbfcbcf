// SPDX-License-Identifier: GPL-2.0

//! Control requests served to peers (server side of a connection, workqueue context).
//!
//! `OpenRegion` (id + secret) registers the region's pages for that peer only (fast-reg
//! MRs on the peer's connection PD) and replies with their keys; `CloseRegion` drops the
//! registration. A wrong secret or an unknown id gets a distinct errno in the reply and a
//! log line; a malformed message is logged and dropped.

#![deny(unsafe_code)]

use crate::abi::wire::{
    self, CloseRegion, Kind, OpenRegion, OpenRegionReply, RegionFacts, WorkingSetParts,
    WorkingSetReport,
};
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::params;
use crate::rdma::connection::{Connection, Ipv4};
use crate::region::Region;
use crate::state::Host;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Most pages one fast-reg MR covers (the device may allow fewer).
pub(crate) const MAX_CHUNK_PAGES: usize = 512;

/// Log lines a peer triggers with its requests: at most this many per second.
static LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);

/// Serves one request of a server connection (the host's [`Owner::request`]).
///
/// [`Owner::request`]: crate::rdma::connection::Owner::request
pub(crate) fn handle_request(host: &Host, conn: &Connection, msg: &[u8]) {
    let (hdr, body) = match wire::decode(msg) {
        Ok(v) => v,
        Err(e) => {
            if LOG.allow() {
                pr_warn!(
                    "malformed control message from {} ({:?}), dropped\n",
                    Ipv4(conn.peer().0),
                    e
                );
            }
            return;
        }
    };
    match hdr.kind {
        Kind::OpenRegion => {
            let status = match OpenRegion::decode(body) {
                Ok(req) => match open_region(host, conn, hdr.seq, &req) {
                    Ok(()) => return,
                    Err(e) => e,
                },
                Err(_) => errno::ebadmsg(),
            };
            count(&COUNTERS.region_opens_refused, 1);
            let _ = conn.reply(params::io_timeout_ms(), &mut [], |buf| {
                wire::encode_status(Kind::OpenRegionReply, hdr.seq, status.to_errno(), buf)
                    .map_err(|_| EINVAL)
            });
        }
        Kind::CloseRegion => {
            if let Ok(req) = CloseRegion::decode(body) {
                conn.release_registration(req.region_id);
                // The packed copy's registration goes with the region's last open.
                if !conn.has_registration(req.region_id) {
                    conn.remove_registration(packed_key(req.region_id));
                }
            }
        }
        Kind::WorkingSet => match WorkingSetReport::decode(body) {
            Ok(report) => take_working_set(host, conn, &report),
            Err(e) => {
                if LOG.allow() {
                    pr_warn!(
                        "malformed working set from {} ({:?}), dropped\n",
                        Ipv4(conn.peer().0),
                        e
                    );
                }
            }
        },
        Kind::OpenRegionReply => {
            if LOG.allow() {
                pr_warn!("unexpected reply from {}, dropped\n", Ipv4(conn.peer().0));
            }
        }
    }
}

/// A peer's working set of a snapshot: kept if the peer opened that snapshot on this
/// connection (so proved its secret) and it is the first. A peer can only name pages
/// of snapshots it may read anyway; children check every page against the descriptor.
fn take_working_set(host: &Host, conn: &Connection, report: &WorkingSetReport<'_>) {
    let region = host
        .find_region(report.region_id)
        .filter(|r| conn.has_registration(r.id));
    let Some(region) = region else {
        if LOG.allow() {
            pr_warn!(
                "{} reported a working set of region {} it has not opened, dropped\n",
                Ipv4(conn.peer().0),
                report.region_id
            );
        }
        return;
    };
    let runs = (0..report.n_runs()).filter_map(|i| report.run(i));
    let hot = (0..report.n_hot()).filter_map(|i| report.hot(i));
    if region.offer_working_set((report.n_runs(), runs), (report.n_hot(), hot)) {
        count(&COUNTERS.ws_reports_kept, 1);
        crate::packed::start(host, region);
    }
}

/// The key of region `id`'s packed working set among a connection's registrations
/// (region ids count up from 1 and never reach the top bit).
pub(crate) fn packed_key(id: u64) -> u64 {
    id | 1 << 63
}

/// Ends every registration of region `id` on `conn` now, its packed copy's too.
pub(crate) fn revoke(conn: &Connection, id: u64) {
    conn.remove_registration(id);
    conn.remove_registration(packed_key(id));
}

/// The packed working set granted to one open: its pages and keys, and the
/// registration made for it now (if the peer had none), to undo if the reply fails.
#[derive(Default)]
struct PackedGrant {
    pages: u32,
    rkeys: KVec<u32>,
    made: Option<Arc<crate::rdma::fastreg::Registration>>,
}

impl PackedGrant {
    /// The region's packed copy for the peer of `conn`, registered under
    /// [`packed_key`] unless it is already (a peer keeps the copy it was first given
    /// while it holds the region open: deregistering under its READs would fail its
    /// connection), with the REG_MRs to post appended to `wrs`. Nothing when there is
    /// no copy or it cannot be granted: the copy is a hint.
    fn for_peer(
        conn: &Connection,
        region: &Region,
        chunk_bytes: u64,
        n_keys: usize,
        wrs: &mut KVec<crate::bindings::ib_reg_wr>,
    ) -> Self {
        Self::try_for_peer(conn, region, chunk_bytes, n_keys, wrs).unwrap_or_default()
    }

    fn try_for_peer(
        conn: &Connection,
        region: &Region,
        chunk_bytes: u64,
        n_keys: usize,
        wrs: &mut KVec<crate::bindings::ib_reg_wr>,
    ) -> Result<Self> {
        let key = packed_key(region.id);
        // Same layout as the region's keys, and room in the reply.
        let fits = |c: u64, n: usize| {
            c == chunk_bytes && n_keys.saturating_add(n) <= wire::MAX_REPLY_RKEYS
        };
        if let Some((c, rkeys, pages)) = conn.registration_keys(key)? {
            if !fits(c, rkeys.len()) {
                return Err(E2BIG);
            }
            let pages = u32::try_from(pages).map_err(|_| E2BIG)?;
            return Ok(PackedGrant {
                pages,
                rkeys,
                made: None,
            });
        }
        let copy = region.packed().ok_or(ENOENT)?;
        let pages = u32::try_from(copy.len()).map_err(|_| E2BIG)?;
        let (reg, new_wrs) = conn.register_for_peer(copy, MAX_CHUNK_PAGES)?;
        let rkeys = reg.rkey_vec()?;
        if !fits(reg.chunk_bytes(), rkeys.len()) {
            return Err(E2BIG);
        }
        wrs.reserve(new_wrs.len(), GFP_KERNEL)?;
        let reg = Arc::new(reg, GFP_KERNEL)?;
        conn.add_registration(key, reg.clone())?;
        // A forced release that swept this connection before the add: undo (nothing
        // was posted yet).
        if !region.is_live() {
            conn.remove_registration(key);
            return Err(ENOENT);
        }
        // Within the capacity reserved above: no allocation.
        wrs.extend_from_slice(&new_wrs, GFP_KERNEL)?;
        Ok(PackedGrant {
            pages,
            rkeys,
            made: Some(reg),
        })
    }

    /// The reply that carried the grant failed: a registration made for it goes (its
    /// REG_MRs may still be queued: only teardown, after the drain, frees it).
    fn undo(self, conn: &Connection, region_id: u64) {
        if let Some(reg) = self.made {
            conn.remove_registration(packed_key(region_id));
            conn.retire(reg);
        }
    }
}

fn open_region(host: &Host, conn: &Connection, seq: u64, req: &OpenRegion) -> Result {
    let peer = Ipv4(conn.peer().0);
    // An unknown (or released) id gets the same answer as a wrong secret: a peer
    // must not learn which ids exist.
    let region = host.find_region(req.region_id).ok_or_else(|| {
        if LOG.allow() {
            pr_info!("{} asked for unknown region {}\n", peer, req.region_id);
        }
        errno::eacces()
    })?;
    // The server side of every connection has its challenge from the accept.
    let challenge = conn.challenge().ok_or_else(errno::eacces)?;
    if !region.proof_matches(&challenge, &req.proof) {
        if LOG.allow() {
            pr_warn!(
                "{} gave a wrong secret for region {}\n",
                peer,
                req.region_id
            );
        }
        return Err(errno::eacces());
    }
    conn.set_authenticated();
    // Opened before by this peer: share that registration.
    let (chunk_bytes, rkeys, mut wrs, made) = match conn.reopen_registration(region.id)? {
        Some((chunk_bytes, rkeys)) => (chunk_bytes, rkeys, KVec::new(), None),
        None => {
            let (reg, wrs) = conn.register_for_peer(region.pages.clone(), MAX_CHUNK_PAGES)?;
            let chunk_bytes = reg.chunk_bytes();
            let rkeys = reg.rkey_vec()?;
            if rkeys.len() > wire::MAX_REPLY_RKEYS {
                return Err(E2BIG);
            }
            let reg = Arc::new(reg, GFP_KERNEL)?;
            conn.add_registration(region.id, reg.clone())?;
            // A destroy that raced with us has already swept this connection: undo.
            if !region.is_live() {
                conn.remove_registration(region.id);
                return Err(ENOENT);
            }
            (chunk_bytes, rkeys, wrs, Some(reg))
        }
    };
    let packed = PackedGrant::for_peer(conn, &region, chunk_bytes, rkeys.len(), &mut wrs);
    // Our references keep the MRs alive while the REG_MR requests naming them are
    // posted, whatever a concurrent destroy or forced release does to the list.
    let sent = send_keys(conn, seq, &region, chunk_bytes, &rkeys, &packed, &mut wrs);
    if sent.is_err() {
        match made {
            Some(reg) => {
                conn.remove_registration(region.id);
                // The requests may still be queued: only teardown, after the drain,
                // frees.
                conn.retire(reg);
            }
            None => conn.release_registration(region.id),
        }
        packed.undo(conn, region.id);
    }
    sent
}

/// Replies to an open with the region's keys, after posting `regs` (the REG_MRs making
/// them valid, if new).
fn send_keys(
    conn: &Connection,
    seq: u64,
    region: &Region,
    chunk_bytes: u64,
    rkeys: &[u32],
    packed: &PackedGrant,
    regs: &mut [crate::bindings::ib_reg_wr],
) -> Result {
    // Copied first: the region's lock is not held across the send.
    let (hot, runs) = region.working_set(rkeys.len() + packed.rkeys.len())?;
    conn.reply(params::io_timeout_ms(), regs, |buf| {
        let facts = RegionFacts {
            size: region.size,
            chunk_bytes,
            info: region.info,
            desc_mac: region.desc_mac,
            lead_pages: region.lead_pages,
            packed_pages: packed.pages,
        };
        OpenRegionReply::encode_with_packed(
            seq,
            &facts,
            rkeys.iter().copied(),
            &packed.rkeys,
            &hot,
            &runs,
            buf,
        )
        .map_err(|_| EINVAL)
    })?;
    count(&COUNTERS.region_opens, 1);
    Ok(())
}
