//! Test support: a deterministic "tape" RNG that hands out fixed bytes in
//! order, so sealing is reproducible for vectors and property tests.

use std::convert::Infallible;

use hpke::rand_core::{TryCryptoRng, TryRng};

pub struct Tape {
    bytes: Vec<u8>,
    pos: usize,
}

impl Tape {
    pub fn new(bytes: Vec<u8>) -> Tape {
        Tape { bytes, pos: 0 }
    }
    #[allow(dead_code)]
    pub fn used(&self) -> usize {
        self.pos
    }
}

impl TryRng for Tape {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let end = self.pos + dst.len();
        assert!(end <= self.bytes.len(), "test tape exhausted");
        dst.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(())
    }
}

impl TryCryptoRng for Tape {}

/// 32 bytes: `start, start+1, …` (wrapping).
#[allow(dead_code)]
pub fn pattern32(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}
