//! Versioned encoding of every value hoard persists: one version byte, then bincode 2
//! (standard config, through serde). A reader refuses versions it does not know instead of
//! guessing, so an old binary never misreads a newer store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Largest record accepted = 16 MiB. A damaged length prefix then fails to decode instead of
/// asking for an allocation of whatever it says. (A limit does not change the encoding.)
const MAX_RECORD: usize = 16 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

/// Encodes `value` behind the version byte `version`.
pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Records hoard writes are far below the limit: a manifest header lists one 45-byte page
    // ref per 64 MiB of file, a page at most 1024 refs.
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding into a Vec cannot fail");
    out
}

/// Decodes a value written by [`encode`] with the same `version`. Only the canonical
/// encoding is accepted (bincode's varints could spell one value several ways): what decodes
/// re-encodes to the same bytes, so content hashes of records stay meaningful.
///
/// # Errors
/// [`Error::Version`] for another version byte, [`Error::Decode`] for damaged or
/// non-canonical bytes.
pub fn decode<T: Serialize + DeserializeOwned>(
    what: &'static str,
    version: u8,
    bytes: &[u8],
) -> Result<T> {
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
    let bad = |detail: String| Error::Decode {
        what: what.to_owned(),
        source: bincode::error::DecodeError::OtherString(detail),
    };
    if used != body.len() {
        return Err(bad(format!("{} trailing bytes", body.len() - used)));
    }
    if encode(version, &value) != bytes {
        return Err(bad("not in canonical form".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Page;

    #[test]
    fn damaged_length_prefixes_fail_instead_of_allocating() {
        // Version 1, then a varint length of about 2^63 for the page's chunk list.
        let hostile = [1u8, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            decode::<Page>("page", 1, &hostile),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            decode::<Page>("page", 2, &hostile),
            Err(Error::Version { found: 1, .. })
        ));
        assert!(matches!(
            decode::<Page>("page", 1, &[]),
            Err(Error::Version { .. })
        ));
        let page = Page::default();
        let mut bytes = encode(1, &page);
        assert_eq!(decode::<Page>("page", 1, &bytes).unwrap(), page);
        bytes.push(0);
        assert!(matches!(
            decode::<Page>("page", 1, &bytes),
            Err(Error::Decode { .. })
        ));
    }
}
