//! tus request headers: `Upload-Checksum` (the checksum extension: sha1 and blake3) and
//! `Upload-Metadata` (base64 values, of which `filename` or `name` names the file).

use base64::Engine as _;
use sha1::Digest as _;

use crate::error::{Error, Result};
use crate::names;

/// Longest `Upload-Metadata` header kept.
const MAX_METADATA: usize = 4096;

/// A checksum algorithm of the checksum extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-1 (what every tus client offers).
    Sha1,
    /// BLAKE3 (hoard's own hash).
    Blake3,
}

/// Algorithms for `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,blake3";

impl Algorithm {
    pub(super) fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// An `Upload-Checksum`: the algorithm and the digest the body must have.
#[derive(Clone, Debug)]
pub struct Checksum {
    pub(super) algorithm: Algorithm,
    pub(super) digest: Vec<u8>,
}

impl Checksum {
    /// Parses `ALGORITHM BASE64DIGEST`.
    ///
    /// # Errors
    /// [`Error::Malformed`] for an unknown algorithm or a bad digest.
    pub fn parse(header: &str) -> Result<Self> {
        let bad = |detail: String| Error::Malformed {
            what: "Upload-Checksum header",
            detail,
        };
        let (algo, digest) = header
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("expected `ALGORITHM BASE64`".into()))?;
        let (algorithm, len) = match algo {
            "sha1" => (Algorithm::Sha1, 20),
            "blake3" => (Algorithm::Blake3, 32),
            other => {
                return Err(bad(format!(
                    "unsupported algorithm {other:?}; this server offers {CHECKSUM_ALGORITHMS}"
                )));
            }
        };
        let digest = base64::engine::general_purpose::STANDARD
            .decode(digest.trim())
            .map_err(|e| bad(format!("digest is not base64: {e}")))?;
        if digest.len() != len {
            return Err(bad(format!(
                "a {algo} digest has {len} bytes, not {}",
                digest.len()
            )));
        }
        Ok(Checksum { algorithm, digest })
    }
}

pub(super) enum Digester {
    Sha1(sha1::Sha1),
    Blake3(Box<blake3::Hasher>),
}

impl Digester {
    pub(super) fn new(a: Algorithm) -> Self {
        match a {
            Algorithm::Sha1 => Digester::Sha1(sha1::Sha1::new()),
            Algorithm::Blake3 => Digester::Blake3(Box::default()),
        }
    }

    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha1(h) => h.update(data),
            Digester::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub(super) fn finish(self) -> Vec<u8> {
        match self {
            Digester::Sha1(h) => h.finalize().to_vec(),
            Digester::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// Parses `Upload-Metadata` (`key base64, key base64, key`) into keys and decoded values.
///
/// # Errors
/// [`Error::Malformed`] for an empty or repeated key or a value that is not base64.
pub fn parse_metadata(header: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |detail: String| Error::Malformed {
        what: "Upload-Metadata header",
        detail,
    };
    if header.len() > MAX_METADATA {
        return Err(bad(format!("longer than {MAX_METADATA} bytes")));
    }
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for pair in header.split(',') {
        let pair = pair.trim_start();
        if pair.trim().is_empty() {
            continue;
        }
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.is_ascii() {
            return Err(bad(format!("bad key {key:?}")));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(bad(format!("key {key:?} appears twice")));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| bad(format!("value of {key:?} is not base64: {e}")))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// The name a file gets from its metadata: `filename`, else `name` (Uppy sends both).
pub(super) fn name_from(metadata: &[(String, Vec<u8>)]) -> Result<Option<String>> {
    let value = ["filename", "name"]
        .iter()
        .find_map(|key| metadata.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v);
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let name = String::from_utf8(value.clone()).map_err(|_| Error::Malformed {
        what: "Upload-Metadata header",
        detail: "filename is not UTF-8".into(),
    })?;
    names::validate(&name)?;
    Ok(Some(name))
}
