// SPDX-License-Identifier: GPL-2.0

//! Module-wide state, owned by the module value and reached by every callback through
//! its own context (the misc device's registration data, the listener's and each
//! connection's owner, the device client's owner, a snapshot inode's pager), never
//! through a global pointer.
//!
//! [`Mitosis`] is what the module holds: its fields are declared in unload order.
//! `/dev/mitosis` goes first (no new ioctls), then the listener (no new peers), then the
//! device client (connections on each device torn down), and last the [`Host`]: every
//! remaining connection torn down, queued work finished, regions freed.
//!
//! [`Host`] is the shared part: devices seen, the connection pool (outgoing
//! connections, shared by every user on this host, a dead one replaced on next use),
//! accepted connections (kept until they close), regions, unclaimed captures and the
//! snapshot filesystem.

#![deny(unsafe_code)]

use crate::abi::ioctl::{SnapshotEntry, StatusArgs};
use crate::capture::Captured;
use crate::chardev::MitosisDevice;
use crate::counters::COUNTERS;
use crate::errno;
use crate::miscdev::MiscDeviceRegistration;
use crate::params::{self, MAX_TIMEOUT_MS};
use crate::rdma::connection::{Connection, Ipv4, Owner};
use crate::rdma::device::{DeviceClient, DeviceKey, Devices};
use crate::rdma::listener::Listener;
use crate::rdma::pages::PageSet;
use crate::rdma::Workqueue;
use crate::region::{Origin, Region, Registry};
use crate::snapfs::SnapshotFs;
use crate::util::{remove_first, take_all};
use crate::working_set::WorkingSets;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::workqueue::Queue;

/// Most pooled outgoing connections (distinct peers).
const MAX_POOLED: usize = 256;
/// Most accepted connections.
const MAX_ACCEPTED: usize = 1024;
/// Most accepted connections from one peer address that have not authenticated (a
/// host needs one pooled connection, a few while reconnecting).
const MAX_UNAUTHENTICATED_PER_PEER: usize = 8;
/// Most accepted connections that have not authenticated, from all peers together:
/// each holds a QP, two CQs and 17 DMA-mapped pages before its peer proves anything,
/// so this bounds what the network can make a host allocate (about 5 MiB).
const MAX_UNAUTHENTICATED: usize = 64;
/// How long an accepted connection may stay up without presenting a valid secret.
const UNAUTHENTICATED_IDLE_MS: u32 = 30_000;

/// The module's state, fields in unload order (see the module docs).
#[pin_data]
pub(crate) struct Mitosis {
    chardev: Pin<KBox<MiscDeviceRegistration<MitosisDevice>>>,
    listener: Option<Listener>,
    #[pin]
    devices: DeviceClient,
    host: Stopping,
}

impl Mitosis {
    /// Brings the module up; on error everything started so far is stopped (in the
    /// reverse order).
    pub(crate) fn start(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Mitosis {
            host: Stopping(Host::new(module)?),
            devices <- DeviceClient::new(host.0.clone()),
            listener: match params::listen_port() {
                0 => None,
                port => Some(Listener::new(port, host.0.clone()).inspect_err(|e| {
                    pr_err!("cannot listen on port {}: {:?}\n", port, e);
                })?),
            },
            chardev: KBox::pin_init(MitosisDevice::register(module, host.0.clone()), GFP_KERNEL)?,
        }? Error)
    }
}

/// Holds the host state and stops it when dropped (the last step of unload).
struct Stopping(Arc<Host>);

impl Drop for Stopping {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The host state shared by every callback (see the module docs).
#[pin_data]
pub(crate) struct Host {
    workqueue: Workqueue,
    #[pin]
    devices: Devices,
    #[pin]
    pool: Mutex<KVec<Arc<Connection>>>,
    #[pin]
    accepted: Mutex<KVec<Arc<Connection>>>,
    #[pin]
    regions: Mutex<Registry>,
    #[pin]
    snapshot_fs: SnapshotFs,
    /// Pages earlier children of each snapshot fetched here (`working_set.rs`).
    #[pin]
    working_sets: WorkingSets,
    /// Captures waiting for their parent's `FORK_CLAIM`.
    #[pin]
    claims: Mutex<KVec<Claim>>,
}

/// A capture filed by a seed for its parent.
struct Claim {
    seed_tgid: i32,
    token: u64,
    capture_ns: u64,
    captured: Captured,
}

/// Most unclaimed captures kept (a parent that died never claims).
const MAX_CLAIMS: usize = 256;

impl Host {
    fn new(module: &'static ThisModule) -> Result<Arc<Self>> {
        Arc::pin_init(
            try_pin_init!(Host {
                workqueue: Workqueue::new()?,
                devices <- Devices::new(),
                pool <- new_mutex!(KVec::new()),
                accepted <- new_mutex!(KVec::new()),
                regions <- new_mutex!(Registry::new()),
                snapshot_fs <- SnapshotFs::new(module),
                working_sets <- WorkingSets::new(),
                claims <- new_mutex!(KVec::new()),
            }? Error),
            GFP_KERNEL,
        )
    }

    /// Stops what remains once nothing can call in any more (the device node, the
    /// listener and the device client are gone): connections, queued work, regions.
    /// This also breaks the reference cycle between the host and its connections.
    fn stop(&self) {
        // Never tear down under a list lock: CM handlers take the lists' locks while
        // holding their id's handler mutex, which teardown waits for.
        for list in [&self.accepted, &self.pool] {
            let conns = take_all(&mut list.lock());
            for c in conns.iter() {
                c.teardown();
            }
        }
        self.workqueue.destroy();
        self.snapshot_fs.stop();
        self.regions.lock().clear();
        drop(take_all(&mut self.claims.lock()));
    }

    pub(crate) fn snapshot_fs(&self) -> &SnapshotFs {
        &self.snapshot_fs
    }

    pub(crate) fn working_sets(&self) -> &WorkingSets {
        &self.working_sets
    }

    /// Publishes a captured snapshot (descriptor `desc` in front).
    pub(crate) fn publish_snapshot(
        &self,
        pages: PageSet,
        desc: &[u8],
        lead_pages: u32,
        origin: Origin,
    ) -> Result<(u64, [u8; 16])> {
        self.regions
            .lock()
            .publish(pages, desc.len() as u64, desc, lead_pages, origin)
    }

    /// Files a capture for the seed's parent.
    pub(crate) fn file_claim(
        &self,
        seed_tgid: i32,
        token: u64,
        capture_ns: u64,
        c: Captured,
    ) -> Result {
        let mut claims = self.claims.lock();
        if claims.len() >= MAX_CLAIMS {
            // The oldest is from a parent that never came back: no one will learn its
            // snapshot's id and secret, so the snapshot goes with the claim.
            if let Some(old) = crate::util::remove_first(&mut claims, |_| true) {
                if let Ok(region) = self.regions.lock().remove(old.captured.id) {
                    self.unpublished(region.id, true);
                }
            }
        }
        claims.push(
            Claim {
                seed_tgid,
                token,
                capture_ns,
                captured: c,
            },
            GFP_KERNEL,
        )?;
        Ok(())
    }

    /// The capture of seed `seed_tgid`, once, for the holder of its token.
    pub(crate) fn claim(&self, seed_tgid: i32, token: u64) -> Result<(u64, Captured)> {
        let c = crate::util::remove_first(&mut self.claims.lock(), |c| {
            c.seed_tgid == seed_tgid && c.token == token
        })
        .ok_or(ENOENT)?;
        Ok((c.capture_ns, c.captured))
    }

    /// Ends snapshot `id`: no new opens; with `force`, every peer's access ends now.
    pub(crate) fn release_snapshot(&self, id: u64, secret: &[u8; 16], force: bool) -> Result {
        let region = {
            let mut regions = self.regions.lock();
            let r = regions.find(id).filter(|r| r.info != 0).ok_or(ENOENT)?;
            if !r.secret_matches(secret) {
                return Err(errno::eacces());
            }
            regions.remove(id)?
        };
        crate::util::remove_first(&mut self.claims.lock(), |c| c.captured.id == id);
        self.unpublished(region.id, force);
        Ok(())
    }

    /// Region `id` left the registry: the devices forget its registrations (no new
    /// hold), and with `revoke` every peer's hold ends too, so its keys stop working
    /// now; otherwise with the last peer's close.
    fn unpublished(&self, id: u64, revoke: bool) {
        self.devices.forget(id);
        self.devices.forget(crate::control::packed_key(id));
        if revoke {
            for c in self.accepted.lock().iter() {
                crate::control::revoke(c, id);
            }
        }
    }

    /// A pooled connection to `addr:port`, connecting if there is none. Returns it and
    /// the time spent connecting (0 when pooled). No lock is held while connecting, so
    /// a silent address delays only its own callers; two callers racing to the same
    /// new peer both connect and the loser's connection is dropped.
    pub(crate) fn connection_to(
        self: &Arc<Self>,
        addr: u32,
        port: u16,
        timeout_ms: u32,
    ) -> Result<(Arc<Connection>, u64)> {
        if let Some(c) = self.pooled(addr, port)? {
            return Ok((c, 0));
        }
        let start = kernel::time::Ktime::ktime_get();
        let conn = Connection::connect(addr, port, timeout_ms.min(MAX_TIMEOUT_MS), self.clone())
            .inspect_err(|e| {
                static LOG: crate::util::RateLimit = crate::util::RateLimit::new(8);
                if LOG.allow() {
                    pr_info!("connecting to {}:{} failed: {:?}\n", Ipv4(addr), port, e);
                }
            })?;
        let ns = (kernel::time::Ktime::ktime_get() - start).to_ns().max(1) as u64;
        let winner = {
            let mut pool = self.pool.lock();
            match pool.iter().find(|c| c.peer() == (addr, port) && c.is_up()) {
                Some(c) => Some(c.clone()),
                None => {
                    pool.push(conn.clone(), GFP_KERNEL)?;
                    None
                }
            }
        };
        match winner {
            Some(c) => {
                // Someone else connected meanwhile: use theirs; ours goes down on the
                // workqueue (the caller may be a fault holding the mmap lock).
                conn.fail(errno::econnreset());
                Ok((c, ns))
            }
            None => Ok((conn, ns)),
        }
    }

    /// The pooled, live connection to `addr:port`, after dropping dead ones; `ENOSPC`
    /// when there is none and the pool is full.
    fn pooled(&self, addr: u32, port: u16) -> Result<Option<Arc<Connection>>> {
        let mut pool = self.pool.lock();
        while remove_first(&mut pool, |c| !c.is_up()).is_some() {}
        if let Some(c) = pool.iter().find(|c| c.peer() == (addr, port)) {
            return Ok(Some(c.clone()));
        }
        if pool.len() >= MAX_POOLED {
            return Err(ENOSPC);
        }
        Ok(None)
    }

    /// A connection of this host that is up (accepted first, then pooled), if any.
    pub(crate) fn any_live_connection(&self) -> Option<Arc<Connection>> {
        for list in [&self.accepted, &self.pool] {
            if let Some(c) = list.lock().iter().find(|c| c.is_up()) {
                return Some(c.clone());
            }
        }
        None
    }

    pub(crate) fn find_region(&self, id: u64) -> Option<Arc<Region>> {
        self.regions.lock().find(id)
    }

    pub(crate) fn create_region(&self, size: u64, seed: u64) -> Result<(u64, [u8; 16])> {
        let pages = crate::region::pattern_pages(size, seed)?;
        self.regions.lock().publish_test_region(pages)
    }

    /// Unpublishes a region: every peer's registration of it stops working now.
    pub(crate) fn destroy_region(&self, id: u64) -> Result {
        let region = self.regions.lock().remove(id)?;
        self.unpublished(region.id, true);
        Ok(())
    }

    /// The snapshots of this host (at most `max`) as list entries, and how many there
    /// are. The peers are counted after the registry lock is dropped.
    pub(crate) fn snapshot_list(&self, max: usize) -> Result<(KVec<SnapshotEntry>, usize)> {
        let (regions, total) = self.regions.lock().snapshots(max)?;
        let now = kernel::time::Ktime::ktime_get().to_ms();
        let accepted = self.accepted.lock();
        let mut out = KVec::with_capacity(regions.len(), GFP_KERNEL)?;
        for r in regions.iter() {
            let peers = accepted.iter().filter(|c| c.has_registration(r.id)).count();
            out.push(
                SnapshotEntry {
                    id: r.id,
                    pages: r.pages.len() as u64,
                    desc_bytes: r.info,
                    age_ms: now.saturating_sub(r.created_ms).max(0) as u64,
                    peers: peers as u32,
                    children: 0,
                    seed_pid: r.origin.seed_pid,
                    parent_pid: r.origin.parent_pid,
                },
                GFP_KERNEL,
            )?;
        }
        drop(accepted);
        // Children on this host: resumes of the snapshot by its own address (any of
        // ours), counted from the snapshot files they map.
        for (e, r) in out.iter_mut().zip(regions.iter()) {
            e.children = self
                .snapshot_fs
                .children_of(|k| k.id == r.id && r.secret_matches(&k.secret));
        }
        Ok((out, total))
    }

    pub(crate) fn status(&self, out: &mut StatusArgs) {
        out.n_devices = self.devices.infos(&mut out.devices);
        let live = |v: &KVec<Arc<Connection>>| v.iter().filter(|c| c.is_up()).count() as u32;
        out.n_connections = live(&self.pool.lock()) + live(&self.accepted.lock());
        out.listen_port = params::listen_port() as u32;
        let regions = self.regions.lock();
        let (snapshots_live, snapshot_pages) = regions.snapshot_totals();
        out.counters = COUNTERS.snapshot();
        out.counters.regions_live = regions.len() as u64;
        out.counters.snapshots_live = snapshots_live;
        out.counters.snapshot_pages = snapshot_pages;
    }
}

/// The transport's callbacks (see [`Owner`]).
impl Owner for Host {
    fn workqueue(&self) -> Option<&Queue> {
        self.workqueue.get()
    }

    fn device_allowed(&self, name: &[u8]) -> bool {
        let want = params::device_name();
        want.is_empty() || want == name
    }

    /// Admission of a connection request from `peer`, before anything is allocated or
    /// answered: where a flood from the network is stopped. Connections still
    /// handshaking after the connect timeout, or up without a valid secret for
    /// [`UNAUTHENTICATED_IDLE_MS`], are reaped; one peer address may hold at most
    /// [`MAX_UNAUTHENTICATED_PER_PEER`] unauthenticated connections, all peers together
    /// [`MAX_UNAUTHENTICATED`], and the host [`MAX_ACCEPTED`] in all. Requests arrive one at a time (the listener's handler).
    fn admit(&self, peer: u32) -> Result {
        static LOG: crate::util::RateLimit = crate::util::RateLimit::new(4);
        let now = kernel::time::Ktime::ktime_get().to_ms();
        let handshake_ms = params::connect_timeout_ms();
        let accepted = self.accepted.lock();
        for c in accepted.iter() {
            if c.is_stale(now, handshake_ms, UNAUTHENTICATED_IDLE_MS) {
                // Only queues its teardown, which removes it from the list.
                c.fail(errno::etimedout());
            }
        }
        let unauthenticated = || {
            accepted
                .iter()
                .filter(|c| !c.authenticated() && !c.is_closing())
        };
        let from_peer = unauthenticated().filter(|c| c.peer().0 == peer).count();
        let all_unauthenticated = unauthenticated().count();
        if from_peer >= MAX_UNAUTHENTICATED_PER_PEER
            || all_unauthenticated >= MAX_UNAUTHENTICATED
            || accepted.len() >= MAX_ACCEPTED
        {
            if LOG.allow() {
                pr_warn!(
                    "refused a connection from {}: {} unauthenticated from it, {} from all, {} connections in all\n",
                    Ipv4(peer),
                    from_peer,
                    all_unauthenticated,
                    accepted.len()
                );
            }
            return Err(errno::econnrefused());
        }
        Ok(())
    }

    /// Keeps an accepted connection (admitted by [`Owner::admit`] just before).
    fn accepted(&self, conn: Arc<Connection>) -> Result {
        self.accepted.lock().push(conn, GFP_KERNEL)?;
        Ok(())
    }

    fn request(&self, conn: &Connection, msg: &[u8]) {
        crate::control::handle_request(self, conn, msg);
    }

    /// A torn-down connection leaves the lists.
    fn closed(&self, conn: &Arc<Connection>) {
        remove_first(&mut self.pool.lock(), |c| Arc::ptr_eq(c, conn));
        remove_first(&mut self.accepted.lock(), |c| Arc::ptr_eq(c, conn));
    }

    fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Tears down every connection on `dev` before it goes.
    fn device_removed(&self, dev: DeviceKey) {
        for list in [&self.pool, &self.accepted] {
            // One at a time, each torn down outside the list lock (see `stop`); no
            // allocation, so nothing can make us skip one.
            loop {
                let victim = remove_first(&mut list.lock(), |c| c.device() == dev);
                match victim {
                    Some(c) => c.teardown(),
                    None => break,
                }
            }
        }
    }
}
