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
    if let Some((chunk_bytes, rkeys)) = conn.reopen_registration(region.id)? {
        return send_keys(conn, seq, &region, chunk_bytes, &rkeys, &mut [])
            .inspect_err(|_| conn.release_registration(region.id));
    }
    let (reg, mut wrs) = conn.register_for_peer(region.pages.clone(), MAX_CHUNK_PAGES)?;
    let chunk_bytes = reg.chunk_bytes();
    let mut rkeys = KVec::with_capacity(wrs.len(), GFP_KERNEL)?;
    for k in reg.rkeys() {
        rkeys.push(k, GFP_KERNEL)?;
    }
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
    // Our reference keeps the MRs alive while the REG_MR requests naming them are
    // posted, whatever a concurrent destroy or forced release does to the list.
    send_keys(conn, seq, &region, chunk_bytes, &rkeys, &mut wrs).inspect_err(|_| {
        conn.remove_registration(region.id);
        // The requests may still be queued: only teardown, after the drain, frees.
        conn.retire(reg.clone());
    })
}

/// Replies to an open with the region's keys, after posting `regs` (the REG_MRs making
/// them valid, if new).
fn send_keys(
    conn: &Connection,
    seq: u64,
    region: &Region,
    chunk_bytes: u64,
    rkeys: &[u32],
    regs: &mut [crate::bindings::ib_reg_wr],
) -> Result {
    // Copied first: the region's lock is not held across the send.
    let (hot, runs) = region.working_set(rkeys.len())?;
    conn.reply(params::io_timeout_ms(), regs, |buf| {
        let facts = RegionFacts {
            size: region.size,
            chunk_bytes,
            info: region.info,
            desc_mac: region.desc_mac,
            lead_pages: region.lead_pages,
        };
        OpenRegionReply::encode_with_working_set(
            seq,
            &facts,
            rkeys.iter().copied(),
            &hot,
            &runs,
            buf,
        )
        .map_err(|_| EINVAL)
    })?;
    count(&COUNTERS.region_opens, 1);
    Ok(())
}
