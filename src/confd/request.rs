//! Reading request datagrams (reference §2): [`RequestScratch::parse`] verifies a datagram with
//! the daemon's rules into buffers kept from one request to the next, so a server allocates
//! nothing per request once they have grown; [`parse_request`] is the same with fresh buffers
//! and an owned result. The signed envelope is read by the same code on the client side
//! (`Envelope`, used by [`super::proto::parse_reply`]).
//!
//! Checks run in the daemon's order, so a packet gets the reason the daemon would log: size,
//! magic, outer JSON, MAC, inner JSON and schema, timestamp.

use super::json::{hs_int, hs_is_space, JsonError, Kind, Tape};
use super::proto::{
    DictQuery, HmacKey, Query, ReqField, Request, RequestType, HMAC_LEN, MAGIC, MAX_CLOCK_SKEW, MAX_REQUEST_LEN,
};

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

/// A signed message (`{"msg", "salt", "hmac"}`) read from a datagram (after the magic) into
/// kept buffers: the first occurrence of each member, unescaped.
#[derive(Clone, Debug, Default)]
pub(crate) struct Envelope {
    /// The datagram as Latin-1 text, when it is not ASCII.
    latin1: String,
    /// The outer document, then the inner one ([`Envelope::parse_msg`]).
    pub(crate) tape: Tape,
    /// `msg`: the inner JSON document, as signed.
    pub(crate) msg: String,
    /// `salt`.
    pub(crate) salt: String,
    /// `hmac`: the hex MAC.
    pub(crate) hmac: String,
}

/// Why an envelope is not read: the JSON error, and whether the document was JSON but not a
/// signed message (`BadEnvelope` rather than `NotJson`).
pub(crate) type EnvelopeError = (JsonError, bool);

impl Envelope {
    /// Reads `body`; with `allow_extra` false (the daemon's rule for requests), a member other
    /// than `msg`, `salt` and `hmac` refuses it.
    pub(crate) fn read(&mut self, body: &[u8], allow_extra: bool) -> Result<(), EnvelopeError> {
        let Envelope { latin1, tape, msg, salt, hmac } = self;
        let text = super::json::latin1(body, latin1);
        tape.parse(text).map_err(|e| (e, false))?;
        let not_signed = (JsonError::Syntax, true);
        if tape.kind(0) != Some(Kind::Obj) {
            return Err(not_signed);
        }
        const MEMBERS: [&str; 3] = ["msg", "salt", "hmac"];
        if !allow_extra && tape.members(0).any(|(k, _)| !MEMBERS.iter().any(|m| tape.str_is(text, k, m))) {
            return Err(not_signed);
        }
        for (name, out) in MEMBERS.into_iter().zip([msg, salt, hmac]) {
            match tape.first(text, 0, name) {
                Some(v) if tape.read_str(text, v, out) => {}
                _ => return Err(not_signed),
            }
        }
        Ok(())
    }

    /// Parses `msg` (from its first character on: the daemon allows no leading whitespace;
    /// `skip_space` skips it, as the Python client does) into the tape, in place of the outer
    /// document. Returns where the parsed text starts in `msg` (the tape's spans count from
    /// there).
    pub(crate) fn parse_msg(&mut self, skip_space: bool) -> Result<usize, JsonError> {
        let msg = if skip_space { self.msg.trim_start_matches(hs_is_space) } else { self.msg.as_str() };
        self.tape.parse(msg)?;
        Ok(self.msg.len() - msg.len())
    }

    /// The text [`Envelope::parse_msg`] parsed.
    pub(crate) fn parsed_msg(&self, from: usize) -> &str {
        self.msg.get(from..).unwrap_or("")
    }
}

/// A list of strings of a request: in a [`RequestScratch`], or in an owned [`DictQuery`].
#[derive(Clone, Copy, Debug)]
pub struct StrList<'a>(Strs<'a>);

#[derive(Clone, Copy, Debug)]
enum Strs<'a> {
    Spans { text: &'a str, spans: &'a [(usize, usize)] },
    Owned(&'a [String]),
}

impl<'a> StrList<'a> {
    /// The strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + Clone + 'a {
        let (spans, owned) = match self.0 {
            Strs::Spans { text, spans } => (Some((text, spans)), None),
            Strs::Owned(o) => (None, Some(o)),
        };
        let spans =
            spans.into_iter().flat_map(|(text, spans)| spans.iter().map(move |&(a, b)| text.get(a..b).unwrap_or("")));
        spans.chain(owned.into_iter().flatten().map(String::as_str))
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self.0 {
            Strs::Spans { spans, .. } => spans.len(),
            Strs::Owned(o) => o.len(),
        }
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for StrList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for StrList<'_> {}

/// A dict query ([`DictQuery`]), borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictView<'a> {
    /// `"0"`: the NIC link (absent: the cluster default).
    pub link: Option<&'a str>,
    /// `"1"`: one instance IP.
    pub ip: Option<&'a str>,
    /// `"2"`: several instance IPs.
    pub ip_list: StrList<'a>,
    /// `"3"`: `CLUSTER_MASTER` fields.
    pub fields: &'a [ReqField],
}

/// The `query` of a request ([`Query`]), borrowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryView<'a> {
    /// Absent or `null`.
    #[default]
    Empty,
    /// A string.
    Plain(&'a str),
    /// An object.
    Dict(DictView<'a>),
}

/// A confd request ([`Request`]), borrowed: from a [`RequestScratch`] or from a [`Request`]
/// ([`Request::view`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    /// `protocol`: carried, not checked (the daemon answers 99 too).
    pub protocol: i64,
    /// `type`.
    pub kind: RequestType,
    /// `query`.
    pub query: QueryView<'a>,
    /// `rsalt`: the reply is signed with it as its salt.
    pub rsalt: &'a str,
}

impl Request {
    /// The request, borrowed.
    pub fn view(&self) -> RequestView<'_> {
        let query = match &self.query {
            Query::Empty => QueryView::Empty,
            Query::Plain(s) => QueryView::Plain(s),
            Query::Dict(d) => QueryView::Dict(DictView {
                link: d.link.as_deref(),
                ip: d.ip.as_deref(),
                ip_list: StrList(Strs::Owned(&d.ip_list)),
                fields: &d.fields,
            }),
        };
        RequestView { protocol: self.protocol, kind: self.kind, query, rsalt: &self.rsalt }
    }
}

impl RequestView<'_> {
    /// An owned copy.
    pub fn to_request(&self) -> Request {
        let query = match self.query {
            QueryView::Empty => Query::Empty,
            QueryView::Plain(s) => Query::Plain(s.to_owned()),
            QueryView::Dict(d) => Query::Dict(DictQuery {
                link: d.link.map(str::to_owned),
                ip: d.ip.map(str::to_owned),
                ip_list: d.ip_list.iter().map(str::to_owned).collect(),
                fields: d.fields.to_vec(),
            }),
        };
        Request { protocol: self.protocol, kind: self.kind, query, rsalt: self.rsalt.to_owned() }
    }
}

/// A verified request ([`VerifiedRequest`]) borrowed from a [`RequestScratch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified<'a> {
    /// The request.
    pub request: RequestView<'a>,
    /// Its timestamp (the outer salt, as an integer).
    pub timestamp: i64,
    /// Which of the keys verified it.
    pub key_index: usize,
    /// Its signature: the raw MAC of its salt and `msg` (the replay cache's key).
    pub mac: [u8; HMAC_LEN],
}

impl Verified<'_> {
    /// An owned copy.
    pub fn to_verified_request(&self) -> VerifiedRequest {
        VerifiedRequest {
            request: self.request.to_request(),
            timestamp: self.timestamp,
            key_index: self.key_index,
            mac: self.mac,
        }
    }
}

/// A span of [`RequestScratch`]'s strings.
type Span = (usize, usize);

/// A request's query as read, its strings as spans.
enum QuerySpans {
    Empty,
    Plain(Span),
    Dict { link: Option<Span>, ip: Option<Span> },
}

/// The buffers a server reads requests with, kept from one datagram to the next: once they
/// have grown to the largest request seen, [`RequestScratch::parse`] allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct RequestScratch {
    envelope: Envelope,
    /// The request's strings (rsalt, query strings), unescaped, end to end.
    strs: String,
    /// The spans of a dict query's IP list in `strs`.
    ip_list: Vec<Span>,
    /// A dict query's fields.
    fields: Vec<ReqField>,
}

impl RequestScratch {
    /// Parses and verifies a request datagram (see [`parse_request_with`]); the request
    /// borrows this scratch until the next call.
    pub fn parse(
        &mut self,
        datagram: &[u8],
        keys: &[HmacKey],
        now: i64,
        opts: ParseOptions,
    ) -> Result<Verified<'_>, RequestError> {
        if datagram.len() > MAX_REQUEST_LEN {
            return Err(RequestError::Oversize);
        }
        let body = datagram.strip_prefix(MAGIC).ok_or(RequestError::BadMagic)?;
        let env = &mut self.envelope;
        env.read(body, false).map_err(|e| match e {
            (JsonError::Surrogate, _) => RequestError::SurrogateEscape,
            (_, false) => RequestError::NotJson,
            (_, true) => RequestError::BadEnvelope,
        })?;
        let (key_index, mac) = keys
            .iter()
            .enumerate()
            .find_map(|(i, k)| k.verified(&env.salt, &env.msg, &env.hmac).map(|m| (i, m)))
            .ok_or(RequestError::BadHmac)?;
        let from = env.parse_msg(false).map_err(|e| match e {
            JsonError::Surrogate => RequestError::SurrogateEscape,
            JsonError::Syntax => RequestError::MsgNotJson,
        })?;
        let msg = env.parsed_msg(from);
        self.strs.clear();
        self.ip_list.clear();
        self.fields.clear();
        let mut into = Strings { strs: &mut self.strs, ip_list: &mut self.ip_list, fields: &mut self.fields };
        let (protocol, kind, rsalt, query) =
            request_from_tape(&env.tape, msg, opts, &mut into).ok_or(RequestError::BadRequest)?;
        let ts = parse_timestamp(&env.salt).ok_or(RequestError::BadTimestamp)?;
        let now = i128::from(now);
        if ts < now - i128::from(MAX_CLOCK_SKEW) {
            return Err(RequestError::StaleTimestamp);
        }
        if ts > now + i128::from(MAX_CLOCK_SKEW) {
            return Err(RequestError::FutureTimestamp);
        }
        // In the window, so it fits.
        let timestamp = i64::try_from(ts).map_err(|_| RequestError::FutureTimestamp)?;
        let text = self.strs.as_str();
        let s = |(a, b): Span| text.get(a..b).unwrap_or("");
        let query = match query {
            QuerySpans::Empty => QueryView::Empty,
            QuerySpans::Plain(p) => QueryView::Plain(s(p)),
            QuerySpans::Dict { link, ip } => QueryView::Dict(DictView {
                link: link.map(s),
                ip: ip.map(s),
                ip_list: StrList(Strs::Spans { text, spans: &self.ip_list }),
                fields: &self.fields,
            }),
        };
        let request = RequestView { protocol, kind, query, rsalt: s(rsalt) };
        Ok(Verified { request, timestamp, key_index, mac })
    }
}

/// Parses and verifies a request datagram with the daemon's rules; see [`parse_request_with`].
pub fn parse_request(datagram: &[u8], keys: &[HmacKey], now: i64) -> Result<VerifiedRequest, RequestError> {
    parse_request_with(datagram, keys, now, ParseOptions::default())
}

/// Parses and verifies a request datagram. `now` is the server clock in unix seconds; `keys`
/// are tried in order. Checks run in the daemon's order (so a packet gets the reason the daemon
/// would log): size, magic, outer JSON, MAC, inner JSON and schema, timestamp. A server keeps a
/// [`RequestScratch`] instead, and allocates nothing.
pub fn parse_request_with(
    datagram: &[u8],
    keys: &[HmacKey],
    now: i64,
    opts: ParseOptions,
) -> Result<VerifiedRequest, RequestError> {
    RequestScratch::default().parse(datagram, keys, now, opts).map(|v| v.to_verified_request())
}

/// Where a request's strings go while it is read.
struct Strings<'a> {
    strs: &'a mut String,
    ip_list: &'a mut Vec<Span>,
    fields: &'a mut Vec<ReqField>,
}

impl Strings<'_> {
    /// The string at `i` appended, unescaped; `None` if it is not a string.
    fn push(&mut self, tape: &Tape, text: &str, i: usize) -> Option<Span> {
        if tape.kind(i) != Some(Kind::Str) {
            return None;
        }
        let start = self.strs.len();
        tape.push_str(text, i, self.strs);
        Some((start, self.strs.len()))
    }
}

fn int_at(tape: &Tape, text: &str, i: usize) -> Option<i64> {
    (tape.kind(i)? == Kind::Num).then(|| hs_int(tape.raw(text, i)))?
}

/// Whether every key of the object at `i` is one of `allowed`.
fn keys_within(tape: &Tape, text: &str, i: usize, allowed: &[&str]) -> bool {
    tape.members(i).all(|(k, _)| allowed.iter().any(|a| tape.str_is(text, k, a)))
}

fn request_from_tape(
    tape: &Tape,
    text: &str,
    opts: ParseOptions,
    into: &mut Strings<'_>,
) -> Option<(i64, RequestType, Span, QuerySpans)> {
    if tape.kind(0)? != Kind::Obj || !keys_within(tape, text, 0, &["protocol", "type", "query", "rsalt"]) {
        return None;
    }
    let protocol = int_at(tape, text, tape.first(text, 0, "protocol")?)?;
    let kind = RequestType::from_number(int_at(tape, text, tape.first(text, 0, "type")?)?)?;
    let rsalt = into.push(tape, text, tape.first(text, 0, "rsalt")?)?;
    let query = match tape.first(text, 0, "query") {
        None => QuerySpans::Empty,
        Some(q) => match tape.kind(q)? {
            Kind::Null => QuerySpans::Empty,
            Kind::Str => QuerySpans::Plain(into.push(tape, text, q)?),
            Kind::Obj => dict_query(tape, text, q, opts, into)?,
            _ => return None,
        },
    };
    Some((protocol, kind, rsalt, query))
}

fn dict_query(tape: &Tape, text: &str, q: usize, opts: ParseOptions, into: &mut Strings<'_>) -> Option<QuerySpans> {
    if !keys_within(tape, text, q, &["0", "1", "2", "3"]) {
        return None;
    }
    // A member: absent or null is `None`.
    let member = |k: &str| tape.first(text, q, k).filter(|&v| tape.kind(v) != Some(Kind::Null));
    let link = match member("0") {
        None => None,
        Some(v) => Some(into.push(tape, text, v)?),
    };
    let ip = match member("1") {
        None => None,
        Some(v) => Some(into.push(tape, text, v)?),
    };
    if let Some(list) = member("2") {
        if tape.kind(list)? != Kind::Arr {
            return None;
        }
        for item in tape.children(list) {
            let span = into.push(tape, text, item)?;
            into.ip_list.push(span);
        }
    }
    if let Some(list) = member("3") {
        if tape.kind(list)? != Kind::Arr {
            return None;
        }
        for item in tape.children(list) {
            let field = match tape.kind(item)? {
                Kind::Num => ReqField::from_number(int_at(tape, text, item)?)?,
                Kind::Str if opts.string_field_ids => {
                    let (a, b) = into.push(tape, text, item)?;
                    let n = into.strs.get(a..b)?.parse().ok();
                    into.strs.truncate(a);
                    ReqField::from_number(n?)?
                }
                _ => return None,
            };
            into.fields.push(field);
        }
    }
    Some(QuerySpans::Dict { link, ip })
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
    let mut c = Cursor { rest: salt };
    let v = ts_expr(&mut c, 0)?;
    c.rest.is_empty().then_some(v)
}

/// The unread part of a salt.
struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    /// The character `n` places ahead (0: the next).
    fn at(&self, n: usize) -> Option<char> {
        self.rest.chars().nth(n)
    }

    fn digit_at(&self, n: usize, radix: u32) -> Option<u32> {
        self.at(n)?.to_digit(radix)
    }

    /// Skips `n` characters.
    fn skip(&mut self, n: usize) {
        let mut chars = self.rest.chars();
        for _ in 0..n {
            chars.next();
        }
        self.rest = chars.as_str();
    }

    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches(hs_is_space);
    }
}

fn ts_expr(c: &mut Cursor<'_>, depth: usize) -> Option<i128> {
    if depth > 64 {
        return None;
    }
    c.skip_ws();
    match c.at(0)? {
        '(' => {
            c.skip(1);
            let v = ts_expr(c, depth + 1)?;
            c.skip_ws();
            (c.at(0) == Some(')')).then(|| c.skip(1))?;
            Some(v)
        }
        '-' => {
            c.skip(1);
            c.skip_ws();
            ts_number(c).map(|v| v.saturating_neg())
        }
        _ => ts_number(c),
    }
}

fn ts_number(c: &mut Cursor<'_>) -> Option<i128> {
    c.digit_at(0, 10)?;
    let mut radix = 10;
    if c.at(0) == Some('0') {
        match c.at(1) {
            Some('x' | 'X') if c.digit_at(2, 16).is_some() => radix = 16,
            Some('o' | 'O') if c.digit_at(2, 8).is_some() => radix = 8,
            _ => {}
        }
        if radix != 10 {
            c.skip(2);
        }
    }
    let mut v: i128 = 0;
    while let Some(d) = c.digit_at(0, radix) {
        v = v.saturating_mul(i128::from(radix)).saturating_add(i128::from(d));
        c.skip(1);
    }
    if radix == 10 {
        // A fraction or an exponent makes a non-integer lexeme: `reads` fails.
        let frac = c.at(0) == Some('.') && c.digit_at(1, 10).is_some();
        let exp = matches!(c.at(0), Some('e' | 'E'))
            && (c.digit_at(1, 10).is_some() || (matches!(c.at(1), Some('+' | '-')) && c.digit_at(2, 10).is_some()));
        if frac || exp {
            return None;
        }
    }
    Some(v)
}
