//! The bench's confd section: replies/s of `heartsink serve` while it ingests heartbeats, and of
//! the real `ganeti-confd` 3.0.2 on the same `config.data` and key, from the same load
//! generator ([`crate::confd::load`]).
//!
//! 1. `heartsink serve` (confd on loopback, `tests/data/confd/config.data.json` and `hmac.key`)
//!    with the heartbeat load generator sending at a fixed rate the whole time;
//! 2. the Ganeti request mix (ping, cluster-master, node-role-by-name, instances-ips-list)
//!    against it, then heartsink's `AMPHORA_HEALTH` alone (ids of the ingesting fleet);
//! 3. heartsink stopped, the real daemon started standalone as `tests/interop_ganeti.rs` does
//!    (its paths are compiled in: the files are copied to `/var/lib/ganeti/` and restored
//!    afterwards; needs root), and the same Ganeti mix against it, alone on the machine.
//!
//! The daemon is measured without the ingest load, so the ratio is, if anything, unfair to
//! heartsink.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::confd_stages::{self, ConfdStageTable};
use super::{get, repo, start_serve, u, Error, KEY};
use crate::confd::client::unix_now;
use crate::confd::load::{self, ConfdLoadConfig, ConfdLoadReport};
use crate::confd::proto::{encode_request, parse_reply, HmacKey, Query, Request, RequestType};
use crate::load::{fleet_id, LoadConfig};

/// Where Debian's `ganeti-haskell-3.0` installs the daemon (`HEARTSINK_GANETI_CONFD` overrides).
pub const GANETI_CONFD: &str = "/usr/lib/ganeti/3.0/usr/sbin/ganeti-confd";
const GANETI_LIB: &str = "/var/lib/ganeti";
/// The ratio heartsink aims for.
pub const TARGET_RATIO: f64 = 20.0;

/// Settings of the confd section.
#[derive(Clone, Debug)]
pub struct ConfdBenchArgs {
    /// Seconds per measurement.
    pub seconds: f64,
    /// Amphorae of the ingest fleet.
    pub amphorae: u64,
    /// Heartbeats per second sent to heartsink during its measurements.
    pub ingest_rate: f64,
    /// Load generator threads.
    pub threads: usize,
    /// Outstanding requests per thread.
    pub window: usize,
    /// Do not run the real daemon.
    pub skip_ganeti: bool,
}

fn data(name: &str) -> PathBuf {
    repo().join("tests/data/confd").join(name)
}

/// The Ganeti request mix.
pub fn ganeti_mix() -> Vec<(RequestType, Query)> {
    vec![
        (RequestType::Ping, Query::Empty),
        (RequestType::ClusterMaster, Query::Empty),
        (RequestType::NodeRoleByName, Query::Plain("node1.example.com".into())),
        (RequestType::InstancesIpsList, Query::Empty),
    ]
}

/// One signed PING; true when a valid reply came within `timeout`.
fn pings(to: SocketAddr, key: &HmacKey, timeout: Duration) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else { return false };
    let req = Request::new(RequestType::Ping, Query::Empty, "bench-ready");
    if s.set_read_timeout(Some(timeout)).is_err()
        || s.send_to(&encode_request(&req, unix_now().as_secs() as i64, key), to).is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 65536];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => parse_reply(&buf[..n], key).is_ok_and(|(salt, _)| salt == req.rsalt),
        Err(_) => false,
    }
}

/// The real daemon, standalone on 127.0.0.1; killed and its files restored on drop.
struct GanetiConfd {
    child: Child,
    addr: SocketAddr,
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl GanetiConfd {
    /// Starts it, or says why it cannot run here.
    fn start(key: &HmacKey, log: &Path) -> Result<GanetiConfd, String> {
        let exe = std::env::var("HEARTSINK_GANETI_CONFD").unwrap_or_else(|_| GANETI_CONFD.to_owned());
        if !Path::new(&exe).exists() {
            return Err(format!("{exe} is not installed (run scripts/setup-ganeti.sh)"));
        }
        for d in [GANETI_LIB, "/var/run/ganeti", "/var/log/ganeti"] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("{d}: {e} (the daemon's paths are compiled in: needs root)"))?;
        }
        let mut saved = Vec::new();
        for (src, dst) in [("config.data.json", "config.data"), ("hmac.key", "hmac.key")] {
            let dst = Path::new(GANETI_LIB).join(dst);
            saved.push((dst.clone(), std::fs::read(&dst).ok()));
            if let Err(e) = std::fs::copy(data(src), &dst) {
                restore(&saved);
                return Err(format!("{}: {e}", dst.display()));
            }
        }
        let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(0);
        let stderr = std::fs::File::create(log).map_err(|e| e.to_string());
        let child = Command::new(&exe)
            .args(["-f", "--no-user-checks", "-b", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.map_or_else(|_| Stdio::null(), Stdio::from))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                restore(&saved);
                return Err(format!("{exe}: {e}"));
            }
        };
        let mut d = GanetiConfd { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), saved };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !pings(d.addr, key, Duration::from_millis(200)) {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(format!("ganeti-confd exited early ({st}); see /var/log/ganeti/conf-daemon.log"));
            }
            if Instant::now() > deadline {
                return Err("ganeti-confd did not answer within 15 s".into());
            }
        }
        Ok(d)
    }
}

fn restore(saved: &[(PathBuf, Option<Vec<u8>>)]) {
    for (path, old) in saved {
        let _ = match old {
            Some(bytes) => std::fs::write(path, bytes),
            None => std::fs::remove_file(path),
        };
    }
}

impl Drop for GanetiConfd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        restore(&self.saved);
    }
}

/// One measurement: the load report and the server's replies per CPU-second (its `/proc`
/// user + system time over exactly the measured run, warm-up excluded; 0 when unknown).
fn measure(
    target: SocketAddr,
    key: &HmacKey,
    mix: Vec<(RequestType, Query)>,
    a: &ConfdBenchArgs,
    pid: u32,
) -> Result<(ConfdLoadReport, f64), Error> {
    let mut cfg = ConfdLoadConfig::new(target, key.clone(), mix);
    cfg.threads = a.threads;
    cfg.window = a.window;
    cfg.duration = Duration::from_secs_f64(a.seconds);
    // A short warm-up (page faults, the daemon's first allocations), not counted.
    let mut warm = cfg.clone();
    warm.duration = Duration::from_secs_f64((a.seconds / 4.0).min(0.5));
    load::run(&warm)?;
    let cpu0 = crate::io::process_cpu_s(pid);
    let r = load::run(&cfg)?;
    let cpu = crate::io::process_cpu_s(pid).zip(cpu0).map_or(0.0, |(b, a)| b - a);
    if r.bad > 0 {
        return Err(format!("{} replies from {target} failed verification", r.bad).into());
    }
    let per_cpu = if cpu > 0.0 { r.replies as f64 / cpu } else { 0.0 };
    Ok((r, per_cpu))
}

/// Runs the section; the JSON for bench.json's `"confd"` and the table lines.
pub fn run(a: &ConfdBenchArgs, out: &Path) -> Result<(Value, Vec<String>), Error> {
    let key = HmacKey::from_file(data("hmac.key"))?;
    let mix_names = ["ping", "cluster-master", "node-role-by-name node1.example.com", "instances-ips-list"];

    eprintln!("bench: confd: heartsink serve with heartbeat ingest at {:.0}/s …", a.ingest_rate);
    let config = data("config.data.json");
    let key_file = data("hmac.key");
    let (config, key_file) = (config.to_str().ok_or("path not UTF-8")?, key_file.to_str().ok_or("path not UTF-8")?);
    // start_serve gives it a fresh data directory (the fleet must be new to it) and an
    // ephemeral confd port. The load comes from two sources far above any client's rate: the
    // reply budget is turned off (the replay cache stays on; the generator never resends).
    let toml = out.join("serve-confd.toml");
    std::fs::write(&toml, "[confd]\nreply_budget = 0\nreply_budget_total = 0\n")?;
    let toml = toml.to_str().ok_or("path not UTF-8")?;
    let serve = start_serve(
        &out.join("serve-confd.log"),
        &["--config", toml, "--confd-config", config, "--confd-key-file", key_file],
    )?;
    let confd = serve.confd.ok_or("serve did not report a confd address")?;
    let serve_pid = serve.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    // Pre-built (real level-9 envelopes, built before sending), so that the generator's own
    // compression does not compete with the servers for the two cores: enough for both
    // heartsink measurements with their warm-ups, and some to spare.
    let ingest_cfg = LoadConfig {
        targets: vec![serve.heartbeat],
        key: KEY.into(),
        amphorae: a.amphorae,
        rate: Some(a.ingest_rate),
        count: Some((a.ingest_rate * (a.seconds * 2.6 + 4.0)) as u64),
        duration: Some(Duration::from_secs_f64(a.seconds * 4.0 + 60.0)),
        prebuilt: true,
        ..LoadConfig::default()
    };
    let seed = ingest_cfg.seed;
    let ingest = {
        let stop = stop.clone();
        let cfg = ingest_cfg.clone();
        std::thread::spawn(move || crate::load::run(&cfg, &stop, false).map_err(|e| e.to_string()))
    };
    // Let the generator build its packets and the fleet register before asking about it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while {
        let st = get(serve.admin, "/v1/stats")?;
        u(&st, &["amphorae"]) < a.amphorae.min(16) || u(&st, &["accepted"]) == 0
    } {
        if Instant::now() > deadline || ingest.is_finished() {
            stop.store(true, Ordering::Relaxed);
            return Err("the heartbeat ingest never reached heartsink".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = get(serve.admin, "/v1/stats")?;
    let t0 = Instant::now();
    let result = (|| -> Result<_, Error> {
        eprintln!("bench: confd: heartsink, Ganeti mix …");
        let hs = measure(confd, &key, ganeti_mix(), a, serve_pid)?;
        eprintln!("bench: confd: heartsink, AMPHORA_HEALTH …");
        let ids: Vec<(RequestType, Query)> = (0..a.amphorae.min(16))
            .map(|n| (RequestType::AmphoraHealth, Query::Plain(fleet_id(seed, 0, n, 0).to_string())))
            .collect();
        let health = measure(confd, &key, ids, a, serve_pid)?;
        Ok((hs, health))
    })();
    let elapsed = t0.elapsed().as_secs_f64();
    let after = get(serve.admin, "/v1/stats")?;
    stop.store(true, Ordering::Relaxed);
    let ingest_report = ingest.join().map_err(|_| "the ingest thread panicked")??;
    let ((hs, hs_cpu), (health, health_cpu)) = result?;
    let accepted = u(&after, &["accepted"]).saturating_sub(u(&before, &["accepted"]));
    let answered_ok = {
        // AMPHORA_HEALTH must have found the fleet (status 0), not answered "unknown".
        let id = fleet_id(seed, 0, 0, 0).to_string();
        let c = crate::confd::client::ConfdClient::new(key.clone(), &[confd.ip()], Some(confd.port()))?;
        let mut c = crate::confd::client::BlockingClient::new(c)?;
        let (_, got) = c.query(
            RequestType::AmphoraHealth,
            Query::Plain(id),
            crate::confd::client::Coverage::All,
            Duration::from_secs(2),
        )?;
        got.current.is_some_and(|r| r.status == 0)
    };
    let confd_stats = after["confd"].clone();
    drop(serve);

    let mut ganeti = None;
    let mut skipped = None;
    if a.skip_ganeti {
        skipped = Some("--skip-ganeti".to_owned());
    } else {
        match GanetiConfd::start(&key, &out.join("ganeti-confd.log")) {
            Ok(d) => {
                eprintln!("bench: confd: ganeti-confd, Ganeti mix …");
                ganeti = Some(measure(d.addr, &key, ganeti_mix(), a, d.child.id())?);
            }
            Err(e) => skipped = Some(e),
        }
    }
    if let Some(why) = &skipped {
        eprintln!("bench: confd: the real ganeti-confd is skipped: {why}");
    }
    let ratio = ganeti.as_ref().map(|(g, _)| hs.replies_per_s / g.replies_per_s.max(1e-9));
    let ratio_cpu = ganeti.as_ref().and_then(|(_, g)| (*g > 0.0 && hs_cpu > 0.0).then(|| hs_cpu / g));
    eprintln!("bench: confd: stage table …");
    let stages = confd_stages::measure(
        &key,
        &data("config.data.json"),
        &ganeti_mix(),
        a.window,
        hs_cpu,
        ganeti.as_ref().map(|(_, c)| *c),
    )?;

    let doc = json!({
        "mix": mix_names,
        "heartsink": hs,
        "heartsink_replies_per_cpu_second": hs_cpu,
        "heartsink_amphora_health": health,
        "heartsink_amphora_health_replies_per_cpu_second": health_cpu,
        "heartsink_amphora_health_found": answered_ok,
        "ganeti_confd": ganeti.as_ref().map(|(g, _)| g),
        "ganeti_confd_replies_per_cpu_second": ganeti.as_ref().map(|(_, c)| c),
        "ganeti_confd_skipped": skipped,
        "ingest": {
            "offered_per_s": a.ingest_rate,
            "sent": ingest_report.total,
            "accepted_during_confd": accepted,
            "accepted_per_s": accepted as f64 / elapsed,
        },
        "heartsink_confd_stats": confd_stats,
        "ratio_heartsink_over_ganeti": ratio,
        "ratio_heartsink_over_ganeti_per_cpu_second": ratio_cpu,
        "target_ratio": TARGET_RATIO,
        "stages_ns_per_reply": stages,
    });
    let mut lines = vec![
        "| confd (load: {threads} threads × window {window}) | replies/s | per CPU-second of the server | sent | replies | lost |".to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    lines[0] = lines[0].replace("{threads}", &a.threads.to_string()).replace("{window}", &a.window.to_string());
    let row = |name: &str, r: &ConfdLoadReport, cpu: f64| {
        format!("| {name} | {:.0} | {cpu:.0} | {} | {} | {} |", r.replies_per_s, r.sent, r.replies, r.lost)
    };
    lines.push(row(
        &format!("heartsink serve, Ganeti mix, ingesting {:.0} heartbeats/s", accepted as f64 / elapsed),
        &hs,
        hs_cpu,
    ));
    lines.push(row("heartsink serve, AMPHORA_HEALTH (heartsink only)", &health, health_cpu));
    match &ganeti {
        Some((g, c)) => lines.push(row("ganeti-confd 3.0.2, Ganeti mix", g, *c)),
        None => lines.push(format!("| ganeti-confd: skipped ({}) | | | | | |", skipped.as_deref().unwrap_or(""))),
    }
    if let Some(r) = ratio {
        lines.push(String::new());
        lines.push(format!("confd ratio heartsink / ganeti-confd: {r:.1}× (target ≥ {TARGET_RATIO:.0}×)"));
        if let Some(c) = ratio_cpu {
            lines.push(format!(
                "per CPU-second of each server: {c:.1}× (serve's CPU includes its heartbeat ingest meanwhile)"
            ));
        }
    }
    lines.push(String::new());
    lines.extend(stage_lines(&stages));
    Ok((doc, lines))
}

/// The confd stage table's Markdown lines.
fn stage_lines(t: &ConfdStageTable) -> Vec<String> {
    let header = format!(
        "confd stage (thread CPU ns per reply, median of 3; Ganeti mix, {} requests of {:.0} B, replies of {:.0} B)",
        t.requests, t.request_bytes, t.reply_bytes
    );
    let mut lines = super::stages::markdown(&header, &t.rows());
    lines.push(String::new());
    let ratio = match t.floor_ratio_over_ganeti {
        Some(r) => format!("{r:.1}× ganeti-confd's replies per CPU-second"),
        None => "ganeti-confd not measured".to_owned(),
    };
    lines.push(format!(
        "confd kernel floor: {:.0} ns per reply = at most {:.0} replies per CPU-second with zero user-space work ({ratio}: the highest ratio a server doing one recv and one send per reply reaches here)",
        t.kernel_floor_ns, t.floor_replies_per_cpu_second
    ));
    lines
}
