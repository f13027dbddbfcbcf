// SPDX-License-Identifier: GPL-2.0

//! `/dev/mitosis`: the misc device and ioctl dispatch.
//!
//! Each open file owns the peer regions it opened (handles); they are closed with it.

// Policy code: the misc device itself is `miscdev.rs`, the task's state `task.rs`.
#![deny(unsafe_code)]

use crate::abi::ioctl::{self as abi, read_flags, Command as Cmd, Pod};
use crate::miscdev::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration};
use crate::remote::RemoteRegion;
use crate::state;
use crate::task::CurrentTask;
use crate::uargs::{log_rejected, read_args, require, require_admin, write_args};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

/// Most peer regions one open file may hold.
const MAX_HANDLES_PER_FILE: usize = 1024;

/// `/dev/mitosis`.
pub(crate) struct MitosisDevice;

impl MitosisDevice {
    /// Registers the device node (`/dev/mitosis`, root only).
    pub(crate) fn register(
        module: &'static ThisModule,
    ) -> impl PinInit<MiscDeviceRegistration<Self>, Error> {
        MiscDeviceRegistration::register(
            MiscDeviceOptions {
                name: kernel::c_str!("mitosis"),
                mode: 0o600,
            },
            module,
        )
    }
}

impl MiscDevice for MitosisDevice {
    type Ptr = Pin<KBox<FileState>>;

    fn open() -> Result<Self::Ptr> {
        KBox::pin_init(
            pin_init!(FileState {
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
    let r = match command {
        Cmd::ForkCapture => {
            // Never copied back: the seed's memory is the snapshot now.
            let a: abi::ForkCaptureArgs = read_args(name, size, arg, true)?;
            require(
                a.flags & !abi::capture_flags::ALL == 0,
                name,
                "unknown flags",
            )?;
            require(
                a == abi::ForkCaptureArgs {
                    hdr: a.hdr,
                    flags: a.flags,
                    claim_token: a.claim_token,
                    ..Default::default()
                },
                name,
                "padding or output fields not zero",
            )?;
            // The seed is ended after the capture: it must be a process of its own.
            require(
                CurrentTask::get().mm_exclusive(),
                name,
                "caller is not a single-threaded process with its own address space",
            )
            .map_err(|_| EBUSY)?;
            let start = kernel::time::Ktime::ktime_get();
            let c = crate::capture::capture(arg as u64).inspect_err(|e| {
                pr_warn!("fork_prepare capture failed: {:?}\n", e);
            })?;
            let ns = (kernel::time::Ktime::ktime_get() - start).to_ns() as u64;
            let tgid = CurrentTask::get().tgid();
            let id = c.id;
            state::get()
                .file_claim(tgid, a.claim_token, ns, c)
                .inspect_err(|_| {
                    let _ = state::get().destroy_region(id);
                })?;
            CurrentTask::get().finish_seed();
            Ok(())
        }
        Cmd::ForkClaim => call(name, size, arg, true, |a: &mut abi::ForkClaimArgs| {
            require(
                *a == abi::ForkClaimArgs {
                    hdr: a.hdr,
                    seed_pid: a.seed_pid,
                    claim_token: a.claim_token,
                    ..Default::default()
                },
                name,
                "output fields not zero",
            )?;
            let (ns, c) = state::get().claim(a.seed_pid as i32, a.claim_token)?;
            a.listen_port = default_port() as u32;
            a.snapshot_id = c.id;
            a.secret = c.secret;
            a.capture_ns = ns;
            a.n_vmas = c.n_vmas;
            a.present_pages = c.present;
            a.hole_pages = c.holes;
            a.desc_bytes = c.desc_bytes;
            Ok(())
        }),
        Cmd::ForkResume => {
            // Never copied back: on success the caller's memory is the seed's.
            let a: abi::ForkResumeArgs = read_args(name, size, arg, true)?;
            require(a._pad == 0, name, "padding not zero")?;
            require(
                a.flags & !abi::resume_flags::ALL == 0,
                name,
                "unknown flags",
            )?;
            require(a.peer_addr != 0, name, "no peer address")?;
            require(
                a.timeout_ms <= state::MAX_TIMEOUT_MS,
                name,
                "timeout over 60000 ms",
            )?;
            // Replacing the address space under other threads (or a vfork parent)
            // would pull it from under them.
            require(
                CurrentTask::get().mm_exclusive(),
                name,
                "caller is not a single-threaded process with its own address space",
            )
            .map_err(|_| EBUSY)?;
            let (port, timeout) = peer_defaults(a.peer_port, a.timeout_ms);
            let eager = a.flags & abi::resume_flags::EAGER != 0;
            crate::restore::resume(&a, port, timeout, eager)
        }
        Cmd::ForkRelease => call(name, size, arg, true, |a: &mut abi::ForkReleaseArgs| {
            require(a._pad == 0, name, "padding not zero")?;
            require(
                a.flags & !abi::release_flags::ALL == 0,
                name,
                "unknown flags",
            )?;
            let force = a.flags & abi::release_flags::FORCE != 0;
            state::get().release_snapshot(a.snapshot_id, &a.secret, force)
        }),
        Cmd::Version => call(name, size, arg, false, |a: &mut abi::VersionArgs| {
            require(
                a._pad == 0 && a.module_version == [0; 32] && a.module_abi_version == 0,
                name,
                "output fields not zero",
            )?;
            a.module_abi_version = abi::ABI_VERSION;
            let v = crate::MODULE_VERSION.as_bytes();
            a.module_version[..v.len()].copy_from_slice(v);
            Ok(())
        }),
        Cmd::Status => call(name, size, arg, true, |a: &mut abi::StatusArgs| {
            require(
                *a == abi::StatusArgs {
                    hdr: a.hdr,
                    ..Default::default()
                },
                name,
                "output fields not zero",
            )?;
            state::get().status(a);
            Ok(())
        }),
        Cmd::RegionCreate => call(name, size, arg, true, |a: &mut abi::RegionCreateArgs| {
            require_admin(name)?;
            require(
                a.region_id == 0 && a.secret == [0; 16],
                name,
                "output fields not zero",
            )?;
            require(
                a.size != 0 && a.size % 4096 == 0 && a.size <= abi::MAX_REGION_BYTES,
                name,
                "size not a multiple of 4096 in 4 KiB..256 MiB",
            )?;
            let (id, secret) = state::get().create_region(a.size, a.pattern_seed)?;
            a.region_id = id;
            a.secret = secret;
            Ok(())
        }),
        Cmd::RegionDestroy => call(name, size, arg, true, |a: &mut abi::RegionDestroyArgs| {
            require_admin(name)?;
            state::get().destroy_region(a.region_id)
        }),
        Cmd::RemoteOpen => call(name, size, arg, true, |a: &mut abi::RemoteOpenArgs| {
            require(a._pad == 0 && a._pad2 == 0, name, "padding not zero")?;
            require(
                a.handle == 0 && a.size == 0 && a.connect_ns == 0 && a.open_ns == 0,
                name,
                "output fields not zero",
            )?;
            require(a.peer_addr != 0, name, "no peer address")?;
            require(
                a.timeout_ms <= state::MAX_TIMEOUT_MS,
                name,
                "timeout over 60000 ms",
            )?;
            if st.remotes.lock().len() >= MAX_HANDLES_PER_FILE {
                return Err(EMFILE);
            }
            let (port, timeout) = peer_defaults(a.peer_port, a.timeout_ms);
            let (conn, connect_ns) = state::get().connection_to(a.peer_addr, port, timeout)?;
            let start = kernel::time::Ktime::ktime_get();
            let handle = st.next_handle.fetch_add(1, Ordering::Relaxed);
            let remote = Arc::new(
                RemoteRegion::open(conn, handle, a.region_id, a.secret)?,
                GFP_KERNEL,
            )?;
            a.open_ns = (kernel::time::Ktime::ktime_get() - start).to_ns() as u64;
            a.connect_ns = connect_ns;
            a.handle = handle;
            a.size = remote.size;
            st.remotes.lock().push(remote, GFP_KERNEL)?;
            Ok(())
        }),
        Cmd::RemoteRead => call(name, size, arg, true, |a: &mut abi::RemoteReadArgs| {
            require(a.flags & !read_flags::ALL == 0, name, "unknown flags")?;
            require(
                a.batch_pages >= 1 && a.batch_pages <= abi::MAX_BATCH_PAGES,
                name,
                "batch_pages not in 1..=64",
            )?;
            require(
                a.offset % 4096 == 0 && a.length % 4096 == 0 && a.length != 0,
                name,
                "offset/length not page multiples",
            )?;
            require(
                a.elapsed_ns == 0 && a.doorbells == 0 && a.reads == 0,
                name,
                "output fields not zero",
            )?;
            let remote = st
                .remotes
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
        }),
        Cmd::RemoteClose => call(name, size, arg, true, |a: &mut abi::RemoteCloseArgs| {
            let r = crate::util::remove_first(&mut st.remotes.lock(), |r| r.handle == a.handle)
                .ok_or(ENOENT)?;
            r.close();
            Ok(())
        }),
    };
    r.map(|()| 0)
}

/// A peer port and connect timeout with 0 meaning the module's defaults.
fn peer_defaults(port: u16, timeout_ms: u32) -> (u16, u32) {
    let port = if port == 0 { default_port() } else { port };
    let timeout = if timeout_ms == 0 {
        state::connect_timeout_ms()
    } else {
        timeout_ms
    };
    (port, timeout)
}

fn default_port() -> u16 {
    match state::listen_port() {
        0 => 18515,
        p => p,
    }
}

/// Reads `T`, runs `f` on it, writes it back.
fn call<T: Pod>(
    name: &str,
    size: usize,
    arg: usize,
    check_version: bool,
    f: impl FnOnce(&mut T) -> Result,
) -> Result {
    let mut a: T = read_args(name, size, arg, check_version)?;
    f(&mut a)?;
    write_args(arg, &a)
}
