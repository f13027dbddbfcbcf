// SPDX-License-Identifier: GPL-2.0

//! The snapshot descriptor: what a child fetches with one batch of RDMA READs (one
//! doorbell) to rebuild a seed's address space and execution state.
//!
//! Layout, little-endian: a 40-byte header, then `n_vmas` 48-byte VMA records, then
//! `n_runs` 24-byte page runs, then `n_files` 256-byte file records ([`FileRef`]), then
//! `state_len` bytes of task state (a [`TaskState`] followed by the FPU image, opaque
//! to the codec). Each VMA owns `n_runs` consecutive runs starting at
//! `first_run`; a run covers `n_pages` pages from VMA page `page` and is either present
//! (its data is pages `data_page..data_page + n_pages` of the snapshot's published page
//! set) or a hole (zero-filled locally). The checksum is CRC-32 (IEEE) of everything
//! after the header. [`Descriptor::parse`] checks every bound: a corrupt descriptor is an
//! error, never a panic or an out-of-range index.

use super::wire::HotPage;

pub const MAGIC: u32 = 0x4D53_4E50; // "MSNP"
pub const VERSION: u16 = 3;
pub const HEADER_LEN: usize = 40;
pub const VMA_LEN: usize = 48;
pub const RUN_LEN: usize = 24;
pub const FILE_LEN: usize = 256;
/// Longest path a [`FileRef`] holds (a longer one is not recorded: its VMA is always
/// served from the snapshot).
pub const FILE_PATH_MAX: usize = FILE_LEN - 40;
/// Most file records one descriptor holds.
pub const MAX_FILES: usize = 4096;
pub const PAGE: u64 = 4096;
/// Most pages a snapshot stores after its descriptor for a child to read with it
/// ([`Descriptor::lead_offsets`]).
pub const MAX_LEAD_PAGES: usize = 48;
/// Most region pages the lead pages take: packed (`super::packed`), with every page
/// stored as it is at worst.
pub const MAX_LEAD_REGION_PAGES: usize = super::packed::max_packed_pages(MAX_LEAD_PAGES);
/// A snapshot's status word: the first 8 bytes (little-endian) of its status page,
/// the last page of its region and the only one its parent writes after the publish.
/// Bit 0 is set while the snapshot is live (cleared at its release, before any key
/// is revoked); the bits above count the changes of what an open reply hands out
/// (a working-set record kept, a packed copy made), from 0 at the publish.
pub const fn status_word(live: bool, version: u64) -> u64 {
    (version << 1) | live as u64
}

/// Most VMAs after the instruction's whose pages are lead pages (an ELF object's
/// read-only data, relocated pointers, `.data` and `.bss`).
pub const LEAD_DATA_VMAS: usize = 4;

/// Why a descriptor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescError {
    Truncated,
    BadMagic,
    BadVersion,
    BadChecksum,
    /// Lengths or counts disagree with the buffer.
    BadLength,
    /// A VMA is empty, unaligned, unsorted or overlaps another.
    BadVma,
    /// A run is empty, outside its VMA, unsorted, overlapping, or its data is outside
    /// the page set.
    BadRun,
    /// Does not fit the output buffer.
    TooLarge,
    /// A file record's path is not an absolute, NUL-free path, its padding is not
    /// zero, or a VMA names a file it may not map.
    BadFile,
}

/// Bits of [`Vma::flags`].
pub mod vma_flags {
    /// `VM_READ`, `VM_WRITE`, `VM_EXEC` of the seed's VMA (its protection).
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const EXEC: u32 = 1 << 2;
    /// The seed's VMA was shared (`VM_SHARED`); children get a private copy.
    pub const SHARED: u32 = 1 << 3;
    /// Stack-like: grows down on faults below it.
    pub const GROWSDOWN: u32 = 1 << 4;
    /// File-backed in the seed (its content is captured whole).
    pub const FILE: u32 = 1 << 5;
    /// The vDSO and vvar special mappings: recorded, not mapped from the snapshot.
    pub const VDSO: u32 = 1 << 6;
    pub const VVAR: u32 = 1 << 7;
    /// Heap (`[start_brk, brk)`).
    pub const HEAP: u32 = 1 << 8;
    /// No swap/commit accounting (`MAP_NORESERVE`), as in the seed.
    pub const NORESERVE: u32 = 1 << 9;
    pub const ALL: u32 = (1 << 10) - 1;
}

/// One VMA of the seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// Reserved (0).
    pub prot: u32,
    /// [`vma_flags`].
    pub flags: u32,
    pub file_offset: u64,
    pub first_run: u32,
    pub n_runs: u32,
    /// 0, or 1 + the index of the [`FileRef`] whose file this VMA maps with every
    /// captured page clean (no private copy): a child host with the same file maps
    /// the VMA from it, at `file_offset`, instead of fetching its pages.
    pub file_id: u32,
    pub _pad: u32,
}

/// Run kinds.
pub const RUN_PRESENT: u32 = 1;
pub const RUN_HOLE: u32 = 2;

/// Consecutive pages of one VMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRun {
    /// First page, counted from the VMA start.
    pub page: u64,
    pub n_pages: u32,
    pub kind: u32,
    /// For present runs: first page in the published page set.
    pub data_page: u64,
}

/// The identity of a file a clean file-backed VMA of the seed maps, taken at capture.
/// A child host maps the VMA from its own file at `path` (resolved in the child's root,
/// opened with its credentials) only if that file is a regular file of the same size,
/// modification time (seconds) and first page ([`crate::mac::file_head_hash`]), the
/// checks CRIU makes (size, ELF build-id, which sits in the first page) plus the
/// modification time; otherwise the VMA's pages come from the snapshot as always.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub size: u64,
    pub mtime_sec: i64,
    pub path_len: u32,
    /// Reserved (0).
    pub _pad: u32,
    pub head_hash: [u8; 16],
    /// `path_len` bytes of path, then zeros.
    pub path: [u8; FILE_PATH_MAX],
}

impl Default for FileRef {
    fn default() -> Self {
        FileRef {
            size: 0,
            mtime_sec: 0,
            path_len: 0,
            _pad: 0,
            head_hash: [0; 16],
            path: [0; FILE_PATH_MAX],
        }
    }
}

impl FileRef {
    /// A record for `path` (absolute, NUL-free, at most [`FILE_PATH_MAX`] bytes).
    pub fn new(path: &[u8], size: u64, mtime_sec: i64, head_hash: [u8; 16]) -> Option<Self> {
        let mut f = FileRef {
            size,
            mtime_sec,
            path_len: path.len() as u32,
            head_hash,
            ..Default::default()
        };
        f.path.get_mut(..path.len())?.copy_from_slice(path);
        f.valid().then_some(f)
    }

    /// The path's bytes.
    pub fn path(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(FILE_PATH_MAX)]
    }

    fn valid(&self) -> bool {
        let n = self.path_len as usize;
        (1..=FILE_PATH_MAX).contains(&n)
            && self.path[0] == b'/'
            && !self.path[..n].contains(&0)
            && self.path[n..].iter().all(|&b| b == 0)
            && self._pad == 0
            && self.size <= i64::MAX as u64
    }
}

/// CRC-32 (IEEE, reflected), bitwise: descriptors are small and this stays `no_std`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Length of the encoding of `n_vmas` VMAs, `n_runs` runs, `n_files` file records and
/// `state_len` state bytes.
pub fn encoded_len(
    n_vmas: usize,
    n_runs: usize,
    n_files: usize,
    state_len: usize,
) -> Option<usize> {
    n_vmas
        .checked_mul(VMA_LEN)?
        .checked_add(n_runs.checked_mul(RUN_LEN)?)?
        .checked_add(n_files.checked_mul(FILE_LEN)?)?
        .checked_add(state_len)?
        .checked_add(HEADER_LEN)
}

/// Encodes a descriptor without file records; see [`encode_with_files`].
pub fn encode(
    vmas: &[Vma],
    runs: &[PageRun],
    data_pages: u64,
    state: &[u8],
    out: &mut [u8],
) -> Result<usize, DescError> {
    encode_with_files(vmas, runs, &[], data_pages, state, out)
}

/// Encodes a descriptor for a page set of `data_pages` pages; returns its length.
pub fn encode_with_files(
    vmas: &[Vma],
    runs: &[PageRun],
    files: &[FileRef],
    data_pages: u64,
    state: &[u8],
    out: &mut [u8],
) -> Result<usize, DescError> {
    let total =
        encoded_len(vmas.len(), runs.len(), files.len(), state.len()).ok_or(DescError::TooLarge)?;
    if total > out.len() || total > u32::MAX as usize || files.len() > MAX_FILES {
        return Err(DescError::TooLarge);
    }
    let out = &mut out[..total];
    let mut at = HEADER_LEN;
    for v in vmas {
        let fields = [v.start, v.end, v.file_offset];
        for f in fields {
            out[at..at + 8].copy_from_slice(&f.to_le_bytes());
            at += 8;
        }
        for f in [v.prot, v.flags, v.first_run, v.n_runs, v.file_id, v._pad] {
            out[at..at + 4].copy_from_slice(&f.to_le_bytes());
            at += 4;
        }
    }
    for r in runs {
        out[at..at + 8].copy_from_slice(&r.page.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&r.n_pages.to_le_bytes());
        out[at + 12..at + 16].copy_from_slice(&r.kind.to_le_bytes());
        out[at + 16..at + 24].copy_from_slice(&r.data_page.to_le_bytes());
        at += RUN_LEN;
    }
    for f in files {
        out[at..at + 8].copy_from_slice(&f.size.to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&f.mtime_sec.to_le_bytes());
        out[at + 16..at + 20].copy_from_slice(&f.path_len.to_le_bytes());
        out[at + 20..at + 24].copy_from_slice(&f._pad.to_le_bytes());
        out[at + 24..at + 40].copy_from_slice(&f.head_hash);
        out[at + 40..at + FILE_LEN].copy_from_slice(&f.path);
        at += FILE_LEN;
    }
    out[at..at + state.len()].copy_from_slice(state);
    let sum = crc32(&out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&0u16.to_le_bytes());
    out[8..12].copy_from_slice(&(total as u32).to_le_bytes());
    out[12..16].copy_from_slice(&sum.to_le_bytes());
    out[16..20].copy_from_slice(&(vmas.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&(runs.len() as u32).to_le_bytes());
    out[24..32].copy_from_slice(&data_pages.to_le_bytes());
    out[32..36].copy_from_slice(&(state.len() as u32).to_le_bytes());
    out[36..40].copy_from_slice(&(files.len() as u32).to_le_bytes());
    Ok(total)
}

/// A validated descriptor over borrowed bytes.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor<'a> {
    bytes: &'a [u8],
    n_vmas: usize,
    n_runs: usize,
    n_files: usize,
    state_len: usize,
    pub data_pages: u64,
}

impl<'a> Descriptor<'a> {
    /// Validates everything: header, checksum, and every VMA and run bound.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DescError> {
        if bytes.len() < HEADER_LEN {
            return Err(DescError::Truncated);
        }
        if get_u32(bytes, 0) != MAGIC {
            return Err(DescError::BadMagic);
        }
        if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION {
            return Err(DescError::BadVersion);
        }
        if get_u32(bytes, 8) as usize != bytes.len() || get_u32(bytes, 36) as usize > MAX_FILES {
            return Err(DescError::BadLength);
        }
        let d = Self::parse_validated(bytes)?;
        if crc32(&bytes[HEADER_LEN..]) != get_u32(bytes, 12) {
            return Err(DescError::BadChecksum);
        }
        d.validate()?;
        Ok(d)
    }

    /// Checks only the header's lengths against the buffer: O(1). The first step of
    /// [`Descriptor::parse`], and alone the fault path's way to re-open bytes that passed
    /// `parse` before (kept unchanged). Lookups stay in bounds on any input.
    pub fn parse_validated(bytes: &'a [u8]) -> Result<Self, DescError> {
        if bytes.len() < HEADER_LEN {
            return Err(DescError::Truncated);
        }
        let n_vmas = get_u32(bytes, 16) as usize;
        let n_runs = get_u32(bytes, 20) as usize;
        let state_len = get_u32(bytes, 32) as usize;
        let n_files = get_u32(bytes, 36) as usize;
        let expect = (n_vmas as u64) * VMA_LEN as u64
            + (n_runs as u64) * RUN_LEN as u64
            + (n_files as u64) * FILE_LEN as u64
            + state_len as u64
            + HEADER_LEN as u64;
        if expect != bytes.len() as u64 {
            return Err(DescError::BadLength);
        }
        Ok(Descriptor {
            bytes,
            n_vmas,
            n_runs,
            n_files,
            state_len,
            data_pages: get_u64(bytes, 24),
        })
    }

    fn validate(&self) -> Result<(), DescError> {
        let mut prev_end = 0u64;
        let mut next_run = 0u64;
        for i in 0..self.n_vmas {
            let v = self.vma_unchecked(i);
            if v.start >= v.end
                || v.flags & !vma_flags::ALL != 0
                || !v.start.is_multiple_of(PAGE)
                || !v.end.is_multiple_of(PAGE)
                || v.start < prev_end
            {
                return Err(DescError::BadVma);
            }
            prev_end = v.end;
            if v.file_id != 0 {
                let mappable = vma_flags::FILE;
                let never = vma_flags::SHARED
                    | vma_flags::GROWSDOWN
                    | vma_flags::VDSO
                    | vma_flags::VVAR
                    | vma_flags::HEAP;
                if v.file_id as usize > self.n_files
                    || v.flags & mappable != mappable
                    || v.flags & never != 0
                    || !v.file_offset.is_multiple_of(PAGE)
                    || v.file_offset
                        .checked_add(v.end - v.start)
                        .is_none_or(|e| e > i64::MAX as u64)
                {
                    return Err(DescError::BadFile);
                }
            } else if v.file_offset != 0 {
                return Err(DescError::BadVma);
            }
            // Runs are stored in VMA order, without gaps or sharing.
            if v.first_run as u64 != next_run {
                return Err(DescError::BadRun);
            }
            next_run += v.n_runs as u64;
            if next_run > self.n_runs as u64 {
                return Err(DescError::BadRun);
            }
            let vma_pages = (v.end - v.start) / PAGE;
            let mut prev_page_end = 0u64;
            for r in 0..v.n_runs as usize {
                let run = self.run_unchecked(v.first_run as usize + r);
                let end = run
                    .page
                    .checked_add(run.n_pages as u64)
                    .ok_or(DescError::BadRun)?;
                if run.n_pages == 0 || run.page < prev_page_end || end > vma_pages {
                    return Err(DescError::BadRun);
                }
                prev_page_end = end;
                match run.kind {
                    RUN_HOLE => {}
                    RUN_PRESENT => {
                        let data_end = run
                            .data_page
                            .checked_add(run.n_pages as u64)
                            .ok_or(DescError::BadRun)?;
                        if data_end > self.data_pages {
                            return Err(DescError::BadRun);
                        }
                    }
                    _ => return Err(DescError::BadRun),
                }
            }
        }
        if next_run != self.n_runs as u64 {
            return Err(DescError::BadRun);
        }
        for i in 0..self.n_files {
            if !self.file_unchecked(i).valid() {
                return Err(DescError::BadFile);
            }
        }
        Ok(())
    }

    /// The task state bytes (a [`TaskState`] and the FPU image).
    pub fn state(&self) -> &'a [u8] {
        let at = self.bytes.len() - self.state_len;
        &self.bytes[at..]
    }

    pub fn n_vmas(&self) -> usize {
        self.n_vmas
    }

    pub fn n_runs(&self) -> usize {
        self.n_runs
    }

    pub fn n_files(&self) -> usize {
        self.n_files
    }

    /// The file record a VMA's `file_id` names (`None` for 0 or out of range).
    pub fn file(&self, file_id: u32) -> Option<FileRef> {
        let i = (file_id as usize).checked_sub(1)?;
        (i < self.n_files).then(|| self.file_unchecked(i))
    }

    /// VMA `i`, if it exists.
    pub fn vma(&self, i: usize) -> Option<Vma> {
        (i < self.n_vmas).then(|| self.vma_unchecked(i))
    }

    /// Run `i`, if it exists.
    pub fn run(&self, i: usize) -> Option<PageRun> {
        (i < self.n_runs).then(|| self.run_unchecked(i))
    }

    /// The run covering byte `addr` of the seed's address space (present or hole), with
    /// its VMA; `None` outside every run.
    pub fn lookup(&self, addr: u64) -> Option<(Vma, PageRun)> {
        // VMAs are sorted and disjoint, and so are each VMA's runs.
        let vi = search(0, self.n_vmas, |i| {
            let v = self.vma_unchecked(i);
            cmp_range(addr, v.start, v.end)
        })?;
        let v = self.vma_unchecked(vi);
        Some((v, self.run_at(&v, (addr - v.start) / PAGE)?))
    }

    /// The run of VMA `v` covering its page `page`, if any.
    fn run_at(&self, v: &Vma, page: u64) -> Option<PageRun> {
        let first = (v.first_run as usize).min(self.n_runs);
        let last = first.saturating_add(v.n_runs as usize).min(self.n_runs);
        let ri = search(first, last, |i| {
            let r = self.run_unchecked(i);
            cmp_range(page, r.page, r.page.saturating_add(r.n_pages as u64))
        })?;
        Some(self.run_unchecked(ri))
    }

    /// Where the data of the snapshot-file byte `file_off` is: its offset in the
    /// published page set, or `None` for a hole, including any byte past its VMA's end
    /// (a child that grew the mapping with `mremap` reads zeros there, as after
    /// `fork()`). See [`window_offset`].
    pub fn data_offset_at(&self, file_off: u64) -> Option<u64> {
        let v = self.vma((file_off >> VMA_WINDOW_SHIFT) as usize)?;
        let page = (file_off & (VMA_WINDOW - 1)) / PAGE;
        let run = self.run_at(&v, page)?;
        if run.kind != RUN_PRESENT {
            return None;
        }
        run.data_page
            .checked_add(page.checked_sub(run.page)?)?
            .checked_mul(PAGE)
    }

    fn vma_unchecked(&self, i: usize) -> Vma {
        let at = HEADER_LEN + i * VMA_LEN;
        let b = self.bytes;
        Vma {
            start: get_u64(b, at),
            end: get_u64(b, at + 8),
            file_offset: get_u64(b, at + 16),
            prot: get_u32(b, at + 24),
            flags: get_u32(b, at + 28),
            first_run: get_u32(b, at + 32),
            n_runs: get_u32(b, at + 36),
            file_id: get_u32(b, at + 40),
            _pad: get_u32(b, at + 44),
        }
    }

    fn file_unchecked(&self, i: usize) -> FileRef {
        let at = HEADER_LEN + self.n_vmas * VMA_LEN + self.n_runs * RUN_LEN + i * FILE_LEN;
        let b = self.bytes;
        let mut f = FileRef {
            size: get_u64(b, at),
            mtime_sec: get_u64(b, at + 8) as i64,
            path_len: get_u32(b, at + 16),
            _pad: get_u32(b, at + 20),
            ..Default::default()
        };
        f.head_hash.copy_from_slice(&b[at + 24..at + 40]);
        f.path.copy_from_slice(&b[at + 40..at + FILE_LEN]);
        f
    }

    fn run_unchecked(&self, i: usize) -> PageRun {
        let at = HEADER_LEN + self.n_vmas * VMA_LEN + i * RUN_LEN;
        let b = self.bytes;
        PageRun {
            page: get_u64(b, at),
            n_pages: get_u32(b, at + 8),
            kind: get_u32(b, at + 12),
            data_page: get_u64(b, at + 16),
        }
    }
}

/// Each seed VMA has its own window of the snapshot file: VMA `i`'s page `p` is at
/// byte `window_offset(i) + p * PAGE`. Windows are larger than any user address
/// space, so a mapping grown in a child (`mremap`) stays in its own window and never
/// reaches another VMA's data, and an address never has to be translated back.
pub const VMA_WINDOW_SHIFT: u32 = 47;
pub const VMA_WINDOW: u64 = 1 << VMA_WINDOW_SHIFT;
/// Most VMAs a windowed snapshot file can hold: the last window ends at 2^63 - 1, the
/// largest file offset.
pub const MAX_WINDOWED_VMAS: usize = 1 << (63 - VMA_WINDOW_SHIFT);

/// The snapshot-file offset of VMA `i`'s first page (`i` < [`MAX_WINDOWED_VMAS`]).
pub const fn window_offset(i: usize) -> u64 {
    (i as u64) << VMA_WINDOW_SHIFT
}

/// Where `x` stands against `[start, end)`.
fn cmp_range(x: u64, start: u64, end: u64) -> core::cmp::Ordering {
    if x < start {
        core::cmp::Ordering::Greater
    } else if x >= end {
        core::cmp::Ordering::Less
    } else {
        core::cmp::Ordering::Equal
    }
}

/// Binary search over indices `[lo, hi)` ordered by `cmp` (the element's order
/// relative to the target); the index comparing `Equal`, if any.
fn search(
    mut lo: usize,
    mut hi: usize,
    cmp: impl Fn(usize) -> core::cmp::Ordering,
) -> Option<usize> {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match cmp(mid) {
            core::cmp::Ordering::Greater => hi = mid,
            core::cmp::Ordering::Less => lo = mid + 1,
            core::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}

/// x86-64 `struct pt_regs`, as 21 words in kernel order.
pub const PT_REGS_WORDS: usize = 21;
/// Index of `ip`, `cs`, `flags`, `sp`, `ss`, `ax` and `orig_ax` in [`TaskState::regs`].
pub mod reg {
    pub const R15: usize = 0;
    pub const R14: usize = 1;
    pub const R13: usize = 2;
    pub const R12: usize = 3;
    pub const BP: usize = 4;
    pub const BX: usize = 5;
    pub const AX: usize = 10;
    pub const ORIG_AX: usize = 15;
    pub const IP: usize = 16;
    pub const CS: usize = 17;
    pub const FLAGS: usize = 18;
    pub const SP: usize = 19;
    pub const SS: usize = 20;
}

/// Number of signals whose dispositions are captured.
pub const NSIG: usize = 64;

/// One signal disposition (`struct sigaction` as the kernel keeps it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// The seed's execution state, captured at its `FORK_CAPTURE` syscall. The kernel's
/// FPU image (`fpu_len` bytes, the format of the capturing kernel: children check
/// that it matches theirs) follows it in the descriptor's state section.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    pub regs: [u64; PT_REGS_WORDS],
    pub fsbase: u64,
    pub gsbase: u64,
    pub rseq: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub robust_list: u64,
    pub clear_child_tid: u64,
    pub set_child_tid: u64,
    pub sas_ss_sp: u64,
    pub sas_ss_size: u64,
    pub sas_ss_flags: u32,
    pub fpu_len: u32,
    /// Blocked signal mask.
    pub blocked: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// User address of the seed's `ForkCaptureArgs` (the child's resume report goes there).
    pub capture_args: u64,
    /// `xfeatures` the FPU image was saved with, and the image's `xcomp_bv`.
    pub fpu_xfeatures: u64,
    pub fpu_xcomp_bv: u64,
    pub sigactions: [SigAction; NSIG],
}

impl Default for TaskState {
    fn default() -> Self {
        TaskState {
            regs: [0; PT_REGS_WORDS],
            fsbase: 0,
            gsbase: 0,
            rseq: 0,
            rseq_len: 0,
            rseq_sig: 0,
            robust_list: 0,
            clear_child_tid: 0,
            set_child_tid: 0,
            sas_ss_sp: 0,
            sas_ss_size: 0,
            sas_ss_flags: 0,
            fpu_len: 0,
            blocked: 0,
            start_code: 0,
            end_code: 0,
            start_data: 0,
            end_data: 0,
            start_brk: 0,
            brk: 0,
            start_stack: 0,
            arg_start: 0,
            arg_end: 0,
            env_start: 0,
            env_end: 0,
            capture_args: 0,
            fpu_xfeatures: 0,
            fpu_xcomp_bv: 0,
            sigactions: [SigAction::default(); NSIG],
        }
    }
}

/// Size of [`TaskState`] in the descriptor.
pub const TASK_STATE_LEN: usize = core::mem::size_of::<TaskState>();
const _: () = assert!(TASK_STATE_LEN == 8 * PT_REGS_WORDS + 8 * 25 + 32 * NSIG);

// SAFETY: `repr(C)`, only `u64`/`u32` fields paired so there is no implicit padding
// (checked by the size assertion above).
unsafe impl super::ioctl::Pod for TaskState {}

/// The user address range a child host accepts addresses from a snapshot in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserLimits {
    /// Lowest address a mapping or mm field may have (the kernel's `mmap_min_addr`,
    /// or a floor above it when the module cannot read it).
    pub min_addr: u64,
    /// One past the highest user address (`TASK_SIZE`).
    pub task_size: u64,
}

/// The limits of an x86-64 process with 4-level paging and a 64 KiB `mmap_min_addr`
/// floor (Debian's default; the module never reads the sysctl, which is not exported).
pub const X86_64_LIMITS: UserLimits = UserLimits {
    min_addr: 0x1_0000,
    task_size: (1 << 47) - PAGE,
};

/// Why a snapshot's task state was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Instruction or stack pointer, FS or GS base outside user space.
    Register,
    /// The mm layout (code, data, brk, stack, arguments, environment) fails the checks
    /// `prctl(PR_SET_MM_MAP)` makes.
    MmLayout,
    /// A per-thread user pointer (rseq, robust list, tid pointers, capture arguments)
    /// is misaligned or outside user space.
    Pointer,
    /// The rseq registration is malformed.
    Rseq,
    /// The alternate signal stack is malformed.
    AltStack,
    /// A signal disposition has kernel-only flags or a handler outside user space.
    SigAction,
}

/// `sa_flags` bits a 64-bit task may set with `sigaction` (the kernel's `UAPI_SA_FLAGS`
/// on x86-64): SA_NOCLDSTOP, SA_NOCLDWAIT, SA_SIGINFO, SA_EXPOSE_TAGBITS, SA_RESTORER,
/// SA_ONSTACK, SA_RESTART, SA_NODEFER, SA_RESETHAND. Kernel-only bits such as
/// SA_IMMUTABLE, and the ABI markers the kernel sets itself, are refused.
pub const USER_SA_FLAGS: u64 =
    0x1 | 0x2 | 0x4 | 0x800 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x4000_0000 | 0x8000_0000;
/// `SS_AUTODISARM`, the flag `sigaltstack` keeps in `sas_ss_flags` besides the mode.
pub const SS_AUTODISARM: u32 = 1 << 31;
/// The modes `sigaltstack` stores: `SS_ONSTACK` (an enabling call may pass it) and
/// `SS_DISABLE` (also what `sas_ss_reset` leaves, e.g. after an `SS_AUTODISARM`
/// delivery or in a `CLONE_VM` child), both with no stack.
pub const SS_ONSTACK: u32 = 1;
pub const SS_DISABLE: u32 = 2;
/// The original `struct rseq` size and alignment.
pub const RSEQ_MIN_LEN: u32 = 32;
/// Largest rseq area accepted (the kernel's feature size is far below a page).
pub const RSEQ_MAX_LEN: u32 = 4096;
/// `SIG_DFL` and `SIG_IGN`: dispositions that are not addresses.
const SIG_IGN: u64 = 1;

impl UserLimits {
    /// Whether `[addr, addr + len)` lies in user space (`len` may be 0).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        matches!(addr.checked_add(len), Some(end) if end <= self.task_size)
    }

    /// Whether `addr` is a valid mm-field value (`prctl_set_mm_map`'s range check).
    pub fn mm_addr(&self, addr: u64) -> bool {
        addr >= self.min_addr && addr < self.task_size
    }

    /// Whether a user pointer is either absent (0) or a `len`-byte object aligned to
    /// `align` inside user space.
    fn optional_ptr(&self, addr: u64, len: u64, align: u64) -> bool {
        addr == 0 || (addr.is_multiple_of(align) && self.contains(addr, len))
    }
}

impl TaskState {
    /// The alternate signal stack as `sigaltstack` can leave it: mode 0 or
    /// `SS_ONSTACK` with a stack in user space (or none at all), or `SS_DISABLE` with
    /// none; `SS_AUTODISARM` with any of them.
    fn altstack_valid(&self, lim: &UserLimits) -> bool {
        let (sp, size) = (self.sas_ss_sp, self.sas_ss_size);
        match self.sas_ss_flags & !SS_AUTODISARM {
            0 | SS_ONSTACK => {
                if size == 0 {
                    sp == 0
                } else {
                    lim.contains(sp, size)
                }
            }
            SS_DISABLE => sp == 0 && size == 0,
            _ => false,
        }
    }

    /// Checks every value of a task state received from a peer before any of it is
    /// applied: registers and pointers in user space, the mm layout as
    /// `prctl(PR_SET_MM_MAP)` requires it, rseq and sigaltstack as their system calls
    /// would accept them, and signal dispositions with user-settable flags only.
    /// `capture_args_len` is the size of the seed's capture-argument struct (written
    /// at resume).
    pub fn validate(&self, lim: &UserLimits, capture_args_len: u64) -> Result<(), StateError> {
        let r = &self.regs;
        if !lim.contains(r[reg::IP], 1)
            || !lim.contains(r[reg::SP], 0)
            || !lim.contains(self.fsbase, 0)
            || !lim.contains(self.gsbase, 0)
        {
            return Err(StateError::Register);
        }
        self.validate_mm(lim)?;
        if self.capture_args == 0
            || !lim.optional_ptr(self.capture_args, capture_args_len, 8)
            || !lim.optional_ptr(self.robust_list, 24, 8)
            || !lim.optional_ptr(self.clear_child_tid, 4, 4)
            || !lim.optional_ptr(self.set_child_tid, 4, 4)
        {
            return Err(StateError::Pointer);
        }
        if self.rseq == 0 {
            if self.rseq_len != 0 {
                return Err(StateError::Rseq);
            }
        } else if self.rseq_len < RSEQ_MIN_LEN
            || self.rseq_len > RSEQ_MAX_LEN
            || !lim.optional_ptr(self.rseq, self.rseq_len as u64, RSEQ_MIN_LEN as u64)
        {
            return Err(StateError::Rseq);
        }
        if !self.altstack_valid(lim) {
            return Err(StateError::AltStack);
        }
        for a in &self.sigactions {
            if a.flags & !USER_SA_FLAGS != 0
                || (a.handler > SIG_IGN && !lim.contains(a.handler, 1))
                || (a.flags & 0x0400_0000 != 0 && !lim.contains(a.restorer, 1))
            {
                return Err(StateError::SigAction);
            }
        }
        Ok(())
    }

    /// `validate_prctl_map_addr`: every field in `[min_addr, task_size)`, pairs ordered.
    fn validate_mm(&self, lim: &UserLimits) -> Result<(), StateError> {
        let fields = [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ];
        if !fields.iter().all(|&a| lim.mm_addr(a))
            || self.start_code >= self.end_code
            || self.start_data > self.end_data
            || self.start_brk > self.brk
            || self.arg_start > self.arg_end
            || self.env_start > self.env_end
        {
            return Err(StateError::MmLayout);
        }
        Ok(())
    }
}

impl Descriptor<'_> {
    /// Checks that every VMA lies in `lim`'s user range (the parse checks only order
    /// and alignment, which do not depend on the child host).
    pub fn check_limits(&self, lim: &UserLimits) -> Result<(), DescError> {
        if self.n_vmas > MAX_WINDOWED_VMAS {
            return Err(DescError::TooLarge);
        }
        for i in 0..self.n_vmas {
            let v = self.vma_unchecked(i);
            if v.start < lim.min_addr || v.end > lim.task_size {
                return Err(DescError::BadVma);
            }
        }
        Ok(())
    }

    /// Byte offset, within the published page set, of the data of the snapshot page
    /// holding seed address `addr`, or `None` for a hole or an address outside every
    /// run. Checked arithmetic throughout: safe on any bytes `parse_validated` took.
    pub fn data_offset_of(&self, addr: u64) -> Option<u64> {
        let (vma, run) = self.lookup(addr)?;
        if run.kind != RUN_PRESENT {
            return None;
        }
        let page_in_run = ((addr - vma.start) / PAGE).checked_sub(run.page)?;
        run.data_page.checked_add(page_in_run)?.checked_mul(PAGE)
    }

    /// The snapshot-file offsets (see [`window_offset`]) of the pages a child needs as
    /// soon as it resumes, in this order: every present page of its stacks (a resume
    /// copies them in), then the pages holding the capture report, the thread pointer,
    /// the rseq area and the instruction, then the present pages of the VMAs that
    /// follow the instruction's without a gap (at most [`LEAD_DATA_VMAS`]: the object
    /// whose code resumes keeps its relocated pointers, `.data` and `.bss` there, and
    /// that code reads them before anything else). Pages of a VMA with a file record
    /// are left out (the child host's own file likely serves them), and so are holes
    /// and duplicates; at most [`MAX_LEAD_PAGES`] are written to `out`, their count
    /// returned.
    ///
    /// The parent stores copies of these pages right after the descriptor and a child
    /// reads them together with it, in one batch. Both compute the list from the
    /// descriptor alone (the copies do not change it), so they agree.
    pub fn lead_offsets(&self, out: &mut [u64; MAX_LEAD_PAGES]) -> usize {
        let mut n = 0;
        for vi in 0..self.n_vmas {
            let v = self.vma_unchecked(vi);
            if v.flags & vma_flags::GROWSDOWN == 0 || v.flags & vma_flags::FILE != 0 {
                continue;
            }
            self.push_present(vi, out, &mut n);
        }
        // Single fields, not the whole (2.5 KiB) state on the stack.
        let state = self.state();
        if state.len() < TASK_STATE_LEN {
            return n;
        }
        let ip_at = core::mem::offset_of!(TaskState, regs) + 8 * reg::IP;
        let mut code = None;
        for at in [
            core::mem::offset_of!(TaskState, capture_args),
            core::mem::offset_of!(TaskState, fsbase),
            core::mem::offset_of!(TaskState, rseq),
            ip_at,
        ] {
            let addr = get_u64(state, at);
            let Some(vi) = search(0, self.n_vmas, |i| {
                let v = self.vma_unchecked(i);
                cmp_range(addr, v.start, v.end)
            }) else {
                continue;
            };
            if at == ip_at {
                code = Some(vi);
            }
            let v = self.vma_unchecked(vi);
            if v.file_id != 0 || n == MAX_LEAD_PAGES {
                continue;
            }
            let off = (addr - v.start) / PAGE * PAGE;
            if let Some(off) = off.checked_add(window_offset(vi)) {
                self.push_lead(out, &mut n, off);
            }
        }
        let Some(code) = code else {
            return n;
        };
        let mut end = self.vma_unchecked(code).end;
        let last = self.n_vmas.min(code.saturating_add(1 + LEAD_DATA_VMAS));
        for vi in code + 1..last {
            let v = self.vma_unchecked(vi);
            if v.start != end {
                break;
            }
            end = v.end;
            if v.file_id == 0 && v.flags & (vma_flags::VDSO | vma_flags::VVAR) == 0 {
                self.push_present(vi, out, &mut n);
            }
        }
        n
    }

    /// Appends the present pages of VMA `vi` to `out[..*n]` ([`Self::push_lead`]),
    /// until `out` is full.
    fn push_present(&self, vi: usize, out: &mut [u64; MAX_LEAD_PAGES], n: &mut usize) {
        let v = self.vma_unchecked(vi);
        let first = (v.first_run as usize).min(self.n_runs);
        let last = first.saturating_add(v.n_runs as usize).min(self.n_runs);
        for ri in first..last {
            let r = self.run_unchecked(ri);
            if r.kind != RUN_PRESENT {
                continue;
            }
            for page in r.page..r.page.saturating_add(r.n_pages as u64) {
                if *n == MAX_LEAD_PAGES {
                    return;
                }
                if let Some(off) = page
                    .checked_mul(PAGE)
                    .and_then(|o| o.checked_add(window_offset(vi)))
                {
                    self.push_lead(out, n, off);
                }
            }
        }
    }

    /// Appends `off` to `out[..*n]` if it is a present page not listed yet.
    fn push_lead(&self, out: &mut [u64; MAX_LEAD_PAGES], n: &mut usize, off: u64) {
        if *n < MAX_LEAD_PAGES && !out[..*n].contains(&off) && self.data_offset_at(off).is_some() {
            out[*n] = off;
            *n += 1;
        }
    }

    /// The region page (region offset / 4096) holding the snapshot-file page at
    /// `file_off`, in a snapshot whose descriptor is `desc_len` bytes long (the data
    /// pages follow the descriptor's pages), or `None` for a page that is not present.
    pub fn region_page_at(&self, desc_len: u64, file_off: u64) -> Option<u64> {
        let data = self.data_offset_at(file_off)?;
        desc_len.div_ceil(PAGE).checked_add(data / PAGE)
    }

    /// The snapshot-file offset of `hot`'s page if the descriptor puts that page,
    /// present, exactly at `hot`'s region page; `None` for a hole, a page of no VMA or
    /// any other region page (what a lying or outdated parent might send).
    pub fn hot_page_offset(&self, desc_len: u64, hot: HotPage) -> Option<u64> {
        let file_off = hot.index.checked_mul(PAGE)?;
        (self.region_page_at(desc_len, file_off)? == u64::from(hot.region_page)).then_some(file_off)
    }

    /// The first-touch pages of a record: from `touched` (page-cache indices in the
    /// order children first touched them), the present pages that are not lead pages
    /// (`lead`: file offsets, from [`Self::lead_offsets`]; a child gets those anyway),
    /// each once, with their region pages; at most `out.len()` written, their count
    /// returned. A page whose region page exceeds 32 bits is left out.
    pub fn first_touches(
        &self,
        desc_len: u64,
        lead: &[u64],
        touched: impl IntoIterator<Item = u64>,
        out: &mut [HotPage],
    ) -> usize {
        let mut n = 0;
        for index in touched {
            if n == out.len() {
                break;
            }
            let Some(file_off) = index.checked_mul(PAGE) else {
                continue;
            };
            if lead.contains(&file_off) || out[..n].iter().any(|h| h.index == index) {
                continue;
            }
            let page = self
                .region_page_at(desc_len, file_off)
                .and_then(|p| u32::try_from(p).ok());
            if let Some(region_page) = page {
                out[n] = HotPage { index, region_page };
                n += 1;
            }
        }
        n
    }

    /// Bytes of page data the descriptor refers to (`data_pages` pages).
    pub fn data_bytes(&self) -> Option<u64> {
        self.data_pages.checked_mul(PAGE)
    }
}
