//! What a resumed child checks, one function per group of checks.

use super::*;

use super::registers::{mismatch, REGISTER_MISMATCH};

/// Depth-first recursion using about `depth` KiB of stack.
#[inline(never)]
pub(super) fn recurse(depth: u32) -> u64 {
    let frame = [depth as u64; 128];
    if depth == 0 {
        return 1;
    }
    let r = recurse(depth - 1);
    std::hint::black_box(&frame);
    r + frame[depth as usize % 128] % 2
}

/// Every check of a freshly resumed child, by group.
pub(super) fn verify_child(
    r: &mut Report,
    w: &World,
    stack: &[u64; STACK_WORDS],
    resumed: &mitosis::Resumed,
) {
    check_resume_and_registers(r, resumed);
    check_seed_memory(r, w, stack);
    check_memory_semantics(r, w);
    check_process_state(r);
}

/// The resume itself, and the registers loaded around the seed's capture syscall.
fn check_resume_and_registers(r: &mut Report, resumed: &mitosis::Resumed) {
    // Every resume opens the snapshot at its parent (one RPC), and its parts fit in it.
    let parts = resumed.connect + resumed.open + resumed.fetch;
    r.check(
        "rf-child-resumed",
        !resumed.open.is_zero()
            && parts <= resumed.in_module
            && resumed.in_module <= resumed.resume,
        format!(
            "connect {:?} + open {:?} + fetch {:?} of {:?} in the module, {:?} in all",
            resumed.connect, resumed.open, resumed.fetch, resumed.in_module, resumed.resume
        ),
        &[
            ("resume_ms", resumed.resume.as_secs_f64() * 1e3),
            ("connect_ms", resumed.connect.as_secs_f64() * 1e3),
            ("open_ms", resumed.open.as_secs_f64() * 1e3),
            ("fetch_ms", resumed.fetch.as_secs_f64() * 1e3),
            ("in_module_ms", resumed.in_module.as_secs_f64() * 1e3),
            ("eager_pages", resumed.eager_pages as f64),
            ("prefetched_pages", resumed.prefetched_pages as f64),
            ("round_trips", resumed.round_trips as f64),
        ],
    );
    let regs = REGISTER_MISMATCH.load(Ordering::SeqCst);
    r.check(
        "rf-child-avx-registers",
        regs & (mismatch::VECTOR | mismatch::NO_AVX) == 0,
        format!("mismatch bits {regs}"),
        &[],
    );
    r.check(
        "rf-child-general-registers",
        regs & mismatch::GENERAL == 0,
        format!("mismatch bits {regs}"),
        &[],
    );
}

/// Every kind of seed memory holds the seed's bytes, as at prepare.
fn check_seed_memory(r: &mut Report, w: &World, stack: &[u64; STACK_WORDS]) {
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
    check_file_mappings(r, w);
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
}

/// Clean file mappings: from this host's own file when it is the seed's file (the
/// executable, identical on every guest), from the snapshot when the file changed
/// after prepare or is missing here.
fn check_file_mappings(r: &mut Report, w: &World) {
    let clean_bad = first_bad(w.file_clean, FILE_PAGES * PAGE, SEED_FILE, 0);
    r.check(
        "rf-child-changed-file-from-snapshot",
        clean_bad.is_none(),
        format!(
            "read-only mapping of a file rewritten after prepare: first bad word {clean_bad:?}"
        ),
        &[],
    );
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let exe_text = maps.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 6 && f[1].contains('x') && f[5] == w.exe
    });
    let snapshot_vmas = maps
        .lines()
        .filter(|l| l.contains("/mitosis-snapshot"))
        .count();
    r.check(
        "rf-child-exe-mapped-from-local-file",
        !w.exe.is_empty() && exe_text,
        format!(
            "{} executable mapping in /proc/self/maps ({snapshot_vmas} snapshot VMAs)",
            w.exe
        ),
        &[("snapshot_vmas", snapshot_vmas as f64)],
    );
}

/// What the child does to its memory behaves as after `fork()` (or as documented).
fn check_memory_semantics(r: &mut Report, w: &World) {
    // SAFETY: the seed's `MADV_WIPEONFORK` mapping, readable.
    let wipe = unsafe { std::slice::from_raw_parts(w.wipe, SMALL_PAGES * PAGE) };
    let wipe_bad = wipe.iter().position(|&b| b != 0);
    r.check(
        "rf-child-wipeonfork-zero",
        wipe_bad.is_none(),
        format!("first non-zero byte {wipe_bad:?}"),
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

/// Process attributes and runtime state: errno, comm, umask, cwd, command line, TLS,
/// signal handlers, the vDSO.
fn check_process_state(r: &mut Report) {
    let errno = CHILD_ERRNO.load(Ordering::SeqCst);
    r.check(
        "rf-child-errno-kept",
        errno == SEED_ERRNO,
        format!("errno {errno} after prepare returned in the child (the seed's was {SEED_ERRNO})"),
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
}

/// A child's own writes, checked to stay private.
pub(super) fn child_writes(r: &mut Report, w: &mut World, id: u64) {
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
