//! Versioned encoding of every value hoard persists: one version byte, then bincode 2
//! (standard config, through serde). A reader refuses versions it does not know instead of
//! guessing, so an old binary never misreads a newer store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` behind the version byte `version`.
pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// Decodes a value written by [`encode`] with the same `version`.
///
/// # Errors
/// [`Error::Version`] for another version byte, [`Error::Decode`] for damaged bytes.
pub fn decode<T: DeserializeOwned>(what: &'static str, version: u8, bytes: &[u8]) -> Result<T> {
    let Some((&found, body)) = bytes.split_first() else {
        return Err(Error::Version {
            what,
            found: 0,
            expected: version.into(),
        });
    };
    if found != version {
        return Err(Error::Version {
            what,
            found: found.into(),
            expected: version.into(),
        });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|source| Error::Decode {
            what: what.to_owned(),
            source,
        })?;
    if used != body.len() {
        return Err(Error::Decode {
            what: what.to_owned(),
            source: bincode::error::DecodeError::OtherString(format!(
                "{} trailing bytes",
                body.len() - used
            )),
        });
    }
    Ok(value)
}
