//! The MAC (SipHash-2-4-128) against an independent implementation, and the proofs'
//! domain separation.

use mitosis_abi::mac::{constant_time_eq, descriptor_mac, open_proof, siphash128};
use proptest::prelude::*;
use siphasher::sip128::{Hasher128, SipHasher24};

fn reference(key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
    let mut h = SipHasher24::new_with_key(key);
    std::hash::Hasher::write(&mut h, msg);
    h.finish128().as_bytes()
}

#[test]
fn paper_key_vectors() {
    // The reference implementation's vectors: key 00..0f, messages 00..(n-1).
    let key: [u8; 16] = core::array::from_fn(|i| i as u8);
    let msg: Vec<u8> = (0..64).collect();
    for n in 0..64 {
        assert_eq!(
            siphash128(&key, &[&msg[..n]]),
            reference(&key, &msg[..n]),
            "length {n}"
        );
    }
    // vectors_sip128[0] of the reference implementation (empty message).
    assert_eq!(
        siphash128(&key, &[]),
        [
            0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
            0x02, 0x93
        ]
    );
}

proptest! {
    #[test]
    fn matches_reference_in_any_split(
        key in any::<[u8; 16]>(),
        msg in proptest::collection::vec(any::<u8>(), 0..300),
        cut1 in 0usize..300,
        cut2 in 0usize..300,
    ) {
        let (a, b) = (cut1.min(msg.len()), cut2.min(msg.len()));
        let (lo, hi) = (a.min(b), a.max(b));
        let ours = siphash128(&key, &[&msg[..lo], &msg[lo..hi], &msg[hi..]]);
        prop_assert_eq!(ours, reference(&key, &msg));
    }

    #[test]
    fn proofs_bind_secret_challenge_and_id(
        secret in any::<[u8; 16]>(),
        other in any::<[u8; 16]>(),
        challenge in any::<[u8; 16]>(),
        id in any::<u64>(),
    ) {
        let p = open_proof(&secret, &challenge, id);
        prop_assert!(constant_time_eq(&p, &open_proof(&secret, &challenge, id)));
        prop_assume!(other != secret);
        prop_assert!(!constant_time_eq(&p, &open_proof(&other, &challenge, id)));
        prop_assert!(!constant_time_eq(&p, &open_proof(&secret, &other, id)));
        prop_assert!(!constant_time_eq(&p, &open_proof(&secret, &challenge, id ^ 1)));
    }
}

#[test]
fn domains_are_separate() {
    let secret = [7u8; 16];
    let challenge = [9u8; 16];
    // A descriptor that is exactly a proof's input is not a proof.
    let mut input = challenge.to_vec();
    input.extend_from_slice(&5u64.to_le_bytes());
    assert_ne!(
        open_proof(&secret, &challenge, 5),
        descriptor_mac(&secret, &input)
    );
}
