//! The simulated network: per-receiver loss models and a seeded generator.

/// A small seeded generator (splitmix64): the simulator's runs depend on
/// their seed only.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and stream `stream` (one per receiver).
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next();
        r
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How one receiver loses packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Each packet lost with this probability, independently.
    Independent(f64),
    /// Gilbert–Elliott: a good state losing nothing and a bad state losing
    /// everything, with this mean loss and this mean burst (packets).
    Bursty { mean: f64, burst: f64 },
}

/// A loss model's state for one receiver.
#[derive(Debug, Clone)]
pub struct Channel {
    loss: Loss,
    bad: bool,
    rng: Rng,
}

impl Channel {
    /// A channel losing as `loss` says, drawn from `rng`.
    pub fn new(loss: Loss, rng: Rng) -> Channel {
        Channel {
            loss,
            bad: false,
            rng,
        }
    }

    /// Whether the next packet is lost.
    pub fn lost(&mut self) -> bool {
        match self.loss {
            Loss::Independent(p) => self.rng.unit() < p,
            Loss::Bursty { mean, burst } => {
                // Leave the bad state with 1/burst (bursts of `burst` on
                // average); enter it so that it holds `mean` of the time.
                let leave = 1.0 / burst;
                let enter = mean * leave / (1.0 - mean);
                let u = self.rng.unit();
                self.bad = if self.bad { u >= leave } else { u < enter };
                self.bad
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursty_loss_has_its_mean_and_its_bursts() {
        let mut c = Channel::new(
            Loss::Bursty {
                mean: 0.05,
                burst: 10.0,
            },
            Rng::new(1, 2),
        );
        let (mut lost, mut bursts, mut was) = (0u32, 0u32, false);
        for _ in 0..1_000_000 {
            let l = c.lost();
            lost += u32::from(l);
            bursts += u32::from(l && !was);
            was = l;
        }
        let mean = f64::from(lost) / 1e6;
        let burst = f64::from(lost) / f64::from(bursts);
        assert!((0.045..0.055).contains(&mean), "{mean}");
        assert!((9.0..11.0).contains(&burst), "{burst}");
    }
}
