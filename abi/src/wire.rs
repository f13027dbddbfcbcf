// SPDX-License-Identifier: GPL-2.0

//! Control messages between hosts (RDMA SEND/RECV on the pooled RC connection).
//!
//! Every message is at most [`MSG_SIZE`] bytes: a fixed [`MsgHeader`] followed by a body
//! whose layout depends on [`Kind`]. All integers are little-endian, whatever the hosts.
//! Decoding checks every length against the received byte count; a malformed message is
//! an error, never a panic or an out-of-bounds access.

/// Size of every receive buffer, so the largest message.
pub const MSG_SIZE: usize = 4096;
/// "MITO".
pub const MAGIC: u32 = 0x4D49_544F;
pub const WIRE_VERSION: u16 = 9;
/// Bytes of the encoded [`MsgHeader`].
pub const HEADER_LEN: usize = 24;

/// Why a message could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the layout needs.
    Truncated,
    /// Does not fit in [`MSG_SIZE`] (or the given buffer).
    TooLarge,
    BadMagic,
    BadVersion,
    UnknownKind,
    /// A count or length field disagrees with the message size.
    BadLength,
}

/// Message kinds.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Open a published region: body [`OpenRegion`].
    OpenRegion = 1,
    /// Reply to `OpenRegion`: body [`OpenRegionReply`] when `status == 0`, else empty.
    OpenRegionReply = 2,
    /// The opener is done with a region: body [`CloseRegion`]; no reply.
    CloseRegion = 3,
    /// The pages an opener's children fetched from a snapshot: body
    /// [`WorkingSetReport`]; no reply.
    WorkingSet = 4,
}

impl Kind {
    fn from_u16(v: u16) -> Result<Kind, WireError> {
        match v {
            1 => Ok(Kind::OpenRegion),
            2 => Ok(Kind::OpenRegionReply),
            3 => Ok(Kind::CloseRegion),
            4 => Ok(Kind::WorkingSet),
            _ => Err(WireError::UnknownKind),
        }
    }
}

/// The fixed part of every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgHeader {
    pub kind: Kind,
    /// Request sequence number, echoed by the reply.
    pub seq: u64,
    /// 0, or a negative errno in replies.
    pub status: i32,
    /// Bytes of body after the header.
    pub body_len: u32,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let s = self.take(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(u64::from_le_bytes(b))
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(WireError::TooLarge)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(WireError::TooLarge)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}

fn check_room(buf: &[u8], total: usize) -> Result<(), WireError> {
    if total > MSG_SIZE || total > buf.len() {
        return Err(WireError::TooLarge);
    }
    Ok(())
}

fn put_header(
    w: &mut Writer<'_>,
    kind: Kind,
    seq: u64,
    status: i32,
    body_len: usize,
) -> Result<(), WireError> {
    w.put(&MAGIC.to_le_bytes())?;
    w.put(&WIRE_VERSION.to_le_bytes())?;
    w.put(&(kind as u16).to_le_bytes())?;
    w.put(&seq.to_le_bytes())?;
    w.put(&status.to_le_bytes())?;
    w.put(&(body_len as u32).to_le_bytes())
}

/// Decodes and validates the header of a received message of `buf.len()` bytes, and
/// returns it with the body (exactly `body_len` bytes).
pub fn decode(buf: &[u8]) -> Result<(MsgHeader, &[u8]), WireError> {
    if buf.len() > MSG_SIZE {
        return Err(WireError::TooLarge);
    }
    let mut c = Cursor { buf, pos: 0 };
    if c.u32()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    if c.u16()? != WIRE_VERSION {
        return Err(WireError::BadVersion);
    }
    let kind = Kind::from_u16(c.u16()?)?;
    let seq = c.u64()?;
    let status = c.u32()? as i32;
    let body_len = c.u32()?;
    let body = c
        .take(body_len as usize)
        .map_err(|_| WireError::BadLength)?;
    if c.pos != buf.len() {
        return Err(WireError::BadLength);
    }
    Ok((
        MsgHeader {
            kind,
            seq,
            status,
            body_len,
        },
        body,
    ))
}

/// What a server puts in its connection accept (the CM private data): a magic and the
/// connection's random challenge, which every open on it answers with a proof
/// (`mac::open_proof`). At least this long (IB CM pads it).
pub const ACCEPT_DATA_LEN: usize = 20;
/// "MCH1": the accept data is a version-1 challenge.
pub const CHALLENGE_MAGIC: u32 = 0x4D43_4831;

/// The accept data carrying `challenge`.
pub fn encode_accept_data(challenge: &[u8; 16]) -> [u8; ACCEPT_DATA_LEN] {
    let mut out = [0u8; ACCEPT_DATA_LEN];
    out[..4].copy_from_slice(&CHALLENGE_MAGIC.to_le_bytes());
    out[4..].copy_from_slice(challenge);
    out
}

/// The challenge in a server's accept data, if it is one.
pub fn decode_accept_data(data: &[u8]) -> Option<[u8; 16]> {
    let magic = data.get(..4)?;
    if magic != CHALLENGE_MAGIC.to_le_bytes() {
        return None;
    }
    data.get(4..ACCEPT_DATA_LEN)?.try_into().ok()
}

/// Body of [`Kind::OpenRegion`]. The secret itself never travels: `proof` is
/// `mac::open_proof(secret, challenge, region_id)` for the connection's challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRegion {
    pub region_id: u64,
    pub proof: [u8; 16],
}

impl OpenRegion {
    const LEN: usize = 24;

    /// Encodes the whole message into `buf`; returns its length.
    pub fn encode(&self, seq: u64, buf: &mut [u8]) -> Result<usize, WireError> {
        let total = HEADER_LEN + Self::LEN;
        check_room(buf, total)?;
        let mut w = Writer { buf, pos: 0 };
        put_header(&mut w, Kind::OpenRegion, seq, 0, Self::LEN)?;
        w.put(&self.region_id.to_le_bytes())?;
        w.put(&self.proof)?;
        Ok(w.pos)
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        if body.len() != Self::LEN {
            return Err(WireError::BadLength);
        }
        let mut c = Cursor { buf: body, pos: 0 };
        let region_id = c.u64()?;
        let mut proof = [0u8; 16];
        proof.copy_from_slice(c.take(16)?);
        Ok(OpenRegion { region_id, proof })
    }
}

/// The fixed fields of an [`OpenRegionReply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionFacts {
    pub size: u64,
    pub chunk_bytes: u64,
    /// The remote address of the region's first byte (byte `off` is at `iova_base +
    /// off`): random per registration, so that a READ must name an address only this
    /// reply gives out. `iova_base + size` does not overflow.
    pub iova_base: u64,
    /// The same for the packed copy (0 when there is none).
    pub packed_iova_base: u64,
    /// For snapshots: the descriptor's length in bytes (it starts at offset 0).
    /// 0 for test regions.
    pub info: u64,
    /// For snapshots: the status word (`super::snapshot::status_word`) as it was
    /// before the reply was built. The same word in the region's status page (its
    /// last) later means the snapshot is live and an open would hand out what this
    /// one did, so a host that keeps this open may resume another child through it
    /// without asking again. 0 for test regions.
    pub status: u64,
    /// For snapshots: `mac::descriptor_mac(secret, descriptor)`, which a child checks
    /// before it uses the descriptor.
    pub desc_mac: [u8; 16],
    /// For snapshots: how many pages right after the descriptor's hold copies of the
    /// pages a child needs first (`snapshot::Descriptor::lead_offsets`), so that it
    /// reads them with the descriptor in one batch. At most
    /// [`super::snapshot::MAX_LEAD_PAGES`]; 0 for test regions.
    pub lead_pages: u32,
    /// For snapshots: pages of the packed copy of the working set (`super::packed`),
    /// registered under the reply's packed keys (same `chunk_bytes`); 0 when the parent
    /// has none. At most [`super::packed::MAX_PACKED_PAGES`].
    pub packed_pages: u32,
}

/// Pages `[first, first + pages)` of a snapshot file (page-cache indices on the
/// child's host; the same on every host, they follow from the descriptor: VMA `i`'s
/// pages start at `snapshot::window_offset(i) / PAGE`, so indices exceed 32 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WsRun {
    pub first: u64,
    pub pages: u32,
}

/// One of the first pages children of a snapshot touched, in their order: its
/// page-cache index (as in [`WsRun`]) and the page of the parent's region holding it
/// (region offset / 4096), so that a child can read it before it has the descriptor,
/// in the descriptor's own batch. Not trusted: the child keeps it only if its
/// validated descriptor puts that index at that page
/// (`snapshot::Descriptor::hot_page_offset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotPage {
    pub index: u64,
    pub region_page: u32,
}

/// Most first-touch pages a record carries: what fits in one READ batch of 64 beside
/// a one-page descriptor and a few lead pages.
pub const MAX_HOT_PAGES: usize = 56;
/// Most pages a working set names, over all its runs.
pub const MAX_WS_PAGES: u64 = 32768;
/// Bytes of one encoded [`WsRun`] (first u64, pages u32) or [`HotPage`] (index u64,
/// region page u32).
const PAIR_LEN: usize = 12;
const WS_RUN_LEN: usize = PAIR_LEN;
const HOT_LEN: usize = PAIR_LEN;
/// Most runs a [`WorkingSetReport`] carries (beside a full list of hot pages).
pub const MAX_WS_RUNS: usize =
    (MSG_SIZE - HEADER_LEN - WorkingSetReport::FIXED_LEN - MAX_HOT_PAGES * HOT_LEN) / WS_RUN_LEN;
/// Largest gap (in pages) [`runs_from_pages`] reads across to merge two runs.
const MAX_MERGE_GAP: u64 = 1 << 12;

fn put_pairs(w: &mut Writer<'_>, pairs: impl Iterator<Item = (u64, u32)>) -> Result<(), WireError> {
    for (a, b) in pairs {
        w.put(&a.to_le_bytes())?;
        w.put(&b.to_le_bytes())?;
    }
    Ok(())
}

fn put_runs(w: &mut Writer<'_>, runs: &[WsRun]) -> Result<(), WireError> {
    put_pairs(w, runs.iter().map(|r| (r.first, r.pages)))
}

fn put_hot(w: &mut Writer<'_>, hot: &[HotPage]) -> Result<(), WireError> {
    put_pairs(w, hot.iter().map(|h| (h.index, h.region_page)))
}

/// Checks encoded hot pages: whole entries, at most [`MAX_HOT_PAGES`] (their content
/// is checked by the child against its descriptor).
fn check_hot(bytes: &[u8]) -> Result<(), WireError> {
    if !bytes.len().is_multiple_of(HOT_LEN) || bytes.len() / HOT_LEN > MAX_HOT_PAGES {
        return Err(WireError::BadLength);
    }
    Ok(())
}

/// Hot page `i` of encoded hot pages.
fn hot_at(bytes: &[u8], i: usize) -> Option<HotPage> {
    let (index, region_page) = pair_at(bytes, i)?;
    Some(HotPage { index, region_page })
}

/// Checks encoded runs: ascending, disjoint, none empty, none past the last page
/// index, at most [`MAX_WS_PAGES`] pages in all.
fn check_runs(bytes: &[u8]) -> Result<(), WireError> {
    if !bytes.len().is_multiple_of(WS_RUN_LEN) {
        return Err(WireError::BadLength);
    }
    let mut next_free = 0u64;
    let mut total = 0u64;
    for i in 0..bytes.len() / WS_RUN_LEN {
        let r = run_at(bytes, i).ok_or(WireError::Truncated)?;
        let end = r
            .first
            .checked_add(u64::from(r.pages))
            .ok_or(WireError::BadLength)?;
        total += u64::from(r.pages);
        if r.pages == 0 || r.first < next_free || total > MAX_WS_PAGES {
            return Err(WireError::BadLength);
        }
        next_free = end;
    }
    Ok(())
}

/// Entry `i` of encoded (u64, u32) pairs.
fn pair_at(bytes: &[u8], i: usize) -> Option<(u64, u32)> {
    let at = i.checked_mul(PAIR_LEN)?;
    let s = bytes.get(at..at.checked_add(PAIR_LEN)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&s[..8]);
    Some((
        u64::from_le_bytes(a),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ))
}

/// Run `i` of encoded runs.
fn run_at(bytes: &[u8], i: usize) -> Option<WsRun> {
    let (first, pages) = pair_at(bytes, i)?;
    Some(WsRun { first, pages })
}

/// The working set an [`OpenRegionReply`] hands out and a [`WorkingSetReport`] reports:
/// runs of pages and first-touch pages, as their decoders validated them.
pub trait WorkingSetParts {
    /// The bytes of the runs and of the first-touch pages.
    fn parts(&self) -> (&[u8], &[u8]);

    /// Number of working-set runs.
    fn n_runs(&self) -> usize {
        self.parts().0.len() / WS_RUN_LEN
    }

    /// The `i`th working-set run.
    fn run(&self, i: usize) -> Option<WsRun> {
        run_at(self.parts().0, i)
    }

    /// Number of first-touch pages.
    fn n_hot(&self) -> usize {
        self.parts().1.len() / HOT_LEN
    }

    /// The `i`th first-touch page.
    fn hot(&self, i: usize) -> Option<HotPage> {
        hot_at(self.parts().1, i)
    }
}

/// Turns page indices (any order, duplicates allowed; sorted in place) into at most
/// `out.len()` runs written to `out`, returning how many. When the exact runs do not
/// fit, the smallest gaps between them are merged over (their pages are read too),
/// as few as needed: every merge saves one run, so merging the smallest gaps reads
/// the fewest pages that were not touched. Gaps over 4096 pages are never merged:
/// what still does not fit is left out from the highest indices, as are pages past
/// [`MAX_WS_PAGES`].
pub fn runs_from_pages(pages: &mut [u64], out: &mut [WsRun]) -> usize {
    pages.sort_unstable();
    let cap = out.len();
    if count_runs(pages, 0) <= cap {
        return build_runs(pages, (0, 0), out);
    }
    if count_runs(pages, MAX_MERGE_GAP) > cap {
        return build_runs(pages, (MAX_MERGE_GAP, 0), out);
    }
    // The smallest gap `hi` whose merging makes the runs fit: every gap below it
    // must go, and of the gaps of exactly `hi` pages only as many as still needed.
    let (mut lo, mut hi) = (0, MAX_MERGE_GAP);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if count_runs(pages, mid) <= cap {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let extra = count_runs(pages, hi - 1).saturating_sub(cap);
    build_runs(pages, (hi - 1, extra), out)
}

/// How many runs `sorted` makes with gaps of at most `gap` pages merged over.
fn count_runs(sorted: &[u64], gap: u64) -> usize {
    let mut n = 0usize;
    let mut end: Option<u64> = None;
    for &p in sorted {
        match end {
            Some(e) if p < e => {}
            Some(e) if p - e <= gap => end = p.checked_add(1),
            _ => {
                n += 1;
                end = p.checked_add(1);
            }
        }
        if end.is_none() {
            break;
        }
    }
    n
}

/// Writes the runs of `sorted` into `out` with gaps of at most `gap` pages merged
/// over, and the first `extra` gaps of `gap + 1` pages too; stops when `out` is full.
/// Returns how many runs it wrote.
fn build_runs(sorted: &[u64], (gap, mut extra): (u64, usize), out: &mut [WsRun]) -> usize {
    let mut n = 0usize;
    let mut total = 0u64;
    let mut cur: Option<(u64, u64)> = None;
    for &p in sorted {
        let Some(next) = p.checked_add(1) else {
            break;
        };
        cur = match cur {
            Some((first, end)) if p < end => Some((first, end)),
            Some((first, end)) if p - end <= gap => Some((first, next)),
            Some((first, end)) if p - end == gap + 1 && extra > 0 => {
                extra -= 1;
                Some((first, next))
            }
            Some(done) => {
                if n >= out.len() || !emit(out, &mut n, &mut total, done) {
                    return n;
                }
                Some((p, next))
            }
            None => Some((p, next)),
        };
    }
    if let Some(done) = cur {
        if n < out.len() {
            emit(out, &mut n, &mut total, done);
        }
    }
    n
}

/// Appends `[first, end)` (clipped at [`MAX_WS_PAGES`] in all); false once full.
fn emit(out: &mut [WsRun], n: &mut usize, total: &mut u64, (first, end): (u64, u64)) -> bool {
    let pages = (end - first).min(MAX_WS_PAGES - *total);
    if pages > 0 {
        if let Some(slot) = out.get_mut(*n) {
            *slot = WsRun {
                first,
                // At most MAX_WS_PAGES.
                pages: pages as u32,
            };
            *n += 1;
            *total += pages;
        }
    }
    *total < MAX_WS_PAGES
}

/// Body of a successful [`Kind::OpenRegionReply`]: the region is registered for this
/// connection as `rkeys.len()` memory regions of `chunk_bytes` each (the last may be
/// shorter); byte `off` of the region is at remote address
/// [`RegionFacts::iova_base`]` + off` with the key `rkeys[off / chunk_bytes]`
/// (registration `i` covers `chunk_bytes` from `iova_base + i * chunk_bytes`, so no
/// kernel address is ever exposed).
/// Then the keys of the packed copy of the working set (`super::packed`), laid out the
/// same way over its [`RegionFacts::packed_pages`] pages. After the keys, the
/// snapshot's working set as an earlier opener reported it ([`WorkingSetReport`]): its
/// first-touch pages, then as many runs as fit (none for test regions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRegionReply<'a> {
    pub facts: RegionFacts,
    /// Little-endian `u32` rkeys, 4 bytes each.
    rkeys: &'a [u8],
    /// The packed copy's rkeys, the same way.
    packed_rkeys: &'a [u8],
    /// Encoded [`HotPage`]s, checked by `decode`.
    hot: &'a [u8],
    /// Encoded [`WsRun`]s, checked by `decode`.
    runs: &'a [u8],
}

/// Most rkeys one reply carries.
pub const MAX_REPLY_RKEYS: usize = (MSG_SIZE - HEADER_LEN - OpenRegionReply::FIXED_LEN) / 4;

impl<'a> OpenRegionReply<'a> {
    const FIXED_LEN: usize = 88;

    /// Bytes left after the fixed fields and `n_keys` keys (the region's and the
    /// packed copy's together).
    fn room_after_keys(n_keys: usize) -> usize {
        (MSG_SIZE - HEADER_LEN - Self::FIXED_LEN).saturating_sub(n_keys.saturating_mul(4))
    }

    /// Most hot pages a reply with `n_keys` keys has room for.
    pub fn room_for_hot(n_keys: usize) -> usize {
        (Self::room_after_keys(n_keys) / HOT_LEN).min(MAX_HOT_PAGES)
    }

    /// Most working-set runs a reply with `n_keys` keys and `n_hot` hot pages has room
    /// for.
    pub fn room_for_runs(n_keys: usize, n_hot: usize) -> usize {
        Self::room_after_keys(n_keys).saturating_sub(n_hot.saturating_mul(HOT_LEN)) / WS_RUN_LEN
    }

    /// Number of rkeys.
    pub fn n_keys(&self) -> usize {
        self.rkeys.len() / 4
    }

    /// The `i`th rkey.
    pub fn rkey(&self, i: usize) -> Option<u32> {
        let s = self
            .rkeys
            .get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Number of the packed copy's rkeys.
    pub fn n_packed_keys(&self) -> usize {
        self.packed_rkeys.len() / 4
    }

    /// The packed copy's `i`th rkey.
    pub fn packed_rkey(&self, i: usize) -> Option<u32> {
        let s = self
            .packed_rkeys
            .get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Encodes a successful reply with the rkeys produced by `rkeys`.
    pub fn encode(
        seq: u64,
        facts: &RegionFacts,
        rkeys: impl ExactSizeIterator<Item = u32>,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        Self::encode_with_working_set(seq, facts, rkeys, &[], &[], buf)
    }

    /// Encodes a successful reply with the rkeys produced by `rkeys` and the working
    /// set: `hot` (at most [`Self::room_for_hot`]) and `runs` (at most
    /// [`Self::room_for_runs`]).
    pub fn encode_with_working_set(
        seq: u64,
        facts: &RegionFacts,
        rkeys: impl ExactSizeIterator<Item = u32>,
        hot: &[HotPage],
        runs: &[WsRun],
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        Self::encode_with_packed(seq, facts, rkeys, &[], hot, runs, buf)
    }

    /// [`Self::encode_with_working_set`] with the packed copy's keys `packed_rkeys`
    /// (`facts.packed_pages` pages; `hot` and `runs` within the room left by both key
    /// sets).
    pub fn encode_with_packed(
        seq: u64,
        facts: &RegionFacts,
        rkeys: impl ExactSizeIterator<Item = u32>,
        packed_rkeys: &[u32],
        hot: &[HotPage],
        runs: &[WsRun],
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        let n = rkeys.len().saturating_add(packed_rkeys.len());
        if n > MAX_REPLY_RKEYS
            || hot.len() > Self::room_for_hot(n)
            || runs.len() > Self::room_for_runs(n, hot.len())
        {
            return Err(WireError::TooLarge);
        }
        let body = Self::FIXED_LEN + 4 * n + HOT_LEN * hot.len() + WS_RUN_LEN * runs.len();
        check_room(buf, HEADER_LEN + body)?;
        let mut w = Writer { buf, pos: 0 };
        put_header(&mut w, Kind::OpenRegionReply, seq, 0, body)?;
        w.put(&facts.size.to_le_bytes())?;
        w.put(&facts.chunk_bytes.to_le_bytes())?;
        w.put(&facts.iova_base.to_le_bytes())?;
        w.put(&facts.packed_iova_base.to_le_bytes())?;
        w.put(&facts.info.to_le_bytes())?;
        w.put(&facts.status.to_le_bytes())?;
        w.put(&facts.desc_mac)?;
        w.put(&facts.lead_pages.to_le_bytes())?;
        w.put(&((n - packed_rkeys.len()) as u32).to_le_bytes())?;
        w.put(&(runs.len() as u32).to_le_bytes())?;
        w.put(&(hot.len() as u32).to_le_bytes())?;
        w.put(&facts.packed_pages.to_le_bytes())?;
        w.put(&(packed_rkeys.len() as u32).to_le_bytes())?;
        for k in rkeys.chain(packed_rkeys.iter().copied()) {
            w.put(&k.to_le_bytes())?;
        }
        put_hot(&mut w, hot)?;
        put_runs(&mut w, runs)?;
        Ok(w.pos)
    }

    /// Decodes the body and checks it is self-consistent: `chunk_bytes` a non-zero
    /// multiple of 4096, `size` non-zero and covered exactly by the keys, the region
    /// and the packed copy within the address space from their bases, at most
    /// [`super::snapshot::MAX_LEAD_REGION_PAGES`] pages of packed lead pages, at most [`MAX_HOT_PAGES`] hot
    /// pages, working-set runs ascending and disjoint.
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut c = Cursor { buf: body, pos: 0 };
        let size = c.u64()?;
        let chunk_bytes = c.u64()?;
        let iova_base = c.u64()?;
        let packed_iova_base = c.u64()?;
        let info = c.u64()?;
        let status = c.u64()?;
        let mut desc_mac = [0u8; 16];
        desc_mac.copy_from_slice(c.take(16)?);
        let lead_pages = c.u32()?;
        let n = c.u32()? as usize;
        let n_runs = c.u32()? as usize;
        let n_hot = c.u32()? as usize;
        let packed_pages = c.u32()?;
        let n_packed = c.u32()? as usize;
        let rkeys = c.take(n.checked_mul(4).ok_or(WireError::BadLength)?)?;
        let packed_rkeys = c.take(n_packed.checked_mul(4).ok_or(WireError::BadLength)?)?;
        let hot = c.take(n_hot.checked_mul(HOT_LEN).ok_or(WireError::BadLength)?)?;
        let runs = c.take(n_runs.checked_mul(WS_RUN_LEN).ok_or(WireError::BadLength)?)?;
        check_hot(hot)?;
        check_runs(runs)?;
        if c.pos != body.len() || size == 0 || chunk_bytes == 0 || chunk_bytes % 4096 != 0 {
            return Err(WireError::BadLength);
        }
        if size.div_ceil(chunk_bytes) != n as u64
            || lead_pages as usize > super::snapshot::MAX_LEAD_REGION_PAGES
            || packed_pages as usize > super::packed::MAX_PACKED_PAGES
            || (u64::from(packed_pages) * 4096).div_ceil(chunk_bytes) != n_packed as u64
            || iova_base.checked_add(size).is_none()
            || packed_iova_base
                .checked_add(u64::from(packed_pages) * 4096)
                .is_none()
        {
            return Err(WireError::BadLength);
        }
        Ok(OpenRegionReply {
            facts: RegionFacts {
                size,
                chunk_bytes,
                iova_base,
                packed_iova_base,
                info,
                status,
                desc_mac,
                lead_pages,
                packed_pages,
            },
            rkeys,
            packed_rkeys,
            hot,
            runs,
        })
    }
}

/// Encodes an error reply (`status` < 0) of `kind` with an empty body.
pub fn encode_status(
    kind: Kind,
    seq: u64,
    status: i32,
    buf: &mut [u8],
) -> Result<usize, WireError> {
    check_room(buf, HEADER_LEN)?;
    let mut w = Writer { buf, pos: 0 };
    put_header(&mut w, kind, seq, status, 0)?;
    Ok(w.pos)
}

/// Body of [`Kind::CloseRegion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRegion {
    pub region_id: u64,
}

impl CloseRegion {
    const LEN: usize = 8;

    pub fn encode(&self, seq: u64, buf: &mut [u8]) -> Result<usize, WireError> {
        check_room(buf, HEADER_LEN + Self::LEN)?;
        let mut w = Writer { buf, pos: 0 };
        put_header(&mut w, Kind::CloseRegion, seq, 0, Self::LEN)?;
        w.put(&self.region_id.to_le_bytes())?;
        Ok(w.pos)
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        if body.len() != Self::LEN {
            return Err(WireError::BadLength);
        }
        let mut c = Cursor { buf: body, pos: 0 };
        Ok(CloseRegion {
            region_id: c.u64()?,
        })
    }
}

/// Body of [`Kind::WorkingSet`]: the pages an opener's children touched in snapshot
/// `region_id`, as ascending disjoint runs, then the first of them in the order they
/// were first touched ([`HotPage`]s); the parent hands them to later openers in its
/// [`OpenRegionReply`]. Accepted only on a connection that opened the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkingSetReport<'a> {
    pub region_id: u64,
    /// Encoded [`WsRun`]s, checked by `decode`.
    runs: &'a [u8],
    /// Encoded [`HotPage`]s, checked by `decode`.
    hot: &'a [u8],
}

impl<'a> WorkingSetReport<'a> {
    const FIXED_LEN: usize = 16;

    /// Encodes a report of `runs` (at most [`MAX_WS_RUNS`]) and `hot` (at most
    /// [`MAX_HOT_PAGES`]).
    pub fn encode(
        region_id: u64,
        runs: &[WsRun],
        hot: &[HotPage],
        seq: u64,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        if runs.len() > MAX_WS_RUNS || hot.len() > MAX_HOT_PAGES {
            return Err(WireError::TooLarge);
        }
        let body = Self::FIXED_LEN + WS_RUN_LEN * runs.len() + HOT_LEN * hot.len();
        check_room(buf, HEADER_LEN + body)?;
        let mut w = Writer { buf, pos: 0 };
        put_header(&mut w, Kind::WorkingSet, seq, 0, body)?;
        w.put(&region_id.to_le_bytes())?;
        w.put(&(runs.len() as u32).to_le_bytes())?;
        w.put(&(hot.len() as u32).to_le_bytes())?;
        put_runs(&mut w, runs)?;
        put_hot(&mut w, hot)?;
        Ok(w.pos)
    }

    /// Decodes the body: exactly as long as its counts say, runs ascending and
    /// disjoint, at most [`MAX_WS_PAGES`] pages, at most [`MAX_HOT_PAGES`] hot pages.
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut c = Cursor { buf: body, pos: 0 };
        let region_id = c.u64()?;
        let n = c.u32()? as usize;
        let n_hot = c.u32()? as usize;
        if n > MAX_WS_RUNS || n_hot > MAX_HOT_PAGES {
            return Err(WireError::BadLength);
        }
        let runs = c.take(n * WS_RUN_LEN)?;
        let hot = c.take(n_hot * HOT_LEN)?;
        if c.pos != body.len() {
            return Err(WireError::BadLength);
        }
        check_runs(runs)?;
        check_hot(hot)?;
        Ok(WorkingSetReport {
            region_id,
            runs,
            hot,
        })
    }
}

impl WorkingSetParts for OpenRegionReply<'_> {
    fn parts(&self) -> (&[u8], &[u8]) {
        (self.runs, self.hot)
    }
}

impl WorkingSetParts for WorkingSetReport<'_> {
    fn parts(&self) -> (&[u8], &[u8]) {
        (self.runs, self.hot)
    }
}
