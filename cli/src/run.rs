//! `mitosis run`: the lean container launcher. The launcher makes a cgroup v2 group
//! with the limits, unshares a pid and a time namespace for its child, and forks the
//! container's first process, which joins the group, unshares mount, uts, ipc, cgroup
//! (and network) namespaces, switches to the root filesystem with /proc, the device
//! nodes and /dev/mitosis, and resumes the snapshot: the function becomes pid 1 of its
//! namespace. The launcher waits, removes the group and exits with the child's status.
//!
//! Exit status: the child's; 128+N when a signal N ended it; 125 when the launcher
//! failed before the child ran (like `docker run`), with the cause on stderr.

use crate::container::{ContainerSpec, Net};
use mitosis::{boottime_ns, monotonic_ns, Mitosis, ResumeOptions, SnapshotHandle};
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The status `mitosis run` exits with when the container could not be made.
pub const LAUNCH_FAILED: u8 = 125;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Device nodes every container gets (bound from the host), as OCI runtimes give.
const DEVICES: [&str; 7] = [
    "null", "zero", "full", "random", "urandom", "tty", "mitosis",
];

pub struct RunArgs {
    pub handle: SnapshotHandle,
    pub spec: ContainerSpec,
    pub eager: bool,
    pub connect_timeout: Option<Duration>,
    /// Keep this host's clocks (no time namespace).
    pub host_clock: bool,
    /// Print the launcher's phases as one JSON line on stderr before the resume.
    pub timing: bool,
}

fn realtime_ns() -> u64 {
    // CLOCK_REALTIME: the one clock the launcher and its time-namespaced child share.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

/// The child's cgroup: made with its limits, removed when dropped (after the child).
struct Cgroup {
    path: PathBuf,
    limits: String,
}

impl Cgroup {
    fn create(spec: &ContainerSpec) -> Result<Cgroup, String> {
        let root = Path::new(CGROUP_ROOT);
        // SAFETY: statfs fills the zeroed struct; the path is a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let c = cstr(root)?;
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0
            || st.f_type as i64 != CGROUP2_SUPER_MAGIC
        {
            return Err(format!(
                "cgroup v2 is not mounted at {CGROUP_ROOT} (mount -t cgroup2 none {CGROUP_ROOT})"
            ));
        }
        let parent = root.join("mitosis");
        let enable = |dir: &Path| {
            fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids").map_err(|e| {
                format!(
                    "enabling the memory, cpu and pids controllers in {}: {e}",
                    dir.display()
                )
            })
        };
        enable(root)?;
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", parent.display())),
        }
        enable(&parent)?;
        let path = parent.join(format!("run-{}", std::process::id()));
        fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cg = Cgroup {
            path,
            limits: String::new(),
        };
        let l = &spec.limits;
        if let Some(m) = l.memory_max {
            cg.set("memory.max", &m.to_string())?;
            // Over the limit means killed, not swapped out (absent without swap).
            let _ = fs::write(cg.path.join("memory.swap.max"), "0");
        }
        if let Some(c) = l.cpu {
            cg.set("cpu.max", &format!("{} {}", c.quota_us, c.period_us))?;
        }
        if let Some(p) = l.pids_max {
            cg.set("pids.max", &p.to_string())?;
        }
        Ok(cg)
    }

    fn set(&mut self, file: &str, value: &str) -> Result<(), String> {
        fs::write(self.path.join(file), value)
            .map_err(|e| format!("{}/{file} = {value}: {e}", self.path.display()))?;
        self.limits += &format!(" {file}={value}");
        Ok(())
    }

    /// A counter of a flat-keyed file (`memory.events`, `pids.events`).
    fn event(&self, file: &str, key: &str) -> u64 {
        fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The last task of the group leaves it a moment after its parent reaped it.
        for _ in 0..200 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => {
                    eprintln!("mitosis: removing {}: {e}", self.path.display());
                    return;
                }
            }
        }
        eprintln!("mitosis: {} still busy, left behind", self.path.display());
    }
}

/// The launcher forwards these to the container's first process.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Offsets that start the child's `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` no earlier
/// than the seed's (never backwards), written before any process enters the
/// namespace.
fn time_offsets(seed_clock_ms: u64) -> String {
    let seed = seed_clock_ms.saturating_mul(1_000_000);
    let line = |name: &str, now: u64| {
        let off = seed.saturating_sub(now);
        format!("{name} {} {}\n", off / 1_000_000_000, off % 1_000_000_000)
    };
    line("monotonic", monotonic_ns()) + &line("boottime", boottime_ns())
}

/// Runs the container; returns the exit status for `mitosis run`.
pub fn run(m: &Mitosis, a: RunArgs) -> u8 {
    let started = realtime_ns();
    match launch(m, &a, started) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mitosis: run: {msg}");
            LAUNCH_FAILED
        }
    }
}

fn launch(m: &Mitosis, a: &RunArgs, started: u64) -> Result<u8, String> {
    if let Some(root) = &a.spec.rootfs {
        if !root.is_dir() {
            return Err(format!(
                "root filesystem {} is not a directory",
                root.display()
            ));
        }
    }
    let cg = Cgroup::create(&a.spec)?;
    let cgroup_done = realtime_ns();
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cg.path.join("cgroup.procs"))
        .map_err(|e| format!("{}/cgroup.procs: {e}", cg.path.display()))?;
    let clock = match (a.host_clock, a.handle.seed_clock_ms) {
        (true, _) => None,
        (false, Some(ms)) => Some(ms),
        (false, None) => {
            eprintln!("mitosis: run: the handle carries no seed clock; the child keeps this host's clocks");
            None
        }
    };
    let flags = libc::CLONE_NEWPID
        | if clock.is_some() {
            libc::CLONE_NEWTIME
        } else {
            0
        };
    // SAFETY: unshare(2) of namespaces for our future children only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(os_err(
            "new pid/time namespace (CONFIG_PID_NS, CONFIG_TIME_NS; --host-clock runs without the time namespace)",
        ));
    }
    if let Some(ms) = clock {
        fs::write("/proc/self/timens_offsets", time_offsets(ms))
            .map_err(|e| format!("/proc/self/timens_offsets: {e}"))?;
    }
    io::stderr().flush().ok();
    // SAFETY: this process is single-threaded; the child only makes system calls
    // and ends in the resume or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        container_init(m, a, procs, started, cgroup_done);
    }
    drop(procs);
    CHILD.store(pid, Ordering::Relaxed);
    for sig in FORWARDED {
        // SAFETY: installs an async-signal-safe handler.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("waitpid"));
        }
    }
    CHILD.store(0, Ordering::Relaxed);
    let oom_kills = cg.event("memory.events", "oom_kill");
    let pids_refused = cg.event("pids.events", "max");
    if pids_refused > 0 {
        eprintln!("mitosis: run: pids.max refused {pids_refused} fork(s) in the container");
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if oom_kills > 0 {
            eprintln!(
                "mitosis: run: the child was killed by the OOM killer (memory.max{} reached, {oom_kills} kill(s))",
                a.spec
                    .limits
                    .memory_max
                    .map_or(String::new(), |m| format!(" = {m}"))
            );
        } else {
            eprintln!("mitosis: run: the child was killed by signal {sig}");
        }
        128u8.saturating_add(sig as u8)
    } else {
        LAUNCH_FAILED
    };
    drop(cg);
    Ok(code)
}

/// The container's first process: never returns.
fn container_init(m: &Mitosis, a: &RunArgs, procs: fs::File, started: u64, cgroup_done: u64) -> ! {
    let mut timings = (0, 0);
    let r = setup(a, procs, &mut timings);
    let root = match &r {
        Ok(root) => *root,
        Err(_) => "",
    };
    if let Err(msg) = r {
        eprintln!("mitosis: run: {msg}");
        // SAFETY: ends this process without running the launcher's exit handlers.
        unsafe { libc::_exit(LAUNCH_FAILED as i32) };
    }
    if a.timing {
        let now = realtime_ns();
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
        eprintln!(
            "mitosis-run-timing {{\"cgroup_ms\":{:.3},\"namespaces_ms\":{:.3},\"mounts_ms\":{:.3},\"setup_ms\":{:.3},\"root\":\"{root}\",\"resume_realtime_ns\":{now}}}",
            ms(started, cgroup_done),
            ms(cgroup_done, timings.0),
            ms(timings.0, timings.1),
            ms(started, now),
        );
    }
    let opts = ResumeOptions {
        eager: a.eager,
        connect_timeout: a.connect_timeout,
        user: a.spec.user,
    };
    let e = m.fork_resume(&a.handle, opts);
    eprintln!("mitosis: run: resume from {}: {e}", a.handle);
    // SAFETY: as above.
    unsafe { libc::_exit(LAUNCH_FAILED as i32) }
}

/// Makes the container around this process; returns how the root was switched
/// (`pivot_root`, `move+chroot` on an initramfs host, or `host` without a rootfs).
fn setup(a: &RunArgs, mut procs: fs::File, t: &mut (u64, u64)) -> Result<&'static str, String> {
    procs
        .write_all(b"0")
        .map_err(|e| format!("joining the cgroup: {e}"))?;
    drop(procs);
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP;
    if a.spec.net == Net::None {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare(2) of this process's namespaces.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(os_err("new mount, uts, ipc, cgroup or network namespace"));
    }
    if let Some(h) = &a.spec.hostname {
        // SAFETY: the pointer and length describe `h`.
        if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
            return Err(os_err(format!("sethostname {h}")));
        }
    }
    if a.spec.net == Net::None {
        loopback_up()?;
    }
    t.0 = realtime_ns();
    // Nothing mounted here propagates back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    )?;
    let how = match &a.spec.rootfs {
        None => {
            mount(
                Some("proc"),
                Path::new("/proc"),
                Some("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                "",
            )?;
            "host"
        }
        Some(root) => enter_root(root, &a.spec)?,
    };
    t.1 = realtime_ns();
    Ok(how)
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("NUL in mount argument {s:?}"));
    let src = source.map(c).transpose()?;
    let fst = fstype.filter(|f| !f.is_empty()).map(c).transpose()?;
    let dat = c(data)?;
    let tgt = cstr(target)?;
    // SAFETY: valid C strings or null, as mount(2) takes them.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr().cast()
            },
        )
    };
    if r != 0 {
        return Err(os_err(format!(
            "mount {} on {} ({})",
            source.unwrap_or("-"),
            target.display(),
            fstype.unwrap_or("bind/remount")
        )));
    }
    Ok(())
}

/// A path inside the new root (the spec's destinations are absolute, without `..`).
fn inside(root: &Path, dest: &Path) -> PathBuf {
    root.join(dest.strip_prefix("/").unwrap_or(dest))
}

fn enter_root(root: &Path, spec: &ContainerSpec) -> Result<&'static str, String> {
    // pivot_root wants the new root to be a mount point.
    mount(
        Some(&root.to_string_lossy()),
        root,
        None,
        libc::MS_BIND | libc::MS_REC,
        "",
    )?;
    let mounts = if spec.mounts.is_empty() {
        ContainerSpec::default_mounts()
    } else {
        spec.mounts.clone()
    };
    for m in &mounts {
        let target = inside(root, &m.destination);
        let is_file = m.is_bind() && Path::new(&m.source).is_file();
        if is_file {
            if !target.exists() {
                fs::write(&target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
            }
        } else {
            fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        let fstype = (!m.fstype.is_empty()).then_some(m.fstype.as_str());
        let bind_ro = m.is_bind() && m.flags & libc::MS_RDONLY != 0;
        mount(
            Some(&m.source),
            &target,
            fstype,
            m.flags & !if bind_ro { libc::MS_RDONLY } else { 0 },
            &m.data,
        )?;
        if bind_ro {
            // A bind mount takes MS_RDONLY only on a remount.
            mount(
                None,
                &target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                "",
            )?;
        }
    }
    let dev = inside(root, Path::new("/dev"));
    if dev.is_dir() {
        for name in DEVICES {
            let host = Path::new("/dev").join(name);
            let target = dev.join(name);
            if !host.exists() {
                continue;
            }
            if !target.exists() {
                fs::write(&target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
            }
            mount(
                Some(&host.to_string_lossy()),
                &target,
                None,
                libc::MS_BIND,
                "",
            )?;
        }
    }
    if spec.readonly_root {
        mount(
            None,
            root,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            "",
        )?;
    }
    let croot = cstr(root)?;
    // SAFETY: chdir/pivot_root/umount2/chroot with valid C strings.
    unsafe {
        if libc::chdir(croot.as_ptr()) != 0 {
            return Err(os_err(format!("chdir {}", root.display())));
        }
        let dot = c".".as_ptr();
        let how = if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
            // The old root is stacked under the new one: detach it.
            if libc::umount2(dot, libc::MNT_DETACH) != 0 {
                return Err(os_err("detaching the old root"));
            }
            "pivot_root"
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // The host runs from its initramfs, which cannot be pivoted away (like
            // switch_root): move the new root over / and chroot into it.
            if libc::mount(
                dot,
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(os_err("moving the new root over / (initramfs host)"));
            }
            if libc::chroot(dot) != 0 {
                return Err(os_err("chroot"));
            }
            "move+chroot"
        } else {
            return Err(os_err("pivot_root"));
        };
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(os_err("chdir /"));
        }
        Ok(how)
    }
}

/// Brings `lo` up in a new network namespace.
fn loopback_up() -> Result<(), String> {
    // SAFETY: a socket for the interface ioctls, closed below; `ifr` is zeroed and
    // holds a NUL-terminated name.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os_err("socket"));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            return Err(format!("bringing lo up: {err}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_offsets_never_go_back() {
        // A seed clock far ahead of this host's: positive offsets of that size.
        let ahead = boottime_ns() / 1_000_000 + 100_000_000;
        let text = time_offsets(ahead);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("monotonic 99999") || lines[0].starts_with("monotonic 100000")
        );
        assert!(lines[1].starts_with("boottime 99999") || lines[1].starts_with("boottime 100000"));
        // A seed clock behind this host's: no offset (the child's clock is already later).
        assert_eq!(time_offsets(0), "monotonic 0 0\nboottime 0 0\n");
    }

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(
            inside(Path::new("/r"), Path::new("/proc")),
            PathBuf::from("/r/proc")
        );
        assert_eq!(
            inside(Path::new("/r"), Path::new("/dev/mitosis")),
            PathBuf::from("/r/dev/mitosis")
        );
    }
}
