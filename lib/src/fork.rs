//! Remote fork: [`Mitosis::fork_prepare`], [`Mitosis::fork_resume`],
//! [`Mitosis::fork_release`].
//!
//! `fork_prepare` is fork-like. It `fork()`s a *seed*, a copy-on-write image of the
//! caller at this moment, which enters the `FORK_CAPTURE` ioctl: the module captures it
//! (registers, FPU, signal state, every VMA and page, pages referenced until release),
//! the seed sends the handle back through a pipe and exits. The caller gets
//! [`Forked::Parent`]. A launcher anywhere calls `fork_resume(handle)`: its address
//! space and registers become the seed's and it continues *inside this function*, in
//! the seed's branch, where `FORK_CAPTURE` now returns 0: the function returns
//! [`Forked::Child`] there. The child keeps the launcher's pid, credentials, namespaces
//! and file descriptors.
//!
//! Before anything else the child's branch moves the vDSO and vvar back to the seed's
//! addresses (the C library caches vDSO entry points), re-points the seed's
//! `/dev/mitosis` descriptor number at the device (so the [`Mitosis`] value stays
//! usable: a child can prepare again) and restores the signal mask, which the seed
//! blocked for this window.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use mitosis_abi::ioctl::{self as abi, release_flags, resume_flags, Header};

use crate::{format_secret, parse_secret, Mitosis, DEVICE_PATH};

/// Everything a launcher needs to resume from a snapshot: where, which, the secret,
/// and the seed's clock. Text form: `IP:PORT/ID/SECRET[/CLOCK_MS]` (secret as 32 hex
/// digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHandle {
    pub host: Ipv4Addr,
    pub port: u16,
    pub id: u64,
    pub secret: [u8; 16],
    /// The parent's `CLOCK_BOOTTIME` in milliseconds, rounded up, read after the
    /// capture: no clock the seed had read (`CLOCK_MONOTONIC` never runs ahead of
    /// `CLOCK_BOOTTIME`) is later than this. A launcher with a time namespace
    /// (`mitosis run`) starts the child's clocks here so they never go backwards.
    pub seed_clock_ms: Option<u64>,
}

impl fmt::Display for SnapshotHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}/{}",
            self.host,
            self.port,
            self.id,
            format_secret(&self.secret)
        )?;
        match self.seed_clock_ms {
            Some(ms) => write!(f, "/{ms}"),
            None => Ok(()),
        }
    }
}

impl FromStr for SnapshotHandle {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<Self> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a snapshot handle (IP:PORT/ID/SECRET[/CLOCK_MS]): {s:?}"),
            )
        };
        let mut parts = s.trim().split('/');
        let (addr, id, secret) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        let seed_clock_ms = match parts.next() {
            Some(ms) => Some(ms.parse().map_err(|_| bad())?),
            None => None,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        let (host, port) = addr.split_once(':').ok_or_else(bad)?;
        Ok(SnapshotHandle {
            host: host.parse().map_err(|_| bad())?,
            port: port.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
            secret: parse_secret(secret).ok_or_else(bad)?,
            seed_clock_ms,
        })
    }
}

/// What `fork_prepare` measured in the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub handle: SnapshotHandle,
    /// Wall time of the whole call (fork, capture, handle back), and of the capture in
    /// the module.
    pub total: Duration,
    pub capture: Duration,
    pub n_vmas: u64,
    pub present_pages: u64,
    pub hole_pages: u64,
    pub desc_bytes: u64,
}

/// What a resumed child learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// `CLOCK_MONOTONIC` when the resume call entered the module, as the kernel reads
    /// it (a time namespace's offset, as `mitosis run` gives its child, not applied).
    pub resume_start_ns: u64,
    /// From the resume call entering the module to the child's first instruction
    /// after the vDSO move (both `CLOCK_MONOTONIC`).
    pub resume: Duration,
    /// Pages fetched before the child ran (eager mode).
    pub eager_pages: u64,
    /// Pages prefetched before the child ran from the working set earlier children of
    /// the snapshot fetched on this host.
    pub prefetched_pages: u64,
    /// Network round trips of the resume call (control RPCs and READ doorbells, not
    /// counting a new connection's setup).
    pub round_trips: u64,
    /// Parts of `resume`: getting the connection (zero when pooled), the open at the
    /// parent (one RPC), and reading the descriptor, lead pages and working-set
    /// record; the rest rebuilt the address space and task.
    pub connect: Duration,
    pub open: Duration,
    pub fetch: Duration,
    /// The resume call in the module, up to its report (the rest of `resume` is the
    /// return to user space and the library's first steps in the child).
    pub in_module: Duration,
}

/// The two returns of [`Mitosis::fork_prepare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forked {
    Parent(Prepared),
    Child(Resumed),
}

/// How a launcher resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumeOptions {
    /// Fetch every present page before the child runs.
    pub eager: bool,
    pub connect_timeout: Option<Duration>,
    /// Become this identity before resuming (see [`Identity`]); `None` keeps the
    /// launcher's credentials.
    pub user: Option<Identity>,
}

/// An unprivileged identity a child runs as: the launcher drops every supplementary
/// group, sets its real, effective and saved gid and uid, and sets `no_new_privs`, all
/// before the resume call (the device stays usable through the descriptor opened
/// before). A launcher that cannot do all of it does not resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// Makes the calling process this identity, irreversibly.
    fn assume(&self) -> io::Result<()> {
        let check = |r: libc::c_int, what: &str| {
            if r == 0 {
                Ok(())
            } else {
                let e = io::Error::last_os_error();
                Err(io::Error::new(e.kind(), format!("{what}: {e}")))
            }
        };
        // SAFETY: plain credential and prctl system calls on this process.
        unsafe {
            check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
            check(libc::setresgid(self.gid, self.gid, self.gid), "setresgid")?;
            check(libc::setresuid(self.uid, self.uid, self.uid), "setresuid")?;
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                "no_new_privs",
            )?;
        }
        Ok(())
    }
}

/// Makes the `FORK_CAPTURE` call: `fd` is `/dev/mitosis`, `args` the seed's
/// argument struct. Returns the syscall result (negative errno on failure).
pub type CaptureFn = unsafe fn(fd: i32, args: *mut abi::ForkCaptureArgs) -> i64;

/// The default [`CaptureFn`]: `ioctl(2)`.
///
/// # Safety
///
/// `args` points to a valid, writable `ForkCaptureArgs`.
pub unsafe fn ioctl_capture(fd: i32, args: *mut abi::ForkCaptureArgs) -> i64 {
    // SAFETY: per the contract.
    let r = unsafe { libc::ioctl(fd, abi::IOC_FORK_CAPTURE as _, args) };
    if r < 0 {
        -(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as i64)
    } else {
        r as i64
    }
}

/// Places tried for the launcher's vDSO when it is in the seed's way: low in the
/// address space, below where mmap and the vDSO are placed.
const VDSO_PARKING: [u64; 3] = [0x1000_0000_0000, 0x0800_0000_0000, 0x0000_4000_0000];

/// This process's vvar and vDSO (adjacent: vvar first), from /proc/self/maps.
#[derive(Clone, Copy, Debug)]
pub struct OwnVdso {
    vvar: u64,
    vvar_len: u64,
    vdso: u64,
    vdso_len: u64,
}

/// Where this process's vvar and vDSO are.
pub fn own_vdso() -> Option<OwnVdso> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let range = |name: &str| {
        maps.lines().find(|l| l.ends_with(name)).and_then(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            Some((a, b - a))
        })
    };
    let (vvar, vvar_len) = range("[vvar]")?;
    let (vdso, vdso_len) = range("[vdso]")?;
    Some(OwnVdso {
        vvar,
        vvar_len,
        vdso,
        vdso_len,
    })
}

impl OwnVdso {
    /// Moves vvar and vDSO (keeping their distance) to `base`, if that range is free.
    /// Until they are back (or the process is a resumed child), nothing may call into
    /// the vDSO: the C library cached its old address.
    pub fn move_to(&self, base: u64) -> bool {
        let span = self.vdso + self.vdso_len - self.vvar;
        // SAFETY: a reservation only where nothing is mapped (FIXED_NOREPLACE).
        let got = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                span as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if got as u64 != base {
            if got != libc::MAP_FAILED {
                // SAFETY: the reservation we just made elsewhere.
                unsafe { libc::munmap(got, span as usize) };
            }
            return false;
        }
        let delta = self.vdso - self.vvar;
        if move_mapping(self.vvar, base, self.vvar_len).is_err() {
            // SAFETY: our reservation.
            unsafe { libc::munmap(got, span as usize) };
            return false;
        }
        if move_mapping(self.vdso, base + delta, self.vdso_len).is_err() {
            let _ = move_mapping(base, self.vvar, self.vvar_len);
            // SAFETY: our reservation (what is left of it).
            unsafe { libc::munmap(got, span as usize) };
            return false;
        }
        true
    }

    /// Undoes [`OwnVdso::move_to`].
    fn move_back(&self, base: u64) {
        let _ = move_mapping(base + (self.vdso - self.vvar), self.vdso, self.vdso_len);
        let _ = move_mapping(base, self.vvar, self.vvar_len);
    }
}

/// What a seed whose capture failed sends its parent (a captured seed is ended by the
/// module and sends nothing).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SeedReport {
    errno: i64,
}

/// 64 random bits from the kernel.
fn random_u64() -> io::Result<u64> {
    let mut v = 0u64;
    // SAFETY: `v` is writable for 8 bytes.
    let n = unsafe { libc::getrandom(&mut v as *mut u64 as *mut libc::c_void, 8, 0) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// This host's address for handles: `MITOSIS_HOST` if set, else the IPv4 address of
/// the first interface with a route that is not loopback (`/proc/net/route`, then
/// `SIOCGIFADDR`; this works in static binaries, where `getifaddrs` may not).
pub fn local_host() -> io::Result<Ipv4Addr> {
    if let Ok(h) = std::env::var("MITOSIS_HOST") {
        return h.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MITOSIS_HOST is not an IPv4 address: {h:?}"),
            )
        });
    }
    let routes = std::fs::read_to_string("/proc/net/route")?;
    for name in routes
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        if name == "lo" || name.len() >= 16 {
            continue;
        }
        if let Ok(addr) = interface_addr(name) {
            return Ok(addr);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no routed IPv4 interface for the snapshot handle (set MITOSIS_HOST)",
    ))
}

/// `SIOCGIFADDR` of interface `name` (shorter than 16 bytes).
fn interface_addr(name: &str) -> io::Result<Ipv4Addr> {
    const SIOCGIFADDR: libc::c_ulong = 0x8915;
    // struct ifreq: 16-byte name, then a sockaddr_in (family, port, address).
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `req` is a 40-byte ifreq the kernel fills.
    let r = unsafe { libc::ioctl(fd, SIOCGIFADDR as _, req.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(err);
    }
    Ok(Ipv4Addr::new(req[20], req[21], req[22], req[23]))
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_BOOTTIME` in nanoseconds (the clock a time namespace offsets with
/// `CLOCK_MONOTONIC`).
pub fn boottime_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// `mremap(from, len) -> to` by raw syscall (nothing here may touch the vDSO yet).
fn move_mapping(from: u64, to: u64, len: u64) -> io::Result<()> {
    if from == to || len == 0 {
        return Ok(());
    }
    // SAFETY: moves a special mapping of this process; the target is free in the
    // child (the module never maps the seed's vDSO/vvar ranges).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            from,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to,
        )
    };
    if r as u64 != to {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the vDSO and vvar where the seed had them. Moves through a scratch area when
/// a target overlaps the other mapping's current place.
fn restore_vdso(a: &abi::ForkCaptureArgs) -> io::Result<()> {
    let overlap = |s1: u64, l1: u64, s2: u64, l2: u64| s1 < s2 + l2 && s2 < s1 + l1;
    let (mut vvar, mut vdso) = (a.child_vvar, a.child_vdso);
    if overlap(a.seed_vvar, a.vvar_len, vdso, a.vdso_len)
        || overlap(a.seed_vdso, a.vdso_len, vvar, a.vvar_len)
    {
        let total = a.vvar_len + a.vdso_len;
        // SAFETY: a fresh reservation, replaced by the moves below.
        let scratch = unsafe {
            libc::syscall(
                libc::SYS_mmap,
                0usize,
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1i32,
                0usize,
            )
        } as u64;
        if scratch > u64::MAX - 4095 {
            return Err(io::Error::last_os_error());
        }
        move_mapping(vvar, scratch, a.vvar_len)?;
        move_mapping(vdso, scratch + a.vvar_len, a.vdso_len)?;
        vvar = scratch;
        vdso = scratch + a.vvar_len;
    }
    move_mapping(vvar, a.seed_vvar, a.vvar_len)?;
    move_mapping(vdso, a.seed_vdso, a.vdso_len)
}

/// Process attributes a forked child inherits from its parent but a resumed child
/// would otherwise take from its launcher, recorded by the parent before the seed is
/// forked (so they are in the snapshot) and applied in the child.
struct Inherited {
    /// `comm` (what `ps` shows), NUL-terminated.
    comm: [u8; 16],
    umask: libc::mode_t,
    /// The working directory, re-entered by path if it exists in the child's root.
    cwd: Option<std::ffi::CString>,
}

impl Inherited {
    fn record() -> Self {
        let mut comm = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes; `umask` is read by setting it
        // and restoring it at once (single-threaded: the library refuses otherwise).
        let umask = unsafe {
            libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr());
            let u = libc::umask(0o022);
            libc::umask(u);
            u
        };
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok());
        Inherited { comm, umask, cwd }
    }

    /// In the child: the parent's name, umask and directory; no interval timers and no
    /// pending signals of the launcher (a forked child starts with neither). Signals
    /// are all blocked here, so the pending ones can be taken off one by one.
    fn apply(&self) {
        // SAFETY: plain system calls on this process's own attributes; `comm` is
        // NUL-terminated (PR_GET_NAME), `cwd` a C string.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, self.comm.as_ptr());
            libc::umask(self.umask);
            if let Some(dir) = &self.cwd {
                libc::chdir(dir.as_ptr());
            }
            let off: libc::itimerval = std::mem::zeroed();
            for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
                libc::setitimer(which, &off, std::ptr::null_mut());
            }
            let mut pending: libc::sigset_t = std::mem::zeroed();
            let now: libc::timespec = std::mem::zeroed();
            if libc::sigpending(&mut pending) == 0 {
                for sig in 1..libc::SIGRTMAX() {
                    if libc::sigismember(&pending, sig) == 1 {
                        let mut one: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut one);
                        libc::sigaddset(&mut one, sig);
                        while libc::sigtimedwait(&one, std::ptr::null_mut(), &now) == sig {}
                    }
                }
            }
        }
    }
}

/// The child's first steps (see the module docs); returns what it learned. The
/// caller's `errno` is the seed's at the prepare call, as after `fork()`.
fn child_start(
    m: &Mitosis,
    a: &abi::ForkCaptureArgs,
    old_mask: &libc::sigset_t,
    inherited: &Inherited,
) -> Forked {
    if restore_vdso(a).is_err() {
        // No usable vDSO: the C library would crash on the first clock read.
        // SAFETY: terminating the process is always sound.
        unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    }
    // SAFETY: the thread's errno slot (TLS is the seed's, restored by the module).
    let saved_errno = unsafe { *libc::__errno_location() };
    let first = monotonic_ns();
    m.reattach();
    inherited.apply();
    // SAFETY: `old_mask` is the mask saved before the seed blocked signals.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, old_mask, std::ptr::null_mut()) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
    Forked::Child(Resumed {
        resume_start_ns: a.resume_start_ns,
        resume: Duration::from_nanos(first.saturating_sub(a.resume_start_ns)),
        eager_pages: a.eager_pages,
        prefetched_pages: a.prefetched_pages,
        round_trips: a.round_trips,
        connect: Duration::from_nanos(a.connect_ns),
        open: Duration::from_nanos(a.open_ns),
        fetch: Duration::from_nanos(a.fetch_ns),
        in_module: Duration::from_nanos(a.in_module_ns),
    })
}

impl Mitosis {
    /// Gives a resumed child its own `/dev/mitosis` descriptor. The seed's number
    /// means nothing in the child, whose table is the launcher's: it may be free, or
    /// be a file the launcher handed over, which must not be touched. So the child
    /// opens the device, at whatever number is free, when it first needs it; if it
    /// cannot, calls fail with `EBADF` instead of reaching an unrelated file.
    fn reattach(&self) {
        let path = c"/dev/mitosis";
        debug_assert_eq!(path.to_bytes(), DEVICE_PATH.as_bytes());
        let fd = self.fd();
        // SAFETY: zeroed `stat` buffers are valid; both are written by the calls.
        let (mut st, mut dev): (libc::stat, libc::stat) = unsafe { std::mem::zeroed() };
        // SAFETY: `st`/`dev` are writable stat buffers; `path` is NUL-terminated.
        let is_device = unsafe {
            libc::fstat(fd, &mut st) == 0
                && libc::stat(path.as_ptr(), &mut dev) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFCHR
                && st.st_rdev == dev.st_rdev
        };
        if is_device {
            // The launcher's own device descriptor has the same number: share it.
            return;
        }
        // Opened when the child first calls the library (`Mitosis::fd`): a child that
        // never does holds no device descriptor.
        self.fd
            .store(crate::REOPEN_ON_USE, std::sync::atomic::Ordering::Release);
    }

    /// Snapshots the calling process (see the module docs). Returns twice, like
    /// `fork()`: [`Forked::Parent`] here, [`Forked::Child`] in every resumed child.
    pub fn fork_prepare(&self) -> io::Result<Forked> {
        self.fork_prepare_with(ioctl_capture)
    }

    /// [`Mitosis::fork_prepare`] with the `FORK_CAPTURE` call made by `capture`
    /// (for tests that load registers around the raw syscall). `capture` returns the
    /// syscall's result: 1 (seed), 0 (resumed child) or a negative errno.
    pub fn fork_prepare_with(&self, capture: CaptureFn) -> io::Result<Forked> {
        let host = local_host()
            .map_err(|e| io::Error::new(e.kind(), format!("this host's address: {e}")))?;
        let start = monotonic_ns();
        let token = random_u64()?;
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` has room for two descriptors.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("pipe2: {e}")));
        }
        let (rd, wr) = (pipe[0], pipe[1]);
        let inherited = Inherited::record();
        // SAFETY: zeroed sigset_t is a valid (empty) set, then filled.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sets.
        unsafe {
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // SAFETY: the seed branch only makes raw syscalls until it exits (or, resumed,
        // until it has restored the vDSO).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut a = abi::ForkCaptureArgs {
                hdr: Header::for_struct::<abi::ForkCaptureArgs>(),
                claim_token: token,
                ..Default::default()
            };
            // SAFETY: `a` is a valid ForkCaptureArgs.
            let r = unsafe { capture(self.fd(), &mut a) };
            if r == 0 {
                // A child resumed from this snapshot.
                return Ok(child_start(self, &a, &old, &inherited));
            }
            // Still here: the capture failed (a captured seed never gets back).
            let report = SeedReport {
                errno: if r < 0 { -r } else { libc::EPROTO as i64 },
            };
            // SAFETY: writing a plain struct to our pipe, then leaving without running
            // any of the parent's exit handlers.
            unsafe {
                libc::write(
                    wr,
                    &report as *const SeedReport as *const libc::c_void,
                    std::mem::size_of::<SeedReport>(),
                );
                libc::_exit(0);
            }
        }
        // SAFETY: restoring the caller's mask; closing our copy of the write end.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::close(wr);
        }
        if pid < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: our descriptor.
            unsafe { libc::close(rd) };
            return Err(e);
        }
        let mut report = SeedReport::default();
        let want = std::mem::size_of::<SeedReport>();
        let mut got = 0usize;
        while got < want {
            // SAFETY: reading into the rest of `report`.
            let n = unsafe {
                libc::read(
                    rd,
                    (&mut report as *mut SeedReport as *mut u8).add(got) as *mut libc::c_void,
                    want - got,
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        // SAFETY: reaping our own child; closing our descriptor.
        unsafe {
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
            libc::close(rd);
        }
        if got == want {
            return Err(io::Error::from_raw_os_error(report.errno as i32));
        }
        // The seed was captured and ended by the module: collect its result.
        let mut a = abi::ForkClaimArgs {
            seed_pid: pid as u32,
            claim_token: token,
            ..Default::default()
        };
        self.call(abi::IOC_FORK_CLAIM, &mut a)?;
        Ok(Forked::Parent(Prepared {
            handle: SnapshotHandle {
                host,
                port: a.listen_port as u16,
                id: a.snapshot_id,
                secret: a.secret,
                seed_clock_ms: Some(boottime_ns().div_ceil(1_000_000)),
            },
            total: Duration::from_nanos(monotonic_ns() - start),
            capture: Duration::from_nanos(a.capture_ns),
            n_vmas: a.n_vmas,
            present_pages: a.present_pages,
            hole_pages: a.hole_pages,
            desc_bytes: a.desc_bytes,
        }))
    }

    /// Becomes a child of the snapshot: does not return on success (the process goes
    /// on in the seed's `fork_prepare`, which returns [`Forked::Child`]). The error
    /// says why the launcher is still itself.
    pub fn fork_resume(&self, handle: &SnapshotHandle, opts: ResumeOptions) -> io::Error {
        if let Some(user) = opts.user {
            // The device is opened with the launcher's rights, before they go.
            if self.fd() < 0 {
                return io::Error::last_os_error();
            }
            if let Err(e) = user.assume() {
                return e;
            }
        }
        let mut a = abi::ForkResumeArgs {
            peer_addr: u32::from_ne_bytes(handle.host.octets()),
            peer_port: handle.port,
            timeout_ms: opts
                .connect_timeout
                .map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32),
            flags: if opts.eager { resume_flags::EAGER } else { 0 },
            snapshot_id: handle.id,
            secret: handle.secret,
            ..Default::default()
        };
        let first = match self.call(abi::IOC_FORK_RESUME, &mut a) {
            Err(e) => e,
            Ok(()) => return io::Error::other("resume returned without replacing the process"),
        };
        if first.raw_os_error() != Some(libc::EADDRINUSE) {
            return first;
        }
        // Our vDSO sits where the seed has memory (address-space randomisation put them
        // on top of each other): move it out of the way and try again. Nothing here
        // reads a clock until it is back or the process is the child.
        let Some(own) = own_vdso() else {
            return first;
        };
        for hint in VDSO_PARKING {
            if !own.move_to(hint) {
                continue;
            }
            let r = self.call(abi::IOC_FORK_RESUME, &mut a);
            own.move_back(hint);
            match r {
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                Err(e) => return e,
                Ok(()) => return io::Error::other("resume returned without replacing the process"),
            }
        }
        first
    }

    /// Ends a snapshot of this host. With `force`, running children lose access too.
    pub fn fork_release(&self, handle: &SnapshotHandle, force: bool) -> io::Result<()> {
        let mut a = abi::ForkReleaseArgs {
            snapshot_id: handle.id,
            secret: handle.secret,
            flags: if force { release_flags::FORCE } else { 0 },
            ..Default::default()
        };
        self.call(abi::IOC_FORK_RELEASE, &mut a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_text_round_trip() {
        let h = SnapshotHandle {
            host: Ipv4Addr::new(169, 254, 77, 1),
            port: 18515,
            id: 42,
            secret: [7; 16],
            seed_clock_ms: None,
        };
        let s = h.to_string();
        assert_eq!(s, "169.254.77.1:18515/42/07070707070707070707070707070707");
        assert_eq!(s.parse::<SnapshotHandle>().unwrap(), h);
        let timed = SnapshotHandle {
            seed_clock_ms: Some(123_456),
            ..h
        };
        let s = timed.to_string();
        assert_eq!(
            s,
            "169.254.77.1:18515/42/07070707070707070707070707070707/123456"
        );
        assert_eq!(s.parse::<SnapshotHandle>().unwrap(), timed);
        for bad in [
            "169.254.77.1:18515/42/07070707070707070707070707070707/",
            "169.254.77.1:18515/42/07070707070707070707070707070707/x",
            "169.254.77.1:18515/42/07070707070707070707070707070707/1/2",
        ] {
            assert!(bad.parse::<SnapshotHandle>().is_err(), "{bad}");
        }
        for bad in [
            "",
            "1.2.3.4/1/00",
            "1.2.3.4:1/x/07070707070707070707070707070707",
            "1.2.3.4:1/1/0707/extra",
        ] {
            assert!(bad.parse::<SnapshotHandle>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    /// A capture that fails like the module would.
    unsafe fn refuse(_fd: i32, _args: *mut abi::ForkCaptureArgs) -> i64 {
        -(libc::EINVAL as i64)
    }

    #[test]
    fn seed_errno_reaches_the_parent() {
        std::env::set_var("MITOSIS_HOST", "192.0.2.7");
        let m = Mitosis::open_path("/dev/null").unwrap();
        let e = m.fork_prepare_with(refuse).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }
}
