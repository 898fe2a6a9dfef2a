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

/// The configured tokens and whether reads need one.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<(blake3::Hash, Scope)>,
    /// Reads need no token (writes still do).
    pub public_read: bool,
}

impl Auth {
    /// Parses `[read:|write:]TOKEN` specs (write when no scope is given).
    ///
    /// # Errors
    /// [`Error::InvalidParams`] for an empty token.
    pub fn new(specs: &[String], public_read: bool) -> Result<Self> {
        let mut tokens = Vec::new();
        for spec in specs {
            let (scope, token) = match spec.split_once(':') {
                Some(("read", t)) => (Scope::Read, t),
                Some(("write", t)) => (Scope::Write, t),
                _ => (Scope::Write, spec.as_str()),
            };
            if token.trim().is_empty() {
                return Err(Error::InvalidParams("a token cannot be empty".into()));
            }
            tokens.push((blake3::hash(token.as_bytes()), scope));
        }
        Ok(Auth {
            tokens,
            public_read,
        })
    }

    /// Reads a tokens file: one `read TOKEN`, `write TOKEN` or `TOKEN` per line; `#` comments.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read.
    pub fn specs_from_file(path: &std::path::Path) -> Result<Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(Error::io("cannot read tokens file", path))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| match l.split_once(char::is_whitespace) {
                Some((scope, t)) => format!("{scope}:{}", t.trim()),
                None => l.to_owned(),
            })
            .collect())
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
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
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
    // Everything about a tus upload is part of writing it (HEAD included).
    if path.starts_with("/v1/tus") {
        return Scope::Write;
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
        assert!(Auth::default().check(Scope::Write, None).is_ok());
    }
}
