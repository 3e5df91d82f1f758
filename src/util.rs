//! Small helpers shared by every layer (a leaf: it imports nothing of heartsink).

use std::time::{Duration, UNIX_EPOCH};

/// `ns` since the Unix epoch as an RFC 3339 timestamp with milliseconds, in UTC
/// (`2026-12-04T13:31:16.123Z`), as the admin API and confd show times.
pub fn rfc3339(ns: u64) -> String {
    rfc3339_display(ns).to_string()
}

/// [`rfc3339`] as a `Display` (formats into a fixed buffer: no allocation).
pub fn rfc3339_display(ns: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Largest configuration file read (`--config`): 16 MiB.
pub const MAX_CONFIG_FILE: u64 = 16 << 20;
/// Largest key file read (heartbeat and confd): 1 MiB.
pub const MAX_KEY_FILE: u64 = 1 << 20;
/// Largest Ganeti `config.data` read: 256 MiB.
pub const MAX_GANETI_CONFIG: u64 = 256 << 20;

/// Reads at most `max` bytes of `path`: a longer file (or one that never ends, such as
/// `/dev/zero`) is an error instead of a read that takes all the memory and never returns.
pub fn read_bounded(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(out)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_string(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_reads_refuse_what_is_longer_and_what_never_ends() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abcd").unwrap();
        assert_eq!(super::read_bounded(&f, 4).unwrap(), b"abcd");
        assert!(super::read_bounded(&f, 3).unwrap_err().to_string().contains("larger than 3 bytes"));
        let e = super::read_bounded(std::path::Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        std::fs::write(&f, b"\xff").unwrap();
        assert!(super::read_bounded_string(&f, 4).is_err());
    }

    #[test]
    fn rfc3339_has_milliseconds_in_utc() {
        assert_eq!(super::rfc3339(1_500_000_000_123_456_789), "2017-07-14T02:40:00.123Z");
    }
}
