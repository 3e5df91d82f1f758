//! Locations and distances: a location is a `u64` of four 16-bit levels (DC, rack, host,
//! volume), read from a service's `tag.loc` or derived from its address; the distance between
//! two locations is the number of levels at which they differ. Also the slot names a service's
//! `tag.slots` entries stand for.

use std::net::{IpAddr, SocketAddr};

/// Levels in a location.
pub const LEVELS: u32 = 4;

/// The djb2 string hash (`h = h * 33 + b`, from 5381), as used for dotted locations.
pub fn djb2(s: &str) -> u32 {
    s.bytes().fold(5381u32, |h, b| h.wrapping_mul(33).wrapping_add(u32::from(b)))
}

/// The location of a service from its `tag.loc` and its address.
///
/// * `0x…` with a non-zero hex value: that value.
/// * Otherwise dotted `dc.rack.host.volume`: each token hashed with [`djb2`] to 16 bits; fewer
///   tokens leave the upper levels 0 (`host.vol` is `0.0.host.vol`); text after a 4th dot stays
///   inside the 4th token.
/// * No tag (or an empty one): from the address, `(ipv4 << 16) | port`, or for IPv6 the last 6
///   bytes `<< 16 | port`. An address that does not parse gives 0.
pub fn parse_location(tag: Option<&str>, addr: &str) -> u64 {
    if let Some(s) = tag.filter(|s| !s.is_empty()) {
        if let Some(hex) = s.strip_prefix("0x") {
            if let Ok(v) = u64::from_str_radix(hex, 16) {
                if v != 0 {
                    return v;
                }
            }
        }
        return s.splitn(LEVELS as usize, '.').fold(0u64, |acc, t| (acc << 16) | u64::from(djb2(t) & 0xFFFF));
    }
    match addr.parse::<SocketAddr>() {
        Ok(sa) => {
            let port = u64::from(sa.port());
            match sa.ip() {
                IpAddr::V4(ip) => (u64::from(u32::from(ip)) << 16) | port,
                IpAddr::V6(ip) => {
                    let o = ip.octets();
                    let tail = o[10..].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                    (tail << 16) | port
                }
            }
        }
        Err(_) => 0,
    }
}

/// Whether `a` and `b` are too close for distance `dist`: `dist` 0 never; 1 identical
/// locations; 2 same host; 3 same rack; 4 same DC; above 4 always.
pub fn too_close(a: u64, b: u64, dist: u32) -> bool {
    if dist == 0 {
        return false;
    }
    let shift = 16 * (dist - 1);
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// The largest distance `d ≤ max` at which `x` is not too close to any member of `set`; 0 when
/// a member has the same location.
pub fn find_min_dist(set: &[u64], x: u64, max: u32) -> u32 {
    (1..=max).rev().find(|&d| !set.iter().any(|&m| too_close(x, m, d))).unwrap_or(0)
}

/// The highest meaningful distance for locations up to `max_location`:
/// `1 + (bits used − 1) / 16` (4 when the DC level is used, 3 for address-derived IPv4
/// locations).
pub fn abs_max_dist(max_location: u64) -> u32 {
    let bits = (64 - max_location.leading_zeros()).max(1);
    1 + (bits - 1) / 16
}

/// The slot name for an entry of `tag.slots`: entries already starting with the type are
/// used as is, others become `<type>-<entry>`.
pub fn slot_name(type_name: &str, entry: &str) -> String {
    let mut name = String::new();
    slot_name_into(&mut name, type_name, entry);
    name
}

/// [`slot_name`] into a reused `String` (cleared first).
pub fn slot_name_into(out: &mut String, type_name: &str, entry: &str) {
    out.clear();
    if !entry.starts_with(type_name) {
        out.push_str(type_name);
        out.push('-');
    }
    out.push_str(entry);
}
