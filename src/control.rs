// SPDX-License-Identifier: GPL-2.0

//! Control requests served to peers (server side of a connection, workqueue context).
//!
//! `OpenRegion` (id + secret) replies with the keys and the address base of the region's
//! registration, made once per device (right after a snapshot's prepare,
//! `register_ahead.rs`, or by the first open from any peer: fast-reg MRs in the
//! device's shared PD, `rdma/domain.rs`) and held for each peer that opened it;
//! `CloseRegion` drops the peer's hold. A wrong secret or an unknown id gets a distinct
//! errno in the reply and a log line; a malformed message is logged and dropped.

#![deny(unsafe_code)]

use crate::abi::wire::{
    self, CloseRegion, Kind, OpenRegion, OpenRegionReply, RegionFacts, WorkingSetParts,
    WorkingSetReport,
};
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::params;
use crate::rdma::connection::{Connection, Ipv4};
use crate::rdma::fastreg::Registration;
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
            let _ = conn.reply(params::io_timeout_ms(), |buf| {
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

/// Ends the peer of `conn`'s holds of region `id`'s registrations now, its packed
/// copy's too (once the domain forgot them as well, their keys stop working).
pub(crate) fn revoke(conn: &Connection, id: u64) {
    conn.remove_registration(id);
    conn.remove_registration(packed_key(id));
}

/// The packed working set granted to one open, if any, and whether the peer's hold
/// of it was made for this open (to undo if the reply fails).
#[derive(Default)]
struct PackedGrant {
    reg: Option<Arc<Registration>>,
    made: bool,
}

impl PackedGrant {
    /// The region's packed copy for the peer of `conn`: the one it holds under
    /// [`packed_key`] if any (a peer keeps the copy it was first given while it holds
    /// the region open: deregistering under its READs would fail its connection), else
    /// the current copy's shared registration. Nothing when there is no copy or it
    /// cannot be granted: the copy is a hint.
    fn for_peer(conn: &Connection, region: &Region, chunk_bytes: u64, n_keys: usize) -> Self {
        Self::try_for_peer(conn, region, chunk_bytes, n_keys).unwrap_or_default()
    }

    fn try_for_peer(
        conn: &Connection,
        region: &Region,
        chunk_bytes: u64,
        n_keys: usize,
    ) -> Result<Self> {
        let key = packed_key(region.id);
        // Same layout as the region's keys, and room in the reply.
        let fits = |r: &Registration| {
            r.chunk_bytes() == chunk_bytes
                && n_keys.saturating_add(r.rkeys().len()) <= wire::MAX_REPLY_RKEYS
                && u32::try_from(r.page_count()).is_ok()
        };
        if let Some(reg) = conn.registration(key) {
            return if fits(&reg) {
                Ok(PackedGrant {
                    reg: Some(reg),
                    made: false,
                })
            } else {
                Err(E2BIG)
            };
        }
        let copy = region.packed().ok_or(ENOENT)?;
        let reg = conn.shared_registration(key, &copy, MAX_CHUNK_PAGES, params::io_timeout_ms())?;
        if !fits(&reg) {
            return Err(E2BIG);
        }
        conn.add_registration(key, reg.clone())?;
        // A release that swept this connection and the domain before the add: undo.
        if !region.is_live() {
            conn.remove_registration(key);
            conn.forget_shared(key);
            return Err(ENOENT);
        }
        Ok(PackedGrant {
            reg: Some(reg),
            made: true,
        })
    }

    /// The reply that carried the grant failed: a hold made for it goes.
    fn undo(self, conn: &Connection, region_id: u64) {
        if self.made {
            conn.remove_registration(packed_key(region_id));
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
    // Before anything the reply hands out is read (see `Region::status`).
    let status = region.status();
    // Opened before by this peer: one more open of its hold. Else the region's shared
    // registration (made now if no peer's open made it yet), held for this peer.
    let reg = match conn.reopen_registration(region.id) {
        Some(reg) => reg,
        None => {
            let reg = conn.shared_registration(
                region.id,
                &region.pages,
                MAX_CHUNK_PAGES,
                params::io_timeout_ms(),
            )?;
            if reg.rkeys().len() > wire::MAX_REPLY_RKEYS {
                return Err(E2BIG);
            }
            conn.add_registration(region.id, reg.clone())?;
            // A destroy that raced with us has already swept this connection and the
            // domain: undo.
            if !region.is_live() {
                conn.remove_registration(region.id);
                conn.forget_shared(region.id);
                return Err(ENOENT);
            }
            reg
        }
    };
    let packed = PackedGrant::for_peer(conn, &region, reg.chunk_bytes(), reg.rkeys().len());
    let sent = send_keys(conn, seq, &region, status, &reg, &packed);
    if sent.is_err() {
        conn.release_registration(region.id);
        packed.undo(conn, region.id);
    }
    sent
}

/// Replies to an open with the keys and addresses of the region's registration `reg`
/// and of the packed copy's, if granted.
fn send_keys(
    conn: &Connection,
    seq: u64,
    region: &Region,
    status: u64,
    reg: &Registration,
    packed: &PackedGrant,
) -> Result {
    let rkeys = reg.rkey_vec()?;
    let packed_rkeys = match &packed.reg {
        Some(p) => p.rkey_vec()?,
        None => KVec::new(),
    };
    // Checked by `try_for_peer`.
    let packed_pages = packed
        .reg
        .as_ref()
        .map_or(0, |p| u32::try_from(p.page_count()).unwrap_or(0));
    // Copied first: the region's lock is not held across the send.
    let (hot, runs) = region.working_set(rkeys.len() + packed_rkeys.len())?;
    conn.reply(params::io_timeout_ms(), |buf| {
        let facts = RegionFacts {
            size: region.size,
            chunk_bytes: reg.chunk_bytes(),
            iova_base: reg.iova_base(),
            packed_iova_base: packed.reg.as_ref().map_or(0, |p| p.iova_base()),
            info: region.info,
            status,
            desc_mac: region.desc_mac,
            lead_pages: region.lead_pages,
            packed_pages,
        };
        OpenRegionReply::encode_with_packed(
            seq,
            &facts,
            rkeys.iter().copied(),
            &packed_rkeys,
            &hot,
            &runs,
            buf,
        )
        .map_err(|_| EINVAL)
    })?;
    count(&COUNTERS.region_opens, 1);
    Ok(())
}
