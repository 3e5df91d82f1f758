//! Small serde helpers shared by the allocation-free parsers ([`super::octavia`],
//! [`super::service`]).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// Deserializes a map key through a closure, without allocating.
pub(crate) struct KeyWith<F>(pub(crate) F);

impl<'de, T, F: FnOnce(&str) -> T> DeserializeSeed<'de> for KeyWith<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T, F: FnOnce(&str) -> T> Visitor<'de> for KeyWith<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v))
    }
}

/// A collection length as a `size_hint`-style `u32`, saturating.
pub(crate) fn next_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
