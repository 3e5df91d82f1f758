//! The Octavia heartbeat message: typed, allocation-free parsing of the inflated JSON.
//!
//! A [`Heartbeat`] is a reusable scratch value: [`Heartbeat::parse`] clears it and fills it from
//! the JSON bytes, keeping the capacity of its vectors, so a worker parses steady traffic
//! without touching the heap. Ids are parsed straight into 16-byte [`Uuid`]s; statuses into
//! enums. Every shape Octavia 19.0.0 accepts is read (see `../shared/reference`):
//!
//! | `ver`  | pools read from                      | counters            |
//! |--------|--------------------------------------|---------------------|
//! | absent | `listeners.<id>.pools` (status rule: absent = 0) | absolute (stats rule: absent = 2) |
//! | 1      | `listeners.<id>.pools`               | absolute            |
//! | 2      | top-level `pools`                    | absolute            |
//! | ≥ 3    | top-level `pools`                    | `tx`,`rx`,`totconns`,`ereq` deltas; `conns` absolute |
//!
//! Python-dialect details: duplicate keys are accepted and the last value wins (as `json.loads`
//! does); unknown keys are ignored; pool keys `"<pool_id>:<listener_id>"` are cut at the last `:`.
//! Deliberate limits (they reject only input no Octavia sender produces): the top level must be
//! an object; ids must be UUIDs; counters and `seq`/`ver` must be integers in `0..2⁶⁴`
//! (`NaN`, `Infinity`, negative or fractional values are [`MessageError::BadSchema`] or
//! [`MessageError::NotJson`]).

use std::cmp::Reverse;
use std::fmt;

use super::de::{next_u32, KeyWith};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
pub use uuid::Uuid;

/// Why inflated bytes are not a heartbeat. Each variant is one drop reason (`not_utf8`,
/// `not_json`, `bad_schema`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The inflated bytes are not UTF-8 (Octavia decodes as UTF-8 before parsing).
    NotUtf8,
    /// Not a JSON document (syntax error, trailing data, `NaN`/`Infinity`, truncated).
    NotJson,
    /// Valid JSON of the wrong shape: not an object, no `id`, an id that is not a UUID, a
    /// status or counter of the wrong type, a negative or non-integer counter.
    BadSchema,
}

/// HAProxy frontend status of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ListenerStatus {
    /// `OPEN`: accepting connections.
    #[default]
    Open,
    /// `FULL`: at its connection limit.
    Full,
    /// `STOP`: stopped.
    Stop,
    /// `DOWN`: legacy senders, HAProxy not running.
    Down,
    /// Anything else.
    Other,
}

/// Backend status of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PoolStatus {
    /// `UP`.
    #[default]
    Up,
    /// `DOWN`.
    Down,
    /// Anything else.
    Other,
}

/// Status of a member as the amphora reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemberStatus {
    /// Starts with `UP` (`UP`, `UP 1/3`).
    #[default]
    Up,
    /// Starts with `DOWN` (`DOWN`, `DOWN 1/2`).
    Down,
    /// `DRAIN` (also HAProxy `UP` with weight 0).
    Drain,
    /// `MAINT`.
    Maint,
    /// `no check`: no health monitor.
    NoCheck,
    /// `RESTARTING`: LVS member absent while keepalived restarts.
    Restarting,
    /// Anything else (`NOLB`, `MAINT (via …)`).
    Other,
}

macro_rules! status_names {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The wire name (`Other` has none of its own and is shown as `OTHER`).
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            /// From the wire name (as stored by the durable state); unknown names are `Other`.
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Ok(<$t>::parse(&s))
            }
        }
    };
}
status_names!(ListenerStatus { Open => "OPEN", Full => "FULL", Stop => "STOP", Down => "DOWN", Other => "OTHER" });
status_names!(PoolStatus { Up => "UP", Down => "DOWN", Other => "OTHER" });
status_names!(MemberStatus {
    Up => "UP", Down => "DOWN", Drain => "DRAIN", Maint => "MAINT", NoCheck => "no check",
    Restarting => "RESTARTING", Other => "OTHER",
});

impl ListenerStatus {
    fn parse(s: &str) -> ListenerStatus {
        match s {
            "OPEN" => ListenerStatus::Open,
            "FULL" => ListenerStatus::Full,
            "STOP" => ListenerStatus::Stop,
            "DOWN" => ListenerStatus::Down,
            _ => ListenerStatus::Other,
        }
    }
}

impl PoolStatus {
    fn parse(s: &str) -> PoolStatus {
        match s {
            "UP" => PoolStatus::Up,
            "DOWN" => PoolStatus::Down,
            _ => PoolStatus::Other,
        }
    }
}

impl MemberStatus {
    /// Octavia's order of tests: prefix `UP`, prefix `DOWN`, then exact names.
    pub fn parse(s: &str) -> MemberStatus {
        if s.starts_with("UP") {
            MemberStatus::Up
        } else if s.starts_with("DOWN") {
            MemberStatus::Down
        } else {
            match s {
                "DRAIN" => MemberStatus::Drain,
                "MAINT" => MemberStatus::Maint,
                "no check" => MemberStatus::NoCheck,
                "RESTARTING" => MemberStatus::Restarting,
                _ => MemberStatus::Other,
            }
        }
    }
}

/// Listener counters as sent (`ver` ≥ 3: deltas except `conns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Bytes out (HAProxy `bout`).
    pub tx: u64,
    /// Bytes in (`bin`).
    pub rx: u64,
    /// Current connections (`scur`), always absolute.
    pub conns: u64,
    /// Total connections (`stot`).
    pub totconns: u64,
    /// Request errors (`ereq`).
    pub ereq: u64,
}

/// One listener of a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerReport {
    /// Listener id.
    pub id: Uuid,
    /// Reported status.
    pub status: ListenerStatus,
    /// Reported counters, when the listener carries a `stats` object.
    pub stats: Option<Stats>,
    ord: u32,
}

/// One pool of a heartbeat, top-level or nested under a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolReport {
    /// Pool id (the key cut at its last `:`).
    pub id: Uuid,
    /// Reported status.
    pub status: PoolStatus,
    /// True when nested under a listener (`ver` < 2 shape).
    pub nested: bool,
    members: (u32, u32),
    ord: u32,
}

/// One member of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberReport {
    /// Member id.
    pub id: Uuid,
    /// Reported status.
    pub status: MemberStatus,
    ord: u32,
}

/// A parsed heartbeat; reuse one per worker (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    /// Amphora id.
    pub id: Uuid,
    /// Sender's message counter, when present.
    pub seq: Option<u64>,
    /// Message version, when present.
    pub ver: Option<u64>,
    /// heartsink extension: the sender's send time in ns since the Unix epoch
    /// (`"hs_sent_ns"`), used by the load generator to measure send-to-applied latency.
    pub sent_ns: Option<u64>,
    listeners: Vec<ListenerReport>,
    pools: Vec<PoolReport>,
    members: Vec<MemberReport>,
}

impl Heartbeat {
    /// Parses inflated bytes into `self`, replacing its previous content.
    pub fn parse(&mut self, bytes: &[u8]) -> Result<(), MessageError> {
        let text = std::str::from_utf8(bytes).map_err(|_| MessageError::NotUtf8)?;
        self.clear();
        let mut de = serde_json::Deserializer::from_str(text);
        HeartbeatSeed(self).deserialize(&mut de).and_then(|()| de.end()).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => MessageError::BadSchema,
            _ => MessageError::NotJson,
        })?;
        self.normalise();
        Ok(())
    }

    fn clear(&mut self) {
        self.id = Uuid::nil();
        self.seq = None;
        self.ver = None;
        self.sent_ns = None;
        self.listeners.clear();
        self.pools.clear();
        self.members.clear();
    }

    /// Duplicate keys: the last value wins, as with Python's `json.loads`. Sorting by id (latest
    /// first within equal ids) then keeping the first of each run does that without allocating,
    /// and leaves the lists sorted for the merge in the state model.
    fn normalise(&mut self) {
        self.listeners.sort_unstable_by_key(|l| (l.id, Reverse(l.ord)));
        self.listeners.dedup_by_key(|l| l.id);
        self.pools.sort_unstable_by_key(|p| (p.nested, p.id, Reverse(p.ord)));
        self.pools.dedup_by_key(|p| (p.nested, p.id));
        for p in &self.pools {
            let (a, b) = p.members;
            self.members[a as usize..b as usize].sort_unstable_by_key(|m| (m.id, Reverse(m.ord)));
        }
    }

    /// The listeners, sorted by id, one per id.
    pub fn listeners(&self) -> &[ListenerReport] {
        &self.listeners
    }

    /// The pools the status rules read: nested ones for `ver` < 2 (absent counts as 0),
    /// top-level ones otherwise; sorted by id, one per id.
    pub fn status_pools(&self) -> &[PoolReport] {
        // Sorted by (nested, id): top-level pools first, then nested ones.
        let k = self.pools.partition_point(|p| !p.nested);
        if self.ver.unwrap_or(0) < 2 {
            &self.pools[k..]
        } else {
            &self.pools[..k]
        }
    }

    /// Whether counters are deltas: `ver` ≥ 3, with absent counted as 2 (Octavia's stats rule).
    pub fn stats_are_deltas(&self) -> bool {
        self.ver.unwrap_or(2) >= 3
    }

    /// The members of `pool`, sorted by id, one per id (last value wins).
    pub fn members<'s>(&'s self, pool: &PoolReport) -> impl Iterator<Item = &'s MemberReport> + 's {
        let (a, b) = pool.members;
        let slice = &self.members[a as usize..b as usize];
        slice.iter().enumerate().filter(move |(i, m)| *i == 0 || slice[i - 1].id != m.id).map(|(_, m)| m)
    }

    /// Number of members over all status pools.
    pub fn member_count(&self) -> usize {
        self.status_pools().iter().map(|p| self.members(p).count()).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// serde plumbing: seeds that write into the scratch vectors instead of building values.

struct HeartbeatSeed<'h>(&'h mut Heartbeat);

enum TopField {
    Id,
    Seq,
    Ver,
    Listeners,
    Pools,
    SentNs,
    Other,
}

/// A string value mapped through a fallible closure.
struct StrWith<F>(F);

impl<'de, T, F: FnOnce(&str) -> Option<T>> DeserializeSeed<'de> for StrWith<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T, F: FnOnce(&str) -> Option<T>> Visitor<'de> for StrWith<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &"a valid value"))
    }
}

fn uuid(s: &str) -> Option<Uuid> {
    Uuid::try_parse(s).ok()
}

/// Octavia: `(k + ' ')[:k.rfind(':')]`, i.e. everything before the last `:`, or all of it.
fn pool_key(s: &str) -> Option<Uuid> {
    uuid(s.rfind(':').map_or(s, |i| &s[..i]))
}

impl<'de> DeserializeSeed<'de> for HeartbeatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeartbeatSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a heartbeat object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let hb = self.0;
        let mut have_id = false;
        while let Some(field) = map.next_key_seed(KeyWith(|k: &str| match k {
            "id" => TopField::Id,
            "seq" => TopField::Seq,
            "ver" => TopField::Ver,
            "listeners" => TopField::Listeners,
            "pools" => TopField::Pools,
            "hs_sent_ns" => TopField::SentNs,
            _ => TopField::Other,
        }))? {
            match field {
                TopField::Id => {
                    hb.id = map.next_value_seed(StrWith(uuid))?;
                    have_id = true;
                }
                TopField::Seq => hb.seq = Some(map.next_value()?),
                TopField::Ver => hb.ver = Some(map.next_value()?),
                TopField::SentNs => hb.sent_ns = Some(map.next_value()?),
                TopField::Listeners => {
                    // A repeated key replaces the earlier value.
                    hb.listeners.clear();
                    hb.pools.retain(|p| !p.nested);
                    map.next_value_seed(ListenersSeed(hb))?;
                }
                TopField::Pools => {
                    hb.pools.retain(|p| p.nested);
                    map.next_value_seed(PoolsSeed { hb, nested: false })?;
                }
                TopField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !have_id {
            return Err(de::Error::missing_field("id"));
        }
        Ok(())
    }
}

struct ListenersSeed<'h>(&'h mut Heartbeat);

impl<'de> DeserializeSeed<'de> for ListenersSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListenersSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of listeners")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let hb = self.0;
        while let Some(id) = map.next_key_seed(StrWith(uuid))? {
            map.next_value_seed(ListenerSeed { hb, id })?;
        }
        Ok(())
    }
}

struct ListenerSeed<'h> {
    hb: &'h mut Heartbeat,
    id: Uuid,
}

enum ListenerField {
    Status,
    Stats,
    Pools,
    Other,
}

impl<'de> DeserializeSeed<'de> for ListenerSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListenerSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a listener object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let hb = self.hb;
        let mut status = None;
        let mut stats = None;
        let pools_before = hb.pools.len();
        while let Some(field) = map.next_key_seed(KeyWith(|k: &str| match k {
            "status" => ListenerField::Status,
            "stats" => ListenerField::Stats,
            "pools" => ListenerField::Pools,
            _ => ListenerField::Other,
        }))? {
            match field {
                ListenerField::Status => {
                    status = Some(map.next_value_seed(StrWith(|s: &str| Some(ListenerStatus::parse(s))))?)
                }
                ListenerField::Stats => stats = Some(map.next_value_seed(StatsSeed)?),
                ListenerField::Pools => {
                    // A repeated key replaces the pools this listener added before.
                    hb.pools.truncate(pools_before);
                    map.next_value_seed(PoolsSeed { hb: &mut *hb, nested: true })?;
                }
                ListenerField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let status = status.ok_or_else(|| de::Error::missing_field("status"))?;
        let ord = next_u32(hb.listeners.len());
        hb.listeners.push(ListenerReport { id: self.id, status, stats, ord });
        Ok(())
    }
}

struct StatsSeed;

impl<'de> DeserializeSeed<'de> for StatsSeed {
    type Value = Stats;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Stats, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StatsSeed {
    type Value = Stats;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stats object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stats, A::Error> {
        let mut v: [Option<u64>; 5] = [None; 5];
        while let Some(i) = map.next_key_seed(KeyWith(|k: &str| match k {
            "tx" => 0,
            "rx" => 1,
            "conns" => 2,
            "totconns" => 3,
            "ereq" => 4,
            _ => 5,
        }))? {
            match v.get_mut(i) {
                Some(slot) => *slot = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let field = |i: usize, name: &'static str| v[i].ok_or_else(|| de::Error::missing_field(name));
        Ok(Stats {
            tx: field(0, "tx")?,
            rx: field(1, "rx")?,
            conns: field(2, "conns")?,
            totconns: field(3, "totconns")?,
            ereq: field(4, "ereq")?,
        })
    }
}

struct PoolsSeed<'h> {
    hb: &'h mut Heartbeat,
    nested: bool,
}

impl<'de> DeserializeSeed<'de> for PoolsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PoolsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of pools")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let hb = self.hb;
        while let Some(id) = map.next_key_seed(StrWith(pool_key))? {
            map.next_value_seed(PoolSeed { hb: &mut *hb, id, nested: self.nested })?;
        }
        Ok(())
    }
}

struct PoolSeed<'h> {
    hb: &'h mut Heartbeat,
    id: Uuid,
    nested: bool,
}

enum PoolField {
    Status,
    Members,
    Other,
}

impl<'de> DeserializeSeed<'de> for PoolSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PoolSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a pool object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let hb = self.hb;
        let mut status = None;
        let mut members = (next_u32(hb.members.len()), next_u32(hb.members.len()));
        while let Some(field) = map.next_key_seed(KeyWith(|k: &str| match k {
            "status" => PoolField::Status,
            "members" => PoolField::Members,
            _ => PoolField::Other,
        }))? {
            match field {
                PoolField::Status => status = Some(map.next_value_seed(StrWith(|s: &str| Some(PoolStatus::parse(s))))?),
                PoolField::Members => {
                    let start = next_u32(hb.members.len());
                    map.next_value_seed(MembersSeed(&mut *hb))?;
                    members = (start, next_u32(hb.members.len()));
                }
                PoolField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let status = status.ok_or_else(|| de::Error::missing_field("status"))?;
        let ord = next_u32(hb.pools.len());
        hb.pools.push(PoolReport { id: self.id, status, nested: self.nested, members, ord });
        Ok(())
    }
}

struct MembersSeed<'h>(&'h mut Heartbeat);

impl<'de> DeserializeSeed<'de> for MembersSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MembersSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of members")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let hb = self.0;
        let start = hb.members.len();
        while let Some(id) = map.next_key_seed(StrWith(uuid))? {
            let status = map.next_value_seed(StrWith(|s: &str| Some(MemberStatus::parse(s))))?;
            let ord = next_u32(hb.members.len() - start);
            hb.members.push(MemberReport { id, status, ord });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "79c8c292-6b94-45b5-b498-82321e35049e";
    const L1: &str = "82b9bfbc-91ba-4257-9abe-22cad37b17c6";
    const L2: &str = "92b9bfbc-91ba-4257-9abe-22cad37b17c6";
    const P1: &str = "515c6123-6c88-4537-bcf3-bd58da60fb1c";
    const M1: &str = "88718c96-6f3d-48f7-b4b1-b64633be40f5";
    const M2: &str = "5b08acc2-13a5-4f07-9a1b-195060c40eb7";

    fn parse(s: &str) -> Result<Heartbeat, MessageError> {
        let mut hb = Heartbeat::default();
        hb.parse(s.as_bytes()).map(|()| hb)
    }

    fn stats(tx: u64) -> String {
        format!(r#"{{"tx": {tx}, "rx": 2, "conns": 3, "totconns": 4, "ereq": 5}}"#)
    }

    #[test]
    fn ver3_shape() {
        let s = format!(
            r#"{{"id": "{A}", "seq": 7, "listeners": {{"{L1}": {{"status": "OPEN", "stats": {}}}}},
               "pools": {{"{P1}:{L1}": {{"status": "UP", "members": {{"{M1}": "UP 1/3", "{M2}": "no check"}}}}}}, "ver": 3}}"#,
            stats(1)
        );
        let hb = parse(&s).expect("parses");
        assert_eq!(hb.id.to_string(), A);
        assert_eq!((hb.seq, hb.ver), (Some(7), Some(3)));
        assert!(hb.stats_are_deltas());
        assert_eq!(hb.listeners().len(), 1);
        assert_eq!(hb.listeners()[0].stats.map(|s| s.tx), Some(1));
        let pools = hb.status_pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].id.to_string(), P1);
        let m: Vec<_> = hb.members(&pools[0]).map(|m| (m.id.to_string(), m.status)).collect();
        assert!(m.contains(&(M1.to_string(), MemberStatus::Up)));
        assert!(m.contains(&(M2.to_string(), MemberStatus::NoCheck)));
    }

    #[test]
    fn legacy_nested_pools_are_read_for_ver_below_2() {
        for ver in ["", r#", "ver": 1"#] {
            let s = format!(
                r#"{{"id": "{A}", "listeners": {{"{L1}": {{"status": "OPEN", "stats": {},
                   "pools": {{"{P1}": {{"status": "DOWN", "members": {{"{M1}": "MAINT"}}}}}}}}}}{ver}}}"#,
                stats(1)
            );
            let hb = parse(&s).expect("parses");
            assert!(!hb.stats_are_deltas());
            let pools = hb.status_pools();
            assert_eq!(pools.len(), 1, "{ver}");
            assert!(pools[0].nested);
            assert_eq!(pools[0].status, PoolStatus::Down);
        }
    }

    #[test]
    fn ver2_ignores_nested_and_ver1_ignores_top_level() {
        let body = |ver: u8| {
            format!(
                r#"{{"id": "{A}", "ver": {ver}, "listeners": {{"{L1}": {{"status": "OPEN",
                   "pools": {{"{P1}": {{"status": "DOWN", "members": {{}}}}}}}}}},
                   "pools": {{"{P1}:{L1}": {{"status": "UP", "members": {{}}}}}}}}"#
            )
        };
        assert_eq!(parse(&body(2)).expect("v2").status_pools()[0].status, PoolStatus::Up);
        assert_eq!(parse(&body(1)).expect("v1").status_pools()[0].status, PoolStatus::Down);
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let s = format!(
            r#"{{"id": "{A}", "seq": 1, "seq": 2, "listeners": {{"{L1}": {{"status": "OPEN"}}, "{L2}": {{"status": "OPEN"}},
               "{L1}": {{"status": "FULL"}}}}, "pools": {{"{P1}:{L1}": {{"status": "UP", "members": {{"{M1}": "UP", "{M1}": "DOWN"}}}},
               "{P1}:{L2}": {{"status": "DOWN", "members": {{}}}}}}, "ver": 2}}"#
        );
        let hb = parse(&s).expect("parses");
        assert_eq!(hb.seq, Some(2));
        assert_eq!(hb.listeners().len(), 2);
        let l1 = hb.listeners().iter().find(|l| l.id.to_string() == L1).expect("l1");
        assert_eq!(l1.status, ListenerStatus::Full);
        // Both pool keys normalise to P1: the last one wins, with its (empty) member map.
        assert_eq!(hb.status_pools().len(), 1);
        assert_eq!(hb.status_pools()[0].status, PoolStatus::Down);
        assert_eq!(hb.members(&hb.status_pools()[0]).count(), 0);
        let s = format!(
            r#"{{"id": "{A}", "ver": 2, "listeners": {{}}, "pools": {{"{P1}": {{"status": "UP", "members": {{"{M1}": "UP", "{M1}": "DOWN"}}}}}}}}"#
        );
        let hb = parse(&s).expect("parses");
        let m: Vec<_> = hb.members(&hb.status_pools()[0]).map(|m| m.status).collect();
        assert_eq!(m, vec![MemberStatus::Down]);
    }

    #[test]
    fn member_status_strings() {
        for (s, want) in [
            ("UP", MemberStatus::Up),
            ("UP 1/3", MemberStatus::Up),
            ("DOWN", MemberStatus::Down),
            ("DOWN 1/2", MemberStatus::Down),
            ("DRAIN", MemberStatus::Drain),
            ("MAINT", MemberStatus::Maint),
            ("MAINT (via pool/srv)", MemberStatus::Other),
            ("no check", MemberStatus::NoCheck),
            ("RESTARTING", MemberStatus::Restarting),
            ("NOLB", MemberStatus::Other),
        ] {
            assert_eq!(MemberStatus::parse(s), want, "{s}");
        }
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(parse("{").unwrap_err(), MessageError::NotJson);
        assert_eq!(parse(&format!(r#"{{"id": "{A}"}} x"#)).unwrap_err(), MessageError::NotJson);
        assert_eq!(parse(&format!(r#"{{"id": "{A}", "seq": NaN}}"#)).unwrap_err(), MessageError::NotJson);
        assert_eq!(parse("[]").unwrap_err(), MessageError::BadSchema);
        assert_eq!(parse("{}").unwrap_err(), MessageError::BadSchema);
        assert_eq!(parse(r#"{"id": "not-a-uuid"}"#).unwrap_err(), MessageError::BadSchema);
        assert_eq!(parse(&format!(r#"{{"id": "{A}", "seq": -1}}"#)).unwrap_err(), MessageError::BadSchema);
        assert_eq!(parse(&format!(r#"{{"id": "{A}", "seq": 1.5}}"#)).unwrap_err(), MessageError::BadSchema);
        let neg = format!(
            r#"{{"id": "{A}", "listeners": {{"{L1}": {{"status": "OPEN", "stats": {{"tx": -1, "rx": 0, "conns": 0, "totconns": 0, "ereq": 0}}}}}}}}"#
        );
        assert_eq!(parse(&neg).unwrap_err(), MessageError::BadSchema);
        let mut hb = Heartbeat::default();
        assert_eq!(hb.parse(b"{\"id\": \"\xff\"}").unwrap_err(), MessageError::NotUtf8);
    }

    #[test]
    fn raw_utf8_escapes_and_unknown_keys_are_accepted() {
        let s = format!(r#"{{"id": "{A}", "note": "ключ \u043a", "extra": [1, {{"x": null}}], "listeners": {{}}}}"#);
        assert!(parse(&s).is_ok());
    }

    #[test]
    fn reuse_keeps_no_stale_content() {
        let mut hb = Heartbeat::default();
        let full = format!(r#"{{"id": "{A}", "seq": 3, "listeners": {{"{L1}": {{"status": "OPEN"}}}}}}"#);
        hb.parse(full.as_bytes()).expect("parses");
        hb.parse(format!(r#"{{"id": "{A}"}}"#).as_bytes()).expect("parses");
        assert_eq!(hb.seq, None);
        assert!(hb.listeners().is_empty());
    }
}
