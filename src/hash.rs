//! `Hash`: the BLAKE3 of some bytes, the identity of every chunk, manifest page and file.
//!
//! A chunk id is the hash of the chunk's *uncompressed* bytes, so ids do not change with the
//! zstd level. A file id is the hash of the whole file: exactly what `b3sum FILE` prints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a hash in bytes.
pub const HASH_LEN: usize = 32;

/// A BLAKE3 hash: 32 bytes, 64 lowercase hex characters in text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; HASH_LEN]);

impl Hash {
    /// A hash no other call returns in practice: of `salt`, the time, the process id and a
    /// counter. Fresh names (upload ids, pack objects) are cut from it.
    pub fn fresh(salt: &[u8]) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut h = blake3::Hasher::new();
        h.update(salt);
        h.update(&nanos.to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        Hash::from(h.finalize())
    }

    /// Hashes `data` with BLAKE3.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
        Hash(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Reads a hash from a 32-byte slice; `None` if the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Hash)
    }

    /// The 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

/// The text was not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a BLAKE3 id (64 hex characters)")]
pub struct ParseHashError(pub String);

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(Hash::from)
            .map_err(|_| ParseHashError(s.to_owned()))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            let bytes = <serde_bytes_compat::Bytes32>::deserialize(d)?;
            Ok(Hash(bytes.0))
        }
    }
}

/// Decodes 32 raw bytes from a serde byte string without pulling in `serde_bytes`.
mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, Error, Visitor};
    use std::fmt;

    pub struct Bytes32(pub [u8; 32]);

    impl<'de> Deserialize<'de> for Bytes32 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes32;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("32 bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes32, E> {
                    v.try_into()
                        .map(Bytes32)
                        .map_err(|_| E::invalid_length(v.len(), &self))
                }
                fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes32, E> {
                    self.visit_bytes(v)
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes32, E> {
                    self.visit_bytes(&v)
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_matches_blake3() {
        let h = Hash::of(b"hoard");
        assert_eq!(h.to_hex(), blake3::hash(b"hoard").to_hex().as_str());
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert!("xyz".parse::<Hash>().is_err());
    }

    #[test]
    fn serde_is_bytes_in_bincode_and_hex_in_json() {
        let h = Hash::of(b"x");
        let bin = bincode::serde::encode_to_vec(h, bincode::config::standard()).unwrap();
        assert_eq!(bin.len(), 33); // one length byte + 32 raw bytes
        let (back, _): (Hash, usize) =
            bincode::serde::decode_from_slice(&bin, bincode::config::standard()).unwrap();
        assert_eq!(back, h);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{h}\""));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
    }
}
