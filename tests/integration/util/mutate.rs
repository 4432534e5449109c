//! libFuzzer-style mutations with a seeded generator, for the malformed-input test and the
//! stable-toolchain mutation run of the fuzz corpora.

/// xorshift64*: deterministic, so a failing input can be regenerated from its index.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One libFuzzer-style mutation: flip bits, overwrite, insert, delete, truncate or splice.
pub fn mutate(rng: &mut Rng, data: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    mutate_from(rng, data, others)
}

/// [`mutate`] of a random member of `seeds`.
pub fn mutate_one(rng: &mut Rng, seeds: &[Vec<u8>], others: &[Vec<u8>]) -> Vec<u8> {
    let i = rng.below(seeds.len());
    mutate_from(rng, &seeds[i], others)
}

pub fn mutate_from(rng: &mut Rng, data: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = data.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len().max(1);
        match rng.below(7) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = (1 + rng.below(16)).min(v.len() - i);
                v.drain(i..i + n);
            }
            4 => v.truncate(rng.below(len)),
            5 => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                // Interesting integers over a header field.
                let i = rng.below(len.min(64));
                let word = [0u32, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000][rng.below(5)];
                for (k, b) in word.to_le_bytes().iter().enumerate() {
                    if let Some(x) = v.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
        }
    }
    v
}
