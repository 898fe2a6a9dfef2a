//! TLS to the index database: what the index URL's `sslmode` and `sslrootcert` ask for, made
//! with rustls (`tokio-postgres-rustls`), before the rest of the URL goes to the driver.
//!
//! - no `sslmode`, `disable`, `prefer` or `allow`: plain TCP, as before (the driver alone
//!   cannot negotiate TLS; `prefer` does not fall back to TLS);
//! - `require`, `verify-ca`, `verify-full`: TLS, and the server's certificate is always
//!   verified, chain and host name both, against `sslrootcert=PATH` (PEM, one or more CA
//!   certificates) if given, else the system's roots. Stricter than libpq's `require`, which
//!   takes any certificate: a store's index is not something to hand to whoever answers.
//!
//! A key=value connection string (`host=… dbname=…`) is passed on as it is (plain TCP).

use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// The URL to give the driver (without the options handled here) and the TLS connector, if
/// the URL asks for TLS.
///
/// # Errors
/// [`Error::InvalidParams`] for an `sslmode` that is not one of libpq's, `sslrootcert` without
/// a TLS mode, or a root certificate file that cannot be read or holds no certificate.
pub(super) fn split(url: &str) -> Result<(String, Option<MakeRustlsConnect>)> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok((url.to_owned(), None));
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Ok((url.to_owned(), None));
    }
    let mut mode = None;
    let mut root = None;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" => mode = Some(v.into_owned()),
            "sslrootcert" => root = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(other) => {
            return Err(Error::InvalidParams(format!(
                "the index URL's sslmode={other} is not one of disable, prefer, require, \
                 verify-ca, verify-full"
            )));
        }
    };
    if !tls && root.is_some() {
        return Err(Error::InvalidParams(
            "the index URL gives sslrootcert but no TLS: add sslmode=verify-full".into(),
        ));
    }
    if tls {
        rest.push(("sslmode".into(), "require".into()));
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(&rest);
    }
    let connector = if tls {
        Some(MakeRustlsConnect::new(client_config(root.as_deref())?))
    } else {
        None
    };
    Ok((parsed.into(), connector))
}

/// A client config that trusts the CA certificates in `root` (PEM), or the system's.
fn client_config(root: Option<&str>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                Error::InvalidParams(format!(
                    "cannot read the index's root certificate sslrootcert={path}: {e}"
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"the file holds no PEM certificate"));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(&e))?;
            }
        }
        None => {
            // Certificates the system store holds but rustls cannot use are skipped, as
            // every rustls client does.
            let found = rustls_native_certs::load_native_certs();
            let _ = roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidParams(format!("cannot set up TLS to the index: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn the_url_keeps_what_the_driver_reads_and_tls_follows_sslmode() {
        let (u, tls) = split("postgres://u:p@h:5432/db?connect_timeout=5").unwrap();
        assert_eq!(u, "postgres://u:p@h:5432/db?connect_timeout=5");
        assert!(tls.is_none());
        let (u, tls) = split("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(u, "postgres://u@h/db");
        assert!(tls.is_none());
        let (u, tls) = split("postgresql://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(u, "postgresql://u@h/db?application_name=x&sslmode=require");
        assert!(tls.is_some());
        // Not a URL: passed on untouched.
        let (u, tls) = split("host=h dbname=db").unwrap();
        assert_eq!(u, "host=h dbname=db");
        assert!(tls.is_none());
    }

    #[test]
    fn bad_tls_options_are_refused_with_what_to_do() {
        let e = split("postgres://u@h/db?sslmode=sometimes")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("sslmode=sometimes"), "{e}");
        let e = split("postgres://u@h/db?sslrootcert=/tmp/ca.pem")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("add sslmode=verify-full"), "{e}");
        let e = split("postgres://u@h/db?sslmode=require&sslrootcert=/no/such/ca.pem")
            .err()
            .expect("refused");
        assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let url = format!(
            "postgres://u@h/db?sslmode=require&sslrootcert={}",
            empty.path().display()
        );
        let e = split(&url).err().expect("refused");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
