//! Store faults with the real binary (issue 16, item 5): writes that fail (the test-only
//! `HEARTSINK_STORE_FAULTS` hook, and a full tmpfs where the test may mount one) degrade
//! `/healthz`, hold admin writes unanswered, and recover by themselves with nothing lost; an
//! unreadable or corrupt database is refused at start (never a panic) unless `--fresh-store`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{wait_until, Daemon};
use serde_json::Value;

const KEY: &str = "store-faults-key";

fn patch(d: &Daemon, amphora: &str, body: &str, timeout: Duration) -> (u16, Value) {
    match ureq::patch(&d.url(&format!("/v1/amphorae/{amphora}"))).timeout(timeout).send_string(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or_default()),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

fn metric(d: &Daemon, name: &str) -> Option<f64> {
    d.get_text("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

fn count(d: &Daemon, needle: &str) -> usize {
    d.stderr.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
}

/// One amphora beating, so an admin write has something to change.
fn one_amphora(d: &Daemon) -> String {
    let sock = common::client();
    sock.send_to(&common::heartbeat(1, 1, 1, KEY), d.heartbeat).unwrap();
    let id = common::uuid(1, 1);
    wait_until("the amphora is known", Duration::from_secs(10), || {
        (d.get(&format!("/v1/amphorae/{id}")).0 == 200).then_some(())
    });
    id
}

/// While the store cannot write, `/healthz` is 503 degraded with the reason, the metric says
/// so, and the admin write waits; once it can, everything recovers within seconds and the
/// write survives `kill -9`. `make_fail` / `make_write` break and repair the store.
fn fail_and_recover(d: &mut Daemon, dir: &Path, data: &Path, make_fail: impl Fn(), make_write: impl Fn()) {
    let id = one_amphora(d);
    assert_eq!(d.get("/healthz").0, 200);
    assert_eq!(metric(d, "heartsink_store_healthy"), Some(1.0));
    make_fail();
    let (tx, rx) = mpsc::channel();
    {
        let url_d = d.admin;
        let id = id.clone();
        std::thread::spawn(move || {
            let r = match ureq::patch(&format!("http://{url_d}/v1/amphorae/{id}"))
                .timeout(Duration::from_secs(40))
                .send_string(r#"{"expected_listeners": 7}"#)
            {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(c, _)) => c,
                Err(_) => 0,
            };
            let _ = tx.send((r, Instant::now()));
        });
    }
    let degraded = wait_until("/healthz degraded", Duration::from_secs(10), || {
        let (code, body) = d.get("/healthz");
        (code == 503 && body["status"] == "degraded").then_some(body)
    });
    let reason = degraded["reason"].as_str().unwrap();
    assert!(reason.starts_with("store: "), "{degraded}");
    assert!(reason.contains("No space left on device"), "{degraded}");
    assert_eq!(metric(d, "heartsink_store_healthy"), Some(0.0));
    // The control thread never waits for the store: 2,000 new amphorae (each a row to write)
    // are all applied while it cannot write, none dropped `ring_full`.
    let sock = common::client();
    let accepted = d.stats()["accepted"].as_u64().unwrap();
    for n in 0..2_000u64 {
        sock.send_to(&common::heartbeat(100 + n, 1, 1, KEY), d.heartbeat).unwrap();
        if n % 200 == 199 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_until("2,000 new amphorae applied", Duration::from_secs(10), || {
        (d.stats()["accepted"].as_u64().unwrap() >= accepted + 2_000).then_some(())
    });
    assert_eq!(d.stats()["dropped"]["ring_full"].as_u64().unwrap_or(0), 0);
    assert!(rx.try_recv().is_err());
    // A few retries later: still one log line for the change, and the write unanswered.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(metric(d, "heartsink_store_failures_total").unwrap() >= 2.0);
    assert_eq!(count(d, "store writes are failing"), 1, "one log line per change");
    assert!(rx.try_recv().is_err(), "the admin write is not acknowledged while the store cannot write");
    let repaired = Instant::now();
    make_write();
    wait_until("/healthz ok again", Duration::from_secs(15), || (d.get("/healthz").0 == 200).then_some(()));
    let (code, answered) = rx.recv_timeout(Duration::from_secs(15)).expect("the admin write is answered");
    assert_eq!(code, 200);
    assert!(answered >= repaired, "answered only after the store could write");
    assert_eq!(metric(d, "heartsink_store_healthy"), Some(1.0));
    wait_until("recovery logged", Duration::from_secs(5), || (count(d, "store writes recovered") == 1).then_some(()));
    assert_eq!(count(d, "store writes are failing"), 1);

    // Durable: kill -9, restart on the same data, read it back.
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let d2 = Daemon::start_in(dir, &["--key", KEY, "--data-dir", data.to_str().unwrap()]);
    let (code, a) = d2.get(&format!("/v1/amphorae/{id}"));
    assert_eq!(code, 200, "{a}");
    assert_eq!(a["expected_listeners"], 7, "{a}");
    assert_eq!(d2.get("/healthz").0, 200);
}

#[test]
fn failing_writes_degrade_healthz_hold_admin_writes_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let trigger = tmp.path().join("fail-writes");
    let mut d = Daemon::start_in_env(
        tmp.path(),
        &["--key", KEY, "--data-dir", data.to_str().unwrap()],
        &[("HEARTSINK_STORE_FAULTS", trigger.to_str().unwrap())],
    );
    fail_and_recover(
        &mut d,
        tmp.path(),
        &data,
        || std::fs::write(&trigger, b"").unwrap(),
        || std::fs::remove_file(&trigger).unwrap(),
    );
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The real thing: the data directory on a small tmpfs, filled up, then freed.
#[test]
fn full_disk_recovers_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&data)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); the fault-hook test covers the same path");
        return;
    }
    let _mount = Mount(data.clone());
    let mut d = Daemon::start_in(tmp.path(), &["--key", KEY, "--data-dir", data.to_str().unwrap(), "--no-confd"]);
    let filler = data.join("filler");
    fail_and_recover(
        &mut d,
        tmp.path(),
        &data,
        || {
            // Fill every free block; the store's next commit needs new pages.
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![0xabu8; 4096];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        },
        || std::fs::remove_file(&filler).unwrap(),
    );
}

/// `heartsink serve` on `data`, expected to exit before listening: (exit code, stderr).
fn serve_exits(dir: &Path, data: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--no-confd"])
        .args(["--key", KEY, "--data-dir", data.to_str().unwrap()])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_child(&mut child, Duration::from_secs(20), "serve on a corrupt store");
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), err)
}

/// A database written by the daemon: an amphora and an admin write, stopped gracefully.
fn real_database() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut d = Daemon::start_in(tmp.path(), &["--key", KEY, "--data-dir", data.to_str().unwrap()]);
    let sock = common::client();
    for i in 0..200 {
        sock.send_to(&common::heartbeat(i, 1, 1, KEY), d.heartbeat).unwrap();
    }
    let id = one_amphora(&d);
    assert_eq!(patch(&d, &id, r#"{"expected_listeners": 2}"#, Duration::from_secs(5)).0, 200);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).success());
    std::fs::read(data.join("heartsink.redb")).unwrap()
}

#[test]
fn corrupt_or_unreadable_store_is_refused_unless_fresh_store() {
    let good = real_database();
    // Flip 4 KiB at five places across the data (redb's copy-on-write leaves freed pages with
    // old bytes, so one place may be unused space).
    let used: Vec<usize> = good.iter().enumerate().skip(4096).filter(|(_, b)| **b != 0).map(|(i, _)| i).collect();
    let mut flipped = good.clone();
    for k in 1..=5 {
        let at = used[used.len() * k / 6];
        for b in &mut flipped[at.saturating_sub(2048)..(at + 2048).min(good.len())] {
            *b ^= 0xff;
        }
    }
    let random: Vec<u8> = (0..200_000u64).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("zero-length", Vec::new()),
        ("random bytes", random),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("bytes flipped", flipped),
    ];
    for (name, bytes) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let file = data.join("heartsink.redb");
        std::fs::write(&file, &bytes).unwrap();
        let (code, err) = serve_exits(tmp.path(), &data, &[]);
        assert_ne!(code, Some(101), "{name}: a panic escaped: {err}");
        assert_ne!(code, Some(0), "{name}: started on a corrupt store: {err}");
        assert!(code.is_some(), "{name}: killed by a signal: {err}");
        assert!(err.contains(&file.display().to_string()), "{name}: the message names the file: {err}");
        assert!(err.contains("--fresh-store"), "{name}: the message says what to do: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "{name}: the file is left as it was");

        let mut d =
            Daemon::start_in(tmp.path(), &["--key", KEY, "--data-dir", data.to_str().unwrap(), "--fresh-store"]);
        assert_eq!(d.get("/healthz").0, 200, "{name}");
        assert_eq!(d.get("/v1/amphorae").1["amphorae"].as_array().map_or(0, Vec::len), 0, "{name}: empty");
        d.wait_stderr("moved it aside");
        let aside: Vec<PathBuf> = std::fs::read_dir(&data)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("heartsink.redb.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{name}: {aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "{name}: the bad file is kept aside");
        d.signal(libc::SIGTERM);
        assert!(d.wait_exit(Duration::from_secs(20)).success(), "{name}");
    }
}

/// The data directory removed while running: a write is never acknowledged into the unlinked
/// file (it would be lost at the next start), `/healthz` says degraded with the reason, and no
/// empty database is created in its place.
#[test]
fn a_data_dir_removed_while_running_degrades_and_acknowledges_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = Daemon::start_in(tmp.path(), &["--key", KEY, "--data-dir", data.to_str().unwrap()]);
    let id = one_amphora(&d);
    assert_eq!(d.get("/healthz").0, 200);
    std::fs::remove_dir_all(&data).unwrap();
    let (code, body) = patch(&d, &id, r#"{"expected_listeners": 3}"#, Duration::from_secs(3));
    assert_ne!(code / 100, 2, "a write into a removed database was acknowledged: {body}");
    let h = wait_until("healthz degraded", Duration::from_secs(10), || {
        let (c, v) = d.get("/healthz");
        (c == 503).then_some(v)
    });
    assert!(h["reason"].as_str().unwrap_or_default().contains("removed while running"), "{h}");
    assert!(!data.join("heartsink.redb").exists(), "no empty database in its place");
}
