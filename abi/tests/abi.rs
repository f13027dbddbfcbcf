//! Host tests of the ABI: ioctl numbering and struct layout, pattern helpers, and the
//! wire codec (round trips, and no input can make decoding panic or read out of bounds).

use mitosis_abi::ioctl::{self, Pod};
use mitosis_abi::packed;
use mitosis_abi::snapshot;
use mitosis_abi::wire::{
    self, CloseRegion, HotPage, Kind, OpenRegion, OpenRegionReply, RegionFacts, WireError,
    WorkingSetParts, WorkingSetReport, WsRun,
};
use proptest::prelude::*;

#[test]
fn ioctl_numbers_are_distinct_and_encode_their_size() {
    let mut nrs: Vec<u8> = ioctl::COMMANDS.iter().map(|c| c.0).collect();
    nrs.sort();
    nrs.dedup();
    assert_eq!(nrs.len(), ioctl::COMMANDS.len());
    for &(nr, size, name) in ioctl::COMMANDS {
        let cmd = ioctl::iowr(nr, size);
        assert_eq!(
            ioctl::decode(cmd),
            (ioctl::IOC_READ_WRITE, ioctl::IOC_MAGIC, nr, size),
            "{name}"
        );
        assert!(size <= ioctl::MAX_ARG_SIZE, "{name}");
    }
    // Pinned values: changing one is an ABI break and must bump ABI_VERSION.
    assert_eq!(ioctl::IOC_VERSION, 0xc038_b700);
    assert_eq!(ioctl::IOC_STATUS, 0xc1c8_b701);
    assert_eq!(ioctl::IOC_FORK_CAPTURE, 0xc088_b707);
    assert_eq!(ioctl::IOC_FORK_CLAIM, 0xc058_b70a);
    assert_eq!(ioctl::IOC_FORK_RESUME, 0xc030_b708);
    assert_eq!(ioctl::IOC_FORK_RELEASE, 0xc028_b709);
}

#[test]
fn struct_sizes_and_offsets_are_pinned() {
    use std::mem::{offset_of, size_of};
    assert_eq!(size_of::<ioctl::Header>(), 8);
    assert_eq!(size_of::<ioctl::VersionArgs>(), 56);
    assert_eq!(size_of::<ioctl::DeviceInfo>(), 48);
    assert_eq!(size_of::<ioctl::Counters>(), 240);
    assert_eq!(size_of::<ioctl::StatusArgs>(), 24 + 4 * 48 + 240);
    assert_eq!(offset_of!(ioctl::ForkCaptureArgs, claim_token), 16);
    assert_eq!(offset_of!(ioctl::ForkCaptureArgs, child_vdso), 24);
    assert_eq!(offset_of!(ioctl::ForkClaimArgs, snapshot_id), 24);
    assert_eq!(offset_of!(ioctl::ForkResumeArgs, snapshot_id), 24);
    assert_eq!(offset_of!(ioctl::ForkReleaseArgs, flags), 32);
    assert_eq!(size_of::<ioctl::RemoteOpenArgs>(), 80);
    assert_eq!(offset_of!(ioctl::RemoteOpenArgs, region_id), 24);
    assert_eq!(offset_of!(ioctl::RemoteOpenArgs, handle), 48);
    assert_eq!(size_of::<ioctl::RemoteReadArgs>(), 72);
    assert_eq!(offset_of!(ioctl::RemoteReadArgs, batch_pages), 40);
    // ABI 3: list entries carry the local children and the seed's and parent's pids.
    // ABI 4: counters for local file mappings, remote faults and working sets.
    // ABI 5: the resume report's connect, open, fetch and in-module times.
    // ABI 7: the counter readahead_windows.
    assert_eq!(ioctl::ABI_VERSION, 7);
    assert_eq!(size_of::<ioctl::ForkCaptureArgs>(), 136);
    assert_eq!(offset_of!(ioctl::ForkCaptureArgs, connect_ns), 104);
    assert_eq!(size_of::<ioctl::SnapshotEntry>(), 48);
    assert_eq!(offset_of!(ioctl::SnapshotEntry, children), 36);
    assert_eq!(offset_of!(ioctl::SnapshotEntry, parent_pid), 44);
    assert_eq!(size_of::<ioctl::SnapshotListArgs>(), 32);
}

#[test]
fn header_for_struct_carries_version_and_size() {
    let h = ioctl::Header::for_struct::<ioctl::StatusArgs>();
    assert_eq!(h.abi_version, ioctl::ABI_VERSION);
    assert_eq!(h.size as usize, std::mem::size_of::<ioctl::StatusArgs>());
}

#[test]
fn pod_round_trip_and_short_input() {
    let v = ioctl::RemoteReadArgs {
        handle: 7,
        offset: 4096,
        length: 8192,
        batch_pages: 3,
        ..Default::default()
    };
    let bytes = v.as_bytes().to_vec();
    assert_eq!(ioctl::RemoteReadArgs::from_bytes(&bytes), Some(v));
    assert_eq!(ioctl::RemoteReadArgs::from_bytes(&bytes[..10]), None);
}

#[test]
fn pattern_detects_a_misplaced_page() {
    let mut page = vec![0u8; 4096];
    ioctl::fill_pattern(42, 8192, &mut page);
    assert_eq!(ioctl::check_pattern(42, 8192, &page), None);
    assert_eq!(ioctl::check_pattern(42, 4096, &page), Some(0));
    assert_eq!(ioctl::check_pattern(43, 8192, &page), Some(0));
    page[4000] ^= 1;
    assert_eq!(ioctl::check_pattern(42, 8192, &page), Some(500));
}

#[test]
fn wire_open_round_trip() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let req = OpenRegion {
        region_id: 99,
        proof: [7; 16],
    };
    let n = req.encode(5, &mut buf).unwrap();
    let (h, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!((h.kind, h.seq, h.status), (Kind::OpenRegion, 5, 0));
    assert_eq!(OpenRegion::decode(body).unwrap(), req);
}

#[test]
fn accept_data_carries_the_challenge() {
    let c = [0xabu8; 16];
    let mut padded = wire::encode_accept_data(&c).to_vec();
    // IB CM pads the accept's private data.
    padded.resize(196, 0);
    assert_eq!(wire::decode_accept_data(&padded), Some(c));
    assert_eq!(wire::decode_accept_data(&padded[..19]), None);
    padded[0] ^= 1;
    assert_eq!(wire::decode_accept_data(&padded), None);
    assert_eq!(wire::decode_accept_data(&[]), None);
}

#[test]
fn wire_reply_round_trip_and_consistency() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let keys = [1u32, 2, 3];
    let facts = RegionFacts {
        size: 3 * 2 * 1024 * 1024 - 4096,
        chunk_bytes: 2 << 20,
        iova_base: 0x1234_5678_9000,
        packed_iova_base: 0,
        info: 777,
        status: snapshot::status_word(true, 3),
        desc_mac: [5; 16],
        lead_pages: 7,
        packed_pages: 0,
    };
    let n = OpenRegionReply::encode(9, &facts, keys.iter().copied(), &mut buf).unwrap();
    let (h, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!((h.kind, h.seq), (Kind::OpenRegionReply, 9));
    let r = OpenRegionReply::decode(body).unwrap();
    assert_eq!((r.n_keys(), r.facts), (3, facts));
    // The status word: bit 0 live, the version above it; a release changes only bit 0.
    assert_eq!(r.facts.status, 7);
    assert_eq!(
        snapshot::status_word(false, 3) ^ snapshot::status_word(true, 3),
        1
    );
    assert_eq!((r.rkey(0), r.rkey(2), r.rkey(3)), (Some(1), Some(3), None));
    // Size not covered exactly by the keys: refused.
    let uncovered = RegionFacts {
        size: 4 * (2 << 20),
        chunk_bytes: 2 << 20,
        ..RegionFacts::default()
    };
    let n = OpenRegionReply::encode(9, &uncovered, keys.iter().copied(), &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!(OpenRegionReply::decode(body), Err(WireError::BadLength));
    // 48 lead pages stored as they are, packed: 49 region pages, accepted.
    assert_eq!(snapshot::MAX_LEAD_REGION_PAGES, 49);
    let most_lead = RegionFacts {
        lead_pages: snapshot::MAX_LEAD_REGION_PAGES as u32,
        ..facts
    };
    let n = OpenRegionReply::encode(9, &most_lead, keys.iter().copied(), &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    assert!(OpenRegionReply::decode(body).is_ok());
    // More lead pages than a packed copy of 48 pages takes: refused.
    let too_many_lead = RegionFacts {
        lead_pages: snapshot::MAX_LEAD_REGION_PAGES as u32 + 1,
        ..facts
    };
    let n = OpenRegionReply::encode(9, &too_many_lead, keys.iter().copied(), &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!(OpenRegionReply::decode(body), Err(WireError::BadLength));
    // A region whose addresses would wrap past the end of the address space: refused.
    let wrapping = RegionFacts {
        iova_base: u64::MAX - 4095,
        ..facts
    };
    let n = OpenRegionReply::encode(9, &wrapping, keys.iter().copied(), &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!(OpenRegionReply::decode(body), Err(WireError::BadLength));
    // Too many keys for one message.
    let many = vec![0u32; wire::MAX_REPLY_RKEYS + 1];
    let page = RegionFacts {
        size: 4096,
        chunk_bytes: 4096,
        ..RegionFacts::default()
    };
    assert_eq!(
        OpenRegionReply::encode(1, &page, many.into_iter(), &mut buf),
        Err(WireError::TooLarge)
    );
}

#[test]
fn wire_reply_packed_keys() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let keys = [1u32, 2];
    let facts = RegionFacts {
        size: 4 << 20,
        chunk_bytes: 2 << 20,
        info: 4096,
        packed_pages: 513,
        iova_base: 1 << 40,
        packed_iova_base: 3 << 50,
        ..RegionFacts::default()
    };
    let runs = [WsRun { first: 4, pages: 9 }];
    let n = OpenRegionReply::encode_with_packed(
        3,
        &facts,
        keys.iter().copied(),
        &[7, 8],
        &[],
        &runs,
        &mut buf,
    )
    .unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    let r = OpenRegionReply::decode(body).unwrap();
    assert_eq!((r.facts, r.n_keys(), r.n_packed_keys()), (facts, 2, 2));
    assert_eq!(
        (
            r.rkey(1),
            r.packed_rkey(0),
            r.packed_rkey(1),
            r.packed_rkey(2)
        ),
        (Some(2), Some(7), Some(8), None)
    );
    assert_eq!((r.n_runs(), r.run(0)), (1, Some(runs[0])));
    // Packed keys that do not cover the packed pages exactly: refused.
    for (pages, keys_given) in [(513u32, &[7u32][..]), (512, &[7, 8][..]), (0, &[7][..])] {
        let f = RegionFacts {
            packed_pages: pages,
            ..facts
        };
        let n = OpenRegionReply::encode_with_packed(
            3,
            &f,
            keys.iter().copied(),
            keys_given,
            &[],
            &[],
            &mut buf,
        )
        .unwrap();
        let (_, body) = wire::decode(&buf[..n]).unwrap();
        assert_eq!(
            OpenRegionReply::decode(body),
            Err(WireError::BadLength),
            "{pages} {keys_given:?}"
        );
    }
    // A copy larger than any working set: refused.
    let huge = RegionFacts {
        packed_pages: packed::MAX_PACKED_PAGES as u32 + 1,
        chunk_bytes: 1 << 30,
        ..facts
    };
    let n = OpenRegionReply::encode_with_packed(
        3,
        &huge,
        [1u32, 2, 3, 4].into_iter(),
        &[7],
        &[],
        &[],
        &mut buf,
    );
    let (_, body) = wire::decode(&buf[..n.unwrap()]).unwrap();
    assert_eq!(OpenRegionReply::decode(body), Err(WireError::BadLength));
    // The packed keys count against the room for the working set (fixed part 88 bytes).
    assert_eq!(
        OpenRegionReply::room_for_runs(4, 0),
        (wire::MSG_SIZE - wire::HEADER_LEN - 88 - 4 * 4) / 12
    );
}

/// A copy of `pages` (index, encoding) as the parent writes it.
fn packed_copy(pages: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut w = packed::PackedWriter::new(pages.len()).unwrap();
    let mut out = vec![0u8; w.header_len()];
    for (i, (index, enc)) in pages.iter().enumerate() {
        w.entry(&mut out, i, *index, enc.len()).unwrap();
    }
    for (_, enc) in pages {
        out.extend_from_slice(enc);
    }
    w.finish(&mut out).unwrap();
    // Padded to whole pages, as registered.
    out.resize(out.len().div_ceil(4096) * 4096, 0xee);
    out
}

#[test]
fn packed_copy_round_trip() {
    let pages = vec![
        (7u64, vec![1u8; 4096]),
        (1 << 40, vec![2u8; 17]),
        (9, vec![3u8; 1]),
    ];
    let bytes = packed_copy(&pages);
    let idx = packed::PackedIndex::parse(&bytes).unwrap();
    assert_eq!(idx.len(), 3);
    let got: Vec<_> = idx
        .pages()
        .map(|p| (p.index, p.encoded.to_vec(), p.is_stored()))
        .collect();
    assert_eq!(
        got,
        vec![
            (7, vec![1u8; 4096], true),
            (1 << 40, vec![2u8; 17], false),
            (9, vec![3u8; 1], false)
        ]
    );
    let empty = packed_copy(&[]);
    assert!(packed::PackedIndex::parse(&empty).unwrap().is_empty());
    assert!(packed::PackedWriter::new(wire::MAX_WS_PAGES as usize + 1).is_none());
}

#[test]
fn packed_copy_read_piece_by_piece() {
    let pages = vec![
        (7u64, vec![1u8; 4096]),
        (3, vec![2u8; 17]),
        (9, vec![3u8; 5]),
    ];
    let bytes = packed_copy(&pages);
    // Too short for the header; then the header and table of three entries.
    assert_eq!(packed::head_len(&bytes[..11]), None);
    assert_eq!(packed::head_len(&bytes[..12]), Some(16 + 3 * 12));
    assert_eq!(packed::head_len(&bytes), Some(16 + 3 * 12));
    // Each page's encoding ends where the walk from payload_start says.
    let idx = packed::PackedIndex::parse(&bytes).unwrap();
    assert_eq!(idx.payload_start(), 16 + 3 * 12);
    let mut at = idx.payload_start();
    for (p, (_, enc)) in idx.pages().zip(&pages) {
        assert_eq!(&bytes[at..at + p.encoded.len()], enc.as_slice());
        at += p.encoded.len();
    }
    // A count beyond the most pages a copy can hold has no head.
    let mut bad = bytes.clone();
    bad[8..12].copy_from_slice(&(wire::MAX_WS_PAGES as u32 + 1).to_le_bytes());
    assert_eq!(packed::head_len(&bad), None);
}

#[test]
fn packed_copy_refuses_bad_copies() {
    use packed::{PackedError, PackedIndex};
    let good = packed_copy(&[(7u64, vec![1u8; 100]), (8, vec![2u8; 50])]);
    let set_u32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    // (byte offset, u32 written there, what the parse must say)
    let cases = [
        (0, 0x1234_5678, PackedError::BadMagic),
        (4, 9, PackedError::BadVersion),
        // More pages than a working set holds.
        (8, wire::MAX_WS_PAGES as u32 + 1, PackedError::BadLength),
        // A table past the end.
        (8, 400, PackedError::Truncated),
        // A payload past the end, or lengths that do not add up to it.
        (12, u32::MAX, PackedError::Truncated),
        (12, 151, PackedError::BadLength),
    ];
    for (at, value, want) in cases {
        let mut bad = good.clone();
        set_u32(&mut bad, at, value);
        assert_eq!(PackedIndex::parse(&bad).unwrap_err(), want, "{at} {value}");
    }
    // An entry of 0 or more than a page.
    for len in [0u32, 4097, u32::MAX] {
        let mut bad = good.clone();
        set_u32(&mut bad, packed::HEADER_LEN + 8, len);
        assert!(PackedIndex::parse(&bad).is_err(), "{len}");
    }
    assert_eq!(
        PackedIndex::parse(&good[..10]).unwrap_err(),
        PackedError::Truncated
    );
    // Any truncation of the bytes that matter is refused, never a panic.
    let used = packed::HEADER_LEN + 2 * packed::ENTRY_LEN + 150;
    for cut in 0..used {
        assert!(PackedIndex::parse(&good[..cut]).is_err(), "{cut}");
    }
}

#[test]
fn wire_status_and_close() {
    let mut buf = [0u8; 64];
    let n = wire::encode_status(Kind::OpenRegionReply, 3, -13, &mut buf).unwrap();
    let (h, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!((h.status, body.len()), (-13, 0));
    let n = CloseRegion { region_id: 4 }.encode(8, &mut buf).unwrap();
    let (h, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!(h.kind, Kind::CloseRegion);
    assert_eq!(CloseRegion::decode(body).unwrap().region_id, 4);
    assert_eq!(
        OpenRegion {
            region_id: 1,
            proof: [0; 16]
        }
        .encode(1, &mut buf[..20]),
        Err(WireError::TooLarge)
    );
}

#[test]
fn wire_rejects_bad_headers() {
    let mut buf = [0u8; 64];
    let n = CloseRegion { region_id: 4 }.encode(8, &mut buf).unwrap();
    let mut bad = buf;
    bad[0] ^= 1;
    assert_eq!(wire::decode(&bad[..n]), Err(WireError::BadMagic));
    let mut bad = buf;
    bad[4] = (wire::WIRE_VERSION + 1) as u8;
    assert_eq!(wire::decode(&bad[..n]), Err(WireError::BadVersion));
    let mut bad = buf;
    bad[6] = 77;
    assert_eq!(wire::decode(&bad[..n]), Err(WireError::UnknownKind));
    assert_eq!(wire::decode(&buf[..n - 1]), Err(WireError::BadLength));
    assert_eq!(wire::decode(&buf[..n + 1]), Err(WireError::BadLength));
    assert_eq!(wire::decode(&buf[..3]), Err(WireError::Truncated));
}

fn run(first: u64, pages: u32) -> WsRun {
    WsRun { first, pages }
}

#[test]
fn working_set_runs_from_pages() {
    let mut out = [WsRun::default(); 8];
    // Unsorted, with duplicates: sorted, merged where adjacent.
    let mut pages = [7u64, 3, 4, 5, 5, 100, 6, 101];
    let n = wire::runs_from_pages(&mut pages, &mut out);
    assert_eq!(&out[..n], &[run(3, 5), run(100, 2)]);
    // Too many runs for the room: nearby runs merge, gaps included.
    let mut pages = [0u64, 2, 4, 6, 20, 22];
    let n = wire::runs_from_pages(&mut pages, &mut out[..2]);
    assert_eq!(&out[..n], &[run(0, 7), run(20, 3)]);
    let n = wire::runs_from_pages(&mut pages, &mut out[..1]);
    assert_eq!(&out[..n], &[run(0, 23)]);
    // Only as many gaps as needed are merged, the smallest first: of four equal gaps
    // one goes for room for four runs.
    let mut pages = [16u64, 0, 4, 8, 12];
    let n = wire::runs_from_pages(&mut pages, &mut out[..4]);
    assert_eq!(&out[..n], &[run(0, 5), run(8, 1), run(12, 1), run(16, 1)]);
    let mut pages = [0u64, 10, 12, 30, 33];
    let n = wire::runs_from_pages(&mut pages, &mut out[..3]);
    assert_eq!(&out[..n], &[run(0, 1), run(10, 3), run(30, 4)]);
    // Indices in far VMA windows (page-cache indices pass 32 bits) stay; nothing gives
    // nothing.
    let far = snapshot::window_offset(3) / snapshot::PAGE;
    let mut pages = [far + 1, 9, far, u64::MAX];
    let n = wire::runs_from_pages(&mut pages, &mut out);
    assert_eq!(&out[..n], &[run(9, 1), run(far, 2)]);
    assert_eq!(wire::runs_from_pages(&mut [], &mut out), 0);
    // Runs too far apart to merge: the lowest that fit are kept.
    let mut pages: Vec<u64> = (0..10).map(|i| i * 100_000).collect();
    let n = wire::runs_from_pages(&mut pages, &mut out[..3]);
    assert_eq!(&out[..n], &[run(0, 1), run(100_000, 1), run(200_000, 1)]);
    // At most MAX_WS_PAGES pages in all.
    let mut many: Vec<u64> = (0..wire::MAX_WS_PAGES + 100).map(|p| p * 2).collect();
    let mut big = vec![WsRun::default(); 4];
    let n = wire::runs_from_pages(&mut many, &mut big);
    let total: u64 = big[..n].iter().map(|r| u64::from(r.pages)).sum();
    assert_eq!(total, wire::MAX_WS_PAGES);
}

#[test]
fn working_set_report_round_trip_and_refusals() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let runs = [run(1, 2), run(10, 5)];
    let n = WorkingSetReport::encode(42, &runs, &[], 7, &mut buf).unwrap();
    let (h, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!((h.kind, h.seq), (Kind::WorkingSet, 7));
    let r = WorkingSetReport::decode(body).unwrap();
    assert_eq!(r.region_id, 42);
    assert_eq!(
        (r.n_runs(), r.run(0), r.run(1), r.run(2)),
        (2, Some(runs[0]), Some(runs[1]), None)
    );
    // Overlapping, unsorted, empty and oversized runs are refused.
    for bad in [
        vec![run(1, 5), run(3, 1)],
        vec![run(10, 1), run(1, 1)],
        vec![run(1, 0)],
        vec![run(0, wire::MAX_WS_PAGES as u32 + 1)],
        vec![run(u64::MAX, 2)],
    ] {
        let n = WorkingSetReport::encode(1, &bad, &[], 1, &mut buf).unwrap();
        let (_, body) = wire::decode(&buf[..n]).unwrap();
        assert_eq!(
            WorkingSetReport::decode(body),
            Err(WireError::BadLength),
            "{bad:?}"
        );
    }
    // A count that disagrees with the length, and more runs than a message holds.
    let n = WorkingSetReport::encode(1, &runs, &[], 1, &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    assert!(WorkingSetReport::decode(&body[..body.len() - 8]).is_err());
    let too_many = vec![run(0, 1); wire::MAX_WS_RUNS + 1];
    assert_eq!(
        WorkingSetReport::encode(1, &too_many, &[], 1, &mut buf),
        Err(WireError::TooLarge)
    );
}

#[test]
fn wire_reply_carries_the_working_set_after_the_keys() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let facts = RegionFacts {
        size: 8192,
        chunk_bytes: 4096,
        ..RegionFacts::default()
    };
    let runs = [run(3, 4), run(9, 1)];
    let n = OpenRegionReply::encode_with_working_set(
        5,
        &facts,
        [1u32, 2].into_iter(),
        &[],
        &runs,
        &mut buf,
    )
    .unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    let r = OpenRegionReply::decode(body).unwrap();
    assert_eq!(
        (r.n_keys(), r.rkey(1), r.n_runs(), r.run(0), r.run(1)),
        (2, Some(2), 2, Some(runs[0]), Some(runs[1]))
    );
    // Room: whatever the keys leave of the message.
    let room = OpenRegionReply::room_for_runs(2, 0);
    let full = vec![run(0, 1); room];
    let full: Vec<WsRun> = full
        .iter()
        .enumerate()
        .map(|(i, _)| run(i as u64 * 2, 1))
        .collect();
    assert!(OpenRegionReply::encode_with_working_set(
        5,
        &facts,
        [1u32, 2].into_iter(),
        &[],
        &full,
        &mut buf
    )
    .is_ok());
    let over: Vec<WsRun> = (0..=room).map(|i| run(i as u64 * 2, 1)).collect();
    assert_eq!(
        OpenRegionReply::encode_with_working_set(
            5,
            &facts,
            [1u32, 2].into_iter(),
            &[],
            &over,
            &mut buf
        ),
        Err(WireError::TooLarge)
    );
    // Overlapping runs in a reply are refused like in a report.
    let bad = [run(3, 4), run(5, 1)];
    let n = OpenRegionReply::encode_with_working_set(
        5,
        &facts,
        [1u32, 2].into_iter(),
        &[],
        &bad,
        &mut buf,
    )
    .unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    assert_eq!(OpenRegionReply::decode(body), Err(WireError::BadLength));
}

fn hot(index: u64, region_page: u32) -> HotPage {
    HotPage { index, region_page }
}

#[test]
fn working_set_report_carries_first_touches_in_order() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let runs = [run(1, 2), run(10, 5)];
    // Touch order, not sorted: the child reads them in the descriptor's batch.
    let first = [hot(12, 9), hot(1, 3), hot(u64::MAX / 4096, u32::MAX)];
    let n = WorkingSetReport::encode(42, &runs, &first, 7, &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    let r = WorkingSetReport::decode(body).unwrap();
    assert_eq!((r.n_runs(), r.n_hot()), (2, 3));
    assert_eq!(
        (r.hot(0), r.hot(1), r.hot(2), r.hot(3)),
        (Some(first[0]), Some(first[1]), Some(first[2]), None)
    );
    assert_eq!(r.run(1), Some(runs[1]));
    // Cut short, or more hot pages than allowed: refused.
    assert!(WorkingSetReport::decode(&body[..body.len() - 12]).is_err());
    let mut forged = body.to_vec();
    forged[12..16].copy_from_slice(&(wire::MAX_HOT_PAGES as u32 + 1).to_le_bytes());
    assert_eq!(WorkingSetReport::decode(&forged), Err(WireError::BadLength));
    let too_many = vec![hot(1, 1); wire::MAX_HOT_PAGES + 1];
    assert_eq!(
        WorkingSetReport::encode(1, &runs, &too_many, 1, &mut buf),
        Err(WireError::TooLarge)
    );
    // A full report (most runs and most hot pages) fits one message.
    let runs: Vec<WsRun> = (0..wire::MAX_WS_RUNS)
        .map(|i| run(i as u64 * 2, 1))
        .collect();
    let first = vec![hot(3, 3); wire::MAX_HOT_PAGES];
    let n = WorkingSetReport::encode(1, &runs, &first, 1, &mut buf).unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    let r = WorkingSetReport::decode(body).unwrap();
    assert_eq!(
        (r.n_runs(), r.n_hot()),
        (wire::MAX_WS_RUNS, wire::MAX_HOT_PAGES)
    );
}

#[test]
fn wire_reply_carries_first_touches_before_the_runs() {
    let mut buf = [0u8; wire::MSG_SIZE];
    let facts = RegionFacts {
        size: 8192,
        chunk_bytes: 4096,
        ..RegionFacts::default()
    };
    let keys = || [1u32, 2].into_iter();
    let first = [hot(7, 2), hot(3, 1)];
    let runs = [run(3, 5)];
    let n = OpenRegionReply::encode_with_working_set(5, &facts, keys(), &first, &runs, &mut buf)
        .unwrap();
    let (_, body) = wire::decode(&buf[..n]).unwrap();
    let r = OpenRegionReply::decode(body).unwrap();
    assert_eq!(
        (
            r.n_keys(),
            r.rkey(1),
            r.n_hot(),
            r.hot(0),
            r.hot(1),
            r.hot(2)
        ),
        (2, Some(2), 2, Some(first[0]), Some(first[1]), None)
    );
    assert_eq!((r.n_runs(), r.run(0)), (1, Some(runs[0])));
    // Hot pages take room from the runs; at most MAX_HOT_PAGES of them.
    assert_eq!(OpenRegionReply::room_for_hot(2), wire::MAX_HOT_PAGES);
    assert_eq!(
        OpenRegionReply::room_for_runs(2, 10),
        OpenRegionReply::room_for_runs(2, 0) - 10
    );
    let over = vec![hot(1, 1); wire::MAX_HOT_PAGES + 1];
    assert_eq!(
        OpenRegionReply::encode_with_working_set(5, &facts, keys(), &over, &[], &mut buf),
        Err(WireError::TooLarge)
    );
    // With the most keys a reply holds, no room for either.
    assert_eq!(OpenRegionReply::room_for_hot(wire::MAX_REPLY_RKEYS), 0);
    assert_eq!(OpenRegionReply::room_for_runs(wire::MAX_REPLY_RKEYS, 0), 0);
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok((h, body)) = wire::decode(&bytes) {
            prop_assert_eq!(body.len(), h.body_len as usize);
            let _ = OpenRegion::decode(body);
            let _ = CloseRegion::decode(body);
            if let Ok(r) = OpenRegionReply::decode(body) {
                for i in 0..=r.n_keys() {
                    let _ = r.rkey(i);
                }
                for i in 0..=r.n_runs() {
                    let _ = r.run(i);
                }
                for i in 0..=r.n_hot() {
                    let _ = r.hot(i);
                }
            }
            if let Ok(r) = WorkingSetReport::decode(body) {
                for i in 0..=r.n_runs() {
                    let _ = r.run(i);
                }
                for i in 0..=r.n_hot() {
                    let _ = r.hot(i);
                }
            }
        }
    }

    #[test]
    fn decode_of_mutated_reply_is_safe(keys in proptest::collection::vec(any::<u32>(), 1..40),
                                       flip in 0usize..400, bit in 0u8..8) {
        let mut buf = [0u8; wire::MSG_SIZE];
        let size = keys.len() as u64 * 8192;
        let facts = RegionFacts { size, chunk_bytes: 8192, ..RegionFacts::default() };
        let n = OpenRegionReply::encode(1, &facts, keys.iter().copied(), &mut buf).unwrap();
        if flip < n {
            buf[flip] ^= 1 << bit;
        }
        if let Ok((_, body)) = wire::decode(&buf[..n]) {
            if let Ok(r) = OpenRegionReply::decode(body) {
                prop_assert!(r.facts.size <= r.facts.chunk_bytes * r.n_keys() as u64);
            }
        }
    }

    #[test]
    fn open_round_trips(id in any::<u64>(), secret in any::<[u8; 16]>(), seq in any::<u64>()) {
        let mut buf = [0u8; 128];
        let n = OpenRegion { region_id: id, proof: secret }.encode(seq, &mut buf).unwrap();
        let (h, body) = wire::decode(&buf[..n]).unwrap();
        prop_assert_eq!(h.seq, seq);
        prop_assert_eq!(OpenRegion::decode(body).unwrap(), OpenRegion { region_id: id, proof: secret });
    }
}

/// The C header's `struct mitosis_counters` lists the counters of the one Rust
/// declaration, in the same order (the header is written by hand for C users).
#[test]
fn c_header_counters_match_the_abi() {
    let header = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../lib/include/mitosis.h"
    ))
    .unwrap();
    let body = header
        .split("struct mitosis_counters {")
        .nth(1)
        .and_then(|s| s.split("};").next())
        .unwrap();
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uint64_t "))
        .flat_map(|l| l.trim_end_matches(';').split(','))
        .map(str::trim)
        .filter(|n| !n.starts_with("_reserved"))
        .collect();
    assert_eq!(names, ioctl::Counters::NAMES);
    // 30 counters since ABI 7, no reserved slot.
    assert_eq!(
        std::mem::size_of::<ioctl::Counters>(),
        8 * ioctl::Counters::NAMES.len()
    );
    assert_eq!(std::mem::size_of::<ioctl::Counters>(), 240);
}

/// The C hostile peer (tests/guest/c/hostile_peer.c) speaks the wire by hand: its
/// version and open-reply layout must follow the Rust codec's.
#[test]
fn c_hostile_peer_speaks_this_wire_version() {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/guest/c/hostile_peer.c"
    ))
    .unwrap();
    let version = format!("#define WIRE_VERSION {}", wire::WIRE_VERSION);
    assert!(src.contains(&version), "hostile_peer.c lacks `{version}`");
    // A one-key reply: its rkey's offset in the body and the body length.
    let mut buf = [0u8; wire::MSG_SIZE];
    let facts = RegionFacts {
        size: 4096,
        chunk_bytes: 4096,
        iova_base: 0x1122_3344_5566_7000,
        packed_iova_base: 0x2233_4455_6677_8000,
        ..RegionFacts::default()
    };
    let n = OpenRegionReply::encode(1, &facts, [0xabcd_ef01u32].into_iter(), &mut buf).unwrap();
    let body = n - wire::HEADER_LEN;
    // Where the two bases sit in the body.
    let offset_of = |v: u64| {
        buf[wire::HEADER_LEN..n]
            .windows(8)
            .position(|w| w == v.to_le_bytes())
            .unwrap()
    };
    let (base_at, packed_base_at) = (
        offset_of(facts.iova_base),
        offset_of(facts.packed_iova_base),
    );
    assert_eq!(&buf[n - 4..n], &0xabcd_ef01u32.to_le_bytes());
    // The lying parent's reply: the same key, then three 12-byte first-touch pages
    // (the descriptor's page, a page past the region, an index of no VMA at the
    // first data page) and two 12-byte working-set runs.
    let first = [
        HotPage {
            index: 0,
            region_page: 0,
        },
        HotPage {
            index: 0,
            region_page: u32::MAX,
        },
        HotPage {
            index: snapshot::window_offset(60000) / snapshot::PAGE,
            region_page: 1,
        },
    ];
    let runs = [
        WsRun {
            first: 0,
            pages: 32767,
        },
        WsRun {
            first: snapshot::window_offset(60000) / snapshot::PAGE,
            pages: 1,
        },
    ];
    let n2 = OpenRegionReply::encode_with_working_set(
        1,
        &facts,
        [0xabcd_ef01u32].into_iter(),
        &first,
        &runs,
        &mut buf,
    )
    .unwrap();
    let body2 = n2 - wire::HEADER_LEN;
    let (_, decoded) = wire::decode(&buf[..n2]).unwrap();
    let reply = OpenRegionReply::decode(decoded).unwrap();
    assert_eq!(
        (reply.hot(2), reply.run(1)),
        (Some(first[2]), Some(runs[1]))
    );
    assert_eq!(runs[1].first, 60000u64 << 35);
    assert_eq!(body2 - body, 5 * 12);
    // The lying parent's entries follow the keys (`after` in the C source).
    let at = |off: usize| {
        if off == 0 {
            "after".to_string()
        } else {
            format!("after + {off}")
        }
    };
    let runs_at = 3 * 12;
    // With a packed copy's key as well: that key right after the region's.
    let packed_facts = RegionFacts {
        packed_pages: 1,
        ..facts
    };
    let n3 = OpenRegionReply::encode_with_packed(
        1,
        &packed_facts,
        [0xabcd_ef01u32].into_iter(),
        &[0x1234_5678],
        &[],
        &[],
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[n3 - 4..n3], &0x1234_5678u32.to_le_bytes());
    let body3 = n3 - wire::HEADER_LEN;
    assert_eq!(body3, body + 4);
    for needle in [
        format!("#define REPLY_FIXED {}", body - 4),
        "put32(f + REPLY_FIXED, data->rkey)".to_string(),
        "put32(f + REPLY_FIXED + 4, packed_mr->rkey)".to_string(),
        "size_t body = REPLY_FIXED + keys + (lying_ws ? 3 * 12 + 2 * 12 : 0)".to_string(),
        "size_t keys = 4 * (1 + !!packed_mr)".to_string(),
        "send_msg(&c, out, HDR_LEN + body)".to_string(),
        "*rkey = get32(r + HDR_LEN + REPLY_FIXED)".to_string(),
        format!("*base = get64(r + HDR_LEN + {base_at})"),
        format!("put64(f + {base_at}, SERVE_BASE)"),
        format!("put64(f + {packed_base_at}, packed_mr ? SERVE_PACKED_BASE : 0)"),
        format!("put32(f + {}, lying_ws ? 3 : 0)", body - 16),
        format!("put32(f + {}, (uint32_t)(announced / PAGE))", body - 12),
        format!("put32(f + {}, !!packed_mr)", body - 8),
        "uint8_t *f = out + HDR_LEN, *after = f + REPLY_FIXED + keys".to_string(),
        format!("put64({}, 0)", at(0)),
        format!("put32({}, 0)", at(8)),
        format!("put64({}, 0)", at(12)),
        format!("put32({}, 0xffffffffu)", at(20)),
        format!("put64({}, 60000ull << 35)", at(24)),
        format!("put32({}, desc_pages)", at(32)),
        format!("put64({}, 0)", at(runs_at)),
        format!("put32({}, 32767)", at(runs_at + 8)),
        format!("put64({}, 60000ull << 35)", at(runs_at + 12)),
        format!("put32({}, 1)", at(runs_at + 20)),
    ] {
        assert!(src.contains(&needle), "hostile_peer.c lacks `{needle}`");
    }
}

proptest! {
    /// Runs cover every page, fit the room, and read the fewest untouched pages: the
    /// smallest gaps, as many as the room needs merged (all gaps here are mergeable).
    #[test]
    fn runs_from_pages_merges_the_smallest_gaps(
        set in proptest::collection::btree_set(0u64..3000, 1..200),
        cap in 1usize..40,
    ) {
        let mut pages: Vec<u64> = set.iter().copied().collect();
        let mut out = vec![WsRun::default(); cap];
        let n = wire::runs_from_pages(&mut pages, &mut out);
        let runs = &out[..n];
        prop_assert!(n <= cap);
        for p in &set {
            prop_assert!(runs.iter().any(|r| *p >= r.first && *p < r.first + u64::from(r.pages)));
        }
        let sorted: Vec<u64> = set.iter().copied().collect();
        let mut gaps: Vec<u64> = sorted.windows(2).map(|w| w[1] - w[0] - 1).filter(|&g| g > 0).collect();
        gaps.sort_unstable();
        let exact = gaps.len() + 1;
        let merged: u64 = gaps.iter().take(exact.saturating_sub(cap)).sum();
        let total: u64 = runs.iter().map(|r| u64::from(r.pages)).sum();
        prop_assert_eq!(total, set.len() as u64 + merged);
    }
}
