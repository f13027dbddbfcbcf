//! The seed world: every kind of memory and state a child must find again.

use super::*;

pub(super) fn map_anon(len: usize, extra: i32) -> *mut u8 {
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

pub(super) fn fill(p: *mut u8, len: usize, seed: u64, off: u64) {
    // SAFETY: `p..p+len` is a mapping we own; words are aligned.
    let words = unsafe { std::slice::from_raw_parts_mut(p as *mut u64, len / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern_word(seed, off + 8 * i as u64);
    }
}

/// Index of the first word differing from the pattern.
pub(super) fn first_bad(p: *const u8, len: usize, seed: u64, off: u64) -> Option<usize> {
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
    pub(super) sparse: *mut u8,
    pub(super) thp: *mut u8,
    pub(super) thp_backed: bool,
    pub(super) ro: *mut u8,
    pub(super) none: *mut u8,
    pub(super) file: *mut u8,
    /// A read-only private mapping of the same file, every page clean: recorded with
    /// the file's identity, but the parent rewrites the file's first pages after
    /// prepare, so children must get it from the snapshot (a child host without the
    /// file too).
    pub(super) file_clean: *mut u8,
    /// The seed's executable: its clean text mapping is the same file on every guest,
    /// so children map it from their own host's copy.
    pub(super) exe: String,
    /// Paged out to swap before prepare (`MADV_PAGEOUT`), and how much the seed's
    /// process had in swap then.
    pub(super) swapped: *mut u8,
    pub(super) swapped_kib: u64,
    /// `MAP_SHARED | MAP_ANONYMOUS` and memfd memory: the parent writes both after
    /// prepare (and the seed file on disk); children must see the snapshot's content.
    pub(super) shared: *mut u8,
    pub(super) memfd: *mut u8,
    /// `SMALL_PAGES` read-write pages directly followed by `SMALL_PAGES` read-only
    /// ones (two VMAs): a child growing the first with `mremap` must read zeros in
    /// the new part, never its neighbour's data.
    pub(super) grow: *mut u8,
    /// `MADV_WIPEONFORK` memory with data: a child must read zeros, as after `fork()`.
    pub(super) wipe: *mut u8,
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
                file_clean: none,
                exe: String::new(),
                swapped: none,
                swapped_kib: 0,
                shared: none,
                memfd: none,
                grow: none,
                wipe: none,
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
        let file_clean = map_file_clean();
        let exe = std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
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
        let wipe = map_anon(SMALL_PAGES * PAGE, 0);
        fill(wipe, SMALL_PAGES * PAGE, SEED_WIPE, 0);
        // SAFETY: advice on our own mapping.
        let advised =
            unsafe { libc::madvise(wipe as *mut _, SMALL_PAGES * PAGE, libc::MADV_WIPEONFORK) };
        assert_eq!(advised, 0, "MADV_WIPEONFORK");
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
            file_clean,
            exe,
            swapped,
            swapped_kib,
            shared,
            memfd,
            grow,
            wipe,
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
            + 2 * FILE_PAGES * PAGE
    }

    /// The parent's writes after prepare: children must not see them.
    pub(super) fn scribble(&mut self) {
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
            // The file behind the private mappings' clean pages changes too, its first
            // page included (so it is no longer the file the snapshot recorded).
            use std::os::unix::fs::FileExt;
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(FILE_PATH) {
                let _ = f.write_all_at(&vec![0xEEu8; 2 * PAGE], 0);
            }
        }
    }
}

/// Shared anonymous memory (shmem underneath).
pub(super) fn map_anon_shared(len: usize) -> *mut u8 {
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
pub(super) fn map_memfd(len: usize) -> *mut u8 {
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

pub(super) fn sparse_offset(i: usize) -> usize {
    i * (SPARSE_BYTES / SPARSE_TOUCHED) + i * PAGE
}

pub(super) fn map_sparse() -> *mut u8 {
    let p = map_anon(SPARSE_BYTES, libc::MAP_NORESERVE);
    for i in 0..SPARSE_TOUCHED {
        let off = sparse_offset(i);
        // SAFETY: inside the mapping.
        fill(unsafe { p.add(off) }, PAGE, SEED_SPARSE, off as u64);
    }
    p
}

/// A read-only private mapping of the seed file (written by [`map_file`]), every page
/// read so the seed has them all present and clean.
pub(super) fn map_file_clean() -> *mut u8 {
    let f = std::fs::File::open(FILE_PATH).expect("open seed file");
    use std::os::fd::AsRawFd;
    // SAFETY: a private read-only mapping of our own file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FILE_PAGES * PAGE,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    let p = p as *mut u8;
    for pg in 0..FILE_PAGES {
        // SAFETY: inside the mapping.
        let _ = unsafe { std::ptr::read_volatile(p.add(pg * PAGE)) };
    }
    p
}

pub(super) fn map_file() -> *mut u8 {
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
pub(super) fn status_kib(field: &str) -> u64 {
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

pub(super) fn anon_huge_kib() -> u64 {
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
