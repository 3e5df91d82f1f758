//! The liveness digest: what one member tells its peers about the amphorae it heard.
//!
//! Octavia amphorae send each heartbeat to one controller, round-robin, so with k members each
//! hears every k-th heartbeat of an amphora. Every `digest_interval` each member sends every
//! peer the amphorae whose liveness *it* refreshed since its previous digest (never what it
//! learned from other digests: no echo), each as its id, how long ago it was heard and its
//! operating status. Every member merges the digests into its shards, so each one's last-seen
//! time of an amphora is the newest heartbeat any member accepted, and its lists agree with
//! the others'. Ages, not timestamps: members' clocks need not agree.
//!
//! The cost follows heartbeats, not the fleet: 21 bytes per refresh heard, once per digest
//! however often the amphora beat in it. etcd carries none of it.
//!
//! The same digest relays the service registrations the member accepted itself (service
//! heartbeats and API pushes), newest per service: every member's registry gets them all, so a
//! machine is dead for the scheduler only when no member heard it within the timeout.
//!
//! Wire format (big-endian), signed like a heartbeat with the heartbeat key:
//!
//! ```text
//! "HSD2" | node length u8 | node (UTF-8) | flags u8 | count u32
//!        | count × (id [16] | age ms u32 | status u8)
//!        | services u32 | services × (age ms u32 | length u32 | registration JSON)
//!        | HMAC-SHA256 [32]
//! ```
//!
//! `flags` bit 0: the member's own self-awareness rules hold its failovers back (it may be
//! deaf, overloaded, lagging or stalled): the leader must not fail over amphorae that member
//! might have heard. [`decode`] is pure and fuzzed (`fuzz/fuzz_targets/cluster_digest.rs`).

use hmac::Mac;

use crate::proto::keyring::Keyring;
use crate::proto::octavia::Uuid;
use crate::state::OperatingStatus;

use crate::control::cluster::Relayed;

const MAGIC: &[u8; 4] = b"HSD2";
const TAG: usize = 32;
const ENTRY: usize = 21;
/// Most entries in one digest message (a larger digest goes as several).
pub const MAX_ENTRIES: usize = 50_000;
/// Most bytes of relayed registrations in one digest message (more go as several).
pub const MAX_SERVICE_BYTES: usize = 2 << 20;
/// The largest digest message, bytes.
pub const MAX_BYTES: usize = 4 + 1 + 255 + 1 + 4 + MAX_ENTRIES * ENTRY + 4 + MAX_SERVICE_BYTES + TAG;

/// One amphora heard by the sending member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// The amphora.
    pub id: Uuid,
    /// How long before the digest was sent, ms.
    pub age_ms: u32,
    /// Its operating status as last heard.
    pub status: OperatingStatus,
}

/// A decoded digest.
#[derive(Clone, Debug, PartialEq)]
pub struct Digest {
    /// The sending member.
    pub node: String,
    /// The sender's own failovers are held back by its self-awareness rules.
    pub impaired: bool,
    /// What it heard.
    pub heard: Vec<Heard>,
    /// The registrations it accepted itself, each with how long before the digest was sent
    /// (ms).
    pub services: Vec<(u32, Relayed)>,
}

/// Why a digest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestError {
    /// Shorter than its header and tag, or its entries do not fill it exactly.
    Truncated,
    /// Not `HSD1`.
    BadMagic,
    /// More bytes or entries than [`MAX_BYTES`] / [`MAX_ENTRIES`].
    TooLarge,
    /// The node name is not UTF-8 or is empty.
    BadNode,
    /// An unknown operating status code.
    BadStatus,
    /// A relayed registration is not the JSON of one.
    BadService,
    /// No configured key signs it.
    BadTag,
}

impl DigestError {
    /// A short label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            DigestError::Truncated => "truncated",
            DigestError::BadMagic => "bad_magic",
            DigestError::TooLarge => "too_large",
            DigestError::BadNode => "bad_node",
            DigestError::BadStatus => "bad_status",
            DigestError::BadService => "bad_service",
            DigestError::BadTag => "bad_tag",
        }
    }
}

impl std::fmt::Display for DigestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "digest refused: {}", self.label())
    }
}

impl std::error::Error for DigestError {}

pub(super) fn status_code(s: OperatingStatus) -> u8 {
    match s {
        OperatingStatus::Online => 0,
        OperatingStatus::Degraded => 1,
        OperatingStatus::Error => 2,
        OperatingStatus::Offline => 3,
        OperatingStatus::Draining => 4,
        OperatingStatus::NoMonitor => 5,
    }
}

pub(super) fn status_from(c: u8) -> Option<OperatingStatus> {
    Some(match c {
        0 => OperatingStatus::Online,
        1 => OperatingStatus::Degraded,
        2 => OperatingStatus::Error,
        3 => OperatingStatus::Offline,
        4 => OperatingStatus::Draining,
        5 => OperatingStatus::NoMonitor,
        _ => return None,
    })
}

/// Encodes and signs a digest of `heard` (at most [`MAX_ENTRIES`]; the rest is ignored) and of
/// the relayed registrations `services` (each `(age ms, JSON of a [`Relayed`])`; those past
/// [`MAX_SERVICE_BYTES`] in all are ignored: send them in the next message) into `out`
/// (cleared first), with the first key of `keys`.
pub fn encode(
    node: &str,
    impaired: bool,
    heard: &[Heard],
    services: &[(u32, &[u8])],
    keys: &Keyring,
    out: &mut Vec<u8>,
) {
    let heard = &heard[..heard.len().min(MAX_ENTRIES)];
    let node = &node.as_bytes()[..node.len().min(255)];
    out.clear();
    out.reserve(4 + 1 + node.len() + 1 + 4 + heard.len() * ENTRY + TAG);
    out.extend_from_slice(MAGIC);
    out.push(node.len() as u8);
    out.extend_from_slice(node);
    out.push(u8::from(impaired));
    out.extend_from_slice(&(heard.len() as u32).to_be_bytes());
    for h in heard {
        out.extend_from_slice(h.id.as_bytes());
        out.extend_from_slice(&h.age_ms.to_be_bytes());
        out.push(status_code(h.status));
    }
    let fit = services_fitting(services);
    out.extend_from_slice(&(fit as u32).to_be_bytes());
    for (age, json) in &services[..fit] {
        out.extend_from_slice(&age.to_be_bytes());
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(json);
    }
    sign(keys, out);
}

/// Appends the HMAC-SHA256 of `out` with the first key of `keys` (zeros without one: nothing
/// verifies it).
pub(super) fn sign(keys: &Keyring, out: &mut Vec<u8>) {
    let tag = match keys.keys().first() {
        Some(k) => {
            let mut mac = k.mac();
            mac.update(out);
            mac.finalize().into_bytes().to_vec()
        }
        None => vec![0; TAG],
    };
    out.extend_from_slice(&tag);
}

/// The body of `bytes` (its last 32 bytes are the tag) when a key of `keys` signs it.
pub(super) fn verified<'a>(bytes: &'a [u8], keys: &Keyring) -> Option<&'a [u8]> {
    let (body, tag) = bytes.split_at(bytes.len().checked_sub(TAG)?);
    keys.keys()
        .iter()
        .any(|k| {
            let mut mac = k.mac();
            mac.update(body);
            mac.verify_slice(tag).is_ok()
        })
        .then_some(body)
}

/// How many of `services` (from the first) fit one message: at least one (a single
/// registration is far below the bound), then as many as stay within [`MAX_SERVICE_BYTES`].
pub fn services_fitting(services: &[(u32, &[u8])]) -> usize {
    let mut bytes = 0;
    for (i, (_, json)) in services.iter().enumerate() {
        bytes += 8 + json.len();
        if bytes > MAX_SERVICE_BYTES {
            return i.max(1).min(services.len());
        }
    }
    services.len()
}

/// Decodes and verifies a digest against every key of `keys`.
pub fn decode(bytes: &[u8], keys: &Keyring) -> Result<Digest, DigestError> {
    if bytes.len() > MAX_BYTES {
        return Err(DigestError::TooLarge);
    }
    if bytes.len() < 4 + 1 + 1 + 4 + TAG {
        return Err(DigestError::Truncated);
    }
    if &bytes[..4] != MAGIC {
        return Err(DigestError::BadMagic);
    }
    let body = verified(bytes, keys).ok_or(DigestError::BadTag)?;
    let node_len = usize::from(body[4]);
    let rest = body.get(5..).ok_or(DigestError::Truncated)?;
    if rest.len() < node_len + 1 + 4 {
        return Err(DigestError::Truncated);
    }
    let (node, rest) = rest.split_at(node_len);
    let node = std::str::from_utf8(node).map_err(|_| DigestError::BadNode)?;
    if node.is_empty() {
        return Err(DigestError::BadNode);
    }
    let impaired = rest[0] & 1 == 1;
    let count = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
    if count > MAX_ENTRIES {
        return Err(DigestError::TooLarge);
    }
    let rest = &rest[5..];
    if rest.len() < count * ENTRY + 4 {
        return Err(DigestError::Truncated);
    }
    let (entries, rest) = rest.split_at(count * ENTRY);
    let n_services = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut rest = &rest[4..];
    // Each takes at least its 8 header bytes: a count past what the bytes can hold is a lie.
    if n_services > rest.len() / 8 {
        return Err(DigestError::Truncated);
    }
    let mut services = Vec::with_capacity(n_services);
    for _ in 0..n_services {
        if rest.len() < 8 {
            return Err(DigestError::Truncated);
        }
        let age = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let json = rest.get(8..8 + len).ok_or(DigestError::Truncated)?;
        let r: Relayed = serde_json::from_slice(json).map_err(|_| DigestError::BadService)?;
        services.push((age, r));
        rest = &rest[8 + len..];
    }
    if !rest.is_empty() {
        return Err(DigestError::Truncated);
    }
    let mut heard = Vec::with_capacity(count);
    for e in entries.chunks_exact(ENTRY) {
        let mut id = [0u8; 16];
        id.copy_from_slice(&e[..16]);
        let age_ms = u32::from_be_bytes([e[16], e[17], e[18], e[19]]);
        let status = status_from(e[20]).ok_or(DigestError::BadStatus)?;
        heard.push(Heard { id: Uuid::from_bytes(id), age_ms, status });
    }
    Ok(Digest { node: node.to_owned(), impaired, heard, services })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keyring {
        Keyring::from_strs(&["k1"], 0)
    }

    fn sample() -> Vec<Heard> {
        (0..3u8)
            .map(|i| Heard {
                id: Uuid::from_bytes([i; 16]),
                age_ms: u32::from(i) * 100,
                status: if i == 1 { OperatingStatus::Degraded } else { OperatingStatus::Online },
            })
            .collect()
    }

    fn relayed() -> Relayed {
        Relayed {
            type_name: "machine".into(),
            addr: "127.0.0.1:7000".into(),
            op: "register".into(),
            score: None,
            tags: vec![("stat.free_bytes".into(), crate::proto::service::TagValue::Int(5))],
        }
    }

    #[test]
    fn a_digest_round_trips_and_is_verified_with_any_key_of_the_ring() {
        let mut buf = Vec::new();
        let json = serde_json::to_vec(&relayed()).expect("json");
        encode("node-a", true, &sample(), &[(250, &json[..])], &keys(), &mut buf);
        let d = decode(&buf, &Keyring::from_strs(&["other", "k1"], 1)).expect("decodes");
        assert_eq!(
            d,
            Digest { node: "node-a".into(), impaired: true, heard: sample(), services: vec![(250, relayed())] }
        );
    }

    #[test]
    fn relayed_registrations_past_the_byte_bound_wait_for_the_next_message() {
        let big = vec![b' '; MAX_SERVICE_BYTES / 3];
        let many: Vec<(u32, &[u8])> = (0..5).map(|_| (0, &big[..])).collect();
        assert_eq!(services_fitting(&many), 2);
        assert_eq!(services_fitting(&many[..1]), 1);
        assert_eq!(services_fitting(&[]), 0);
    }

    #[test]
    fn a_forged_truncated_or_malformed_digest_is_refused_with_its_reason() {
        let mut buf = Vec::new();
        encode("node-a", false, &sample(), &[], &keys(), &mut buf);
        assert_eq!(decode(&buf, &Keyring::from_strs(&["wrong"], 0)), Err(DigestError::BadTag));
        let mut flipped = buf.clone();
        flipped[12] ^= 1;
        assert_eq!(decode(&flipped, &keys()), Err(DigestError::BadTag));
        assert_eq!(decode(&buf[..20], &keys()), Err(DigestError::Truncated));
        let mut magic = buf.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, &keys()), Err(DigestError::BadMagic));
        assert_eq!(decode(&vec![0; MAX_BYTES + 1], &keys()), Err(DigestError::TooLarge));
        // A signed body whose count does not match its entries.
        let mut body = Vec::new();
        encode("n", false, &sample(), &[], &keys(), &mut body);
        body.truncate(body.len() - TAG);
        let count_at = 4 + 1 + 1 + 1;
        body[count_at + 3] = 9;
        let mut mac = keys().keys()[0].mac();
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        body.extend_from_slice(&tag);
        assert_eq!(decode(&body, &keys()), Err(DigestError::Truncated));
    }
}
