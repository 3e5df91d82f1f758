//! `heartsink bench`: the end-to-end comparison, measured side by side in one run on this
//! machine.
//!
//! 1. **in-process bound**: the worker pipeline fed from memory on one thread;
//! 2. **heartsink end to end**: `serve` (a child process) fed by the load generator over
//!    loopback at the maximum rate: accepted heartbeats/s, kernel drops, and latency
//!    percentiles. The generator pre-builds its packets (real level-9 envelopes) so that
//!    sending costs only `sendmmsg` on this small machine; latency is then the daemon's
//!    receive-to-applied histogram, from kernel receive timestamps, which on loopback are taken
//!    inside the sender's `sendmmsg`: send-to-applied. Side by side: one receive thread
//!    (`--rx-threads 1`) at the maximum rate, and fresh daemons with `busy_poll_us = 50` and
//!    `so_busy_poll_us = 50` at the maximum rate and at 5 % and 80 % (`busy_poll_variants`);
//! 3. **Octavia 19.0.0's receive path** on the same kind of packets from the same generator
//!    (built at send time, carrying `hs_sent_ns` for the script's latency):
//!    `UDPStatusGetter.check()` with no-op update workers, and the bare `dorecv()`
//!    (`tests/interop/octavia_bench.py`, in the virtualenv `scripts/setup-octavia.sh` makes);
//! 4. the ratios, and a sweep of offered load (accepted rate and p99 latency per step, for
//!    heartsink and Octavia's `check()`) drawn as an SVG chart.
//!
//! 5. confd ([`confd`]): replies/s of `serve` (ingesting heartbeats at a fixed rate meanwhile)
//!    and of the real `ganeti-confd` on the same `config.data`, and their ratio;
//!    `--confd-only` runs just this section (merged into an existing bench.json), with its
//!    stage table ([`confd_stages`]): receive, verify+parse, answer+sign and send per reply,
//!    and the kernel floor they imply.
//!
//! `--senders N[,N…]` instead measures scale ([`scale`]): for each size, a fresh daemon is
//! filled with N senders (time, rate, drops), then held at 20,000 heartbeats/s spread over the
//! N senders for 30 s (RSS per tracked amphora, control tick and health check maxima, store
//! writes/s, receive-to-applied p99, drops, CPU per heartbeat, false failovers), then
//! restarted under that load (restart time, RSS after, kernel drops, failovers); the report is
//! `scale.json` and a Markdown table. `--pipeline-only N` runs just the
//! in-process pipeline on N heartbeats (the function `in_process_run`), for the instruction
//! count gate in `scripts/instructions.sh`.

mod chart;
pub mod confd;
pub mod confd_stages;
pub mod scale;
pub mod stages;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::{histogram, Pipeline, PipelineShared, Settings, Shards, SystemClock, WorkerCounters};
use crate::load::{Builder, LoadConfig, Shape};
use crate::proto::inflate::Backend;
use crate::proto::keyring::Keyring;

type Error = Box<dyn std::error::Error>;

/// The key the bench fleet signs with.
pub const KEY: &str = "heartsink-bench";

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Where the JSON and the chart go.
    pub out: PathBuf,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Simulated amphorae.
    pub amphorae: u64,
    /// Skip the Octavia measurements.
    pub skip_octavia: bool,
    /// Scale mode: one measurement per size, this many senders each (empty: not scale mode).
    pub senders: Vec<u64>,
    /// Just the in-process pipeline on this many heartbeats.
    pub pipeline_only: Option<u64>,
    /// Offered-load steps as fractions of heartsink's saturated rate.
    pub steps: Vec<f64>,
    /// Only the confd section.
    pub confd_only: bool,
    /// Skip the real ganeti-confd.
    pub skip_ganeti: bool,
    /// Heartbeats per second sent to heartsink during the confd measurements.
    pub ingest_rate: f64,
    /// confd load generator threads.
    pub confd_threads: usize,
    /// confd requests outstanding per load thread.
    pub confd_window: usize,
}

impl BenchArgs {
    fn confd(&self) -> confd::ConfdBenchArgs {
        confd::ConfdBenchArgs {
            seconds: self.seconds,
            amphorae: self.amphorae,
            ingest_rate: self.ingest_rate,
            threads: self.confd_threads,
            window: self.confd_window,
            skip_ganeti: self.skip_ganeti,
        }
    }
}

/// The repository (for the Octavia scripts).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Pre-builds `rounds` heartbeats for each of `amphorae` amphorae (round-major).
pub fn build_packets(amphorae: u64, rounds: u64) -> Vec<Vec<u8>> {
    let mut b = Builder::new(7, Shape::default(), KEY);
    let mut out = Vec::with_capacity((amphorae * rounds) as usize);
    for r in 0..rounds {
        for a in 0..amphorae {
            let mut p = Vec::with_capacity(400);
            b.heartbeat(&mut p, a, r, None, false);
            out.push(p);
        }
    }
    out
}

/// A single-threaded pipeline like a worker's.
pub fn pipeline() -> Pipeline {
    let shared = PipelineShared {
        keyring: Arc::new(ArcSwap::from_pointee(Keyring::from_strs(&[KEY], 0))),
        settings: Arc::new(ArcSwap::from_pointee(Settings::default())),
        shards: Arc::new(Shards::new(64)),
        clock: Arc::new(SystemClock),
        services: Default::default(),
    };
    Pipeline::new(shared, Backend::default(), Arc::new(WorkerCounters::default()), None)
}

/// Runs `packets` through `p` in batches of 64; returns heartbeats applied. Not inlined, so a
/// profiler (callgrind's `--toggle-collect=*in_process_run*`) can count exactly this.
#[inline(never)]
pub fn in_process_run(p: &mut Pipeline, packets: &[Vec<u8>]) -> u64 {
    feed(p, packets)
}

fn feed(p: &mut Pipeline, packets: &[Vec<u8>]) -> u64 {
    let now = crate::engine::Clock::now_ns(&SystemClock);
    let mut accepted = 0;
    for (i, chunk) in packets.chunks(64).enumerate() {
        accepted += p.process(chunk.iter().map(|x| &x[..]), now + i as u64).accepted;
        p.take_changes();
    }
    accepted
}

/// The in-process bound: heartbeats/s through one pipeline on one thread.
pub fn in_process_bound(amphorae: u64, rounds: u64) -> (f64, u64) {
    let packets = build_packets(amphorae, rounds + 1);
    let mut p = pipeline();
    let (warm, timed) = packets.split_at(amphorae as usize);
    feed(&mut p, warm);
    let t = Instant::now();
    let accepted = in_process_run(&mut p, timed);
    (accepted as f64 / t.elapsed().as_secs_f64(), accepted)
}

/// A `heartsink serve` child process.
struct Serve {
    child: Child,
    heartbeat: SocketAddr,
    admin: SocketAddr,
    confd: Option<SocketAddr>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(log: &Path, extra: &[&str]) -> Result<Serve, Error> {
    let exe = std::env::current_exe()?;
    // A fresh data directory per run: a bench measures an empty start, not a restore.
    let data_dir = log.with_extension("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut child = Command::new(exe)
        .args(["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--key", KEY])
        .args(["--rcvbuf", "33554432", "--log-level", "warn", "--confd-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line)?;
    let addr = |k: &str| -> Result<SocketAddr, Error> { Ok(v[k].as_str().ok_or("listening line")?.parse()?) };
    let confd = v["confd"].as_str().map(str::parse).transpose()?;
    Ok(Serve { heartbeat: addr("heartbeat")?, admin: addr("admin")?, confd, child })
}

fn get(admin: SocketAddr, path: &str) -> Result<Value, Error> {
    Ok(ureq::get(&format!("http://{admin}{path}")).timeout(Duration::from_secs(10)).call()?.into_json()?)
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// One measured step of heartsink end to end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    /// Offered rate (None = max).
    pub offered: Option<f64>,
    /// Rate the generator achieved.
    pub sent_rate: f64,
    /// Packets sent.
    pub sent: u64,
    /// Heartbeats applied.
    pub accepted: u64,
    /// Applied per second, from the first send to the last apply.
    pub accepted_rate: f64,
    /// Kernel drops during the step.
    pub kernel_drops: u64,
    /// Ring-full drops during the step.
    pub ring_full: u64,
    /// Send-to-applied latency percentiles, µs.
    pub p50_us: Option<f64>,
    /// p99.
    pub p99_us: Option<f64>,
    /// p99.9.
    pub p999_us: Option<f64>,
    /// CPU seconds (user + system) `serve` used over the step, from its `/proc` stat.
    pub cpu_s: f64,
    /// Heartbeats applied per CPU-second of `serve`: the fair figure on a shared machine.
    pub per_cpu_second: f64,
    /// Context switches of `serve`'s threads per heartbeat applied (voluntary, involuntary).
    pub ctxt_per_heartbeat: (f64, f64),
}

fn latency(admin: SocketAddr) -> Result<Vec<u64>, Error> {
    let v = get(admin, "/v1/latency")?;
    Ok(v["receive_to_applied"].as_array().ok_or("latency counts")?.iter().map(|c| c.as_u64().unwrap_or(0)).collect())
}

/// Packets a pre-built heartsink run needs: the offered rate (or 250 k/s for max) × seconds.
fn prebuilt(mut cfg: LoadConfig, seconds: f64) -> LoadConfig {
    let rate = cfg.rate.unwrap_or(250_000.0);
    cfg.count = Some((rate * seconds) as u64);
    cfg.duration = Some(Duration::from_secs_f64(seconds * 3.0));
    cfg.prebuilt = true;
    cfg
}

fn measure_heartsink(s: &Serve, mut cfg: LoadConfig, run: u64) -> Result<Step, Error> {
    cfg.targets = vec![s.heartbeat];
    cfg.first_seq = run * 1_000_000_000;
    let before = get(s.admin, "/v1/stats")?;
    let lat0 = latency(s.admin)?;
    let pid = s.child.id();
    let (cpu0, ctx0) = (crate::io::process_cpu_s(pid), crate::io::process_ctxt_switches(pid));
    let t0 = Instant::now();
    let report = crate::load::run(&cfg, &AtomicBool::new(false), false)?;
    let t0 = t0 + Duration::from_secs_f64(report.build_s);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_received = u64::MAX;
    let after = loop {
        let s2 = get(s.admin, "/v1/stats")?;
        let received = u(&s2, &["received"]);
        let processed = u(&s2, &["accepted"]) + u(&s2, &["dropped_total"]);
        if (received == processed && received == last_received) || Instant::now() > deadline {
            break s2;
        }
        last_received = received;
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t0.elapsed().as_secs_f64();
    // From the first send to the last apply (plus one 20 ms poll of an idle daemon).
    let (cpu1, ctx1) = (crate::io::process_cpu_s(pid), crate::io::process_ctxt_switches(pid));
    let lat1 = latency(s.admin)?;
    let diff: Vec<u64> = lat1.iter().zip(&lat0).map(|(a, b)| a.saturating_sub(*b)).collect();
    let q = |x: f64| histogram::quantile(&diff, x).map(|ns| ns as f64 / 1000.0);
    let d = |path: &[&str]| u(&after, path).saturating_sub(u(&before, path));
    let accepted = d(&["accepted"]);
    let cpu_s = cpu1.zip(cpu0).map_or(0.0, |(b, a)| b - a);
    let per = |n: u64| if accepted > 0 { n as f64 / accepted as f64 } else { 0.0 };
    let ctxt = ctx1.zip(ctx0).map_or((0.0, 0.0), |(b, a)| (per(b.0.saturating_sub(a.0)), per(b.1.saturating_sub(a.1))));
    Ok(Step {
        cpu_s,
        per_cpu_second: if cpu_s > 0.0 { accepted as f64 / cpu_s } else { 0.0 },
        ctxt_per_heartbeat: ctxt,
        offered: cfg.rate,
        sent_rate: report.rate,
        sent: report.total,
        accepted,
        accepted_rate: accepted as f64 / elapsed,
        kernel_drops: d(&["kernel_drops"]),
        ring_full: d(&["dropped", "ring_full"]),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
    })
}

/// Octavia's result for one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OctaviaStep {
    /// `check` or `dorecv`.
    pub mode: String,
    /// Offered rate (None = max).
    pub offered: Option<f64>,
    /// Heartbeats processed.
    pub processed: u64,
    /// Processed per second.
    pub rate: f64,
    /// Latency p99, µs (send to processed).
    pub p99_us: Option<f64>,
    /// Latency p50, µs.
    pub p50_us: Option<f64>,
    /// CPU seconds of the Python process from its first to its last processed heartbeat.
    pub cpu_s: f64,
    /// Processed per CPU-second of the Python process.
    pub per_cpu_second: f64,
}

fn octavia_python() -> Result<PathBuf, Error> {
    let out = Command::new(repo().join("scripts/setup-octavia.sh")).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err("scripts/setup-octavia.sh failed".into());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("bin/python"))
}

fn measure_octavia(
    python: &Path,
    log: &Path,
    mode: &str,
    mut cfg: LoadConfig,
    seconds: f64,
) -> Result<OctaviaStep, Error> {
    use std::os::unix::process::CommandExt;
    // Its own process group, so that its worker processes go with it.
    let child = Command::new(python)
        .arg(repo().join("tests/interop/octavia_bench.py"))
        .args([mode, "--key", KEY, "--seconds", &format!("{seconds}"), "--idle-exit", "1.5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .process_group(0)
        .spawn()?;
    let mut child = GroupChild(child);
    let mut lines = BufReader::new(child.0.stdout.take().ok_or("no stdout")?).lines();
    let first: Value = serde_json::from_str(&lines.next().ok_or("octavia_bench.py printed nothing")??)?;
    let port = first["port"].as_u64().ok_or("no port")? as u16;
    cfg.targets = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    cfg.duration = Some(Duration::from_secs_f64(seconds + 0.5));
    crate::load::run(&cfg, &AtomicBool::new(false), false)?;
    // The script ends `--idle-exit` after the last packet.
    let result = lines.find_map(|l| {
        let v: Value = serde_json::from_str(&l.ok()?).ok()?;
        (v["event"] == "result").then_some(v)
    });
    drop(child);
    let r = result.ok_or("octavia_bench.py gave no result")?;
    Ok(OctaviaStep {
        mode: mode.into(),
        offered: cfg.rate,
        processed: r["processed"].as_u64().unwrap_or(0),
        rate: r["rate"].as_f64().unwrap_or(0.0),
        p99_us: r["latency_us"]["p99"].as_f64(),
        p50_us: r["latency_us"]["p50"].as_f64(),
        cpu_s: r["cpu_s"].as_f64().unwrap_or(0.0),
        per_cpu_second: r["per_cpu_second"].as_f64().unwrap_or(0.0),
    })
}

/// A child process killed with its whole process group when dropped.
struct GroupChild(Child);

impl Drop for GroupChild {
    fn drop(&mut self) {
        crate::io::kill_process_group(self.0.id());
        let _ = self.0.wait();
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map_or(0, |n| n.get()), "date": date})
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

/// Runs the bench.
pub fn run(args: &BenchArgs) -> Result<(), Error> {
    std::fs::create_dir_all(&args.out)?;
    if let Some(n) = args.pipeline_only {
        let amphorae = 1000.min(n.max(1));
        let packets = build_packets(amphorae, n.div_ceil(amphorae) + 1);
        let mut p = pipeline();
        let (warm, rest) = packets.split_at(amphorae as usize);
        // The first round registers the amphorae; the measured rounds are steady state.
        feed(&mut p, warm);
        let accepted = in_process_run(&mut p, &rest[..n as usize]);
        println!("{}", json!({"heartbeats": n, "accepted": accepted}));
        return Ok(());
    }
    if !args.senders.is_empty() {
        return scale::run(args);
    }
    if args.confd_only {
        let (section, lines) = confd::run(&args.confd(), &args.out)?;
        // Merged into the last full report, when there is one.
        let path = args.out.join("bench.json");
        let mut doc: Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        doc["confd"] = section;
        doc["confd_machine"] = machine();
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        for l in lines {
            println!("{l}");
        }
        println!("wrote {}", path.display());
        return Ok(());
    }
    let load = LoadConfig {
        amphorae: args.amphorae,
        rate: None,
        duration: Some(Duration::from_secs_f64(args.seconds)),
        key: KEY.into(),
        ..LoadConfig::default()
    };

    eprintln!("bench: in-process bound …");
    let (bound, _) = in_process_bound(args.amphorae, 100);
    eprintln!("bench: heartsink end to end at max rate …");
    let serve = start_serve(&args.out.join("serve.log"), &[])?;
    let e2e = measure_heartsink(&serve, prebuilt(load.clone(), args.seconds), 1)?;
    let saturated = e2e.accepted_rate;
    let mut steps = Vec::new();
    for (i, f) in args.steps.iter().enumerate() {
        let rate = (saturated * f).max(100.0);
        eprintln!("bench: heartsink at {rate:.0}/s …");
        let mut cfg = load.clone();
        cfg.rate = Some(rate);
        steps.push(measure_heartsink(&serve, prebuilt(cfg, args.seconds.min(3.0)), 2 + i as u64)?);
    }
    drop(serve);
    // Side by side: the same maximum-rate step with one receive thread handing batches to the
    // workers (`rx_threads = 1`) instead of each worker reading its own socket (the default).
    eprintln!("bench: heartsink end to end at max rate, one rx thread …");
    let serve = start_serve(&args.out.join("serve-rx-thread.log"), &["--rx-threads", "1"])?;
    let e2e_rx_thread = measure_heartsink(&serve, prebuilt(load.clone(), args.seconds), 1)?;
    drop(serve);
    let busy = busy_poll_variants(args, &load, saturated)?;

    let mut octavia = Vec::new();
    let mut octavia_steps = Vec::new();
    if !args.skip_octavia {
        let python = octavia_python()?;
        for mode in ["check", "dorecv"] {
            eprintln!("bench: Octavia {mode}() at max rate …");
            octavia.push(measure_octavia(
                &python,
                &args.out.join(format!("octavia-{mode}.log")),
                mode,
                load.clone(),
                args.seconds,
            )?);
        }
        for s in &steps {
            eprintln!("bench: Octavia check() at {:.0}/s …", s.offered.unwrap_or(0.0));
            let mut cfg = load.clone();
            cfg.rate = s.offered;
            octavia_steps.push(measure_octavia(
                &python,
                &args.out.join("octavia-step.log"),
                "check",
                cfg,
                args.seconds.min(3.0),
            )?);
        }
    }
    eprintln!("bench: stage table …");
    let stage_packets = build_packets(args.amphorae, 20);
    let serve_s = if e2e.accepted > 0 { e2e.cpu_s / e2e.accepted as f64 } else { 0.0 };
    let stage_table = stages::measure(&stage_packets, args.amphorae as usize, KEY, serve_s);
    let (confd_section, confd_lines) = confd::run(&args.confd(), &args.out)?;
    let check = octavia.iter().find(|o| o.mode == "check").map(|o| o.rate);
    let dorecv = octavia.iter().find(|o| o.mode == "dorecv").map(|o| o.rate);
    let at80 = steps.iter().zip(&args.steps).find(|(_, f)| (**f - 0.8).abs() < 1e-9).map(|(s, _)| s.clone());
    let per_cpu = |mode: &str| octavia.iter().find(|o| o.mode == mode).map(|o| o.per_cpu_second).filter(|r| *r > 0.0);
    let ratios = json!({
        "heartsink_over_octavia_dorecv_per_cpu_second": per_cpu("dorecv").map(|d| e2e.per_cpu_second / d),
        "heartsink_over_octavia_check_per_cpu_second": per_cpu("check").map(|c| e2e.per_cpu_second / c),
        "e2e_over_in_process": e2e.accepted_rate / bound,
        "heartsink_over_octavia_check": check.map(|c| e2e.accepted_rate / c),
        "heartsink_over_octavia_dorecv": dorecv.map(|d| e2e.accepted_rate / d),
    });
    let doc = json!({
        "machine": machine(),
        "in_process_bound": bound,
        "heartsink_e2e": e2e,
        "heartsink_e2e_rx_thread": e2e_rx_thread,
        "heartsink_busy_poll": busy.iter().map(|v| json!({"config": v.0, "max_rate": v.1, "steps": v.2})).collect::<Vec<_>>(),
        "heartsink_steps": steps,
        "at_80_percent": at80,
        "octavia": octavia,
        "octavia_check_steps": octavia_steps,
        "ratios": ratios,
        "stages_ns_per_heartbeat": stage_table,
        "confd": confd_section,
    });
    std::fs::write(args.out.join("bench.json"), serde_json::to_vec_pretty(&doc)?)?;
    chart::draw(&args.out.join("bench.svg"), &steps, &octavia_steps)?;

    println!("| measurement | heartbeats/s | per CPU-second | p50 µs | p99 µs | p99.9 µs | kernel drops | ctx switches/hb (vol, invol) |");
    println!("|---|---|---|---|---|---|---|---|");
    println!("| in-process bound (1 thread) | {bound:.0} | {bound:.0} | | | | | |");
    for (name, s) in std::iter::once(("max rate".to_owned(), &e2e))
        .chain(std::iter::once(("max rate, one rx thread (`--rx-threads 1`)".to_owned(), &e2e_rx_thread)))
        .chain(steps.iter().map(|s| (format!("at {:.0}/s offered", s.offered.unwrap_or(0.0)), s)))
        .chain(busy.iter().flat_map(|(config, max, at)| {
            std::iter::once((format!("max rate, `{config}`"), max))
                .chain(at.iter().map(move |s| (format!("at {:.0}/s offered, `{config}`", s.offered.unwrap_or(0.0)), s)))
        }))
    {
        println!(
            "| heartsink end to end, {name} | {:.0} | {:.0} | {} | {} | {} | {} | {:.3}, {:.3} |",
            s.accepted_rate,
            s.per_cpu_second,
            fmt_opt(s.p50_us),
            fmt_opt(s.p99_us),
            fmt_opt(s.p999_us),
            s.kernel_drops,
            s.ctxt_per_heartbeat.0,
            s.ctxt_per_heartbeat.1
        );
    }
    for o in &octavia {
        println!(
            "| Octavia {}(), max rate | {:.0} | {:.0} | {} | {} | | | |",
            o.mode,
            o.rate,
            o.per_cpu_second,
            fmt_opt(o.p50_us),
            fmt_opt(o.p99_us)
        );
    }
    for o in &octavia_steps {
        println!(
            "| Octavia check() at {:.0}/s offered | {:.0} | {:.0} | {} | {} | | | |",
            o.offered.unwrap_or(0.0),
            o.rate,
            o.per_cpu_second,
            fmt_opt(o.p50_us),
            fmt_opt(o.p99_us)
        );
    }
    println!();
    for l in confd_lines {
        println!("{l}");
    }
    println!();
    for l in stages::markdown("stage (thread CPU ns per heartbeat, median of 3)", &stage_table.rows()) {
        println!("{l}");
    }
    println!();
    println!("ratios: {ratios}");
    println!("wrote {} and {}", args.out.join("bench.json").display(), args.out.join("bench.svg").display());
    Ok(())
}

/// The receive options the issue asks to compare side by side with the default (a worker
/// sleeps in `epoll` as soon as its socket is empty): bounded busy-polling before sleeping
/// (`busy_poll_us`) and the kernel's `SO_BUSY_POLL`, each on a fresh `serve` at the maximum
/// rate and at 5 % and 80 % of the default's saturated rate. Each: (config line, max rate,
/// steps).
fn busy_poll_variants(
    args: &BenchArgs,
    load: &LoadConfig,
    saturated: f64,
) -> Result<Vec<(String, Step, Vec<Step>)>, Error> {
    let mut out = Vec::new();
    for (i, config) in ["busy_poll_us = 50", "so_busy_poll_us = 50"].into_iter().enumerate() {
        eprintln!("bench: heartsink with `{config}` …");
        let toml = args.out.join(format!("serve-busy-{i}.toml"));
        std::fs::write(&toml, format!("[heartbeat]\n{config}\n"))?;
        let log = args.out.join(format!("serve-busy-{i}.log"));
        let serve = start_serve(&log, &["--config", toml.to_str().ok_or("path not UTF-8")?])?;
        let max = measure_heartsink(&serve, prebuilt(load.clone(), args.seconds), 1)?;
        let mut steps = Vec::new();
        for (k, f) in [0.05, 0.8].into_iter().enumerate() {
            let mut cfg = load.clone();
            cfg.rate = Some((saturated * f).max(100.0));
            steps.push(measure_heartsink(&serve, prebuilt(cfg, args.seconds.min(3.0)), 2 + k as u64)?);
        }
        out.push((config.to_owned(), max, steps));
    }
    Ok(out)
}

/// Time from a sender's last heartbeat to its failover record: 100 amphorae beat for 3 s and
/// stop; heartbeat_timeout 5 s, health_check_interval 1 s (the delay is timeout + up to one
/// interval, whatever the values).
fn failover_delay(args: &BenchArgs) -> Result<Value, Error> {
    let cfg = args.out.join("failover-delay.toml");
    std::fs::write(
        &cfg,
        "[liveness]\nheartbeat_timeout = 5.0\nhealth_check_interval = 1.0\nstartup_grace = 0.0\npartition_min = 1000000\n",
    )?;
    let cfg_s = cfg.to_str().ok_or("path")?;
    let serve = start_serve(&args.out.join("serve-failover.log"), &["--config", cfg_s])?;
    let load = LoadConfig {
        targets: vec![serve.heartbeat],
        key: KEY.into(),
        amphorae: 100,
        rate: Some(500.0),
        duration: Some(Duration::from_secs(3)),
        seed: 11,
        ..LoadConfig::default()
    };
    crate::load::run(&load, &AtomicBool::new(false), true)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let v = get(serve.admin, "/v1/failovers?limit=1000")?;
        let r = v["failovers"].as_array().cloned().unwrap_or_default();
        if r.len() >= 100 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let gaps = |field: &str| {
        let mut d: Vec<f64> = records
            .iter()
            .filter_map(|r| Some((r[field].as_u64()?.saturating_sub(r["last_seen_ns"].as_u64()?)) as f64 / 1e9))
            .collect();
        d.sort_by(f64::total_cmp);
        let q = |p: f64| d.get(((d.len() as f64 - 1.0) * p).round() as usize).copied();
        json!({"min": q(0.0), "p50": q(0.5), "max": q(1.0)})
    };
    Ok(json!({
        "heartbeat_timeout_s": 5.0,
        "health_check_interval_s": 1.0,
        "failover_threads": 10,
        "records": records.len(),
        // Last refresh → declared stale (timeout + up to one check interval).
        "to_stale_s": gaps("stale_since_ns"),
        // Last refresh → failover record started (at most failover_threads per check).
        "to_record_s": gaps("created_ns"),
    }))
}
