//! The set of heartbeat keys accepted at one time.
//!
//! Octavia reads exactly one key per process until restart; heartsink accepts several at once so
//! that a key can be rotated without losing a heartbeat: add the new key, move the senders, drop
//! the old key, each step a reload. A [`Keyring`] is immutable; a reload builds a new one and
//! swaps it in whole (the engine's `reload`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// HMAC-SHA256, the Octavia heartbeat MAC.
pub type HmacSha256 = Hmac<Sha256>;

/// The key Octavia's devstack uses, and heartsink's default when no key is configured.
pub const INSECURE_DEFAULT_KEY: &str = "insecure";

/// One accepted key with its precomputed keyed HMAC state.
#[derive(Clone)]
pub struct Key {
    /// The keyed state; verification clones it instead of re-keying (re-keying costs more).
    mac: HmacSha256,
    /// First 8 hex digits of SHA-256 of the key bytes: names the key in logs and the API without
    /// revealing it.
    fingerprint: String,
}

impl Key {
    /// Builds a key from its bytes (for Octavia keys: the UTF-8 bytes of the configured string).
    pub fn new(bytes: &[u8]) -> Key {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(bytes).unwrap_or_else(|_| unreachable!());
        let digest = Sha256::digest(bytes);
        Key { mac, fingerprint: hex::encode(&digest[..4]) }
    }

    /// A fresh keyed MAC state, ready for `update`.
    #[inline]
    pub fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    /// The key's public fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("fingerprint", &self.fingerprint).finish()
    }
}

/// The keys accepted at one time, tried in order (put the current key first).
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<Key>,
    generation: u64,
}

impl Keyring {
    /// A keyring from key strings, each used as its UTF-8 bytes. Duplicates are dropped, the
    /// first occurrence keeps its place.
    pub fn from_strs<S: AsRef<str>>(keys: &[S], generation: u64) -> Keyring {
        Keyring::from_bytes(keys.iter().map(|k| k.as_ref().as_bytes()), generation)
    }

    /// A keyring from raw key bytes.
    pub fn from_bytes<'a>(keys: impl IntoIterator<Item = &'a [u8]>, generation: u64) -> Keyring {
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut out = Vec::new();
        for k in keys {
            if !seen.contains(&k) {
                seen.push(k);
                out.push(Key::new(k));
            }
        }
        Keyring { keys: out, generation }
    }

    /// The keys, in the order they are tried.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Counts reloads: 0 for the keyring built at start, +1 for each reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when no key is configured (nothing can verify).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_and_order_is_kept() {
        let ring = Keyring::from_strs(&["b", "a", "b"], 3);
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.keys()[0].fingerprint(), Key::new(b"b").fingerprint());
        assert_eq!(ring.generation(), 3);
    }

    #[test]
    fn fingerprint_does_not_contain_the_key() {
        let k = Key::new(b"insecure");
        assert_eq!(k.fingerprint().len(), 8);
        assert!(!k.fingerprint().contains("insecure"));
    }
}
