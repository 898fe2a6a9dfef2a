//! What the binary shows people: byte sizes, counts, progress bars on a terminal, and the
//! one way it writes results to stdout.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `1.00 GiB`, `11.8 MiB`, `512 B`: binary units, three significant digits.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let u = UNITS[unit];
    if v < 9.995 {
        format!("{v:.2} {u}")
    } else if v < 99.95 {
        format!("{v:.1} {u}")
    } else {
        format!("{v:.0} {u}")
    }
}

/// `16 384`: digits grouped by three with spaces.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A byte progress bar on stderr, or a hidden one when stderr is not a terminal.
pub fn bar(total: Option<u64>, verb: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
    } else {
        "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(verb.to_owned());
    pb
}

/// Writes `text` to stdout; a closed pipe comes back as an error (quiet in `main`), not a panic.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = Stdout(std::io::stdout());
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Standard output, whose reader going away (`hoard export x - | head`) is told apart from any
/// other broken pipe (a server's connection, say): `main` ends quietly on that one only.
pub struct Stdout(pub std::io::Stdout);

/// Stdout's reader has gone away.
#[derive(Debug, thiserror::Error)]
#[error("the reader of standard output went away")]
pub struct StdoutClosed;

fn closed(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(e.kind(), StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(closed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(closed)
    }
}

/// Whether `e` is stdout's reader going away (and nothing else: a push whose connection broke
/// with a broken pipe is a failure like any other).
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stdout_going_away_is_quiet() {
        use std::io::{Error, ErrorKind};
        // A push whose connection broke: reported, exit 1.
        let push = anyhow::Error::from(Error::from(ErrorKind::BrokenPipe)).context("cannot push");
        assert!(!is_stdout_closed(&push));
        let export = anyhow::Error::from(closed(Error::from(ErrorKind::BrokenPipe)))
            .context("cannot export");
        assert!(is_stdout_closed(&export));
        let full = anyhow::Error::from(closed(Error::from(ErrorKind::StorageFull)));
        assert!(!is_stdout_closed(&full));
    }

    #[test]
    fn sizes_and_counts_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1 << 30), "1.00 GiB");
        assert_eq!(bytes(12_373_196), "11.8 MiB");
        assert_eq!(bytes(300 * 1024), "300 KiB");
        assert_eq!(count(16384), "16 384");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000_000), "1 000 000");
    }
}
