//! The admin HTTP surface against hostile clients (issue 16, item 2), on the real `heartsink
//! serve` over loopback with raw sockets: huge declared bodies, stalled heads and bodies, a
//! 256 MiB header line, thousands of idle connections, and SIGTERM with all of that open. Every
//! count and wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Daemon;

/// Short timeouts so the test does not wait long: 1 s head, 1 s body, 2 s idle.
const SHORT: &str = "[admin]\nheader_timeout = 1.0\nbody_timeout = 1.0\nidle_timeout = 2.0\n";

fn start(admin_toml: &str) -> (Daemon, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("heartsink.toml");
    std::fs::write(&cfg, admin_toml).unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    (d, tmp)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response head and returns its status code; `None` when the connection closed (or
/// was reset) first. Skips `100 Continue`.
fn status(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => buf.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("no answer in time; got {:?}", String::from_utf8_lossy(&buf))
            }
            Err(_) => return None,
        }
        if buf.ends_with(b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf).into_owned();
            let code: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status line");
            if code == 100 {
                buf.clear();
                continue;
            }
            return Some(code);
        }
        assert!(buf.len() < 64 << 10, "response head too long");
    }
}

/// `GET /healthz` on a new connection: the status and how long it took.
fn healthz(addr: SocketAddr) -> (u16, Duration) {
    let t = Instant::now();
    let mut s = connect(addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let code = status(&mut s).expect("an answer to /healthz");
    (code, t.elapsed())
}

fn assert_healthz_fast(addr: SocketAddr, what: &str) {
    let (code, took) = healthz(addr);
    assert_eq!(code, 200, "{what}");
    assert!(took < Duration::from_secs(1), "{what}: /healthz took {took:?}");
    eprintln!("/healthz {what}: {took:?}");
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let text = d.get_text("/metrics");
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in /metrics"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn huge_content_length_is_refused_and_the_daemon_keeps_answering() {
    let (mut d, _tmp) = start(SHORT);
    for (path, len) in [
        ("/v1/volumes", "10000000000000"),
        ("/v1/volumes", "18446744073709551615"),
        ("/v1/amphorae/00000001-0000-4000-8000-000000000001", "10000000000000"),
        ("/healthz", "18446744073709551614"),
        ("/v1/services", "1048577"),
    ] {
        let mut s = connect(d.admin);
        let method = if path.starts_with("/v1/amphorae/") { "PATCH" } else { "POST" };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{"
        )
        .unwrap();
        let code = status(&mut s);
        // hyper itself refuses a length it cannot represent (≥ 2^64 − 2) with 431 before any
        // route sees it; every other oversized length is the route's 413.
        let ok = match len {
            "18446744073709551615" | "18446744073709551614" => matches!(code, Some(400 | 413 | 431)),
            _ => code == Some(413),
        };
        assert!(ok, "{method} {path} with Content-Length {len}: {code:?}");
        assert!(d.child.try_wait().unwrap().is_none(), "the daemon died on Content-Length {len}");
        assert_healthz_fast(d.admin, &format!("after Content-Length {len}"));
    }
    // Nothing was created.
    assert_eq!(d.get("/v1/volumes").1["volumes"].as_array().map(Vec::len), Some(0));
}

#[test]
fn stalled_clients_do_not_delay_healthz_and_time_out() {
    let (d, _tmp) = start(SHORT);
    let stalls: [(&str, &[u8]); 6] = [
        ("body shorter than Content-Length", b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{\"size\""),
        ("chunked body that stops", b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"siz"),
        ("Expect: 100-continue, then nothing", b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n"),
        (
            "Upgrade with a stalled body",
            b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 10\r\n\r\n",
        ),
        ("headers that stop", b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: "),
        ("Upgrade request", b"GET /v1/stats HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    ];
    let started = Instant::now();
    let mut open: Vec<(&str, TcpStream)> = stalls
        .iter()
        .map(|(what, bytes)| {
            let mut s = connect(d.admin);
            s.write_all(bytes).unwrap();
            (*what, s)
        })
        .collect();
    // While every one of them is open, /healthz is answered at once, again and again.
    while started.elapsed() < Duration::from_millis(800) {
        assert_healthz_fast(d.admin, "with stalled clients open");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (what, s) in &mut open {
        let t = Instant::now();
        let code = status(s);
        match *what {
            // Answered at once (an Upgrade is just a request here); the idle connection is
            // then closed after idle_timeout.
            "Upgrade request" => {
                assert_eq!(code, Some(200), "{what}");
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                assert!(started.elapsed() < Duration::from_secs(5), "{what}: not closed after the idle timeout");
            }
            _ => {
                assert!(matches!(code, Some(408) | None), "{what}: {code:?}");
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
        }
        assert!(t.elapsed() < Duration::from_secs(4), "{what}: took {:?} to end", t.elapsed());
    }
    assert!(metric(&d, "heartsink_admin_timeouts_total") >= 5.0);
    assert_healthz_fast(d.admin, "after the stalled clients");
}

#[test]
fn a_256_mib_header_line_is_431_without_the_memory() {
    let (mut d, _tmp) = start(SHORT);
    let pid = d.child.id();
    let rss_before = proc_status(pid, "VmRSS:");
    // A head just over the limit: 431.
    let mut s = connect(d.admin);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: ").unwrap();
    s.write_all(&vec![b'a'; 20 << 10]).unwrap();
    assert_eq!(status(&mut s), Some(431));
    // 256 MiB of one header line: the daemon stops reading long before, and closes.
    let mut s = connect(d.admin);
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: ").unwrap();
    let mut sent = 0usize;
    for _ in 0..256 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent < 256 << 20, "the daemon read the whole 256 MiB header line");
    let rss_after = proc_status(pid, "VmRSS:");
    assert!(rss_after < rss_before + 32 * 1024, "RSS grew from {rss_before} kB to {rss_after} kB");
    eprintln!("256 MiB header line: {sent} bytes accepted by the socket, RSS {rss_before} kB -> {rss_after} kB");
    assert!(d.child.try_wait().unwrap().is_none());
    assert_healthz_fast(d.admin, "after the 256 MiB header line");
}

#[test]
fn two_thousand_idle_connections_cost_no_threads_and_healthz_still_answers() {
    // Default limits (1024 connections, 60 s idle): the excess evicts the longest idle.
    let (d, _tmp) = start("[admin]\n");
    let pid = d.child.id();
    assert_healthz_fast(d.admin, "at start");
    let threads_before = proc_status(pid, "Threads:");
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(connect(d.admin));
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_healthz_fast(d.admin, "with 2000 idle connections open");
    }
    let threads_after = proc_status(pid, "Threads:");
    eprintln!("threads: {threads_before} before, {threads_after} with 2000 idle connections");
    assert!(
        threads_after <= threads_before + 2,
        "threads: {threads_before} before, {threads_after} with 2000 idle connections"
    );
    assert!(metric(&d, "heartsink_admin_connections ") <= 1024.0);
    assert!(metric(&d, "heartsink_admin_connections_evicted_total") >= 900.0);
    // A keep-alive client making requests all along is never the one evicted.
    drop(idle);
    assert_healthz_fast(d.admin, "after closing them");
}

#[test]
fn at_the_connection_limit_with_every_connection_busy_newcomers_get_503() {
    let (d, _tmp) = start("[admin]\nmax_connections = 4\nbody_timeout = 1.5\n");
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(d.admin);
            s.write_all(b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (code, took) = healthz(d.admin);
    assert_eq!(code, 503, "refused while every connection has a request in progress");
    assert!(took < Duration::from_secs(1));
    for s in &mut busy {
        assert!(matches!(status(s), Some(408) | None));
    }
    drop(busy);
    common::wait_until("a slot frees", Duration::from_secs(5), || (healthz(d.admin).0 == 200).then_some(()));
    assert!(metric(&d, "heartsink_admin_connections_refused_total") >= 1.0);
}

#[test]
fn sigterm_with_stalled_clients_open_exits_0_within_seconds() {
    // Default (long) timeouts: the stop must not wait for them.
    let (mut d, _tmp) = start("[admin]\n");
    let mut open = Vec::new();
    for bytes in [
        &b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{"[..],
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        b"POST /v1/volumes HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{",
        b"",
    ] {
        let mut s = connect(d.admin);
        s.write_all(bytes).unwrap();
        open.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_healthz_fast(d.admin, "before SIGTERM");
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "exit status {st:?}; stderr: {}", d.stderr_text());
    assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
    eprintln!("SIGTERM with stalled clients: exit 0 after {:?}", t.elapsed());
}

#[test]
fn out_of_range_admin_limits_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[admin]\nheader_timeout = 0.0\n", "admin.header_timeout"),
        ("[admin]\nmax_header_bytes = 100\n", "admin.max_header_bytes"),
        ("[admin]\nmax_connections = 0\n", "admin.max_connections"),
    ] {
        let cfg = tmp.path().join("bad.toml");
        std::fs::write(&cfg, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .args(["serve", "--config", cfg.to_str().unwrap(), "--admin-addr", "127.0.0.1:0"])
            .args(["--heartbeat-addr", "127.0.0.1:0", "--confd-addr", "127.0.0.1:0"])
            .current_dir(tmp.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{toml}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(key), "{toml}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_thousand_keep_alive_clients_are_all_answered_twice() {
    let (d, _tmp) = start("[admin]\n");
    let mut clients: Vec<TcpStream> = (0..1000).map(|_| connect(d.admin)).collect();
    for round in 0..2 {
        for s in &mut clients {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        }
        for (i, s) in clients.iter_mut().enumerate() {
            assert_eq!(status(s), Some(200), "client {i}, round {round}");
            let mut body = [0u8; 15];
            s.read_exact(&mut body).unwrap();
            assert_eq!(&body, br#"{"status":"ok"}"#);
        }
    }
    assert_eq!(metric(&d, "heartsink_admin_connections_evicted_total"), 0.0);
}
