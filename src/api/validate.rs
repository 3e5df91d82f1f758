//! Bounds on every admin-API field that reaches the store or the scheduler, checked before any
//! command is sent, so a refused request changes nothing. Each check answers with a message
//! naming the field; the API turns it into `400 {"error": …, "status": 400}`.
//!
//! | field | bound |
//! |---|---|
//! | volume `size` (create, patch) | [`MIN_VOLUME_SIZE`]–[`MAX_VOLUME_SIZE`] bytes (1 B – 1 PiB) |
//! | volume `name` | 0–[`MAX_NAME`] bytes of [`is_name_char`] (`[A-Za-z0-9._:-]`) |
//! | volume `constraints` | at most [`MAX_CONSTRAINTS`] labels, each 1–[`MAX_LABEL`] bytes of [`is_name_char`] |
//! | report `machine` | 1–[`MAX_NAME`] bytes, no control characters |
//! | report `message` | at most [`MAX_MESSAGE`] bytes |
//! | service `type` (push, flush) | 1–64 bytes of `[a-z0-9_-]` (as the service heartbeat) |
//! | service `addr` | at most [`MAX_ADDR`] bytes (then `ip:port`, checked by the registry) |
//! | service `ns` | at most [`MAX_NAME`] bytes |
//! | service `tags` | at most 256; names 1–128 bytes, no control characters; strings at most 1024 bytes; floats finite |
//! | service `tag.service_id` | 1–36 characters, no control characters |
//! | services per push | at most [`MAX_PUSH`] |
//! | pool `name` | 1–[`MAX_NAME`] bytes of [`is_name_char`] |
//! | pool `targets` | 1–[`MAX_TARGETS_LEN`] bytes, no control characters |
//! | amphora `expected_listeners` | 0–[`MAX_EXPECTED_LISTENERS`] |
//! | amphora `zone` | 1–[`MAX_LABEL`] bytes of [`is_name_char`] |

use crate::control::services::ServiceEntry;
use crate::control::volumes::{VolumeCreate, VolumePatch, VolumeReport};
use crate::proto::service::{MAX_ID_CHARS, MAX_TAGS, MAX_TAG_NAME, MAX_TAG_STR, MAX_TYPE_LEN};
use crate::registry::TagValue;

/// Smallest volume size, bytes.
pub const MIN_VOLUME_SIZE: u64 = 1;
/// Largest volume size, bytes (1 PiB).
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;
/// Longest volume, pool or machine name, and service namespace, bytes.
pub const MAX_NAME: usize = 128;
/// Most constraint labels on a volume.
pub const MAX_CONSTRAINTS: usize = 32;
/// Longest constraint label, bytes.
pub const MAX_LABEL: usize = 64;
/// Longest failure message in a volume report, bytes.
pub const MAX_MESSAGE: usize = 4096;
/// Longest service address, bytes (`[` v6 `]:` port is at most 47).
pub const MAX_ADDR: usize = 64;
/// Most services in one push.
pub const MAX_PUSH: usize = 1024;
/// Longest pool target string, bytes.
pub const MAX_TARGETS_LEN: usize = 4096;
/// Largest `expected_listeners` of an amphora.
pub const MAX_EXPECTED_LISTENERS: u32 = 65535;

/// Name characters: ASCII letters, digits, `.`, `_`, `:` and `-`.
pub fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-')
}

fn name(field: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    if s.len() < min || s.len() > max || !s.bytes().all(is_name_char) {
        return Err(format!("{field} must be {min}–{max} bytes of [A-Za-z0-9._:-]"));
    }
    Ok(())
}

fn text(field: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    if s.len() < min || s.len() > max || s.chars().any(char::is_control) {
        return Err(format!("{field} must be {min}–{max} bytes without control characters"));
    }
    Ok(())
}

fn size(field: &str, n: u64) -> Result<(), String> {
    if !(MIN_VOLUME_SIZE..=MAX_VOLUME_SIZE).contains(&n) {
        return Err(format!("{field} must be in {MIN_VOLUME_SIZE}..={MAX_VOLUME_SIZE} bytes"));
    }
    Ok(())
}

fn constraints(list: &[String]) -> Result<(), String> {
    if list.len() > MAX_CONSTRAINTS {
        return Err(format!("constraints: at most {MAX_CONSTRAINTS} labels"));
    }
    list.iter().try_for_each(|l| name("constraints", l, 1, MAX_LABEL))
}

/// `POST /v1/volumes`.
pub fn volume_create(v: &VolumeCreate) -> Result<(), String> {
    name("name", &v.name, 0, MAX_NAME)?;
    size("size", v.size)?;
    constraints(&v.constraints)
}

/// `PATCH /v1/volumes/{id}`.
pub fn volume_patch(p: &VolumePatch) -> Result<(), String> {
    if let Some(n) = p.size {
        size("size", n)?;
    }
    p.constraints.as_deref().map_or(Ok(()), constraints)
}

/// `POST /v1/volumes/{id}/state`.
pub fn volume_report(r: &VolumeReport) -> Result<(), String> {
    text("machine", &r.machine, 1, MAX_NAME)?;
    if r.message.len() > MAX_MESSAGE {
        return Err(format!("message must be at most {MAX_MESSAGE} bytes"));
    }
    Ok(())
}

/// A service type, as the service heartbeat accepts it.
pub fn service_type(field: &str, t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !ok {
        return Err(format!("{field} must be 1–{MAX_TYPE_LEN} bytes of [a-z0-9_-]"));
    }
    Ok(())
}

/// One service of `POST /v1/services` (any action).
pub fn service(e: &ServiceEntry) -> Result<(), String> {
    service_type("type", &e.type_name)?;
    text("addr", &e.addr, 1, MAX_ADDR)?;
    if let Some(ns) = &e.ns {
        text("ns", ns, 0, MAX_NAME)?;
    }
    if e.tags.len() > MAX_TAGS {
        return Err(format!("tags: at most {MAX_TAGS}"));
    }
    for (k, v) in &e.tags {
        text("a tag name", k, 1, MAX_TAG_NAME)?;
        match v {
            TagValue::Str(s)
                if k == "tag.service_id"
                    && (s.is_empty() || s.chars().count() > MAX_ID_CHARS || s.chars().any(char::is_control)) =>
            {
                return Err(format!("tag.service_id must be 1–{MAX_ID_CHARS} characters without control characters"));
            }
            TagValue::Str(s) if s.len() > MAX_TAG_STR => {
                return Err(format!("tag {k:?}: a string value must be at most {MAX_TAG_STR} bytes"));
            }
            TagValue::Float(f) if !f.is_finite() => return Err(format!("tag {k:?}: a float must be finite")),
            _ => {}
        }
    }
    Ok(())
}

/// `POST /v1/pools`.
pub fn pool(n: &str, targets: &str) -> Result<(), String> {
    name("name", n, 1, MAX_NAME)?;
    text("targets", targets, 1, MAX_TARGETS_LEN)
}

/// `PATCH /v1/amphorae/{id}`: an amphora's zone label.
pub fn zone(z: &str) -> Result<(), String> {
    name("zone", z, 1, MAX_LABEL)
}

/// `PATCH /v1/amphorae/{id}`: an amphora's expected listener count.
pub fn expected_listeners(n: u32) -> Result<(), String> {
    if n > MAX_EXPECTED_LISTENERS {
        return Err(format!("expected_listeners must be in 0..={MAX_EXPECTED_LISTENERS} or null"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vol(name: &str, size: u64) -> VolumeCreate {
        serde_json::from_value(serde_json::json!({"name": name, "size": size})).unwrap()
    }

    #[test]
    fn volume_bounds_name_the_field() {
        assert!(volume_create(&vol("v1", 1)).is_ok());
        assert!(volume_create(&vol("", MAX_VOLUME_SIZE)).is_ok());
        assert!(volume_create(&vol("v", 0)).unwrap_err().starts_with("size"));
        assert!(volume_create(&vol("v", u64::MAX)).unwrap_err().starts_with("size"));
        assert!(volume_create(&vol(&"a".repeat(MAX_NAME + 1), 1)).unwrap_err().starts_with("name"));
        assert!(volume_create(&vol("a b", 1)).unwrap_err().starts_with("name"));
    }

    #[test]
    fn service_bounds_name_the_field() {
        let svc = |tags: serde_json::Value| -> ServiceEntry {
            serde_json::from_value(serde_json::json!({"type": "rawx", "addr": "127.0.0.1:1", "tags": tags})).unwrap()
        };
        assert!(service(&svc(serde_json::json!({"tag.service_id": "r-1", "stat.cpu": 1.5}))).is_ok());
        let long = "x".repeat(MAX_TAG_STR + 1);
        assert!(service(&svc(serde_json::json!({"tag.vol": long}))).unwrap_err().contains("tag.vol"));
        let many: serde_json::Map<_, _> = (0..=MAX_TAGS).map(|i| (format!("tag.{i}"), 1.into())).collect();
        assert!(service(&svc(serde_json::Value::Object(many))).unwrap_err().starts_with("tags"));
        assert!(service(&svc(serde_json::json!({"tag.service_id": "x".repeat(37)})))
            .unwrap_err()
            .contains("tag.service_id"));
        assert!(service_type("type", "RAWX").is_err());
    }
}
