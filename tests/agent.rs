//! `heartsink agent` end to end: the real binary watches a local TCP listener and sends signed
//! service heartbeats to a local UDP socket; every heartbeat is verified with the key and parsed
//! with `ServiceBeat`. Every wait is bounded; the child is killed when its handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heartsink::proto::envelope::verify;
use heartsink::proto::inflate::{Backend, Inflater};
use heartsink::proto::keyring::Keyring;
use heartsink::proto::service::{is_service_document, ServiceBeat, TagValue};

const KEY: &str = "agent-test-key";
const FALL: usize = 3;

/// A running `heartsink agent`.
struct Agent {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(config: &std::path::Path, extra: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .arg("agent")
            .arg("--config")
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn heartsink agent");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, stdout) = mpsc::channel();
        let pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent { child, stdout, stderr }
    }

    fn stdout_line(&self) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no stdout line ({e}); stderr: {}", self.stderr_text()))
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill");
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "agent did not exit within {timeout:?}; stderr: {}", self.stderr_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that accepts and drops connections until stopped; stopping closes the port.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start() -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Listener { addr, stop, thread: Some(thread) }
    }

    fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// The sink: receives, verifies, inflates and parses heartbeats.
struct Sink {
    socket: UdpSocket,
    keys: Keyring,
    inflater: Inflater,
}

impl Sink {
    fn bind() -> Sink {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Sink { socket, keys: Keyring::from_strs(&[KEY], 0), inflater: Inflater::new(Backend::ZlibRs, 1 << 20) }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// The next heartbeat and its JSON, or `None` after the read timeout.
    fn recv(&mut self) -> Option<(ServiceBeat, Vec<u8>)> {
        let mut buf = [0u8; 65536];
        let n = self.socket.recv(&mut buf).ok()?;
        let v = verify(&buf[..n], &self.keys).expect("the envelope verifies with the key");
        let json = self.inflater.inflate(&v).expect("inflates").to_vec();
        assert!(is_service_document(&json), "{}", String::from_utf8_lossy(&json));
        let mut beat = ServiceBeat::default();
        beat.parse(&json).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        Some((beat, json))
    }

    /// Receives until `f` returns true for a beat (bounded), returning every beat received.
    fn until(&mut self, what: &str, timeout: Duration, mut f: impl FnMut(&ServiceBeat) -> bool) -> Vec<ServiceBeat> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {got:?}");
            if let Some((b, _)) = self.recv() {
                let done = f(&b);
                got.push(b);
                if done {
                    return got;
                }
            }
        }
    }

    /// Every beat already queued (loopback delivers at send time), without waiting for more:
    /// the agent keeps sending, so reading until a quiet moment might never end.
    fn drain(&mut self) -> Vec<ServiceBeat> {
        self.socket.set_nonblocking(true).unwrap();
        let beats = std::iter::from_fn(|| self.recv().map(|(b, _)| b)).collect();
        self.socket.set_nonblocking(false).unwrap();
        beats
    }
}

fn up(b: &ServiceBeat) -> bool {
    b.tag("tag.up").and_then(TagValue::as_bool).expect("tag.up")
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn up_then_down_after_fall_checks_then_final_down_on_sigterm() {
    let mut listener = Listener::start();
    let mut sink = Sink::bind();
    let watched = listener.addr;
    // rawx: a TCP check on the listener; meta2: no check (always up); a third entry misses its
    // port and fails alone.
    let cfg = write_config(&format!(
        r#"
        sinks = ["{sink}"]
        key = "{KEY}"
        fall = {FALL}
        check_interval = 0.1
        timeout = 1.0
        [[service]]
        type = "rawx"
        host = "127.0.0.1"
        port = {port}
        location = "dc1.rack1.host1.vol1"
        slots = ["rawx-ssd", "rawx-even"]
        service_id = "rawx-1"
        checks = [{{type = "tcp"}}]
        stats = [{{type = "system"}}, {{type = "static", stats = {{"stat.x" = 7}}}}]
        [[service]]
        type = "meta2"
        host = "127.0.0.1"
        port = 1
        [[service]]
        type = "rawx"
        host = "127.0.0.1"
        "#,
        sink = sink.addr(),
        port = watched.port(),
    ));
    let mut agent = Agent::start(cfg.path(), &[]);
    let started: serde_json::Value = serde_json::from_str(&agent.stdout_line()).unwrap();
    assert_eq!(started, serde_json::json!({"agent": "started", "services": 2}));

    // Up while the listener accepts.
    let mut rawx_up = 0;
    let mut meta2 = 0;
    let beats = sink.until("three rawx heartbeats up", Duration::from_secs(10), |b| {
        if b.addr == watched {
            assert!(up(b), "rawx down while its listener is up: {b:?}");
            rawx_up += 1;
        } else {
            meta2 += 1;
        }
        rawx_up >= 3 && meta2 >= 1
    });
    let rawx = beats.iter().rfind(|b| b.addr == watched).unwrap();
    assert_eq!((rawx.kind.as_str(), rawx.id()), ("rawx", Some("rawx-1")));
    assert_eq!(rawx.tag("tag.loc").and_then(TagValue::as_str), Some("dc1.rack1.host1.vol1"));
    assert_eq!(rawx.tag("tag.slots").and_then(TagValue::as_str), Some("rawx-ssd,rawx-even"));
    assert_eq!(rawx.tag("stat.x"), Some(&TagValue::Int(7)));
    let cpu = rawx.tag("stat.cpu").and_then(TagValue::as_f64).expect("stat.cpu");
    assert!((0.0..=100.0).contains(&cpu));
    let meta2_beat = beats.iter().find(|b| b.kind == "meta2").unwrap();
    assert!(up(meta2_beat));
    assert_eq!(meta2_beat.tag("stat.cpu"), None);
    for kind in ["rawx", "meta2"] {
        let seqs: Vec<u64> = beats.iter().filter(|b| b.kind == kind).map(|b| b.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{kind} seq not rising: {seqs:?}");
    }

    // Close the port: down after `fall` failed checks. One heartbeat whose check ran before
    // the close may still be in flight, so fall-1 or fall more "up" heartbeats arrive.
    sink.drain();
    listener.close();
    let mut still_up = 0;
    let after = sink.until("rawx down", Duration::from_secs(10), |b| {
        if b.addr != watched {
            return false;
        }
        if up(b) {
            still_up += 1;
        }
        !up(b)
    });
    assert!((FALL - 1..=FALL).contains(&still_up), "{still_up} rawx heartbeats up after the close; fall = {FALL}");
    assert!(after.iter().filter(|b| b.kind == "meta2").all(up));
    let more = sink.until("two more rawx heartbeats", Duration::from_secs(10), {
        let mut n = 0;
        move |b| {
            if b.addr == watched {
                assert!(!up(b), "rawx up again with its port closed");
                n += 1;
            }
            n >= 2
        }
    });
    let last_meta2_seq = more.iter().chain(&after).filter(|b| b.kind == "meta2").map(|b| b.seq).max().unwrap();

    // SIGTERM: one final DOWN heartbeat per service, then exit 0.
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}; stderr: {}", agent.stderr_text());
    let tail = sink.drain();
    let meta2_tail: Vec<&ServiceBeat> = tail.iter().filter(|b| b.kind == "meta2").collect();
    let last = meta2_tail.last().unwrap_or_else(|| panic!("no meta2 heartbeat after SIGTERM; got {tail:?}"));
    assert!(!up(last), "the final meta2 heartbeat is up: {last:?}");
    assert!(last.seq > last_meta2_seq);
    assert_eq!(meta2_tail.iter().filter(|b| !up(b)).count(), 1, "exactly one DOWN heartbeat: {meta2_tail:?}");
    let rawx_last = tail.iter().rfind(|b| b.addr == watched).expect("a final rawx heartbeat");
    assert!(!up(rawx_last));
    let err = agent.stderr_text();
    assert!(err.contains("missing required key `port`"), "{err}");
    assert!(agent.stdout.try_recv().is_err(), "stdout holds only the started line");
}

#[test]
fn once_prints_the_heartbeats_it_sends() {
    let listener = Listener::start();
    let mut sink = Sink::bind();
    let cfg = write_config(&format!(
        r#"
        sinks = ["{sink}"]
        key = "{KEY}"
        [[service]]
        type = "rawx"
        host = "127.0.0.1"
        port = {port}
        checks = [{{type = "tcp", timeout = 1.0}}]
        [[service]]
        type = "rawx"
        host = "127.0.0.1"
        port = {closed}
        checks = [{{type = "tcp", timeout = 1.0}}]
        "#,
        sink = sink.addr(),
        port = listener.addr.port(),
        // The sink's port number has no TCP listener.
        closed = sink.addr().port(),
    ));
    let mut agent = Agent::start(cfg.path(), &["--once"]);
    let printed: serde_json::Value = serde_json::from_str(&agent.stdout_line()).unwrap();
    assert!(agent.wait_exit(Duration::from_secs(10)).success(), "{}", agent.stderr_text());
    let printed = printed.as_array().expect("a JSON array").clone();
    assert_eq!(printed.len(), 2);
    let mut received = Vec::new();
    while received.len() < 2 {
        let (beat, json) = sink.recv().expect("two heartbeats");
        received.push((beat, serde_json::from_slice::<serde_json::Value>(&json).unwrap()));
    }
    for (beat, doc) in &received {
        assert!(printed.contains(doc), "{doc} not printed");
        assert_eq!(up(beat), beat.addr == listener.addr, "{beat:?}");
    }
}

#[test]
fn bad_configuration_exits_2() {
    let cfg =
        write_config("[[service]]\ntype = \"rawx\"\nhost = \"127.0.0.1\"\nport = 1\nchecks = [{type = \"asn1\"}]\n");
    let mut agent = Agent::start(cfg.path(), &[]);
    let status = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    std::thread::sleep(Duration::from_millis(50));
    assert!(agent.stderr_text().contains("asn1"), "{}", agent.stderr_text());
}
