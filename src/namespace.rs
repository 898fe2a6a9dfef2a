//! Namespaces: the separate sets of names that the teams sharing one server each see. A
//! server's tokens file gives every token one; a store without any has only the default one.
//!
//! Names are kept in the store's one table of names under a key that says their namespace:
//! a name of the default namespace under itself (so a store made before namespaces needs no
//! change), a name of namespace `NS` under `\x01NS\x01NAME`. A name never holds a control
//! character (`names::validate`), so the two kinds of key never meet.

use std::borrow::Cow;
use std::fmt;

use crate::error::{Error, Result};

/// How the default namespace is written where one must be named (a `quota` line).
pub const DEFAULT: &str = "default";
/// Longest namespace name, in bytes.
pub const MAX_LEN: usize = 64;

/// A namespace: the default one, or one named with lowercase letters, digits, `.`, `_` and
/// `-` (starting with a letter or digit, at most [`MAX_LEN`] bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(Option<String>);

impl Namespace {
    /// The default namespace: where a token without one, and every name stored before
    /// namespaces existed, lives.
    pub fn default_one() -> Self {
        Namespace(None)
    }

    /// Parses a namespace name; [`DEFAULT`] is the default namespace.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] saying what a namespace name may be.
    pub fn parse(name: &str) -> Result<Self> {
        if name == DEFAULT {
            return Ok(Self::default_one());
        }
        let ok = !name.is_empty()
            && name.len() <= MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(Error::InvalidParams(format!(
                "{name:?} is not a namespace name: use 1 to {MAX_LEN} lowercase letters, digits, \
                 `.`, `_` or `-`, starting with a letter or digit"
            )));
        }
        Ok(Namespace(Some(name.to_owned())))
    }

    /// True for the default namespace.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }

    /// Its name ([`DEFAULT`] for the default one).
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or(DEFAULT)
    }

    /// The key `name` is stored under in this namespace.
    pub fn key<'n>(&self, name: &'n str) -> Cow<'n, str> {
        match &self.0 {
            None => Cow::Borrowed(name),
            Some(ns) => Cow::Owned(format!("{MARK}{ns}{MARK}{name}")),
        }
    }

    /// The name stored under `key`, if `key` is in this namespace.
    pub fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let (ns, name) = split_key(key);
        (ns == self.0.as_deref()).then_some(name)
    }
}

impl Namespace {
    /// The namespace and the name of a stored key.
    pub fn of_key(key: &str) -> (Namespace, &str) {
        let (ns, name) = split_key(key);
        (Namespace(ns.map(str::to_owned)), name)
    }

    /// The namespace of an upload whose file gets the name stored under `key` (an unnamed
    /// upload's is the default one).
    pub fn of_upload(key: Option<&str>) -> Namespace {
        key.map_or_else(Namespace::default_one, |k| Self::of_key(k).0)
    }
}

/// Starts and ends a namespace in a stored key.
const MARK: char = '\u{1}';

/// The namespace (`None`: the default one) and the name of a stored key.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    key.strip_prefix(MARK)
        .and_then(|rest| rest.split_once(MARK))
        .map_or((None, key), |(ns, name)| (Some(ns), name))
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_default_is_the_default() {
        assert!(Namespace::parse("default").unwrap().is_default());
        assert_eq!(Namespace::default(), Namespace::default_one());
        for ok in ["team-a", "a", "0", "lab.2_x"] {
            assert_eq!(Namespace::parse(ok).unwrap().as_str(), ok);
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in ["", "Team", "-a", ".a", "a b", "a/b", "é", long.as_str()] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_keep_each_namespace_to_itself() {
        let (d, a, b) = (
            Namespace::default_one(),
            Namespace::parse("a").unwrap(),
            Namespace::parse("b").unwrap(),
        );
        assert_eq!(d.key("x/y"), "x/y");
        let ka = a.key("x/y");
        assert_eq!(a.name_of(&ka), Some("x/y"));
        assert_eq!(d.name_of(&ka), None);
        assert_eq!(b.name_of(&ka), None);
        assert_eq!(a.name_of("x/y"), None);
        assert_eq!(d.name_of("x/y"), Some("x/y"));
        assert_eq!(split_key(&ka), (Some("a"), "x/y"));
    }
}
