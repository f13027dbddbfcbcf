// SPDX-License-Identifier: GPL-2.0

//! fork_resume, child side: where a snapshot is restored into the calling launcher.
//!
//! Everything that can fail for a reason outside the caller's control happens first,
//! while the launcher is intact and can get an errno: the open (id + secret, checked by
//! the parent in constant time), the descriptor fetch (one doorbell) and its full
//! validation, the compatibility checks of the state (FPU format, addresses, vDSO
//! size). Then the point of no return: every launcher VMA except its vDSO and vvar is
//! unmapped, each seed VMA is mapped privately from the snapshot file at the seed's
//! address, mm fields, registers, FPU, FS/GS, rseq, robust list, tid pointers,
//! sigaltstack, signal dispositions and mask are set, and the syscall returns into the
//! seed's context. A failure after that point kills the caller (SIGKILL) with a log
//! line: it has no address space to return to.
//!
//! A clean file mapping of the seed (see [`crate::vfs`]) is mapped from this host's own
//! file when the file at the recorded path, opened as the caller, has the seed file's
//! identity; otherwise (missing, different, `local_files=0`) from the snapshot.
//!
//! The vDSO and vvar stay where the launcher had them; the child-side library moves
//! them to the seed's addresses (`mremap`, which the vDSO supports) before anything
//! calls into them, using the report written into the seed's `ForkCaptureArgs`.

// Policy code: every raw kernel operation it needs lives in the abstractions
// (`task.rs`, `mm.rs`, `fpu.rs`, `pager.rs`, `rdma/`).
#![deny(unsafe_code)]

use crate::abi::ioctl::{ForkCaptureArgs, ForkResumeArgs, Pod};
use crate::abi::mac::{constant_time_eq, descriptor_mac};
use crate::abi::packed::PackedIndex;
use crate::abi::snapshot::{
    reg, vma_flags, window_offset, DescError, Descriptor, TaskState, MAX_LEAD_PAGES, PAGE,
    TASK_STATE_LEN, X86_64_LIMITS,
};
use crate::abi::wire::{HotPage, MAX_HOT_PAGES};
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::errno;
use crate::fpu;
use crate::mm::{self, MmLayout, MmapReadGuard, MmapWriteGuard, Special, MAX_VMAS};
use crate::pager::{Pager, PagerKey};
use crate::params;
use crate::rdma::connection::{Connection, Ipv4, MAX_READ_BATCH};
use crate::rdma::PAGE_SIZE;
use crate::remote::{Checked, Lead, OpenAtParent, RemoteRegion};
use crate::snapfs::{Faults, SnapshotInode};
use crate::state::Host;
use crate::task::{CurrentTask, UserState};
use crate::util::ClearForReuse;
use crate::vfs::OpenFile;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::uaccess::UserSlice;

/// Largest descriptor accepted from a peer.
const MAX_DESC_BYTES: u64 = 64 << 20;
/// EFLAGS bits user space may set (as `sigreturn` allows), plus IF.
const USER_EFLAGS: u64 = 0x50DD5;
const EFLAGS_IF: u64 = 0x200;
/// `MAP_PRIVATE | MAP_FIXED_NOREPLACE`.
const MAP_FLAGS: u64 = (bindings::MAP_PRIVATE | bindings::MAP_FIXED_NOREPLACE) as u64;

/// A launcher special mapping.
#[derive(Clone, Copy, Default)]
struct Range {
    start: u64,
    end: u64,
}

/// Replaces the caller with snapshot `a.snapshot_id` of the peer. Returns only on
/// failure before the point of no return (or, after it, with the caller killed); on
/// success the syscall returns 0 into the seed's context.
pub(crate) fn resume(
    host: &Arc<Host>,
    a: &ForkResumeArgs,
    port: u16,
    timeout_ms: u32,
    eager: bool,
) -> Result {
    let start = Start {
        ns: now_ns(),
        round_trips: round_trips(),
    };
    let r = resume_inner(host, a, port, timeout_ms, eager, &start);
    match r {
        Ok(()) => count(&COUNTERS.resumes, 1),
        Err(_) => count(&COUNTERS.resumes_failed, 1),
    };
    r
}

/// Where a resume started: the time and the host's round-trip count.
struct Start {
    ns: u64,
    round_trips: u64,
}

/// `CLOCK_MONOTONIC` in ns.
fn now_ns() -> u64 {
    kernel::time::Ktime::ktime_get().to_ns() as u64
}

/// Control RPCs and READ doorbells this host has sent (every resume on the host adds
/// to them: a resume's own count is exact when it runs alone).
fn round_trips() -> u64 {
    use core::sync::atomic::Ordering::Relaxed;
    COUNTERS.ctrl_msgs_sent.load(Relaxed) + COUNTERS.read_doorbells.load(Relaxed)
}

fn resume_inner(
    host: &Arc<Host>,
    a: &ForkResumeArgs,
    port: u16,
    timeout_ms: u32,
    eager: bool,
    start: &Start,
) -> Result {
    let key = PagerKey {
        addr: a.peer_addr,
        port,
        id: a.snapshot_id,
        secret: a.secret,
    };
    let fs = host.snapshot_fs();
    let (conn, _) = host.connection_to(a.peer_addr, port, timeout_ms)?;
    let connected_ns = now_ns();
    // An open an earlier child here left at the parent (`open_linger_ms`): ours reuses
    // its registration and holds it from then on. Closed when the resume returns (a
    // one-way message sent from the workqueue, after the report's count of round
    // trips: the child does not wait for it), unless this resume takes it over.
    let lingering = fs.take_open(key);
    let existing = fs.lookup(key);
    let local_hot = match existing {
        None => first_touches_here(host, key),
        Some(_) => None,
    };
    // Every resume makes sure that the snapshot is live and the secret right, even
    // when children on this host still map it: by asking the parent, or by the
    // snapshot's status page through an open this host holds (`through_lingering`,
    // `Pager::still_current`).
    let (opened, _lingering) = match (lingering, existing) {
        (Some(open), None) => {
            let hot = local_hot.as_deref();
            let (remote, early, open) =
                through_lingering(host, &conn, open, a, port, timeout_ms, hot)?;
            (Opened::New(remote, early), open)
        }
        (lingering, Some(inode)) => {
            // Children here already share this snapshot's pages and their open: with
            // `reuse_open` its status page may vouch for the snapshot (one READ, no
            // RPC); else the parent is asked, and the open it grants closed at once.
            if !(params::reuse_open() && inode.pager().still_current()) {
                RemoteRegion::open(conn, 0, a.snapshot_id, a.secret)?.close_soon();
            }
            (Opened::Shared(inode), lingering)
        }
        (None, None) => {
            let remote = RemoteRegion::open(conn, 0, a.snapshot_id, a.secret)?;
            (Opened::New(remote.into_shared()?, None), None)
        }
    };
    let opened_ns = now_ns();
    let (inode, batch_hot) = match opened {
        Opened::Shared(inode) => (inode, None),
        Opened::New(remote, early) => {
            let fetched = match early {
                Some(fetched) => fetched,
                None => {
                    let hot = local_hot.as_deref().unwrap_or(&remote.hot);
                    fetch_descriptor(&remote, &a.secret, hot, false, None)
                        .inspect_err(|_| remote.close())?
                }
            };
            let pager = Pager::new(host.clone(), key, remote, fetched.desc, fetched.lead)?;
            (fs.create(pager)?, Some(fetched.hot))
        }
    };
    let fresh = batch_hot.is_some();
    // The first child of a new pager maps every page by a fault of its own (the
    // working set records exactly what it touches); one joining cached pages, or any
    // child when nothing is recorded, maps cached pages 16 at a time.
    let faults = if fresh && params::working_set() {
        Faults::EveryPage
    } else {
        Faults::AroundCached
    };
    let file = fs.open(inode, faults)?;
    let pager = file.pager();
    // The first-touch pages count as prefetched (in the descriptor's batch).
    let mut prefetched = 0;
    if let Some(hot) = &batch_hot {
        if params::lead_pages() {
            pager.install_lead(file.mapping());
        }
        prefetched = pager.install(file.mapping(), hot.offs.iter().copied(), &hot.bytes);
    }
    // A new pager on this host: what the snapshot's earlier children fetched comes in
    // batched READs, instead of one demand fault at a time later: in the background
    // once the child runs (`replay.rs`), or now.
    let replay = fresh && !eager && params::working_set();
    let in_background = replay && params::replay_async();
    if replay && !in_background {
        prefetched += pager.replay_working_set(file.mapping(), &|| true);
    }
    let fetched_ns = now_ns();
    let desc = pager.descriptor()?;
    let (st, fpu) = task_state(&desc)?;
    fpu::check(fpu)?;
    let (vdso, vvar) = launcher_specials()?;
    let (seed_vdso, seed_vvar) = seed_specials(&desc)?;
    if vdso.end - vdso.start != seed_vdso.end - seed_vdso.start
        || vvar.end - vvar.start != seed_vvar.end - seed_vvar.start
    {
        pr_info!("resume: the seed's vDSO differs from this kernel's\n");
        return Err(errno::eopnotsupp());
    }
    for i in 0..desc.n_vmas() {
        let v = desc.vma(i).ok_or(EINVAL)?;
        if v.flags & (vma_flags::VDSO | vma_flags::VVAR) != 0 {
            continue;
        }
        if overlaps(v.start, v.end, vdso) || overlaps(v.start, v.end, vvar) {
            pr_info!(
                "resume: seed VMA {:#x}-{:#x} overlaps this process's vDSO\n",
                v.start,
                v.end
            );
            return Err(errno::eaddrinuse());
        }
    }

    let local = open_local_files(&desc)?;

    // Point of no return.
    let rebuilt = rebuild(&desc, &file, &local, &st)
        .and_then(|()| restore_task(&st, fpu))
        .and_then(|()| {
            let eager_pages = if eager {
                pager.fetch_all(file.mapping())?
            } else {
                0
            };
            if in_background {
                if let Err(e) = crate::replay::start(host, &file) {
                    // The faults fetch what the child needs.
                    pr_warn!("resume: no background working-set replay ({:?})\n", e);
                }
            }
            let counts = Counts {
                eager_pages,
                prefetched,
                round_trips: round_trips().saturating_sub(start.round_trips),
                connect_ns: connected_ns.saturating_sub(start.ns),
                open_ns: opened_ns.saturating_sub(connected_ns),
                fetch_ns: fetched_ns.saturating_sub(opened_ns),
            };
            report(&st, vdso, vvar, seed_vdso, seed_vvar, start.ns, &counts)
        });
    if let Err(e) = rebuilt {
        pr_warn!(
            "resume of snapshot {} from {} failed after the address space was replaced ({:?}): killing the caller\n",
            a.snapshot_id,
            Ipv4(a.peer_addr),
            e
        );
        CurrentTask::get().kill();
        return Err(e);
    }
    Ok(())
}

/// This host's first-touch pages of the snapshot `key` (from the record its last
/// children here left), if working sets are on and there is a record; `None` makes
/// the resume use the parent's, as the replay does.
fn first_touches_here(host: &Host, key: PagerKey) -> Option<KVec<HotPage>> {
    if !params::working_set() {
        return Some(KVec::new());
    }
    if !params::working_set_local() {
        return None;
    }
    host.working_sets().hot(key)
}

/// Opens snapshot `a` for a new pager on this host, which keeps `open`, an open an
/// earlier child here left at the parent. With `reuse_open`, one batch of READs
/// through `open` brings the snapshot's status page with the first-touch pages (and
/// the descriptor and lead pages, unless the open carries them checked already:
/// [`Checked`]): if the status word is the one `open` was granted with (the
/// snapshot is live and an open would hand out nothing new), `open` serves the pager
/// as it is: one round trip, no RPC. A lingering open was granted for this very
/// secret (`PagerKey`), and a release writes the status page before it revokes any
/// key. Otherwise the parent is asked (overlapped with that batch without
/// `reuse_open`), and the batch is used only if the parent grants the same snapshot.
/// Returns the pager's open, the batch if usable, and the lingering open when the
/// pager does not take it over (closed when dropped).
fn through_lingering(
    host: &Arc<Host>,
    conn: &Arc<Connection>,
    mut open: OpenAtParent,
    a: &ForkResumeArgs,
    port: u16,
    timeout_ms: u32,
    hot: Option<&[HotPage]>,
) -> Result<(Arc<RemoteRegion>, Option<Fetched>, Option<OpenAtParent>)> {
    let known = open.take_checked();
    let old = open.region();
    let hot = hot.unwrap_or(&old.hot);
    let read = |with_status, known| fetch_descriptor(old, &a.secret, hot, with_status, known);
    let asked = if params::reuse_open() {
        match read(true, known) {
            Ok(f) if f.status.is_some_and(|w| old.still_current(w)) => {
                return Ok((open.take_over(), Some(f), None));
            }
            fetched => RemoteRegion::open(conn.clone(), 0, a.snapshot_id, a.secret)
                .map(|remote| (remote, fetched)),
        }
    } else {
        RemoteRegion::open_during(conn.clone(), 0, a.snapshot_id, a.secret, || {
            read(false, known)
        })
    };
    let (remote, early) = match asked {
        Ok((remote, fetched)) => {
            let early = fetched.ok().filter(|_| remote.same_snapshot(old));
            (remote, early)
        }
        // A READ with keys a forced release revoked puts the connection in error, and
        // the parent's answer may be lost with it: ask again on a new connection,
        // without reading.
        Err(_) if !conn.is_up() => {
            let (conn, _) = host.connection_to(a.peer_addr, port, timeout_ms)?;
            (RemoteRegion::open(conn, 0, a.snapshot_id, a.secret)?, None)
        }
        Err(e) => return Err(e),
    };
    Ok((remote.into_shared()?, early, Some(open)))
}

/// How a resume reached the snapshot: through the pager its children on this host
/// already share, or through an open of its own for a new pager (with the
/// descriptor's batch when that was read already).
enum Opened {
    Shared(SnapshotInode),
    New(Arc<RemoteRegion>, Option<Fetched>),
}

/// What the descriptor's batch brought: the validated descriptor, the lead pages,
/// the first-touch pages kept, and the status word when it was asked for.
struct Fetched {
    desc: KVVec<u8>,
    lead: Lead,
    hot: Lead,
    status: Option<u64>,
}

/// Reads the snapshot's descriptor (one doorbell per 64 pages: one for any ordinary
/// process) and validates it completely. The lead pages the parent announced come in
/// the same batch when they fit in it, and so do as many of `hot` (the pages
/// earlier children touched first, in order; from this host's record or the
/// parent's, not trusted) as fit: only pages of the region after the lead pages are
/// read, and only those the validated descriptor puts at the region page named are
/// kept. With `with_status`, a snapshot's status page comes last in the batch. With
/// `known` (what an earlier resume here read and checked through the same open, or
/// an open of the same snapshot), neither the descriptor nor the lead pages are read
/// again.
fn fetch_descriptor(
    remote: &RemoteRegion,
    secret: &[u8; 16],
    hot: &[HotPage],
    with_status: bool,
    known: Option<Checked>,
) -> Result<Fetched> {
    let len = remote.info;
    if len == 0 || len > MAX_DESC_BYTES || len > remote.size {
        pr_info!("resume: peer's descriptor length {} refused\n", len);
        return Err(errno::ebadmsg());
    }
    // Usable when it holds the lead pages too (a resume with `lead_pages` 0 read none).
    let known = known.filter(|k| {
        k.desc.len() as u64 == len && (remote.lead_pages == 0 || !k.lead.offs.is_empty())
    });
    let mut desc =
        KVVec::with_capacity(if known.is_some() { 0 } else { len as usize }, GFP_KERNEL)?;
    let desc_pages = if known.is_some() {
        0
    } else {
        len.div_ceil(PAGE)
    };
    // The lead pages only when they ride on the descriptor's one batch.
    let lead_pages = match desc_pages.checked_add(remote.lead_pages as u64) {
        Some(n)
            if params::lead_pages()
                && known.is_none()
                && n as usize <= MAX_READ_BATCH
                && n.saturating_mul(PAGE) <= remote.size =>
        {
            remote.lead_pages as u64
        }
        _ => 0,
    };
    let status_off = remote.status_offset().filter(|_| with_status);
    let taken = desc_pages + lead_pages + u64::from(status_off.is_some());
    let hot = hot_in_batch(remote, taken, hot)?;
    let mut lead = KVVec::with_capacity((lead_pages * PAGE) as usize, GFP_KERNEL)?;
    let mut hot_bytes = KVVec::with_capacity(hot.len() * PAGE_SIZE, GFP_KERNEL)?;
    let mut status = None;
    let before_hot = desc_pages + lead_pages;
    let after_hot = before_hot + hot.len() as u64;
    let pages = after_hot + u64::from(status_off.is_some());
    let mut offs = [0u64; MAX_READ_BATCH];
    let mut p = 0u64;
    while p < pages {
        let n = ((pages - p) as usize).min(MAX_READ_BATCH);
        for (i, o) in offs[..n].iter_mut().enumerate() {
            let k = p + i as u64;
            *o = match (k.checked_sub(before_hot), status_off) {
                (None, _) => k * PAGE,
                (Some(h), _) if k < after_hot => {
                    u64::from(hot.get(h as usize).ok_or(EINVAL)?.region_page) * PAGE
                }
                (Some(_), Some(off)) => off,
                (Some(_), None) => return Err(EINVAL),
            };
        }
        remote.read_batch(&offs[..n], |i, bytes| {
            let k = p + i as u64;
            if k < desc_pages {
                let want = (len as usize - desc.len()).min(bytes.len());
                Ok(desc.extend_from_slice(&bytes[..want], GFP_KERNEL)?)
            } else if k < before_hot {
                Ok(lead.extend_from_slice(bytes, GFP_KERNEL)?)
            } else if k < after_hot {
                Ok(hot_bytes.extend_from_slice(bytes, GFP_KERNEL)?)
            } else {
                let word = bytes.first_chunk::<8>().ok_or(EINVAL)?;
                status = Some(u64::from_le_bytes(*word));
                Ok(())
            }
        })?;
        p += n as u64;
    }
    if let Some(known) = known {
        // Checked when it was read, against the MAC this open came with.
        let d = Descriptor::parse_validated(&known.desc).map_err(|_| errno::ebadmsg())?;
        let hot = hot_of(&d, len, &hot, &hot_bytes)?;
        return Ok(Fetched {
            desc: known.desc,
            lead: known.lead,
            hot,
            status,
        });
    }
    // Before anything in it is used: a peer without the secret cannot produce it.
    if !constant_time_eq(&descriptor_mac(secret, &desc), &remote.desc_mac) {
        pr_warn!("resume: snapshot descriptor does not match its MAC: refused\n");
        return Err(errno::ebadmsg());
    }
    let checked = Descriptor::parse(&desc).and_then(|d| {
        d.check_limits(&X86_64_LIMITS)?;
        // Every data page must lie in the registered region, after the descriptor.
        let data_end = d
            .data_bytes()
            .and_then(|b| b.checked_add(len.div_ceil(PAGE) * PAGE));
        match data_end {
            Some(end) if end <= remote.size => Ok(()),
            _ => Err(DescError::BadLength),
        }
    });
    let d = match checked {
        Ok(()) => Descriptor::parse_validated(&desc).map_err(|_| errno::ebadmsg())?,
        Err(e) => {
            pr_warn!("resume: corrupt snapshot descriptor ({:?}) refused\n", e);
            return Err(errno::ebadmsg());
        }
    };
    let lead = lead_of(&d, lead)?;
    let hot = hot_of(&d, len, &hot, &hot_bytes)?;
    Ok(Fetched {
        desc,
        lead,
        hot,
        status,
    })
}

/// The pages of `hot` the descriptor's batch has room for after its first `taken`
/// pages: each at most once, only pages of the region past the descriptor and the
/// lead copies (a hostile list cannot make the batch read outside the region, nor
/// the descriptor again).
fn hot_in_batch(remote: &RemoteRegion, taken: u64, hot: &[HotPage]) -> Result<KVec<HotPage>> {
    let room = params::first_touch_pages(MAX_HOT_PAGES)
        .min((MAX_READ_BATCH as u64).saturating_sub(taken) as usize);
    let mut out = KVec::with_capacity(room.min(hot.len()), GFP_KERNEL)?;
    if taken > MAX_READ_BATCH as u64 {
        return Ok(out);
    }
    let first_data = remote
        .info
        .div_ceil(PAGE)
        .saturating_add(remote.lead_pages.into());
    let end = remote.size / PAGE;
    for h in hot {
        if out.len() == room {
            break;
        }
        let page = u64::from(h.region_page);
        if page < first_data || page >= end || out.iter().any(|o| o.region_page == h.region_page) {
            continue;
        }
        // Within the capacity reserved above: no allocation.
        out.push(*h, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Keeps the first-touch pages read (`bytes`, one page per entry of `hot`) that the
/// validated descriptor puts where `hot` says; the others (a lying or outdated
/// record) are dropped with a log line and come by demand fault if a child needs
/// them.
fn hot_of(desc: &Descriptor<'_>, desc_len: u64, hot: &[HotPage], bytes: &[u8]) -> Result<Lead> {
    let mut kept = Lead::NONE;
    let mut dropped = 0usize;
    for (i, h) in hot.iter().enumerate() {
        let page = i
            .checked_mul(PAGE_SIZE)
            .and_then(|at| bytes.get(at..at.checked_add(PAGE_SIZE)?));
        match page.zip(desc.hot_page_offset(desc_len, *h)) {
            Some((page, off)) => {
                kept.offs.push(off, GFP_KERNEL)?;
                kept.bytes.extend_from_slice(page, GFP_KERNEL)?;
            }
            None => dropped += 1,
        }
    }
    if dropped > 0 {
        static LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);
        if LOG.allow() {
            pr_info!(
                "resume: {} of {} first-touch pages do not match the descriptor: dropped\n",
                dropped,
                hot.len()
            );
        }
    }
    Ok(kept)
}

/// Unpacks the lead pages read (`bytes`: the parent's packed copy, `abi::packed`):
/// a page is kept only if the descriptor lists its index among its lead offsets (once)
/// and it decompresses to a whole page. A copy that does not parse is dropped whole,
/// a page that does not fit alone, with a log line: those pages come by demand fault.
fn lead_of(desc: &Descriptor<'_>, bytes: KVVec<u8>) -> Result<Lead> {
    let mut kept = Lead::NONE;
    if bytes.is_empty() {
        return Ok(kept);
    }
    let mut all = KBox::new([0u64; MAX_LEAD_PAGES], GFP_KERNEL)?;
    let n = desc.lead_offsets(&mut all);
    static LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);
    let Ok(index) = PackedIndex::parse(&bytes) else {
        if LOG.allow() {
            pr_info!("resume: the peer's lead pages are malformed: ignored\n");
        }
        return Ok(kept);
    };
    let mut dropped = 0usize;
    kept.offs.reserve(index.len().min(n), GFP_KERNEL)?;
    kept.bytes
        .reserve(index.len().min(n) * PAGE_SIZE, GFP_KERNEL)?;
    let mut page = KVVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
    for p in index.pages() {
        let off = p.index.checked_mul(PAGE);
        let listed = off.is_some_and(|o| all[..n].contains(&o) && !kept.offs.contains(&o));
        match off.filter(|_| listed) {
            Some(off) if crate::packed::unpack_page(&p, &mut page).is_ok() => {
                kept.offs.push(off, GFP_KERNEL)?;
                kept.bytes.extend_from_slice(&page, GFP_KERNEL)?;
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 && LOG.allow() {
        pr_info!(
            "resume: {} of the peer's lead pages do not match its descriptor: dropped\n",
            dropped
        );
    }
    Ok(kept)
}

/// The task state and FPU image of a validated descriptor.
///
/// Boxed, and built in a frame of its own: the resume's stack must leave room for a
/// page fault (into the snapshot) taken while it runs, with our pager underneath.
#[inline(never)]
fn task_state<'a>(desc: &Descriptor<'a>) -> Result<(KBox<TaskState>, &'a [u8])> {
    let bytes = desc.state();
    let st = KBox::new(
        TaskState::from_bytes(bytes).ok_or_else(errno::ebadmsg)?,
        GFP_KERNEL,
    )?;
    let fpu = bytes.get(TASK_STATE_LEN..).ok_or_else(errno::ebadmsg)?;
    if fpu.len() != st.fpu_len as usize {
        return Err(errno::ebadmsg());
    }
    let args_len = core::mem::size_of::<ForkCaptureArgs>() as u64;
    if let Err(e) = st.validate(&X86_64_LIMITS, args_len) {
        pr_warn!("resume: snapshot task state refused ({:?})\n", e);
        return Err(errno::ebadmsg());
    }
    Ok((st, fpu))
}

fn overlaps(start: u64, end: u64, r: Range) -> bool {
    r.start < end && start < r.end
}

/// The launcher's vDSO and vvar.
fn launcher_specials() -> Result<(Range, Range)> {
    let mm = MmapReadGuard::current()?;
    let (mut vdso, mut vvar) = (Range::default(), Range::default());
    let mut addr = 0;
    while let Some(v) = mm.vma_from(addr) {
        addr = v.end;
        match v.special {
            Special::Vdso => {
                vdso = Range {
                    start: v.start,
                    end: v.end,
                }
            }
            Special::Vvar => {
                vvar = Range {
                    start: v.start,
                    end: v.end,
                }
            }
            _ => {}
        }
    }
    if vdso.start == 0 || vvar.start == 0 {
        return Err(errno::eopnotsupp());
    }
    Ok((vdso, vvar))
}

fn seed_specials(desc: &Descriptor<'_>) -> Result<(Range, Range)> {
    let (mut vdso, mut vvar) = (Range::default(), Range::default());
    for i in 0..desc.n_vmas() {
        let v = desc.vma(i).ok_or(EINVAL)?;
        if v.flags & vma_flags::VDSO != 0 {
            vdso = Range {
                start: v.start,
                end: v.end,
            };
        } else if v.flags & vma_flags::VVAR != 0 {
            vvar = Range {
                start: v.start,
                end: v.end,
            };
        }
    }
    if vdso.start == 0 || vvar.start == 0 {
        return Err(errno::ebadmsg());
    }
    Ok((vdso, vvar))
}

/// This host's copies of the seed's clean mapped files, by file record (`None` where
/// the file is missing or not the seed's; all `None` with `local_files=0`). Opened as
/// the caller (its root, its credentials): a child maps only files its launcher can
/// read.
fn open_local_files(desc: &Descriptor<'_>) -> Result<KVVec<Option<OpenFile>>> {
    let mut out = KVVec::with_capacity(desc.n_files(), GFP_KERNEL)?;
    let enabled = params::local_files();
    let mut path = KVec::with_capacity(crate::abi::snapshot::FILE_PATH_MAX + 1, GFP_KERNEL)?;
    for id in 1..=desc.n_files() as u32 {
        let rec = desc.file(id).ok_or(EINVAL)?;
        let local = if enabled {
            path.clear_for_reuse();
            path.extend_from_slice(rec.path(), GFP_KERNEL)?;
            path.push(0, GFP_KERNEL)?;
            let cpath = kernel::str::CStr::from_bytes_with_nul(&path).map_err(|_| EINVAL)?;
            let found = OpenFile::open_read(cpath).and_then(|f| Ok((f.identity()?, f)));
            match found {
                Ok((ident, f))
                    if ident.size == rec.size
                        && ident.mtime_sec == rec.mtime_sec
                        && ident.head_hash == rec.head_hash =>
                {
                    Some(f)
                }
                other => {
                    count(&COUNTERS.files_refused, 1);
                    static LOG: crate::util::RateLimit = crate::util::RateLimit::new(16);
                    if LOG.allow() {
                        let why = match other {
                            Ok((ident, _)) if ident.size != rec.size => "its size differs",
                            Ok((ident, _)) if ident.mtime_sec != rec.mtime_sec => {
                                "its modification time differs"
                            }
                            Ok(_) => "its first page differs",
                            Err(e) if e == ENOENT => "it does not exist here",
                            Err(_) => "it cannot be opened as the caller",
                        };
                        pr_info!(
                            "resume: {} is not the seed's file ({}): its pages come from the snapshot\n",
                            cpath,
                            why
                        );
                    }
                    None
                }
            }
        } else {
            None
        };
        out.push(local, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Unmaps the launcher (except vDSO/vvar) and maps every seed VMA: a clean file
/// mapping from this host's copy of the file when `local` has it, everything else
/// from the snapshot file.
#[inline(never)]
fn rebuild(
    desc: &Descriptor<'_>,
    file: &crate::snapfs::File,
    local: &[Option<OpenFile>],
    st: &TaskState,
) -> Result {
    // The launcher's VMAs, in as few ranges as the vDSO and vvar (kept) leave: one
    // `munmap` per range, not per VMA (each takes the mmap lock, tears down page
    // tables and flushes the TLB: under emulation the launcher's 9 VMAs took 0.6-0.9
    // ms to unmap one by one, its 2 ranges 0.5 ms). Gaps inside a range hold nothing
    // to unmap.
    let mut doomed = KVVec::new();
    {
        let mm = MmapReadGuard::current()?;
        let (mut addr, mut seen) = (0, 0usize);
        let mut range: Option<(u64, u64)> = None;
        while let Some(v) = mm.vma_from(addr) {
            addr = v.end;
            seen += 1;
            if seen > MAX_VMAS {
                return Err(E2BIG);
            }
            if matches!(v.special, Special::Vdso | Special::Vvar) {
                if let Some(r) = range.take() {
                    doomed.push(r, GFP_KERNEL)?;
                }
            } else {
                range = Some((range.map_or(v.start, |(start, _)| start), v.end));
            }
        }
        if let Some(r) = range {
            doomed.push(r, GFP_KERNEL)?;
        }
    }
    for &(start, end) in doomed.iter() {
        mm::unmap(start, end - start)?;
    }
    let mut stacks = KVVec::new();
    for i in 0..desc.n_vmas() {
        let v = desc.vma(i).ok_or(EINVAL)?;
        if v.flags & (vma_flags::VDSO | vma_flags::VVAR) != 0 {
            continue;
        }
        let mut prot = 0;
        for (bit, p) in [
            (vma_flags::READ, bindings::PROT_READ),
            (vma_flags::WRITE, bindings::PROT_WRITE),
            (vma_flags::EXEC, bindings::PROT_EXEC),
        ] {
            if v.flags & bit != 0 {
                prot |= p;
            }
        }
        let mut map_flags = MAP_FLAGS;
        if v.flags & vma_flags::NORESERVE != 0 {
            map_flags |= bindings::MAP_NORESERVE as u64;
        }
        // A stack is anonymous memory in the child, filled below: the kernel reads
        // `/proc/PID/cmdline` and `environ` from it only if it is anonymous
        // (`FOLL_ANON`), and only anonymous memory grows down.
        let stack = v.flags & vma_flags::GROWSDOWN != 0 && v.flags & vma_flags::FILE == 0;
        if stack {
            map_flags |= (bindings::MAP_ANONYMOUS | bindings::MAP_GROWSDOWN) as u64;
        }
        let len = v.end - v.start;
        let own_file = (v.file_id as usize)
            .checked_sub(1)
            .and_then(|f| local.get(f))
            .and_then(|f| f.as_ref());
        if let Some(f) = own_file {
            // Like `exec` maps a library: the same file at the seed's offset. A refusal
            // (a `noexec` mount for an executable mapping) falls back to the snapshot.
            if mm::map(Some(f), v.start, len, prot, map_flags as u32, v.file_offset).is_ok() {
                count(&COUNTERS.vmas_local, 1);
                continue;
            }
        }
        let (src, offset): (Option<&dyn mm::MapSource>, u64) = if stack {
            (None, 0)
        } else {
            // The VMA's own window of the file (`window_offset`; the count was
            // checked against `MAX_WINDOWED_VMAS`).
            (Some(file), window_offset(i))
        };
        mm::map(src, v.start, len, prot, map_flags as u32, offset).inspect_err(|e| {
            pr_warn!(
                "resume: mapping {:#x}-{:#x} failed ({:?})\n",
                v.start,
                v.end,
                e
            )
        })?;
        if stack {
            stacks.push(i, GFP_KERNEL)?;
        }
    }
    for &i in stacks.iter() {
        file.pager().copy_vma_to_user(file.mapping(), i)?;
    }
    MmapWriteGuard::current()?.set_layout(&MmLayout {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk: st.brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
    });
    Ok(())
}

/// Registers, FPU, FS/GS, per-thread user pointers and signal state.
#[inline(never)]
fn restore_task(st: &TaskState, fpu: &[u8]) -> Result {
    let task = CurrentTask::get();
    for (i, &v) in st.regs.iter().enumerate() {
        // The launcher's code and stack segments stay; the seed's orig_ax would only
        // confuse syscall restart.
        if i == reg::CS || i == reg::SS || i == reg::ORIG_AX {
            continue;
        }
        let v = if i == reg::FLAGS {
            (v & USER_EFLAGS) | EFLAGS_IF
        } else {
            v
        };
        task.set_user_reg(i, v)?;
    }
    fpu::install(fpu)?;
    task.set_fs_gs_base(st.fsbase, st.gsbase)?;
    task.set_user_state(&UserState {
        rseq: st.rseq,
        rseq_len: st.rseq_len as u64,
        rseq_sig: st.rseq_sig as u64,
        robust_list: st.robust_list,
        clear_child_tid: st.clear_child_tid,
        set_child_tid: st.set_child_tid,
        sas_ss_sp: st.sas_ss_sp,
        sas_ss_size: st.sas_ss_size,
        sas_ss_flags: st.sas_ss_flags as u64,
        blocked: 0,
    });
    if st.set_child_tid != 0 {
        // Like CLONE_CHILD_SETTID: the C library's cached thread id becomes ours.
        UserSlice::new(st.set_child_tid as usize, 4)
            .writer()
            .write_slice(&task.tid().to_ne_bytes())?;
    }
    task.set_sigactions(&st.sigactions);
    task.set_blocked(st.blocked)
}

/// Writes the child's report into the seed's `ForkCaptureArgs`.
/// What the resume did before the child's first instruction, for its report.
struct Counts {
    eager_pages: u64,
    prefetched: u64,
    round_trips: u64,
    connect_ns: u64,
    open_ns: u64,
    fetch_ns: u64,
}

/// The report's fields: `ForkCaptureArgs` from `child_vdso` to its end.
const REPORT_FIELDS: usize = 14;
const _: () = assert!(
    core::mem::offset_of!(ForkCaptureArgs, child_vdso) + 8 * REPORT_FIELDS
        == core::mem::size_of::<ForkCaptureArgs>()
);

fn report(
    st: &TaskState,
    vdso: Range,
    vvar: Range,
    seed_vdso: Range,
    seed_vvar: Range,
    start_ns: u64,
    counts: &Counts,
) -> Result {
    let fields: [u64; REPORT_FIELDS] = [
        vdso.start,
        vvar.start,
        seed_vdso.start,
        seed_vvar.start,
        vdso.end - vdso.start,
        vvar.end - vvar.start,
        start_ns,
        counts.eager_pages,
        counts.prefetched,
        counts.round_trips,
        counts.connect_ns,
        counts.open_ns,
        counts.fetch_ns,
        now_ns().saturating_sub(start_ns),
    ];
    let at = st
        .capture_args
        .checked_add(core::mem::offset_of!(ForkCaptureArgs, child_vdso) as u64)
        .ok_or(EFAULT)?;
    let mut bytes = [0u8; 8 * REPORT_FIELDS];
    for (chunk, f) in bytes.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&f.to_ne_bytes());
    }
    UserSlice::new(at as usize, bytes.len())
        .writer()
        .write_slice(&bytes)
}
