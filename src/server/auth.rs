//! Bearer tokens, each with a scope (read, append, write, admin) and a namespace; the tokens
//! file they come from (re-read on SIGHUP); the middleware that checks them and hands each
//! request the [`Principal`] it acts as.
//!
//! Tokens are kept only as BLAKE3 hashes and compared hash to hash (`blake3::Hash` compares in
//! constant time), every entry each time, so a timing side channel does not reveal a token's
//! prefix or which line it is on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::error::{Error, Result};
use crate::namespace::Namespace;

/// What a token may do; each scope may do everything the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// GET/HEAD, the missing query and chunk fetches.
    Read,
    /// Read, and add files and versions (uploads of every kind); never remove a name or a
    /// version: a stolen append token cannot destroy what is stored.
    Append,
    /// Append, and remove names, versions and files.
    Write,
    /// Write, and gc and fsck, which act on the whole store.
    Admin,
}

impl Scope {
    /// `read`, `append`, `write` or `admin`, exactly (lowercase).
    fn parse(word: &str) -> Option<Scope> {
        match word {
            "read" => Some(Scope::Read),
            "append" => Some(Scope::Append),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// How the tokens file and the OpenAPI document write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Append => "append",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// Who a request acts as: its token's scope and namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What it may do.
    pub scope: Scope,
    /// Whose names it sees.
    pub ns: Namespace,
}

impl Principal {
    /// A server without tokens: anyone may do anything, in the default namespace.
    fn open() -> Self {
        Principal {
            scope: Scope::Admin,
            ns: Namespace::default_one(),
        }
    }
}

/// One configured token: its hash, scope and namespace.
#[derive(Clone, Debug)]
struct Entry {
    hash: blake3::Hash,
    scope: Scope,
    ns: Namespace,
}

/// The configured tokens, the namespaces' quotas, and whether reads need a token.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Vec<Entry>,
    quotas: BTreeMap<Namespace, u64>,
    /// Reads need no token (writes still do); a read without one is in the default namespace.
    pub public_read: bool,
}

/// Where a server's tokens come from, kept so that SIGHUP can read them again.
#[derive(Clone, Debug, Default)]
pub struct TokensSource {
    /// `--token` values.
    pub specs: Vec<String>,
    /// `--tokens-file`.
    pub file: Option<PathBuf>,
    /// `--public-read`.
    pub public_read: bool,
}

impl TokensSource {
    /// Reads the tokens as [`Auth::new`] and [`Auth::with_file`] do.
    ///
    /// # Errors
    /// As those; [`Error::InvalidParams`] for `quota` lines, which this build reads but does
    /// not enforce yet (refused, so that nobody counts on them).
    pub fn load(&self) -> Result<Auth> {
        let auth = match &self.file {
            Some(f) => Auth::with_file(&self.specs, f, self.public_read)?,
            None => Auth::new(&self.specs, self.public_read)?,
        };
        if let (Some(f), Some(ns)) = (&self.file, auth.quotas.keys().next()) {
            return Err(Error::InvalidParams(format!(
                "{}: a quota for namespace {ns}: quotas are not enforced by this build yet; \
                 remove the `quota` lines",
                f.display()
            )));
        }
        Ok(auth)
    }
}

/// What an [`Error::InvalidParams`] says, without its prefix (it goes after a line number).
fn reason(e: Error) -> String {
    match e {
        Error::InvalidParams(why) => why,
        other => other.to_string(),
    }
}

/// A token as written, before it is hashed: scope, token, namespace, where it came from.
type Written = (Scope, String, Namespace, String);

impl Auth {
    /// Parses `--token` values: `SCOPE:TOKEN` (scope `read`, `append`, `write` or `admin`),
    /// or a bare `TOKEN` (admin: the single-user case). Every one is in the default namespace.
    ///
    /// # Errors
    /// [`Error::InvalidParams`] for an empty token, an unknown scope (anything before a `:`
    /// that is a word but not a scope, such as `Read:` or `readonly:`), or a token given twice.
    pub fn new(specs: &[String], public_read: bool) -> Result<Self> {
        Self::from_entries(Self::spec_entries(specs)?, BTreeMap::new(), public_read)
    }

    /// `--token` values plus the lines of a tokens file: `SCOPE TOKEN [NAMESPACE]` (no
    /// namespace: the default one) and `quota NAMESPACE SIZE` (`100M`, `2T`; `default` for
    /// the default namespace); `#` comments and blank lines.
    ///
    /// # Errors
    /// As [`Auth::new`]; [`Error::Io`] if the file cannot be read; [`Error::InvalidParams`]
    /// naming the line for anything else in it.
    pub fn with_file(specs: &[String], file: &std::path::Path, public_read: bool) -> Result<Self> {
        let mut entries = Self::spec_entries(specs)?;
        let mut quotas = BTreeMap::new();
        let text =
            std::fs::read_to_string(file).map_err(Error::io("cannot read tokens file", file))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{} line {}", file.display(), n + 1);
            let bad = |why: String| Error::InvalidParams(format!("{at}: {why}"));
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields[0] == "quota" {
                let [_, ns, size] = fields[..] else {
                    return Err(bad(format!(
                        "expected `quota NAMESPACE SIZE`, found {} field(s)",
                        fields.len()
                    )));
                };
                let ns = Namespace::parse(ns).map_err(|e| bad(reason(e)))?;
                let size = crate::args::parse_size_u64(size).map_err(bad)?;
                if quotas.insert(ns.clone(), size).is_some() {
                    return Err(bad(format!(
                        "a second quota for namespace {ns}; give each namespace one"
                    )));
                }
                continue;
            }
            let (word, token, ns) = match fields[..] {
                [word, token] => (word, token, Namespace::default_one()),
                [word, token, ns] => (
                    word,
                    token,
                    Namespace::parse(ns).map_err(|e| bad(reason(e)))?,
                ),
                _ => {
                    return Err(bad(format!(
                        "expected `SCOPE TOKEN [NAMESPACE]` or `quota NAMESPACE SIZE`, found \
                         {} field(s)",
                        fields.len()
                    )));
                }
            };
            let scope = Scope::parse(word).ok_or_else(|| {
                bad(format!(
                    "unknown scope {word:?}; the scopes are `read`, `append`, `write` and \
                     `admin` (or a `quota` line)"
                ))
            })?;
            entries.push((scope, token.to_owned(), ns, at));
        }
        Self::from_entries(entries, quotas, public_read)
    }

    /// `--token` values as written entries.
    fn spec_entries(specs: &[String]) -> Result<Vec<Written>> {
        let mut entries = Vec::new();
        for spec in specs {
            let (scope, token) = match spec.split_once(':') {
                Some((word, t))
                    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic()) =>
                {
                    let scope = Scope::parse(word).ok_or_else(|| {
                        Error::InvalidParams(format!(
                            "--token {word}:…: unknown scope {word:?}; use read:, append:, \
                             write: or admin: before the token"
                        ))
                    })?;
                    (scope, t)
                }
                _ => (Scope::Admin, spec.as_str()),
            };
            entries.push((
                scope,
                token.to_owned(),
                Namespace::default_one(),
                "--token".to_owned(),
            ));
        }
        Ok(entries)
    }

    fn from_entries(
        entries: Vec<Written>,
        quotas: BTreeMap<Namespace, u64>,
        public_read: bool,
    ) -> Result<Self> {
        let mut all = Vec::new();
        for (scope, token, ns, at) in entries {
            all.push((Self::hash_checked(&token, &at)?, scope, ns, at));
        }
        for (i, (h, _, _, at)) in all.iter().enumerate() {
            if let Some((_, _, _, first)) = all[..i].iter().find(|(g, ..)| g == h) {
                return Err(Error::InvalidParams(format!(
                    "{at}: the same token as {first}; give each token once, with one scope"
                )));
            }
        }
        Ok(Auth {
            tokens: all
                .into_iter()
                .map(|(hash, scope, ns, _)| Entry { hash, scope, ns })
                .collect(),
            quotas,
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

    /// Returns true if and only if no token is configured (everything is open).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many tokens are configured.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The quota of namespace `ns` in bytes, if it has one.
    pub fn quota(&self, ns: &Namespace) -> Option<u64> {
        self.quotas.get(ns).copied()
    }

    /// True when a token or a quota names a namespace other than the default one: then
    /// names, files and chunks are kept apart (README "Sharing a server"). Asked by every
    /// request: no allocation.
    pub fn shared(&self) -> bool {
        self.tokens.iter().any(|e| !e.ns.is_default())
            || self.quotas.keys().any(|ns| !ns.is_default())
    }

    /// The namespaces named by a token or a quota, the default one always among them.
    pub fn namespaces(&self) -> Vec<Namespace> {
        let mut all: Vec<Namespace> = self
            .tokens
            .iter()
            .map(|e| e.ns.clone())
            .chain(self.quotas.keys().cloned())
            .chain([Namespace::default_one()])
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn entry_of(&self, token: &str) -> Option<&Entry> {
        let h = blake3::hash(token.as_bytes());
        // Every entry is compared, so the time does not depend on which one matched.
        self.tokens
            .iter()
            .fold(None, |found, e| if e.hash == h { Some(e) } else { found })
    }

    /// Decides whether a request that needs `need` may go on with this `Authorization`
    /// value, and as whom.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] without a known token, [`ApiError::Forbidden`] for a token
    /// whose scope is below `need`.
    pub fn check(&self, need: Scope, authorization: Option<&str>) -> Result<Principal, ApiError> {
        if self.is_open() {
            return Ok(Principal::open());
        }
        // The scheme is case-insensitive (RFC 9110 section 11.1): `bearer`, `BEARER`.
        let entry = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, t)| self.entry_of(t.trim()));
        match entry {
            Some(e) if e.scope >= need => Ok(Principal {
                scope: e.scope,
                ns: e.ns.clone(),
            }),
            // With public reads, a read goes on as anyone's: in the default namespace.
            _ if need == Scope::Read && self.public_read => Ok(Principal {
                scope: Scope::Read,
                ns: Namespace::default_one(),
            }),
            Some(_) => Err(ApiError::Forbidden),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// The scope a request needs. Reads are GET/HEAD and the two POSTs that only look things up;
/// removing a file or name needs `write`; gc and fsck need `admin`; every other request adds
/// something (an upload of any kind, aborting one's own upload) and needs `append`.
pub fn needed(method: &Method, path: &str) -> Scope {
    if matches!(path, "/v1/gc" | "/v1/fsck") {
        return Scope::Admin;
    }
    // Everything about a tus upload is part of writing it (HEAD included), but for reading
    // a completed upload's file with GET.
    if path.starts_with("/v1/tus") {
        return if method == Method::GET {
            Scope::Read
        } else {
            Scope::Append
        };
    }
    let lookup = matches!(path, "/v1/chunks/missing" | "/v1/chunks/fetch");
    if method == Method::GET || method == Method::HEAD || lookup {
        Scope::Read
    } else if method == Method::DELETE && path.starts_with("/v1/files/") {
        Scope::Write
    } else {
        Scope::Append
    }
}

/// Middleware: refuses requests without the token they need, and hands the others their
/// [`Principal`] (a request extension). `/healthz`, the page's files and `OPTIONS` are
/// always open.
pub async fn require_token(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    // Open: the health check, the page's files (they hold no data), and OPTIONS (tus
    // discovery; CORS preflights are answered before they get here).
    let open = path == "/healthz" || req.method() == Method::OPTIONS || super::web::is_asset(path);
    let who = if open {
        Principal {
            scope: Scope::Read,
            ns: Namespace::default_one(),
        }
    } else {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        st.auth().check(needed(req.method(), path), auth)?
    };
    req.extensions_mut().insert(who);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Namespace {
        Namespace::parse(name).unwrap()
    }

    #[test]
    fn scopes_are_enforced() {
        let a = Auth::new(&["read:r".into(), "w".into(), "append:p".into()], false).unwrap();
        assert!(matches!(
            a.check(Scope::Read, None),
            Err(ApiError::Unauthorized)
        ));
        assert!(a.check(Scope::Read, Some("Bearer r")).is_ok());
        // A bare --token may do everything, as before scopes were finer.
        assert_eq!(
            a.check(Scope::Admin, Some("bearer w")).unwrap().scope,
            Scope::Admin
        );
        assert!(a.check(Scope::Write, Some("BEARER w")).is_ok());
        assert!(a.check(Scope::Write, Some("Basic w")).is_err());
        assert!(matches!(
            a.check(Scope::Append, Some("Bearer r")),
            Err(ApiError::Forbidden)
        ));
        assert!(a.check(Scope::Append, Some("Bearer p")).is_ok());
        assert!(matches!(
            a.check(Scope::Write, Some("Bearer p")),
            Err(ApiError::Forbidden)
        ));
        assert!(matches!(
            a.check(Scope::Write, Some("Bearer nope")),
            Err(ApiError::Unauthorized)
        ));
        let public = Auth::new(&["w".into()], true).unwrap();
        assert!(public.check(Scope::Read, None).is_ok());
        assert!(public.check(Scope::Append, None).is_err());
        assert!(Auth::new(&["read:".into()], false).is_err());
        for bad in ["Read:SECRETR", "readonly:X", "write:", " "] {
            assert!(Auth::new(&[bad.into()], false).is_err(), "{bad}");
        }
        assert!(Auth::new(&["a".into(), "write:a".into()], false).is_err());
        // A token may hold a colon after something that is not a scope word; a word before
        // a colon is a scope, and only four are known.
        assert!(Auth::new(&["s3cr:et".into(), "12:ab".into()], false).is_ok());
        assert!(Auth::new(&["secret:x".into()], false).is_err());
        assert_eq!(
            Auth::default().check(Scope::Admin, None).unwrap(),
            Principal::open()
        );
    }

    #[test]
    fn a_tokens_file_gives_namespaces_and_quotas_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# two teams\nread r0\nappend a1 team-a\nwrite w1 team-a\n\
             admin boss\nwrite w2 team-b\nquota team-a 100M\nquota default 2T\n",
        )
        .unwrap();
        let a = Auth::with_file(&["read:cli".into()], &file, false).unwrap();
        let who = |t: &str| a.check(Scope::Read, Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(who("r0").ns, Namespace::default_one());
        assert_eq!(
            (who("a1").scope, who("a1").ns),
            (Scope::Append, ns("team-a"))
        );
        assert_eq!(
            (who("w2").scope, who("w2").ns),
            (Scope::Write, ns("team-b"))
        );
        assert_eq!(who("boss").scope, Scope::Admin);
        assert_eq!(who("cli").ns, Namespace::default_one());
        assert_eq!(a.quota(&ns("team-a")), Some(100 << 20));
        assert_eq!(a.quota(&Namespace::default_one()), Some(2 << 40));
        assert_eq!(a.quota(&ns("team-b")), None);
        assert_eq!(
            a.namespaces(),
            vec![Namespace::default_one(), ns("team-a"), ns("team-b")]
        );
        assert!(a.shared());
        assert!(
            !Auth::new(&["read:x".into(), "y".into()], false)
                .unwrap()
                .shared()
        );
        for (bad, says) in [
            (
                "read r0 team-a extra\n",
                "line 1: expected `SCOPE TOKEN [NAMESPACE]`",
            ),
            ("\nowner x\n", "line 2: unknown scope \"owner\""),
            ("read x Team\n", "line 1: \"Team\" is not a namespace name"),
            ("quota team-a\n", "line 1: expected `quota NAMESPACE SIZE`"),
            ("quota team-a lots\n", "line 1: \"lots\" is not a size"),
            (
                "quota a 1M\nquota a 2M\n",
                "line 2: a second quota for namespace a",
            ),
            ("read x a\nwrite x b\n", "line 2: the same token as"),
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = Auth::with_file(&[], &file, false).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_route_needs_the_scope_its_effect_needs() {
        use Method as M;
        for (m, path, want) in [
            (M::GET, "/v1/files/a", Scope::Read),
            (M::HEAD, "/v1/files/a", Scope::Read),
            (M::POST, "/v1/chunks/missing", Scope::Read),
            (M::POST, "/v1/chunks/fetch", Scope::Read),
            (M::GET, "/v1/tus/abc", Scope::Read),
            (M::PUT, "/v1/files/a", Scope::Append),
            (M::PUT, "/v1/chunks/abc", Scope::Append),
            (M::POST, "/v1/chunks", Scope::Append),
            (M::POST, "/v1/uploads", Scope::Append),
            (M::POST, "/v1/uploads/abc/complete", Scope::Append),
            (M::DELETE, "/v1/uploads/abc", Scope::Append),
            (M::POST, "/v1/tus", Scope::Append),
            (M::PATCH, "/v1/tus/abc", Scope::Append),
            (M::HEAD, "/v1/tus/abc", Scope::Append),
            (M::DELETE, "/v1/tus/abc", Scope::Append),
            (M::DELETE, "/v1/files/a", Scope::Write),
            (M::POST, "/v1/gc", Scope::Admin),
            (M::POST, "/v1/fsck", Scope::Admin),
        ] {
            assert_eq!(needed(&m, path), want, "{m} {path}");
        }
    }

    #[test]
    fn the_openapi_document_names_the_scope_each_operation_needs() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        let mut checked = 0;
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let Some(said) = op.get("x-hoard-scope") else {
                    // Only the operations open to everyone say no scope.
                    assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                    continue;
                };
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let concrete = path.replace("{id}", "abc").replace("{sid}", "abc");
                let concrete = concrete.replace("{name}", "a/b");
                assert_eq!(said, needed(&m, &concrete).as_str(), "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked >= 25, "{checked} operations");
    }
}
