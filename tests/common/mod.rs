//! Helpers for the loopback tests: start the real binary on ephemeral ports, talk to it over
//! UDP and HTTP, stop it. Every wait is bounded; a daemon is killed when its handle drops.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod cluster;
pub mod confd;
pub mod etcd;
pub mod pools;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heartsink::proto::envelope::{wrap, TagForm};
use heartsink::proto::keyring::Key;
use serde_json::Value;

/// A running `heartsink serve`.
pub struct Daemon {
    pub child: Child,
    pub heartbeat: SocketAddr,
    pub admin: SocketAddr,
    /// The confd address, when served.
    pub confd: Option<SocketAddr>,
    /// The working directory (the default data directory lives in it).
    pub dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// stdout lines after the listening line (there must be none).
    pub extra_stdout: Arc<Mutex<Vec<String>>>,
    /// The admin token the helpers send (`Authorization: Bearer`), when the daemon has tokens.
    pub token: Option<String>,
}

impl Daemon {
    /// Starts `heartsink serve` on ephemeral loopback ports with extra `args`.
    pub fn start(args: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let mut d = Daemon::start_in(&dir, args);
        d._tmp = Some(tmp);
        d
    }

    /// As [`Daemon::start`], in working directory `dir` (its data directory is
    /// `dir/heartsink-data`), for restarts on the same state.
    pub fn start_in(dir: &std::path::Path, args: &[&str]) -> Daemon {
        let mut all = vec![
            "serve",
            "--heartbeat-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--confd-addr",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        Daemon::spawn(dir, &all, None, &[])
    }

    /// As [`Daemon::start_in`] with extra environment variables.
    pub fn start_in_env(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut all = vec!["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--no-confd"];
        all.extend_from_slice(args);
        Daemon::spawn(dir, &all, None, env)
    }

    /// As [`Daemon::start`] with confd on `confd_addr` (e.g. `127.0.0.2:1814`) instead of an
    /// ephemeral loopback port.
    pub fn start_confd_on(confd_addr: &str, args: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let mut all =
            vec!["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--confd-addr", confd_addr];
        all.extend_from_slice(args);
        Daemon::spawn(&dir, &all, Some(tmp), &[])
    }

    /// The confd address (panics when confd is not served).
    pub fn confd_addr(&self) -> SocketAddr {
        self.confd.expect("confd is served")
    }

    /// Starts the binary with exactly `args`, in a fresh temporary working directory.
    pub fn start_raw(args: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        Daemon::spawn(&dir, args, Some(tmp), &[])
    }

    /// Starts the binary with exactly `args` in working directory `dir` (for restarts on fixed
    /// addresses, e.g. the same heartbeat port while a load keeps sending to it).
    pub fn start_raw_in(dir: &std::path::Path, args: &[&str]) -> Daemon {
        Daemon::spawn(dir, args, None, &[])
    }

    fn spawn(dir: &std::path::Path, args: &[&str], tmp: Option<tempfile::TempDir>, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn heartsink");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read the listening line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("listening line {line:?}: {e}; stderr: {:?}", stderr.lock().unwrap()));
        assert_eq!(v["event"], "listening");
        // Nothing else may appear on stdout: keep whatever does, for the tests to check.
        let extra_stdout = Arc::new(Mutex::new(Vec::new()));
        let extra = extra_stdout.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                extra.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            heartbeat: v["heartbeat"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            confd: v["confd"].as_str().map(|a| a.parse().unwrap()),
            dir: dir.to_owned(),
            _tmp: tmp,
            stderr,
            extra_stdout,
            token: None,
        }
    }

    /// Sends `token` with every admin call of the helpers from now on.
    pub fn with_token(mut self, token: &str) -> Daemon {
        self.token = Some(token.to_owned());
        self
    }

    /// An admin request with `token` (not the daemon's own): status, `WWW-Authenticate`, and the
    /// body as JSON (`Null` when it is not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Option<String>, Value) {
        let mut req = ureq::request(method, &self.url(path)).timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        let r = match body {
            Some(b) => req.set("content-type", "application/json").send_string(b),
            None => req.call(),
        };
        let r = match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = r.status();
        let challenge = r.header("www-authenticate").map(str::to_owned);
        let text = r.into_string().expect("body");
        (status, challenge, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn authorized(&self, req: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(t) => req.set("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// GET returning (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, Value) {
        match self.authorized(ureq::get(&self.url(path))).timeout(Duration::from_secs(5)).call() {
            Ok(r) => (r.status(), r.into_json().expect("JSON body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().expect("JSON error body")),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// GET returning the body as text.
    pub fn get_text(&self, path: &str) -> String {
        self.authorized(ureq::get(&self.url(path)))
            .timeout(Duration::from_secs(5))
            .call()
            .expect("GET")
            .into_string()
            .expect("text")
    }

    pub fn stats(&self) -> Value {
        let (code, v) = self.get("/v1/stats");
        assert_eq!(code, 200);
        v
    }

    /// Waits until `/v1/stats` satisfies `f` (bounded by 10 s), returning the last stats.
    pub fn wait_stats(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.stats();
            if f(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stats: {s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `received` counts `n` datagrams and every one of them is accounted for
    /// (accepted or dropped).
    pub fn wait_processed(&self, n: u64) -> Value {
        self.wait_stats(&format!("{n} datagrams processed"), |s| {
            s["received"].as_u64() == Some(n)
                && s["accepted"].as_u64().unwrap() + s["dropped_total"].as_u64().unwrap() == n
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits for the process to exit (bounded), returning its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_child(&mut self.child, timeout, "daemon")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle` (bounded by 10 s).
    pub fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr_text().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} on stderr: {}", self.stderr_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it returns a value, failing the test after `timeout`.
/// Waits (bounded) for `child` to exit; kills it and panics naming `what` past `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UUID string made from a number (valid for `Uuid::try_parse`).
pub fn uuid(kind: u16, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// A ver-3 heartbeat with one listener, one pool and three members.
pub fn heartbeat_json(amphora: u64, seq: u64, tx: u64) -> String {
    let (a, l, p) = (uuid(1, amphora), uuid(2, amphora), uuid(3, amphora));
    let (m1, m2, m3) = (uuid(4, amphora * 3), uuid(4, amphora * 3 + 1), uuid(4, amphora * 3 + 2));
    format!(
        r#"{{"id": "{a}", "seq": {seq}, "listeners": {{"{l}": {{"status": "OPEN", "stats": {{"tx": {tx}, "rx": 2, "conns": 3, "totconns": 4, "ereq": 0}}}}}}, "pools": {{"{p}:{l}": {{"status": "UP", "members": {{"{m1}": "UP", "{m2}": "UP", "{m3}": "no check"}}}}}}, "ver": 3}}"#
    )
}

/// A signed envelope of [`heartbeat_json`].
pub fn heartbeat(amphora: u64, seq: u64, tx: u64, key: &str) -> Vec<u8> {
    wrap(heartbeat_json(amphora, seq, tx).as_bytes(), &Key::new(key.as_bytes()), TagForm::Hex)
}

/// A client socket on loopback.
pub fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind client")
}

/// Test data shipped with the project.
pub fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/octavia/{name}", env!("CARGO_MANIFEST_DIR"))).expect("test data")
}

/// A child process killed and reaped when dropped (or on `stop`).
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Kills and reaps it now.
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}
