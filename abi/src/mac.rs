//! Proofs of a snapshot's secret: SipHash-2-4 with a 128-bit output (Aumasson and
//! Bernstein), keyed by the 16-byte secret.
//!
//! The secret never travels. A server puts a random challenge in its connection accept
//! (the CM private data); to open a region the client sends
//! [`open_proof`]`(secret, challenge, id)` instead of the secret, which the server
//! recomputes with the region's secret. An eavesdropper learns a proof that is good
//! for that one connection's challenge only. The parent also sends
//! [`descriptor_mac`]`(secret, descriptor)` with the keys, and a child checks the
//! descriptor it read against it before using any of it: a peer that does not hold the
//! secret cannot make a child run a descriptor of its own.
//!
//! SipHash is a keyed pseudo-random function made for short inputs, with a 128-bit
//! key: exactly a snapshot secret. It needs no crypto API in the kernel (the test
//! kernels are `tinyconfig` based), and the same code runs in the module and in user
//! space. Cross-checked against the `siphasher` crate in `abi/tests/mac.rs`.

/// Length of a challenge, a proof and a MAC.
pub const MAC_LEN: usize = 16;

/// Domain separation: a proof is never a MAC of some descriptor, nor the reverse.
const OPEN_DOMAIN: &[u8; 16] = b"mitosis-open-v1\0";
const DESC_DOMAIN: &[u8; 16] = b"mitosis-desc-v1\0";

/// Incremental SipHash-2-4-128.
struct SipHash128 {
    v: [u64; 4],
    /// Bytes not yet compressed (fewer than 8).
    tail: u64,
    ntail: usize,
    len: u64,
}

impl SipHash128 {
    fn new(key: &[u8; 16]) -> Self {
        let k0 = u64::from_le_bytes([
            key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
        ]);
        let k1 = u64::from_le_bytes([
            key[8], key[9], key[10], key[11], key[12], key[13], key[14], key[15],
        ]);
        SipHash128 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                // The 128-bit variant xors 0xee into v1.
                k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    fn write(&mut self, bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        let mut rest = bytes;
        // Fill the pending word first.
        while self.ntail != 0 && !rest.is_empty() {
            self.tail |= (rest[0] as u64) << (8 * self.ntail);
            self.ntail += 1;
            rest = &rest[1..];
            if self.ntail == 8 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
        if rest.is_empty() {
            return;
        }
        // Here the pending word is empty.
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            let m = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            self.compress(m);
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= (b as u64) << (8 * i);
        }
        self.ntail = words.remainder().len();
    }

    fn finish(mut self) -> [u8; MAC_LEN] {
        let m = self.tail | (self.len << 56);
        self.compress(m);
        self.v[2] ^= 0xee;
        for _ in 0..4 {
            self.round();
        }
        let lo = self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3];
        self.v[1] ^= 0xdd;
        for _ in 0..4 {
            self.round();
        }
        let hi = self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3];
        let mut out = [0u8; MAC_LEN];
        out[..8].copy_from_slice(&lo.to_le_bytes());
        out[8..].copy_from_slice(&hi.to_le_bytes());
        out
    }
}

/// SipHash-2-4-128 of the concatenation of `parts` under `key`.
pub fn siphash128(key: &[u8; 16], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut h = SipHash128::new(key);
    for p in parts {
        h.write(p);
    }
    h.finish()
}

/// What a client sends to open region `region_id` on a connection whose server
/// challenged it with `challenge`.
pub fn open_proof(secret: &[u8; 16], challenge: &[u8; MAC_LEN], region_id: u64) -> [u8; MAC_LEN] {
    siphash128(secret, &[OPEN_DOMAIN, challenge, &region_id.to_le_bytes()])
}

/// The integrity tag of a snapshot descriptor.
pub fn descriptor_mac(secret: &[u8; 16], descriptor: &[u8]) -> [u8; MAC_LEN] {
    siphash128(secret, &[DESC_DOMAIN, descriptor])
}

/// Key of [`file_head_hash`]: public (the hash identifies content, it proves nothing).
const FILE_HEAD_KEY: &[u8; 16] = b"mitosis-file-v1\0";

/// How many bytes of a file [`file_head_hash`] covers: the first page (an ELF file's
/// header, program headers and build-id note).
pub const FILE_HEAD_LEN: usize = 4096;

/// The identity hash of a file's first bytes (`head`: its first [`FILE_HEAD_LEN`]
/// bytes, or the whole file if shorter).
pub fn file_head_hash(head: &[u8]) -> [u8; MAC_LEN] {
    siphash128(FILE_HEAD_KEY, &[&(head.len() as u64).to_le_bytes(), head])
}

/// Equality that takes the same time wherever the first difference is.
pub fn constant_time_eq(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    core::hint::black_box(diff) == 0
}
