//! Parsers for the values people type (sizes, shares): on the command line (`cli.rs`,
//! `remote.rs`) and in a server's tokens file (`server/auth.rs`).

/// Accepts `65536`, `64K`, `64KiB`, `1M`, `1MiB`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let n = parse_size_u64(s)?;
    u32::try_from(n).map_err(|_| format!("{s:?} is not a size that fits in 32 bits"))
}

/// Accepts a byte count with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.find(|c: char| !c.is_ascii_digit()) {
        None => (t, 0),
        Some(i) => match t[i..].to_ascii_lowercase().as_str() {
            "k" | "kib" => (&t[..i], 10),
            "m" | "mib" => (&t[..i], 20),
            "g" | "gib" => (&t[..i], 30),
            "t" | "tib" => (&t[..i], 40),
            _ => {
                return Err(format!(
                    "{s:?} is not a size (use bytes, or a K, M, G or T suffix)"
                ));
            }
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size that fits in 64 bits"))
}

/// Accepts a share between 0 and 1, e.g. `0.2`.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (e.g. 0.2)")),
    }
}
