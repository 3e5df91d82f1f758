//! The scored service registry ("conscience") and its load-balancing pools, sans IO.
//!
//! Services register themselves with tags and statistics ([`Registry::push`]); each service type
//! computes a score in 0..=100 from them with its [`expr`] expression; the score is the service's
//! weight when [`lb`] pools pick services. The rules are those of the OpenIO SDS conscience 5.x
//! (`cluster/module/server.c`), with the fixes listed below. Nothing here reads a clock or does
//! IO: every call takes `now_us` (microseconds since the Unix epoch), and the caller persists the
//! keys drained by [`Registry::take_dirty`].
//!
//! # Rules
//!
//! * A service is keyed by `(type, "ip:port")`. Types come only from configuration
//!   ([`TypeConfig`]); a push for another type is [`RegistryError::UnknownType`].
//! * Only tags named `tag.*` or `stat.*` are kept; others are dropped silently. Tags merge: a push
//!   never removes a tag. Only a push that carries tags refreshes liveness (the score timestamp);
//!   lock and unlock do not.
//! * `tag.1 = true` on the push that **creates** a service is the "first registration" hint
//!   (set by the front end for a key it has not seen for days). With the type's
//!   `lock_at_first_register` (default on) such a service starts locked at score 0, until an
//!   admin unlocks it. The hint is ignored on every later push and never stored.
//! * A plain push ([`ScoreOp::Unset`]) recomputes the score unless the service is locked; a
//!   locked service keeps its score but still merges tags. [`ScoreOp::Lock`] locks at a value
//!   clamped to 0..=100; [`ScoreOp::Unlock`] unlocks and recomputes at once (the rise cap applies
//!   from the locked value) and never creates a service. `tag.lock` mirrors the lock flag.
//! * Score: evaluate the expression; UNDEF (e.g. a stat not reported yet) **keeps the old
//!   score**; NaN is 0; the value is floored, a **rise** is capped to `score_variation_bound`
//!   per refresh (a fall is immediate), and the result clamped to 0..=100. A new service starts
//!   at −1 (weight 0: never picked) until its expression is first defined.
//! * `tag.up = false` in a push sets an unlocked service to 0 at once (an alert is reported at
//!   most once per `alert_frequency_limit_s`).
//! * [`Registry::expire`]: an unlocked service whose last tagged push is older than
//!   `score_timeout_s` and whose score is above 0 drops to 0 with `tag.up = false`. It stays
//!   listed; only [`Registry::deregister`] and [`Registry::flush`] remove services.
//! * Liveness is kept at the clock's full resolution (`score_timestamp_us`), and every timeout
//!   decided on a service — expiry here, a machine's liveness in the scheduler — is
//!   [`Service::fresh_at`]: at most the timeout old, to the µs. The whole-seconds
//!   `score_timestamp_s` is only the conscience's displayed `score.timestamp`; comparing it
//!   with a precise time declared a service beating every second dead up to a second early.
//!
//! # Differences from the original
//!
//! * **Restart does not re-lock everything.** In the original a cold registry sees every
//!   service as new, and the front end's `tag.1` hint then locks all of them at 0 (issues #1019,
//!   #1770: "no service polled" until an admin runs `unlockall`). heartsink persists services
//!   (scores, lock flags, tags) and [`Registry::restore`]s them at start; a restored service is
//!   not a first registration, so `tag.1` does not lock it again.
//! * A locked service never expires by default, as in the original (an admin lock keeps
//!   attracting traffic after its host dies). The per-type `locked_may_expire` setting lets it
//!   expire; expiry then also **unlocks** it, so that it climbs back by the rise cap when its host
//!   returns instead of staying stuck at 0 under a stale lock.
//! * `tag.service_id` is taken from any push that carries it, not only the first one.
//! * Comparisons in expressions are correct (see [`expr`]).
//!
//! # Cost
//!
//! Refreshing an existing service with the same tag names allocates nothing: values are updated
//! in place and strings compared before they are copied (into the existing buffer). Expiry scans
//! the services once per call (every second in the original); at 10⁴–10⁵ services that is well
//! under a millisecond.
#![forbid(unsafe_code)]

pub mod expr;
pub mod lb;

use std::fmt;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

pub use expr::{Expr, ExprError, TagValueRef};

/// Highest score, and highest LB weight.
pub const SCORE_MAX: i32 = 100;

/// Longest `tag.service_id` used as an id (longer ones are kept as tags but not resolvable).
pub const SERVICE_ID_MAX_LEN: usize = 36;

pub use crate::proto::service::TagValue;

impl<'a> From<&'a TagValue> for TagValueRef<'a> {
    /// The borrowed form used by [`Expr::eval`].
    fn from(v: &'a TagValue) -> TagValueRef<'a> {
        match v {
            TagValue::Int(i) => TagValueRef::Int(*i),
            TagValue::Float(f) => TagValueRef::Float(*f),
            TagValue::Bool(b) => TagValueRef::Bool(*b),
            TagValue::Str(s) => TagValueRef::Str(s),
        }
    }
}

fn find_tag<'a>(tags: &'a [(String, TagValue)], name: &str) -> Option<&'a TagValue> {
    tags.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Sets tag `name`; returns whether its value changed (or it is new).
fn set_tag(tags: &mut Vec<(String, TagValue)>, name: &str, v: &TagValue) -> bool {
    match tags.iter_mut().find(|(n, _)| n == name) {
        Some((_, old)) => old.assign(v),
        None => {
            tags.push((name.to_owned(), v.clone()));
            true
        }
    }
}

fn default_score_expr() -> String {
    "100".to_owned()
}
fn default_score_timeout_s() -> u64 {
    300
}
fn default_score_variation_bound() -> i32 {
    5
}
fn default_true() -> bool {
    true
}
fn default_alert_frequency_limit_s() -> u64 {
    30
}

/// The configuration of one service type (`[type:<name>]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeConfig {
    /// The type name, e.g. `rawx`.
    pub name: String,
    /// The score expression ([`expr`]); default `100`.
    #[serde(default = "default_score_expr")]
    pub score_expr: String,
    /// Seconds without a tagged push after which an unlocked service drops to 0; default 300.
    #[serde(default = "default_score_timeout_s")]
    pub score_timeout_s: u64,
    /// Highest rise of the score per refresh; ≤ 0 disables the cap; default 5.
    #[serde(default = "default_score_variation_bound")]
    pub score_variation_bound: i32,
    /// Lock a service at 0 when it first registers with the `tag.1` hint; default true.
    #[serde(default = "default_true")]
    pub lock_at_first_register: bool,
    /// Least seconds between two "score dropped to 0" alerts of one service; default 30.
    #[serde(default = "default_alert_frequency_limit_s")]
    pub alert_frequency_limit_s: u64,
    /// Whether a locked service expires like an unlocked one (and is unlocked by it); default
    /// false, as in the original.
    #[serde(default)]
    pub locked_may_expire: bool,
}

impl TypeConfig {
    /// A type with every default.
    pub fn new(name: &str) -> TypeConfig {
        TypeConfig {
            name: name.to_owned(),
            score_expr: default_score_expr(),
            score_timeout_s: default_score_timeout_s(),
            score_variation_bound: default_score_variation_bound(),
            lock_at_first_register: true,
            alert_frequency_limit_s: default_alert_frequency_limit_s(),
            locked_may_expire: false,
        }
    }

    /// The same with another score expression.
    pub fn with_expr(mut self, expr: &str) -> TypeConfig {
        self.score_expr = expr.to_owned();
        self
    }

    /// The built-in configuration of `meta0`, `meta1`, `meta2` or `rawx` (alert limit 300 s).
    pub fn builtin(name: &str) -> Option<TypeConfig> {
        let expr = match name {
            "meta0" => "100",
            "meta1" | "meta2" => "root(2,((num stat.cpu)*(num stat.io)))",
            "rawx" => "root(3,((num stat.cpu)*(num stat.io)*(num stat.space)))",
            _ => return None,
        };
        let mut t = TypeConfig::new(name).with_expr(expr);
        t.alert_frequency_limit_s = 300;
        Some(t)
    }

    /// The four built-in types.
    pub fn builtins() -> Vec<TypeConfig> {
        ["meta0", "meta1", "meta2", "rawx"].iter().filter_map(|n| TypeConfig::builtin(n)).collect()
    }
}

/// What a registration does to the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreOp {
    /// A plain heartbeat: recompute unless locked (wire value −2).
    Unset,
    /// Unlock and recompute (wire value −1). Never creates a service.
    Unlock,
    /// Lock at this score, clamped to 0..=100.
    Lock(i32),
}

/// One registration: a heartbeat, a lock or an unlock.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    /// The service type.
    pub type_name: String,
    /// `ip:port` (`[v6]:port` for IPv6).
    pub addr: String,
    /// Tags and stats; names outside `tag.*` / `stat.*` are dropped.
    pub tags: Vec<(String, TagValue)>,
    /// The score opcode.
    pub op: ScoreOp,
}

impl Registration {
    /// An empty registration (reusable scratch).
    pub fn empty() -> Registration {
        Registration { type_name: String::new(), addr: String::new(), tags: Vec::new(), op: ScoreOp::Unset }
    }
}

/// One registered service, as kept and persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// The service type.
    pub type_name: String,
    /// `ip:port`.
    pub addr: String,
    /// −1 (never computed) or 0..=100.
    pub score: i32,
    /// Unix seconds of the last tagged push or expiry: the conscience's `score.timestamp`, for
    /// display and for stores written before `score_timestamp_us`. Never compared with a
    /// timeout: see [`Service::fresh_at`].
    pub score_timestamp_s: u64,
    /// µs since the Unix epoch of the last tagged push or expiry (liveness), at the registry
    /// clock's full resolution; 0 if none.
    #[serde(default)]
    pub score_timestamp_us: u64,
    /// Locked by an admin or at first registration: pushes do not change the score.
    pub locked: bool,
    /// µs of the last lock or unlock.
    pub lock_mtime_us: u64,
    /// µs of the last tag change (tagged push or expiry).
    pub tags_mtime_us: u64,
    /// µs of the last "score dropped to 0" alert.
    #[serde(default)]
    pub last_alert_us: Option<u64>,
    /// Tags and stats, in order of first appearance.
    #[serde(with = "tags_as_map")]
    pub tags: Vec<(String, TagValue)>,
}

impl Service {
    /// A new service as the registry creates it: score −1, unlocked, no tags.
    pub fn new(type_name: &str, addr: &str) -> Service {
        Service {
            type_name: type_name.to_owned(),
            addr: addr.to_owned(),
            score: -1,
            score_timestamp_s: 0,
            score_timestamp_us: 0,
            locked: false,
            lock_mtime_us: 0,
            tags_mtime_us: 0,
            last_alert_us: None,
            tags: Vec::new(),
        }
    }

    /// A tag's value.
    pub fn tag(&self, name: &str) -> Option<&TagValue> {
        find_tag(&self.tags, name)
    }

    /// The logical id: `tag.service_id` when it is a non-empty string of at most 36 bytes,
    /// else the address.
    pub fn id(&self) -> &str {
        service_id(&self.tags).unwrap_or(&self.addr)
    }

    /// µs since the last tagged push (or expiry) at `now_us`; 0 if that is in the future.
    pub fn silent_us(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.score_timestamp_us)
    }

    /// Whether the last tagged push is at most `timeout_us` old at `now_us`: the liveness test
    /// of every timeout decided on a service (the boundary itself is fresh). Both times are on
    /// the registry's µs clock, so a service beating every second is never a whole second
    /// older than it is, as it was when the timestamp was kept in seconds.
    pub fn fresh_at(&self, now_us: u64, timeout_us: u64) -> bool {
        self.silent_us(now_us) <= timeout_us
    }

    /// The LB weight: the score clamped to 0..=100.
    pub fn weight(&self) -> u32 {
        self.score.clamp(0, SCORE_MAX) as u32
    }
}

fn service_id(tags: &[(String, TagValue)]) -> Option<&str> {
    find_tag(tags, "tag.service_id")
        .and_then(TagValue::as_str)
        .filter(|s| !s.is_empty() && s.len() <= SERVICE_ID_MAX_LEN)
}

/// Tags serialised as a JSON object (order kept on output).
mod tags_as_map {
    use super::TagValue;
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tags: &[(String, TagValue)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(tags.iter().map(|(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, TagValue)>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, TagValue)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of tags")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, v)) = m.next_entry::<String, TagValue>()? {
                    match out.iter_mut().find(|(n, _): &&mut (String, TagValue)| *n == k) {
                        Some((_, old)) => *old = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// A service as listed (`all_services`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceView {
    /// `ip:port`.
    pub addr: String,
    /// `tag.service_id`, or the address.
    pub id: String,
    /// The score (−1 until first computed).
    pub score: i32,
    /// Whether the score is locked.
    pub locked: bool,
    /// `tag.*` only, or `tag.*` and `stat.*` in a full listing.
    #[serde(serialize_with = "tags_as_map::serialize")]
    pub tags: Vec<(String, TagValue)>,
}

/// What a push, lock or unlock did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushOutcome {
    /// False only for an unlock of an unknown service, which is ignored (never creates).
    pub applied: bool,
    /// The service was created by this call.
    pub created: bool,
    /// It was created with the `tag.1` hint and locked at 0 (`lock_at_first_register`).
    pub locked_at_first_register: bool,
    /// The score before (−1 for a new service).
    pub previous_score: i32,
    /// The score after.
    pub score: i32,
    /// The lock flag after.
    pub locked: bool,
    /// `tag.up = false` dropped the score to 0 and the alert rate limit allows reporting it.
    pub alert_down: bool,
}

impl PushOutcome {
    const IGNORED: PushOutcome = PushOutcome {
        applied: false,
        created: false,
        locked_at_first_register: false,
        previous_score: -1,
        score: -1,
        locked: false,
        alert_down: false,
    };
}

/// What [`Registry::deregister`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deregistered {
    /// The service was removed.
    Removed,
    /// No such service.
    NotFound,
    /// Kept: it was locked, unlocked or refreshed after the given time (a newer registration
    /// wins over an older removal, the peer `'R'` rule).
    KeptNewer,
}

/// What [`Registry::restore`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Services restored.
    pub restored: usize,
    /// Services skipped: their type is no longer configured, or their address is invalid.
    pub skipped: usize,
}

/// Why a registry call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The service type is not configured. Types come only from configuration; add a
    /// `[type:<name>]` section or fix the sender.
    UnknownType(String),
    /// The address is not `ip:port` with a non-zero port (`[v6]:port` for IPv6).
    BadAddress(String),
    /// A type's `score_expr` does not parse; the configuration is refused.
    BadExpression {
        /// The type whose expression is wrong.
        type_name: String,
        /// What is wrong, and where.
        error: ExprError,
    },
    /// Two configured types share a name.
    DuplicateType(String),
    /// A configured type has an empty name.
    EmptyTypeName,
}

impl RegistryError {
    /// A short label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            RegistryError::UnknownType(_) => "unknown_type",
            RegistryError::BadAddress(_) => "bad_address",
            RegistryError::BadExpression { .. } => "bad_expression",
            RegistryError::DuplicateType(_) => "duplicate_type",
            RegistryError::EmptyTypeName => "empty_type_name",
        }
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::UnknownType(t) => write!(f, "bad service type {t:?}: not configured"),
            RegistryError::BadAddress(a) => write!(f, "bad service address {a:?}: expected ip:port"),
            RegistryError::BadExpression { type_name, error } => {
                write!(f, "score_expr of service type {type_name:?}: {error}")
            }
            RegistryError::DuplicateType(t) => write!(f, "service type {t:?} configured twice"),
            RegistryError::EmptyTypeName => write!(f, "a service type has an empty name"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// Checks `ip:port` with a non-zero port.
pub fn validate_addr(addr: &str) -> Result<SocketAddr, RegistryError> {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        _ => Err(RegistryError::BadAddress(addr.to_owned())),
    }
}

/// A service and whether it changed since the last [`Registry::take_dirty`].
#[derive(Debug)]
struct Entry {
    svc: Service,
    dirty: bool,
}

#[derive(Debug)]
struct TypeState {
    cfg: TypeConfig,
    expr: Expr,
    services: FxHashMap<String, Entry>,
    /// `tag.service_id` → address.
    ids: FxHashMap<String, String>,
    /// Entries with `dirty` set.
    dirty: usize,
}

impl TypeState {
    fn mark(&mut self, addr: &str) {
        if let Some(e) = self.services.get_mut(addr) {
            if !e.dirty {
                e.dirty = true;
                self.dirty += 1;
            }
        }
    }

    /// Points the id index at `addr` for its current `tag.service_id` (after a change).
    fn reindex(&mut self, addr: &str, old_id: Option<&str>) {
        if let Some(old) = old_id {
            if self.ids.get(old).is_some_and(|a| a == addr) {
                self.ids.remove(old);
            }
        }
        if let Some(id) = self.services.get(addr).and_then(|e| service_id(&e.svc.tags)) {
            self.ids.insert(id.to_owned(), addr.to_owned());
        }
    }
}

/// The registry: every configured type and its services.
#[derive(Debug)]
pub struct Registry {
    types: Vec<TypeState>,
    by_name: FxHashMap<String, usize>,
    removed: Vec<(String, String)>,
    generation: u64,
}

/// The score from the tags: `None` (UNDEF) keeps `score`; a rise is capped to `bound`.
fn compute_score(expr: &Expr, tags: &[(String, TagValue)], score: i32, bound: i32) -> i32 {
    let Some(d) = expr.eval(|name| find_tag(tags, name).map(TagValueRef::from)) else {
        return score;
    };
    // `as` saturates: ±inf and huge values end up clamped below.
    let mut cur = if d.is_nan() { 0 } else { d.floor() as i64 };
    if score >= 0 && bound > 0 {
        cur = cur.min(i64::from(score) + i64::from(bound));
    }
    cur.clamp(0, i64::from(SCORE_MAX)) as i32
}

impl Registry {
    /// A registry of these types. Fails on an expression that does not parse (naming the
    /// type), an empty or duplicated name.
    pub fn new(types: Vec<TypeConfig>) -> Result<Registry, RegistryError> {
        let mut reg = Registry { types: Vec::new(), by_name: FxHashMap::default(), removed: Vec::new(), generation: 0 };
        for cfg in types {
            if cfg.name.is_empty() {
                return Err(RegistryError::EmptyTypeName);
            }
            if reg.by_name.contains_key(&cfg.name) {
                return Err(RegistryError::DuplicateType(cfg.name));
            }
            let expr = Expr::parse(&cfg.score_expr)
                .map_err(|error| RegistryError::BadExpression { type_name: cfg.name.clone(), error })?;
            reg.by_name.insert(cfg.name.clone(), reg.types.len());
            reg.types.push(TypeState {
                cfg,
                expr,
                services: FxHashMap::default(),
                ids: FxHashMap::default(),
                dirty: 0,
            });
        }
        Ok(reg)
    }

    fn type_index(&self, type_name: &str) -> Result<usize, RegistryError> {
        self.by_name.get(type_name).copied().ok_or_else(|| RegistryError::UnknownType(type_name.to_owned()))
    }

    /// Counts a change.
    fn bump(&mut self) {
        self.generation += 1;
    }

    /// Applies one registration (`refresh()` of the original).
    pub fn push(&mut self, r: &Registration, now_us: u64) -> Result<PushOutcome, RegistryError> {
        self.refresh(&r.type_name, &r.addr, &r.tags, r.op, now_us)
    }

    fn refresh(
        &mut self,
        type_name: &str,
        addr: &str,
        tags: &[(String, TagValue)],
        op: ScoreOp,
        now_us: u64,
    ) -> Result<PushOutcome, RegistryError> {
        let ti = self.type_index(type_name)?;
        validate_addr(addr)?;
        let ts = &mut self.types[ti];
        let mut created = false;
        if !ts.services.contains_key(addr) {
            if op == ScoreOp::Unlock {
                return Ok(PushOutcome::IGNORED);
            }
            let svc = Service::new(type_name, addr);
            ts.services.insert(addr.to_owned(), Entry { svc, dirty: false });
            created = true;
        }
        // Evaluated on creation only.
        let first = created && find_tag(tags, "tag.1").and_then(TagValue::truthy) == Some(true);
        let cfg = &ts.cfg;
        let Some(entry) = ts.services.get_mut(addr) else {
            return Ok(PushOutcome::IGNORED);
        };
        let srv = &mut entry.svc;
        let previous_score = srv.score;

        let mut any_tag = false;
        let mut id_changed = None;
        for (name, v) in tags {
            if !(name.starts_with("tag.") || name.starts_with("stat.")) || name == "tag.1" {
                continue;
            }
            any_tag = true;
            if name == "tag.service_id" {
                let old = service_id(&srv.tags).map(str::to_owned);
                if set_tag(&mut srv.tags, name, v) {
                    id_changed = Some(old);
                }
            } else {
                set_tag(&mut srv.tags, name, v);
            }
        }
        if any_tag {
            srv.tags_mtime_us = now_us;
            srv.score_timestamp_us = now_us;
            srv.score_timestamp_s = now_us / 1_000_000;
        }

        let recompute = |srv: &mut Service| {
            srv.score = compute_score(&ts.expr, &srv.tags, srv.score, cfg.score_variation_bound);
        };
        let mut locked_at_first_register = false;
        match op {
            ScoreOp::Unset | ScoreOp::Unlock if first && cfg.lock_at_first_register => {
                srv.score = 0;
                srv.locked = true;
                srv.lock_mtime_us = now_us;
                locked_at_first_register = true;
            }
            ScoreOp::Unlock => {
                srv.lock_mtime_us = now_us;
                if srv.locked {
                    srv.locked = false;
                    recompute(srv);
                }
            }
            ScoreOp::Unset => {
                if !srv.locked {
                    recompute(srv);
                }
            }
            ScoreOp::Lock(v) => {
                srv.locked = true;
                srv.lock_mtime_us = now_us;
                srv.score = v.clamp(0, SCORE_MAX);
            }
        }
        set_tag(&mut srv.tags, "tag.lock", &TagValue::Bool(srv.locked));

        let mut alert_down = false;
        if !srv.locked && find_tag(tags, "tag.up").and_then(TagValue::truthy) == Some(false) {
            srv.score = 0;
            let limit_us = cfg.alert_frequency_limit_s.saturating_mul(1_000_000);
            if srv.last_alert_us.is_none_or(|t| now_us.saturating_sub(t) >= limit_us) {
                srv.last_alert_us = Some(now_us);
                alert_down = true;
            }
        }
        let out = PushOutcome {
            applied: true,
            created,
            locked_at_first_register,
            previous_score,
            score: srv.score,
            locked: srv.locked,
            alert_down,
        };
        if let Some(old) = id_changed {
            ts.reindex(addr, old.as_deref());
        }
        ts.mark(addr);
        self.bump();
        Ok(out)
    }

    /// Locks a service at `score` (clamped to 0..=100; `None` = 0), creating it if unknown.
    /// Does not refresh liveness.
    pub fn lock(
        &mut self,
        type_name: &str,
        addr: &str,
        score: Option<i32>,
        now_us: u64,
    ) -> Result<PushOutcome, RegistryError> {
        self.refresh(type_name, addr, &[], ScoreOp::Lock(score.unwrap_or(0)), now_us)
    }

    /// Unlocks a service and recomputes its score from its last tags (the rise cap applies
    /// from the locked value). An unknown service is left alone: `applied` is false.
    pub fn unlock(&mut self, type_name: &str, addr: &str, now_us: u64) -> Result<PushOutcome, RegistryError> {
        self.refresh(type_name, addr, &[], ScoreOp::Unlock, now_us)
    }

    /// Removes a service. With `if_not_modified_after_us`, a service locked, unlocked or
    /// refreshed after that time is kept (the peer `'R'` rule: a newer registration wins).
    pub fn deregister(
        &mut self,
        type_name: &str,
        addr: &str,
        if_not_modified_after_us: Option<u64>,
    ) -> Result<Deregistered, RegistryError> {
        let ti = self.type_index(type_name)?;
        let ts = &mut self.types[ti];
        let Some(e) = ts.services.get(addr) else {
            return Ok(Deregistered::NotFound);
        };
        if let Some(t) = if_not_modified_after_us {
            if e.svc.lock_mtime_us > t || e.svc.tags_mtime_us > t {
                return Ok(Deregistered::KeptNewer);
            }
        }
        if let Some((key, e)) = ts.services.remove_entry(addr) {
            if e.dirty {
                ts.dirty -= 1;
            }
            if let Some(id) = service_id(&e.svc.tags) {
                if ts.ids.get(id).is_some_and(|a| *a == key) {
                    ts.ids.remove(id);
                }
            }
            self.removed.push((type_name.to_owned(), key));
        }
        self.bump();
        Ok(Deregistered::Removed)
    }

    /// Removes every service of a type; returns how many.
    pub fn flush(&mut self, type_name: &str) -> Result<usize, RegistryError> {
        let ti = self.type_index(type_name)?;
        let ts = &mut self.types[ti];
        let n = ts.services.len();
        ts.ids.clear();
        ts.dirty = 0;
        for (addr, _) in ts.services.drain() {
            self.removed.push((type_name.to_owned(), addr));
        }
        if n > 0 {
            self.bump();
        }
        Ok(n)
    }

    /// Expires services (call every second): an unlocked service (or any, with
    /// `locked_may_expire`, which also unlocks it) whose last tagged push is older than the
    /// type's `score_timeout_s` and whose score is above 0 drops to 0 with `tag.up = false`.
    /// Returns the `(type, addr)` of the expired services; they stay listed.
    pub fn expire(&mut self, now_us: u64) -> Vec<(String, String)> {
        let now_s = now_us / 1_000_000;
        let mut out = Vec::new();
        for ts in &mut self.types {
            let timeout_us = ts.cfg.score_timeout_s.saturating_mul(1_000_000);
            let may_expire_locked = ts.cfg.locked_may_expire;
            let mut newly_dirty = 0;
            for (addr, e) in &mut ts.services {
                let s = &mut e.svc;
                if (s.locked && !may_expire_locked) || s.fresh_at(now_us, timeout_us) || s.score <= 0 {
                    continue;
                }
                s.score = 0;
                s.score_timestamp_us = now_us;
                s.score_timestamp_s = now_s;
                s.tags_mtime_us = now_us;
                if s.locked {
                    s.locked = false;
                    s.lock_mtime_us = now_us;
                    set_tag(&mut s.tags, "tag.lock", &TagValue::Bool(false));
                }
                set_tag(&mut s.tags, "tag.up", &TagValue::Bool(false));
                if !e.dirty {
                    e.dirty = true;
                    newly_dirty += 1;
                }
                out.push((ts.cfg.name.clone(), addr.clone()));
            }
            ts.dirty += newly_dirty;
        }
        if !out.is_empty() {
            self.bump();
        }
        out
    }

    /// Puts back services read from the durable store, as they were: scores, lock flags and
    /// tags. They are not first registrations, so a later `tag.1` hint does not lock them. A
    /// service already present is replaced. Restored services are not marked dirty.
    pub fn restore(&mut self, services: impl IntoIterator<Item = Service>) -> RestoreReport {
        let mut rep = RestoreReport::default();
        for mut svc in services {
            let Some(&ti) = self.by_name.get(svc.type_name.as_str()) else {
                rep.skipped += 1;
                continue;
            };
            if validate_addr(&svc.addr).is_err() {
                rep.skipped += 1;
                continue;
            }
            svc.score = svc.score.clamp(-1, SCORE_MAX);
            if svc.score_timestamp_us / 1_000_000 != svc.score_timestamp_s {
                // Written before `score_timestamp_us` (or edited): the start of its second.
                svc.score_timestamp_us = svc.score_timestamp_s.saturating_mul(1_000_000);
            }
            set_tag(&mut svc.tags, "tag.lock", &TagValue::Bool(svc.locked));
            let ts = &mut self.types[ti];
            let addr = svc.addr.clone();
            if let Some(old) = ts.services.insert(addr.clone(), Entry { svc, dirty: false }) {
                if old.dirty {
                    ts.dirty -= 1;
                }
                ts.reindex(&addr, service_id(&old.svc.tags));
            } else {
                ts.reindex(&addr, None);
            }
            rep.restored += 1;
        }
        if rep.restored > 0 {
            self.bump();
        }
        rep
    }

    /// Drains the keys `(type, addr)` changed or removed since the last call, sorted, each
    /// once. For each, [`Registry::get`] gives the service to write, or `None`: delete it.
    pub fn take_dirty(&mut self) -> Vec<(String, String)> {
        let mut out = std::mem::take(&mut self.removed);
        for ts in &mut self.types {
            if ts.dirty == 0 {
                continue;
            }
            for (addr, e) in &mut ts.services {
                if e.dirty {
                    e.dirty = false;
                    out.push((ts.cfg.name.clone(), addr.clone()));
                }
            }
            ts.dirty = 0;
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Incremented on every change (push, lock, unlock, removal, expiry, restore).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The configured type names, in configuration order.
    pub fn service_types(&self) -> Vec<String> {
        self.types.iter().map(|t| t.cfg.name.clone()).collect()
    }

    /// A type's configuration.
    pub fn type_config(&self, type_name: &str) -> Option<&TypeConfig> {
        self.by_name.get(type_name).map(|&i| &self.types[i].cfg)
    }

    /// One service.
    pub fn get(&self, type_name: &str, addr: &str) -> Option<&Service> {
        let &ti = self.by_name.get(type_name)?;
        self.types[ti].services.get(addr).map(|e| &e.svc)
    }

    /// The services of a type, in no particular order (none for an unknown type).
    pub fn services<'a>(&'a self, type_name: &str) -> impl Iterator<Item = &'a Service> + 'a {
        let ts = self.by_name.get(type_name).map(|&i| &self.types[i]);
        ts.into_iter().flat_map(|t| t.services.values().map(|e| &e.svc))
    }

    /// Every service of every type.
    pub fn iter(&self) -> impl Iterator<Item = &Service> + '_ {
        self.types.iter().flat_map(|t| t.services.values().map(|e| &e.svc))
    }

    /// Number of services of all types.
    pub fn len(&self) -> usize {
        self.types.iter().map(|t| t.services.len()).sum()
    }

    /// Whether no service is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The services of a type, sorted by address: `tag.*` only, or with `stat.*` when `full`.
    pub fn list(&self, type_name: &str, full: bool) -> Result<Vec<ServiceView>, RegistryError> {
        let ti = self.type_index(type_name)?;
        let mut out: Vec<ServiceView> = self.types[ti]
            .services
            .values()
            .map(|e| {
                let s = &e.svc;
                ServiceView {
                    addr: s.addr.clone(),
                    id: s.id().to_owned(),
                    score: s.score,
                    locked: s.locked,
                    tags: s
                        .tags
                        .iter()
                        .filter(|(n, _)| n.starts_with("tag.") || (full && n.starts_with("stat.")))
                        .cloned()
                        .collect(),
                }
            })
            .collect();
        out.sort_unstable_by(|a, b| a.addr.cmp(&b.addr));
        Ok(out)
    }

    /// The address of a service id: an id that parses as `host:port` is its own address;
    /// otherwise the service whose `tag.service_id` it is.
    pub fn resolve<'a>(&'a self, type_name: &str, service_id: &'a str) -> Option<&'a str> {
        if service_id.parse::<SocketAddr>().is_ok() {
            return Some(service_id);
        }
        let &ti = self.by_name.get(type_name)?;
        self.types[ti].ids.get(service_id).map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
