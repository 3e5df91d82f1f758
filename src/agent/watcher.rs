//! One service's watcher (reference §3.2): a round runs the checks, collects stats while up and
//! produces the next heartbeat; [`Sink`] signs it and sends it to every sink.
//!
//! [`Watcher`] does no I/O of its own beyond what its checks and collectors do, so a test drives
//! it with scripted checks and collectors and reads the beats it produces.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::envelope::{wrap, TagForm};
use crate::proto::keyring::Key;
use crate::proto::service::{ServiceBeat, TagValue};

use super::check::{self, Check, RiseFall};
use super::config::ServiceConfig;
use super::stats::{self, Collector};

/// A check with its rise/fall state.
pub struct Probe {
    check: Box<dyn Check>,
    state: RiseFall,
}

impl Probe {
    /// Pairs a check with a fresh rise/fall state.
    pub fn new(check: Box<dyn Check>, rise: u32, fall: u32) -> Probe {
        Probe { check, state: RiseFall::new(rise, fall) }
    }

    /// Runs the check and returns the smoothed status.
    fn status(&mut self) -> bool {
        self.state.push(self.check.check())
    }
}

/// The watcher of one service.
pub struct Watcher {
    probes: Vec<Probe>,
    collectors: Vec<Box<dyn Collector>>,
    /// The service definition; its tags persist from round to round (stats of the last round
    /// that was up stay while the service is down), as in the original agent.
    beat: ServiceBeat,
    status: Option<bool>,
}

/// The first sequence number of a watcher: the wall clock in microseconds, so that a restarted
/// watcher or agent continues above the numbers it sent before.
pub fn initial_seq() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Watcher {
    /// The watcher a configuration describes.
    pub fn new(cfg: &ServiceConfig, first_seq: u64) -> Watcher {
        let probes = cfg.checks.iter().map(|c| Probe::new(check::build(cfg.addr, c), c.rise, c.fall)).collect();
        let collectors = cfg.stats.iter().map(stats::build).collect();
        Watcher::with_parts(cfg, probes, collectors, first_seq)
    }

    /// A watcher with the given checks and collectors (tests script them).
    pub fn with_parts(
        cfg: &ServiceConfig,
        probes: Vec<Probe>,
        collectors: Vec<Box<dyn Collector>>,
        first_seq: u64,
    ) -> Watcher {
        let mut beat = ServiceBeat::new(&cfg.kind, cfg.addr, first_seq);
        beat.set_id(cfg.service_id.as_deref());
        if let Some(loc) = &cfg.location {
            beat.set_tag("tag.loc", TagValue::Str(loc.clone()));
        }
        if !cfg.slots.is_empty() {
            beat.set_tag("tag.slots", TagValue::Str(cfg.slots.join(",")));
        }
        // Allocated now so that later rounds only overwrite it.
        beat.set_tag("tag.up", TagValue::Bool(false));
        Watcher { probes, collectors, beat, status: None }
    }

    /// One round: every check in order until the first failure, then (while up) every
    /// collector; a collector error reports the service down. Returns the heartbeat to send,
    /// with the next sequence number.
    pub fn round(&mut self) -> &ServiceBeat {
        let mut status = self.probes.iter_mut().all(Probe::status);
        if status {
            for c in &mut self.collectors {
                if let Err(e) = c.collect(&mut self.beat) {
                    tracing::error!(service = %self.beat.addr, r#type = %self.beat.kind, error = %e, "stat collector failed");
                    status = false;
                }
            }
        }
        if self.status != Some(status) {
            tracing::info!(
                service = %self.beat.addr,
                r#type = %self.beat.kind,
                up = status,
                "service {}",
                if status { "up" } else { "down" }
            );
            self.status = Some(status);
        }
        self.next(status)
    }

    /// The final heartbeat of a graceful exit: the service reported down.
    pub fn down_beat(&mut self) -> &ServiceBeat {
        self.next(false)
    }

    fn next(&mut self, up: bool) -> &ServiceBeat {
        self.beat.seq = self.beat.seq.wrapping_add(1);
        self.beat.set_tag("tag.up", TagValue::Bool(up));
        &self.beat
    }

    /// The status after the last round.
    pub fn status(&self) -> Option<bool> {
        self.status
    }
}

/// Signs heartbeats and sends them to every sink over UDP.
pub struct Sink {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    sinks: Vec<SocketAddr>,
    key: Key,
    json: Vec<u8>,
    /// Datagrams sent.
    pub sent: u64,
    /// Sends that failed.
    pub errors: u64,
}

impl Sink {
    /// Opens one socket per address family the sinks use.
    pub fn new(sinks: &[SocketAddr], key: &[u8]) -> std::io::Result<Sink> {
        let v4 = match sinks.iter().any(SocketAddr::is_ipv4) {
            true => Some(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?),
            false => None,
        };
        let v6 = match sinks.iter().any(SocketAddr::is_ipv6) {
            true => Some(UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?),
            false => None,
        };
        Ok(Sink { v4, v6, sinks: sinks.to_vec(), key: Key::new(key), json: Vec::new(), sent: 0, errors: 0 })
    }

    /// Signs `beat` and sends it to every sink; returns the JSON document sent. Failures are
    /// counted and logged, never returned: a lost heartbeat is followed by the next one.
    pub fn send(&mut self, beat: &ServiceBeat) -> &[u8] {
        self.json.clear();
        beat.write_json(&mut self.json);
        let envelope = wrap(&self.json, &self.key, TagForm::Hex);
        for sink in &self.sinks {
            let socket = if sink.is_ipv4() { &self.v4 } else { &self.v6 };
            let r = match socket {
                Some(s) => s.send_to(&envelope, sink).map(drop),
                None => Err(std::io::Error::other("no socket for this address family")),
            };
            match r {
                Ok(()) => self.sent += 1,
                Err(e) => {
                    self.errors += 1;
                    tracing::warn!(sink = %sink, service = %beat.addr, error = %e, errors = self.errors, "heartbeat not sent");
                }
            }
        }
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::agent::stats::StatError;

    /// A check that replays a script, counting its calls.
    struct Scripted(VecDeque<bool>, Arc<Mutex<u32>>);

    impl Check for Scripted {
        fn check(&mut self) -> bool {
            *self.1.lock().unwrap() += 1;
            self.0.pop_front().unwrap_or(false)
        }
        fn name(&self) -> &str {
            "scripted"
        }
    }

    struct Stat(Vec<Result<f64, ()>>);

    impl Collector for Stat {
        fn collect(&mut self, beat: &mut ServiceBeat) -> Result<(), StatError> {
            match self.0.remove(0) {
                Ok(v) => {
                    beat.set_tag("stat.cpu", TagValue::Float(v));
                    Ok(())
                }
                Err(()) => Err(StatError::Format("/proc/stat")),
            }
        }
    }

    fn cfg() -> ServiceConfig {
        ServiceConfig {
            kind: "rawx".into(),
            addr: "127.0.0.1:6000".parse().unwrap(),
            service_id: Some("rawx-1".into()),
            location: Some("dc1.r1".into()),
            slots: vec!["a".into(), "b".into()],
            check_interval: Duration::from_secs(1),
            deregister_on_exit: true,
            checks: Vec::new(),
            stats: Vec::new(),
        }
    }

    fn scripted(s: &str) -> (Box<dyn Check>, Arc<Mutex<u32>>) {
        let calls = Arc::new(Mutex::new(0));
        (Box::new(Scripted(s.chars().map(|c| c == '1').collect(), calls.clone())), calls)
    }

    fn up(b: &ServiceBeat) -> bool {
        b.tag("tag.up").and_then(TagValue::as_bool).unwrap()
    }

    #[test]
    fn definition_tags_and_rising_seq() {
        let mut w = Watcher::with_parts(&cfg(), Vec::new(), Vec::new(), 100);
        let b = w.round();
        assert_eq!((b.seq, up(b), b.id()), (101, true, Some("rawx-1")));
        assert_eq!(b.tag("tag.loc").and_then(TagValue::as_str), Some("dc1.r1"));
        assert_eq!(b.tag("tag.slots").and_then(TagValue::as_str), Some("a,b"));
        assert_eq!(w.round().seq, 102);
        let b = w.down_beat();
        assert_eq!((b.seq, up(b)), (103, false));
    }

    #[test]
    fn checks_short_circuit_and_smooth() {
        let (a, calls_a) = scripted("1111");
        let (b, calls_b) = scripted("1001");
        let probes = vec![Probe::new(a, 1, 1), Probe::new(b, 1, 2)];
        let mut w = Watcher::with_parts(&cfg(), probes, Vec::new(), 0);
        // b: 1 → up; 0 → still up (fall 2); 0 → down; 1 → up (rise 1).
        let got: Vec<bool> = (0..4).map(|_| up(w.round())).collect();
        assert_eq!(got, [true, true, false, true]);
        assert_eq!((*calls_a.lock().unwrap(), *calls_b.lock().unwrap()), (4, 4));
        // a fails: b is not run.
        let (a, calls_a) = scripted("0");
        let (b, calls_b) = scripted("1");
        let mut w = Watcher::with_parts(&cfg(), vec![Probe::new(a, 1, 1), Probe::new(b, 1, 1)], Vec::new(), 0);
        assert!(!up(w.round()));
        assert_eq!((*calls_a.lock().unwrap(), *calls_b.lock().unwrap()), (1, 0));
    }

    #[test]
    fn stats_only_while_up_and_errors_report_down() {
        let (a, _) = scripted("1011");
        let stat = Stat(vec![Ok(50.0), Err(()), Ok(70.0)]);
        let mut w = Watcher::with_parts(&cfg(), vec![Probe::new(a, 1, 1)], vec![Box::new(stat)], 0);
        let b = w.round();
        assert!(up(b));
        assert_eq!(b.tag("stat.cpu"), Some(&TagValue::Float(50.0)));
        // Down: no collection, the last stats stay.
        let b = w.round();
        assert!(!up(b));
        assert_eq!(b.tag("stat.cpu"), Some(&TagValue::Float(50.0)));
        // Up, but the collector fails: reported down.
        assert!(!up(w.round()));
        assert_eq!(w.status(), Some(false));
        let b = w.round();
        assert!(up(b));
        assert_eq!(b.tag("stat.cpu"), Some(&TagValue::Float(70.0)));
    }

    #[test]
    fn sink_signs_and_sends_to_every_sink() {
        use crate::proto::envelope::verify;
        use crate::proto::inflate::{Backend, Inflater};
        use crate::proto::keyring::Keyring;
        let rx1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        for rx in [&rx1, &rx2] {
            rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let sinks = [rx1.local_addr().unwrap(), rx2.local_addr().unwrap()];
        let mut sink = Sink::new(&sinks, b"k").unwrap();
        let mut w = Watcher::with_parts(&cfg(), Vec::new(), Vec::new(), 7);
        let sent = sink.send(w.round()).to_vec();
        assert_eq!((sink.sent, sink.errors), (2, 0));
        let mut inflater = Inflater::new(Backend::ZlibRs, 1 << 20);
        for rx in [&rx1, &rx2] {
            let mut buf = [0u8; 65536];
            let n = rx.recv(&mut buf).unwrap();
            let v = verify(&buf[..n], &Keyring::from_strs(&["k"], 0)).expect("verifies");
            let json = inflater.inflate(&v).expect("inflates");
            assert_eq!(json, &sent[..]);
            let mut b = ServiceBeat::default();
            b.parse(json).expect("parses");
            assert_eq!((b.seq, b.kind.as_str()), (8, "rawx"));
        }
    }
}
