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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mitosis::{fork::local_host, Forked, Mitosis, ResumeOptions, SnapshotHandle};
use mitosis_abi::ioctl::{self as abi, pattern_word};

use crate::report::Report;

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

thread_local! {
    static TLS_VALUE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

static SIGNALS_SEEN: AtomicU64 = AtomicU64::new(0);
/// Register check of the capture syscall: bit 0 = vector registers differed, bit 1 =
/// general registers differed, bit 2 = AVX unavailable.
static REGISTER_MISMATCH: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigusr1(_sig: i32) {
    SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst);
}

fn map_anon(len: usize, extra: i32) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap {len} failed");
    p as *mut u8
}

fn fill(p: *mut u8, len: usize, seed: u64, off: u64) {
    // SAFETY: `p..p+len` is a mapping we own; words are aligned.
    let words = unsafe { std::slice::from_raw_parts_mut(p as *mut u64, len / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern_word(seed, off + 8 * i as u64);
    }
}

/// Index of the first word differing from the pattern.
fn first_bad(p: *const u8, len: usize, seed: u64, off: u64) -> Option<usize> {
    // SAFETY: as in `fill`.
    let words = unsafe { std::slice::from_raw_parts(p as *const u64, len / 8) };
    words
        .iter()
        .enumerate()
        .position(|(i, w)| *w != pattern_word(seed, off + 8 * i as u64))
}

/// Everything the seed holds that children verify.
pub struct World {
    pub heap: Vec<u64>,
    pub map: std::collections::BTreeMap<u64, String>,
    sparse: *mut u8,
    thp: *mut u8,
    thp_backed: bool,
    ro: *mut u8,
    none: *mut u8,
    file: *mut u8,
    /// Paged out to swap before prepare (`MADV_PAGEOUT`), and how much the seed's
    /// process had in swap then.
    swapped: *mut u8,
    swapped_kib: u64,
    /// `MAP_SHARED | MAP_ANONYMOUS` and memfd memory: the parent writes both after
    /// prepare (and the seed file on disk); children must see the snapshot's content.
    shared: *mut u8,
    memfd: *mut u8,
    /// `SMALL_PAGES` read-write pages directly followed by `SMALL_PAGES` read-only
    /// ones (two VMAs): a child growing the first with `mremap` must read zeros in
    /// the new part, never its neighbour's data.
    grow: *mut u8,
}

impl World {
    /// `full`: also the sparse, THP, read-only, PROT_NONE and file regions (the
    /// scenarios); without them the world is the heap and the map (benchmark seeds).
    pub fn build_with(heap_mib: usize, full: bool) -> World {
        let words = heap_mib * (1 << 20) / 8;
        let heap: Vec<u64> = (0..words as u64)
            .map(|i| pattern_word(SEED_HEAP, 8 * i))
            .collect();
        let map: std::collections::BTreeMap<u64, String> = (0..10_000u64)
            .map(|k| (k, format!("value-{}", pattern_word(SEED_MAP, k))))
            .collect();
        if !full {
            let none = std::ptr::null_mut();
            return World {
                heap,
                map,
                sparse: none,
                thp: none,
                thp_backed: false,
                ro: none,
                none,
                file: none,
                swapped: none,
                swapped_kib: 0,
                shared: none,
                memfd: none,
                grow: none,
            };
        }
        let sparse = map_sparse();
        // THP: a 2 MiB-aligned 2 MiB piece of a 4 MiB mapping.
        let raw = map_anon(2 * THP_BYTES, 0);
        let thp = ((raw as usize + THP_BYTES - 1) & !(THP_BYTES - 1)) as *mut u8;
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(thp as *mut _, THP_BYTES, libc::MADV_HUGEPAGE) };
        fill(thp, THP_BYTES, SEED_THP, 0);
        let thp_backed = anon_huge_kib() > 0;
        let ro = map_anon(SMALL_PAGES * PAGE, 0);
        fill(ro, SMALL_PAGES * PAGE, SEED_RO, 0);
        let none = map_anon(SMALL_PAGES * PAGE, 0);
        fill(none, SMALL_PAGES * PAGE, SEED_NONE, 0);
        // SAFETY: protection changes of our own mappings.
        unsafe {
            libc::mprotect(ro as *mut _, SMALL_PAGES * PAGE, libc::PROT_READ);
            libc::mprotect(none as *mut _, SMALL_PAGES * PAGE, libc::PROT_NONE);
        }
        let file = map_file();
        let swapped = map_anon(SWAP_PAGES * PAGE, 0);
        fill(swapped, SWAP_PAGES * PAGE, SEED_SWAP, 0);
        // SAFETY: advice on our own mapping: reclaim it now (to swap, if there is one).
        unsafe { libc::madvise(swapped as *mut _, SWAP_PAGES * PAGE, libc::MADV_PAGEOUT) };
        let swapped_kib = status_kib("VmSwap:");
        // Attributes a forked child keeps from its parent; a remote child must too,
        // not take its launcher's (`mitosis resume` runs as "mitosis" in B's root
        // with umask 022).
        // SAFETY: plain process attribute changes.
        unsafe { libc::umask(SEED_UMASK) };
        let _ = std::env::set_current_dir("/tmp");
        let shared = map_anon_shared(SMALL_PAGES * PAGE);
        fill(shared, SMALL_PAGES * PAGE, SEED_SHARED, 0);
        let memfd = map_memfd(SMALL_PAGES * PAGE);
        fill(memfd, SMALL_PAGES * PAGE, SEED_MEMFD, 0);
        let grow = map_anon(2 * SMALL_PAGES * PAGE, 0);
        fill(grow, SMALL_PAGES * PAGE, SEED_GROW, 0);
        // SAFETY: the second half of our own mapping.
        unsafe {
            let neighbour = grow.add(SMALL_PAGES * PAGE);
            fill(neighbour, SMALL_PAGES * PAGE, SEED_NEIGHBOUR, 0);
            libc::mprotect(neighbour as *mut _, SMALL_PAGES * PAGE, libc::PROT_READ);
        }
        TLS_VALUE.with(|v| v.set(TLS_MAGIC));
        // SAFETY: installing a plain handler that only touches an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as usize;
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
        World {
            heap,
            map,
            sparse,
            thp,
            thp_backed,
            ro,
            none,
            file,
            swapped,
            swapped_kib,
            shared,
            memfd,
            grow,
        }
    }

    /// Bytes of memory the world touched.
    pub fn touched_bytes(&self) -> usize {
        if self.sparse.is_null() {
            return self.heap.len() * 8;
        }
        self.heap.len() * 8
            + SPARSE_TOUCHED * PAGE
            + THP_BYTES
            + 2 * SMALL_PAGES * PAGE
            + FILE_PAGES * PAGE
    }

    /// The parent's writes after prepare: children must not see them.
    fn scribble(&mut self) {
        for w in self.heap.iter_mut().step_by(512) {
            *w = !*w;
        }
        self.map.insert(0, "parent-after-prepare".into());
        // SAFETY: first touched page of the sparse region.
        unsafe { *(self.sparse as *mut u64) = 0xdead };
        TLS_VALUE.with(|v| v.set(1));
        if !self.shared.is_null() {
            // SAFETY: our own shared mappings, SMALL_PAGES pages each.
            unsafe {
                std::ptr::write_bytes(self.shared, 0xAB, SMALL_PAGES * PAGE);
                std::ptr::write_bytes(self.memfd, 0xCD, SMALL_PAGES * PAGE);
            }
            // The file behind the private mapping's clean pages changes too.
            use std::os::unix::fs::FileExt;
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(FILE_PATH) {
                let _ = f.write_all_at(&vec![0xEEu8; PAGE], PAGE as u64);
            }
        }
    }
}

/// Shared anonymous memory (shmem underneath).
fn map_anon_shared(len: usize) -> *mut u8 {
    // SAFETY: a fresh shared mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    p as *mut u8
}

/// A memfd mapped shared (the descriptor is closed; the mapping keeps it).
fn map_memfd(len: usize) -> *mut u8 {
    // SAFETY: plain syscalls on a descriptor we own.
    unsafe {
        let fd = libc::memfd_create(c"mitosis-seed".as_ptr(), 0);
        assert!(fd >= 0 && libc::ftruncate(fd, len as i64) == 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        libc::close(fd);
        assert!(p != libc::MAP_FAILED);
        p as *mut u8
    }
}

fn sparse_offset(i: usize) -> usize {
    i * (SPARSE_BYTES / SPARSE_TOUCHED) + i * PAGE
}

fn map_sparse() -> *mut u8 {
    let p = map_anon(SPARSE_BYTES, libc::MAP_NORESERVE);
    for i in 0..SPARSE_TOUCHED {
        let off = sparse_offset(i);
        // SAFETY: inside the mapping.
        fill(unsafe { p.add(off) }, PAGE, SEED_SPARSE, off as u64);
    }
    p
}

fn map_file() -> *mut u8 {
    let mut bytes = vec![0u8; FILE_PAGES * PAGE];
    for (i, c) in bytes.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&pattern_word(SEED_FILE, 8 * i as u64).to_ne_bytes());
    }
    std::fs::write(FILE_PATH, &bytes).expect("write seed file");
    let f = std::fs::File::open(FILE_PATH).expect("open seed file");
    use std::os::fd::AsRawFd;
    // SAFETY: a private mapping of a file we just wrote.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FILE_PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    let p = p as *mut u8;
    // Dirty pages 0 and 3; the others stay clean file pages.
    for dirty in [0, 3] {
        // SAFETY: inside the mapping.
        fill(
            unsafe { p.add(dirty * PAGE) },
            PAGE,
            SEED_DIRTY,
            (dirty * PAGE) as u64,
        );
    }
    // Read the clean pages so they are present in the seed too.
    for clean in [1, 2, 4, 5, 6, 7] {
        // SAFETY: inside the mapping.
        let _ = unsafe { std::ptr::read_volatile(p.add(clean * PAGE)) };
    }
    p
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn anon_huge_kib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const REG_PATTERN: [u64; 64] = {
    let mut a = [0u64; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = 0x5a5a_0000_0000_0000 | (i as u64 * 0x0101_0101);
        i += 1;
    }
    a
};
const GPR: [u64; 7] = [
    0x1212_1212_1212_1212,
    0x1313_1313_1313_1313,
    0x1414_1414_1414_1414,
    0x1515_1515_1515_1515,
    0x0808_0808_0808_0808,
    0x0909_0909_0909_0909,
    0x1010_1010_1010_1010,
];

/// `CaptureFn` that loads ymm0-15, r8-r10 and r12-r15 with known values, makes the
/// raw `FORK_CAPTURE` syscall, and checks them afterwards (in the seed and, resumed,
/// in every child).
///
/// # Safety
///
/// As `mitosis::fork::ioctl_capture`.
unsafe fn capture_with_registers(fd: i32, args: *mut abi::ForkCaptureArgs) -> i64 {
    if !std::arch::is_x86_feature_detected!("avx") {
        REGISTER_MISMATCH.store(4, Ordering::SeqCst);
        // SAFETY: per the contract.
        return unsafe { mitosis::fork::ioctl_capture(fd, args) };
    }
    // SAFETY: AVX is present.
    unsafe { capture_avx(fd, args) }
}

#[target_feature(enable = "avx")]
unsafe fn capture_avx(fd: i32, args: *mut abi::ForkCaptureArgs) -> i64 {
    let mut out = [0u64; 64];
    let ret: i64;
    let (mut r12, mut r13, mut r14, mut r15) = (GPR[0], GPR[1], GPR[2], GPR[3]);
    let (mut r8, mut r9, mut r10) = (GPR[4], GPR[5], GPR[6]);
    // SAFETY: a raw ioctl syscall; every register it or we change is declared.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]", "vmovdqu ymm2, [{p} + 64]",
            "vmovdqu ymm3, [{p} + 96]", "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]",
            "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]", "vmovdqu ymm8, [{p} + 256]",
            "vmovdqu ymm9, [{p} + 288]", "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
            "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]", "vmovdqu ymm14, [{p} + 448]",
            "vmovdqu ymm15, [{p} + 480]",
            "syscall",
            "vmovdqu [{o}], ymm0", "vmovdqu [{o} + 32], ymm1", "vmovdqu [{o} + 64], ymm2",
            "vmovdqu [{o} + 96], ymm3", "vmovdqu [{o} + 128], ymm4", "vmovdqu [{o} + 160], ymm5",
            "vmovdqu [{o} + 192], ymm6", "vmovdqu [{o} + 224], ymm7", "vmovdqu [{o} + 256], ymm8",
            "vmovdqu [{o} + 288], ymm9", "vmovdqu [{o} + 320], ymm10", "vmovdqu [{o} + 352], ymm11",
            "vmovdqu [{o} + 384], ymm12", "vmovdqu [{o} + 416], ymm13", "vmovdqu [{o} + 448], ymm14",
            "vmovdqu [{o} + 480], ymm15",
            p = in(reg) REG_PATTERN.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            inlateout("rax") libc::SYS_ioctl => ret,
            in("rdi") fd as i64,
            in("rsi") abi::IOC_FORK_CAPTURE as u64,
            in("rdx") args,
            out("rcx") _, out("r11") _,
            inout("r8") r8, inout("r9") r9, inout("r10") r10,
            inout("r12") r12, inout("r13") r13, inout("r14") r14, inout("r15") r15,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
    let g = [r12, r13, r14, r15, r8, r9, r10];
    let mut bad = 0;
    if out != REG_PATTERN {
        bad |= 1;
    }
    if g != GPR {
        bad |= 2;
    }
    REGISTER_MISMATCH.store(bad, Ordering::SeqCst);
    ret
}

pub fn role_of_this_host() -> String {
    match local_host().map(|h| h.octets()[3]) {
        Ok(1) => "a".into(),
        Ok(2) => "b".into(),
        Ok(n) => format!("guest{n}"),
        Err(_) => "unknown".into(),
    }
}

/// Depth-first recursion using about `depth` KiB of stack.
#[inline(never)]
fn recurse(depth: u32) -> u64 {
    let frame = [depth as u64; 128];
    if depth == 0 {
        return 1;
    }
    let r = recurse(depth - 1);
    std::hint::black_box(&frame);
    r + frame[depth as usize % 128] % 2
}

/// What a child verifies; `stack` is the prepare caller's stack array.
fn verify_child(r: &mut Report, w: &World, stack: &[u64; STACK_WORDS], resumed: &mitosis::Resumed) {
    r.check(
        "rf-child-resumed",
        true,
        "",
        &[
            ("resume_ms", resumed.resume.as_secs_f64() * 1e3),
            ("eager_pages", resumed.eager_pages as f64),
        ],
    );
    let regs = REGISTER_MISMATCH.load(Ordering::SeqCst);
    r.check(
        "rf-child-avx-registers",
        regs & 5 == 0,
        format!("mismatch bits {regs}"),
        &[],
    );
    r.check(
        "rf-child-general-registers",
        regs & 2 == 0,
        format!("mismatch bits {regs}"),
        &[],
    );
    let t = Instant::now();
    let heap_bad = w
        .heap
        .iter()
        .enumerate()
        .position(|(i, v)| *v != pattern_word(SEED_HEAP, 8 * i as u64));
    let heap_ms = t.elapsed().as_secs_f64() * 1e3;
    r.check(
        "rf-child-heap",
        heap_bad.is_none(),
        format!("first bad word {heap_bad:?} of {}", w.heap.len()),
        &[
            ("heap_mib", (w.heap.len() * 8) as f64 / (1 << 20) as f64),
            ("touch_all_ms", heap_ms),
        ],
    );
    let map_ok = w.map.len() == 10_000
        && w.map
            .iter()
            .all(|(k, v)| *v == format!("value-{}", pattern_word(SEED_MAP, *k)));
    r.check("rf-child-btreemap", map_ok, "10000 entries", &[]);
    let stack_bad = stack
        .iter()
        .enumerate()
        .position(|(i, v)| *v != pattern_word(SEED_STACK, i as u64));
    r.check(
        "rf-child-stack",
        stack_bad.is_none(),
        format!("{stack_bad:?}"),
        &[],
    );
    let depth = recurse(6000);
    r.check(
        "rf-child-deep-recursion",
        depth >= 1,
        "6000 frames of 1 KiB below the seed's stack",
        &[],
    );
    let sparse_bad = (0..SPARSE_TOUCHED).find(|&i| {
        let off = sparse_offset(i);
        // SAFETY: inside the sparse mapping.
        first_bad(unsafe { w.sparse.add(off) }, PAGE, SEED_SPARSE, off as u64).is_some()
    });
    // A never-touched page reads as zeros.
    // SAFETY: inside the sparse mapping.
    let hole =
        unsafe { std::ptr::read_volatile(w.sparse.add(SPARSE_BYTES / 2 + 7 * PAGE) as *const u64) };
    r.check(
        "rf-child-sparse-1g",
        sparse_bad.is_none() && hole == 0,
        format!("bad touched page {sparse_bad:?}, hole word {hole:#x}"),
        &[],
    );
    let thp_bad = first_bad(w.thp, THP_BYTES, SEED_THP, 0);
    r.check(
        "rf-child-thp",
        thp_bad.is_none(),
        format!("seed THP-backed: {}, first bad {thp_bad:?}", w.thp_backed),
        &[("seed_thp_backed", w.thp_backed as u8 as f64)],
    );
    let ro_bad = first_bad(w.ro, SMALL_PAGES * PAGE, SEED_RO, 0);
    r.check(
        "rf-child-readonly",
        ro_bad.is_none(),
        format!("{ro_bad:?}"),
        &[],
    );
    // SAFETY: making our own PROT_NONE region readable.
    let mp = unsafe { libc::mprotect(w.none as *mut _, SMALL_PAGES * PAGE, libc::PROT_READ) };
    let none_bad = first_bad(w.none, SMALL_PAGES * PAGE, SEED_NONE, 0);
    r.check(
        "rf-child-prot-none",
        mp == 0 && none_bad.is_none(),
        format!("mprotect {mp}, {none_bad:?}"),
        &[],
    );
    let file_ok = (0..FILE_PAGES).all(|pg| {
        let seed = if pg == 0 || pg == 3 {
            SEED_DIRTY
        } else {
            SEED_FILE
        };
        // SAFETY: inside the file mapping.
        first_bad(
            unsafe { w.file.add(pg * PAGE) },
            PAGE,
            seed,
            (pg * PAGE) as u64,
        )
        .is_none()
    });
    r.check(
        "rf-child-private-file",
        file_ok,
        "2 dirty + 6 clean pages",
        &[],
    );
    // The documented difference from fork(): MADV_DONTNEED on a written page brings
    // back the snapshot's content (an anonymous mapping would read zeros).
    let off = sparse_offset(1);
    // SAFETY: a touched page of the sparse mapping, written then discarded.
    let dontneed = unsafe {
        let p = w.sparse.add(off);
        std::ptr::write_volatile(p as *mut u64, 0xdead_beef);
        libc::madvise(p as *mut _, PAGE, libc::MADV_DONTNEED)
    };
    // SAFETY: as above.
    let back = first_bad(unsafe { w.sparse.add(off) }, PAGE, SEED_SPARSE, off as u64);
    r.check(
        "rf-child-madv-dontneed-reads-snapshot",
        dontneed == 0 && back.is_none(),
        format!("madvise {dontneed}, first word differing from the snapshot {back:?}"),
        &[],
    );
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes; umask is read and put back.
    let umask = unsafe {
        libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr());
        let u = libc::umask(0);
        libc::umask(u);
        u
    };
    let comm = String::from_utf8_lossy(&comm[..comm.iter().position(|&b| b == 0).unwrap_or(16)])
        .into_owned();
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // The stack is anonymous memory in the child: the kernel reads the command line
    // from it (`ps` shows the seed's).
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    r.check(
        "rf-child-proc-cmdline",
        cmdline.contains("mitosis-test"),
        format!("{:?}", cmdline.trim()),
        &[],
    );
    r.check(
        "rf-child-inherits-process-attributes",
        comm == "mitosis-test" && umask == SEED_UMASK && cwd == "/tmp",
        format!(
            "comm {comm:?}, umask {umask:o}, cwd {cwd:?} (want the seed's: mitosis-test, 27, /tmp)"
        ),
        &[],
    );
    // Growing a region (moved, since its neighbour is in the way): the old part keeps
    // the snapshot's data, the new part reads zeros, as after fork().
    let len = SMALL_PAGES * PAGE;
    // SAFETY: remapping our own first half into a larger, movable mapping.
    let grown =
        unsafe { libc::mremap(w.grow as *mut _, len, 2 * len, libc::MREMAP_MAYMOVE) as *mut u8 };
    let grow_ok = grown as *mut libc::c_void != libc::MAP_FAILED && {
        let old_part = first_bad(grown, len, SEED_GROW, 0);
        // SAFETY: the grown part of the new mapping.
        let new_part = unsafe { std::slice::from_raw_parts(grown.add(len), len) };
        let ok = old_part.is_none() && new_part.iter().all(|&b| b == 0);
        // Put it back where it was (a later two-hop prepare snapshots this world).
        // SAFETY: moving our own mapping back to the range it left free.
        let back = unsafe {
            libc::mremap(
                grown as *mut _,
                2 * len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                w.grow as *mut libc::c_void,
            )
        };
        ok && back == w.grow as *mut libc::c_void
    };
    r.check(
        "rf-child-mremap-growth-reads-zeros",
        grow_ok,
        format!("moved to {grown:p}"),
        &[],
    );
    // Shared memory is copied at prepare: the parent's later writes are not seen.
    let shared_bad = first_bad(w.shared, SMALL_PAGES * PAGE, SEED_SHARED, 0);
    let memfd_bad = first_bad(w.memfd, SMALL_PAGES * PAGE, SEED_MEMFD, 0);
    r.check(
        "rf-child-shared-memory-frozen",
        shared_bad.is_none() && memfd_bad.is_none(),
        format!("MAP_SHARED anonymous: first bad {shared_bad:?}; memfd: first bad {memfd_bad:?}"),
        &[],
    );
    let swap_bad = first_bad(w.swapped, SWAP_PAGES * PAGE, SEED_SWAP, 0);
    r.check(
        "rf-child-swapped-out-pages",
        w.swapped_kib > 0 && swap_bad.is_none(),
        format!(
            "seed had {} KiB in swap; first bad {swap_bad:?}",
            w.swapped_kib
        ),
        &[("seed_swapped_kib", w.swapped_kib as f64)],
    );
    let tls = TLS_VALUE.with(|v| v.get());
    r.check("rf-child-tls", tls == TLS_MAGIC, format!("{tls:#x}"), &[]);
    // SAFETY: raising a signal whose handler the seed installed.
    unsafe { libc::raise(libc::SIGUSR1) };
    let seen = SIGNALS_SEEN.load(Ordering::SeqCst);
    r.check(
        "rf-child-signal-handler",
        seen == 1,
        format!("handler ran {seen} times"),
        &[],
    );
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut rt = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writable timespecs; served by the vDSO.
    let ok = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) == 0
            && libc::clock_gettime(libc::CLOCK_REALTIME, &mut rt) == 0
    };
    r.check(
        "rf-child-vdso-clock",
        ok && ts.tv_sec > 0 && rt.tv_sec > 0,
        format!("mono {}s", ts.tv_sec),
        &[],
    );
    // Heap growth: brk and many small allocations.
    // SAFETY: growing our own break.
    let brk_ok = unsafe {
        let old = libc::sbrk(0) as *mut u8;
        let grown = libc::sbrk(8 << 20);
        if grown == usize::MAX as *mut libc::c_void {
            false
        } else {
            fill(old, 8 << 20, 99, 0);
            first_bad(old, 8 << 20, 99, 0).is_none()
        }
    };
    let small: Vec<Box<[u64; 8]>> = (0..50_000u64).map(|i| Box::new([i; 8])).collect();
    let small_ok = small.iter().enumerate().all(|(i, b)| b[7] == i as u64);
    r.check(
        "rf-child-brk-malloc-growth",
        brk_ok && small_ok,
        format!("sbrk 8 MiB {brk_ok}, 50000 mallocs {small_ok}"),
        &[],
    );
}

/// A child's own writes, checked to stay private.
fn child_writes(r: &mut Report, w: &mut World, id: u64) {
    w.heap[1] = id;
    w.map.insert(1, format!("child-{id}"));
    std::thread::sleep(Duration::from_millis(300));
    let ok = w.heap[1] == id && w.map.get(&1).map(String::as_str) == Some(&format!("child-{id}"));
    r.check(
        "rf-child-writes-private",
        ok,
        format!("heap[1]={:#x}", w.heap[1]),
        &[],
    );
}

/// Reads one line of the child's task from the launcher's stdin.
fn read_line() -> String {
    let mut s = String::new();
    let _ = std::io::stdin().lock().read_line(&mut s);
    s.trim().to_string()
}

/// Runs in every resumed child; never returns.
fn child_main(
    w: &mut World,
    stack: &[u64; STACK_WORDS],
    resumed: mitosis::Resumed,
    m: &Mitosis,
) -> ! {
    let role = role_of_this_host();
    let task = read_line();
    let mut r = Report::new(&role);
    let mut words = task.split_whitespace();
    let code = match words.next() {
        Some("exit") => std::process::exit(0),
        Some("demo") => {
            crate::bench::demo_child(&mut r, w, &resumed);
            0
        }
        Some("bench") => {
            crate::bench::bench_child(&mut r, w, &resumed, words.next().unwrap_or("?"));
            0
        }
        Some("launcher-state") => {
            // SAFETY: plain reads of this process's own signal and timer state.
            let (pending, timer) = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigpending(&mut set);
                let mut t: libc::itimerval = std::mem::zeroed();
                libc::getitimer(libc::ITIMER_REAL, &mut t);
                (libc::sigismember(&set, libc::SIGUSR2), t.it_value.tv_sec)
            };
            let ok = pending == 0 && timer == 0;
            r.check(
                "rf-child-launcher-state-cleared",
                ok,
                format!("SIGUSR2 pending {pending}, ITIMER_REAL {timer} s left"),
                &[],
            );
            i32::from(!ok)
        }
        Some("latency") => {
            crate::bench::latency_child(&mut r, w);
            0
        }
        Some("verify") => {
            verify_child(&mut r, w, stack, &resumed);
            let id = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            child_writes(&mut r, w, id);
            0
        }
        Some("hop") => {
            verify_child(&mut r, w, stack, &resumed);
            w.heap[2] = 0x4040;
            match m.fork_prepare() {
                Ok(Forked::Parent(p)) => {
                    println!("HOP {}", p.handle);
                    let _ = std::io::stdout().flush();
                    let _ = read_line();
                    let _ = m.fork_release(&p.handle, false);
                    0
                }
                Ok(Forked::Child(res)) => {
                    // The grandchild: the first hop's write must be there.
                    let mut g = Report::new(&role_of_this_host());
                    let _ = read_line();
                    g.check(
                        "rf-grandchild-resumed",
                        true,
                        "",
                        &[("resume_ms", res.resume.as_secs_f64() * 1e3)],
                    );
                    let hop_ok = w.heap[2] == 0x4040
                        && w.heap[3] == pattern_word(SEED_HEAP, 24)
                        && w.heap.len() > 1000
                        && w.heap[1000] == pattern_word(SEED_HEAP, 8000);
                    g.check(
                        "rf-grandchild-memory",
                        hop_ok,
                        format!("heap[2]={:#x}", w.heap[2]),
                        &[],
                    );
                    let tls = TLS_VALUE.with(|v| v.get());
                    g.check(
                        "rf-grandchild-tls",
                        tls == TLS_MAGIC,
                        format!("{tls:#x}"),
                        &[],
                    );
                    g.summary();
                    std::process::exit(if g.failed == 0 { 0 } else { 1 })
                }
                Err(e) => {
                    r.check("rf-hop-prepare", false, e.to_string(), &[]);
                    1
                }
            }
        }
        Some("wait-go") => {
            println!("READY");
            let _ = std::io::stdout().flush();
            let _ = read_line();
            verify_child(&mut r, w, stack, &resumed);
            0
        }
        Some("lazy") => {
            // Touch almost nothing, wait, then touch everything: the parent is gone by
            // then, so this child must die of SIGBUS.
            println!("READY");
            let _ = std::io::stdout().flush();
            let _ = read_line();
            let sum: u64 = w.heap.iter().fold(0, |a, b| a ^ b);
            println!("LAZY-SURVIVED {sum}");
            1
        }
        other => {
            r.check(
                "rf-child-task",
                false,
                format!("unknown task {other:?}"),
                &[],
            );
            1
        }
    };
    r.summary();
    let _ = std::io::stdout().flush();
    std::process::exit(if code == 0 && r.failed == 0 { code } else { 1 })
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
    let res = m.fork_prepare_with(capture);
    std::hint::black_box(&mut stack);
    match res {
        Ok(Forked::Child(resumed)) => child_main(&mut w, &stack, resumed, &m),
        Ok(Forked::Parent(p)) => Some((m, w, p)),
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

fn verify_parent(r: &mut Report, w: &World) {
    let ok = w.heap.iter().enumerate().all(|(i, v)| {
        let orig = pattern_word(SEED_HEAP, 8 * i as u64);
        if i % 512 == 0 {
            *v == !orig
        } else {
            *v == orig
        }
    }) && w.map.get(&1).map(String::as_str) != Some("child-1");
    r.check(
        "rf-parent-unaffected-by-children",
        ok,
        "heap and map as the parent left them",
        &[],
    );
}

/// Guest A.
pub fn parent(r: &mut Report, port: u16, n_local: usize, heap_mib: usize) -> ExitCode {
    let t = Instant::now();
    let Some((m, mut w, p)) = prepare_world(r, heap_mib, true) else {
        return ExitCode::FAILURE;
    };
    r.check(
        "rf-prepare",
        true,
        p.handle.to_string(),
        &[
            ("prepare_ms", p.total.as_secs_f64() * 1e3),
            ("capture_ms", p.capture.as_secs_f64() * 1e3),
            ("vmas", p.n_vmas as f64),
            ("present_pages", p.present_pages as f64),
            ("hole_pages", p.hole_pages as f64),
            ("desc_bytes", p.desc_bytes as f64),
            ("touched_mib", w.touched_bytes() as f64 / (1 << 20) as f64),
            (
                "world_build_ms",
                (t.elapsed() - p.total).as_secs_f64() * 1e3,
            ),
        ],
    );
    w.scribble();
    // A second snapshot, never released: B's lazy child uses it when A is gone.
    let lazy = match m.fork_prepare() {
        Ok(Forked::Parent(p2)) => p2.handle,
        // Children of this snapshot only run the "lazy" task (no stack check).
        Ok(Forked::Child(res)) => child_main(&mut w, &[0; STACK_WORDS], res, &m),
        Err(e) => {
            r.check("rf-prepare-second", false, e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    // A third one, released with FORCE while a child waits.
    let forced = match m.fork_prepare() {
        Ok(Forked::Parent(p3)) => p3.handle,
        Ok(Forked::Child(res)) => child_main(&mut w, &[0; STACK_WORDS], res, &m),
        Err(e) => {
            r.check("rf-prepare-third", false, e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            r.check("rf-listen", false, e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    println!("fork-parent: waiting for guest B on port {port}");
    let Ok((stream, _)) = listener.accept() else {
        return ExitCode::FAILURE;
    };
    let mut out = stream.try_clone().expect("clone stream");
    let _ = writeln!(out, "handle {}", p.handle);
    let _ = writeln!(out, "lazy {lazy}");
    let _ = writeln!(out, "forced {forced}");
    let _ = writeln!(out, "sparse {}", w.sparse as usize);
    // A dynamically linked program prepared through the C ABI (shared-library text
    // and data); its children run on B.
    let dyn_handle = Command::new("fork-dyn")
        .stdout(Stdio::piped())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("HANDLE ").map(String::from))
        });
    r.check(
        "rf-dyn-prepare",
        dyn_handle.is_some(),
        format!("{dyn_handle:?}"),
        &[],
    );
    let _ = writeln!(out, "dyn {}", dyn_handle.unwrap_or_default());
    // Local children, concurrently with B's.
    let t = Instant::now();
    let kids: Vec<_> = (0..n_local)
        .filter_map(|i| {
            launch(&p.handle, false)
                .ok()
                .map(|c| (c, format!("verify {}", 100 + i)))
        })
        .collect();
    let launched = kids.len();
    let ok = run_children(kids)
        .iter()
        .filter(|(st, _)| status_ok(st))
        .count();
    r.check(
        "rf-local-children",
        launched == n_local && ok == n_local,
        format!("{ok}/{n_local} children on A verified"),
        &[
            ("children", n_local as f64),
            ("wall_ms", t.elapsed().as_secs_f64() * 1e3),
        ],
    );
    let mut lines = BufReader::new(stream).lines();
    while let Some(Ok(line)) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["hop", h] => {
                let res = h.parse::<SnapshotHandle>().and_then(|h| launch(&h, false));
                let good = match res {
                    Ok(c) => status_ok(&run_child(c, "go").0),
                    Err(_) => false,
                };
                r.check("rf-two-hop-on-a", good, format!("grandchild of {h}"), &[]);
                let _ = writeln!(out, "hop-done {}", good as u8);
            }
            ["release"] => {
                let rel = m.fork_release(&p.handle, false);
                r.check("rf-release", rel.is_ok(), format!("{rel:?}"), &[]);
                let again = m
                    .fork_release(&p.handle, false)
                    .err()
                    .and_then(|e| e.raw_os_error());
                r.check(
                    "rf-release-twice-enoent",
                    again == Some(libc::ENOENT),
                    format!("{again:?}"),
                    &[],
                );
                let _ = writeln!(out, "released");
            }
            ["force-release"] => {
                let rel = m.fork_release(&forced, true);
                r.check("rf-force-release", rel.is_ok(), format!("{rel:?}"), &[]);
                let _ = writeln!(out, "force-released");
            }
            ["bye"] => break,
            _ => println!("fork-parent: unexpected {line:?}"),
        }
    }
    verify_parent(r, &w);
    drop(m);
    ExitCode::SUCCESS
}

/// Launches a child with the "lazy" task and waits for its READY line.
fn start_lazy(h: &SnapshotHandle) -> Option<Child> {
    let mut c = launch(h, false).ok()?;
    if let Some(i) = c.stdin.as_mut() {
        let _ = writeln!(i, "lazy");
    }
    let mut line = String::new();
    if let Some(o) = c.stdout.as_mut() {
        let mut b = [0u8; 1];
        while let Ok(1) = o.read(&mut b) {
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0] as char);
        }
    }
    (line == "READY").then_some(c)
}

/// Tells a lazy child to touch everything; returns the signal that ended it.
fn finish_lazy(mut c: Child) -> Option<i32> {
    if let Some(i) = c.stdin.as_mut() {
        let _ = writeln!(i, "go");
    }
    let _ = echo_all(&mut c);
    use std::os::unix::process::ExitStatusExt;
    c.wait().ok().and_then(|st| st.signal())
}

/// Guest B.
pub fn remote(r: &mut Report, peer: Ipv4Addr, port: u16, n_children: usize) -> ExitCode {
    let addr = std::net::SocketAddr::from((peer, port));
    let stream = (0..120).find_map(|_| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .ok()
            .or_else(|| {
                std::thread::sleep(Duration::from_millis(250));
                None
            })
    });
    let Some(stream) = stream else {
        r.check("rf-connect-parent", false, "no fork-parent on A", &[]);
        return ExitCode::FAILURE;
    };
    let mut out = stream.try_clone().expect("clone");
    let mut lines = BufReader::new(stream).lines();
    let mut next = || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let h: Option<SnapshotHandle> = next().strip_prefix("handle ").and_then(|s| s.parse().ok());
    let lazy: Option<SnapshotHandle> = next().strip_prefix("lazy ").and_then(|s| s.parse().ok());
    let forced: Option<SnapshotHandle> =
        next().strip_prefix("forced ").and_then(|s| s.parse().ok());
    let sparse: Option<u64> = next().strip_prefix("sparse ").and_then(|s| s.parse().ok());
    let dyn_h: Option<SnapshotHandle> = next().strip_prefix("dyn ").and_then(|s| s.parse().ok());
    let (Some(h), Some(lazy)) = (h, lazy) else {
        r.check("rf-handle", false, "no handle from A", &[]);
        return ExitCode::FAILURE;
    };
    // Children of the dynamically linked C program.
    let dyn_ok = dyn_h
        .and_then(|d| launch(&d, false).ok())
        .map(|c| run_child(c, &role_of_this_host()).0.success());
    r.check(
        "rf-dyn-child",
        dyn_ok == Some(true),
        format!("{dyn_ok:?}"),
        &[],
    );
    let m = Mitosis::open().expect("open");
    // Wrong secret: the launcher stays itself, with a distinct errno.
    let mut wrong = h;
    wrong.secret[0] ^= 1;
    let e = m.fork_resume(&wrong, ResumeOptions::default());
    r.check(
        "rf-wrong-secret-eacces",
        e.raw_os_error() == Some(libc::EACCES),
        e.to_string(),
        &[],
    );
    // A launcher whose vDSO sits inside the seed's memory (placed there on purpose):
    // the library moves it out of the way and the resume succeeds.
    let collide = sparse.and_then(|addr| {
        let c = Command::new("/proc/self/exe")
            .args([
                "launch-with-vdso-at",
                &(addr + (64 << 20)).to_string(),
                &h.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        Some(run_child(c, "verify 300").0.success())
    });
    r.check(
        "rf-vdso-collision-resolved",
        collide == Some(true),
        format!("{collide:?}"),
        &[],
    );
    // A launcher with a pending signal (SIGUSR2, fatal by default: the child would die
    // of it) and an armed interval timer: a forked child starts with neither.
    let dirty = Command::new("/proc/self/exe")
        .args(["launch-dirty", &h.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map(|c| run_child(c, "launcher-state"));
    r.check(
        "rf-child-drops-launcher-signals-and-timers",
        matches!(&dirty, Ok((st, _)) if st.success()),
        format!("{:?}", dirty.as_ref().map(|(st, _)| st)),
        &[],
    );
    // A multi-threaded caller can neither resume nor be captured (EBUSY, and it lives).
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        let _ = stop_rx.recv();
    });
    let e = m.fork_resume(&h, ResumeOptions::default());
    r.check(
        "rf-multithreaded-resume-ebusy",
        e.raw_os_error() == Some(libc::EBUSY),
        e.to_string(),
        &[],
    );
    let mut cap = abi::ForkCaptureArgs {
        hdr: abi::Header::for_struct::<abi::ForkCaptureArgs>(),
        ..Default::default()
    };
    // SAFETY: a valid argument struct; the module refuses before capturing anything.
    let rc = unsafe {
        m.raw_ioctl(
            abi::IOC_FORK_CAPTURE,
            &mut cap as *mut _ as *mut libc::c_void,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    r.check(
        "rf-multithreaded-capture-ebusy",
        rc < 0 && errno == Some(libc::EBUSY),
        format!("rc {rc} errno {errno:?}"),
        &[],
    );
    let _ = stop_tx.send(());
    let _ = helper.join();
    let mut unknown = h;
    unknown.id += 1000;
    let e = m.fork_resume(&unknown, ResumeOptions::default());
    r.check(
        "rf-unknown-id-enoent",
        e.raw_os_error() == Some(libc::ENOENT),
        e.to_string(),
        &[],
    );

    // The lazy children of the second and third snapshots start now and wait.
    let lazy_child = start_lazy(&lazy);
    r.check("rf-lazy-child-ready", lazy_child.is_some(), "", &[]);
    let forced_child = forced.and_then(|f| start_lazy(&f));
    r.check("rf-forced-child-ready", forced_child.is_some(), "", &[]);

    // Concurrent children on B (A runs its own at the same time), one eager.
    let t = Instant::now();
    let kids: Vec<_> = (0..n_children)
        .filter_map(|i| {
            launch(&h, i == 0)
                .ok()
                .map(|c| (c, format!("verify {}", 200 + i)))
        })
        .collect();
    let launched = kids.len();
    let mut ok = 0;
    for (i, (st, lines)) in run_children(kids).into_iter().enumerate() {
        if status_ok(&st) {
            ok += 1;
        }
        if i == 0 {
            let eager = lines
                .iter()
                .any(|l| l.contains("rf-child-resumed") && !l.contains("\"eager_pages\":0.000"));
            r.check(
                "rf-eager-child",
                status_ok(&st) && eager,
                "child resumed with --eager fetched pages up front",
                &[],
            );
        }
    }
    r.check(
        "rf-remote-children",
        launched == n_children && ok == n_children,
        format!("{ok}/{n_children} children on B verified"),
        &[
            ("children", n_children as f64),
            ("wall_ms", t.elapsed().as_secs_f64() * 1e3),
        ],
    );

    // Two hops: B's child prepares, A resumes a grandchild.
    let hop_ok = match launch(&h, false) {
        Ok(mut c) => {
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "hop");
            }
            let mut reader = BufReader::new(c.stdout.take().expect("stdout"));
            let mut h3 = None;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                print!("{line}");
                if let Some(x) = line.trim().strip_prefix("HOP ") {
                    h3 = Some(x.to_string());
                    break;
                }
                line.clear();
            }
            let done = match h3 {
                Some(h3) => {
                    let _ = writeln!(out, "hop {h3}");
                    next() == "hop-done 1"
                }
                None => false,
            };
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "done");
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            print!("{rest}");
            let st = c.wait().map(|s| s.success()).unwrap_or(false);
            done && st
        }
        Err(_) => false,
    };
    r.check("rf-two-hop", hop_ok, "A -> B -> A", &[]);

    // Release while a child runs: it keeps working; new resumes get ENOENT.
    let release_ok = match launch(&h, false) {
        Ok(mut c) => {
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "wait-go");
            }
            let mut reader = BufReader::new(c.stdout.take().expect("stdout"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let rm = Command::new("rmmod")
                .arg("mitosis")
                .status()
                .map(|s| s.success())
                .unwrap_or(true);
            r.check(
                "rf-rmmod-refused-with-child",
                !rm,
                "rmmod while a child maps a snapshot",
                &[],
            );
            let _ = writeln!(out, "release");
            let released = next() == "released";
            let e = m.fork_resume(&h, ResumeOptions::default());
            r.check(
                "rf-released-enoent",
                e.raw_os_error() == Some(libc::ENOENT),
                e.to_string(),
                &[],
            );
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "go");
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            print!("{rest}");
            released && c.wait().map(|s| s.success()).unwrap_or(false)
        }
        Err(_) => false,
    };
    r.check(
        "rf-release-while-running",
        release_ok,
        "child verified everything after release",
        &[],
    );

    // Forced release: the waiting child's next remote fault is a SIGBUS.
    let _ = writeln!(out, "force-release");
    let force_ok = next() == "force-released";
    let sig = forced_child.and_then(finish_lazy);
    r.check(
        "rf-sigbus-after-forced-release",
        force_ok && sig == Some(libc::SIGBUS),
        format!("child ended with signal {sig:?}"),
        &[],
    );

    // The parent guest goes away while the lazy child still has unfetched pages.
    let _ = writeln!(out, "bye");
    drop(out);
    let gone = (0..120).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        !Command::new("ping")
            .args(["-c", "1", "-W", "1", &peer.to_string()])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    r.check("rf-parent-guest-gone", gone, "A stopped answering", &[]);
    if let Some(mut c) = lazy_child {
        if let Some(i) = c.stdin.as_mut() {
            let _ = writeln!(i, "go");
        }
        let _ = echo_all(&mut c);
        let st = c.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        let sig = st.signal();
        r.check(
            "rf-sigbus-when-parent-gone",
            sig == Some(libc::SIGBUS),
            format!("child ended with {st:?}"),
            &[],
        );
    }
    let healthy = Mitosis::open().and_then(|m| m.status()).is_ok();
    r.check("rf-host-healthy-after-sigbus", healthy, "", &[]);
    ExitCode::SUCCESS
}

/// `launch-dirty HANDLE`: a launcher with SIGUSR2 pending (blocked) and ITIMER_REAL
/// armed, then resumes; the child must have neither.
pub fn launch_dirty(handle: &str) -> ExitCode {
    let Ok(h) = handle.parse::<SnapshotHandle>() else {
        return ExitCode::from(2);
    };
    // SAFETY: plain changes of this process's own signal and timer state.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGUSR2);
        let mut t: libc::itimerval = std::mem::zeroed();
        t.it_value.tv_sec = 300;
        libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut());
    }
    let e = match Mitosis::open() {
        Ok(m) => m.fork_resume(&h, ResumeOptions::default()),
        Err(e) => e,
    };
    eprintln!("launch-dirty: {e}");
    ExitCode::FAILURE
}

/// `launch-with-vdso-at ADDR HANDLE`: moves this process's vvar+vDSO to ADDR (inside the
/// seed's memory), then resumes: the module refuses with EADDRINUSE and the library
/// must move the vDSO away and succeed.
pub fn launch_with_vdso_at(addr: u64, handle: &str) -> ExitCode {
    let Ok(h) = handle.parse::<SnapshotHandle>() else {
        return ExitCode::from(2);
    };
    let Some(own) = mitosis::fork::own_vdso() else {
        return ExitCode::from(3);
    };
    if !own.move_to(addr) {
        return ExitCode::from(4);
    }
    let e = match Mitosis::open() {
        Ok(m) => m.fork_resume(&h, ResumeOptions::default()),
        Err(e) => e,
    };
    // Still here: resume failed. (No clock reads: the vDSO may be elsewhere.)
    let msg = format!("launch-with-vdso-at: {e}\n");
    // SAFETY: writing a buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len()) };
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_capture_syscall_reaches_ioctl_and_keeps_registers() {
        let mut a = abi::ForkCaptureArgs::default();
        // SAFETY: an invalid descriptor: the kernel answers EBADF without touching `a`.
        let r = unsafe { capture_with_registers(-1, &mut a) };
        assert_eq!(r, -(libc::EBADF as i64));
        assert_eq!(REGISTER_MISMATCH.load(Ordering::SeqCst) & 3, 0);
    }
}
