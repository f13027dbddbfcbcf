//! The snapshot descriptor codec: round trips, lookups, and refusal (never a panic) of
//! every kind of corruption.

use mitosis_abi::snapshot::{
    self, vma_flags, DescError, Descriptor, FileRef, PageRun, Vma, RUN_HOLE, RUN_PRESENT,
};
use proptest::prelude::*;

fn vma(start: u64, end: u64, first_run: u32, n_runs: u32) -> Vma {
    Vma {
        start,
        end,
        prot: 3,
        flags: 0,
        first_run,
        n_runs,
        ..Default::default()
    }
}

fn run(page: u64, n: u32, kind: u32, data_page: u64) -> PageRun {
    PageRun {
        page,
        n_pages: n,
        kind,
        data_page,
    }
}

fn sample() -> (Vec<Vma>, Vec<PageRun>) {
    (
        vec![vma(0x10000, 0x20000, 0, 2), vma(0x40000, 0x41000, 2, 1)],
        vec![
            run(0, 4, RUN_PRESENT, 0),
            run(8, 8, RUN_HOLE, 0),
            run(0, 1, RUN_PRESENT, 4),
        ],
    )
}

const STATE: &[u8] = b"task state bytes";

fn encode(vmas: &[Vma], runs: &[PageRun], data: u64) -> Result<Vec<u8>, DescError> {
    let mut buf = vec![0u8; 1 << 16];
    let n = snapshot::encode(vmas, runs, data, STATE, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn crc32_known_answer() {
    assert_eq!(snapshot::crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn round_trip_and_lookup() {
    let (v, r) = sample();
    let bytes = encode(&v, &r, 5).unwrap();
    let d = Descriptor::parse(&bytes).unwrap();
    assert_eq!((d.n_vmas(), d.n_runs(), d.data_pages), (2, 3, 5));
    assert_eq!(d.vma(1), Some(v[1]));
    assert_eq!(d.run(2), Some(r[2]));
    assert_eq!(d.vma(2), None);
    assert_eq!(d.state(), STATE);
    assert_eq!(d.lookup(0x10000 + 3 * 4096).map(|x| x.1), Some(r[0]));
    assert_eq!(d.lookup(0x10000 + 4 * 4096), None); // between runs: never touched
    assert_eq!(
        d.lookup(0x10000 + 9 * 4096).map(|x| x.1.kind),
        Some(RUN_HOLE)
    );
    assert_eq!(d.lookup(0x40000).map(|x| x.1), Some(r[2]));
    assert_eq!(d.lookup(0x30000), None);
    assert_eq!(d.lookup(0x41000), None);
}

#[test]
fn refuses_bad_layouts() {
    let (v, r) = sample();
    // Data outside the page set.
    assert_eq!(
        Descriptor::parse(&encode(&v, &r, 4).unwrap()).err(),
        Some(DescError::BadRun)
    );
    // Overlapping VMAs.
    let mut bad = v.clone();
    bad[1].start = 0x1f000;
    assert_eq!(
        Descriptor::parse(&encode(&bad, &r, 5).unwrap()).err(),
        Some(DescError::BadVma)
    );
    // Unaligned VMA.
    let mut bad = v.clone();
    bad[0].end = 0x20001;
    assert_eq!(
        Descriptor::parse(&encode(&bad, &r, 5).unwrap()).err(),
        Some(DescError::BadVma)
    );
    // Run past its VMA.
    let mut badr = r.clone();
    badr[1].n_pages = 9;
    assert_eq!(
        Descriptor::parse(&encode(&v, &badr, 5).unwrap()).err(),
        Some(DescError::BadRun)
    );
    // Overlapping runs.
    let mut badr = r.clone();
    badr[1].page = 3;
    assert_eq!(
        Descriptor::parse(&encode(&v, &badr, 5).unwrap()).err(),
        Some(DescError::BadRun)
    );
    // Runs not owned in order.
    let mut bad = v.clone();
    bad[1].first_run = 1;
    assert_eq!(
        Descriptor::parse(&encode(&bad, &r, 5).unwrap()).err(),
        Some(DescError::BadRun)
    );
    // Unknown run kind.
    let mut badr = r.clone();
    badr[0].kind = 9;
    assert_eq!(
        Descriptor::parse(&encode(&v, &badr, 5).unwrap()).err(),
        Some(DescError::BadRun)
    );
}

#[test]
fn refuses_bad_headers() {
    let (v, r) = sample();
    let good = encode(&v, &r, 5).unwrap();
    let mut b = good.clone();
    b[0] ^= 1;
    assert_eq!(Descriptor::parse(&b).err(), Some(DescError::BadMagic));
    let mut b = good.clone();
    b[4] = 7;
    assert_eq!(Descriptor::parse(&b).err(), Some(DescError::BadVersion));
    let mut b = good.clone();
    *b.last_mut().unwrap() ^= 1;
    assert_eq!(Descriptor::parse(&b).err(), Some(DescError::BadChecksum));
    assert_eq!(
        Descriptor::parse(&good[..good.len() - 1]).err(),
        Some(DescError::BadLength)
    );
    assert_eq!(
        Descriptor::parse(&good[..10]).err(),
        Some(DescError::Truncated)
    );
    let mut small = [0u8; 64];
    assert_eq!(
        snapshot::encode(&v, &r, 5, STATE, &mut small),
        Err(DescError::TooLarge)
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Descriptor::parse(&bytes);
    }

    /// The fault path's O(1) re-open must stay in bounds whatever the bytes say.
    #[test]
    fn unvalidated_lookups_never_panic(flip in 0usize..400, byte in any::<u8>(), addr in any::<u64>()) {
        let (v, r) = sample();
        let mut b = encode(&v, &r, 5).unwrap();
        let i = flip % b.len();
        b[i] = byte;
        if let Ok(d) = Descriptor::parse_validated(&b) {
            let _ = d.lookup(addr);
            let _ = d.lookup(addr % 0x50000);
            for i in 0..d.n_vmas() + 1 {
                let _ = d.vma(i);
            }
            let _ = d.state();
        }
    }

    #[test]
    fn corrupted_descriptors_are_refused_or_consistent(flip in 0usize..400, bit in 0u8..8, addr in 0u64..0x50000) {
        let (v, r) = sample();
        let mut b = encode(&v, &r, 5).unwrap();
        let i = flip % b.len();
        b[i] ^= 1 << bit;
        // The checksum covers everything after the header; header fields are checked
        // for consistency. Whatever parses must answer lookups inside its own bounds.
        if let Ok(d) = Descriptor::parse(&b) {
            if let Some((vma, run)) = d.lookup(addr) {
                prop_assert!(addr >= vma.start && addr < vma.end);
                if run.kind == RUN_PRESENT {
                    prop_assert!(run.data_page + run.n_pages as u64 <= d.data_pages);
                }
            }
        }
    }

    #[test]
    fn generated_layouts_round_trip(sizes in proptest::collection::vec(1u64..64, 1..20)) {
        // One VMA per size with one present run covering it, laid out with gaps.
        let mut vmas = Vec::new();
        let mut runs = Vec::new();
        let mut addr = 0x100000u64;
        let mut data = 0u64;
        for (i, pages) in sizes.iter().enumerate() {
            vmas.push(vma(addr, addr + pages * 4096, i as u32, 1));
            runs.push(run(0, *pages as u32, RUN_PRESENT, data));
            data += pages;
            addr += (pages + 1) * 4096;
        }
        let b = encode(&vmas, &runs, data).unwrap();
        let d = Descriptor::parse(&b).unwrap();
        for (i, v) in vmas.iter().enumerate() {
            prop_assert_eq!(d.vma(i), Some(*v));
            prop_assert_eq!(d.lookup(v.end - 1).map(|x| x.1), Some(runs[i]));
        }
    }
}

#[test]
fn unknown_vma_flags_refused() {
    let (mut v, r) = sample();
    v[0].flags = 1 << 31;
    assert_eq!(
        Descriptor::parse(&encode(&v, &r, 5).unwrap()).err(),
        Some(DescError::BadVma)
    );
}

#[test]
fn state_length_must_match() {
    let (v, r) = sample();
    let mut bytes = encode(&v, &r, 5).unwrap();
    // Claim one more state byte than there is (checksum still over the same bytes).
    let len = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) + 1;
    bytes[32..36].copy_from_slice(&len.to_le_bytes());
    assert_eq!(Descriptor::parse(&bytes).err(), Some(DescError::BadLength));
}

fn with_files(vmas: &[Vma], runs: &[PageRun], files: &[FileRef]) -> Result<Vec<u8>, DescError> {
    let mut buf = vec![0u8; 1 << 16];
    let n = snapshot::encode_with_files(vmas, runs, files, 5, STATE, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn lib_file() -> FileRef {
    FileRef::new(b"/usr/lib/libexample.so.1", 123_456, 1_700_000_000, [7; 16]).unwrap()
}

/// A sample whose second VMA is a clean mapping of a file at offset 8 KiB.
fn file_sample() -> (Vec<Vma>, Vec<PageRun>) {
    let (mut v, r) = sample();
    v[1].flags = vma_flags::READ | vma_flags::EXEC | vma_flags::FILE;
    v[1].file_id = 1;
    v[1].file_offset = 0x2000;
    (v, r)
}

#[test]
fn file_records_round_trip() {
    let (v, r) = file_sample();
    let f = lib_file();
    let d_bytes = with_files(&v, &r, &[f]).unwrap();
    let d = Descriptor::parse(&d_bytes).unwrap();
    assert_eq!(d.n_files(), 1);
    assert_eq!(d.file(1), Some(f));
    assert_eq!(d.file(0), None);
    assert_eq!(d.file(2), None);
    assert_eq!(d.file(1).unwrap().path(), b"/usr/lib/libexample.so.1");
    assert_eq!(d.vma(1), Some(v[1]));
    assert_eq!(d.state(), STATE);
    // Present runs still locate their data (the snapshot keeps the pages).
    assert_eq!(d.lookup(0x40000).map(|x| x.1), Some(r[2]));
}

#[test]
fn file_paths_must_be_absolute_and_clean() {
    assert!(FileRef::new(b"relative/path", 1, 0, [0; 16]).is_none());
    assert!(FileRef::new(b"", 1, 0, [0; 16]).is_none());
    assert!(FileRef::new(b"/with\0nul", 1, 0, [0; 16]).is_none());
    assert!(FileRef::new(&[b'/'; snapshot::FILE_PATH_MAX + 1], 1, 0, [0; 16]).is_none());
    assert!(FileRef::new(&[b'/'; snapshot::FILE_PATH_MAX], 1, 0, [0; 16]).is_some());
    assert!(FileRef::new(b"/huge", u64::MAX, 0, [0; 16]).is_none());
    let (v, r) = file_sample();
    // Records forged past `FileRef::new`: each is refused by the parser.
    let mut bad = lib_file();
    bad.path[30] = b'x'; // bytes after the path
    assert_eq!(
        Descriptor::parse(&with_files(&v, &r, &[bad]).unwrap()).err(),
        Some(DescError::BadFile)
    );
    let mut bad = lib_file();
    bad._pad = 1;
    assert_eq!(
        Descriptor::parse(&with_files(&v, &r, &[bad]).unwrap()).err(),
        Some(DescError::BadFile)
    );
    let mut bad = lib_file();
    bad.path_len = snapshot::FILE_PATH_MAX as u32 + 1;
    assert_eq!(
        Descriptor::parse(&with_files(&v, &r, &[bad]).unwrap()).err(),
        Some(DescError::BadFile)
    );
}

#[test]
fn vmas_may_name_only_mappable_files() {
    let f = lib_file();
    let (v, r) = file_sample();
    let refused = |v: &[Vma]| Descriptor::parse(&with_files(v, &r, &[f]).unwrap()).err();
    let mut bad = v.clone();
    bad[1].file_id = 2; // no such record
    assert_eq!(refused(&bad), Some(DescError::BadFile));
    for flag in [
        vma_flags::SHARED,
        vma_flags::GROWSDOWN,
        vma_flags::HEAP,
        vma_flags::VDSO,
    ] {
        let mut bad = v.clone();
        bad[1].flags |= flag;
        assert_eq!(refused(&bad), Some(DescError::BadFile), "flag {flag:#x}");
    }
    let mut bad = v.clone();
    bad[1].flags &= !vma_flags::FILE;
    assert_eq!(refused(&bad), Some(DescError::BadFile));
    let mut bad = v.clone();
    bad[1].file_offset = 0x2001;
    assert_eq!(refused(&bad), Some(DescError::BadFile));
    let mut bad = v.clone();
    bad[1].file_offset = i64::MAX as u64 & !0xfff;
    assert_eq!(refused(&bad), Some(DescError::BadFile));
    // An offset without a file means nothing: refused too.
    let mut bad = v.clone();
    bad[0].file_offset = 0x1000;
    assert_eq!(refused(&bad), Some(DescError::BadVma));
    // Too many records claimed by the header.
    let mut b = with_files(&v, &r, &[f]).unwrap();
    b[36..40].copy_from_slice(&(snapshot::MAX_FILES as u32 + 1).to_le_bytes());
    assert_eq!(Descriptor::parse(&b).err(), Some(DescError::BadLength));
}

#[test]
fn file_head_hash_depends_on_length_and_content() {
    use mitosis_abi::mac::file_head_hash;
    let a = file_head_hash(b"\x7fELF....");
    assert_eq!(a, file_head_hash(b"\x7fELF...."));
    assert_ne!(a, file_head_hash(b"\x7fELF...!"));
    assert_ne!(file_head_hash(b""), file_head_hash(b"\0"));
}

/// A descriptor whose state puts the capture report, thread pointer, rseq area and
/// instruction at the given addresses (other state bytes zero).
fn encode_with_state(vmas: &[Vma], runs: &[PageRun], data: u64, at: [u64; 4]) -> Vec<u8> {
    use mitosis_abi::snapshot::{reg, TaskState, TASK_STATE_LEN};
    let mut st = TaskState::default();
    (st.capture_args, st.fsbase, st.rseq, st.regs[reg::IP]) = (at[0], at[1], at[2], at[3]);
    let state = mitosis_abi::ioctl::Pod::as_bytes(&st).to_vec();
    assert_eq!(state.len(), TASK_STATE_LEN);
    let file = FileRef::new(b"/lib/x.so", 4096, 0, [0; 16]).unwrap();
    let files: &[FileRef] = if vmas.iter().any(|v| v.file_id != 0) {
        &[file]
    } else {
        &[]
    };
    let mut buf = vec![0u8; 1 << 16];
    let n = snapshot::encode_with_files(vmas, runs, files, data, &state, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn lead_pages_are_the_stack_then_the_resume_points() {
    // VMA 0: code (present); VMA 1: data with a hole; VMA 2: a stack (pages 2-3
    // present); VMA 3: a file mapping with a file record.
    let mut vmas = vec![
        vma(0x10000, 0x12000, 0, 1),
        vma(0x20000, 0x24000, 1, 2),
        vma(0x7f000, 0x83000, 3, 1),
        vma(0x90000, 0x91000, 4, 1),
    ];
    vmas[2].flags = vma_flags::GROWSDOWN;
    vmas[3].flags = vma_flags::FILE;
    vmas[3].file_id = 1;
    let runs = vec![
        run(0, 2, RUN_PRESENT, 0),
        run(0, 1, RUN_PRESENT, 2),
        run(1, 3, RUN_HOLE, 0),
        run(2, 2, RUN_PRESENT, 3),
        run(0, 1, RUN_PRESENT, 5),
    ];
    let w = snapshot::window_offset;
    // Report on the stack (a duplicate), thread pointer in data page 0, rseq in a hole
    // (left out), instruction in the file mapping (left out), then code.
    let b = encode_with_state(&vmas, &runs, 6, [0x81008, 0x20010, 0x21000, 0x90004]);
    let d = Descriptor::parse(&b).unwrap();
    let mut out = [0u64; snapshot::MAX_LEAD_PAGES];
    let n = d.lead_offsets(&mut out);
    assert_eq!(&out[..n], &[w(2) + 2 * 4096, w(2) + 3 * 4096, w(1)]);
    let b = encode_with_state(&vmas, &runs, 6, [0, 0, 0, 0x11ff0]);
    let d = Descriptor::parse(&b).unwrap();
    let n = d.lead_offsets(&mut out);
    assert_eq!(&out[..n], &[w(2) + 2 * 4096, w(2) + 3 * 4096, w(0) + 4096]);
    // A stack larger than the limit: the first MAX_LEAD_PAGES pages only.
    let mut big = vec![vma(0x100000, 0x200000, 0, 1)];
    big[0].flags = vma_flags::GROWSDOWN;
    let b = encode_with_state(
        &big,
        &[run(0, 256, RUN_PRESENT, 0)],
        256,
        [0x1ff000, 0, 0, 0],
    );
    let d = Descriptor::parse(&b).unwrap();
    assert_eq!(d.lead_offsets(&mut out), snapshot::MAX_LEAD_PAGES);
    assert_eq!(out[snapshot::MAX_LEAD_PAGES - 1], w(0) + 47 * 4096);
    // A state too short to read: the stack alone.
    let b = encode(&vmas[..3], &runs[..4], 6).unwrap();
    let d = Descriptor::parse(&b).unwrap();
    assert_eq!(d.lead_offsets(&mut out), 2);
}

#[test]
fn lead_pages_take_the_data_after_the_resume_points_code() {
    // VMA 0: code with a file record (the instruction: its page comes from the
    // child host's file); right after it VMA 1: read-only data, also with a file
    // record (left out); VMA 2: relocated pointers (a file mapping without a record,
    // pages 0 and 2 present); VMA 3: .bss (page 1 present); VMAs 4 and 5 follow
    // without a gap but are past the limit of four; VMA 6 after a gap.
    let mut vmas = vec![
        vma(0x10000, 0x12000, 0, 1),
        vma(0x12000, 0x13000, 1, 1),
        vma(0x13000, 0x16000, 2, 3),
        vma(0x16000, 0x18000, 5, 2),
        vma(0x18000, 0x19000, 7, 1),
        vma(0x19000, 0x1a000, 8, 1),
        vma(0x30000, 0x31000, 9, 1),
    ];
    vmas[0].flags = vma_flags::FILE;
    vmas[0].file_id = 1;
    vmas[1].flags = vma_flags::FILE;
    vmas[1].file_id = 1;
    vmas[2].flags = vma_flags::FILE;
    let runs = vec![
        run(0, 2, RUN_PRESENT, 0),
        run(0, 1, RUN_PRESENT, 2),
        run(0, 1, RUN_PRESENT, 3),
        run(1, 1, RUN_HOLE, 0),
        run(2, 1, RUN_PRESENT, 4),
        run(0, 1, RUN_HOLE, 0),
        run(1, 1, RUN_PRESENT, 5),
        run(0, 1, RUN_PRESENT, 6),
        run(0, 1, RUN_PRESENT, 7),
        run(0, 1, RUN_PRESENT, 8),
    ];
    let w = snapshot::window_offset;
    let b = encode_with_state(&vmas, &runs, 9, [0, 0, 0, 0x11000]);
    let d = Descriptor::parse(&b).unwrap();
    let mut out = [0u64; snapshot::MAX_LEAD_PAGES];
    let n = d.lead_offsets(&mut out);
    assert_eq!(&out[..n], &[w(2), w(2) + 2 * 4096, w(3) + 4096, w(4)]);
    // The instruction in the last VMA before a gap: nothing follows it.
    let b = encode_with_state(&vmas, &runs, 9, [0, 0, 0, 0x19000]);
    let d = Descriptor::parse(&b).unwrap();
    assert_eq!(d.lead_offsets(&mut out), 1);
    assert_eq!(out[0], w(5));
}

#[test]
fn first_touches_skip_lead_holes_and_repeats_and_check_back() {
    use mitosis_abi::wire::HotPage;
    // VMA 0: pages 0-1 present at data pages 0-1; VMA 1: page 0 present (data page 2),
    // pages 1-3 a hole; VMA 2: a stack, pages 2-3 present (data pages 3-4).
    let mut vmas = vec![
        vma(0x10000, 0x12000, 0, 1),
        vma(0x20000, 0x24000, 1, 2),
        vma(0x7f000, 0x83000, 3, 1),
    ];
    vmas[2].flags = vma_flags::GROWSDOWN;
    let runs = vec![
        run(0, 2, RUN_PRESENT, 0),
        run(0, 1, RUN_PRESENT, 2),
        run(1, 3, RUN_HOLE, 0),
        run(2, 2, RUN_PRESENT, 3),
    ];
    let b = encode_with_state(&vmas, &runs, 5, [0, 0, 0, 0]);
    let d = Descriptor::parse(&b).unwrap();
    let desc_len = b.len() as u64;
    let desc_pages = desc_len.div_ceil(4096);
    let idx = |vi: usize, page: u64| snapshot::window_offset(vi) / 4096 + page;
    let mut lead = [0u64; snapshot::MAX_LEAD_PAGES];
    let n_lead = d.lead_offsets(&mut lead);
    assert_eq!(n_lead, 2); // the stack's two pages
                           // Touch order: stack (lead: left out), data page 0, a hole, code page 1, data page
                           // 0 again, a page of no VMA, code page 0.
    let touched = [
        idx(2, 2),
        idx(1, 0),
        idx(1, 2),
        idx(0, 1),
        idx(1, 0),
        idx(7, 0),
        idx(0, 0),
        u64::MAX,
    ];
    let mut out = [HotPage::default(); 8];
    let n = d.first_touches(desc_len, &lead[..n_lead], touched, &mut out);
    let page = |data: u64| (desc_pages + data) as u32;
    assert_eq!(
        &out[..n],
        &[
            HotPage {
                index: idx(1, 0),
                region_page: page(2)
            },
            HotPage {
                index: idx(0, 1),
                region_page: page(1)
            },
            HotPage {
                index: idx(0, 0),
                region_page: page(0)
            },
        ]
    );
    // Every page it produced checks back against the descriptor.
    for h in &out[..n] {
        assert_eq!(d.hot_page_offset(desc_len, *h), Some(h.index * 4096));
    }
    // Bounded by the output.
    assert_eq!(d.first_touches(desc_len, &[], touched, &mut out[..1]), 1);
    // A page at another region page, a hole, a page of no VMA, an index whose offset
    // overflows: all refused.
    for lie in [
        HotPage {
            index: idx(0, 0),
            region_page: page(1),
        },
        HotPage {
            index: idx(0, 1),
            region_page: 0,
        },
        HotPage {
            index: idx(1, 2),
            region_page: page(2),
        },
        HotPage {
            index: idx(7, 0),
            region_page: page(0),
        },
        HotPage {
            index: u64::MAX,
            region_page: page(0),
        },
    ] {
        assert_eq!(d.hot_page_offset(desc_len, lie), None, "{lie:?}");
    }
}
