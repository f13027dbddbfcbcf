//! Remote-fork scenarios (issue 3), run by `tests/scenarios/remote-fork-{a,b}.sh`.
//!
//! Guest A (`fork-parent`) builds a seed world (heap structures, a 1 GiB sparse
//! region, a THP region, read-only and PROT_NONE regions, a private file mapping with
//! dirty pages, TLS, a signal handler, a stack pattern, SSE/AVX and general registers
//! loaded around the raw capture syscall), prepares, then changes its own memory.
//! Children are launched with `mitosis resume HANDLE` on both guests; each reads its
//! task from stdin (the launcher's stdin), verifies everything byte by byte and prints
//! `MITOSIS-RESULT` lines (its stdout is the launcher's). Guest B (`fork-remote`) drives
//! the cross-guest cases over a TCP line protocol with A:
//!
//! ```text
//! A -> B  handle H / lazy H2        the main snapshot and a second one never released
//! B -> A  hop H3                    A resumes a grandchild from B's child's snapshot
//! A -> B  hop-done STATUS
//! B -> A  release                   A releases H (children keep running)
//! A -> B  released
//! B -> A  bye                       A checks itself and exits (its guest powers off)
//! ```

//!
//! Files: `world.rs` (the seed world and how it is built), `registers.rs` (registers
//! loaded around the raw capture syscall), `verify.rs` (what a child checks, by group),
//! `child.rs` (a resumed child's main), `parent.rs` (guest A), `remote.rs` (guest B),
//! `launchers.rs` (launchers with unusual state).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mitosis::{fork::local_host, Forked, Mitosis, ResumeOptions, SnapshotHandle};
use mitosis_abi::ioctl::{self as abi, pattern_word};

use crate::report::Report;

mod child;
mod launchers;
mod parent;
mod registers;
mod remote;
mod verify;
mod world;

use child::child_main;
pub use launchers::{launch_dirty, launch_with_vdso_at};
pub use parent::parent;
use registers::capture_with_registers;
pub use remote::remote;
pub use world::World;
use world::*;

const PAGE: usize = 4096;
const SPARSE_BYTES: usize = 1 << 30;
const SPARSE_TOUCHED: usize = 16;
const THP_BYTES: usize = 2 << 20;
const SMALL_PAGES: usize = 4;
const FILE_PAGES: usize = 8;
const FILE_PATH: &str = "/tmp/mitosis-seed-file";
const TLS_MAGIC: u64 = 0x7415_7415_7415_7415;
const STACK_WORDS: usize = 1024;
/// Seeds of the fill patterns, one per region.
pub const SEED_HEAP: u64 = 11;
const SEED_SPARSE: u64 = 12;
const SEED_THP: u64 = 13;
const SEED_RO: u64 = 14;
const SEED_NONE: u64 = 15;
const SEED_FILE: u64 = 16;
const SEED_DIRTY: u64 = 17;
const SEED_STACK: u64 = 18;
pub const SEED_MAP: u64 = 19;
const SEED_SWAP: u64 = 20;
const SEED_SHARED: u64 = 21;
/// The seed's umask (the launchers' is 022).
const SEED_UMASK: libc::mode_t = 0o027;
const SEED_MEMFD: u64 = 22;
const SEED_GROW: u64 = 23;
const SEED_NEIGHBOUR: u64 = 24;
const SWAP_PAGES: usize = 64;
const SEED_WIPE: u64 = 25;
/// The seed's `errno` when it calls prepare (a value no call on that path sets).
const SEED_ERRNO: i32 = libc::EXDEV;
/// The child's `errno` right after prepare returned in it.
static CHILD_ERRNO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

thread_local! {
    static TLS_VALUE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

static SIGNALS_SEEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigusr1(_sig: i32) {
    SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst);
}

pub fn role_of_this_host() -> String {
    match local_host().map(|h| h.octets()[3]) {
        Ok(1) => "a".into(),
        Ok(2) => "b".into(),
        Ok(n) => format!("guest{n}"),
        Err(_) => "unknown".into(),
    }
}

/// Builds the world and prepares. Returns in the parent; children never return.
pub fn prepare_world(
    r: &mut Report,
    heap_mib: usize,
    registers: bool,
) -> Option<(Mitosis, World, mitosis::Prepared)> {
    prepare_world_with(r, heap_mib, registers, true)
}

/// [`prepare_world`] with a lean world when `full` is false.
pub fn prepare_world_with(
    r: &mut Report,
    heap_mib: usize,
    registers: bool,
    full: bool,
) -> Option<(Mitosis, World, mitosis::Prepared)> {
    let m = match Mitosis::open() {
        Ok(m) => m,
        Err(e) => {
            r.check("rf-open", false, e.to_string(), &[]);
            return None;
        }
    };
    let mut w = World::build_with(heap_mib, full);
    let mut stack = [0u64; STACK_WORDS];
    for (i, v) in stack.iter_mut().enumerate() {
        *v = pattern_word(SEED_STACK, i as u64);
    }
    let capture: mitosis::fork::CaptureFn = if registers {
        capture_with_registers
    } else {
        mitosis::fork::ioctl_capture
    };
    let huge_captured = |m: &Mitosis| m.status().map(|s| s.counters.huge_pages_captured);
    let huge_before = huge_captured(&m);
    // SAFETY: writing this thread's errno.
    unsafe { *libc::__errno_location() = SEED_ERRNO };
    let res = m.fork_prepare_with(capture);
    let errno_after = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    std::hint::black_box(&mut stack);
    match res {
        Ok(Forked::Child(resumed)) => {
            CHILD_ERRNO.store(errno_after, Ordering::SeqCst);
            child_main(&mut w, &stack, resumed, &m)
        }
        Ok(Forked::Parent(p)) => {
            if full {
                // The world's 2 MiB-aligned THP piece is mapped by one PMD in the seed
                // too: the capture must have taken it whole (one reference).
                let (before, after) = (huge_before.ok(), huge_captured(&m).ok());
                let taken = after.zip(before).map(|(a, b)| a.saturating_sub(b));
                r.check(
                    "rf-prepare-thp-whole",
                    w.thp_backed && taken.is_some_and(|n| n >= 1),
                    format!(
                        "seed THP-backed: {}, huge pages taken whole: {taken:?}",
                        w.thp_backed
                    ),
                    &[("huge_pages_captured", taken.unwrap_or(0) as f64)],
                );
            }
            Some((m, w, p))
        }
        Err(e) => {
            r.check("rf-prepare", false, e.to_string(), &[]);
            None
        }
    }
}

/// A launcher: `mitosis resume HANDLE` with piped stdin/stdout.
pub fn launch(handle: &SnapshotHandle, eager: bool) -> std::io::Result<Child> {
    let mut c = Command::new("mitosis");
    c.arg("resume").arg(handle.to_string());
    if eager {
        c.arg("--eager");
    }
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()
}

/// Sends `task` and echoes the child's output until it exits; returns its status and
/// output lines.
pub fn run_child(mut c: Child, task: &str) -> (std::process::ExitStatus, Vec<String>) {
    if let Some(mut i) = c.stdin.take() {
        let _ = writeln!(i, "{task}");
    }
    let lines = echo_all(&mut c);
    let st = c.wait().expect("wait child");
    (st, lines)
}

/// Runs children concurrently: every task is handed out before any output is
/// collected. Returns each child's status and output lines, in order.
pub fn run_children(kids: Vec<(Child, String)>) -> Vec<(std::process::ExitStatus, Vec<String>)> {
    let mut running = Vec::new();
    for (mut c, task) in kids {
        if let Some(mut i) = c.stdin.take() {
            let _ = writeln!(i, "{task}");
        }
        running.push(c);
    }
    running
        .into_iter()
        .map(|mut c| {
            let lines = echo_all(&mut c);
            (c.wait().expect("wait child"), lines)
        })
        .collect()
}

fn echo_all(c: &mut Child) -> Vec<String> {
    let mut out = String::new();
    if let Some(o) = c.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    for l in out.lines() {
        println!("{l}");
    }
    out.lines().map(String::from).collect()
}

fn status_ok(st: &std::process::ExitStatus) -> bool {
    st.success()
}
