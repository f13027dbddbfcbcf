// SPDX-License-Identifier: GPL-2.0

//! `/dev/mitosis`: the misc device and ioctl dispatch.
//!
//! Each open file owns the peer regions it opened (handles); they are closed with it.

// Policy code: the misc device itself is `miscdev.rs`, the task's state `task.rs`.
#![deny(unsafe_code)]

use crate::abi::ioctl::{self as abi, read_flags, Command as Cmd, Pod};
use crate::miscdev::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration};
use crate::params::{self, MAX_TIMEOUT_MS};
use crate::remote::RemoteRegion;
use crate::state::Host;
use crate::task::CurrentTask;
use crate::uargs::{log_rejected, read_args, require, require_admin, write_args};
use core::mem::size_of;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

/// Most peer regions one open file may hold.
const MAX_HANDLES_PER_FILE: usize = 1024;

/// `/dev/mitosis`.
pub(crate) struct MitosisDevice;

impl MitosisDevice {
    /// Registers the device node (`/dev/mitosis`, root only); its files reach `host`.
    pub(crate) fn register(
        module: &'static ThisModule,
        host: Arc<Host>,
    ) -> impl PinInit<MiscDeviceRegistration<Self>, Error> {
        MiscDeviceRegistration::register(
            MiscDeviceOptions {
                name: kernel::c_str!("mitosis"),
                mode: 0o600,
            },
            module,
            host,
        )
    }
}

impl MiscDevice for MitosisDevice {
    type Ptr = Pin<KBox<FileState>>;
    type RegistrationData = Arc<Host>;

    fn open(host: &Arc<Host>) -> Result<Self::Ptr> {
        KBox::pin_init(
            pin_init!(FileState {
                host: host.clone(),
                remotes <- new_mutex!(KVec::new()),
                next_handle: AtomicU64::new(1),
            }),
            GFP_KERNEL,
        )
    }

    /// The file's peer regions are closed with it.
    fn release(st: Self::Ptr) {
        let remotes = crate::util::take_all(&mut st.remotes.lock());
        for r in remotes.iter() {
            r.close();
        }
    }

    fn ioctl(st: Pin<&FileState>, cmd: u32, arg: usize) -> Result<isize> {
        dispatch(&st, cmd, arg)
    }

    /// 32-bit callers. The argument structs have the same layout for them (fixed-size
    /// integers, explicit padding, pointers as `u64`), but a 32-bit process can neither
    /// be captured nor become a child of a 64-bit seed: the fork commands are refused.
    fn compat_ioctl(st: Pin<&FileState>, cmd: u32, arg: usize) -> Result<isize> {
        let (_, _, nr, _) = abi::decode(cmd);
        if matches!(
            Cmd::try_from(nr),
            Ok(Cmd::ForkCapture | Cmd::ForkResume | Cmd::ForkClaim)
        ) {
            log_rejected(format_args!(
                "fork command {cmd:#x} from a 32-bit process (EOPNOTSUPP)"
            ));
            return Err(crate::errno::eopnotsupp());
        }
        dispatch(&st, cmd, arg)
    }
}

/// Per open file.
#[pin_data]
pub(crate) struct FileState {
    host: Arc<Host>,
    #[pin]
    remotes: Mutex<KVec<Arc<RemoteRegion>>>,
    next_handle: AtomicU64,
}

/// Dispatches one ioctl; the value is the syscall's return value.
fn dispatch(st: &FileState, cmd: u32, arg: usize) -> Result<isize> {
    let (dir, ty, nr, size) = abi::decode(cmd);
    let known = abi::COMMANDS.iter().find(|(n, _, _)| *n == nr);
    let command = Cmd::try_from(nr);
    let (Some(&(_, _, name)), Ok(command)) = (
        known.filter(|_| ty == abi::IOC_MAGIC && dir == abi::IOC_READ_WRITE),
        command,
    ) else {
        log_rejected(format_args!("unknown command {cmd:#x} (ENOTTY)"));
        return Err(ENOTTY);
    };
    let call = Call {
        st,
        name,
        size,
        arg,
    };
    let r = match command {
        Cmd::ForkCapture => fork_capture(&call),
        Cmd::ForkClaim => fork_claim(&call),
        Cmd::ForkResume => fork_resume(&call),
        Cmd::ForkRelease => fork_release(&call),
        Cmd::Version => version(&call),
        Cmd::Status => status(&call),
        Cmd::RegionCreate => region_create(&call),
        Cmd::RegionDestroy => region_destroy(&call),
        Cmd::RemoteOpen => remote_open(&call),
        Cmd::RemoteRead => remote_read(&call),
        Cmd::RemoteClose => remote_close(&call),
        Cmd::SnapshotList => snapshot_list(&call),
    };
    r.map(|()| 0)
}

fn fork_capture(c: &Call<'_>) -> Result {
    // Never copied back: the seed's memory is the snapshot now.
    let a: abi::ForkCaptureArgs = c.read(true)?;
    require(
        a.flags & !abi::capture_flags::ALL == 0,
        c.name,
        "unknown flags",
    )?;
    require(
        a == abi::ForkCaptureArgs {
            hdr: a.hdr,
            flags: a.flags,
            claim_token: a.claim_token,
            ..Default::default()
        },
        c.name,
        "padding or output fields not zero",
    )?;
    // The seed is ended after the capture: it must be a process of its own.
    c.require_exclusive_mm()?;
    let start = kernel::time::Ktime::ktime_get();
    let captured = crate::capture::capture(&c.st.host, c.arg as u64).inspect_err(|e| {
        pr_warn!("fork_prepare capture failed: {:?}\n", e);
    })?;
    let ns = (kernel::time::Ktime::ktime_get() - start).to_ns() as u64;
    let tgid = CurrentTask::get().tgid();
    let id = captured.id;
    c.st.host
        .file_claim(tgid, a.claim_token, ns, captured)
        .inspect_err(|_| {
            let _ = c.st.host.destroy_region(id);
        })?;
    CurrentTask::get().finish_seed();
    Ok(())
}

fn fork_claim(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::ForkClaimArgs| {
        require(
            *a == abi::ForkClaimArgs {
                hdr: a.hdr,
                seed_pid: a.seed_pid,
                claim_token: a.claim_token,
                ..Default::default()
            },
            c.name,
            "output fields not zero",
        )?;
        let (ns, cap) = c.st.host.claim(a.seed_pid as i32, a.claim_token)?;
        // Now that the seed is gone and the parent has its handle, so that on a host
        // with one CPU the registration does not run inside the prepare.
        crate::register_ahead::start(&c.st.host, cap.id);
        a.listen_port = default_port() as u32;
        a.snapshot_id = cap.id;
        a.secret = cap.secret;
        a.capture_ns = ns;
        a.n_vmas = cap.n_vmas;
        a.present_pages = cap.present;
        a.hole_pages = cap.holes;
        a.desc_bytes = cap.desc_bytes;
        Ok(())
    })
}

fn fork_resume(c: &Call<'_>) -> Result {
    // Never copied back: on success the caller's memory is the seed's.
    let a: abi::ForkResumeArgs = c.read(true)?;
    require(a._pad == 0, c.name, "padding not zero")?;
    require(
        a.flags & !abi::resume_flags::ALL == 0,
        c.name,
        "unknown flags",
    )?;
    c.require_peer(a.peer_addr, a.timeout_ms)?;
    // Replacing the address space under other threads (or a vfork parent)
    // would pull it from under them.
    c.require_exclusive_mm()?;
    if params::unprivileged_children() && !CurrentTask::get().is_unprivileged() {
        log_rejected(format_args!(
            "{}: caller has privilege (root, a capability, or no no_new_privs) and \
             unprivileged_children is set (EPERM)",
            c.name
        ));
        return Err(EPERM);
    }
    let (port, timeout) = peer_defaults(a.peer_port, a.timeout_ms);
    let eager = a.flags & abi::resume_flags::EAGER != 0;
    crate::restore::resume(&c.st.host, &a, port, timeout, eager)
}

fn fork_release(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::ForkReleaseArgs| {
        require(a._pad == 0, c.name, "padding not zero")?;
        require(
            a.flags & !abi::release_flags::ALL == 0,
            c.name,
            "unknown flags",
        )?;
        let force = a.flags & abi::release_flags::FORCE != 0;
        c.st.host.release_snapshot(a.snapshot_id, &a.secret, force)
    })
}

fn version(c: &Call<'_>) -> Result {
    c.call(false, |a: &mut abi::VersionArgs| {
        require(
            a._pad == 0 && a.module_version == [0; 32] && a.module_abi_version == 0,
            c.name,
            "output fields not zero",
        )?;
        a.module_abi_version = abi::ABI_VERSION;
        let v = crate::MODULE_VERSION.as_bytes();
        a.module_version[..v.len()].copy_from_slice(v);
        Ok(())
    })
}

fn status(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::StatusArgs| {
        require(
            *a == abi::StatusArgs {
                hdr: a.hdr,
                ..Default::default()
            },
            c.name,
            "output fields not zero",
        )?;
        c.st.host.status(a);
        Ok(())
    })
}

fn region_create(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::RegionCreateArgs| {
        require_admin(c.name)?;
        require(
            a.region_id == 0 && a.secret == [0; 16],
            c.name,
            "output fields not zero",
        )?;
        require(
            a.size != 0 && a.size % 4096 == 0 && a.size <= abi::MAX_REGION_BYTES,
            c.name,
            "size not a multiple of 4096 in 4 KiB..256 MiB",
        )?;
        let (id, secret) = c.st.host.create_region(a.size, a.pattern_seed)?;
        a.region_id = id;
        a.secret = secret;
        Ok(())
    })
}

fn region_destroy(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::RegionDestroyArgs| {
        require_admin(c.name)?;
        c.st.host.destroy_region(a.region_id)
    })
}

fn remote_open(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::RemoteOpenArgs| {
        require(a._pad == 0 && a._pad2 == 0, c.name, "padding not zero")?;
        require(
            a.handle == 0 && a.size == 0 && a.connect_ns == 0 && a.open_ns == 0,
            c.name,
            "output fields not zero",
        )?;
        c.require_peer(a.peer_addr, a.timeout_ms)?;
        if c.st.remotes.lock().len() >= MAX_HANDLES_PER_FILE {
            return Err(EMFILE);
        }
        let (port, timeout) = peer_defaults(a.peer_port, a.timeout_ms);
        let (conn, connect_ns) = c.st.host.connection_to(a.peer_addr, port, timeout)?;
        let start = kernel::time::Ktime::ktime_get();
        let handle = c.st.next_handle.fetch_add(1, Ordering::Relaxed);
        let remote = Arc::new(
            RemoteRegion::open(conn, handle, a.region_id, a.secret)?,
            GFP_KERNEL,
        )?;
        a.open_ns = (kernel::time::Ktime::ktime_get() - start).to_ns() as u64;
        a.connect_ns = connect_ns;
        a.handle = handle;
        a.size = remote.size;
        c.st.remotes.lock().push(remote, GFP_KERNEL)?;
        Ok(())
    })
}

fn remote_read(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::RemoteReadArgs| {
        require(a.flags & !read_flags::ALL == 0, c.name, "unknown flags")?;
        require(
            a.batch_pages >= 1 && a.batch_pages <= abi::MAX_BATCH_PAGES,
            c.name,
            "batch_pages not in 1..=64",
        )?;
        require(
            a.offset % 4096 == 0 && a.length % 4096 == 0 && a.length != 0,
            c.name,
            "offset/length not page multiples",
        )?;
        require(
            a.elapsed_ns == 0 && a.doorbells == 0 && a.reads == 0,
            c.name,
            "output fields not zero",
        )?;
        let remote =
            c.st.remotes
                .lock()
                .iter()
                .find(|r| r.handle == a.handle)
                .cloned()
                .ok_or(ENOENT)?;
        let len = usize::try_from(a.length).map_err(|_| EINVAL)?;
        let out = UserSlice::new(a.user_buf as UserPtr, len).writer();
        let start = kernel::time::Ktime::ktime_get();
        let done = remote.read(a.offset, a.length, out, a.batch_pages as usize, a.flags)?;
        a.elapsed_ns = (kernel::time::Ktime::ktime_get() - start).to_ns() as u64;
        a.doorbells = done.doorbells;
        a.reads = done.reads;
        Ok(())
    })
}

fn remote_close(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::RemoteCloseArgs| {
        let r = crate::util::remove_first(&mut c.st.remotes.lock(), |r| r.handle == a.handle)
            .ok_or(ENOENT)?;
        r.close();
        Ok(())
    })
}

fn snapshot_list(c: &Call<'_>) -> Result {
    c.call(true, |a: &mut abi::SnapshotListArgs| {
        require(
            a.count == 0 && a.total == 0 && a._pad == 0,
            c.name,
            "output fields not zero",
        )?;
        require(
            a.capacity <= abi::MAX_LIST_ENTRIES,
            c.name,
            "capacity over MAX_LIST_ENTRIES",
        )?;
        let (entries, total) = c.st.host.snapshot_list(a.capacity as usize)?;
        let mut out = UserSlice::new(
            a.entries as UserPtr,
            entries.len() * size_of::<abi::SnapshotEntry>(),
        )
        .writer();
        for e in entries.iter() {
            out.write_slice(e.as_bytes())?;
        }
        a.count = entries.len() as u32;
        a.total = total as u32;
        Ok(())
    })
}

/// A peer port and connect timeout with 0 meaning the module's defaults.
fn peer_defaults(port: u16, timeout_ms: u32) -> (u16, u32) {
    let port = if port == 0 { default_port() } else { port };
    let timeout = if timeout_ms == 0 {
        params::connect_timeout_ms()
    } else {
        timeout_ms
    };
    (port, timeout)
}

fn default_port() -> u16 {
    match params::listen_port() {
        0 => 18515,
        p => p,
    }
}

/// One ioctl: the caller's file, the command's name (for log lines), the size its
/// number encodes and the user argument.
#[derive(Clone, Copy)]
struct Call<'a> {
    st: &'a FileState,
    name: &'static str,
    size: usize,
    arg: usize,
}

impl Call<'_> {
    /// The caller must be a single-threaded process with its own address space (it is
    /// ended, or its address space replaced): `EBUSY` otherwise.
    fn require_exclusive_mm(&self) -> Result {
        require(
            CurrentTask::get().mm_exclusive(),
            self.name,
            "caller is not a single-threaded process with its own address space",
        )
        .map_err(|_| EBUSY)
    }

    /// A peer address and a per-call timeout within [`MAX_TIMEOUT_MS`] (0: the default).
    fn require_peer(&self, peer_addr: u32, timeout_ms: u32) -> Result {
        require(peer_addr != 0, self.name, "no peer address")?;
        require(
            timeout_ms <= MAX_TIMEOUT_MS,
            self.name,
            "timeout over 60000 ms",
        )
    }

    /// Reads the argument struct.
    fn read<T: Pod>(&self, check_version: bool) -> Result<T> {
        read_args(self.name, self.size, self.arg, check_version)
    }

    /// Reads `T`, runs `f` on it, writes it back.
    fn call<T: Pod>(&self, check_version: bool, f: impl FnOnce(&mut T) -> Result) -> Result {
        let mut a: T = self.read(check_version)?;
        f(&mut a)?;
        write_args(self.arg, &a)
    }
}
