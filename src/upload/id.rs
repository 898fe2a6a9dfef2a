//! The id of an upload (a session or a tus upload), the key of its records: 16 bytes, 32 hex
//! digits in text. Errors, the store (tus tail files) and the upload state machines all name
//! uploads by it; it depends on nothing but `hash.rs`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::hash::Hash;

/// A session's id: 16 random-looking bytes, 32 hex characters in text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh id: the hash of `salt`, the time, the process id and a counter, so ids do not
    /// repeat.
    pub fn generate(salt: &[u8]) -> Self {
        let mut id = [0u8; 16];
        id.copy_from_slice(&Hash::fresh(salt).as_bytes()[..16]);
        SessionId(id)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for SessionId {
    type Err = NotAnId;

    fn from_str(s: &str) -> Result<Self, NotAnId> {
        let bad = || NotAnId(s.chars().take(64).collect());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(SessionId(out))
    }
}

/// Text that is not an upload id (kept to its first 64 characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAnId(pub String);
