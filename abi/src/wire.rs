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
pub const WIRE_VERSION: u16 = 4;
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
}

impl Kind {
    fn from_u16(v: u16) -> Result<Kind, WireError> {
        match v {
            1 => Ok(Kind::OpenRegion),
            2 => Ok(Kind::OpenRegionReply),
            3 => Ok(Kind::CloseRegion),
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
    /// For snapshots: the descriptor's length in bytes (it starts at offset 0).
    /// 0 for test regions.
    pub info: u64,
    /// For snapshots: `mac::descriptor_mac(secret, descriptor)`, which a child checks
    /// before it uses the descriptor.
    pub desc_mac: [u8; 16],
    /// For snapshots: how many pages right after the descriptor's hold copies of the
    /// pages a child needs first (`snapshot::Descriptor::lead_offsets`), so that it
    /// reads them with the descriptor in one batch. At most
    /// [`super::snapshot::MAX_LEAD_PAGES`]; 0 for test regions.
    pub lead_pages: u32,
}

/// Body of a successful [`Kind::OpenRegionReply`]: the region is registered for this
/// connection as `rkeys.len()` memory regions of `chunk_bytes` each (the last may be
/// shorter); byte `off` of the region is at remote address `off` with the key
/// `rkeys[off / chunk_bytes]` (registration `i` covers addresses
/// `[i * chunk_bytes, (i + 1) * chunk_bytes)`, so no kernel address is ever exposed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRegionReply<'a> {
    pub facts: RegionFacts,
    /// Little-endian `u32` rkeys, 4 bytes each.
    rkeys: &'a [u8],
}

/// Most rkeys one reply carries.
pub const MAX_REPLY_RKEYS: usize = (MSG_SIZE - HEADER_LEN - OpenRegionReply::FIXED_LEN) / 4;

impl<'a> OpenRegionReply<'a> {
    const FIXED_LEN: usize = 48;

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

    /// Encodes a successful reply with the rkeys produced by `rkeys`.
    pub fn encode(
        seq: u64,
        facts: &RegionFacts,
        rkeys: impl ExactSizeIterator<Item = u32>,
        buf: &mut [u8],
    ) -> Result<usize, WireError> {
        let n = rkeys.len();
        if n > MAX_REPLY_RKEYS {
            return Err(WireError::TooLarge);
        }
        let body = Self::FIXED_LEN + 4 * n;
        check_room(buf, HEADER_LEN + body)?;
        let mut w = Writer { buf, pos: 0 };
        put_header(&mut w, Kind::OpenRegionReply, seq, 0, body)?;
        w.put(&facts.size.to_le_bytes())?;
        w.put(&facts.chunk_bytes.to_le_bytes())?;
        w.put(&facts.info.to_le_bytes())?;
        w.put(&facts.desc_mac)?;
        w.put(&facts.lead_pages.to_le_bytes())?;
        w.put(&(n as u32).to_le_bytes())?;
        for k in rkeys {
            w.put(&k.to_le_bytes())?;
        }
        Ok(w.pos)
    }

    /// Decodes the body and checks it is self-consistent: `chunk_bytes` a non-zero
    /// multiple of 4096, `size` non-zero and covered exactly by the keys, at most
    /// [`super::snapshot::MAX_LEAD_PAGES`] lead pages.
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let mut c = Cursor { buf: body, pos: 0 };
        let size = c.u64()?;
        let chunk_bytes = c.u64()?;
        let info = c.u64()?;
        let mut desc_mac = [0u8; 16];
        desc_mac.copy_from_slice(c.take(16)?);
        let lead_pages = c.u32()?;
        let n = c.u32()? as usize;
        let rkeys = c.take(n.checked_mul(4).ok_or(WireError::BadLength)?)?;
        if c.pos != body.len() || size == 0 || chunk_bytes == 0 || chunk_bytes % 4096 != 0 {
            return Err(WireError::BadLength);
        }
        if size.div_ceil(chunk_bytes) != n as u64
            || lead_pages as usize > super::snapshot::MAX_LEAD_PAGES
        {
            return Err(WireError::BadLength);
        }
        Ok(OpenRegionReply {
            facts: RegionFacts {
                size,
                chunk_bytes,
                info,
                desc_mac,
                lead_pages,
            },
            rkeys,
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
