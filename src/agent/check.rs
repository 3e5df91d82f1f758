//! Service checks and their rise/fall smoothing (reference §3.3).
//!
//! A [`Check`] runs one probe and says whether it passed; [`RiseFall`] turns the stream of
//! results into a stable status, as pure code with no clock or socket, so that its sequences
//! are tested exactly. The original agent keeps the history in a ring buffer whose `[-n:]` slice
//! does not wrap once full; heartsink implements the intent, "the last n results", with a 64-bit
//! shift register (so rise and fall are at most [`super::config::MAX_RISE_FALL`]).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::config::{CheckConfig, CheckKind};

/// One probe of a service.
pub trait Check: Send {
    /// Runs the probe once; `true` when the service passed. Must return within the check's own
    /// timeout; a timeout or any error is a failure.
    fn check(&mut self) -> bool;

    /// A short name for logs (`tcp`, `http /status`).
    fn name(&self) -> &str;
}

/// Up/down smoothing of one check's results: down after `fall` failures in a row, up after
/// `rise` successes in a row; the first result ever sets the status directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    /// Results, newest in bit 0 (1 = success).
    history: u64,
    last: Option<bool>,
}

fn mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

impl RiseFall {
    /// A state with no result yet. `rise` and `fall` are clamped to `1..=64`.
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall { rise: rise.clamp(1, 64), fall: fall.clamp(1, 64), history: 0, last: None }
    }

    /// Records one result and returns the status.
    pub fn push(&mut self, result: bool) -> bool {
        let last = match self.last {
            // First check ever: the status is the result, and the history is filled with it.
            None => {
                self.history = if result { u64::MAX } else { 0 };
                result
            }
            Some(last) => {
                self.history = (self.history << 1) | u64::from(result);
                if last && self.history & mask(self.fall) == 0 {
                    false
                } else if !last && self.history & mask(self.rise) == mask(self.rise) {
                    true
                } else {
                    last
                }
            }
        };
        self.last = Some(last);
        last
    }

    /// The status after the last result, `None` before the first.
    pub fn status(&self) -> Option<bool> {
        self.last
    }
}

/// Passes when a TCP connection to the address opens within the timeout.
#[derive(Debug)]
pub struct TcpCheck {
    addr: SocketAddr,
    timeout: Duration,
}

impl TcpCheck {
    /// A check of `addr`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> TcpCheck {
        TcpCheck { addr, timeout }
    }
}

impl Check for TcpCheck {
    fn check(&mut self) -> bool {
        TcpStream::connect_timeout(&self.addr, self.timeout).is_ok()
    }

    fn name(&self) -> &str {
        "tcp"
    }
}

/// Passes when `GET http://addr{uri}` answers 200 within the timeout (redirects are not
/// followed: a 3xx fails).
pub struct HttpCheck {
    agent: ureq::Agent,
    url: String,
    name: String,
}

impl HttpCheck {
    /// A check of `uri` (starting with `/`) on `addr`.
    pub fn new(addr: SocketAddr, uri: &str, timeout: Duration) -> HttpCheck {
        let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(0).build();
        HttpCheck { agent, url: format!("http://{addr}{uri}"), name: format!("http {uri}") }
    }
}

impl std::fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCheck").field("url", &self.url).finish()
    }
}

impl Check for HttpCheck {
    fn check(&mut self) -> bool {
        match self.agent.get(&self.url).call() {
            Ok(resp) => resp.status() == 200,
            Err(_) => false,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Builds the check a configuration describes, for the service at `addr`.
pub fn build(addr: SocketAddr, cfg: &CheckConfig) -> Box<dyn Check> {
    match &cfg.kind {
        CheckKind::Tcp => Box::new(TcpCheck::new(addr, cfg.timeout)),
        CheckKind::Http { uri } => Box::new(HttpCheck::new(addr, uri, cfg.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rise: u32, fall: u32, results: &str) -> String {
        let mut rf = RiseFall::new(rise, fall);
        results.chars().map(|c| if rf.push(c == '1') { '1' } else { '0' }).collect()
    }

    #[test]
    fn rise_1_fall_1_follows_every_result() {
        assert_eq!(run(1, 1, "1010011"), "1010011");
    }

    #[test]
    fn rise_2_fall_3() {
        // Up at once (first result), down after the third failure in a row, up after two
        // successes in a row; isolated results change nothing.
        assert_eq!(run(2, 3, "1001000110"), "1111110011");
        assert_eq!(run(2, 3, "0101100"), "0000111");
        assert_eq!(run(2, 3, "00011"), "00001");
    }

    #[test]
    fn first_result_sets_the_status() {
        assert_eq!(run(3, 3, "0"), "0");
        assert_eq!(run(3, 3, "1"), "1");
        // The history is filled with the first result: rising from a first failure needs
        // `rise` successes in a row.
        assert_eq!(run(3, 3, "0110111"), "0000001");
    }

    #[test]
    fn history_wraps_without_losing_the_last_n() {
        // Long runs past the register size still count exactly the last n results.
        let mut seq = "1".repeat(100);
        seq.push_str(&"0".repeat(63));
        let out = run(64, 64, &seq);
        assert!(out.chars().all(|c| c == '1'), "63 failures < fall 64");
        seq.push('0');
        assert_eq!(run(64, 64, &seq).chars().last(), Some('0'));
        let mut up = "0".repeat(70);
        up.push_str(&"1".repeat(64));
        let out = run(64, 64, &up);
        assert_eq!(&out[out.len() - 2..], "01", "up exactly at the 64th success");
    }

    #[test]
    fn rise_and_fall_are_clamped() {
        let rf = RiseFall::new(0, 1000);
        assert_eq!((rf.rise, rf.fall), (1, 64));
        assert_eq!(rf.status(), None);
    }

    #[test]
    fn tcp_check_against_a_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut c = TcpCheck::new(addr, Duration::from_secs(1));
        assert!(c.check());
        drop(l);
        assert!(!c.check());
    }

    #[test]
    fn http_check_wants_200() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable", "302 Found"] {
                let (mut s, _) = l.accept().expect("accept");
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).expect("read");
                assert!(buf[..n].starts_with(b"GET /status HTTP/1.1"));
                let body =
                    format!("HTTP/1.1 {status}\r\nLocation: /x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                s.write_all(body.as_bytes()).expect("write");
            }
        });
        let mut c = HttpCheck::new(addr, "/status", Duration::from_secs(2));
        assert_eq!(c.name(), "http /status");
        assert!(c.check());
        assert!(!c.check());
        assert!(!c.check());
        server.join().expect("server");
    }
}
