//! The confd wire format: `plj0` ‖ a signed JSON message (reference §2).
//!
//! ```text
//! datagram = "plj0" || {"msg": <inner JSON as a string>, "salt": S, "hmac": hex(HMAC-SHA1(key, S ‖ msg))}
//! request  salt = the client's unix time ("%d"), checked within ±300 s of the server's clock
//! reply    salt = the request's rsalt, verbatim
//! ```
//!
//! [`parse_request`] takes a datagram and a `now` and returns a [`VerifiedRequest`] or the one
//! [`RequestError`] (= drop reason) that the real `ganeti-confd` 3.0.2 would drop it for (or,
//! for [`RequestError::SurrogateEscape`], answer with garbage), in the daemon's order: size, magic, outer JSON, MAC, inner JSON and schema, timestamp. The JSON
//! dialect is the daemon's (module `confd::json`): first duplicate key wins, numbers rounded to
//! integers half-to-even, Latin-1 datagrams. A dropped request gets no reply, ever.
//!
//! [`encode_reply`] writes what the daemon writes, byte for byte for ASCII content: compact
//! `{"hmac":…,"msg":…,"salt":…}` with `msg` = `{"protocol":1,"status":S,"answer":A,"serial":N}`.
//! [`encode_request`] writes what the real Python client writes, byte for byte.
//! [`parse_reply`] accepts both formattings, as the Python client does.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::json::{self, hs_int, hs_is_space, JValue, JsonError};

/// The four bytes every confd datagram starts with (`CONFD_MAGIC_FOURCC`, "plain json 0").
pub const MAGIC: &[u8; 4] = b"plj0";
/// The default confd UDP port.
pub const DEFAULT_PORT: u16 = 1814;
/// Protocol version sent in requests and replies (not checked by the 3.0.2 server).
pub const PROTOCOL_VERSION: i64 = 1;
/// Accepted distance between a request's timestamp and the server clock, inclusive.
pub const MAX_CLOCK_SKEW: i64 = 300;
/// The daemon reads 4096 bytes per datagram; a longer request is truncated, hence dropped.
pub const MAX_REQUEST_LEN: usize = 4096;
/// The client's send and receive limit (`MAX_UDP_DATA_SIZE`): keep replies at most this long.
pub const MAX_UDP_DATA_SIZE: usize = 61440;
/// Length of the hex MAC.
pub const HMAC_HEX_LEN: usize = 40;
/// Length of the raw MAC (HMAC-SHA1).
pub const HMAC_LEN: usize = 20;

/// Reply status `CONFD_REPL_STATUS_OK`.
pub const STATUS_OK: i64 = 0;
/// Reply status `CONFD_REPL_STATUS_ERROR`.
pub const STATUS_ERROR: i64 = 1;
/// Reply status `CONFD_REPL_STATUS_NOTIMPLEMENTED` (never emitted by the 3.0.2 server).
pub const STATUS_NOTIMPLEMENTED: i64 = 2;
/// Error answer `CONFD_ERROR_UNKNOWN_ENTRY`.
pub const ERROR_UNKNOWN_ENTRY: i64 = 0;
/// Error answer `CONFD_ERROR_INTERNAL`.
pub const ERROR_INTERNAL: i64 = 1;
/// Error answer `CONFD_ERROR_ARGUMENT`.
pub const ERROR_ARGUMENT: i64 = 2;

type HmacSha1 = Hmac<Sha1>;

/// An HMAC-SHA1 key with its keyed state precomputed. The key is the key file's exact bytes:
/// Ganeti writes 40 hex characters and a LF, and the LF is part of the key.
#[derive(Clone)]
pub struct HmacKey {
    mac: HmacSha1,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    /// A key from its raw bytes (all of them: do not strip the LF of a Ganeti key file).
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <HmacSha1 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
        HmacKey { mac }
    }

    /// Reads a key file (`/var/lib/ganeti/hmac.key`) and uses all of its bytes.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        Ok(Self::new(&crate::util::read_bounded(path.as_ref(), crate::util::MAX_KEY_FILE)?))
    }

    /// HMAC-SHA1(key, salt ‖ msg), raw.
    pub fn digest(&self, salt: &str, msg: &str) -> [u8; HMAC_LEN] {
        let mut m = self.mac.clone();
        m.update(salt.as_bytes());
        m.update(msg.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Lowercase hex of HMAC-SHA1(key, salt ‖ msg).
    pub fn sign(&self, salt: &str, msg: &str) -> [u8; HMAC_HEX_LEN] {
        let mut out = [0u8; HMAC_HEX_LEN];
        // Cannot fail: 20 bytes make 40 hex digits.
        let _ = hex::encode_to_slice(self.digest(salt, msg), &mut out);
        out
    }

    /// Checks a received hex MAC, case-insensitively (as both Ganeti peers do) and in constant
    /// time (which neither does).
    pub fn verify(&self, salt: &str, msg: &str, received: &str) -> bool {
        self.verified(salt, msg, received).is_some()
    }

    /// [`HmacKey::verify`], returning the raw MAC it checked: the signature of the request
    /// whatever the case of its hex digits or the layout of its envelope.
    pub fn verified(&self, salt: &str, msg: &str, received: &str) -> Option<[u8; HMAC_LEN]> {
        let got = received.as_bytes();
        if got.len() != HMAC_HEX_LEN {
            return None;
        }
        let mut lower = [0u8; HMAC_HEX_LEN];
        for (l, g) in lower.iter_mut().zip(got) {
            *l = g.to_ascii_lowercase();
        }
        let digest = self.digest(salt, msg);
        let mut hex = [0u8; HMAC_HEX_LEN];
        let _ = hex::encode_to_slice(digest, &mut hex);
        bool::from(hex.ct_eq(&lower)).then_some(digest)
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha1 {
    // `new_from_slice` only fails for fixed-size-key MACs, which HMAC is not.
    <HmacSha1 as hmac::digest::KeyInit>::new(&Default::default())
}

/// The request types (`CONFD_REQ_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RequestType {
    /// 0: liveness; answers the config version.
    Ping = 0,
    /// 1: the role of a node (by UUID, name or unique short name).
    NodeRoleByName = 1,
    /// 2: the primary IP of the node hosting an instance IP.
    NodePipByInstanceIp = 2,
    /// 3: the master node's name, or selected master fields.
    ClusterMaster = 3,
    /// 4: every node's primary IP.
    NodePipList = 4,
    /// 5: the master candidates' primary IPs.
    McPipList = 5,
    /// 6: the instance IPs on a link.
    InstancesIpsList = 6,
    /// 7: the DRBD minors of a node.
    NodeDrbd = 7,
    /// 8: the primary and secondary instances of a node (the Python client cannot send it).
    NodeInstances = 8,
    /// 9: the disks of an instance.
    InstanceDisks = 9,
    /// 10: a JSON pointer into `config.data`.
    ConfigQuery = 10,
    /// 11: the data collectors' state.
    DataCollectors = 11,
    /// 100 (heartsink): the health of one amphora; query: its id.
    AmphoraHealth = 100,
    /// 101 (heartsink): a load balancer's rolled-up status; query: its id (or an amphora id).
    LbStatus = 101,
    /// 102 (heartsink): the senders currently down (stale); query: none, or the last id of the
    /// previous page.
    DownSenders = 102,
    /// 103 (heartsink): the engine's counters.
    EngineCounters = 103,
    /// 104 (heartsink): services from a pool or a service type; query `NAME[?size=N&slot=S]`.
    PoolNext = 104,
    /// 105 (heartsink): a pool's poll; query `POOL[?avoid=id,id&known=id,id]`.
    PoolPoll = 105,
}

impl RequestType {
    /// All types, in number order.
    pub const ALL: [RequestType; 12] = [
        RequestType::Ping,
        RequestType::NodeRoleByName,
        RequestType::NodePipByInstanceIp,
        RequestType::ClusterMaster,
        RequestType::NodePipList,
        RequestType::McPipList,
        RequestType::InstancesIpsList,
        RequestType::NodeDrbd,
        RequestType::NodeInstances,
        RequestType::InstanceDisks,
        RequestType::ConfigQuery,
        RequestType::DataCollectors,
    ];

    /// heartsink's own types (numbered above Ganeti's range), in number order.
    pub const HEARTSINK: [RequestType; 6] = [
        RequestType::AmphoraHealth,
        RequestType::LbStatus,
        RequestType::DownSenders,
        RequestType::EngineCounters,
        RequestType::PoolNext,
        RequestType::PoolPoll,
    ];

    /// The type with this wire number.
    pub fn from_number(n: i64) -> Option<Self> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i))
            .or_else(|| Self::HEARTSINK.iter().find(|t| t.number() == n))
            .copied()
    }

    /// True for heartsink's own types.
    pub fn is_heartsink(self) -> bool {
        self as u8 >= 100
    }

    /// The wire number.
    pub fn number(self) -> i64 {
        self as i64
    }
}

/// A field of a `CLUSTER_MASTER` dict query (`CONFD_REQFIELD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqField {
    /// 0: the master node's name.
    Name,
    /// 1: the cluster's master IP.
    Ip,
    /// 2: the master node's primary IP.
    MNodePip,
}

impl ReqField {
    fn from_number(n: i64) -> Option<Self> {
        match n {
            0 => Some(ReqField::Name),
            1 => Some(ReqField::Ip),
            2 => Some(ReqField::MNodePip),
            _ => None,
        }
    }

    /// The wire number.
    pub fn number(self) -> i64 {
        match self {
            ReqField::Name => 0,
            ReqField::Ip => 1,
            ReqField::MNodePip => 2,
        }
    }

    /// The Haskell constructor name (used in the daemon's error texts).
    pub(crate) fn hs_name(self) -> &'static str {
        match self {
            ReqField::Name => "ReqFieldName",
            ReqField::Ip => "ReqFieldIp",
            ReqField::MNodePip => "ReqFieldMNodePip",
        }
    }
}

/// An object query (`ConfdReqQ`): keys `"0"` link, `"1"` ip, `"2"` ip list, `"3"` fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DictQuery {
    /// `"0"`: the NIC link (absent: the cluster default).
    pub link: Option<String>,
    /// `"1"`: one instance IP.
    pub ip: Option<String>,
    /// `"2"`: several instance IPs.
    pub ip_list: Vec<String>,
    /// `"3"`: `CLUSTER_MASTER` fields.
    pub fields: Vec<ReqField>,
}

/// The `query` of a request (`ConfdQuery`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Query {
    /// Absent or `null`.
    #[default]
    Empty,
    /// A string.
    Plain(String),
    /// An object.
    Dict(DictQuery),
}

/// A confd request (`ConfdRequest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `protocol`: carried, not checked (the daemon answers 99 too).
    pub protocol: i64,
    /// `type`.
    pub kind: RequestType,
    /// `query`.
    pub query: Query,
    /// `rsalt`: the reply is signed with it as its salt; the client matches replies by it.
    pub rsalt: String,
}

impl Request {
    /// A protocol-1 request.
    pub fn new(kind: RequestType, query: Query, rsalt: impl Into<String>) -> Self {
        Request { protocol: PROTOCOL_VERSION, kind, query, rsalt: rsalt.into() }
    }
}

/// A request whose envelope, MAC, schema and timestamp all verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRequest {
    /// The request.
    pub request: Request,
    /// Its timestamp (the outer salt, as an integer).
    pub timestamp: i64,
    /// Which of the keys verified it.
    pub key_index: usize,
    /// Its signature: the raw MAC of its salt and `msg` (the replay cache's key).
    pub mac: [u8; HMAC_LEN],
}

/// Why a request datagram is dropped. Each variant is one drop reason ([`RequestError::label`],
/// listed in [`RequestError::ALL`]); the real daemon drops every one of these silently too,
/// except [`RequestError::SurrogateEscape`], which it answers with undecodable bytes, and
/// heartsink's own [`RequestError::Replay`] and [`RequestError::ReplyBudget`] (decided by the
/// server, not the parser), which it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Longer than 4096 bytes: the daemon reads 4096 and the rest is cut, so it never answers
    /// such a request. Usually a client with a huge query; keep requests small.
    Oversize,
    /// Does not start with `plj0`: not confd, or another protocol version.
    BadMagic,
    /// The outer document is not JSON in the daemon's dialect (syntax, trailing data, leading
    /// whitespace, raw control characters in strings). Corruption or a foreign sender.
    NotJson,
    /// The outer JSON (the signed message) is not an object with exactly the string members
    /// `msg`, `salt`, `hmac` (an extra `key_selector` is refused, as by the daemon).
    BadEnvelope,
    /// No configured key gives this MAC: a wrong or rotated key (the key file's trailing LF is
    /// part of the key), a forged or corrupted packet, or raw non-ASCII text (the daemon reads
    /// datagrams as Latin-1, so raw UTF-8 never verifies; send `\uXXXX` escapes).
    BadHmac,
    /// `msg` verified but is not JSON in the daemon's dialect.
    MsgNotJson,
    /// `msg` is JSON of the wrong shape: a key outside `protocol, type, query, rsalt`, a missing
    /// one, a type outside 0–11 and heartsink's 100–105, a number query, unknown dict-query keys or field ids.
    BadRequest,
    /// A `\uD800`–`\uDFFF` escape. The daemon reads each half as a character of its own and
    /// answers with bytes no client can decode; heartsink drops it.
    SurrogateEscape,
    /// The salt is not a Haskell `Integer` literal (`reads`): empty, a fraction, trailing
    /// whitespace, garbage.
    BadTimestamp,
    /// The timestamp is more than 300 s behind the server clock: a replay, a client clock
    /// behind, or a very delayed packet. Check NTP on both sides.
    StaleTimestamp,
    /// The timestamp is more than 300 s ahead of the server clock: a client clock ahead.
    FutureTimestamp,
    /// heartsink only (the daemon answers it): a request with the signature of one already
    /// answered within its timestamp's ±300 s window, i.e. a captured packet sent again, from
    /// any source. Real clients never resend a packet (a retry is a new request).
    Replay,
    /// heartsink only: a valid request whose reply would exceed the reply budget of its source
    /// address, or of the whole server (`confd.reply_budget`, `confd.reply_budget_total`); the
    /// reply is not sent. A client asking too much, or replies reflected at a spoofed source.
    ReplyBudget,
}

impl RequestError {
    /// The drop-reason label.
    pub fn label(&self) -> &'static str {
        match self {
            RequestError::Oversize => "oversize",
            RequestError::BadMagic => "bad_magic",
            RequestError::NotJson => "not_json",
            RequestError::BadEnvelope => "bad_envelope",
            RequestError::BadHmac => "bad_hmac",
            RequestError::MsgNotJson => "msg_not_json",
            RequestError::BadRequest => "bad_request",
            RequestError::SurrogateEscape => "surrogate_escape",
            RequestError::BadTimestamp => "bad_timestamp",
            RequestError::StaleTimestamp => "stale_timestamp",
            RequestError::FutureTimestamp => "future_timestamp",
            RequestError::Replay => "replay",
            RequestError::ReplyBudget => "reply_budget",
        }
    }

    /// Every variant, for counters.
    pub const ALL: [RequestError; 13] = [
        RequestError::Oversize,
        RequestError::BadMagic,
        RequestError::NotJson,
        RequestError::BadEnvelope,
        RequestError::BadHmac,
        RequestError::MsgNotJson,
        RequestError::BadRequest,
        RequestError::SurrogateEscape,
        RequestError::BadTimestamp,
        RequestError::StaleTimestamp,
        RequestError::FutureTimestamp,
        RequestError::Replay,
        RequestError::ReplyBudget,
    ];
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for RequestError {}

/// Options of [`parse_request_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Also accept `CLUSTER_MASTER` field ids given as strings (`{"3": ["0", "1"]}`), as
    /// `tools/confd-client` sends them (a 2.x leftover). The 3.0.2 daemon drops those requests;
    /// off by default.
    pub string_field_ids: bool,
}

/// The members of a signed message (`{"msg", "salt", "hmac"}`), first occurrence of each.
struct SignedMessage {
    msg: String,
    salt: String,
    hmac: String,
}

fn signed_message(datagram: &[u8], allow_extra: bool) -> Result<SignedMessage, (JsonError, bool)> {
    let text = json::latin1(datagram);
    let doc = json::parse(&text).map_err(|e| (e, false))?;
    let JValue::Obj(members) = doc else { return Err((JsonError::Syntax, true)) };
    if !allow_extra && members.iter().any(|(k, _)| !matches!(k.as_str(), "msg" | "salt" | "hmac")) {
        return Err((JsonError::Syntax, true));
    }
    let get = |k: &str| match JValue::first(&members, k) {
        Some(JValue::Str(s)) => Ok(s.clone()),
        _ => Err((JsonError::Syntax, true)),
    };
    Ok(SignedMessage { msg: get("msg")?, salt: get("salt")?, hmac: get("hmac")? })
}

/// Parses and verifies a request datagram with the daemon's rules; see [`parse_request_with`].
pub fn parse_request(datagram: &[u8], keys: &[HmacKey], now: i64) -> Result<VerifiedRequest, RequestError> {
    parse_request_with(datagram, keys, now, ParseOptions::default())
}

/// Parses and verifies a request datagram. `now` is the server clock in unix seconds; `keys`
/// are tried in order. Checks run in the daemon's order (so a packet gets the reason the daemon
/// would log): size, magic, outer JSON, MAC, inner JSON and schema, timestamp.
pub fn parse_request_with(
    datagram: &[u8],
    keys: &[HmacKey],
    now: i64,
    opts: ParseOptions,
) -> Result<VerifiedRequest, RequestError> {
    if datagram.len() > MAX_REQUEST_LEN {
        return Err(RequestError::Oversize);
    }
    let body = datagram.strip_prefix(MAGIC).ok_or(RequestError::BadMagic)?;
    let signed = signed_message(body, false).map_err(|e| match e {
        (JsonError::Surrogate, _) => RequestError::SurrogateEscape,
        (_, false) => RequestError::NotJson,
        (_, true) => RequestError::BadEnvelope,
    })?;
    let (key_index, mac) = keys
        .iter()
        .enumerate()
        .find_map(|(i, k)| k.verified(&signed.salt, &signed.msg, &signed.hmac).map(|m| (i, m)))
        .ok_or(RequestError::BadHmac)?;
    let inner = json::parse(&signed.msg).map_err(|e| match e {
        JsonError::Surrogate => RequestError::SurrogateEscape,
        JsonError::Syntax => RequestError::MsgNotJson,
    })?;
    let request = request_from_json(&inner, opts).ok_or(RequestError::BadRequest)?;
    let ts = parse_timestamp(&signed.salt).ok_or(RequestError::BadTimestamp)?;
    let now = i128::from(now);
    if ts < now - i128::from(MAX_CLOCK_SKEW) {
        return Err(RequestError::StaleTimestamp);
    }
    if ts > now + i128::from(MAX_CLOCK_SKEW) {
        return Err(RequestError::FutureTimestamp);
    }
    // In the window, so it fits.
    let timestamp = i64::try_from(ts).map_err(|_| RequestError::FutureTimestamp)?;
    Ok(VerifiedRequest { request, timestamp, key_index, mac })
}

fn int_of(v: &JValue) -> Option<i64> {
    match v {
        JValue::Num(t) => hs_int(t),
        _ => None,
    }
}

fn request_from_json(doc: &JValue, opts: ParseOptions) -> Option<Request> {
    let JValue::Obj(m) = doc else { return None };
    if m.iter().any(|(k, _)| !matches!(k.as_str(), "protocol" | "type" | "query" | "rsalt")) {
        return None;
    }
    let protocol = int_of(JValue::first(m, "protocol")?)?;
    let kind = RequestType::from_number(int_of(JValue::first(m, "type")?)?)?;
    let JValue::Str(rsalt) = JValue::first(m, "rsalt")? else { return None };
    let query = match JValue::first(m, "query") {
        None | Some(JValue::Null) => Query::Empty,
        Some(JValue::Str(s)) => Query::Plain(s.clone()),
        Some(JValue::Obj(q)) => Query::Dict(dict_query(q, opts)?),
        Some(_) => return None,
    };
    Some(Request { protocol, kind, query, rsalt: rsalt.clone() })
}

fn dict_query(q: &[(String, JValue)], opts: ParseOptions) -> Option<DictQuery> {
    if q.iter().any(|(k, _)| !matches!(k.as_str(), "0" | "1" | "2" | "3")) {
        return None;
    }
    let opt_str = |k: &str| match JValue::first(q, k) {
        None | Some(JValue::Null) => Some(None),
        Some(JValue::Str(s)) => Some(Some(s.clone())),
        Some(_) => None,
    };
    let link = opt_str("0")?;
    let ip = opt_str("1")?;
    let ip_list = match JValue::first(q, "2") {
        None | Some(JValue::Null) => Vec::new(),
        Some(JValue::Arr(items)) => {
            items.iter().map(|i| if let JValue::Str(s) = i { Some(s.clone()) } else { None }).collect::<Option<_>>()?
        }
        Some(_) => return None,
    };
    let fields = match JValue::first(q, "3") {
        None | Some(JValue::Null) => Vec::new(),
        Some(JValue::Arr(items)) => items
            .iter()
            .map(|i| match i {
                JValue::Num(_) => ReqField::from_number(int_of(i)?),
                JValue::Str(s) if opts.string_field_ids => ReqField::from_number(s.parse().ok()?),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Some(_) => return None,
    };
    Some(DictQuery { link, ip, ip_list, fields })
}

/// Reads a request salt as the daemon does (`reads :: Integer`, whole string): leading
/// whitespace, optional parentheses (`(1700000000)`), a `-` sign, decimal with leading zeros,
/// `0x`/`0X` hex or `0o`/`0O` octal; no trailing whitespace, fraction, exponent or `+`.
/// Values beyond `i128` saturate (they are outside any window anyway).
pub fn parse_timestamp(salt: &str) -> Option<i128> {
    // Plain decimal digits (every real client's salt): the same value, read directly.
    if (1..=30).contains(&salt.len()) && salt.bytes().all(|b| b.is_ascii_digit()) {
        return salt.parse().ok();
    }
    let chars: Vec<char> = salt.chars().collect();
    let mut i = 0;
    let v = ts_expr(&chars, &mut i, 0)?;
    (i == chars.len()).then_some(v)
}

fn ts_skip_ws(c: &[char], i: &mut usize) {
    while c.get(*i).is_some_and(|&ch| hs_is_space(ch)) {
        *i += 1;
    }
}

fn ts_expr(c: &[char], i: &mut usize, depth: usize) -> Option<i128> {
    if depth > 64 {
        return None;
    }
    ts_skip_ws(c, i);
    match c.get(*i)? {
        '(' => {
            *i += 1;
            let v = ts_expr(c, i, depth + 1)?;
            ts_skip_ws(c, i);
            (c.get(*i) == Some(&')')).then(|| *i += 1)?;
            Some(v)
        }
        '-' => {
            *i += 1;
            ts_skip_ws(c, i);
            ts_number(c, i).map(|v| v.saturating_neg())
        }
        _ => ts_number(c, i),
    }
}

fn ts_number(c: &[char], i: &mut usize) -> Option<i128> {
    let digit = |ch: Option<&char>, radix: u32| ch.and_then(|ch| ch.to_digit(radix));
    digit(c.get(*i), 10)?;
    let mut radix = 10;
    if c.get(*i) == Some(&'0') {
        match c.get(*i + 1) {
            Some('x' | 'X') if digit(c.get(*i + 2), 16).is_some() => radix = 16,
            Some('o' | 'O') if digit(c.get(*i + 2), 8).is_some() => radix = 8,
            _ => {}
        }
        if radix != 10 {
            *i += 2;
        }
    }
    let mut v: i128 = 0;
    while let Some(d) = digit(c.get(*i), radix) {
        v = v.saturating_mul(i128::from(radix)).saturating_add(i128::from(d));
        *i += 1;
    }
    if radix == 10 {
        // A fraction or an exponent makes a non-integer lexeme: `reads` fails.
        let frac = c.get(*i) == Some(&'.') && digit(c.get(*i + 1), 10).is_some();
        let exp = matches!(c.get(*i), Some('e' | 'E'))
            && (digit(c.get(*i + 1), 10).is_some()
                || (matches!(c.get(*i + 1), Some('+' | '-')) && digit(c.get(*i + 2), 10).is_some()));
        if frac || exp {
            return None;
        }
    }
    Some(v)
}

/// A confd reply (`ConfdReply`): exactly these four members on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// `protocol` (1).
    pub protocol: i64,
    /// `status`: [`STATUS_OK`], [`STATUS_ERROR`], …
    pub status: i64,
    /// `answer`: any JSON.
    pub answer: serde_json::Value,
    /// `serial`: the config serial the answer comes from (0 for PING and errors).
    pub serial: i64,
}

impl Reply {
    /// A protocol-1 reply.
    pub fn new(status: i64, answer: serde_json::Value, serial: i64) -> Self {
        Reply { protocol: PROTOCOL_VERSION, status, answer, serial }
    }

    /// `status 0` with `answer` and `serial`.
    pub fn ok(answer: impl Into<serde_json::Value>, serial: i64) -> Self {
        Self::new(STATUS_OK, answer.into(), serial)
    }

    /// `status 1` with `answer` and serial 0 (errors lose against any real answer).
    pub fn error(answer: impl Into<serde_json::Value>) -> Self {
        Self::new(STATUS_ERROR, answer.into(), 0)
    }

    /// The inner document, compact, as the daemon writes it.
    pub fn to_msg(&self) -> String {
        let mut s = String::with_capacity(64);
        let _ = write!(s, "{{\"protocol\":{},\"status\":{},\"answer\":", self.protocol, self.status);
        json::write_value(&mut s, &self.answer);
        let _ = write!(s, ",\"serial\":{}}}", self.serial);
        s
    }
}

/// Encodes a signed reply exactly as the daemon does: `plj0{"hmac":H,"msg":M,"salt":rsalt}`,
/// compact, no newline, ASCII only. For ASCII content this is byte-identical to the daemon.
pub fn encode_reply(reply: &Reply, rsalt: &str, key: &HmacKey) -> Vec<u8> {
    let mut out = Vec::new();
    encode_reply_into(&mut out, reply, rsalt, key);
    out
}

/// [`encode_reply`] into a reused buffer (cleared first).
pub fn encode_reply_into(out: &mut Vec<u8>, reply: &Reply, rsalt: &str, key: &HmacKey) {
    let msg = reply.to_msg();
    encode_signed(out, &msg, rsalt, key);
}

fn encode_signed(out: &mut Vec<u8>, msg: &str, salt: &str, key: &HmacKey) {
    let mac = key.sign(salt, msg);
    let mut s = String::with_capacity(msg.len() + salt.len() + 80);
    s.push_str("{\"hmac\":\"");
    s.push_str(std::str::from_utf8(&mac).unwrap_or_default());
    s.push_str("\",\"msg\":");
    json::write_str(&mut s, msg);
    s.push_str(",\"salt\":");
    json::write_str(&mut s, salt);
    s.push('}');
    out.clear();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a signed request exactly as the real Python `ConfdClient._PackRequest(req, now)`
/// does (simplejson, `", "`/`": "` separators, key order `protocol, type, [query,] rsalt`, a LF
/// after each document, ASCII only); `now` is the unix time used as the salt.
pub fn encode_request(req: &Request, now: i64, key: &HmacKey) -> Vec<u8> {
    let mut msg = String::with_capacity(128);
    let _ = write!(msg, "{{\"protocol\": {}, \"type\": {}, ", req.protocol, req.kind.number());
    match &req.query {
        Query::Empty => {}
        Query::Plain(s) => {
            msg.push_str("\"query\": ");
            json::write_str(&mut msg, s);
            msg.push_str(", ");
        }
        Query::Dict(d) => {
            msg.push_str("\"query\": {");
            let mut first = true;
            let mut sep = |msg: &mut String| {
                if !first {
                    msg.push_str(", ");
                }
                first = false;
            };
            if let Some(l) = &d.link {
                sep(&mut msg);
                msg.push_str("\"0\": ");
                json::write_str(&mut msg, l);
            }
            if let Some(ip) = &d.ip {
                sep(&mut msg);
                msg.push_str("\"1\": ");
                json::write_str(&mut msg, ip);
            }
            if !d.ip_list.is_empty() {
                sep(&mut msg);
                msg.push_str("\"2\": [");
                for (i, ip) in d.ip_list.iter().enumerate() {
                    if i > 0 {
                        msg.push_str(", ");
                    }
                    json::write_str(&mut msg, ip);
                }
                msg.push(']');
            }
            if !d.fields.is_empty() {
                sep(&mut msg);
                msg.push_str("\"3\": [");
                for (i, f) in d.fields.iter().enumerate() {
                    if i > 0 {
                        msg.push_str(", ");
                    }
                    let _ = write!(msg, "{}", f.number());
                }
                msg.push(']');
            }
            msg.push_str("}, ");
        }
    }
    msg.push_str("\"rsalt\": ");
    json::write_str(&mut msg, &req.rsalt);
    msg.push_str("}\n");
    let salt = now.to_string();
    let mac = key.sign(&salt, &msg);
    let mut s = String::with_capacity(msg.len() + 100);
    s.push_str("{\"msg\": ");
    json::write_str(&mut s, &msg);
    s.push_str(", \"salt\": ");
    json::write_str(&mut s, &salt);
    s.push_str(", \"hmac\": \"");
    s.push_str(std::str::from_utf8(&mac).unwrap_or_default());
    s.push_str("\"}\n");
    let mut out = Vec::with_capacity(s.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(s.as_bytes());
    out
}

/// Why a reply datagram is dropped by the client. Each variant is one drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// Does not start with `plj0`.
    BadMagic,
    /// The outer document is not JSON.
    NotJson,
    /// The outer JSON (the signed message) is not an object with string members `msg`, `salt`,
    /// `hmac` (others are ignored, as by the Python client).
    BadEnvelope,
    /// The MAC does not verify with the key: another cluster's key, or forged or corrupted.
    BadHmac,
    /// `msg` verified but is not JSON.
    MsgNotJson,
    /// `msg` is not exactly `{protocol, status, answer, serial}` with integer protocol, status
    /// and serial (the Python client crashes on such replies; heartsink drops them).
    BadReply,
    /// The salt matches no outstanding request: late (expired), duplicated, or not ours.
    UnknownSalt,
}

impl ReplyError {
    /// The drop-reason label.
    pub fn label(&self) -> &'static str {
        match self {
            ReplyError::BadMagic => "bad_magic",
            ReplyError::NotJson => "not_json",
            ReplyError::BadEnvelope => "bad_envelope",
            ReplyError::BadHmac => "bad_hmac",
            ReplyError::MsgNotJson => "msg_not_json",
            ReplyError::BadReply => "bad_reply",
            ReplyError::UnknownSalt => "unknown_salt",
        }
    }
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for ReplyError {}

/// Converts a parsed value to `serde_json` (numbers through serde_json's own reader).
pub(crate) fn to_serde(v: &JValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        JValue::Null => Value::Null,
        JValue::Bool(b) => Value::Bool(*b),
        JValue::Num(t) => {
            let t = t.strip_suffix('.').unwrap_or(t);
            serde_json::from_str::<serde_json::Number>(t)
                .map(Value::Number)
                .or_else(|_| {
                    t.parse::<f64>().map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
                })
                .unwrap_or(Value::Null)
        }
        JValue::Str(s) => Value::String(s.clone()),
        JValue::Arr(a) => Value::Array(a.iter().map(to_serde).collect()),
        JValue::Obj(m) => {
            let mut map = serde_json::Map::new();
            for (k, v) in m {
                // First occurrence wins, as everywhere in this dialect.
                map.entry(k.clone()).or_insert_with(|| to_serde(v));
            }
            Value::Object(map)
        }
    }
}

/// Parses and verifies a reply datagram: returns its salt (the request's rsalt) and the reply.
/// Accepts the daemon's compact formatting and the Python serializer's (spaces, LFs).
pub fn parse_reply(datagram: &[u8], key: &HmacKey) -> Result<(String, Reply), ReplyError> {
    let body = datagram.strip_prefix(MAGIC).ok_or(ReplyError::BadMagic)?;
    let signed = signed_message(body, true).map_err(|e| match e {
        (_, false) => ReplyError::NotJson,
        (_, true) => ReplyError::BadEnvelope,
    })?;
    if !key.verify(&signed.salt, &signed.msg, &signed.hmac) {
        return Err(ReplyError::BadHmac);
    }
    // Leading whitespace is fine for the Python client (json.loads), not for Text.JSON.
    let trimmed = signed.msg.trim_start_matches(hs_is_space);
    let inner = json::parse(trimmed).map_err(|_| ReplyError::MsgNotJson)?;
    let JValue::Obj(m) = &inner else { return Err(ReplyError::BadReply) };
    if m.iter().any(|(k, _)| !matches!(k.as_str(), "protocol" | "status" | "answer" | "serial")) {
        return Err(ReplyError::BadReply);
    }
    let int = |k: &str| match JValue::first(m, k) {
        Some(JValue::Num(t)) => t.parse::<i64>().ok(),
        _ => None,
    };
    let reply = Reply {
        protocol: int("protocol").ok_or(ReplyError::BadReply)?,
        status: int("status").ok_or(ReplyError::BadReply)?,
        answer: JValue::first(m, "answer").map(to_serde).ok_or(ReplyError::BadReply)?,
        serial: int("serial").ok_or(ReplyError::BadReply)?,
    };
    Ok((signed.salt, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef01234567\n";
    const NOW: i64 = 1_700_000_000;

    fn key() -> HmacKey {
        HmacKey::new(KEY)
    }

    fn signed(msg: &str, salt: &str) -> Vec<u8> {
        let mac = key().sign(salt, msg);
        let mut s = String::from("{\"msg\":");
        json::write_str(&mut s, msg);
        s.push_str(",\"salt\":");
        json::write_str(&mut s, salt);
        s.push_str(&format!(",\"hmac\":\"{}\"}}", std::str::from_utf8(&mac).unwrap()));
        [MAGIC.as_slice(), s.as_bytes()].concat()
    }

    fn parse(msg: &str, salt: &str) -> Result<Request, RequestError> {
        parse_request(&signed(msg, salt), &[key()], NOW).map(|v| v.request)
    }

    #[test]
    fn reference_mac_example() {
        let msg = "{\"protocol\": 1, \"type\": 0, \"rsalt\": \"00000000-0000-4000-8000-000000000001\"}\n";
        assert_eq!(&key().sign("1700000000", msg), b"30db38a9d95ac82c7c12333c70c79d3474b1a0a4");
        assert!(key().verify("1700000000", msg, "30DB38A9D95AC82C7C12333C70C79D3474B1A0A4"));
        assert!(!HmacKey::new(&KEY[..40]).verify("1700000000", msg, "30db38a9d95ac82c7c12333c70c79d3474b1a0a4"));
    }

    #[test]
    fn request_round_trip_and_python_bytes() {
        let req = Request::new(
            RequestType::ClusterMaster,
            Query::Dict(DictQuery {
                fields: vec![ReqField::Name, ReqField::Ip, ReqField::MNodePip],
                ..Default::default()
            }),
            "00000000-0000-4000-8000-000000000003",
        );
        let pkt = encode_request(&req, NOW, &key());
        assert!(pkt.ends_with(b"\"}\n"));
        assert_eq!(parse_request(&pkt, &[key()], NOW).unwrap().request, req);
    }

    #[test]
    fn lax_numbers_and_first_duplicate_win() {
        let r = parse("{\"protocol\":1,\"type\":3,\"rsalt\":\"a\",\"type\":0}", "1700000000").unwrap();
        assert_eq!(r.kind, RequestType::ClusterMaster);
        let r = parse("{\"protocol\":99,\"type\":1e1,\"rsalt\":\"a\"}", "1700000000").unwrap();
        assert_eq!((r.protocol, r.kind), (99, RequestType::ConfigQuery));
        let r = parse("{\"protocol\":1,\"type\":2.5,\"rsalt\":\"\"}", "1700000000").unwrap();
        assert_eq!(r.kind, RequestType::NodePipByInstanceIp);
        for bad in [
            "{\"protocol\":1,\"type\":12,\"rsalt\":\"a\"}",
            "{\"protocol\":1,\"type\":-0.6,\"rsalt\":\"a\"}",
            "{\"protocol\":1,\"type\":\"0\",\"rsalt\":\"a\"}",
            "{\"protocol\":null,\"type\":0,\"rsalt\":\"a\"}",
            "{\"protocol\":1,\"type\":0}",
            "{\"protocol\":1,\"type\":0,\"rsalt\":\"a\",\"x\":1}",
            "{\"protocol\":1,\"type\":0,\"rsalt\":\"a\",\"query\":5}",
            "{\"protocol\":1,\"type\":0,\"rsalt\":\"a\",\"query\":{\"4\":1}}",
            "{\"protocol\":1,\"type\":3,\"rsalt\":\"a\",\"query\":{\"3\":[3]}}",
            "{\"protocol\":1,\"type\":3,\"rsalt\":\"a\",\"query\":{\"3\":[\"0\"]}}",
            "{\"protocol\":1,\"type\":0,\"rsalt\":\"a\",\"query\":{\"2\":[null]}}",
        ] {
            assert_eq!(parse(bad, "1700000000"), Err(RequestError::BadRequest), "{bad}");
        }
        let lenient = ParseOptions { string_field_ids: true };
        let pkt = signed("{\"protocol\":1,\"type\":3,\"rsalt\":\"a\",\"query\":{\"3\":[\"0\",\"2\"]}}", "1700000000");
        let r = parse_request_with(&pkt, &[key()], NOW, lenient).unwrap().request;
        assert_eq!(
            r.query,
            Query::Dict(DictQuery { fields: vec![ReqField::Name, ReqField::MNodePip], ..Default::default() })
        );
    }

    #[test]
    fn timestamps_like_haskell_reads() {
        for ok in [
            "1700000000",
            " 1700000000",
            "\u{a0}\t1700000000",
            "(1700000000)",
            "( (1700000000) )",
            "0x6553F100",
            "0o14524770400",
            "001700000000",
            "(- 5)",
        ] {
            assert!(parse_timestamp(ok).is_some(), "{ok:?}");
        }
        assert_eq!(parse_timestamp("(- 5)"), Some(-5));
        for bad in [
            "",
            " ",
            "1700000000 ",
            "+1700000000",
            "1700000000.0",
            "17e8",
            "0b1",
            "(1700000000",
            "1_7",
            "-(5)",
            "--5",
            "0x",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
        assert!(parse_timestamp(&"9".repeat(100)).is_some());
    }

    #[test]
    fn window_edges() {
        let m = "{\"protocol\":1,\"type\":0,\"rsalt\":\"a\"}";
        assert!(parse(m, "1699999700").is_ok());
        assert!(parse(m, "1700000300").is_ok());
        assert_eq!(parse(m, "1699999699"), Err(RequestError::StaleTimestamp));
        assert_eq!(parse(m, "1700000301"), Err(RequestError::FutureTimestamp));
        assert_eq!(parse(m, "soon"), Err(RequestError::BadTimestamp));
    }

    #[test]
    fn reply_bytes_match_the_daemon() {
        let r = Reply::ok(3_000_000, 0);
        let pkt = encode_reply(&r, "00000000-0000-4000-8000-000000000001", &key());
        assert_eq!(
            std::str::from_utf8(&pkt).unwrap(),
            "plj0{\"hmac\":\"556b3fe5d48522ba50f2c2e9c7484aa96335818f\",\"msg\":\"{\\\"protocol\\\":1,\\\"status\\\":0,\\\"answer\\\":3000000,\\\"serial\\\":0}\",\"salt\":\"00000000-0000-4000-8000-000000000001\"}"
        );
        let (salt, back) = parse_reply(&pkt, &key()).unwrap();
        assert_eq!((salt.as_str(), back), ("00000000-0000-4000-8000-000000000001", r));
        assert_eq!(parse_reply(&pkt, &HmacKey::new(b"other")), Err(ReplyError::BadHmac));
    }

    #[test]
    fn garbage_never_panics() {
        let k = [key()];
        for n in 0..600usize {
            let pkt: Vec<u8> = (0..n).map(|i| (i * 7919 % 251) as u8).collect();
            let _ = parse_request(&pkt, &k, NOW);
            let _ = parse_reply(&pkt, &key());
            let mut p = MAGIC.to_vec();
            p.extend_from_slice(&pkt);
            let _ = parse_request(&p, &k, NOW);
            let _ = parse_reply(&p, &key());
        }
    }

    /// The variant after `e` in declaration order: an exhaustive match, so a new variant does
    /// not compile until it is placed here (and then the test below wants it in `ALL`).
    fn next_request_error(e: RequestError) -> Option<RequestError> {
        use RequestError as E;
        match e {
            E::Oversize => Some(E::BadMagic),
            E::BadMagic => Some(E::NotJson),
            E::NotJson => Some(E::BadEnvelope),
            E::BadEnvelope => Some(E::BadHmac),
            E::BadHmac => Some(E::MsgNotJson),
            E::MsgNotJson => Some(E::BadRequest),
            E::BadRequest => Some(E::SurrogateEscape),
            E::SurrogateEscape => Some(E::BadTimestamp),
            E::BadTimestamp => Some(E::StaleTimestamp),
            E::StaleTimestamp => Some(E::FutureTimestamp),
            E::FutureTimestamp => Some(E::Replay),
            E::Replay => Some(E::ReplyBudget),
            E::ReplyBudget => None,
        }
    }

    /// As [`next_request_error`], for [`ReplyError`].
    fn next_reply_error(e: ReplyError) -> Option<ReplyError> {
        use ReplyError as E;
        match e {
            E::BadMagic => Some(E::NotJson),
            E::NotJson => Some(E::BadEnvelope),
            E::BadEnvelope => Some(E::BadHmac),
            E::BadHmac => Some(E::MsgNotJson),
            E::MsgNotJson => Some(E::BadReply),
            E::BadReply => Some(E::UnknownSalt),
            E::UnknownSalt => None,
        }
    }

    fn assert_unique<'a>(labels: impl IntoIterator<Item = &'a str>) {
        let mut seen = std::collections::BTreeSet::new();
        for l in labels {
            assert!(seen.insert(l), "label {l:?} used twice");
        }
    }

    #[test]
    fn request_errors_all_listed_with_unique_labels() {
        let every: Vec<RequestError> =
            std::iter::successors(Some(RequestError::Oversize), |&e| next_request_error(e)).collect();
        assert_eq!(every, RequestError::ALL, "RequestError::ALL lists every variant, in declaration order");
        assert_unique(RequestError::ALL.iter().map(RequestError::label));
        for e in RequestError::ALL {
            assert_eq!(e.to_string(), e.label());
        }
    }

    #[test]
    fn reply_errors_have_unique_labels() {
        let every: Vec<ReplyError> =
            std::iter::successors(Some(ReplyError::BadMagic), |&e| next_reply_error(e)).collect();
        assert_eq!(every.len(), 7);
        assert_unique(every.iter().map(ReplyError::label));
    }
}
