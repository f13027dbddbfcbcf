// SPDX-License-Identifier: GPL-2.0

//! Module-wide state: devices, the connection pool, accepted connections, regions.
//!
//! Outgoing connections are pooled per peer address and shared by every user on this
//! host; a dead one is replaced on next use. Accepted connections are kept until they
//! close. Unload tears everything down in order: no new opens (device node gone), no
//! new peers (listener gone), connections drained and destroyed, queued work finished,
//! devices released, regions freed.

use crate::abi::ioctl::{Counters, StatusArgs};
use crate::bindings;
use crate::capture::Captured;
use crate::chardev::MitosisDevice;
use crate::errno;
use crate::miscdev::MiscDeviceRegistration;
use crate::pager::SnapshotFs;
use crate::rdma::connection::{Connection, Ipv4};
use crate::rdma::device::DeviceClient;
use crate::rdma::listener::{AcceptHooks, Listener};
use crate::rdma::pages::PageSet;
use crate::rdma::{self, STATS};
use crate::region::{Region, Registry, REGION_OPENS, REGION_OPENS_REFUSED};
use crate::util::{remove_first, take_all};
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

/// Most pooled outgoing connections (distinct peers).
const MAX_POOLED: usize = 256;
/// Most accepted connections.
const MAX_ACCEPTED: usize = 1024;
/// Most accepted connections from one peer address that have not authenticated (a
/// host needs one pooled connection, a few while reconnecting).
const MAX_UNAUTHENTICATED_PER_PEER: usize = 8;
/// How long an accepted connection may stay up without presenting a valid secret.
const UNAUTHENTICATED_IDLE_MS: u32 = 30_000;
/// Upper bound of every timeout (module parameters and per-call values): a wait on
/// the network never blocks longer.
pub(crate) const MAX_TIMEOUT_MS: u32 = 60_000;

/// # Invariants
///
/// `STATE` points to the pinned state from `start` until `Drop`; every callback that
/// reads it (ioctls, CM handlers, workqueue, ib_client) is stopped before `Drop`.
#[pin_data(PinnedDrop)]
pub(crate) struct Mitosis {
    /// `/dev/mitosis`, registered last by `start` and deregistered first by `stop`
    /// (its ioctls reach the rest of the state).
    #[pin]
    chardev: Mutex<Option<Pin<KBox<MiscDeviceRegistration<MitosisDevice>>>>>,
    #[pin]
    devices: DeviceClient,
    #[pin]
    pool: Mutex<KVec<Arc<Connection>>>,
    #[pin]
    accepted: Mutex<KVec<Arc<Connection>>>,
    #[pin]
    regions: Mutex<Registry>,
    #[pin]
    listener: Mutex<Option<Listener>>,
    #[pin]
    snapshot_fs: SnapshotFs,
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

static STATE: AtomicPtr<Mitosis> = AtomicPtr::new(ptr::null_mut());

static ACCEPT_HOOKS: AcceptHooks = AcceptHooks {
    on_request: crate::control::handle_request,
    on_closed: connection_closed,
    admit,
    on_accepted: connection_accepted,
};

/// The module state (valid from `start` until unload, see the type invariant).
pub(crate) fn get() -> &'static Mitosis {
    // SAFETY: only called by callbacks that run while the state lives (type invariant).
    unsafe { &*STATE.load(Ordering::Acquire) }
}

/// The module state, if it is up (for callbacks that may run during unload).
pub(crate) fn try_get() -> Option<&'static Mitosis> {
    // SAFETY: as in `get`; null outside the state's lifetime.
    unsafe { STATE.load(Ordering::Acquire).as_ref() }
}

pub(crate) fn prefetch_pages() -> u32 {
    // SAFETY: a module parameter: a plain integer that may change at any time.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_prefetch_pages)) }
        .min(crate::rdma::connection::MAX_READ_BATCH as u32 * 4)
}

pub(crate) fn connect_timeout_ms() -> u32 {
    // SAFETY: a module parameter: a plain integer that may change at any time.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_connect_timeout_ms)) }
        .clamp(1, MAX_TIMEOUT_MS)
}

pub(crate) fn io_timeout_ms() -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(ptr::addr_of!(bindings::mitosis_param_io_timeout_ms)) }
        .clamp(1, MAX_TIMEOUT_MS)
}

pub(crate) fn listen_port() -> u16 {
    // SAFETY: read-only module parameter (0444).
    unsafe { bindings::mitosis_param_listen_port }
}

impl Mitosis {
    /// Brings the module up; on error everything started so far is stopped.
    pub(crate) fn start(module: &'static ThisModule) -> Result<Pin<KBox<Self>>> {
        rdma::start_workqueue()?;
        let state = KBox::pin_init(
            try_pin_init!(Mitosis {
                chardev <- new_mutex!(None),
                devices <- DeviceClient::new(device_removed),
                pool <- new_mutex!(KVec::new()),
                accepted <- new_mutex!(KVec::new()),
                regions <- new_mutex!(Registry::new()),
                listener <- new_mutex!(None),
                snapshot_fs <- SnapshotFs::new(module),
                claims <- new_mutex!(KVec::new()),
            }? Error),
            GFP_KERNEL,
        );
        let mut state = match state {
            Ok(s) => s,
            Err(e) => {
                rdma::stop_workqueue();
                return Err(e);
            }
        };
        STATE.store(&*state as *const Self as *mut Self, Ordering::Release);
        let started = (|| {
            // SAFETY: we do not move out of the pinned state.
            let fields = unsafe { state.as_mut().get_unchecked_mut() };
            // SAFETY: `devices` is structurally pinned.
            unsafe { Pin::new_unchecked(&mut fields.devices) }.register()?;
            if listen_port() != 0 {
                let l = Listener::new(listen_port(), &ACCEPT_HOOKS).inspect_err(|e| {
                    pr_err!("cannot listen on port {}: {:?}\n", listen_port(), e);
                })?;
                *fields.listener.lock() = Some(l);
            }
            let dev = KBox::pin_init(MitosisDevice::register(module), GFP_KERNEL)?;
            *fields.chardev.lock() = Some(dev);
            Ok(())
        })();
        if let Err(e) = started {
            state.as_ref().stop();
            return Err(e);
        }
        Ok(state)
    }

    /// Stops everything that can call back into the state (see the module docs).
    pub(crate) fn stop(self: Pin<&Self>) {
        drop(self.chardev.lock().take());
        drop(self.listener.lock().take());
        // Never tear down under a list lock: CM handlers take the lists' locks while
        // holding their id's handler mutex, which teardown waits for.
        for list in [&self.accepted, &self.pool] {
            let conns = take_all(&mut list.lock());
            for c in conns.iter() {
                c.teardown();
            }
        }
        rdma::stop_workqueue();
        self.devices.unregister();
        self.regions.lock().clear();
    }

    pub(crate) fn snapshot_fs(&self) -> &SnapshotFs {
        &self.snapshot_fs
    }

    /// Publishes a captured snapshot (descriptor of `desc_len` bytes in front).
    pub(crate) fn publish_snapshot(
        &self,
        pages: PageSet,
        desc_len: u64,
    ) -> Result<(u64, [u8; 16])> {
        self.regions.lock().publish(pages, desc_len)
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
                    for c in self.accepted.lock().iter() {
                        c.remove_registration(region.id);
                    }
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
        if force {
            for c in self.accepted.lock().iter() {
                c.remove_registration(region.id);
            }
        }
        Ok(())
    }

    /// A pooled connection to `addr:port`, connecting if there is none. Returns it and
    /// the time spent connecting (0 when pooled). No lock is held while connecting, so
    /// a silent address delays only its own callers; two callers racing to the same
    /// new peer both connect and the loser's connection is dropped.
    pub(crate) fn connection_to(
        &self,
        addr: u32,
        port: u16,
        timeout_ms: u32,
    ) -> Result<(Arc<Connection>, u64)> {
        if let Some(c) = self.pooled(addr, port)? {
            return Ok((c, 0));
        }
        let start = kernel::time::Ktime::ktime_get();
        let conn = Connection::connect(
            addr,
            port,
            timeout_ms.min(MAX_TIMEOUT_MS),
            connection_closed,
        )
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
        for c in self.accepted.lock().iter() {
            c.remove_registration(region.id);
        }
        Ok(())
    }

    pub(crate) fn status(&self, out: &mut StatusArgs) {
        out.n_devices = self.devices.infos(&mut out.devices);
        let live = |v: &KVec<Arc<Connection>>| v.iter().filter(|c| c.is_up()).count() as u32;
        out.n_connections = live(&self.pool.lock()) + live(&self.accepted.lock());
        out.listen_port = self.listener.lock().as_ref().map_or(0, |l| l.port() as u32);
        let l = |c: &core::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (snapshots_live, snapshot_pages) = self.regions.lock().snapshot_totals();
        out.counters = Counters {
            conns_established: l(&STATS.conns_established),
            conns_failed: l(&STATS.conns_failed),
            conns_accepted: l(&STATS.conns_accepted),
            conns_closed: l(&STATS.conns_closed),
            ctrl_msgs_sent: l(&STATS.ctrl_msgs_sent),
            ctrl_msgs_received: l(&STATS.ctrl_msgs_received),
            read_wrs_posted: l(&STATS.read_wrs_posted),
            read_doorbells: l(&STATS.read_doorbells),
            bytes_read: l(&STATS.bytes_read),
            read_errors: l(&STATS.read_errors),
            read_timeouts: l(&STATS.read_timeouts),
            regions_live: self.regions.lock().len() as u64,
            region_opens: l(&REGION_OPENS),
            region_opens_refused: l(&REGION_OPENS_REFUSED),
            mrs_live: l(&STATS.mrs_live),
            snapshots_live,
            snapshot_pages,
            resumes: l(&crate::restore::RESUMES),
            resumes_failed: l(&crate::restore::RESUMES_FAILED),
            pages_fetched: l(&crate::pager::PAGES_FETCHED),
            pages_zeroed: l(&crate::pager::PAGES_ZEROED),
            fetch_failures: l(&crate::pager::FETCH_FAILURES),
            _reserved: [0],
        };
    }
}

#[pinned_drop]
impl PinnedDrop for Mitosis {
    fn drop(self: Pin<&mut Self>) {
        // `devices` unregisters in its own drop, after which no callback can run.
        STATE.store(ptr::null_mut(), Ordering::Release);
    }
}

/// `ClosedHandler`: a torn-down connection leaves the lists.
fn connection_closed(conn: &Arc<Connection>) {
    let s = get();
    remove_first(&mut s.pool.lock(), |c| Arc::ptr_eq(c, conn));
    remove_first(&mut s.accepted.lock(), |c| Arc::ptr_eq(c, conn));
}

/// Admission of a connection request from `peer`, before anything is allocated or
/// answered: where a flood from the network is stopped. Connections still handshaking
/// after the connect timeout, or up without a valid secret for
/// [`UNAUTHENTICATED_IDLE_MS`], are reaped; one peer address may hold at most
/// [`MAX_UNAUTHENTICATED_PER_PEER`] unauthenticated connections, and the host
/// [`MAX_ACCEPTED`] in all. Requests arrive one at a time (the listener's CM handler).
fn admit(peer: u32) -> Result {
    static LOG: crate::util::RateLimit = crate::util::RateLimit::new(4);
    let now = kernel::time::Ktime::ktime_get().to_ms();
    let handshake_ms = connect_timeout_ms();
    let accepted = get().accepted.lock();
    for c in accepted.iter() {
        if c.is_stale(now, handshake_ms, UNAUTHENTICATED_IDLE_MS) {
            // Only queues its teardown, which removes it from the list.
            c.fail(errno::etimedout());
        }
    }
    let from_peer = accepted
        .iter()
        .filter(|c| c.peer().0 == peer && !c.authenticated() && !c.is_closing())
        .count();
    if from_peer >= MAX_UNAUTHENTICATED_PER_PEER || accepted.len() >= MAX_ACCEPTED {
        if LOG.allow() {
            pr_warn!(
                "refused a connection from {}: {} unauthenticated from it, {} in all\n",
                Ipv4(peer),
                from_peer,
                accepted.len()
            );
        }
        return Err(errno::econnrefused());
    }
    Ok(())
}

/// Keeps an accepted connection (admitted by [`admit`] just before).
fn connection_accepted(conn: Arc<Connection>) -> Result {
    get().accepted.lock().push(conn, GFP_KERNEL)?;
    Ok(())
}

/// `ib_client` removal: tear down every connection on `dev` before it goes.
fn device_removed(dev: *mut bindings::ib_device) {
    let s = get();
    for list in [&s.pool, &s.accepted] {
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
