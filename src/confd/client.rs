//! A confd client with the semantics of Ganeti 3.0.2's Python `ConfdClient`
//! (`ganeti/confd/client.py`, reference §3), as a sans-IO core plus two socket drivers.
//!
//! * [`ConfdClient`] (sans-IO): feed it requests, datagrams and the time; take datagrams to send
//!   ([`ConfdClient::poll_transmit`]) and results ([`ConfdClient::poll_event`],
//!   [`ConfdClient::progress`], [`ConfdClient::finish`]). Time is unix time as a [`Duration`]
//!   (the Python client uses `time.time()` both for the request salt and for expiry).
//! * [`BlockingClient`]: the same over a std [`UdpSocket`], with Python's `WaitForReply`.
//! * [`MioClient`]: the same over a non-blocking `mio` socket, for an event loop.
//!
//! Semantics kept from the Python client:
//! * peers are IP literals of one family sharing one port; each request goes to a random subset
//!   of them (shuffled per request) as **one** payload (same rsalt and timestamp for all);
//! * coverage 0 ([`Coverage::Default`]) = `min(peers, 6)`, −1 ([`Coverage::All`]) = all;
//!   more than the peers is an error;
//! * requests expire 10 s after sending (extended by a wait); expiry is checked on every send
//!   and after every datagram;
//! * replies are matched only by salt = rsalt; `received` counts distinct **source IPs**
//!   (error replies and replies from untargeted IPs count too);
//! * a wait is answered when `received >= needed_replies(sent)` ([`needed_replies`]);
//! * with the serial filter on (default, `ConfdFilterCallback`), a reply is passed on only when
//!   it is the first for its salt, or has a higher serial **and** a different answer; an equal
//!   serial with a different answer marks the salt inconsistent. "Different" is Python's `!=`
//!   on the decoded answers ([`same_answer`]): `32` and `32.0` are the same answer (the real
//!   daemon writes `32` where `config.data` and heartsink have `32.0`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::proto::{
    encode_request, parse_reply, HmacKey, Query, Reply, ReplyError, Request, RequestType, DEFAULT_PORT,
    MAX_UDP_DATA_SIZE, STATUS_OK,
};

/// `CONFD_CLIENT_EXPIRE_TIMEOUT`: a request's lifetime.
pub const EXPIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// `CONFD_DEFAULT_REQ_COVERAGE`: peers per request by default.
pub const DEFAULT_COVERAGE: usize = 6;

/// How many peers a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Ganeti's 0: `min(peers, 6)`.
    Default,
    /// Ganeti's −1: every peer.
    All,
    /// Exactly this many (at most the number of peers).
    Peers(usize),
}

impl Coverage {
    /// From Ganeti's integer convention (0 default, −1 all, N > 0 exactly N).
    pub fn from_ganeti(n: i64) -> Option<Self> {
        match n {
            0 => Some(Coverage::Default),
            -1 => Some(Coverage::All),
            n if n > 0 => usize::try_from(n).ok().map(Coverage::Peers),
            _ => None,
        }
    }
}

/// How many replies a request sent to `n` peers waits for (`_NeededReplies`): all of them below
/// 3 peers, one miss allowed below 5, half plus one from 5: 1→1, 2→2, 3→2, 4→3, 5→3, 6→4, 7→4.
/// (The upstream docstring says 4→2 and 6→3; this is what its code computes.)
pub fn needed_replies(n: usize) -> usize {
    if n < 3 {
        n
    } else if n < 5 {
        n - 1
    } else {
        n / 2 + 1
    }
}

/// The current unix time.
pub fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Why the client refused to do something.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Peers of both IPv4 and IPv6 (the Python client takes one family).
    MixedFamilies,
    /// The coverage asks for more peers than there are.
    NotEnoughPeers {
        /// Peers wanted.
        coverage: usize,
        /// Peers known.
        peers: usize,
    },
    /// A request with an empty rsalt (replies could not be matched).
    EmptyRsalt,
    /// A request whose rsalt is already outstanding.
    DuplicateRsalt,
    /// The signed request is larger than `MAX_UDP_DATA_SIZE` (61440 bytes).
    RequestTooBig(usize),
    /// A socket error.
    Io(io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::MixedFamilies => f.write_str("confd peers must all be IPv4 or all IPv6"),
            ClientError::NotEnoughPeers { coverage, peers } => {
                write!(f, "coverage {coverage} needs more peers than the {peers} known")
            }
            ClientError::EmptyRsalt => f.write_str("request without rsalt"),
            ClientError::DuplicateRsalt => f.write_str("a request with this rsalt is already outstanding"),
            ClientError::RequestTooBig(n) => write!(f, "request too big ({n} bytes)"),
            ClientError::Io(e) => write!(f, "confd socket: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A datagram to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// Destination peer.
    pub dest: SocketAddr,
    /// The signed request (shared by all targets of one request).
    pub payload: Arc<[u8]>,
}

/// Something for the caller (the Python client's callback upcalls).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A reply (`UPCALL_REPLY`), after the serial filter when it is on.
    Reply {
        /// The request's rsalt.
        salt: String,
        /// The reply.
        reply: Reply,
        /// Where it came from.
        from: SocketAddr,
    },
    /// A request expired (`UPCALL_EXPIRE`); its state is gone.
    Expired {
        /// The request's rsalt.
        salt: String,
        /// The request.
        request: Request,
    },
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Peers it was sent to.
    pub sent: usize,
    /// Distinct source IPs that replied.
    pub received: usize,
    /// Replies needed: [`needed_replies`]`(sent)`.
    pub needed: usize,
}

impl Progress {
    /// Enough replies arrived.
    pub fn answered(&self) -> bool {
        self.received >= self.needed
    }
}

/// The outcome of a wait: `(timed_out, sent, received)` in the Python client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitResult {
    /// The quorum was not reached in time (or the request is unknown or expired).
    pub timed_out: bool,
    /// Peers the request was sent to (0 when unknown).
    pub sent: usize,
    /// Distinct IPs that replied (0 when unknown).
    pub received: usize,
}

/// Everything a request collected, taken with [`ConfdClient::finish`].
#[derive(Clone, Debug, PartialEq)]
pub struct Collected {
    /// The request.
    pub request: Request,
    /// Peers it was sent to.
    pub sent: usize,
    /// Distinct source IPs that replied.
    pub received: usize,
    /// Every verified reply, in arrival order.
    pub replies: Vec<(SocketAddr, Reply)>,
    /// The reply the serial filter holds (the newest serial; the first of equal serials).
    pub current: Option<Reply>,
    /// False when two replies had the same serial and different answers
    /// (`ConfdFilterCallback.consistent`).
    pub consistent: bool,
}

impl Collected {
    /// The status-OK reply with the highest serial, the first of equals (what Ganeti's Haskell
    /// client keeps).
    pub fn best(&self) -> Option<&Reply> {
        let mut best: Option<&Reply> = None;
        for (_, r) in &self.replies {
            if r.status == STATUS_OK && best.is_none_or(|b| r.serial > b.serial) {
                best = Some(r);
            }
        }
        best
    }
}

struct Outstanding {
    request: Request,
    expiry: Duration,
    sent: Vec<SocketAddr>,
    rcvd: BTreeSet<IpAddr>,
    replies: Vec<(SocketAddr, Reply)>,
    current: Option<Reply>,
    consistent: bool,
}

/// The sans-IO confd client (see the module docs).
pub struct ConfdClient {
    key: HmacKey,
    peers: Vec<SocketAddr>,
    port: u16,
    filter: bool,
    rng: StdRng,
    outstanding: HashMap<String, Outstanding>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for ConfdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfdClient")
            .field("peers", &self.peers)
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}

fn peer_addrs(peers: &[IpAddr], port: u16) -> Result<Vec<SocketAddr>, ClientError> {
    if peers.iter().any(IpAddr::is_ipv4) && peers.iter().any(IpAddr::is_ipv6) {
        return Err(ClientError::MixedFamilies);
    }
    Ok(peers.iter().map(|&ip| SocketAddr::new(ip, port)).collect())
}

impl ConfdClient {
    /// A client for `peers` on `port` (`None`: 1814) with `key` (the key file's exact bytes).
    pub fn new(key: HmacKey, peers: &[IpAddr], port: Option<u16>) -> Result<Self, ClientError> {
        let port = port.unwrap_or(DEFAULT_PORT);
        Ok(ConfdClient {
            key,
            peers: peer_addrs(peers, port)?,
            port,
            filter: true,
            rng: StdRng::from_os_rng(),
            outstanding: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// Seeds the peer shuffle and the rsalts (for reproducible tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// Turns the serial filter (`ConfdFilterCallback`) on (default) or off; off, every verified
    /// reply becomes an [`Event::Reply`].
    pub fn with_filter(mut self, on: bool) -> Self {
        self.filter = on;
        self
    }

    /// Replaces the peers (`UpdatePeerList`); outstanding requests are kept.
    pub fn set_peers(&mut self, peers: &[IpAddr]) -> Result<(), ClientError> {
        self.peers = peer_addrs(peers, self.port)?;
        Ok(())
    }

    /// The peers.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// The address family the peers use (IPv4 when there are none).
    pub fn is_ipv6(&self) -> bool {
        self.peers.first().is_some_and(SocketAddr::is_ipv6)
    }

    /// A new request with a random UUID rsalt (`ConfdClientRequest`).
    pub fn new_request(&mut self, kind: RequestType, query: Query) -> Request {
        let bytes: [u8; 16] = self.rng.random();
        let rsalt = uuid::Builder::from_random_bytes(bytes).into_uuid().to_string();
        Request::new(kind, query, rsalt)
    }

    /// Sends `req` to `coverage` random peers (`SendRequest`): queues one payload per target
    /// (take them with [`Self::poll_transmit`]) and returns the rsalt.
    pub fn send_request(&mut self, req: Request, coverage: Coverage, now: Duration) -> Result<String, ClientError> {
        let n = self.peers.len();
        let coverage = match coverage {
            Coverage::Default => n.min(DEFAULT_COVERAGE),
            Coverage::All => n,
            Coverage::Peers(c) => c,
        };
        if coverage > n {
            return Err(ClientError::NotEnoughPeers { coverage, peers: n });
        }
        if req.rsalt.is_empty() {
            return Err(ClientError::EmptyRsalt);
        }
        self.handle_timeout(now);
        if self.outstanding.contains_key(&req.rsalt) {
            return Err(ClientError::DuplicateRsalt);
        }
        let payload = encode_request(&req, now.as_secs() as i64, &self.key);
        if payload.len() > MAX_UDP_DATA_SIZE {
            return Err(ClientError::RequestTooBig(payload.len()));
        }
        let payload: Arc<[u8]> = payload.into();
        self.peers.shuffle(&mut self.rng);
        let targets: Vec<SocketAddr> = self.peers[..coverage].to_vec();
        for &dest in &targets {
            self.transmits.push_back(Transmit { dest, payload: payload.clone() });
        }
        let salt = req.rsalt.clone();
        self.outstanding.insert(
            salt.clone(),
            Outstanding {
                request: req,
                expiry: now + EXPIRE_TIMEOUT,
                sent: targets,
                rcvd: BTreeSet::new(),
                replies: Vec::new(),
                current: None,
                consistent: true,
            },
        );
        Ok(salt)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Puts back a datagram that could not be sent yet (it goes out first next time).
    pub fn requeue(&mut self, t: Transmit) {
        self.transmits.push_front(t);
    }

    /// Handles one received datagram (`HandleResponse`). Errors are drop reasons; the client
    /// state is unchanged by a dropped datagram, apart from expiry, which runs every time.
    pub fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr, now: Duration) -> Result<(), ReplyError> {
        let r = self.accept(datagram, from);
        self.handle_timeout(now);
        r
    }

    fn accept(&mut self, datagram: &[u8], from: SocketAddr) -> Result<(), ReplyError> {
        let (salt, reply) = parse_reply(datagram, &self.key)?;
        let rq = self.outstanding.get_mut(&salt).ok_or(ReplyError::UnknownSalt)?;
        rq.rcvd.insert(from.ip());
        rq.replies.push((from, reply.clone()));
        let pass = match &rq.current {
            None => {
                rq.current = Some(reply.clone());
                true
            }
            Some(cur) if reply.serial > cur.serial => {
                let changed = !same_answer(&reply.answer, &cur.answer);
                rq.current = Some(reply.clone());
                changed
            }
            Some(cur) => {
                if reply.serial == cur.serial && !same_answer(&reply.answer, &cur.answer) {
                    rq.consistent = false;
                }
                false
            }
        };
        if pass || !self.filter {
            self.events.push_back(Event::Reply { salt, reply, from });
        }
        Ok(())
    }

    /// Expires requests whose time has come (`ExpireRequests`), each with an [`Event::Expired`].
    pub fn handle_timeout(&mut self, now: Duration) {
        let mut expired: Vec<String> =
            self.outstanding.iter().filter(|(_, r)| now >= r.expiry).map(|(s, _)| s.clone()).collect();
        expired.sort();
        for salt in expired {
            if let Some(rq) = self.outstanding.remove(&salt) {
                self.events.push_back(Event::Expired { salt, request: rq.request });
            }
        }
    }

    /// The earliest expiry (unix time), if any request is outstanding.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.outstanding.values().map(|r| r.expiry).min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Where the request `salt` stands; `None` if unknown or expired.
    pub fn progress(&self, salt: &str) -> Option<Progress> {
        self.outstanding.get(salt).map(|r| Progress {
            sent: r.sent.len(),
            received: r.rcvd.len(),
            needed: needed_replies(r.sent.len()),
        })
    }

    /// Whether the replies for `salt` so far agree (see [`Collected::consistent`]).
    pub fn consistent(&self, salt: &str) -> Option<bool> {
        self.outstanding.get(salt).map(|r| r.consistent)
    }

    /// Pushes the expiry of `salt` back by `by` (what `WaitForReply` does for its timeout).
    pub fn extend_expiry(&mut self, salt: &str, by: Duration) {
        if let Some(r) = self.outstanding.get_mut(salt) {
            r.expiry += by;
        }
    }

    /// Ends the request `salt` and returns what it collected; later replies to it are dropped
    /// as [`ReplyError::UnknownSalt`].
    pub fn finish(&mut self, salt: &str) -> Option<Collected> {
        self.outstanding.remove(salt).map(|r| Collected {
            sent: r.sent.len(),
            received: r.rcvd.len(),
            request: r.request,
            replies: r.replies,
            current: r.current,
            consistent: r.consistent,
        })
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// Python's `==` on two decoded JSON answers, as `ConfdFilterCallback` compares them: numbers by
/// exact value whatever their form (`32 == 32.0`, `1.36e9 == 1360000000`, but an integer and a
/// float differing in any bit are different), objects regardless of member order.
pub fn same_answer(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_answer(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_answer(v, w)))
        }
        _ => a == b,
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (int(x), int(y)) {
        (Some(i), Some(j)) => i == j,
        (Some(i), None) => y.as_f64().is_some_and(|f| float_is_int(f, i)),
        (None, Some(j)) => x.as_f64().is_some_and(|f| float_is_int(f, j)),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

/// Whether the float `f` is exactly the integer `i` (Python compares them exactly, not by
/// converting the integer to a float).
fn float_is_int(f: f64, i: i128) -> bool {
    // Every i64/u64 is below 2^127 in magnitude, so the cast of an integral `f` in range is exact.
    f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i
}

fn bind_addr(ipv6: bool) -> SocketAddr {
    if ipv6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

/// The client over a blocking std [`UdpSocket`] (one unbound socket for the client's life, as
/// in Python: the OS picks the source port).
#[derive(Debug)]
pub struct BlockingClient {
    core: ConfdClient,
    socket: UdpSocket,
    buf: Vec<u8>,
}

impl BlockingClient {
    /// A client over a fresh socket of the peers' family.
    pub fn new(core: ConfdClient) -> Result<Self, ClientError> {
        let socket = UdpSocket::bind(bind_addr(core.is_ipv6()))?;
        Ok(BlockingClient { core, socket, buf: vec![0; MAX_UDP_DATA_SIZE] })
    }

    /// The sans-IO core (events, progress, peers).
    pub fn core(&mut self) -> &mut ConfdClient {
        &mut self.core
    }

    /// Sends a request now (`SendRequest(…, async_=False)`); returns its rsalt.
    pub fn send_request(&mut self, req: Request, coverage: Coverage) -> Result<String, ClientError> {
        let salt = self.core.send_request(req, coverage, unix_now())?;
        while let Some(t) = self.core.poll_transmit() {
            // UDP: a failed send is a lost datagram, as in the Python client.
            let _ = self.socket.send_to(&t.payload, t.dest);
        }
        Ok(salt)
    }

    /// Waits up to `timeout` for one datagram and handles it (`ReceiveReply`). Returns whether
    /// one arrived (verified or not).
    pub fn receive_reply(&mut self, timeout: Duration) -> io::Result<bool> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.socket.recv_from(&mut self.buf) {
            Ok((n, from)) => {
                let _ = self.core.handle_datagram(&self.buf[..n], from, unix_now());
                Ok(true)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                self.core.handle_timeout(unix_now());
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `WaitForReply`: waits until enough peers replied or `timeout` passed (never longer),
    /// extending the request's expiry by `timeout` first.
    pub fn wait_for_reply(&mut self, salt: &str, timeout: Duration) -> io::Result<WaitResult> {
        if self.core.progress(salt).is_none() {
            return Ok(WaitResult { timed_out: true, sent: 0, received: 0 });
        }
        self.core.extend_expiry(salt, timeout);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let Some(p) = self.core.progress(salt) else {
                return Ok(WaitResult { timed_out: true, sent: 0, received: 0 });
            };
            if p.answered() {
                return Ok(WaitResult { timed_out: false, sent: p.sent, received: p.received });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(WaitResult { timed_out: true, sent: p.sent, received: p.received });
            }
            self.receive_reply(left.min(Duration::from_secs(1)))?;
        }
    }

    /// Sends a request, waits for the quorum, and returns the wait's outcome with everything
    /// collected (the request is finished: later replies are dropped).
    pub fn query(
        &mut self,
        kind: RequestType,
        query: Query,
        coverage: Coverage,
        timeout: Duration,
    ) -> Result<(WaitResult, Collected), ClientError> {
        let req = self.core.new_request(kind, query);
        let salt = self.send_request(req.clone(), coverage)?;
        let w = self.wait_for_reply(&salt, timeout)?;
        let c = self.core.finish(&salt).unwrap_or(Collected {
            request: req,
            sent: w.sent,
            received: w.received,
            replies: Vec::new(),
            current: None,
            consistent: true,
        });
        Ok((w, c))
    }
}

/// The client over a non-blocking `mio` socket. Register [`MioClient::socket`] for readable
/// (and writable, when [`MioClient::flush`] left datagrams queued) events; call
/// [`MioClient::on_readable`] and [`MioClient::on_timeout`]; wait at most
/// [`MioClient::next_timeout`].
#[derive(Debug)]
pub struct MioClient {
    core: ConfdClient,
    socket: mio::net::UdpSocket,
    buf: Vec<u8>,
}

impl MioClient {
    /// A client over a fresh non-blocking socket of the peers' family.
    pub fn new(core: ConfdClient) -> Result<Self, ClientError> {
        let socket = mio::net::UdpSocket::bind(bind_addr(core.is_ipv6()))?;
        Ok(MioClient { core, socket, buf: vec![0; MAX_UDP_DATA_SIZE] })
    }

    /// The socket, to register with a `mio::Poll`.
    pub fn socket(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.socket
    }

    /// The sans-IO core.
    pub fn core(&mut self) -> &mut ConfdClient {
        &mut self.core
    }

    /// Queues a request and sends what the socket takes; returns the rsalt.
    pub fn send_request(&mut self, req: Request, coverage: Coverage, now: Duration) -> Result<String, ClientError> {
        let salt = self.core.send_request(req, coverage, now)?;
        self.flush()?;
        Ok(salt)
    }

    /// Sends queued datagrams until the socket would block. Returns true when all went out
    /// (otherwise wait for writable and call again).
    pub fn flush(&mut self) -> io::Result<bool> {
        while let Some(t) = self.core.poll_transmit() {
            match self.socket.send_to(&t.payload, t.dest) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.requeue(t);
                    return Ok(false);
                }
                // Other send errors lose the datagram (UDP), as in the Python client.
                Err(_) => {}
            }
        }
        Ok(true)
    }

    /// Drains the socket (until it would block); returns the datagrams handled.
    pub fn on_readable(&mut self, now: Duration) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    let _ = self.core.handle_datagram(&self.buf[..len], from, now);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Expires what is due.
    pub fn on_timeout(&mut self, now: Duration) {
        self.core.handle_timeout(now);
    }

    /// How long the loop may sleep before the next expiry.
    pub fn next_timeout(&self, now: Duration) -> Option<Duration> {
        self.core.poll_timeout().map(|t| t.saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confd::proto::{encode_reply, parse_request};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef01234567\n";
    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn peers(n: u8) -> Vec<IpAddr> {
        (1..=n).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect()
    }

    fn client(n: u8) -> ConfdClient {
        ConfdClient::new(HmacKey::new(KEY), &peers(n), Some(1814)).unwrap().with_seed(7)
    }

    fn reply_from(c: &mut ConfdClient, salt: &str, ip: u8, r: &Reply, now: Duration) -> Result<(), ReplyError> {
        let pkt = encode_reply(r, salt, &HmacKey::new(KEY));
        c.handle_datagram(&pkt, SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip)), 1814), now)
    }

    #[test]
    fn needed_replies_table() {
        let got: Vec<usize> = (1..=10).map(needed_replies).collect();
        assert_eq!(got, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    }

    #[test]
    fn coverage_and_one_payload() {
        let mut c = client(8);
        let req = c.new_request(RequestType::Ping, Query::Empty);
        c.send_request(req.clone(), Coverage::Default, T0).unwrap();
        let ts: Vec<Transmit> = std::iter::from_fn(|| c.poll_transmit()).collect();
        assert_eq!(ts.len(), 6);
        let dests: BTreeSet<SocketAddr> = ts.iter().map(|t| t.dest).collect();
        assert_eq!(dests.len(), 6);
        assert!(ts.iter().all(|t| t.payload == ts[0].payload));
        let v = parse_request(&ts[0].payload, &[HmacKey::new(KEY)], 1_700_000_000).unwrap();
        assert_eq!(v.request, req);
        assert_eq!(c.progress(&req.rsalt).unwrap().needed, 4);
        let r2 = c.new_request(RequestType::Ping, Query::Empty);
        c.send_request(r2, Coverage::All, T0).unwrap();
        assert_eq!(std::iter::from_fn(|| c.poll_transmit()).count(), 8);
        let r3 = c.new_request(RequestType::Ping, Query::Empty);
        assert!(matches!(c.send_request(r3, Coverage::Peers(9), T0), Err(ClientError::NotEnoughPeers { .. })));
        assert!(matches!(c.send_request(req, Coverage::Peers(1), T0), Err(ClientError::DuplicateRsalt)));
        assert!(matches!(
            c.send_request(Request::new(RequestType::Ping, Query::Empty, ""), Coverage::Default, T0),
            Err(ClientError::EmptyRsalt)
        ));
        assert_eq!(Coverage::from_ganeti(-1), Some(Coverage::All));
        assert_eq!(Coverage::from_ganeti(-2), None);
        assert!(
            ConfdClient::new(HmacKey::new(KEY), &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()], None).is_err()
        );
    }

    #[test]
    fn answers_compare_as_python_values() {
        use serde_json::json;
        let v = |s: &str| -> serde_json::Value { serde_json::from_str(s).unwrap() };
        assert!(same_answer(&v("32"), &v("32.0")));
        assert!(same_answer(&v("1.36e9"), &v("1360000000")));
        assert!(same_answer(&v(r#"{"a": [1, 2.0], "b": -0.0}"#), &v(r#"{"b": 0, "a": [1.0, 2]}"#)));
        assert!(!same_answer(&v("32"), &v("32.5")));
        assert!(!same_answer(&v("9007199254740993"), &v("9007199254740992.0")), "exact, as Python");
        assert!(!same_answer(&v("1"), &v("true")));
        assert!(!same_answer(&v(r#"{"a": 1}"#), &v(r#"{"a": 1, "b": 2}"#)));
        assert!(!same_answer(&json!("1"), &json!(1)));
        assert!(same_answer(&json!(u64::MAX), &json!(u64::MAX)));
    }

    #[test]
    fn an_integer_and_an_equal_float_are_consistent() {
        let mut c = client(2);
        let req = c.new_request(RequestType::ConfigQuery, Query::Plain("/cluster/ipolicy".into()));
        let salt = c.send_request(req, Coverage::All, T0).unwrap();
        let float: serde_json::Value = serde_json::from_str(r#"{"spindle-ratio": 32.0}"#).unwrap();
        let int: serde_json::Value = serde_json::from_str(r#"{"spindle-ratio": 32}"#).unwrap();
        reply_from(&mut c, &salt, 1, &Reply::ok(float, 5), T0).unwrap();
        reply_from(&mut c, &salt, 2, &Reply::ok(int, 5), T0).unwrap();
        assert_eq!(c.consistent(&salt), Some(true));
    }

    #[test]
    fn serial_filter_and_consistency() {
        let mut c = client(4);
        let req = c.new_request(RequestType::ClusterMaster, Query::Empty);
        let salt = c.send_request(req, Coverage::All, T0).unwrap();
        let a = Reply::ok("node1", 10);
        reply_from(&mut c, &salt, 1, &a, T0).unwrap();
        reply_from(&mut c, &salt, 2, &a, T0).unwrap(); // same: filtered
        reply_from(&mut c, &salt, 2, &Reply::ok("old", 9), T0).unwrap(); // older: filtered; same IP counted once
        assert_eq!(c.progress(&salt).unwrap(), Progress { sent: 4, received: 2, needed: 3 });
        reply_from(&mut c, &salt, 3, &Reply::ok("node1", 11), T0).unwrap(); // newer, same answer: filtered
        reply_from(&mut c, &salt, 4, &Reply::ok("node2", 12), T0).unwrap(); // newer, new answer: passes
        assert_eq!(c.consistent(&salt), Some(true));
        reply_from(&mut c, &salt, 9, &Reply::ok("node3", 12), T0).unwrap(); // same serial, other answer
        assert_eq!(c.consistent(&salt), Some(false));
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        let passed: Vec<&str> = events
            .iter()
            .filter_map(|e| if let Event::Reply { reply, .. } = e { reply.answer.as_str() } else { None })
            .collect();
        assert_eq!(passed, ["node1", "node2"]);
        let got = c.finish(&salt).unwrap();
        assert_eq!((got.sent, got.received, got.replies.len()), (4, 5, 6));
        assert_eq!(got.best().unwrap().answer, "node2");
        assert_eq!(got.current.unwrap().answer, "node2");
        assert_eq!(reply_from(&mut c, &salt, 1, &a, T0), Err(ReplyError::UnknownSalt));
    }

    #[test]
    fn errors_count_and_lose_on_serial() {
        let mut c = client(2);
        let req = c.new_request(RequestType::NodeRoleByName, Query::Plain("x".into()));
        let salt = c.send_request(req, Coverage::Default, T0).unwrap();
        reply_from(&mut c, &salt, 1, &Reply::error("nope"), T0).unwrap();
        reply_from(&mut c, &salt, 2, &Reply::ok(1, 3189), T0).unwrap();
        assert!(c.progress(&salt).unwrap().answered());
        let got = c.finish(&salt).unwrap();
        assert_eq!(got.best().unwrap().serial, 3189);
        assert_eq!(got.current.unwrap().serial, 3189);
    }

    #[test]
    fn expiry_runs_on_send_and_receive() {
        let mut c = client(1);
        let r1 = c.new_request(RequestType::Ping, Query::Empty);
        let s1 = c.send_request(r1, Coverage::Default, T0).unwrap();
        assert_eq!(c.poll_timeout(), Some(T0 + EXPIRE_TIMEOUT));
        c.extend_expiry(&s1, Duration::from_secs(5));
        c.handle_timeout(T0 + Duration::from_secs(14));
        assert!(c.progress(&s1).is_some());
        // A garbage datagram still runs expiry.
        let _ = c.handle_datagram(b"junk", "127.0.0.1:1814".parse().unwrap(), T0 + Duration::from_secs(15));
        assert!(c.progress(&s1).is_none());
        assert!(matches!(c.poll_event(), Some(Event::Expired { salt, .. }) if salt == s1));
        assert_eq!(
            reply_from(&mut c, &s1, 1, &Reply::ok(1, 0), T0 + Duration::from_secs(16)),
            Err(ReplyError::UnknownSalt)
        );
    }
}
