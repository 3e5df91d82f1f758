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

use super::json::{self, Kind, Sink as _};
use super::request::Envelope;
pub use super::request::{
    parse_request, parse_request_with, parse_timestamp, DictView, ParseOptions, QueryView, RequestError,
    RequestScratch, RequestView, StrList, Verified, VerifiedRequest,
};

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
    pub(crate) fn from_number(n: i64) -> Option<Self> {
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
        let mut m = ReplyMsg::default();
        m.write_reply(self);
        m.as_str().to_owned()
    }
}

/// The answer of a reply as a server computes it: a borrowed value, written in place without
/// allocating, or a built one.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer<'a> {
    /// An integer.
    Int(i64),
    /// A string.
    Str(&'a str),
    /// JSON text already in the daemon's formatting (prepared when the configuration loaded).
    Json(&'a str),
    /// A built value (the rarer answers).
    Value(serde_json::Value),
}

impl Answer<'_> {
    /// As a value (allocates).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Answer::Int(i) => (*i).into(),
            Answer::Str(s) => (*s).into(),
            Answer::Json(j) => serde_json::from_str(j).unwrap_or_default(),
            Answer::Value(v) => v.clone(),
        }
    }
}

/// A reply ([`Reply`]) whose answer may be borrowed ([`Answer`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Answered<'a> {
    /// `status`.
    pub status: i64,
    /// `answer`.
    pub answer: Answer<'a>,
    /// `serial`.
    pub serial: i64,
}

impl Answered<'_> {
    /// As an owned reply (allocates).
    pub fn to_reply(&self) -> Reply {
        Reply::new(self.status, self.answer.to_value(), self.serial)
    }
}

impl From<Reply> for Answered<'_> {
    fn from(r: Reply) -> Self {
        Answered { status: r.status, answer: Answer::Value(r.answer), serial: r.serial }
    }
}

/// A reply's inner document (`{"protocol":1,"status":S,"answer":A,"serial":N}`, compact, as
/// the daemon writes it) in a buffer kept from one reply to the next: writing a borrowed
/// answer allocates nothing once it has grown.
#[derive(Clone, Debug, Default)]
pub struct ReplyMsg {
    buf: Vec<u8>,
}

impl ReplyMsg {
    /// Writes a reply whose answer `answer` writes (in the daemon's formatting).
    pub(crate) fn write_with(&mut self, protocol: i64, status: i64, serial: i64, answer: impl FnOnce(&mut Vec<u8>)) {
        self.buf.clear();
        self.buf.put_fmt(format_args!("{{\"protocol\":{protocol},\"status\":{status},\"answer\":"));
        answer(&mut self.buf);
        self.buf.put_fmt(format_args!(",\"serial\":{serial}}}"));
    }

    /// Writes a protocol-1 reply whose answer is `answer` serialized in the daemon's formatting
    /// (a borrowed structure allocates nothing; an object's members come in its order, where a
    /// `serde_json::Value` object's are sorted by key).
    pub fn write_json<T: serde::Serialize + ?Sized>(&mut self, status: i64, answer: &T, serial: i64) {
        self.write_with(PROTOCOL_VERSION, status, serial, |b| json::write_json(b, answer));
    }

    /// Writes a protocol-1 reply.
    pub fn write(&mut self, r: &Answered<'_>) {
        self.write_with(PROTOCOL_VERSION, r.status, r.serial, |b| match &r.answer {
            Answer::Int(i) => b.put_fmt(format_args!("{i}")),
            Answer::Str(s) => json::write_str(b, s),
            Answer::Json(j) => b.put(j),
            Answer::Value(v) => json::write_json(b, v),
        });
    }

    /// Writes a protocol-1 reply whose answer is the string `text` displays, escaped as it is
    /// written (no intermediate `String`).
    pub fn write_text(&mut self, status: i64, text: &dyn std::fmt::Display, serial: i64) {
        self.write_with(PROTOCOL_VERSION, status, serial, |b| {
            b.put("\"");
            let _ = write!(json::JsonStrBody(b), "{text}");
            b.put("\"");
        });
    }

    /// Writes `r`.
    pub fn write_reply(&mut self, r: &Reply) {
        self.write_with(r.protocol, r.status, r.serial, |b| json::write_json(b, &r.answer));
    }

    /// The reply written last, read back (allocates; `None` only for an answer this dialect
    /// does not read back: a character above U+FFFF).
    pub fn to_reply(&self) -> Option<Reply> {
        let mut tape = json::Tape::default();
        tape.parse(self.as_str()).ok()?;
        reply_from_tape(&tape, self.as_str()).ok()
    }

    /// The document written last.
    pub fn as_str(&self) -> &str {
        // Only JSON text is written here, which is UTF-8 (ASCII, in fact).
        std::str::from_utf8(&self.buf).unwrap_or_default()
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
    let mut msg = ReplyMsg::default();
    msg.write_reply(reply);
    encode_signed(out, &msg, rsalt, key);
}

/// Signs `msg` with `salt` (the request's rsalt) into `out` (cleared first), as
/// [`encode_reply`]; allocates nothing once `out` has room.
pub fn encode_signed(out: &mut Vec<u8>, msg: &ReplyMsg, salt: &str, key: &HmacKey) {
    let msg = msg.as_str();
    let mac = key.sign(salt, msg);
    out.clear();
    out.extend_from_slice(MAGIC);
    out.put("{\"hmac\":\"");
    out.extend_from_slice(&mac);
    out.put("\",\"msg\":");
    json::write_str(out, msg);
    out.put(",\"salt\":");
    json::write_str(out, salt);
    out.put("}");
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

/// Parses and verifies a reply datagram: returns its salt (the request's rsalt) and the reply.
/// Accepts the daemon's compact formatting and the Python serializer's (spaces, LFs).
pub fn parse_reply(datagram: &[u8], key: &HmacKey) -> Result<(String, Reply), ReplyError> {
    let body = datagram.strip_prefix(MAGIC).ok_or(ReplyError::BadMagic)?;
    let mut env = Envelope::default();
    env.read(body, true).map_err(|e| match e {
        (_, false) => ReplyError::NotJson,
        (_, true) => ReplyError::BadEnvelope,
    })?;
    if !key.verify(&env.salt, &env.msg, &env.hmac) {
        return Err(ReplyError::BadHmac);
    }
    // Leading whitespace is fine for the Python client (json.loads), not for Text.JSON.
    let from = env.parse_msg(true).map_err(|_| ReplyError::MsgNotJson)?;
    let reply = reply_from_tape(&env.tape, env.parsed_msg(from))?;
    Ok((std::mem::take(&mut env.salt), reply))
}

/// The reply in a parsed inner document: exactly `{protocol, status, answer, serial}`, integers
/// but the answer.
fn reply_from_tape(tape: &json::Tape, text: &str) -> Result<Reply, ReplyError> {
    if tape.kind(0) != Some(Kind::Obj) {
        return Err(ReplyError::BadReply);
    }
    const MEMBERS: [&str; 4] = ["protocol", "status", "answer", "serial"];
    if tape.members(0).any(|(k, _)| !MEMBERS.iter().any(|m| tape.str_is(text, k, m))) {
        return Err(ReplyError::BadReply);
    }
    let int = |k: &str| match tape.first(text, 0, k) {
        Some(v) if tape.kind(v) == Some(Kind::Num) => tape.raw(text, v).parse::<i64>().ok(),
        _ => None,
    };
    Ok(Reply {
        protocol: int("protocol").ok_or(ReplyError::BadReply)?,
        status: int("status").ok_or(ReplyError::BadReply)?,
        answer: tape.first(text, 0, "answer").map(|v| json::to_serde(tape, text, v)).ok_or(ReplyError::BadReply)?,
        serial: int("serial").ok_or(ReplyError::BadReply)?,
    })
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
