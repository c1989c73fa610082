//! The byte pattern that podtool clients send and check, so that a lost, duplicated,
//! reordered or corrupted byte anywhere in a stream is caught.
//!
//! The stream is cut into 1024-byte blocks. Block `b` of a stream with seed `s` is
//! the little-endian `u64` `(s << 40) ^ b` followed by 1016 bytes of a fixed
//! pseudo-random table starting at `(7b + 13s) mod 1024`. Every block names its own
//! position, so shifts of any length show up, and the body catches bit errors.
//! `py/blocking_client.py` implements the same pattern; keep them in step.

use std::sync::OnceLock;

/// Length of one pattern block.
pub const BLOCK: usize = 1024;
const HEADER: usize = 8;
const TABLE_LEN: usize = 2048;

fn table() -> &'static [u8; TABLE_LEN] {
    static TABLE: OnceLock<[u8; TABLE_LEN]> = OnceLock::new();
    TABLE.get_or_init(|| {
        // xorshift32; the Python client uses the same generator.
        let mut x: u32 = 0x9E37_79B9;
        let mut t = [0u8; TABLE_LEN];
        for b in t.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = (x >> 11) as u8;
        }
        t
    })
}

/// Writes block `block` of the stream with seed `seed` into `out`.
fn block_bytes(seed: u64, block: u64, out: &mut [u8; BLOCK]) {
    let header = (seed << 40) ^ block;
    out[..HEADER].copy_from_slice(&header.to_le_bytes());
    let start = ((block.wrapping_mul(7).wrapping_add(seed.wrapping_mul(13))) % 1024) as usize;
    out[HEADER..].copy_from_slice(&table()[start..start + BLOCK - HEADER]);
}

/// Fills `buf` with the pattern of stream `seed`, starting at stream offset `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut block = [0u8; BLOCK];
    let mut pos = offset;
    let mut done = 0;
    let mut current = u64::MAX;
    while done < buf.len() {
        let b = pos / BLOCK as u64;
        if b != current {
            block_bytes(seed, b, &mut block);
            current = b;
        }
        let j = (pos % BLOCK as u64) as usize;
        let n = (BLOCK - j).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&block[j..j + n]);
        done += n;
        pos += n as u64;
    }
}

/// Checks `buf` against the pattern of stream `seed` at offset `offset`; returns the
/// index in `buf` of the first wrong byte.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<usize> {
    let mut expected = [0u8; BLOCK];
    let mut done = 0;
    while done < buf.len() {
        let n = BLOCK.min(buf.len() - done);
        fill(seed, offset + done as u64, &mut expected[..n]);
        if let Some(i) = buf[done..done + n]
            .iter()
            .zip(&expected[..n])
            .position(|(a, b)| a != b)
        {
            return Some(done + i);
        }
        done += n;
    }
    None
}

/// The whole pattern of stream `seed` from offset 0, `len` bytes long.
pub fn vec(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, 0, &mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_consistent_across_offsets() {
        let whole = vec(3, 5000);
        for (off, len) in [(0, 1), (7, 1030), (1023, 2), (1024, 1024), (4000, 1000)] {
            let mut part = vec![0u8; len];
            fill(3, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len], "offset {off} len {len}");
            assert_eq!(first_mismatch(3, off as u64, &part), None);
        }
    }

    #[test]
    fn detects_shifts_and_corruption() {
        let whole = vec(0, 8192);
        // Dropping a whole block shifts the stream by exactly one block.
        assert_eq!(first_mismatch(0, 1024, &whole[2048..4096]), Some(0));
        let mut bad = whole.clone();
        bad[5000] ^= 1;
        assert_eq!(first_mismatch(0, 0, &bad), Some(5000));
        // Different seeds give different streams.
        assert_ne!(vec(1, 64), vec(2, 64));
    }

    #[test]
    fn known_prefix_matches_python_client() {
        // Seed 1, block 0: header is 1 << 40, then the table from offset 13.
        let v = vec(1, 16);
        assert_eq!(&v[..8], &(1u64 << 40).to_le_bytes());
        assert_eq!(&v[8..], &table()[13..21]);
        // Cross-checked with `blocking_client.pattern(3, 1000, 40)`.
        let mut p = [0u8; 40];
        fill(3, 1000, &mut p);
        assert_eq!(p, PY_3_1000_40);
    }

    const PY_3_1000_40: [u8; 40] = [
        254, 73, 211, 129, 164, 255, 234, 107, 112, 3, 182, 209, 16, 136, 125, 151, 235, 115, 38,
        130, 96, 87, 16, 21, 1, 0, 0, 0, 0, 3, 0, 0, 3, 196, 165, 83, 231, 193, 179, 226,
    ];
}
