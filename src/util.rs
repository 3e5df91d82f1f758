//! Small helpers shared by every layer (a leaf: it imports nothing of heartsink).

use std::time::{Duration, UNIX_EPOCH};

/// `ns` since the Unix epoch as an RFC 3339 timestamp with milliseconds, in UTC
/// (`2026-12-04T13:31:16.123Z`), as the admin API and confd show times.
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_has_milliseconds_in_utc() {
        assert_eq!(super::rfc3339(1_500_000_000_123_456_789), "2017-07-14T02:40:00.123Z");
    }
}
