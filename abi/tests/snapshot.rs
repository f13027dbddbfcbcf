//! The snapshot descriptor codec: round trips, lookups, and refusal (never a panic) of
//! every kind of corruption.

use mitosis_abi::snapshot::{self, DescError, Descriptor, PageRun, Vma, RUN_HOLE, RUN_PRESENT};
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
