//! The erasure code of udpcast's `--fec` mode, written from its
//! description (docs/udpcast.md): a systematic Reed-Solomon code over
//! GF(2^8) in the Vandermonde/Cauchy form of Luigi Rizzo's coder, as
//! simplified by udpcast.
//!
//! The field is built on the primitive polynomial x^8 + x^4 + x^3 + x^2 + 1
//! (0x11d) with generator x. Within one stripe, data block `j` (0 ≤ j < 128)
//! and FEC block `r` (its row, 0 ≤ r < 128) are tied by
//!
//! ```text
//! fec[r] = Σ_j  data[j] · 1 / (r + (128 + j))        (+ is XOR in GF(2^8))
//! ```
//!
//! Rows and columns come from the disjoint sets 0..128 and 128..256, so the
//! coefficients form a Cauchy matrix: every square submatrix is invertible,
//! and any `e` distinct FEC rows rebuild any `e` lost data blocks. A short
//! data block counts as if padded with zeros to the block size.

use std::fmt;
use std::sync::OnceLock;

/// The field polynomial, x^8 + x^4 + x^3 + x^2 + 1.
pub const POLY: u16 = 0x11d;
/// Most data blocks in one stripe (columns 128..256).
pub const MAX_DATA: usize = 128;
/// Most FEC rows of one stripe (rows 0..128).
pub const MAX_ROWS: usize = 128;

/// Log, antilog, inverse and full multiplication tables of GF(2^8).
struct Field {
    /// exp[i] = x^i, doubled so that exp[log a + log b] needs no reduction.
    exp: [u8; 510],
    /// 1/a for a ≠ 0 (inv[0] = 0, never used).
    inv: [u8; 256],
    /// mul[a][b] = a·b: one row per constant, for bulk multiply-add.
    mul: Box<[[u8; 256]; 256]>,
}

fn field() -> &'static Field {
    static FIELD: OnceLock<Field> = OnceLock::new();
    FIELD.get_or_init(|| {
        let mut exp = [0u8; 510];
        let mut log = [0u8; 256];
        let mut v: u16 = 1;
        for (i, e) in exp.iter_mut().take(255).enumerate() {
            *e = v as u8;
            log[v as usize] = i as u8;
            v <<= 1;
            if v & 0x100 != 0 {
                v ^= POLY;
            }
        }
        for i in 255..510 {
            exp[i] = exp[i - 255];
        }
        let mut inv = [0u8; 256];
        for a in 1..256 {
            inv[a] = exp[(255 - usize::from(log[a])) % 255];
        }
        let mut mul = Box::new([[0u8; 256]; 256]);
        for a in 1..256 {
            for b in 1..256 {
                mul[a][b] = exp[usize::from(log[a]) + usize::from(log[b])];
            }
        }
        Field { exp, inv, mul }
    })
}

/// a·b in GF(2^8).
pub fn mul(a: u8, b: u8) -> u8 {
    field().mul[usize::from(a)][usize::from(b)]
}

/// 1/a in GF(2^8) (0 for 0).
pub fn inverse(a: u8) -> u8 {
    field().inv[usize::from(a)]
}

/// x^i in GF(2^8).
pub fn power(i: usize) -> u8 {
    field().exp[i % 255]
}

/// Coefficient of data block `col` in FEC row `row`: 1 / (row + 128 + col).
/// Both below 128.
fn coefficient(row: usize, col: usize) -> u8 {
    // row < 128 and 128 + col ≥ 128: the sum (XOR) is never 0.
    inverse(((row ^ (0x80 | col)) & 0xff) as u8)
}

/// dst ^= c · src over the length of `src` (a shorter `src` is a
/// zero-padded one).
fn mul_add(dst: &mut [u8], src: &[u8], c: u8) {
    if c == 0 {
        return;
    }
    let row = &field().mul[usize::from(c)];
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= row[usize::from(*s)];
    }
}

/// Why a stripe cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FecError {
    /// More than [`MAX_DATA`] data blocks in the stripe.
    TooManyBlocks,
    /// A FEC row of [`MAX_ROWS`] or more.
    RowOutOfRange,
    /// Fewer FEC blocks than lost data blocks.
    NotEnough,
    /// The same FEC row twice: the system has no unique solution.
    Singular,
}

impl fmt::Display for FecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FecError::TooManyBlocks => "more than 128 data blocks in a FEC stripe",
            FecError::RowOutOfRange => "FEC block row out of range",
            FecError::NotEnough => "fewer FEC blocks than lost data blocks",
            FecError::Singular => "FEC blocks do not determine the lost data",
        })
    }
}

impl std::error::Error for FecError {}

/// The FEC blocks of rows `0..rows` for one stripe of data blocks, each
/// `block_size` bytes (as udp-sender computes them).
pub fn encode(data: &[&[u8]], rows: usize, block_size: usize) -> Result<Vec<Vec<u8>>, FecError> {
    if data.len() > MAX_DATA {
        return Err(FecError::TooManyBlocks);
    }
    if rows > MAX_ROWS {
        return Err(FecError::RowOutOfRange);
    }
    let mut out = vec![vec![0u8; block_size]; rows];
    for (col, d) in data.iter().enumerate() {
        let d = &d[..d.len().min(block_size)];
        for (row, f) in out.iter_mut().enumerate() {
            mul_add(f, d, coefficient(row, col));
        }
    }
    Ok(out)
}

/// Invert the `n`×`n` matrix `m` (row-major) by Gauss-Jordan elimination.
fn invert(m: &mut [u8], n: usize) -> Result<Vec<u8>, FecError> {
    let mut inv = vec![0u8; n * n];
    for i in 0..n {
        inv[i * n + i] = 1;
    }
    for col in 0..n {
        let pivot = (col..n)
            .find(|&r| m[r * n + col] != 0)
            .ok_or(FecError::Singular)?;
        if pivot != col {
            for k in 0..n {
                m.swap(pivot * n + k, col * n + k);
                inv.swap(pivot * n + k, col * n + k);
            }
        }
        let scale = inverse(m[col * n + col]);
        for k in 0..n {
            m[col * n + k] = mul(m[col * n + k], scale);
            inv[col * n + k] = mul(inv[col * n + k], scale);
        }
        for r in 0..n {
            let f = m[r * n + col];
            if r == col || f == 0 {
                continue;
            }
            for k in 0..n {
                m[r * n + k] ^= mul(f, m[col * n + k]);
                inv[r * n + k] ^= mul(f, inv[col * n + k]);
            }
        }
    }
    Ok(inv)
}

/// Rebuild the lost data blocks of one stripe.
///
/// `data[j]` is data block `j` of the stripe, or None if lost (a short
/// block counts as zero-padded); `fec` holds (row, block) pairs, of which
/// the first as many as there are lost blocks are used. Returns the lost
/// blocks, `block_size` bytes each, in the order of their positions.
pub fn decode(
    data: &[Option<&[u8]>],
    fec: &[(usize, &[u8])],
    block_size: usize,
) -> Result<Vec<Vec<u8>>, FecError> {
    if data.len() > MAX_DATA {
        return Err(FecError::TooManyBlocks);
    }
    let lost: Vec<usize> = (0..data.len()).filter(|&j| data[j].is_none()).collect();
    let e = lost.len();
    if e == 0 {
        return Ok(Vec::new());
    }
    let fec = fec.get(..e).ok_or(FecError::NotEnough)?;
    if fec.iter().any(|&(row, _)| row >= MAX_ROWS) {
        return Err(FecError::RowOutOfRange);
    }
    // Take the known data blocks out of each FEC block: what remains is
    // the contribution of the lost ones alone.
    let rest: Vec<Vec<u8>> = fec
        .iter()
        .map(|&(row, block)| {
            let mut r = vec![0u8; block_size];
            let n = block.len().min(block_size);
            r[..n].copy_from_slice(&block[..n]);
            for (col, d) in data.iter().enumerate() {
                if let Some(d) = d {
                    mul_add(&mut r, &d[..d.len().min(block_size)], coefficient(row, col));
                }
            }
            r
        })
        .collect();
    // rest = M · lost, with M[a][b] = coefficient(row a, lost column b).
    let mut m: Vec<u8> = fec
        .iter()
        .flat_map(|&(row, _)| lost.iter().map(move |&col| coefficient(row, col)))
        .collect();
    let inv = invert(&mut m, e)?;
    let mut out = vec![vec![0u8; block_size]; e];
    for (b, o) in out.iter_mut().enumerate() {
        for (a, r) in rest.iter().enumerate() {
            mul_add(o, r, inv[b * e + a]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn the_field_is_udpcasts() {
        // x · x^7 = x^8 = x^4 + x^3 + x^2 + 1 under 0x11d.
        assert_eq!(mul(0x02, 0x80), 0x1d);
        assert_eq!(power(8), 0x1d);
        // x generates the whole multiplicative group.
        let mut seen = [false; 256];
        for i in 0..255 {
            seen[usize::from(power(i))] = true;
        }
        assert_eq!(seen.iter().filter(|&&s| s).count(), 255);
        assert!(!seen[0]);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inverse(a)), 1, "1/{a:#x}");
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
        }
        // Multiplication distributes over XOR.
        for (a, b, c) in [(3u8, 7u8, 200u8), (0x53, 0xca, 0x11), (255, 254, 128)] {
            assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
            assert_eq!(mul(a, mul(b, c)), mul(mul(a, b), c));
        }
        // The first coefficient of every row: 1 / (row ^ 128).
        assert_eq!(coefficient(0, 0), inverse(0x80));
        assert_eq!(coefficient(5, 3), inverse(0x86));
    }

    #[test]
    fn encoding_pads_short_blocks_with_zeros() {
        let a = bytes(1, 32);
        let b = bytes(2, 32);
        let f = encode(&[&a, &b], 3, 32).unwrap();
        assert_eq!(f.len(), 3);
        assert_ne!(f[0], f[1]);
        // A single zero block encodes to zeros.
        let z = encode(&[&[0u8; 32][..]], 2, 32).unwrap();
        assert!(z.iter().all(|r| r.iter().all(|&v| v == 0)));
        // A short block is a zero-padded one.
        let short = encode(&[&a[..10]], 1, 32).unwrap();
        let mut padded = a[..10].to_vec();
        padded.resize(32, 0);
        assert_eq!(short, encode(&[&padded], 1, 32).unwrap());
    }

    /// Encode `k` data blocks with `rows` FEC rows, then lose every subset
    /// of at most `rows` data blocks and rebuild them from every choice of
    /// that many FEC rows (all of them for small cases).
    fn drop_and_rebuild(k: usize, rows: usize, bs: usize) {
        let data: Vec<Vec<u8>> = (0..k).map(|j| bytes(j as u64 + 7, bs)).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        let fec = encode(&refs, rows, bs).unwrap();
        for lost_mask in 0u32..(1 << k) {
            let e = lost_mask.count_ones() as usize;
            if e > rows {
                continue;
            }
            for rows_mask in 0u32..(1 << rows) {
                if rows_mask.count_ones() as usize != e {
                    continue;
                }
                let have: Vec<Option<&[u8]>> = (0..k)
                    .map(|j| (lost_mask & (1 << j) == 0).then_some(&data[j][..]))
                    .collect();
                let given: Vec<(usize, &[u8])> = (0..rows)
                    .filter(|r| rows_mask & (1 << r) != 0)
                    .map(|r| (r, &fec[r][..]))
                    .collect();
                let out = decode(&have, &given, bs).unwrap();
                let want: Vec<Vec<u8>> = (0..k)
                    .filter(|j| lost_mask & (1 << j) != 0)
                    .map(|j| data[j].clone())
                    .collect();
                assert_eq!(out, want, "k={k} lost={lost_mask:#b} rows={rows_mask:#b}");
            }
        }
    }

    #[test]
    fn any_lost_blocks_are_rebuilt_from_as_many_fec_blocks() {
        drop_and_rebuild(1, 1, 16);
        drop_and_rebuild(5, 3, 24);
        drop_and_rebuild(8, 4, 9);
    }

    #[test]
    fn full_stripes_with_high_rows() {
        // 128 data blocks (udpcast's limit), rows near 127, 8 erasures.
        let bs = 64;
        let data: Vec<Vec<u8>> = (0..MAX_DATA).map(|j| bytes(j as u64, bs)).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        let fec = encode(&refs, MAX_ROWS, bs).unwrap();
        let lost = [0usize, 1, 17, 63, 64, 100, 126, 127];
        let have: Vec<Option<&[u8]>> = (0..MAX_DATA)
            .map(|j| (!lost.contains(&j)).then_some(&data[j][..]))
            .collect();
        let given: Vec<(usize, &[u8])> = [127usize, 3, 64, 90, 0, 111, 50, 7]
            .iter()
            .map(|&r| (r, &fec[r][..]))
            .collect();
        let out = decode(&have, &given, bs).unwrap();
        for (o, &j) in out.iter().zip(&lost) {
            assert_eq!(o, &data[j], "block {j}");
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let a = [1u8; 8];
        let fec = encode(&[&a, &a], 2, 8).unwrap();
        assert_eq!(
            decode(&[None, None], &[(0, &fec[0][..])], 8),
            Err(FecError::NotEnough)
        );
        assert_eq!(
            decode(&[None, None], &[(1, &fec[1][..]), (1, &fec[1][..])], 8),
            Err(FecError::Singular)
        );
        assert_eq!(
            decode(&[None, Some(&a[..])], &[(128, &fec[0][..])], 8),
            Err(FecError::RowOutOfRange)
        );
        let many = vec![None; MAX_DATA + 1];
        assert_eq!(decode(&many, &[], 8), Err(FecError::TooManyBlocks));
        assert_eq!(decode(&[Some(&a[..])], &[], 8), Ok(Vec::new()));
    }
}
