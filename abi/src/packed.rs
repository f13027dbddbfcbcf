// SPDX-License-Identifier: GPL-2.0

//! The packed working set: a compressed copy of a snapshot's working set that the
//! parent makes once per kept record and a new host reads in one stream of READs,
//! instead of every page of the record at full size.
//!
//! Layout (little-endian), in pages registered for remote READ like the snapshot's:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `MPK1` |
//! | 4..6 | [`VERSION`] |
//! | 6..8 | 0 |
//! | 8..12 | `n`: pages in the copy, at most [`super::wire::MAX_WS_PAGES`] |
//! | 12..16 | payload bytes |
//! | 16..16 + 12 n | per page: its page-cache index (`u64`) and its encoded length (`u32`, 1..=4096) |
//! | then | the payload: each page's encoding in the order above |
//!
//! A page encoded in 4096 bytes is stored as it is; shorter, it is an LZO1X stream
//! (the kernel's `lzorle1x_1_compress`, as zram writes them; `lzo1x_decompress_safe`
//! reads it) that decompresses to exactly 4096 bytes. Nothing in a copy is trusted by its
//! reader: [`PackedIndex::parse`] bounds every length and offset, the reader keeps
//! only pages its own descriptor says are present, and a page whose stream does not
//! decompress to a whole page is left to its demand fault.

use super::wire::MAX_WS_PAGES;

/// "MPK1".
pub const MAGIC: u32 = 0x314B_504D;
pub const VERSION: u16 = 1;
/// Bytes before the per-page table.
pub const HEADER_LEN: usize = 16;
/// Bytes of one table entry.
pub const ENTRY_LEN: usize = 12;
/// Bytes of one page.
pub const PAGE_BYTES: usize = 4096;
/// Most bytes a copy can take: the header, a full table, every page stored as it is.
pub const MAX_PACKED_BYTES: usize =
    HEADER_LEN + ENTRY_LEN * MAX_WS_PAGES as usize + PAGE_BYTES * MAX_WS_PAGES as usize;
/// Most pages of registered memory a copy takes.
pub const MAX_PACKED_PAGES: usize = max_packed_pages(MAX_WS_PAGES as usize);

/// Most pages of registered memory a copy of `n` pages takes (every page stored as it
/// is).
pub const fn max_packed_pages(n: usize) -> usize {
    (HEADER_LEN + ENTRY_LEN * n + PAGE_BYTES * n).div_ceil(PAGE_BYTES)
}

/// Why a copy was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedError {
    Truncated,
    BadMagic,
    BadVersion,
    /// A count, length or offset disagrees with the copy's size.
    BadLength,
}

/// One page of a copy: where it goes and its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedPage<'a> {
    /// Page-cache index in the snapshot file (as in [`super::wire::WsRun`]).
    pub index: u64,
    /// [`PAGE_BYTES`] bytes stored as they are, or an LZO1X stream.
    pub encoded: &'a [u8],
}

impl PackedPage<'_> {
    /// Whether the page is stored as it is (no decompression).
    pub fn is_stored(&self) -> bool {
        self.encoded.len() == PAGE_BYTES
    }
}

/// A checked copy over borrowed bytes.
#[derive(Clone, Copy, Debug)]
pub struct PackedIndex<'a> {
    table: &'a [u8],
    payload: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// How many first bytes of a copy its header and table take, read from the header
/// (`None` until `head` holds the header, or if the count is out of bounds): a reader
/// that gets the copy piece by piece can check the table with [`PackedIndex::parse`]
/// once that many bytes arrived, and use each page once its encoding did.
pub fn head_len(head: &[u8]) -> Option<usize> {
    let n = u32_at(head, 8)?;
    if u64::from(n) > MAX_WS_PAGES {
        return None;
    }
    // Bounded above: no overflow.
    Some(HEADER_LEN + n as usize * ENTRY_LEN)
}

impl<'a> PackedIndex<'a> {
    /// Checks the header, that the table fits, that every entry's length is 1..=4096
    /// and that the lengths add up to the payload, which fits in `bytes` (the rest of
    /// the last page is padding).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PackedError> {
        if bytes.len() < HEADER_LEN {
            return Err(PackedError::Truncated);
        }
        if u32_at(bytes, 0) != Some(MAGIC) {
            return Err(PackedError::BadMagic);
        }
        if bytes[4..6] != VERSION.to_le_bytes() {
            return Err(PackedError::BadVersion);
        }
        let n = u32_at(bytes, 8).ok_or(PackedError::Truncated)? as usize;
        let payload_len = u32_at(bytes, 12).ok_or(PackedError::Truncated)? as usize;
        if bytes[6..8] != [0, 0] || n as u64 > MAX_WS_PAGES {
            return Err(PackedError::BadLength);
        }
        // Bounded above: no overflow.
        let table_end = HEADER_LEN + n * ENTRY_LEN;
        let table = bytes
            .get(HEADER_LEN..table_end)
            .ok_or(PackedError::Truncated)?;
        let payload_end = table_end
            .checked_add(payload_len)
            .ok_or(PackedError::BadLength)?;
        let payload = bytes
            .get(table_end..payload_end)
            .ok_or(PackedError::Truncated)?;
        let mut sum = 0usize;
        for e in table.chunks_exact(ENTRY_LEN) {
            let len = u32_at(e, 8).ok_or(PackedError::Truncated)? as usize;
            if len == 0 || len > PAGE_BYTES {
                return Err(PackedError::BadLength);
            }
            // At most MAX_WS_PAGES entries of at most a page: no overflow.
            sum += len;
        }
        if sum != payload_len {
            return Err(PackedError::BadLength);
        }
        Ok(PackedIndex { table, payload })
    }

    /// Pages in the copy.
    pub fn len(&self) -> usize {
        self.table.len() / ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Where the payload starts in the copy: the page [`Self::pages`] yields first
    /// ends `encoded.len()` bytes after it, each next one as many after the last.
    pub fn payload_start(&self) -> usize {
        HEADER_LEN + self.table.len()
    }

    /// The pages in order (every offset was checked by [`Self::parse`]; a lookup that
    /// failed anyway ends the walk).
    pub fn pages(&self) -> impl Iterator<Item = PackedPage<'a>> + 'a {
        let payload = self.payload;
        let mut at = 0usize;
        self.table.chunks_exact(ENTRY_LEN).map_while(move |e| {
            let index = u64_at(e, 0)?;
            let len = u32_at(e, 8)? as usize;
            let end = at.checked_add(len)?;
            let encoded = payload.get(at..end)?;
            at = end;
            Some(PackedPage { index, encoded })
        })
    }
}

/// Writes a copy: [`PackedWriter::header_len`] bytes of header and table, filled in by
/// [`PackedWriter::finish`], then each page's encoding appended by the caller.
pub struct PackedWriter {
    n: usize,
    payload_len: usize,
}

impl PackedWriter {
    /// A copy of `n` pages (at most [`MAX_WS_PAGES`]).
    pub fn new(n: usize) -> Option<Self> {
        (n as u64 <= MAX_WS_PAGES).then_some(PackedWriter { n, payload_len: 0 })
    }

    /// Bytes of header and table, written before the payload.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.n * ENTRY_LEN
    }

    /// Records page `i`'s index and encoded length in `head` (of
    /// [`Self::header_len`] bytes). Pages must be entered in order, each once.
    pub fn entry(&mut self, head: &mut [u8], i: usize, index: u64, len: usize) -> Option<()> {
        if i >= self.n || len == 0 || len > PAGE_BYTES {
            return None;
        }
        let at = HEADER_LEN + i * ENTRY_LEN;
        let e = head.get_mut(at..at + ENTRY_LEN)?;
        e[..8].copy_from_slice(&index.to_le_bytes());
        e[8..].copy_from_slice(&(len as u32).to_le_bytes());
        self.payload_len = self.payload_len.checked_add(len)?;
        Some(())
    }

    /// Writes the header (magic, version, counts) into `head`; the copy then holds
    /// `n` pages and the payload lengths entered.
    pub fn finish(&self, head: &mut [u8]) -> Option<()> {
        let h = head.get_mut(..HEADER_LEN)?;
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&[0, 0]);
        h[8..12].copy_from_slice(&(self.n as u32).to_le_bytes());
        h[12..16].copy_from_slice(&u32::try_from(self.payload_len).ok()?.to_le_bytes());
        Some(())
    }
}
