// SPDX-License-Identifier: GPL-2.0

//! `/dev/mitosis` ioctl numbers and argument structs.
//!
//! Every argument struct starts with a [`Header`] carrying the caller's ABI version and
//! the size of the struct the caller was built with. The ioctl number encodes the same
//! size, the type byte [`IOC_MAGIC`] and the command number; the module dispatches on the
//! type and number and then checks the size the way `copy_struct_from_user()` does:
//!
//! | condition | errno |
//! |---|---|
//! | unknown type, number or direction | `ENOTTY` |
//! | struct shorter than the module's | `EMSGSIZE` |
//! | struct longer than the module's, non-zero tail (or over [`MAX_ARG_SIZE`]) | `E2BIG` |
//! | user pointer not readable or writable | `EFAULT` |
//! | `Header::abi_version` != [`ABI_VERSION`] (all but `VERSION`) | `EPROTO` |
//! | `Header::size` disagrees with the number's size | `EBADMSG` |
//! | a reserved field or padding not zero, a field out of range | `EINVAL` |
//!
//! All integers are native-endian (the module and its callers share a host). Padding is
//! explicit (`_pad*` fields) and must be zero.

/// Version of this ABI. Bumped on any incompatible change.
pub const ABI_VERSION: u32 = 7;

/// The ioctl type byte of `/dev/mitosis`.
pub const IOC_MAGIC: u8 = 0xB7;

/// Largest argument struct the module accepts (bounds the copy from user space).
pub const MAX_ARG_SIZE: usize = 4096;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
/// `_IOC_READ | _IOC_WRITE`: every Mitosis ioctl copies its struct in and back out.
pub const IOC_READ_WRITE: u32 = 3;

/// `_IOWR(IOC_MAGIC, nr, size)`.
pub const fn iowr(nr: u8, size: usize) -> u32 {
    (IOC_READ_WRITE << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((IOC_MAGIC as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// The parts of an ioctl number: `(direction, type, nr, size)`.
pub const fn decode(cmd: u32) -> (u32, u8, u8, usize) {
    (
        cmd >> IOC_DIRSHIFT,
        (cmd >> IOC_TYPESHIFT) as u8,
        (cmd >> IOC_NRSHIFT) as u8,
        ((cmd >> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1)) as usize,
    )
}

/// Common first member of every argument struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The caller's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of` the whole argument struct as the caller knows it.
    pub size: u32,
}

impl Header {
    /// A header for an argument struct of type `T` at this ABI version.
    pub const fn for_struct<T>() -> Self {
        Header {
            abi_version: ABI_VERSION,
            size: core::mem::size_of::<T>() as u32,
        }
    }
}

/// Marker for plain-old-data argument structs: `#[repr(C)]`, only integer fields and
/// arrays of them, explicit padding, so every bit pattern is a valid value.
///
/// # Safety
///
/// Implementors must satisfy the description above.
pub unsafe trait Pod: Copy + Default {
    /// Views the value as bytes.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self: Pod` has no padding bytes that are uninitialised (all padding is
        // explicit fields) and lives for the returned borrow.
        unsafe {
            core::slice::from_raw_parts(
                self as *const Self as *const u8,
                core::mem::size_of::<Self>(),
            )
        }
    }

    /// Reads a value from the first `size_of::<Self>()` bytes of `bytes`.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked; any bit pattern is a valid `Self` (`Pod`);
        // `read_unaligned` has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Self) })
    }
}

// SAFETY: two `u32`s, no padding.
unsafe impl Pod for Header {}

macro_rules! ioctl_structs {
    ($($(#[$m:meta])* $name:ident / $cmd:ident = $nr:expr, $args:ty, $size:expr;)*) => {
        /// The commands, by `_IOC_NR`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Command {
            $($cmd,)*
        }

        impl TryFrom<u8> for Command {
            type Error = ();

            fn try_from(nr: u8) -> Result<Self, ()> {
                $(if nr == $nr {
                    return Ok(Command::$cmd);
                })*
                Err(())
            }
        }

        $(
            $(#[$m])*
            pub const $name: u32 = iowr($nr, core::mem::size_of::<$args>());
            const _: () = assert!(core::mem::size_of::<$args>() == $size);
            const _: () = assert!(core::mem::size_of::<$args>() % 8 == 0);
            // SAFETY: checked by review: repr(C), integer fields, explicit padding, and the
            // size assertion above catches implicit padding growth.
            unsafe impl Pod for $args {}
        )*
        /// Command numbers (`_IOC_NR`) and the argument size the module expects.
        pub const COMMANDS: &[(u8, usize, &str)] = &[
            $(($nr, core::mem::size_of::<$args>(), stringify!($name)),)*
        ];
    };
}

/// `MITOSIS_IOC_VERSION`: ping. Works at any [`Header::abi_version`], so a mismatched
/// caller can learn the module's version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionArgs {
    pub hdr: Header,
    /// In: any value. Out: the same value (proves the round trip).
    pub cookie: u64,
    /// Out: the module's [`ABI_VERSION`].
    pub module_abi_version: u32,
    pub _pad: u32,
    /// Out: NUL-terminated module version string.
    pub module_version: [u8; 32],
}

/// One RDMA device the module sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// NUL-terminated device name (`rxe0`).
    pub name: [u8; 32],
    /// `enum ib_port_state` of port 1 (4 = ACTIVE).
    pub port_state: u32,
    pub max_fast_reg_page_list_len: u32,
    pub max_qp_rd_atom: u32,
    pub _pad: u32,
}

/// Declares the counters once: the `#[repr(C)]` struct the module fills, and their
/// names in ABI order for the library, the CLI and the C header check
/// (`abi/tests/abi.rs` compares `lib/include/mitosis.h` with [`Counters::NAMES`]).
macro_rules! counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Counters since module load.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$m])* pub $name: u64,)*
        }

        impl Counters {
            /// Every counter's name, in ABI order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Every counter as (name, value), in ABI order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name)),*].into_iter()
            }
        }

        /// The module's running counters: the same fields, atomically updated from
        /// any context; [`LiveCounters::snapshot`] reads them for `STATUS`.
        #[derive(Debug, Default)]
        pub struct LiveCounters {
            $($(#[$m])* pub $name: core::sync::atomic::AtomicU64,)*
        }

        impl LiveCounters {
            pub const fn new() -> Self {
                LiveCounters {
                    $($name: core::sync::atomic::AtomicU64::new(0),)*
                }
            }

            /// Every counter's current value (each read on its own: not one instant).
            pub fn snapshot(&self) -> Counters {
                Counters {
                    $($name: self.$name.load(core::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Outgoing connections established / failed (timeout, reject, unreachable).
    conns_established,
    conns_failed,
    /// Incoming connections accepted.
    conns_accepted,
    /// Connections torn down (either side, any reason).
    conns_closed,
    ctrl_msgs_sent,
    ctrl_msgs_received,
    /// RDMA READ work requests posted, and doorbells (post calls) that carried them.
    read_wrs_posted,
    read_doorbells,
    bytes_read,
    /// READ completions in error, and READs that timed out.
    read_errors,
    read_timeouts,
    /// Regions published on this host, remote opens granted and refused.
    regions_live,
    region_opens,
    region_opens_refused,
    /// Registrations peers hold open (a snapshot's, or its packed copy's, once per
    /// peer that opened it; the registration itself is made once per device and
    /// shared, since wire version 8).
    mrs_live,
    /// Snapshots published on this host, and the seed pages they hold.
    snapshots_live,
    snapshot_pages,
    /// Resumes that reached the child's first instruction, and that failed.
    resumes,
    resumes_failed,
    /// Snapshot pages this host fetched from peers (fault, prefetch or eager) and hole
    /// pages it zero-filled locally.
    pages_fetched,
    pages_zeroed,
    /// Remote faults that failed (the faulting child got SIGBUS).
    fetch_failures,
    /// Page faults on snapshot memory that read from the parent (`read_folio` or
    /// `readahead` calls that sent READs; each may bring a window of pages).
    remote_faults,
    /// Seed VMAs children on this host mapped from this host's own file (same path and
    /// identity as the seed's), and file records whose local file was missing or
    /// different (their VMAs came from the snapshot).
    vmas_local,
    files_refused,
    /// Working sets recorded when a snapshot's last child on this host exited, and the
    /// pages prefetched from them at later resumes of the same snapshot.
    ws_recorded,
    ws_pages_replayed,
    /// Working sets this host kept as a parent: the first a peer reported for each of
    /// its snapshots, then each naming more pages (in the slot that was reserved: the
    /// layout is unchanged).
    ws_reports_kept,
    /// Transparent huge pages captures took whole from their PMD (one reference for
    /// 512 pages instead of 512 page references; since ABI 6).
    huge_pages_captured,
    /// Windows of snapshot pages read ahead of a child reading a VMA in sequence, in
    /// the background while it works through the windows before (since ABI 7).
    readahead_windows,
}

impl DeviceInfo {
    /// The device name up to its NUL ("?" if not UTF-8).
    pub fn name_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

pub const MAX_DEVICES: usize = 4;

/// `MITOSIS_IOC_STATUS`: devices, connections, counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusArgs {
    pub hdr: Header,
    /// Out: entries used in `devices` (the rest are zero).
    pub n_devices: u32,
    /// Out: live connections (outgoing pooled + incoming accepted).
    pub n_connections: u32,
    /// Out: the control listener's port, 0 if not listening.
    pub listen_port: u32,
    pub _pad: u32,
    pub devices: [DeviceInfo; MAX_DEVICES],
    pub counters: Counters,
}

/// `MITOSIS_IOC_REGION_CREATE`: publish a kernel region filled with a known pattern
/// (test and benchmark support; snapshots use the same publication path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionCreateArgs {
    pub hdr: Header,
    /// In: size in bytes, a non-zero multiple of 4096, at most [`MAX_REGION_BYTES`].
    pub size: u64,
    /// In: seed of the fill pattern ([`pattern_word`]).
    pub pattern_seed: u64,
    /// Out: the region's id on this host.
    pub region_id: u64,
    /// Out: the secret a peer must present to open it.
    pub secret: [u8; 16],
}

/// Largest test region (bounded kernel allocation).
pub const MAX_REGION_BYTES: u64 = 256 << 20;

/// `MITOSIS_IOC_REGION_DESTROY`: unpublish; registrations for peers are invalidated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionDestroyArgs {
    pub hdr: Header,
    pub region_id: u64,
}

/// `MITOSIS_IOC_REMOTE_OPEN`: connect (pooled) to a peer and open one of its regions.
/// The handle belongs to the open file and is closed with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteOpenArgs {
    pub hdr: Header,
    /// In: peer IPv4 address in network byte order.
    pub peer_addr: u32,
    /// In: peer port (host order); 0 = the module's default.
    pub peer_port: u16,
    pub _pad: u16,
    /// In: connection timeout in ms; 0 = default.
    pub timeout_ms: u32,
    pub _pad2: u32,
    pub region_id: u64,
    pub secret: [u8; 16],
    /// Out: handle for READ/CLOSE.
    pub handle: u64,
    /// Out: the region's size in bytes.
    pub size: u64,
    /// Out: time to get a connection (0 when the pool had one) and to open, in ns.
    pub connect_ns: u64,
    pub open_ns: u64,
}

/// Flags of [`RemoteReadArgs::flags`].
pub mod read_flags {
    /// Skip the local bounds check, so the peer's registration has to refuse the access
    /// (fault-injection tests only).
    pub const UNCHECKED: u32 = 1 << 0;
    pub const ALL: u32 = UNCHECKED;
}

/// `MITOSIS_IOC_REMOTE_READ`: one-sided READ of `[offset, offset+length)` of an opened
/// region into `user_buf`, `batch_pages` READs per doorbell (1 = one page at a time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteReadArgs {
    pub hdr: Header,
    pub handle: u64,
    /// Byte offset and length, multiples of 4096.
    pub offset: u64,
    pub length: u64,
    /// User address of a buffer of `length` bytes.
    pub user_buf: u64,
    /// READs per doorbell, 1..=[`MAX_BATCH_PAGES`].
    pub batch_pages: u32,
    pub flags: u32,
    /// Out: wall time in the module, doorbells rung, READs posted.
    pub elapsed_ns: u64,
    pub doorbells: u64,
    pub reads: u64,
}

pub const MAX_BATCH_PAGES: u32 = 64;

/// `MITOSIS_IOC_REMOTE_CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCloseArgs {
    pub hdr: Header,
    pub handle: u64,
}

/// Flags of [`ForkCaptureArgs::flags`] (none yet).
pub mod capture_flags {
    pub const ALL: u32 = 0;
}

/// `MITOSIS_IOC_FORK_CAPTURE`: called by the seed, the library's `fork()` copy of the
/// process being prepared. The module captures the calling task (registers, FPU, signal
/// state, every VMA and page) into a snapshot, files the result under the seed's pid and
/// `claim_token` for [`IOC_FORK_CLAIM`], and ends the seed with SIGKILL before it runs
/// another user instruction (so nothing it does can change the captured pages). On
/// failure the call returns the errno and the seed lives on. When a child resumes from
/// the snapshot, this call returns **0** in the child, with the `child_*` fields filled
/// in (the module's only write to the child's copy of this struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkCaptureArgs {
    pub hdr: Header,
    /// In: [`capture_flags`].
    pub flags: u32,
    pub _pad: u32,
    /// In: a random value the parent presents to claim the result.
    pub claim_token: u64,
    /// Out (child): where the child's vDSO and vvar are now and where the seed had them
    /// (the library moves them back with `mremap` before anything calls the vDSO).
    pub child_vdso: u64,
    pub child_vvar: u64,
    pub seed_vdso: u64,
    pub seed_vvar: u64,
    pub vdso_len: u64,
    pub vvar_len: u64,
    /// Out (child): `CLOCK_MONOTONIC` ns when the resume call entered the module, and
    /// pages fetched eagerly.
    pub resume_start_ns: u64,
    pub eager_pages: u64,
    /// Out (child): pages prefetched from this host's working-set record of the
    /// snapshot, and the network round trips the resume call made (control RPCs and
    /// READ doorbells, counted by the module; a new connection's setup not included).
    pub prefetched_pages: u64,
    pub round_trips: u64,
    /// Out (child): where the resume's time went before the child's address space was
    /// rebuilt, in ns: getting the connection (0 when pooled), the open at the parent
    /// (one RPC), and reading the descriptor, lead pages and working-set record; and
    /// the whole resume call up to this report (the rest of `resume` is the return to
    /// user space and the library's first steps in the child).
    pub connect_ns: u64,
    pub open_ns: u64,
    pub fetch_ns: u64,
    pub in_module_ns: u64,
}

/// `MITOSIS_IOC_FORK_CLAIM`: the parent collects what the seed `seed_pid` (its child)
/// captured, presenting the seed's `claim_token`. Once: a second claim is `ENOENT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkClaimArgs {
    pub hdr: Header,
    pub seed_pid: u32,
    /// Out: the control listener's port.
    pub listen_port: u32,
    pub claim_token: u64,
    /// Out: the snapshot's id and secret on this host.
    pub snapshot_id: u64,
    pub secret: [u8; 16],
    /// Out: capture time in the module (ns); VMAs, present pages, hole pages and
    /// descriptor bytes.
    pub capture_ns: u64,
    pub n_vmas: u64,
    pub present_pages: u64,
    pub hole_pages: u64,
    pub desc_bytes: u64,
}

/// Flags of [`ForkResumeArgs::flags`].
pub mod resume_flags {
    /// Fetch every present page of the snapshot before the child runs.
    pub const EAGER: u32 = 1 << 0;
    pub const ALL: u32 = EAGER;
}

/// `MITOSIS_IOC_FORK_RESUME`: replaces the caller's address space and execution state
/// with snapshot `snapshot_id` of the peer. Does not return on success: the caller
/// continues as a child from the seed's `FORK_CAPTURE`, which returns 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkResumeArgs {
    pub hdr: Header,
    /// In: parent host IPv4 address in network byte order (the module's own address
    /// works too: a child on the parent's host).
    pub peer_addr: u32,
    /// In: port (host order), 0 = default.
    pub peer_port: u16,
    pub _pad: u16,
    /// In: connection timeout in ms, 0 = default.
    pub timeout_ms: u32,
    /// In: [`resume_flags`].
    pub flags: u32,
    pub snapshot_id: u64,
    pub secret: [u8; 16],
}

/// Flags of [`ForkReleaseArgs::flags`].
pub mod release_flags {
    /// Also revoke every peer's access now: running children get SIGBUS on their next
    /// remote fault.
    pub const FORCE: u32 = 1 << 0;
    pub const ALL: u32 = FORCE;
}

/// `MITOSIS_IOC_FORK_RELEASE`: ends a snapshot of this host. New resumes fail with
/// `ENOENT`; children already running keep reading it (unless [`release_flags::FORCE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkReleaseArgs {
    pub hdr: Header,
    pub snapshot_id: u64,
    pub secret: [u8; 16],
    pub flags: u32,
    pub _pad: u32,
}

ioctl_structs! {
    /// Ping and version.
    IOC_VERSION / Version = 0, VersionArgs, 56;
    /// Devices, connections, counters.
    IOC_STATUS / Status = 1, StatusArgs, 24 + 48 * MAX_DEVICES + 240;
    IOC_REGION_CREATE / RegionCreate = 2, RegionCreateArgs, 48;
    IOC_REGION_DESTROY / RegionDestroy = 3, RegionDestroyArgs, 16;
    IOC_REMOTE_OPEN / RemoteOpen = 4, RemoteOpenArgs, 80;
    IOC_REMOTE_READ / RemoteRead = 5, RemoteReadArgs, 72;
    IOC_REMOTE_CLOSE / RemoteClose = 6, RemoteCloseArgs, 16;
    IOC_FORK_CAPTURE / ForkCapture = 7, ForkCaptureArgs, 136;
    IOC_FORK_RESUME / ForkResume = 8, ForkResumeArgs, 48;
    IOC_FORK_RELEASE / ForkRelease = 9, ForkReleaseArgs, 40;
    IOC_FORK_CLAIM / ForkClaim = 10, ForkClaimArgs, 88;
    /// The snapshots published on this host.
    IOC_SNAPSHOT_LIST / SnapshotList = 11, SnapshotListArgs, 32;
}

/// Most entries one `IOC_SNAPSHOT_LIST` call returns (the module copies them through a
/// bounded kernel buffer).
pub const MAX_LIST_ENTRIES: u32 = 1024;

/// One snapshot published on this host, in an `IOC_SNAPSHOT_LIST` answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub id: u64,
    /// Pages it holds: the descriptor's and the seed's present pages.
    pub pages: u64,
    pub desc_bytes: u64,
    /// Milliseconds since it was published.
    pub age_ms: u64,
    /// Peer hosts with an open of it now.
    pub peers: u32,
    /// Children on this host mapping it (one per resume; a child's forks share it).
    pub children: u32,
    /// The seed (ended at its capture) and the process that prepared the snapshot, in
    /// the preparing process's pid namespace.
    pub seed_pid: u32,
    pub parent_pid: u32,
}

const _: () = assert!(core::mem::size_of::<SnapshotEntry>() == 48);
// SAFETY: repr(C), integer fields, explicit padding (size checked above).
unsafe impl Pod for SnapshotEntry {}

/// `MITOSIS_IOC_SNAPSHOT_LIST`: the snapshots of this host, oldest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotListArgs {
    pub hdr: Header,
    /// In: user address of an array of `capacity` [`SnapshotEntry`] (0 and 0 to count).
    pub entries: u64,
    /// In: at most [`MAX_LIST_ENTRIES`].
    pub capacity: u32,
    /// Out: entries written.
    pub count: u32,
    /// Out: snapshots on this host (more than `count` when `capacity` was short).
    pub total: u32,
    pub _pad: u32,
}

/// The 64-bit word at byte offset `off` (a multiple of 8) of a region filled with `seed`.
/// A cheap mix so every word of every page differs and a misplaced page is caught.
pub const fn pattern_word(seed: u64, off: u64) -> u64 {
    let mut x = seed ^ off.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// Fills `page` (whose first byte is at region offset `off`) with the pattern.
pub fn fill_pattern(seed: u64, off: u64, page: &mut [u8]) {
    for (i, chunk) in page.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&pattern_word(seed, off + 8 * i as u64).to_ne_bytes());
    }
}

/// Index of the first 8-byte word of `buf` (at region offset `off`) that differs from
/// the pattern, if any.
pub fn check_pattern(seed: u64, off: u64, buf: &[u8]) -> Option<usize> {
    buf.chunks_exact(8).enumerate().position(|(i, chunk)| {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        u64::from_ne_bytes(w) != pattern_word(seed, off + 8 * i as u64)
    })
}
