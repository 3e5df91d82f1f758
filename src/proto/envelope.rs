//! The Octavia envelope: `zlib stream ‖ tag`, tag = HMAC-SHA256(key, zlib stream), the framing
//! of every UDP heartbeat (Octavia's and heartsink's service heartbeats alike). Not to be
//! confused with confd's signed message (`confd::proto`), which is JSON signed with HMAC-SHA1.
//!
//! Two tag forms exist on the wire (octavia `status_message.unwrap_envelope`):
//!
//! * **hex** (octavia ≥ 3.0, every current amphora): the 64-byte lowercase ASCII hex digest;
//! * **binary** (Queens-era images): the raw 32-byte digest.
//!
//! Octavia tries the hex form first and, on *any* failure, the binary form. heartsink makes the
//! same decisions with one HMAC per key instead of two: when the last 64 bytes are lowercase
//! hex, only the hex form is tried (a genuine binary tag whose last 32 bytes all happen to be
//! lowercase hex digits has probability 2⁻¹²⁸); otherwise only the binary form is tried (a
//! non-hex trailer can never equal a hexdigest). Comparison is constant-time and byte-exact, so
//! an upper-case hex tag is rejected, as in Octavia.
//!
//! The tag covers every byte before it, including bytes after the end of the zlib stream (which
//! the inflate stage then ignores, as `zlib.decompress` does).

use hmac::Mac;
use subtle::ConstantTimeEq;

use super::keyring::{HmacSha256, Key, Keyring};

/// Length of the hex tag.
pub const HEX_TAG_LEN: usize = 64;
/// Length of the legacy binary tag.
pub const BINARY_TAG_LEN: usize = 32;
/// The smallest Octavia envelope that can verify: a binary tag plus at least one payload byte.
pub const MIN_ENVELOPE_LEN: usize = BINARY_TAG_LEN + 1;

/// Which tag form verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagForm {
    /// 64 lowercase hex characters.
    Hex,
    /// 32 raw bytes (Queens-era senders).
    Binary,
}

/// Why an Octavia envelope did not verify. Each variant is one drop reason (`too_short`,
/// `no_key_matched`, `bad_tag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than a binary tag plus one byte: cannot be a heartbeat. Usually a probe or a
    /// truncated datagram; check the sender.
    TooShort,
    /// The trailer is a well-formed hex tag but no configured key produces it: a sender with a
    /// different key (rotate keys with several `--key`), or a forged or corrupted packet.
    NoKeyMatched,
    /// The trailer is not a hex tag, and no key verifies it as a legacy binary tag either:
    /// garbage, a forged legacy packet, or a sender using a key heartsink does not have.
    BadTag,
}

/// An Octavia envelope whose tag verified: only this type can be inflated.
#[derive(Clone, Copy, Debug)]
pub struct Verified<'a> {
    payload: &'a [u8],
    form: TagForm,
    key_index: usize,
}

impl<'a> Verified<'a> {
    /// The authenticated bytes before the tag (the zlib stream, possibly followed by bytes the
    /// tag covers but inflate ignores).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The tag form that verified.
    pub fn form(&self) -> TagForm {
        self.form
    }

    /// Position in the keyring of the key that verified.
    pub fn key_index(&self) -> usize {
        self.key_index
    }
}

/// The value of a lowercase hex digit; `INVALID` for every other byte (upper case included:
/// Octavia compares the hexdigest as a string, so `A` is not `a`).
const HEX_VALUE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const INVALID: u8 = 0xff;

/// The 32 bytes a 64-character lowercase hex tag spells, or `None` when any character is
/// not `[0-9a-f]`. Lowercase hex and bytes map one to one, so comparing the decoded bytes
/// with the digest is comparing the strings, without encoding the digest once per key. (The
/// received tag is not secret: decoding it in variable time leaks nothing; the comparison
/// with the digest stays constant-time.)
#[inline]
fn decode_lower_hex(tag: &[u8]) -> Option<[u8; BINARY_TAG_LEN]> {
    let mut out = [0u8; BINARY_TAG_LEN];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(tag.chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUE[usize::from(pair[0])], HEX_VALUE[usize::from(pair[1])]);
        bad |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad == 0 && tag.len() == HEX_TAG_LEN).then_some(out)
}

#[inline]
fn digest(key: &Key, payload: &[u8]) -> [u8; 32] {
    let mut mac: HmacSha256 = key.mac();
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// Verifies the Octavia envelope `envelope` against every key of `keys`, in order.
pub fn verify<'a>(envelope: &'a [u8], keys: &Keyring) -> Result<Verified<'a>, EnvelopeError> {
    if envelope.len() < MIN_ENVELOPE_LEN {
        return Err(EnvelopeError::TooShort);
    }
    let hex_tag =
        (envelope.len() > HEX_TAG_LEN).then(|| decode_lower_hex(&envelope[envelope.len() - HEX_TAG_LEN..])).flatten();
    if let Some(tag) = hex_tag {
        let payload = &envelope[..envelope.len() - HEX_TAG_LEN];
        for (key_index, key) in keys.keys().iter().enumerate() {
            if bool::from(digest(key, payload).ct_eq(&tag)) {
                return Ok(Verified { payload, form: TagForm::Hex, key_index });
            }
        }
        return Err(EnvelopeError::NoKeyMatched);
    }
    let (payload, tag) = envelope.split_at(envelope.len() - BINARY_TAG_LEN);
    for (key_index, key) in keys.keys().iter().enumerate() {
        if bool::from(digest(key, payload).ct_eq(tag)) {
            return Ok(Verified { payload, form: TagForm::Binary, key_index });
        }
    }
    Err(EnvelopeError::BadTag)
}

/// Appends the tag of `payload` under `key` in `form` to `out` (which must already hold
/// `payload`'s bytes at its end for a valid Octavia envelope). Used by the load generator and tests.
pub fn push_tag(out: &mut Vec<u8>, payload_start: usize, key: &Key, form: TagForm) {
    let d = digest(key, &out[payload_start..]);
    match form {
        TagForm::Binary => out.extend_from_slice(&d),
        TagForm::Hex => {
            let mut h = [0u8; HEX_TAG_LEN];
            let _ = hex::encode_to_slice(d, &mut h);
            out.extend_from_slice(&h);
        }
    }
}

/// Builds a complete Octavia envelope from JSON bytes, as Octavia's `wrap_envelope` does
/// (zlib level 9, then the tag).
pub fn wrap(json: &[u8], key: &Key, form: TagForm) -> Vec<u8> {
    let mut out = compress(json);
    push_tag(&mut out, 0, key, form);
    out
}

/// zlib-compresses at level 9 (`78 DA` header), as the amphora agent does.
pub fn compress(json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(json);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[&str]) -> Keyring {
        Keyring::from_strs(keys, 0)
    }

    #[test]
    fn hex_and_binary_round_trip() {
        let k = Key::new(b"insecure");
        for form in [TagForm::Hex, TagForm::Binary] {
            let env = wrap(b"{}", &k, form);
            let v = verify(&env, &ring(&["other", "insecure"])).expect("verifies");
            assert_eq!(v.form(), form);
            assert_eq!(v.key_index(), 1);
            assert_eq!(v.payload(), &env[..env.len() - if form == TagForm::Hex { 64 } else { 32 }]);
        }
    }

    #[test]
    fn smallest_accepted_sizes_match_octavia() {
        let k = Key::new(b"insecure");
        assert_eq!(wrap(b"{}", &k, TagForm::Hex).len(), 74);
        assert_eq!(wrap(b"{}", &k, TagForm::Binary).len(), 42);
    }

    #[test]
    fn a_hex_tag_decodes_to_the_bytes_it_spells_and_nothing_else_decodes() {
        let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
        let spelled = hex::encode(&bytes);
        assert_eq!(decode_lower_hex(spelled.as_bytes()).map(|b| b.to_vec()), Some(bytes));
        for bad in [b'A', b'g', b'F', b' ', 0, 0xff, b'/', b':', b'`'] {
            let mut t = spelled.clone().into_bytes();
            t[17] = bad;
            assert_eq!(decode_lower_hex(&t), None, "{bad}");
        }
        assert_eq!(decode_lower_hex(&spelled.as_bytes()[..62]), None);
    }

    #[test]
    fn upper_case_hex_is_rejected() {
        let k = Key::new(b"insecure");
        let mut env = wrap(b"{}", &k, TagForm::Hex);
        let n = env.len();
        env[n - 64..].make_ascii_uppercase();
        // Not lowercase hex, so it is tried as a binary tag, which fails.
        assert_eq!(verify(&env, &ring(&["insecure"])).unwrap_err(), EnvelopeError::BadTag);
    }

    #[test]
    fn wrong_key_and_flipped_digit_are_no_key_matched() {
        let k = Key::new(b"insecure");
        let mut env = wrap(b"{}", &k, TagForm::Hex);
        assert_eq!(verify(&env, &ring(&["insecure2"])).unwrap_err(), EnvelopeError::NoKeyMatched);
        let n = env.len();
        env[n - 1] = if env[n - 1] == b'0' { b'1' } else { b'0' };
        assert_eq!(verify(&env, &ring(&["insecure"])).unwrap_err(), EnvelopeError::NoKeyMatched);
    }

    #[test]
    fn short_and_empty_are_too_short() {
        let keys = ring(&["insecure"]);
        assert_eq!(verify(b"", &keys).unwrap_err(), EnvelopeError::TooShort);
        assert_eq!(verify(&[0u8; 32], &keys).unwrap_err(), EnvelopeError::TooShort);
        assert_eq!(verify(&[0u8; 33], &keys).unwrap_err(), EnvelopeError::BadTag);
    }

    #[test]
    fn trailing_bytes_are_covered_by_the_tag() {
        let k = Key::new(b"insecure");
        let mut env = compress(b"{}");
        env.extend_from_slice(b"trailing");
        push_tag(&mut env, 0, &k, TagForm::Hex);
        let v = verify(&env, &ring(&["insecure"])).expect("verifies");
        assert!(v.payload().ends_with(b"trailing"));
    }

    #[test]
    fn empty_keyring_verifies_nothing() {
        let k = Key::new(b"insecure");
        let env = wrap(b"{}", &k, TagForm::Hex);
        assert_eq!(verify(&env, &Keyring::from_strs::<&str>(&[], 0)).unwrap_err(), EnvelopeError::NoKeyMatched);
    }
}
