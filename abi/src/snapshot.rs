// SPDX-License-Identifier: GPL-2.0

//! The snapshot descriptor: what a child fetches with one RDMA READ to rebuild a seed's
//! address space (issue 3; the capture and resume paths that use it are not built yet).
//!
//! Layout, little-endian: a 40-byte header, then `n_vmas` 48-byte VMA records, then
//! `n_runs` 24-byte page runs. Each VMA owns `n_runs` consecutive runs starting at
//! `first_run`; a run covers `n_pages` pages from VMA page `page` and is either present
//! (its data is pages `data_page..data_page + n_pages` of the snapshot's published page
//! set) or a hole (zero-filled locally). The checksum is CRC-32 (IEEE) of everything
//! after the header. [`Descriptor::parse`] checks every bound: a corrupt descriptor is an
//! error, never a panic or an out-of-range index.

pub const MAGIC: u32 = 0x4D53_4E50; // "MSNP"
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 40;
pub const VMA_LEN: usize = 48;
pub const RUN_LEN: usize = 24;
pub const PAGE: u64 = 4096;

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
}

/// One VMA of the seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` and `VM_*`-style flags as captured.
    pub prot: u32,
    pub flags: u32,
    pub file_offset: u64,
    pub first_run: u32,
    pub n_runs: u32,
    /// Index of the file identity in a later table (0 = anonymous).
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

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Encodes a descriptor for a page set of `data_pages` pages; returns its length.
pub fn encode(
    vmas: &[Vma],
    runs: &[PageRun],
    data_pages: u64,
    out: &mut [u8],
) -> Result<usize, DescError> {
    let total = vmas
        .len()
        .checked_mul(VMA_LEN)
        .and_then(|v| {
            runs.len()
                .checked_mul(RUN_LEN)
                .and_then(|r| r.checked_add(v))
        })
        .and_then(|b| b.checked_add(HEADER_LEN))
        .ok_or(DescError::TooLarge)?;
    if total > out.len() || total > u32::MAX as usize {
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
    let sum = crc32(&out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&0u16.to_le_bytes());
    out[8..12].copy_from_slice(&(total as u32).to_le_bytes());
    out[12..16].copy_from_slice(&sum.to_le_bytes());
    out[16..20].copy_from_slice(&(vmas.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&(runs.len() as u32).to_le_bytes());
    out[24..32].copy_from_slice(&data_pages.to_le_bytes());
    out[32..40].copy_from_slice(&0u64.to_le_bytes());
    Ok(total)
}

/// A validated descriptor over borrowed bytes.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor<'a> {
    bytes: &'a [u8],
    n_vmas: usize,
    n_runs: usize,
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
        let total = get_u32(bytes, 8) as usize;
        if total != bytes.len() {
            return Err(DescError::BadLength);
        }
        let n_vmas = get_u32(bytes, 16) as usize;
        let n_runs = get_u32(bytes, 20) as usize;
        let expect =
            (n_vmas as u64) * VMA_LEN as u64 + (n_runs as u64) * RUN_LEN as u64 + HEADER_LEN as u64;
        if expect != total as u64 {
            return Err(DescError::BadLength);
        }
        if crc32(&bytes[HEADER_LEN..]) != get_u32(bytes, 12) {
            return Err(DescError::BadChecksum);
        }
        let d = Descriptor {
            bytes,
            n_vmas,
            n_runs,
            data_pages: get_u64(bytes, 24),
        };
        d.validate()?;
        Ok(d)
    }

    fn validate(&self) -> Result<(), DescError> {
        let mut prev_end = 0u64;
        let mut next_run = 0u64;
        for i in 0..self.n_vmas {
            let v = self.vma_unchecked(i);
            if v.start >= v.end
                || !v.start.is_multiple_of(PAGE)
                || !v.end.is_multiple_of(PAGE)
                || v.start < prev_end
            {
                return Err(DescError::BadVma);
            }
            prev_end = v.end;
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
        Ok(())
    }

    pub fn n_vmas(&self) -> usize {
        self.n_vmas
    }

    pub fn n_runs(&self) -> usize {
        self.n_runs
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
        let page = (addr - v.start) / PAGE;
        let first = v.first_run as usize;
        let ri = search(first, first + v.n_runs as usize, |i| {
            let r = self.run_unchecked(i);
            cmp_range(page, r.page, r.page + r.n_pages as u64)
        })?;
        Some((v, self.run_unchecked(ri)))
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
