//! Bearer tokens with a read or a write scope, and the middleware that checks them.
//!
//! Tokens are kept only as BLAKE3 hashes and compared hash to hash (`blake3::Hash` compares in
//! constant time), so a timing side channel does not reveal a token's prefix.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::error::{Error, Result};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// GET/HEAD, the missing query and chunk fetches.
    Read,
    /// Everything.
    Write,
}

impl Scope {
    /// `read` or `write`, exactly (lowercase).
    fn parse(word: &str) -> Option<Scope> {
        match word {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

/// The configured tokens and whether reads need one.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<(blake3::Hash, Scope)>,
    /// Reads need no token (writes still do).
    pub public_read: bool,
}

impl Auth {
    /// Parses `--token` values: `read:TOKEN`, `write:TOKEN`, or a bare `TOKEN` (write).
    ///
    /// # Errors
    /// [`Error::InvalidParams`] for an empty token, an unknown scope (anything before a `:`
    /// that is a word but not `read` or `write`, such as `Read:` or `readonly:`), or a token
    /// given twice.
    pub fn new(specs: &[String], public_read: bool) -> Result<Self> {
        Self::from_entries(Self::spec_entries(specs)?, public_read)
    }

    /// `--token` values plus the lines of a tokens file.
    ///
    /// # Errors
    /// As [`Auth::new`]; [`Error::Io`] if the file cannot be read; [`Error::InvalidParams`]
    /// naming the line for a line that is not `read TOKEN` or `write TOKEN`, an empty token,
    /// or a token given twice.
    pub fn with_file(specs: &[String], file: &std::path::Path, public_read: bool) -> Result<Self> {
        let mut entries = Self::spec_entries(specs)?;
        let text =
            std::fs::read_to_string(file).map_err(Error::io("cannot read tokens file", file))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{} line {}", file.display(), n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [word, token] = fields[..] else {
                return Err(Error::InvalidParams(format!(
                    "{at}: expected `read TOKEN` or `write TOKEN`, found {} field(s)",
                    fields.len()
                )));
            };
            let scope = Scope::parse(word).ok_or_else(|| {
                Error::InvalidParams(format!(
                    "{at}: unknown scope {word:?}; the scopes are `read` and `write`"
                ))
            })?;
            entries.push((scope, token.to_owned(), at));
        }
        Self::from_entries(entries, public_read)
    }

    /// `--token` values as (scope, token, where it came from).
    fn spec_entries(specs: &[String]) -> Result<Vec<(Scope, String, String)>> {
        let mut entries = Vec::new();
        for spec in specs {
            let (scope, token) = match spec.split_once(':') {
                Some((word, t))
                    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic()) =>
                {
                    let scope = Scope::parse(word).ok_or_else(|| {
                        Error::InvalidParams(format!(
                            "--token {word}:…: unknown scope {word:?}; use read:TOKEN or write:TOKEN"
                        ))
                    })?;
                    (scope, t)
                }
                _ => (Scope::Write, spec.as_str()),
            };
            entries.push((scope, token.to_owned(), "--token".to_owned()));
        }
        Ok(entries)
    }

    fn from_entries(entries: Vec<(Scope, String, String)>, public_read: bool) -> Result<Self> {
        let mut all = Vec::new();
        for (scope, token, at) in entries {
            all.push((Self::hash_checked(&token, &at)?, scope, at));
        }
        Self::check_unique(&all)?;
        Ok(Auth {
            tokens: all.into_iter().map(|(h, s, _)| (h, s)).collect(),
            public_read,
        })
    }

    fn hash_checked(token: &str, at: &str) -> Result<blake3::Hash> {
        if token.trim().is_empty() {
            return Err(Error::InvalidParams(format!(
                "{at}: a token cannot be empty"
            )));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(Error::InvalidParams(format!(
                "{at}: a token cannot contain spaces"
            )));
        }
        Ok(blake3::hash(token.as_bytes()))
    }

    fn check_unique(all: &[(blake3::Hash, Scope, String)]) -> Result<()> {
        for (i, (h, _, at)) in all.iter().enumerate() {
            if let Some((_, _, first)) = all[..i].iter().find(|(g, _, _)| g == h) {
                return Err(Error::InvalidParams(format!(
                    "{at}: the same token as {first}; give each token once, with one scope"
                )));
            }
        }
        Ok(())
    }

    /// Returns true if and only if no token is configured (everything is open).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    fn scope_of(&self, token: &str) -> Option<Scope> {
        let h = blake3::hash(token.as_bytes());
        // Every entry is compared, so the time does not depend on which one matched.
        self.tokens
            .iter()
            .filter(|(t, _)| *t == h)
            .map(|(_, s)| *s)
            .max()
    }

    /// Decides whether a request that needs `need` may go on with this `Authorization` value.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] without a known token, [`ApiError::Forbidden`] for a read
    /// token on a write.
    pub fn check(&self, need: Scope, authorization: Option<&str>) -> Result<(), ApiError> {
        if self.is_open() || (need == Scope::Read && self.public_read) {
            return Ok(());
        }
        // The scheme is case-insensitive (RFC 9110 section 11.1): `bearer`, `BEARER`.
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t)
            .ok_or(ApiError::Unauthorized)?;
        match self.scope_of(token.trim()) {
            None => Err(ApiError::Unauthorized),
            Some(have) if have < need => Err(ApiError::Forbidden),
            Some(_) => Ok(()),
        }
    }
}

/// The scope a request needs: reads are GET/HEAD and the two POSTs that only look things up.
fn needed(method: &Method, path: &str) -> Scope {
    let lookup = matches!(path, "/v1/chunks/missing" | "/v1/chunks/fetch");
    // Everything about a tus upload is part of writing it (HEAD included), but for reading
    // a completed upload's file with GET.
    if path.starts_with("/v1/tus") {
        return if method == Method::GET {
            Scope::Read
        } else {
            Scope::Write
        };
    }
    if method == Method::GET || method == Method::HEAD || lookup {
        Scope::Read
    } else {
        Scope::Write
    }
}

/// Middleware: refuses requests without the token they need. `/healthz`, the page at `/` and
/// `OPTIONS` are always open.
pub async fn require_token(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    // Open: the health check, the page's files (they hold no data), and OPTIONS (tus
    // discovery; CORS preflights are answered before they get here).
    let open = path == "/healthz" || req.method() == Method::OPTIONS || super::web::is_asset(path);
    if !open {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        st.auth().check(needed(req.method(), path), auth)?;
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_enforced() {
        let a = Auth::new(&["read:r".into(), "w".into()], false).unwrap();
        assert!(matches!(
            a.check(Scope::Read, None),
            Err(ApiError::Unauthorized)
        ));
        assert!(a.check(Scope::Read, Some("Bearer r")).is_ok());
        assert!(a.check(Scope::Write, Some("bearer w")).is_ok());
        assert!(a.check(Scope::Write, Some("BEARER w")).is_ok());
        assert!(a.check(Scope::Write, Some("Basic w")).is_err());
        assert!(matches!(
            a.check(Scope::Write, Some("Bearer r")),
            Err(ApiError::Forbidden)
        ));
        assert!(a.check(Scope::Write, Some("Bearer w")).is_ok());
        assert!(matches!(
            a.check(Scope::Write, Some("Bearer nope")),
            Err(ApiError::Unauthorized)
        ));
        let public = Auth::new(&["w".into()], true).unwrap();
        assert!(public.check(Scope::Read, None).is_ok());
        assert!(Auth::new(&["read:".into()], false).is_err());
        for bad in ["Read:SECRETR", "readonly:X", "write:", " "] {
            assert!(Auth::new(&[bad.into()], false).is_err(), "{bad}");
        }
        assert!(Auth::new(&["a".into(), "write:a".into()], false).is_err());
        // A token may hold a colon after something that is not a scope word; a word before
        // a colon is a scope, and only two are known.
        assert!(Auth::new(&["s3cr:et".into(), "12:ab".into()], false).is_ok());
        assert!(Auth::new(&["secret:x".into()], false).is_err());
        assert!(Auth::default().check(Scope::Write, None).is_ok());
    }
}
