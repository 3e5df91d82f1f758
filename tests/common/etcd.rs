//! Real etcd members for the tests: a 1- or 3-member cluster on free loopback ports, each member
//! with its own data directory under one temporary directory, started and waited for (bounded),
//! and signalled (SIGKILL, SIGSTOP, SIGCONT, restart) one at a time.
//!
//! Nothing outlives the handle: each member runs in its own process group, which Drop kills
//! (SIGKILL, so a SIGSTOPped member goes too) before the directory is removed; Drop also runs
//! when a test panics. Each member also gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the
//! thread that started it even if the test process is killed outright: start and restart
//! members from the test's own thread, not from a helper thread that ends first.
//!
//! etcd comes from Debian's `etcd-server` package (3.4): `scripts/setup-etcd.sh` installs it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a cluster (or a restarted member) may take to become healthy.
pub const START_BOUND: Duration = Duration::from_secs(15);

/// The etcd binary on PATH, or a failed test saying how to install it.
pub fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let p = dir.join("etcd");
        if p.is_file() {
            return p;
        }
    }
    panic!("etcd is not installed: run scripts/setup-etcd.sh (installs Debian's etcd-server 3.4; needs root)");
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster of 1 or 3 members on 127.0.0.1.
pub struct Etcd {
    bin: PathBuf,
    members: Vec<Member>,
    cluster: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// One member.
    pub fn single() -> Etcd {
        Etcd::start(1)
    }

    /// Three members (`--pre-vote=true`).
    pub fn three() -> Etcd {
        Etcd::start(3)
    }

    /// `n` members on free loopback ports, waited for until every one is healthy (bounded by
    /// [`START_BOUND`]). A port taken between picking and binding (another test, another
    /// process) starts the whole cluster again on new ports, up to three times.
    pub fn start(n: usize) -> Etcd {
        let bin = etcd_binary();
        let mut last = String::new();
        for attempt in 0..3 {
            let ports = free_ports(2 * n);
            let members: Vec<Member> = (0..n)
                .map(|i| Member { name: format!("m{i}"), client: ports[2 * i], peer: ports[2 * i + 1], child: None })
                .collect();
            let cluster =
                members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
            let mut e = Etcd {
                bin: bin.clone(),
                members,
                cluster,
                token: format!("heartsink-test-{}-{}-{attempt}", std::process::id(), ports[0]),
                dir: tempfile::tempdir().expect("temp dir"),
            };
            for i in 0..n {
                e.spawn(i);
            }
            match e.wait_until_healthy(&(0..n).collect::<Vec<_>>(), START_BOUND) {
                Ok(()) => return e,
                Err(why) => {
                    let logs = (0..n).map(|i| e.log(i)).collect::<Vec<_>>().join("\n");
                    last = format!("{why}\n{logs}");
                    if !logs.contains("address already in use") {
                        break;
                    }
                    // Drop kills the members and removes the directory; try new ports.
                }
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// The client URLs, `http://127.0.0.1:PORT`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            signal_group(&c, libc::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOPs member `i` (it hangs with its connections open).
    pub fn stop(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONTs member `i`.
    pub fn cont(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// Kills member `i` if it runs, starts it again on the same ports and data directory, and
    /// waits until it is healthy (bounded).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(why) = self.wait_until_healthy(&[i], START_BOUND) {
            panic!("member {i} did not come back: {why}\n{}", self.log(i));
        }
    }

    /// The member that is the raft leader, as the members that answer tell it.
    pub fn leader(&self) -> Option<usize> {
        let ids: Vec<Option<(String, String)>> = (0..self.members.len()).map(|i| self.status(i)).collect();
        let leader = ids.iter().flatten().map(|(_, l)| l.clone()).find(|l| l != "0")?;
        ids.iter().position(|s| s.as_ref().is_some_and(|(me, _)| *me == leader))
    }

    /// Member `i`'s log (stdout and stderr, every run of it).
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "--- {} (last lines) ---\n{}",
            self.members[i].name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = File::options().create(true).append(true).open(self.log_path(i)).expect("etcd log file");
        let data = data_dir(self.dir.path(), &m.name);
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--auto-compaction-mode=periodic", "--auto-compaction-retention=1h"]);
        if self.members.len() > 1 {
            cmd.arg("--pre-vote=true");
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log fd")).stderr(log).process_group(0);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of this process; it
        // only asks the kernel to SIGKILL the child when the thread that forked it ends.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    fn signal(&self, i: usize, sig: i32) {
        let c = self.members[i].child.as_ref().expect("member is running");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(c.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) member {i}");
    }

    /// Waits until every member of `which` answers `/health` with `"true"`; fails early when a
    /// member exits.
    fn wait_until_healthy(&mut self, which: &[usize], bound: Duration) -> Result<(), String> {
        let deadline = Instant::now() + bound;
        let mut pending: Vec<usize> = which.to_vec();
        while !pending.is_empty() {
            for &i in which {
                if let Some(c) = self.members[i].child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        return Err(format!("member {i} exited: {st}"));
                    }
                }
            }
            pending.retain(|&i| !self.healthy(i));
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("members {pending:?} not healthy within {bound:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn healthy(&self, i: usize) -> bool {
        let url = format!("{}/health", self.endpoint(i));
        match ureq::get(&url).timeout(Duration::from_secs(1)).call() {
            Ok(r) => r.into_json::<Value>().is_ok_and(|v| v["health"] == "true"),
            Err(_) => false,
        }
    }

    /// (own member id, leader's member id) from `/v3/maintenance/status`.
    fn status(&self, i: usize) -> Option<(String, String)> {
        self.members[i].child.as_ref()?;
        let url = format!("{}/v3/maintenance/status", self.endpoint(i));
        let v: Value = ureq::post(&url).timeout(Duration::from_secs(1)).send_string("{}").ok()?.into_json().ok()?;
        Some((v["header"]["member_id"].as_str()?.to_owned(), v["leader"].as_str()?.to_owned()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                signal_group(&c, libc::SIGKILL);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // The TempDir removes the data directories and logs after this.
    }
}

fn data_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.etcd"))
}

/// SIGKILLs the process group a member leads (it was started with `process_group(0)`).
fn signal_group(c: &Child, sig: i32) {
    // SAFETY: kill(2) on the process group our own child leads; no memory is involved.
    unsafe {
        libc::kill(-(c.id() as i32), sig);
    }
}

/// `n` distinct free TCP ports on 127.0.0.1: all bound at once (so they differ), then released.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
    held.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}
