//! Scale mode, `heartsink bench --senders N[,N…]`: what N tracked senders cost the daemon, one
//! fresh `heartsink serve` child (fresh data directory) per size, in three phases.
//!
//! 1. **Fill.** One pre-built heartbeat from each of the N senders at 150k/s; while
//!    `/v1/stats` does not track all N (new senders cost the daemon more than known ones, so a
//!    fast fill drops), another pass at half the previous rate, 5 passes at most: the time to
//!    track them all (pre-building left out), the rate, each pass, and the `ring_full` and
//!    kernel drops of the fill.
//! 2. **Steady state.** The load generator (built at send time, so every heartbeat carries its
//!    send time) sends 20,000 heartbeats/s spread over the N senders, so that each beats at its
//!    configured interval: `heartbeat_interval = N / 20000` s, `heartbeat_timeout = 3 ×` that
//!    (at least 5 s), `health_check_interval = 1` s, `startup_grace = 2` s (over before the
//!    steady window: the rules are in force). Once the store has written the fill's rows (one
//!    per sender; at most 300 s, the wait reported) and after a 2 s warm-up, over a 30 s window:
//!    - bytes of RSS per tracked amphora ((RSS at the window's end − RSS of the empty daemon)
//!      ÷ tracked; `VmRSS` of `/proc/PID/status`);
//!    - the control thread's longest tick and the health check's longest run in the window.
//!      The daemon keeps only lifetime maxima; when a lifetime maximum rose during the window
//!      it is the window's maximum (exact), otherwise the window's maximum is the largest
//!      `tick_us_last` (or the health check's `last_duration_ns`) seen by polling every
//!      100 ms, a lower bound; both figures and which one applies are in the JSON;
//!    - store writes committed per second (`liveness.store.writes`), receive-to-applied p99
//!      (`GET /v1/latency` counts, differenced), drops by reason and kernel drops, CPU seconds
//!      of the daemon (`utime + stime` of `/proc/PID/stat`) and per accepted heartbeat, and
//!      failover records (all false failovers: every sender is beating).
//! 3. **Restart.** With the load still running: SIGTERM, then the same configuration on the
//!    same data directory and heartbeat port; the time from the new process's spawn to its
//!    listening line, to its `restored durable state` log line, and until `/v1/stats` tracks
//!    every amphora and has accepted heartbeats again; RSS per amphora after the restart;
//!    kernel and ring drops of the new process in its first 10 s (read when it first answers,
//!    if its start took longer), and 10 s later with its stale count and failover records.
//!
//! At 1M the timeout (150 s) is longer than the whole run, so no amphora can go stale there:
//! its failover count shows nothing about the rules; 10k and 100k (timeouts of 5 and 15 s)
//! do.
//!
//! Each size takes about a minute (10k) to three (1M). The report goes to
//! `OUT/scale.json` (rewritten after each size) and stdout, with a Markdown table at the end.
//! Once after all sizes, the failover-delay measurement (100 senders stopped at once) runs.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{failover_delay, get, machine, rss_kib, u, BenchArgs, Error, KEY};
use crate::engine::histogram;
use crate::load::LoadConfig;

/// Heartbeats per second of the steady load, over all senders.
const STEADY_RATE: f64 = 20_000.0;
/// Length of the steady-state window.
const WINDOW: Duration = Duration::from_secs(30);
/// Steady load before the window opens.
const WARM_UP: Duration = Duration::from_secs(2);
/// Rate of the first fill pass (each further pass goes at half the rate of the one before).
const FILL_RATE: f64 = 150_000.0;
/// Fill passes at most.
const FILL_PASSES: usize = 5;
/// The line the daemon logs once its durable state is restored.
const RESTORED: &str = "restored durable state";

/// A `heartsink serve` child on a given data directory, its stderr copied to a log file with
/// the time each line arrived.
struct Daemon {
    child: Child,
    heartbeat: SocketAddr,
    admin: SocketAddr,
    spawned: Instant,
    /// Seconds from spawn to the listening line.
    listening_s: f64,
    /// Seconds from spawn to the `restored durable state` line, and the line.
    restored: Arc<Mutex<Option<(f64, String)>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(config: &Path, data_dir: &Path, heartbeat: &str, log: &Path) -> Result<Daemon, Error> {
        let exe = std::env::current_exe()?;
        let spawned = Instant::now();
        let mut child = Command::new(exe)
            .args(["serve", "--heartbeat-addr", heartbeat, "--admin-addr", "127.0.0.1:0", "--key", KEY])
            .args(["--rcvbuf", "33554432", "--log-level", "info", "--no-confd", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let restored = Arc::new(Mutex::new(None));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = child.stderr.take().ok_or("no stderr")?;
        let seen = restored.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let at = spawned.elapsed().as_secs_f64();
                if line.contains(RESTORED) {
                    if let Ok(mut s) = seen.lock() {
                        s.get_or_insert((at, line.clone()));
                    }
                }
                let _ = writeln!(file, "{at:10.3} {line}");
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let listening_s = spawned.elapsed().as_secs_f64();
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("listening line {line:?}: {e}"))?;
        let addr = |k: &str| -> Result<SocketAddr, Error> { Ok(v[k].as_str().ok_or("listening line")?.parse()?) };
        Ok(Daemon { heartbeat: addr("heartbeat")?, admin: addr("admin")?, child, spawned, listening_s, restored })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stats(&self) -> Result<Value, Error> {
        get(self.admin, "/v1/stats")
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the seconds it took.
    fn stop(&mut self) -> Result<f64, Error> {
        let t = Instant::now();
        if !crate::io::signal(self.pid(), libc::SIGTERM) {
            return Err("cannot send SIGTERM to the daemon".into());
        }
        while self.child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                return Err("the daemon did not stop within 120 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// The steady load, on a thread, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<crate::load::LoadReport, String>>>,
}

impl Load {
    fn start(cfg: LoadConfig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || crate::load::run(&cfg, &flag, false).map_err(|e| e.to_string()));
        Load { stop, thread: Some(thread) }
    }

    /// Stops the load; returns its report.
    fn finish(mut self) -> Result<crate::load::LoadReport, Error> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().ok_or("load already finished")?;
        Ok(t.join().map_err(|_| "the load thread panicked")??)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

/// The health check's task figures, ns.
fn health_check(stats: &Value, field: &str) -> u64 {
    stats["liveness"]["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "health_check"))
        .and_then(|t| t[field].as_u64())
        .unwrap_or(0)
}

/// Failover records of every state.
fn failover_records(stats: &Value) -> u64 {
    stats["liveness"]["failovers"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// `after − before` of every drop reason, and the kernel drops.
fn drops(before: &Value, after: &Value) -> Value {
    let mut out = Map::new();
    if let Some(reasons) = after["dropped"].as_object() {
        for (k, v) in reasons {
            let d = v.as_u64().unwrap_or(0).saturating_sub(before["dropped"][k].as_u64().unwrap_or(0));
            out.insert(k.clone(), json!(d));
        }
    }
    out.insert("kernel".into(), json!(u(after, &["kernel_drops"]).saturating_sub(u(before, &["kernel_drops"]))));
    Value::Object(out)
}

fn latency_counts(admin: SocketAddr) -> Result<Vec<u64>, Error> {
    super::latency(admin)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<bool, Error>) -> Result<f64, Error> {
    let t = Instant::now();
    loop {
        if ok()? {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fills a fresh daemon with one heartbeat from each of `n` senders. A pass sends one
/// pre-built heartbeat to every sender; when some were dropped (the daemon takes new senders
/// more slowly than known ones), the next pass goes at half the rate, up to `FILL_PASSES`.
fn fill(d: &Daemon, n: u64) -> Result<Value, Error> {
    let before = d.stats()?;
    let mut build_s = 0.0;
    let mut passes = Vec::new();
    let start = Instant::now();
    let mut rate = FILL_RATE;
    let mut tracked = 0;
    while tracked < n && passes.len() < FILL_PASSES {
        let pass = passes.len() as u64;
        let cfg = LoadConfig {
            targets: vec![d.heartbeat],
            key: KEY.into(),
            amphorae: n,
            rate: Some(rate),
            duration: None,
            count: Some(n),
            first_seq: pass,
            // Built before sending (on two threads): sending then costs only sendmmsg.
            prebuilt: true,
            threads: 2,
            ..LoadConfig::default()
        };
        eprintln!("bench: scale {n}: fill pass {pass} at {rate:.0}/s …");
        let s0 = d.stats()?;
        let report = crate::load::run(&cfg, &AtomicBool::new(false), false)?;
        build_s += report.build_s;
        // Until every datagram is accounted for (applied or dropped) and the tracked count has
        // not moved for 300 ms (the control thread applies new senders after the workers).
        let mut last = (u64::MAX, u64::MAX, Instant::now());
        wait_for("the fill to settle", Duration::from_secs(120), || {
            let s = d.stats()?;
            tracked = u(&s, &["amphorae"]);
            let received = u(&s, &["received"]);
            let now = (received, tracked);
            if now != (last.0, last.1) {
                last = (received, tracked, Instant::now());
            }
            let accounted = received == u(&s, &["accepted"]) + u(&s, &["dropped_total"]);
            Ok(tracked >= n || (accounted && last.2.elapsed() > Duration::from_millis(300)))
        })?;
        let s1 = d.stats()?;
        passes.push(json!({
            "rate": rate,
            "sent_rate": report.rate,
            "tracked_after": tracked,
            "drops": drops(&s0, &s1),
        }));
        rate /= 2.0;
    }
    // From the first datagram sent to every sender tracked, pre-building left out.
    let fill_s = (start.elapsed().as_secs_f64() - build_s).max(1e-9);
    let after = d.stats()?;
    // The same senders again, now known, at the first pass's rate: what the data plane takes
    // from known senders on this machine, beside what it took from new ones.
    let known = {
        let cfg = LoadConfig {
            targets: vec![d.heartbeat],
            key: KEY.into(),
            amphorae: n,
            rate: Some(FILL_RATE),
            duration: None,
            count: Some(n),
            first_seq: passes.len() as u64 + 1,
            prebuilt: true,
            threads: 2,
            ..LoadConfig::default()
        };
        eprintln!("bench: scale {n}: the same senders again, known, at {FILL_RATE:.0}/s …");
        let s0 = d.stats()?;
        let report = crate::load::run(&cfg, &AtomicBool::new(false), false)?;
        wait_for("the known pass to settle", Duration::from_secs(60), || {
            let s = d.stats()?;
            Ok(u(&s, &["received"]) == u(&s, &["accepted"]) + u(&s, &["dropped_total"]))
        })?;
        let s1 = d.stats()?;
        json!({"rate": FILL_RATE, "sent_rate": report.rate, "drops": drops(&s0, &s1)})
    };
    Ok(json!({
        "passes": passes,
        "tracked": tracked,
        "all_tracked": tracked >= n,
        "seconds": fill_s,
        "senders_per_s": tracked as f64 / fill_s,
        "build_s": build_s,
        "drops": drops(&before, &after),
        "known": known,
    }))
}

/// Everything read at one instant of the steady state.
struct Point {
    at: Instant,
    stats: Value,
    latency: Vec<u64>,
    rss_kib: u64,
    cpu_s: Option<f64>,
}

fn point(d: &Daemon) -> Result<Point, Error> {
    let at = Instant::now();
    let cpu_s = crate::io::process_cpu_s(d.pid());
    let rss_kib = rss_kib(d.pid());
    Ok(Point { at, stats: d.stats()?, latency: latency_counts(d.admin)?, rss_kib, cpu_s })
}

/// The longest wait for the fill's rows to be written before the steady window.
const SETTLE_MAX: Duration = Duration::from_secs(300);

/// Waits (at most [`SETTLE_MAX`]) until the store has committed a row for each of the `n`
/// senders the fill added and holds none pending, so that the steady window measures a fleet
/// where nothing changes rather than the fill's backlog. Returns the seconds waited and
/// whether it settled.
fn settle(d: &Daemon, n: u64) -> Result<(f64, bool), Error> {
    let t = Instant::now();
    loop {
        let s = d.stats()?;
        let store = &s["liveness"]["store"];
        if u(store, &["writes"]) >= n && u(store, &["pending"]) == 0 {
            return Ok((t.elapsed().as_secs_f64(), true));
        }
        if t.elapsed() >= SETTLE_MAX {
            return Ok((t.elapsed().as_secs_f64(), false));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The steady-state window: polls every 100 ms for the largest tick and health check seen.
fn steady(d: &Daemon, rss_empty_kib: u64) -> Result<Value, Error> {
    std::thread::sleep(WARM_UP);
    let a = point(d)?;
    let (mut tick_seen, mut check_seen) = (0.0f64, 0u64);
    while a.at.elapsed() < WINDOW {
        std::thread::sleep(Duration::from_millis(100));
        let s = d.stats()?;
        tick_seen = tick_seen.max(f(&s, &["control", "tick_us_last"]));
        check_seen = check_seen.max(health_check(&s, "last_duration_ns"));
    }
    let b = point(d)?;
    let window_s = b.at.duration_since(a.at).as_secs_f64();
    let (sa, sb) = (&a.stats, &b.stats);
    let tracked = u(sb, &["amphorae"]);
    let accepted = u(sb, &["accepted"]).saturating_sub(u(sa, &["accepted"]));
    let diff: Vec<u64> = b.latency.iter().zip(&a.latency).map(|(x, y)| x.saturating_sub(*y)).collect();
    let q = |x: f64| histogram::quantile(&diff, x).map(|ns| ns as f64 / 1000.0);
    let tick_life = (f(sa, &["control", "tick_us_max"]), f(sb, &["control", "tick_us_max"]));
    let check_life = (health_check(sa, "max_duration_ns"), health_check(sb, "max_duration_ns"));
    let cpu = a.cpu_s.zip(b.cpu_s).map(|(x, y)| y - x);
    let writes = u(sb, &["liveness", "store", "writes"]).saturating_sub(u(sa, &["liveness", "store", "writes"]));
    Ok(json!({
        "window_s": window_s,
        "tracked": tracked,
        "stale": sb["liveness"]["stale"],
        "accepted": accepted,
        "accepted_per_s": accepted as f64 / window_s,
        "rss_kib": b.rss_kib,
        "bytes_per_amphora": b.rss_kib.saturating_sub(rss_empty_kib) as f64 * 1024.0 / tracked.max(1) as f64,
        "control_tick": {
            // Exact when the lifetime maximum rose in the window; else the polled figure (a
            // lower bound of the window's maximum).
            "window_max_us": if tick_life.1 > tick_life.0 { tick_life.1 } else { tick_seen },
            "window_max_exact": tick_life.1 > tick_life.0,
            "polled_max_us": tick_seen,
            "lifetime_max_us": tick_life.1,
        },
        "health_check": {
            "window_max_ms": if check_life.1 > check_life.0 { check_life.1 } else { check_seen } as f64 / 1e6,
            "window_max_exact": check_life.1 > check_life.0,
            "last_ms": health_check(sb, "last_duration_ns") as f64 / 1e6,
            "lifetime_max_ms": check_life.1 as f64 / 1e6,
            "runs": health_check(sb, "runs").saturating_sub(health_check(sa, "runs")),
        },
        "store": {
            "writes": writes,
            "writes_per_s": writes as f64 / window_s,
            "commits": u(sb, &["liveness", "store", "commits"]).saturating_sub(u(sa, &["liveness", "store", "commits"])),
            "last_commit_ms": sb["liveness"]["store"]["last_commit_ms"],
        },
        "receive_to_applied_us": {"count": diff.iter().sum::<u64>(), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999)},
        "drops": drops(sa, sb),
        "cpu_s": cpu,
        "cpu_us_per_heartbeat": cpu.map(|c| c * 1e6 / accepted.max(1) as f64),
        "failover_records": failover_records(sb),
        "suspended": sb["liveness"]["suspended"],
    }))
}

/// SIGTERM and start again on the same data directory, the load still running.
fn restart(
    d: &mut Daemon,
    config: &Path,
    data_dir: &Path,
    log: &Path,
    rss_empty_kib: u64,
) -> Result<(Daemon, Value), Error> {
    let before = d.stats()?;
    let tracked = u(&before, &["amphorae"]);
    let rss_before = rss_kib(d.pid());
    let stop_s = d.stop()?;
    let heartbeat = d.heartbeat.to_string();
    let d2 = Daemon::start(config, data_dir, &heartbeat, log)?;
    let mut first = None;
    wait_for("every amphora tracked and heartbeats accepted after the restart", Duration::from_secs(120), || {
        let s = d2.stats()?;
        let tracked_now = u(&s, &["amphorae"]);
        if first.is_none() {
            first = Some(tracked_now);
        }
        Ok(tracked_now >= tracked && u(&s, &["accepted"]) > 0)
    })?;
    let ready_s = d2.spawned.elapsed().as_secs_f64();
    let restored = d2.restored.lock().map_err(|_| "log reader")?.clone();
    // The new process's own counters in its first 10 s (or as soon as it answers, when it took
    // longer to start), then 10 s later.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(d2.spawned.elapsed()));
    let s10 = d2.stats()?;
    let first_read_s = d2.spawned.elapsed().as_secs_f64();
    let rss10 = rss_kib(d2.pid());
    std::thread::sleep(Duration::from_secs(10));
    let end = d2.stats()?;
    let end_read_s = d2.spawned.elapsed().as_secs_f64();
    let rss_end = rss_kib(d2.pid());
    let tracked_end = u(&end, &["amphorae"]).max(1);
    let per = |kib: u64| kib as f64 * 1024.0 / tracked_end as f64;
    let doc = json!({
        "tracked_before": tracked,
        "stop_s": stop_s,
        "listening_s": d2.listening_s,
        "restored_log_s": restored.as_ref().map(|r| r.0),
        "restored_log_line": restored.map(|r| r.1),
        "tracked_at_first_stats": first,
        "ready_s": ready_s,
        // Read at `first_read_s` after the spawn: 10 s, or later when the start took longer.
        "first_read_s": first_read_s,
        "kernel_drops_first_10s": u(&s10, &["kernel_drops"]),
        "ring_full_first_10s": u(&s10, &["dropped", "ring_full"]),
        "dropped_first_10s": s10["dropped"],
        // The same, 10 s later (`end_read_s` after the spawn).
        "end_read_s": end_read_s,
        "kernel_drops_by_end": u(&end, &["kernel_drops"]),
        "ring_full_by_end": u(&end, &["dropped", "ring_full"]),
        "rss_kib_before": rss_before,
        "rss_kib_first_read": rss10,
        "rss_kib_end": rss_end,
        "rss_bytes_per_amphora_before": rss_before as f64 * 1024.0 / tracked.max(1) as f64,
        "rss_bytes_per_amphora_after": per(rss_end),
        "bytes_per_amphora_after": per(rss_end.saturating_sub(rss_empty_kib)),
        "tracked_after": u(&end, &["amphorae"]),
        "stale_after": end["liveness"]["stale"],
        "suspended_after": end["liveness"]["suspended"],
        "failover_records_after": failover_records(&end),
        "accepted_after": u(&end, &["accepted"]),
    });
    Ok((d2, doc))
}

/// One size: fill, steady state, restart, each on a fresh daemon and data directory.
fn measure(out: &Path, n: u64) -> Result<Value, Error> {
    let dir = out.join(format!("scale-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let interval = n as f64 / STEADY_RATE;
    let timeout = (3.0 * interval).max(5.0);
    let config = dir.join("heartsink.toml");
    std::fs::write(
        &config,
        format!(
            "[liveness]\nheartbeat_interval = {interval}\nheartbeat_timeout = {timeout}\nhealth_check_interval = 1.0\n\
             startup_grace = 2.0\n"
        ),
    )?;
    let data_dir = dir.join("data");
    let log = dir.join("serve.log");
    let t0 = Instant::now();
    let mut d = Daemon::start(&config, &data_dir, "127.0.0.1:0", &log)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_empty = rss_kib(d.pid());
    let fill = fill(&d, n)?;
    let rss_filled = rss_kib(d.pid());
    eprintln!("bench: scale {n}: steady state at {STEADY_RATE}/s for {WINDOW:?} …");
    let load = Load::start(LoadConfig {
        targets: vec![d.heartbeat],
        key: KEY.into(),
        amphorae: n,
        rate: Some(STEADY_RATE),
        // Stopped by the flag; this only bounds a run that would otherwise never end.
        duration: Some(Duration::from_secs(600)),
        // Above the fill's seqs, same seed: the same senders.
        first_seq: 1000,
        ..LoadConfig::default()
    });
    let (settle_s, settled) = settle(&d, n)?;
    let mut steady = steady(&d, rss_empty)?;
    steady["fill_rows_written_s"] = json!(settle_s);
    steady["fill_rows_written"] = json!(settled);
    eprintln!("bench: scale {n}: restart under load …");
    let (d2, restart) = restart(&mut d, &config, &data_dir, &log, rss_empty)?;
    let report = load.finish()?;
    drop(d2);
    drop(d);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(json!({
        "senders": n,
        "config": {"heartbeat_interval": interval, "heartbeat_timeout": timeout, "health_check_interval": 1.0,
                   "startup_grace": 2.0, "steady_rate": STEADY_RATE},
        "rss_kib_empty": rss_empty,
        "rss_kib_filled": rss_filled,
        "fill": fill,
        "steady": steady,
        "restart": restart,
        "load": {"sent": report.total, "errors": report.errors, "rate": report.rate, "duration_s": report.duration_s},
        "total_s": t0.elapsed().as_secs_f64(),
    }))
}

fn opt(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The Markdown table: one row per figure, one column per size.
fn table(sizes: &[Value]) -> Vec<String> {
    type Row = (&'static str, fn(&Value) -> String);
    let rows: [Row; 25] = [
        ("fill: seconds to track all", |s| opt(&s["fill"]["seconds"], 2)),
        ("fill: senders tracked/s", |s| opt(&s["fill"]["senders_per_s"], 0)),
        ("fill: passes (halving rate from 150k/s), all tracked", |s| {
            format!("{}, {}", s["fill"]["passes"].as_array().map_or(0, Vec::len), s["fill"]["all_tracked"])
        }),
        ("fill: ring_full / kernel drops", |s| {
            format!("{} / {}", s["fill"]["drops"]["ring_full"], s["fill"]["drops"]["kernel"])
        }),
        ("fill: first pass, new senders at 150k/s: ring_full", |s| {
            s["fill"]["passes"][0]["drops"]["ring_full"].to_string()
        }),
        ("then the same senders, known, at 150k/s: ring_full / kernel", |s| {
            let d = &s["fill"]["known"]["drops"];
            format!("{} / {}", d["ring_full"], d["kernel"])
        }),
        ("heartbeat interval / timeout, s", |s| {
            format!("{} / {}", opt(&s["config"]["heartbeat_interval"], 1), opt(&s["config"]["heartbeat_timeout"], 1))
        }),
        ("steady: accepted/s", |s| opt(&s["steady"]["accepted_per_s"], 0)),
        ("steady: bytes of RSS per amphora", |s| opt(&s["steady"]["bytes_per_amphora"], 0)),
        ("steady: control tick max, ms", |s| {
            let t = &s["steady"]["control_tick"];
            let ms = t["window_max_us"].as_f64().map_or("-".into(), |x| format!("{:.2}", x / 1000.0));
            if t["window_max_exact"] == true {
                ms
            } else {
                format!("≥ {ms} (polled)")
            }
        }),
        ("steady: health check max / last, ms", |s| {
            let h = &s["steady"]["health_check"];
            format!("{} / {}", opt(&h["window_max_ms"], 2), opt(&h["last_ms"], 2))
        }),
        ("steady load: s until the fill's rows were written (all written)", |s| {
            format!("{} ({})", opt(&s["steady"]["fill_rows_written_s"], 1), s["steady"]["fill_rows_written"])
        }),
        ("steady: store writes/s", |s| opt(&s["steady"]["store"]["writes_per_s"], 0)),
        ("steady: receive-to-applied p99, µs", |s| opt(&s["steady"]["receive_to_applied_us"]["p99"], 0)),
        ("steady: ring_full / kernel / other drops", |s| {
            let d = &s["steady"]["drops"];
            let other: u64 = d.as_object().map_or(0, |m| {
                m.iter().filter(|(k, _)| *k != "ring_full" && *k != "kernel").filter_map(|(_, v)| v.as_u64()).sum()
            });
            format!("{} / {} / {other}", d["ring_full"], d["kernel"])
        }),
        ("steady: CPU s in window / µs per heartbeat", |s| {
            format!("{} / {}", opt(&s["steady"]["cpu_s"], 1), opt(&s["steady"]["cpu_us_per_heartbeat"], 1))
        }),
        ("steady: failover records (false failovers)", |s| s["steady"]["failover_records"].to_string()),
        ("restart: SIGTERM to exit, s", |s| opt(&s["restart"]["stop_s"], 2)),
        ("restart: spawn to listening / restored log, s", |s| {
            format!("{} / {}", opt(&s["restart"]["listening_s"], 2), opt(&s["restart"]["restored_log_s"], 2))
        }),
        ("restart: spawn to all tracked + accepting, s", |s| opt(&s["restart"]["ready_s"], 2)),
        ("restart: RSS per amphora before / after, B", |s| {
            format!(
                "{} / {}",
                opt(&s["restart"]["rss_bytes_per_amphora_before"], 0),
                opt(&s["restart"]["rss_bytes_per_amphora_after"], 0)
            )
        }),
        ("restart: kernel / ring_full drops, first 10 s (read at, s)", |s| {
            let r = &s["restart"];
            format!("{} / {} ({})", r["kernel_drops_first_10s"], r["ring_full_first_10s"], opt(&r["first_read_s"], 0))
        }),
        ("restart: kernel / ring_full drops 10 s later", |s| {
            format!("{} / {}", s["restart"]["kernel_drops_by_end"], s["restart"]["ring_full_by_end"])
        }),
        ("restart: stale / failover records at the end", |s| {
            format!("{} / {}", s["restart"]["stale_after"], s["restart"]["failover_records_after"])
        }),
        ("total run, s", |s| opt(&s["total_s"], 0)),
    ];
    let mut out = Vec::new();
    let head: Vec<String> = sizes.iter().map(|s| s["senders"].as_u64().unwrap_or(0).to_string()).collect();
    out.push(format!("| senders | {} |", head.join(" | ")));
    out.push(format!("|---|{}", "---|".repeat(sizes.len())));
    for (name, cell) in rows {
        let cells: Vec<String> = sizes.iter().map(cell).collect();
        out.push(format!("| {name} | {} |", cells.join(" | ")));
    }
    out
}

/// Runs the scale mode for every size in `args.senders`.
pub fn run(args: &BenchArgs) -> Result<(), Error> {
    let path: PathBuf = args.out.join("scale.json");
    let mut sizes = Vec::new();
    let write = |sizes: &[Value], extra: Option<&Value>| -> Result<Value, Error> {
        let doc = json!({"machine": machine(), "sizes": sizes, "failover_delay": extra});
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        Ok(doc)
    };
    for &n in &args.senders {
        if n == 0 {
            return Err("--senders: every size must be at least 1".into());
        }
        sizes.push(measure(&args.out, n)?);
        write(&sizes, None)?;
    }
    eprintln!("bench: failover delay (100 senders stopped at once) …");
    let delay = failover_delay(args)?;
    let doc = write(&sizes, Some(&delay))?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    println!();
    for l in table(&sizes) {
        println!("{l}");
    }
    println!();
    println!("wrote {}", path.display());
    Ok(())
}
