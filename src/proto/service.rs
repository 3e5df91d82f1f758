//! The service heartbeat message: a conscience-style registration of one service (type,
//! address, tags, stats), sent by `heartsink agent` and by anything else that watches services.
//!
//! It rides in exactly the same Octavia envelope as an Octavia heartbeat (zlib stream ‖ 64-char lowercase
//! hex HMAC-SHA256 tag, see [`super::envelope`]); only the inflated JSON differs. The document is
//! an object whose **only** key is `"service"`, so a receiver can dispatch on the first key with
//! [`is_service_document`] before parsing anything:
//!
//! ```json
//! {"service": {"type": "rawx", "addr": "127.0.0.1:6000", "id": "rawx-1", "seq": 17,
//!              "op": "register",
//!              "tags": {"tag.up": true, "tag.loc": "dc1.rack1.host1.vol1",
//!                       "tag.slots": "rawx-ssd,rawx-even",
//!                       "stat.cpu": 97.5, "stat.io": 88, "stat.space": 42.1}}}
//! ```
//!
//! | key | rule |
//! |---|---|
//! | `type` | required; 1–64 bytes of `[a-z0-9_-]` |
//! | `addr` | required; `ip:port` (`[v6]:port`), not an unspecified address, port ≠ 0 |
//! | `seq` | required; integer in `0..2⁶⁴`, rising per sender |
//! | `id` | optional logical service id, 1–36 characters, no control characters |
//! | `op` | optional `register` (default), `lock` or `unlock` |
//! | `score` | optional integer in `0..=100`, only with `op: "lock"` (a lock without score locks at 0) |
//! | `tags` | optional object; at most [`MAX_TAGS`] entries; values are integers (i64), finite floats, booleans or strings of at most [`MAX_TAG_STR`] bytes |
//!
//! Tags named `tag.*` or `stat.*` are kept; any other name is ignored (counted in
//! [`ServiceBeat::ignored_tags`], not an error), as the conscience registry does. A kept name is
//! 5–[`MAX_TAG_NAME`] bytes with something after the prefix. Well-known tags are typed:
//! `tag.up`, `tag.lock` and `tag.1` are booleans, `stat.*` are numbers. Any other key inside
//! `"service"` is rejected ([`ServiceError::UnknownField`]). `NaN` and `Infinity` are not JSON
//! and are rejected as [`ServiceError::Json`]. A key given twice keeps its last value (as
//! Python's `json.loads` does); so does a tag given twice.
//!
//! [`ServiceBeat`] is a reusable scratch value: [`ServiceBeat::parse`] overwrites it in place and
//! keeps the capacity of its strings and of its tag list, so a receiver parsing the same sender's
//! heartbeats over and over does not touch the heap (strings written with JSON escapes are the
//! exception: serde_json then copies them through a fresh scratch buffer).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::de::{next_u32, KeyWith};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// At most this many entries in `tags` (kept and ignored together).
pub const MAX_TAGS: usize = 256;
/// Longest string tag value, bytes.
pub const MAX_TAG_STR: usize = 1024;
/// Longest kept tag name, bytes.
pub const MAX_TAG_NAME: usize = 128;
/// Longest service type, bytes.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest service id, characters.
pub const MAX_ID_CHARS: usize = 36;

/// Why inflated bytes are not a service heartbeat. The variant names the exact cause (in its
/// [`Display`](fmt::Display)), but the drop labels are the Octavia heartbeat's: `NotUtf8` counts
/// as `not_utf8`, `Json` as `not_json`, and every other variant as `bad_schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceError {
    /// The bytes are not UTF-8. A sender bug: JSON is UTF-8.
    NotUtf8,
    /// Not a JSON document: syntax error, trailing data, truncation, `NaN`/`Infinity`, a number
    /// out of range.
    Json,
    /// Valid JSON, but not an object whose only key is `"service"` holding an object.
    NotService,
    /// A required key of `"service"` is missing (`type`, `addr` or `seq`).
    MissingField(&'static str),
    /// A key inside `"service"` that this version does not know: a newer or a broken sender.
    UnknownField,
    /// `type` is not a string of 1–64 bytes of `[a-z0-9_-]`.
    BadType,
    /// `addr` is not a usable `ip:port` (IPv6 as `[::1]:6000`; not `0.0.0.0`, not port 0).
    BadAddr,
    /// `id` is not a string of 1–36 characters without control characters.
    BadId,
    /// `seq` is not an integer in `0..2⁶⁴`.
    BadSeq,
    /// `op` is not one of `register`, `lock`, `unlock`.
    BadOp,
    /// `score` is not an integer in `0..=100`, or is given with an `op` other than `lock`.
    BadScore,
    /// A kept tag has a bad name (empty after the prefix, too long), a value of an unsupported
    /// type (null, array, object, an integer beyond i64), a string longer than 1024 bytes, or
    /// the wrong type for a well-known tag (`tag.up` must be a boolean, `stat.*` a number).
    /// `tags` that is not an object is reported here too.
    BadTag,
    /// More than [`MAX_TAGS`] entries in `tags`.
    TooManyTags,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::NotUtf8 => f.write_str("not UTF-8"),
            ServiceError::Json => f.write_str("not a JSON document"),
            ServiceError::NotService => f.write_str("not an object whose only key is \"service\""),
            ServiceError::MissingField(k) => write!(f, "missing \"{k}\""),
            ServiceError::UnknownField => f.write_str("unknown key in \"service\""),
            ServiceError::BadType => f.write_str("bad \"type\""),
            ServiceError::BadAddr => f.write_str("bad \"addr\""),
            ServiceError::BadId => f.write_str("bad \"id\""),
            ServiceError::BadSeq => f.write_str("bad \"seq\""),
            ServiceError::BadOp => f.write_str("bad \"op\""),
            ServiceError::BadScore => f.write_str("bad \"score\""),
            ServiceError::BadTag => f.write_str("bad tag"),
            ServiceError::TooManyTags => write!(f, "more than {MAX_TAGS} tags"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// What a registration asks of the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceOp {
    /// A plain heartbeat: merge the tags, let the registry compute the score.
    #[default]
    Register,
    /// Lock the score at [`ServiceBeat::score`] (0 when absent).
    Lock,
    /// Release a lock.
    Unlock,
}

impl ServiceOp {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceOp::Register => "register",
            ServiceOp::Lock => "lock",
            ServiceOp::Unlock => "unlock",
        }
    }

    fn parse(s: &str) -> Option<ServiceOp> {
        match s {
            "register" => Some(ServiceOp::Register),
            "lock" => Some(ServiceOp::Lock),
            "unlock" => Some(ServiceOp::Unlock),
            _ => None,
        }
    }
}

/// A typed tag value (the registry's: one type from the wire to the store).
/// A tag value. In JSON: a number, a bool or a string. Defined with the wire format that
/// carries it; the registry keeps and scores it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum TagValue {
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
}

impl TagValue {
    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            TagValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a number, for integers and floats.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            TagValue::Int(i) => Some(i as f64),
            TagValue::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The value of a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            TagValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as a flag: a bool, a non-zero number, or `true`/`false`, `1`/`0`, `yes`/`no`,
    /// `on`/`off`; `None` for anything else.
    pub fn truthy(&self) -> Option<bool> {
        match self {
            TagValue::Bool(b) => Some(*b),
            TagValue::Int(i) => Some(*i != 0),
            TagValue::Float(f) => Some(*f != 0.0),
            TagValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            },
        }
    }

    /// Sets `self` to `v`; returns whether it changed. A string replacing a string reuses the
    /// buffer, and an equal value is not written at all.
    pub fn assign(&mut self, v: &TagValue) -> bool {
        if self == v {
            return false;
        }
        match (&mut *self, v) {
            (TagValue::Str(a), TagValue::Str(b)) => a.clone_from(b),
            (a, b) => *a = b.clone(),
        }
        true
    }
}

/// Overwrites `v` with `raw`, reusing a string's capacity when both are strings.
fn assign_raw(v: &mut TagValue, raw: Raw<'_>) {
    match (v, raw) {
        (TagValue::Str(s), Raw::Str(x)) => {
            s.clear();
            s.push_str(x);
        }
        (this, Raw::Str(x)) => *this = TagValue::Str(x.to_owned()),
        (this, Raw::Int(i)) => *this = TagValue::Int(i),
        (this, Raw::Float(f)) => *this = TagValue::Float(f),
        (this, Raw::Bool(b)) => *this = TagValue::Bool(b),
        (_, Raw::U64(_) | Raw::Null | Raw::Nested) => {}
    }
}

/// One kept tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    /// `tag.*` or `stat.*`.
    pub name: String,
    /// Its value.
    pub value: TagValue,
    ord: u32,
}

/// A service heartbeat; reuse one per worker for parsing (see the module docs), or fill one to
/// build a message with [`build_service_json`].
#[derive(Clone)]
pub struct ServiceBeat {
    /// The service type (`"type"` on the wire).
    pub kind: String,
    /// The service address: with `kind`, the service's key.
    pub addr: SocketAddr,
    /// The sender's rising counter.
    pub seq: u64,
    /// What the message asks.
    pub op: ServiceOp,
    /// The lock score (only with [`ServiceOp::Lock`]).
    pub score: Option<i64>,
    /// Tags in `tags` that were neither `tag.*` nor `stat.*` (dropped).
    pub ignored_tags: u32,
    id: String,
    has_id: bool,
    /// Kept tags: the first `n_tags` are live; the rest keep their capacity for reuse.
    tags: Vec<Tag>,
    n_tags: usize,
    /// Scratch index list of [`ServiceBeat::normalise`].
    order: Vec<u32>,
}

impl Default for ServiceBeat {
    fn default() -> ServiceBeat {
        ServiceBeat {
            kind: String::new(),
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            seq: 0,
            op: ServiceOp::Register,
            score: None,
            ignored_tags: 0,
            id: String::new(),
            has_id: false,
            tags: Vec::new(),
            n_tags: 0,
            order: Vec::new(),
        }
    }
}

/// Shows the live content only (not the spare capacity kept for reuse).
impl fmt::Debug for ServiceBeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBeat")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("id", &self.id())
            .field("seq", &self.seq)
            .field("op", &self.op)
            .field("score", &self.score)
            .field("tags", &TagsDebug(self.tags()))
            .field("ignored_tags", &self.ignored_tags)
            .finish()
    }
}

struct TagsDebug<'a>(&'a [Tag]);

impl fmt::Debug for TagsDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|t| (&t.name, &t.value))).finish()
    }
}

impl PartialEq for ServiceBeat {
    fn eq(&self, o: &ServiceBeat) -> bool {
        self.kind == o.kind
            && self.addr == o.addr
            && self.seq == o.seq
            && self.op == o.op
            && self.score == o.score
            && self.ignored_tags == o.ignored_tags
            && self.id() == o.id()
            && self.tags().len() == o.tags().len()
            && self.tags().iter().zip(o.tags()).all(|(a, b)| a.name == b.name && a.value == b.value)
    }
}

impl ServiceBeat {
    /// A `register` beat of `kind` at `addr` with `seq`, no id and no tags (for building).
    pub fn new(kind: &str, addr: SocketAddr, seq: u64) -> ServiceBeat {
        ServiceBeat { kind: kind.to_owned(), addr, seq, ..ServiceBeat::default() }
    }

    /// Parses inflated bytes into `self`, replacing its previous content. On error `self` holds
    /// partial content and must not be used.
    pub fn parse(&mut self, json: &[u8]) -> Result<(), ServiceError> {
        let text = std::str::from_utf8(json).map_err(|_| ServiceError::NotUtf8)?;
        self.reset();
        let mut cx = Cx { err: None, ctx: ServiceError::NotService };
        let mut de = serde_json::Deserializer::from_str(text);
        let r = RootSeed { beat: self, cx: &mut cx }.deserialize(&mut de).and_then(|()| de.end());
        if let Err(e) = r {
            return Err(match e.classify() {
                serde_json::error::Category::Data => cx.err.unwrap_or(cx.ctx),
                _ => ServiceError::Json,
            });
        }
        self.normalise();
        Ok(())
    }

    /// Empties `self`, keeping capacities.
    pub fn reset(&mut self) {
        self.kind.clear();
        self.addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        self.seq = 0;
        self.op = ServiceOp::Register;
        self.score = None;
        self.ignored_tags = 0;
        self.id.clear();
        self.has_id = false;
        self.n_tags = 0;
    }

    /// The logical service id, when given.
    pub fn id(&self) -> Option<&str> {
        self.has_id.then_some(self.id.as_str())
    }

    /// Sets or clears the logical service id (for building).
    pub fn set_id(&mut self, id: Option<&str>) {
        self.id.clear();
        self.has_id = id.is_some();
        if let Some(id) = id {
            self.id.push_str(id);
        }
    }

    /// The kept tags in the order given, one per name (a name given twice keeps its last value).
    pub fn tags(&self) -> &[Tag] {
        &self.tags[..self.n_tags]
    }

    /// The value of tag `name`.
    pub fn tag(&self, name: &str) -> Option<&TagValue> {
        self.tags().iter().find(|t| t.name == name).map(|t| &t.value)
    }

    /// Sets tag `name` to `value`, replacing an earlier value of the same name (for building;
    /// no check is made: names other than `tag.*`/`stat.*` are ignored by receivers).
    pub fn set_tag(&mut self, name: &str, value: TagValue) {
        if let Some(t) = self.tags[..self.n_tags].iter_mut().find(|t| t.name == name) {
            t.value = value;
            return;
        }
        let ord = next_u32(self.n_tags);
        match self.tags.get_mut(self.n_tags) {
            Some(t) => {
                t.name.clear();
                t.name.push_str(name);
                t.value = value;
                t.ord = ord;
            }
            None => self.tags.push(Tag { name: name.to_owned(), value, ord }),
        }
        self.n_tags += 1;
    }

    /// Removes every tag, keeping capacities.
    pub fn clear_tags(&mut self) {
        self.n_tags = 0;
    }

    /// Drops duplicate names, the last one given wins. Tags stay in the order given, so that a
    /// sender repeating the same shape finds each name and string value in the slot it used
    /// last time (sorting them would shuffle the string capacities between slots). Duplicates
    /// are found by sorting a reused index list, and moved past `n_tags` without being dropped.
    fn normalise(&mut self) {
        let n = self.n_tags;
        if n < 2 {
            return;
        }
        let tags = &mut self.tags[..n];
        self.order.clear();
        self.order.extend(0..next_u32(n));
        self.order.sort_unstable_by(|&a, &b| tags[a as usize].name.cmp(&tags[b as usize].name).then(b.cmp(&a)));
        let mut dups = false;
        for w in self.order.windows(2) {
            if tags[w[0] as usize].name == tags[w[1] as usize].name {
                // `w[1]` was given earlier than `w[0]`: it loses.
                tags[w[1] as usize].ord = u32::MAX;
                dups = true;
            }
        }
        if !dups {
            return;
        }
        let mut w = 0;
        for r in 0..n {
            if tags[r].ord != u32::MAX {
                tags.swap(w, r);
                w += 1;
            }
        }
        self.n_tags = w;
    }

    /// Appends this beat as a service document to `out` (see [`build_service_json`]).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let doc = Doc { service: Body(self) };
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(out, &doc);
    }
}

/// The service document of `beat`: `{"service": {...}}`, `op` always written, `id` and `score`
/// when set, the tags in [`ServiceBeat::tags`] order. No validation is made: the result parses
/// back to an equal beat when `beat` holds values the rules of the module docs accept, except
/// that a float may come back one unit in the last place off (serde_json's default float parser
/// is fast rather than exact, which is ample for percentages).
pub fn build_service_json(beat: &ServiceBeat) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + 32 * beat.n_tags);
    beat.write_json(&mut out);
    out
}

/// True when the JSON text's first key is literally `"service"` (after optional whitespace and
/// the opening `{`): the cheap dispatch between a service heartbeat and an Octavia heartbeat,
/// made before any parse. An escaped spelling of the key is not recognised.
pub fn is_service_document(json: &[u8]) -> bool {
    fn skip_ws(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')).count();
        &b[n..]
    }
    let Some(rest) = skip_ws(json).strip_prefix(b"{") else {
        return false;
    };
    let Some(rest) = skip_ws(rest).strip_prefix(b"\"service\"") else {
        return false;
    };
    skip_ws(rest).starts_with(b":")
}

// ---------------------------------------------------------------------------------------------
// Building.

#[derive(serde::Serialize)]
struct Doc<'a> {
    service: Body<'a>,
}

struct Body<'a>(&'a ServiceBeat);

impl serde::Serialize for Body<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let b = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &b.kind)?;
        m.serialize_entry("addr", &b.addr)?;
        if let Some(id) = b.id() {
            m.serialize_entry("id", id)?;
        }
        m.serialize_entry("seq", &b.seq)?;
        m.serialize_entry("op", b.op.as_str())?;
        if let Some(score) = b.score {
            m.serialize_entry("score", &score)?;
        }
        m.serialize_entry("tags", &Tags(b.tags()))?;
        m.end()
    }
}

struct Tags<'a>(&'a [Tag]);

impl serde::Serialize for Tags<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|t| (&t.name, &t.value)))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing: seeds that write into the scratch value, and an error side channel.

/// The error side channel: serde errors carry only text, so a visitor that rejects a value
/// records the precise reason here; `ctx` names what an unrecorded data error (a value of the
/// wrong JSON type caught by serde itself) means at the current point of the parse.
struct Cx {
    err: Option<ServiceError>,
    ctx: ServiceError,
}

impl Cx {
    fn fail<E: de::Error>(&mut self, e: ServiceError) -> E {
        self.err = Some(e);
        E::custom(e)
    }
}

/// Any scalar JSON value, borrowed for the duration of one visitor call.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Int(i64),
    U64(u64),
    Float(f64),
    Bool(bool),
    Str(&'a str),
    Null,
    Nested,
}

/// Deserializes any value and hands it, as a [`Raw`], to a closure that may reject it with a
/// precise [`ServiceError`].
struct Val<'c, F> {
    cx: &'c mut Cx,
    f: F,
}

impl<'c, F> Val<'c, F> {
    /// The bound makes closures passed here higher-ranked over the borrow of the value.
    fn new<T>(cx: &'c mut Cx, f: F) -> Val<'c, F>
    where
        F: FnOnce(Raw<'_>) -> Result<T, ServiceError>,
    {
        Val { cx, f }
    }
}

impl<'de, T, F: FnOnce(Raw<'_>) -> Result<T, ServiceError>> DeserializeSeed<'de> for Val<'_, F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<F> Val<'_, F> {
    fn apply<T, E: de::Error>(self, raw: Raw<'_>) -> Result<T, E>
    where
        F: FnOnce(Raw<'_>) -> Result<T, ServiceError>,
    {
        (self.f)(raw).map_err(|e| self.cx.fail(e))
    }
}

impl<'de, T, F: FnOnce(Raw<'_>) -> Result<T, ServiceError>> Visitor<'de> for Val<'_, F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.apply(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.apply(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match i64::try_from(v) {
            Ok(i) => self.apply(Raw::Int(i)),
            Err(_) => self.apply(Raw::U64(v)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.apply(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.apply(Raw::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.apply(Raw::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        self.apply(Raw::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        self.apply(Raw::Nested)
    }
}

struct RootSeed<'a> {
    beat: &'a mut ServiceBeat,
    cx: &'a mut Cx,
}

impl<'de> DeserializeSeed<'de> for RootSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RootSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a service document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let cx = self.cx;
        match map.next_key_seed(KeyWith(|k: &str| k == "service"))? {
            Some(true) => {}
            _ => return Err(cx.fail(ServiceError::NotService)),
        }
        map.next_value_seed(ServiceSeed { beat: self.beat, cx: &mut *cx })?;
        cx.ctx = ServiceError::NotService;
        if map.next_key_seed(KeyWith(|_: &str| ()))?.is_some() {
            return Err(cx.fail(ServiceError::NotService));
        }
        Ok(())
    }
}

enum Field {
    Type,
    Addr,
    Id,
    Seq,
    Op,
    Score,
    Tags,
    Unknown,
}

struct ServiceSeed<'a> {
    beat: &'a mut ServiceBeat,
    cx: &'a mut Cx,
}

impl<'de> DeserializeSeed<'de> for ServiceSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

fn is_type_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
}

fn usable_addr(a: &SocketAddr) -> bool {
    a.port() != 0
        && match a.ip() {
            IpAddr::V4(ip) => !ip.is_unspecified(),
            IpAddr::V6(ip) => !ip.is_unspecified(),
        }
}

impl<'de> Visitor<'de> for ServiceSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a service object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (b, cx) = (self.beat, self.cx);
        let (mut have_type, mut have_addr, mut have_seq) = (false, false, false);
        while let Some(field) = map.next_key_seed(KeyWith(|k: &str| match k {
            "type" => Field::Type,
            "addr" => Field::Addr,
            "id" => Field::Id,
            "seq" => Field::Seq,
            "op" => Field::Op,
            "score" => Field::Score,
            "tags" => Field::Tags,
            _ => Field::Unknown,
        }))? {
            match field {
                Field::Type => {
                    let kind = &mut b.kind;
                    map.next_value_seed(Val::new(cx, |raw| match raw {
                        Raw::Str(s) if !s.is_empty() && s.len() <= MAX_TYPE_LEN && s.bytes().all(is_type_char) => {
                            kind.clear();
                            kind.push_str(s);
                            Ok(())
                        }
                        _ => Err(ServiceError::BadType),
                    }))?;
                    have_type = true;
                }
                Field::Addr => {
                    b.addr = map.next_value_seed(Val::new(cx, |raw| match raw {
                        Raw::Str(s) => s.parse::<SocketAddr>().ok().filter(usable_addr).ok_or(ServiceError::BadAddr),
                        _ => Err(ServiceError::BadAddr),
                    }))?;
                    have_addr = true;
                }
                Field::Id => {
                    let id = &mut b.id;
                    map.next_value_seed(Val::new(cx, |raw| match raw {
                        Raw::Str(s)
                            if !s.is_empty()
                                && s.chars().count() <= MAX_ID_CHARS
                                && !s.chars().any(char::is_control) =>
                        {
                            id.clear();
                            id.push_str(s);
                            Ok(())
                        }
                        _ => Err(ServiceError::BadId),
                    }))?;
                    b.has_id = true;
                }
                Field::Seq => {
                    b.seq = map.next_value_seed(Val::new(cx, |raw| match raw {
                        Raw::Int(i) => u64::try_from(i).map_err(|_| ServiceError::BadSeq),
                        Raw::U64(u) => Ok(u),
                        _ => Err(ServiceError::BadSeq),
                    }))?;
                    have_seq = true;
                }
                Field::Op => {
                    b.op = map.next_value_seed(Val::new(cx, |raw| match raw {
                        Raw::Str(s) => ServiceOp::parse(s).ok_or(ServiceError::BadOp),
                        _ => Err(ServiceError::BadOp),
                    }))?;
                }
                Field::Score => {
                    b.score = Some(map.next_value_seed(Val::new(cx, |raw| match raw {
                        Raw::Int(i) if (0..=100).contains(&i) => Ok(i),
                        _ => Err(ServiceError::BadScore),
                    }))?);
                }
                Field::Tags => {
                    // A repeated key replaces the earlier tags.
                    b.n_tags = 0;
                    b.ignored_tags = 0;
                    cx.ctx = ServiceError::BadTag;
                    map.next_value_seed(TagsSeed { beat: &mut *b, cx: &mut *cx })?;
                    cx.ctx = ServiceError::NotService;
                }
                Field::Unknown => return Err(cx.fail(ServiceError::UnknownField)),
            }
        }
        let missing = [(have_type, "type"), (have_addr, "addr"), (have_seq, "seq")];
        if let Some((_, name)) = missing.iter().find(|(have, _)| !have) {
            return Err(cx.fail(ServiceError::MissingField(name)));
        }
        if b.score.is_some() && b.op != ServiceOp::Lock {
            return Err(cx.fail(ServiceError::BadScore));
        }
        Ok(())
    }
}

struct TagsSeed<'a> {
    beat: &'a mut ServiceBeat,
    cx: &'a mut Cx,
}

impl<'de> DeserializeSeed<'de> for TagsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// What a tag name says about its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TagKind {
    /// Not `tag.*` or `stat.*`: skipped.
    Ignored,
    /// A kept name with a badly formed name.
    BadName,
    /// `tag.up`, `tag.lock`, `tag.1`.
    Bool,
    /// `stat.*`.
    Number,
    /// Any other `tag.*`.
    Any,
}

fn tag_kind(name: &str) -> TagKind {
    let suffix = match (name.strip_prefix("tag."), name.strip_prefix("stat.")) {
        (Some(s), _) | (_, Some(s)) => s,
        (None, None) => return TagKind::Ignored,
    };
    if suffix.is_empty() || name.len() > MAX_TAG_NAME {
        return TagKind::BadName;
    }
    match name {
        "tag.up" | "tag.lock" | "tag.1" => TagKind::Bool,
        _ if name.starts_with("stat.") => TagKind::Number,
        _ => TagKind::Any,
    }
}

impl<'de> Visitor<'de> for TagsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tags object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (b, cx) = (self.beat, self.cx);
        let mut entries = 0usize;
        // The name is written into the reuse slot first (no temporary String), then the value.
        loop {
            let slot = b.n_tags;
            let kind = map.next_key_seed(KeyWith(|k: &str| {
                let kind = tag_kind(k);
                if kind != TagKind::Ignored && kind != TagKind::BadName {
                    match b.tags.get_mut(slot) {
                        Some(t) => {
                            t.name.clear();
                            t.name.push_str(k);
                        }
                        None => b.tags.push(Tag { name: k.to_owned(), value: TagValue::Bool(false), ord: 0 }),
                    }
                }
                kind
            }))?;
            let Some(kind) = kind else { break };
            entries += 1;
            if entries > MAX_TAGS {
                return Err(cx.fail(ServiceError::TooManyTags));
            }
            match kind {
                TagKind::Ignored => {
                    map.next_value::<de::IgnoredAny>()?;
                    b.ignored_tags += 1;
                }
                TagKind::BadName => return Err(cx.fail(ServiceError::BadTag)),
                TagKind::Bool | TagKind::Number | TagKind::Any => {
                    let value = &mut b.tags[slot].value;
                    map.next_value_seed(Val::new(cx, |raw| {
                        let ok = match (kind, raw) {
                            (TagKind::Bool, Raw::Bool(_)) => true,
                            (TagKind::Number, Raw::Int(_) | Raw::Float(_)) => true,
                            (TagKind::Any, Raw::Str(s)) => s.len() <= MAX_TAG_STR,
                            (TagKind::Any, Raw::Int(_) | Raw::Float(_) | Raw::Bool(_)) => true,
                            _ => false,
                        };
                        if !ok {
                            return Err(ServiceError::BadTag);
                        }
                        // serde_json never yields a non-finite f64, but the rule is stated here.
                        if let Raw::Float(f) = raw {
                            if !f.is_finite() {
                                return Err(ServiceError::BadTag);
                            }
                        }
                        assign_raw(value, raw);
                        Ok(())
                    }))?;
                    b.tags[slot].ord = next_u32(slot);
                    b.n_tags += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"service": {"type": "rawx", "addr": "127.0.0.1:6000", "id": "rawx-1", "seq": 17,
        "op": "register", "tags": {"tag.up": true, "tag.loc": "dc1.rack1.host1.vol1",
        "tag.slots": "rawx-ssd,rawx-even", "stat.cpu": 97.5, "stat.io": 88, "stat.space": 42.1}}}"#;

    fn parse(s: &str) -> Result<ServiceBeat, ServiceError> {
        let mut b = ServiceBeat::default();
        b.parse(s.as_bytes()).map(|()| b)
    }

    fn with(body: &str) -> String {
        format!(r#"{{"service": {{"type": "rawx", "addr": "127.0.0.1:6000", "seq": 1{body}}}}}"#)
    }

    #[test]
    fn full_document() {
        let b = parse(FULL).expect("parses");
        assert_eq!(b.kind, "rawx");
        assert_eq!(b.addr, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(b.id(), Some("rawx-1"));
        assert_eq!(b.seq, 17);
        assert_eq!(b.op, ServiceOp::Register);
        assert_eq!(b.score, None);
        assert_eq!(b.ignored_tags, 0);
        assert_eq!(b.tag("tag.up"), Some(&TagValue::Bool(true)));
        assert_eq!(b.tag("tag.loc").and_then(TagValue::as_str), Some("dc1.rack1.host1.vol1"));
        assert_eq!(b.tag("stat.cpu"), Some(&TagValue::Float(97.5)));
        assert_eq!(b.tag("stat.io"), Some(&TagValue::Int(88)));
        let names: Vec<&str> = b.tags().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["tag.up", "tag.loc", "tag.slots", "stat.cpu", "stat.io", "stat.space"]);
        assert!(is_service_document(FULL.as_bytes()));
    }

    #[test]
    fn minimal_document_and_ipv6() {
        let b = parse(r#"{"service":{"type":"meta2","addr":"[::1]:6000","seq":0}}"#).expect("parses");
        assert_eq!(b.addr, "[::1]:6000".parse().unwrap());
        assert_eq!(b.id(), None);
        assert!(b.tags().is_empty());
        assert_eq!(b.seq, 0);
        let b = parse(&with(r#", "seq": 18446744073709551615"#)).expect("max seq");
        assert_eq!(b.seq, u64::MAX);
    }

    #[test]
    fn lock_and_unlock() {
        let b = parse(&with(r#", "op": "lock", "score": 40"#)).expect("lock");
        assert_eq!((b.op, b.score), (ServiceOp::Lock, Some(40)));
        let b = parse(&with(r#", "op": "lock""#)).expect("lock without score");
        assert_eq!((b.op, b.score), (ServiceOp::Lock, None));
        // The score may come before the op.
        let b = parse(&with(r#", "score": 0, "op": "lock""#)).expect("score first");
        assert_eq!(b.score, Some(0));
        assert_eq!(parse(&with(r#", "op": "unlock""#)).expect("unlock").op, ServiceOp::Unlock);
    }

    #[test]
    fn ignored_tags_are_counted() {
        let b = parse(&with(r#", "tags": {"foo": 1, "tag.up": false, "x.y": [1, {"z": null}], "tags.bad": null}"#))
            .expect("parses");
        assert_eq!(b.ignored_tags, 3);
        assert_eq!(b.tags().len(), 1);
        assert_eq!(b.tag("tag.up"), Some(&TagValue::Bool(false)));
    }

    #[test]
    fn tag_value_types() {
        let b = parse(&with(
            r#", "tags": {"tag.i": -5, "tag.f": 1.0, "tag.e": 1e3, "tag.b": true, "tag.s": "x\u00e9\n", "stat.n": -0.5}"#,
        ))
        .expect("parses");
        assert_eq!(b.tag("tag.i"), Some(&TagValue::Int(-5)));
        assert_eq!(b.tag("tag.f"), Some(&TagValue::Float(1.0)));
        assert_eq!(b.tag("tag.e"), Some(&TagValue::Float(1000.0)));
        assert_eq!(b.tag("tag.b"), Some(&TagValue::Bool(true)));
        assert_eq!(b.tag("tag.s"), Some(&TagValue::Str("xé\n".into())));
        assert_eq!(b.tag("stat.n").and_then(TagValue::as_f64), Some(-0.5));
    }

    #[test]
    fn duplicates_last_wins() {
        let b = parse(
            r#"{"service": {"type": "a", "type": "b", "addr": "127.0.0.1:1", "seq": 1, "seq": 2,
               "tags": {"tag.x": 1, "tag.y": 2, "tag.x": 3}}}"#,
        )
        .expect("parses");
        assert_eq!((b.kind.as_str(), b.seq), ("b", 2));
        let tags: Vec<(&str, &TagValue)> = b.tags().iter().map(|t| (t.name.as_str(), &t.value)).collect();
        assert_eq!(tags, [("tag.y", &TagValue::Int(2)), ("tag.x", &TagValue::Int(3))]);
        let b = parse(&with(r#", "tags": {"tag.x": 1}, "tags": {"tag.y": 2, "z": 0}"#)).expect("parses");
        assert_eq!(b.tags().len(), 1);
        assert_eq!(b.tag("tag.y"), Some(&TagValue::Int(2)));
        assert_eq!(b.ignored_tags, 1);
    }

    #[test]
    fn every_invalid_case() {
        use ServiceError::*;
        let long_str = format!(r#", "tags": {{"tag.s": "{}"}}"#, "x".repeat(MAX_TAG_STR + 1));
        let long_name = format!(r#", "tags": {{"tag.{}": 1}}"#, "x".repeat(MAX_TAG_NAME));
        let many: String = (0..=MAX_TAGS).map(|i| format!(r#""x{i}": 1"#)).collect::<Vec<_>>().join(",");
        let many = format!(r#", "tags": {{{many}}}"#);
        let cases: Vec<(String, ServiceError)> = vec![
            ("{".into(), Json),
            ("".into(), Json),
            (format!("{} x", with("")), Json),
            (with(r#", "tags": {"stat.cpu": NaN}"#), Json),
            (with(r#", "tags": {"stat.cpu": Infinity}"#), Json),
            (with(r#", "tags": {"stat.cpu": 1e400}"#), Json),
            ("[]".into(), NotService),
            ("1".into(), NotService),
            ("{}".into(), NotService),
            (r#"{"id": "x"}"#.into(), NotService),
            (r#"{"service": 1}"#.into(), NotService),
            (r#"{"service": []}"#.into(), NotService),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1:1", "seq": 1}, "x": 1}"#.into(), NotService),
            (r#"{"service": {"addr": "127.0.0.1:1", "seq": 1}}"#.into(), MissingField("type")),
            (r#"{"service": {"type": "a", "seq": 1}}"#.into(), MissingField("addr")),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1:1"}}"#.into(), MissingField("seq")),
            (with(r#", "ns": "OPENIO""#), UnknownField),
            (r#"{"service": {"type": "", "addr": "127.0.0.1:1", "seq": 1}}"#.into(), BadType),
            (r#"{"service": {"type": "Rawx", "addr": "127.0.0.1:1", "seq": 1}}"#.into(), BadType),
            (r#"{"service": {"type": "a.b", "addr": "127.0.0.1:1", "seq": 1}}"#.into(), BadType),
            (r#"{"service": {"type": 1, "addr": "127.0.0.1:1", "seq": 1}}"#.into(), BadType),
            (format!(r#"{{"service": {{"type": "{}", "addr": "127.0.0.1:1", "seq": 1}}}}"#, "a".repeat(65)), BadType),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1", "seq": 1}}"#.into(), BadAddr),
            (r#"{"service": {"type": "a", "addr": "::1:6000", "seq": 1}}"#.into(), BadAddr),
            (r#"{"service": {"type": "a", "addr": "host:6000", "seq": 1}}"#.into(), BadAddr),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1:0", "seq": 1}}"#.into(), BadAddr),
            (r#"{"service": {"type": "a", "addr": "0.0.0.0:6000", "seq": 1}}"#.into(), BadAddr),
            (r#"{"service": {"type": "a", "addr": "[::]:6000", "seq": 1}}"#.into(), BadAddr),
            (r#"{"service": {"type": "a", "addr": 6000, "seq": 1}}"#.into(), BadAddr),
            (with(r#", "id": """#), BadId),
            (with(&format!(r#", "id": "{}""#, "a".repeat(37))), BadId),
            (with(r#", "id": "a\u0000b""#), BadId),
            (with(r#", "id": 5"#), BadId),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1:1", "seq": -1}}"#.into(), BadSeq),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1:1", "seq": 1.5}}"#.into(), BadSeq),
            (r#"{"service": {"type": "a", "addr": "127.0.0.1:1", "seq": "1"}}"#.into(), BadSeq),
            (with(r#", "op": "deregister""#), BadOp),
            (with(r#", "op": null"#), BadOp),
            (with(r#", "op": "lock", "score": 101"#), BadScore),
            (with(r#", "op": "lock", "score": -1"#), BadScore),
            (with(r#", "op": "lock", "score": 5.5"#), BadScore),
            (with(r#", "score": 5"#), BadScore),
            (with(r#", "op": "unlock", "score": 5"#), BadScore),
            (with(r#", "tags": []"#), BadTag),
            (with(r#", "tags": null"#), BadTag),
            (with(r#", "tags": {"tag.x": null}"#), BadTag),
            (with(r#", "tags": {"tag.x": [1]}"#), BadTag),
            (with(r#", "tags": {"tag.x": {}}"#), BadTag),
            (with(r#", "tags": {"tag.x": 9223372036854775808}"#), BadTag),
            (with(r#", "tags": {"tag.up": "true"}"#), BadTag),
            (with(r#", "tags": {"tag.up": 1}"#), BadTag),
            (with(r#", "tags": {"stat.cpu": "97"}"#), BadTag),
            (with(r#", "tags": {"stat.cpu": true}"#), BadTag),
            (with(r#", "tags": {"tag.": 1}"#), BadTag),
            (with(r#", "tags": {"stat.": 1}"#), BadTag),
            (with(&long_str), BadTag),
            (with(&long_name), BadTag),
            (with(&many), TooManyTags),
        ];
        for (doc, want) in cases {
            assert_eq!(parse(&doc).err(), Some(want), "{doc}");
        }
        let mut b = ServiceBeat::default();
        assert_eq!(b.parse(b"{\"service\": \"\xff\"}"), Err(NotUtf8));
    }

    #[test]
    fn tag_limits_are_inclusive() {
        let at: String = (0..MAX_TAGS).map(|i| format!(r#""tag.x{i}": 1"#)).collect::<Vec<_>>().join(",");
        assert_eq!(parse(&with(&format!(r#", "tags": {{{at}}}"#))).expect("256 tags").tags().len(), MAX_TAGS);
        let s = format!(r#", "tags": {{"tag.s": "{}"}}"#, "é".repeat(MAX_TAG_STR / 2));
        assert!(parse(&with(&s)).is_ok());
        let id = format!(r#", "id": "{}""#, "é".repeat(MAX_ID_CHARS));
        assert!(parse(&with(&id)).is_ok());
    }

    #[test]
    fn reuse_keeps_no_stale_content() {
        let mut b = ServiceBeat::default();
        b.parse(FULL.as_bytes()).expect("full");
        b.parse(with("").as_bytes()).expect("minimal");
        assert_eq!(b, parse(&with("")).expect("fresh"));
        assert_eq!(b.id(), None);
        assert!(b.tags().is_empty());
        // A failed parse followed by a good one.
        assert!(b.parse(with(r#", "tags": {"tag.a": "x", "tag.b": null}"#).as_bytes()).is_err());
        b.parse(FULL.as_bytes()).expect("full again");
        assert_eq!(b, parse(FULL).expect("fresh"));
        // A string slot reused for an integer and back.
        b.parse(with(r#", "tags": {"tag.a": 1, "tag.b": "s"}"#).as_bytes()).expect("swap");
        b.parse(with(r#", "tags": {"tag.a": "t", "tag.b": 2}"#).as_bytes()).expect("swap back");
        assert_eq!(b.tag("tag.a"), Some(&TagValue::Str("t".into())));
        assert_eq!(b.tag("tag.b"), Some(&TagValue::Int(2)));
    }

    #[test]
    fn build_round_trips() {
        let mut b = ServiceBeat::new("rawx", "[::1]:6000".parse().unwrap(), 9);
        b.set_id(Some("svc-1"));
        b.set_tag("tag.up", TagValue::Bool(true));
        b.set_tag("tag.loc", TagValue::Str("dc1.r1".into()));
        b.set_tag("stat.cpu", TagValue::Float(12.5));
        b.set_tag("stat.io", TagValue::Int(100));
        b.set_tag("tag.up", TagValue::Bool(false));
        let json = build_service_json(&b);
        assert!(is_service_document(&json), "{}", String::from_utf8_lossy(&json));
        let back = parse(std::str::from_utf8(&json).unwrap()).expect("parses");
        assert_eq!(back.tags().len(), 4);
        assert_eq!(back.tag("tag.up"), Some(&TagValue::Bool(false)));
        assert_eq!(back.tag("stat.cpu"), Some(&TagValue::Float(12.5)));
        assert_eq!((back.kind.as_str(), back.addr, back.seq, back.id()), ("rawx", b.addr, 9, Some("svc-1")));
        b.op = ServiceOp::Lock;
        b.score = Some(30);
        let back = parse(std::str::from_utf8(&build_service_json(&b)).unwrap()).expect("lock parses");
        assert_eq!((back.op, back.score), (ServiceOp::Lock, Some(30)));
    }

    #[test]
    fn dispatch_on_first_key() {
        assert!(is_service_document(b"{\"service\":{}}"));
        assert!(is_service_document(b" \n{ \t\"service\" : 1}"));
        assert!(!is_service_document(b"{\"id\": \"x\", \"service\": {}}"));
        assert!(!is_service_document(b"{\"services\": {}}"));
        assert!(!is_service_document(b"{\"service\""));
        assert!(!is_service_document(b"[\"service\"]"));
        assert!(!is_service_document(b""));
    }
}
