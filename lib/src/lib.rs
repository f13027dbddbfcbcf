//! User-space library for Mitosis.
//!
//! [`Mitosis`] wraps one open file of `/dev/mitosis`; each method is one ioctl from
//! [`mitosis_abi::ioctl`]. Remote-region handles belong to the open file and are closed
//! by the module when it is closed. The C ABI for runtimes in other languages is in
//! [`capi`] (header: `lib/include/mitosis.h`).

pub mod capi;
pub mod fork;

pub use fork::{
    boottime_ns, monotonic_ns, Forked, Identity, Prepared, ResumeOptions, Resumed, SnapshotHandle,
};

use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use mitosis_abi::ioctl::{self as abi, Header, Pod};
pub use mitosis_abi::ioctl::{Counters, DeviceInfo, SnapshotEntry, StatusArgs};

/// Default device node.
pub const DEVICE_PATH: &str = "/dev/mitosis";

/// [`Mitosis`]'s descriptor in a resumed child until a call needs it.
pub(crate) const REOPEN_ON_USE: i32 = -2;

/// The module's answer to a ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub abi_version: u32,
    pub module_version: String,
}

/// A region published on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId {
    pub id: u64,
    pub secret: [u8; 16],
}

/// A peer's region opened over the pooled connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteRegion {
    pub handle: u64,
    pub size: u64,
    /// Time spent getting a connection (0 when pooled) and opening, in ns.
    pub connect_ns: u64,
    pub open_ns: u64,
}

/// Outcome of one remote read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub elapsed_ns: u64,
    pub doorbells: u64,
    pub reads: u64,
}

/// An open `/dev/mitosis`.
///
/// The descriptor number can change once: a resumed child gets its own descriptor
/// (the seed's number means nothing in the launcher's table, see `fork.rs`).
#[derive(Debug)]
pub struct Mitosis {
    fd: AtomicI32,
}

impl Drop for Mitosis {
    fn drop(&mut self) {
        let fd = self.fd();
        if fd >= 0 {
            // SAFETY: the descriptor is ours (opened by `open_path` or `reattach`).
            unsafe { libc::close(fd) };
        }
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Mitosis {
    /// Opens [`DEVICE_PATH`].
    pub fn open() -> io::Result<Self> {
        Self::open_path(DEVICE_PATH)
    }

    pub fn open_path(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Mitosis {
            fd: AtomicI32::new(file.into_raw_fd()),
        })
    }

    /// The device descriptor; in a resumed child, opened on first use (-1 if that
    /// failed: calls then fail with `EBADF`).
    pub(crate) fn fd(&self) -> i32 {
        let fd = self.fd.load(Ordering::Acquire);
        if fd != REOPEN_ON_USE {
            return fd;
        }
        let path = c"/dev/mitosis";
        // SAFETY: `path` is NUL-terminated; the new descriptor is ours.
        let nfd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }.max(-1);
        match self
            .fd
            .compare_exchange(REOPEN_ON_USE, nfd, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => nfd,
            Err(winner) => {
                if nfd >= 0 {
                    // SAFETY: ours; another call opened first.
                    unsafe { libc::close(nfd) };
                }
                winner
            }
        }
    }

    /// Issues `cmd` with `arg` after filling in its header. Errors carry the errno.
    fn call<T: Pod>(&self, cmd: u32, arg: &mut T) -> io::Result<()> {
        // SAFETY: `Header` is the first field of every argument struct (`repr(C)`).
        unsafe { *(arg as *mut T as *mut Header) = Header::for_struct::<T>() };
        // SAFETY: `arg` is a valid, writable `T` of the size encoded in `cmd`.
        let r = unsafe { self.raw_ioctl(cmd, arg as *mut T as *mut libc::c_void) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Issues an arbitrary ioctl on the device, for testing the module's validation.
    ///
    /// # Safety
    ///
    /// The module may read and write the memory `arg` points to, as `cmd` says.
    pub unsafe fn raw_ioctl(&self, cmd: u32, arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the caller guarantees `arg` for `cmd`.
        unsafe { libc::ioctl(self.fd(), cmd as _, arg) }
    }

    /// Pings the module: returns its ABI and module version.
    pub fn version(&self) -> io::Result<Version> {
        let mut a = abi::VersionArgs {
            cookie: 0x6d69_746f_7369_7321,
            ..Default::default()
        };
        self.call(abi::IOC_VERSION, &mut a)?;
        if a.cookie != 0x6d69_746f_7369_7321 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ping cookie not echoed",
            ));
        }
        Ok(Version {
            abi_version: a.module_abi_version,
            module_version: c_string(&a.module_version),
        })
    }

    /// The snapshots published on this host, oldest first.
    pub fn snapshots(&self) -> io::Result<Vec<SnapshotEntry>> {
        // Count, then fetch with room for a few published meanwhile.
        let mut a = abi::SnapshotListArgs::default();
        self.call(abi::IOC_SNAPSHOT_LIST, &mut a)?;
        let room = (a.total + 16).min(abi::MAX_LIST_ENTRIES);
        let mut entries = vec![SnapshotEntry::default(); room as usize];
        let mut a = abi::SnapshotListArgs {
            entries: entries.as_mut_ptr() as u64,
            capacity: room,
            ..Default::default()
        };
        self.call(abi::IOC_SNAPSHOT_LIST, &mut a)?;
        entries.truncate(a.count as usize);
        Ok(entries)
    }

    /// Devices, connections and counters.
    pub fn status(&self) -> io::Result<StatusArgs> {
        let mut a = StatusArgs::default();
        self.call(abi::IOC_STATUS, &mut a)?;
        Ok(a)
    }

    /// Publishes a kernel region of `size` bytes filled with the pattern of `seed`.
    pub fn region_create(&self, size: u64, seed: u64) -> io::Result<RegionId> {
        let mut a = abi::RegionCreateArgs {
            size,
            pattern_seed: seed,
            ..Default::default()
        };
        self.call(abi::IOC_REGION_CREATE, &mut a)?;
        Ok(RegionId {
            id: a.region_id,
            secret: a.secret,
        })
    }

    pub fn region_destroy(&self, id: u64) -> io::Result<()> {
        let mut a = abi::RegionDestroyArgs {
            region_id: id,
            ..Default::default()
        };
        self.call(abi::IOC_REGION_DESTROY, &mut a)
    }

    /// Opens region `region` of the host at `peer` (port 0 = the module's default).
    pub fn remote_open(
        &self,
        peer: Ipv4Addr,
        port: u16,
        region: RegionId,
        timeout: Option<Duration>,
    ) -> io::Result<RemoteRegion> {
        let mut a = abi::RemoteOpenArgs {
            peer_addr: u32::from_ne_bytes(peer.octets()),
            peer_port: port,
            timeout_ms: timeout.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32),
            region_id: region.id,
            secret: region.secret,
            ..Default::default()
        };
        self.call(abi::IOC_REMOTE_OPEN, &mut a)?;
        Ok(RemoteRegion {
            handle: a.handle,
            size: a.size,
            connect_ns: a.connect_ns,
            open_ns: a.open_ns,
        })
    }

    /// Reads `buf.len()` bytes at `offset` of an opened region, `batch_pages` READs per
    /// doorbell. `flags` from [`mitosis_abi::ioctl::read_flags`].
    pub fn remote_read(
        &self,
        handle: u64,
        offset: u64,
        buf: &mut [u8],
        batch_pages: u32,
        flags: u32,
    ) -> io::Result<ReadStats> {
        let mut a = abi::RemoteReadArgs {
            handle,
            offset,
            length: buf.len() as u64,
            user_buf: buf.as_mut_ptr() as u64,
            batch_pages,
            flags,
            ..Default::default()
        };
        self.call(abi::IOC_REMOTE_READ, &mut a)?;
        Ok(ReadStats {
            elapsed_ns: a.elapsed_ns,
            doorbells: a.doorbells,
            reads: a.reads,
        })
    }

    pub fn remote_close(&self, handle: u64) -> io::Result<()> {
        let mut a = abi::RemoteCloseArgs {
            handle,
            ..Default::default()
        };
        self.call(abi::IOC_REMOTE_CLOSE, &mut a)
    }
}

/// Parses a 32-hex-digit secret.
pub fn parse_secret(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Formats a secret as 32 hex digits.
pub fn format_secret(secret: &[u8; 16]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trip() {
        let s = [
            0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xfe, 0xff,
        ];
        assert_eq!(parse_secret(&format_secret(&s)), Some(s));
        assert_eq!(parse_secret("abc"), None);
        assert_eq!(parse_secret(&"zz".repeat(16)), None);
    }

    #[test]
    fn c_string_stops_at_nul() {
        assert_eq!(c_string(b"rxe0\0\0garbage"), "rxe0");
        assert_eq!(c_string(b"full"), "full");
    }

    #[test]
    fn open_missing_device_is_enoent() {
        let e = Mitosis::open_path("/nonexistent/mitosis").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
