//! Validated settings: chunker parameters and the store's compression level.
//!
//! Raw CLI flags live in `cli.rs`; they become these types through checked constructors, so the
//! library never sees an out-of-range size (fastcdc `assert!`s on those, and a panic is not an
//! error message).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default minimum chunk size = 16 KiB.
pub const DEFAULT_MIN: u32 = 16 * 1024;
/// Default average chunk size = 64 KiB.
pub const DEFAULT_AVG: u32 = 64 * 1024;
/// Default maximum chunk size = 256 KiB.
pub const DEFAULT_MAX: u32 = 256 * 1024;
/// Default zstd level: level 1 compresses mixed data almost as well as 3 at 1.5x the speed
/// (see the README's benchmark section).
pub const DEFAULT_LEVEL: i32 = 1;
/// Whether a new store keeps delta chunks unless told otherwise: yes, chosen by
/// `benches/delta.rs` (the README's table: 5 to 34 times less growth for a second version,
/// a first import 7–10% slower).
pub const DEFAULT_DELTA: bool = true;

/// FastCDC 2020 parameters, in bytes. They define where chunks are cut, so they are fixed per
/// store at creation and recorded in every manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter than this, except the last one of a file (with an odd `min`, one
    /// byte shorter: the cut loop hashes bytes in pairs from `2 * (min / 2)`).
    pub min: u32,
    /// The size the chunker aims at; rounded to a power of two for the cut mask.
    pub avg: u32,
    /// No chunk is longer than this.
    pub max: u32,
}

impl ChunkerParams {
    /// The defaults: 16/64/256 KiB.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min: DEFAULT_MIN,
        avg: DEFAULT_AVG,
        max: DEFAULT_MAX,
    };

    /// Checks sizes against FastCDC 2020's bounds and `min <= avg <= max`.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] naming the first value out of range.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let check = |what: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::InvalidParams(format!(
                    "{what} chunk size {v} is outside {lo}..={hi} bytes"
                )))
            }
        };
        check("min", min, MINIMUM_MIN, MINIMUM_MAX)?;
        check("avg", avg, AVERAGE_MIN, AVERAGE_MAX)?;
        check("max", max, MAXIMUM_MIN, MAXIMUM_MAX)?;
        if !(min < avg && avg < max) {
            return Err(Error::InvalidParams(format!(
                "chunk sizes must satisfy min < avg < max, got {min}/{avg}/{max}"
            )));
        }
        Ok(ChunkerParams { min, avg, max })
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for ChunkerParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FastCDC 2020 min/avg/max {}/{}/{} bytes",
            self.min, self.avg, self.max
        )
    }
}

/// What a store fixes at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Where chunks are cut.
    pub chunker: ChunkerParams,
    /// zstd level for new chunks; changing it never changes ids.
    pub level: i32,
    /// New chunks may be stored as deltas against similar stored chunks (`delta.rs`).
    pub delta: bool,
}

impl StoreConfig {
    /// Checks the compression level (1..=19) around already valid chunker params.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] if the level is out of range.
    pub fn new(chunker: ChunkerParams, level: i32) -> Result<Self> {
        if !(1..=19).contains(&level) {
            return Err(Error::InvalidParams(format!(
                "zstd level {level} is outside 1..=19"
            )));
        }
        Ok(StoreConfig {
            chunker,
            level,
            delta: DEFAULT_DELTA,
        })
    }

    /// The same config with delta chunks on or off.
    #[must_use]
    pub fn with_delta(self, delta: bool) -> Self {
        StoreConfig { delta, ..self }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunker: ChunkerParams::DEFAULT,
            level: DEFAULT_LEVEL,
            delta: DEFAULT_DELTA,
        }
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, zstd level {}, delta chunks {}",
            self.chunker,
            self.level,
            if self.delta { "on" } else { "off" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked_not_panicked_on() {
        assert!(ChunkerParams::new(16384, 65536, 262144).is_ok());
        for (min, avg, max) in [
            (0, 65536, 262144),
            (16384, 100, 262144),
            (16384, 65536, u32::MAX),
            (65536, 16384, 262144),
            (4096, 4096, 8192),
        ] {
            let err = ChunkerParams::new(min, avg, max).unwrap_err();
            assert!(matches!(err, Error::InvalidParams(_)), "{err}");
        }
        assert!(StoreConfig::new(ChunkerParams::DEFAULT, 0).is_err());
        assert!(StoreConfig::new(ChunkerParams::DEFAULT, 3).is_ok());
    }
}
