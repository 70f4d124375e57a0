//! A small non-cryptographic random number generator (xorshift64) for the
//! sender's loss injection and the receiver's NACK backoff: cheap, and
//! reproducible from a seed where a test wants that.

use std::fs::File;
use std::io::Read;

/// A receiver's per-session token (never 0): 8 bytes of /dev/urandom, so
/// that no one else on the LAN can guess it (it tells the sender's row of
/// this receiver from reports and requests forged in its name); from the
/// pid and clock only if /dev/urandom cannot be read.
pub(crate) fn token() -> u64 {
    let mut b = [0u8; 8];
    match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b).max(1),
        Err(_) => XorShift::from_entropy().next_u64(),
    }
}

/// xorshift64 (Marsaglia); never yields 0, period 2^64 − 1.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator starting from `seed` (any value; 0 is mapped to 1).
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// A generator seeded from /dev/urandom, or from the pid and the clock
    /// if that cannot be read.
    pub(crate) fn from_entropy() -> XorShift {
        let mut b = [0u8; 8];
        let seed = match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
            Ok(()) => u64::from_ne_bytes(b),
            Err(_) => clock_ns() ^ u64::from(std::process::id()) << 32,
        };
        XorShift::new(seed)
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
fn clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_never_zero() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        for _ in 0..1000 {
            let v = a.next_u64();
            assert_eq!(v, b.next_u64());
            assert_ne!(v, 0);
        }
        assert_ne!(XorShift::new(0).next_u64(), 0);
    }
}
