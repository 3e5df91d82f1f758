//! The daemon: wires the layers together for `heartsink serve` and runs their lifecycle. It is
//! the one place that knows every layer: it builds the engine (data plane), the control plane
//! and the surfaces (admin API, confd responder) from one validated configuration, starts them
//! in order, fans a reload out to each, and stops them in order.
//!
//! Start order: signals; configuration validated in full (nothing binds before); the engine's
//! shards; the durable state restored into them; the heartbeat and lane sockets bound; the
//! control thread; the workers and rx threads (reading the sockets at once); the admin API. A
//! restore of a million amphorae thus never leaves a bound socket unread, and the start-up
//! grace counts from the end of the restore.
//!
//! Start: signals are registered first (so a SIGHUP never kills a starting daemon), then the
//! sockets are bound and the threads started, then exactly one JSON line goes to stdout with
//! the bound addresses; logs go to stderr. SIGHUP re-reads the configuration file and key files
//! and swaps the keyring and reloadable settings atomically (no packet is lost: a batch uses
//! one keyring, the next batch the new one), and the admin API's tokens and TLS certificate
//! (a bad tokens file or certificate fails the reload: the running ones stay); settings that
//! need new sockets or threads are reported as needing a restart. SIGTERM or SIGINT stop gracefully: stop receiving after one
//! last drain of the socket buffer, apply everything already received, flush the durable state,
//! exit 0; a stop that takes longer than `service.graceful_shutdown_timeout` exits 1.

use std::path::PathBuf;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::api::auth::AdminAuth;
use crate::api::tls::AdminTls;
use crate::api::{AdminOptions, AdminServer, ApiContext, KeysInfo};
use crate::confd::server::Confd;
use crate::config::{Config, LogFormat, Overrides, Validated};
use crate::control::{Command, Control, ExtraTask, Parts, Published};
use crate::engine::{Clock, Engine, LaneSpec, SystemClock};
use crate::proto::keyring::Keyring;

/// Where the configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct ServeArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// Flags that override the file.
    pub overrides: Overrides,
    /// `--fresh-store`: an unreadable or corrupt database is moved aside
    /// (`<file>.corrupt-<unix time>`) and the daemon starts empty, instead of refusing to start.
    pub fresh_store: bool,
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    let _ = match cfg.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn keys_info(ring: &Keyring, insecure: bool) -> KeysInfo {
    KeysInfo {
        generation: ring.generation(),
        fingerprints: ring.keys().iter().map(|k| k.fingerprint().to_owned()).collect(),
        insecure_default: insecure,
    }
}

fn warn_insecure(v: &Validated) {
    if v.insecure_keys {
        tracing::warn!(
            "no heartbeat key configured: using the insecure default key \"insecure\"; set --key or --key-file"
        );
    }
    if v.insecure_confd && v.config.confd.enabled {
        tracing::warn!(
            "no confd key file configured: using the insecure default key \"insecure\"; set --confd-key-file"
        );
    }
    for w in &v.warnings {
        tracing::warn!("{w}");
    }
}

#[derive(serde::Serialize)]
struct Listening {
    event: &'static str,
    heartbeat: String,
    admin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    confd: Option<String>,
    data_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let v = Validated::load(args.config.as_deref(), &args.overrides)?;
    v.check_exposure(v.config.heartbeat.addr, v.config.confd.enabled.then_some(v.config.confd.addr))?;
    v.check_admin_exposure(v.config.admin.addr)?;
    init_logging(&v.config);
    warn_insecure(&v);
    warn_admin(&v.config.admin, &v.admin_tokens);
    let admin_auth = Arc::new(AdminAuth::new(v.admin_tokens.clone(), v.config.admin.metrics_auth));
    let admin_tls = match v.admin_tls.clone() {
        Some(pair) => Some(Arc::new(AdminTls::new(pair)?)),
        None => None,
    };
    warn_liveness(&v.config.liveness);
    let keyring = v.keyring(0);
    let mut in_use = v.keys_in_use();
    let info = keys_info(&keyring, v.insecure_keys);
    let mut cfg = v.config;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let published = Arc::new(Published::new(clock.now_ns()));
    // Cluster mode: confd's heartsink types and the amphora list come from the leader's view.
    published.clustered.store(cfg.cluster.enabled(), std::sync::atomic::Ordering::Relaxed);
    // Without a part from the leader for two lease times there is no leader: lists are then
    // this member's own.
    let fresh_ns = (2.0 * cfg.cluster.lease_ttl as f64 * 1e9) as u64;
    published.view_fresh_ns.store(fresh_ns, std::sync::atomic::Ordering::Relaxed);

    // The data plane: shards and rings, no socket and no thread yet.
    let ecfg = cfg.engine(keyring);
    let confd = Arc::new(Confd::new(v.confd, ecfg.workers));
    let mut lanes = Vec::new();
    if cfg.confd.enabled {
        lanes.push(LaneSpec {
            name: "confd",
            addr: cfg.confd.addr,
            rcvbuf: 4 << 20,
            factory: confd.lane(published.clone(), clock.clone()),
        });
    }
    let mut engine = Engine::new(ecfg, lanes, clock.clone())?;
    let outputs = engine.take_outputs().ok_or("engine outputs taken twice")?;

    // Cluster mode: the etcd client and the leader-write channel first (the failover threads
    // and the store are wired to them); its threads start once the addresses are bound.
    let cluster_shared = if cfg.cluster.enabled() {
        Arc::new(crate::control::cluster::Shared::new(true, cfg.cluster.node.clone(), cfg.cluster.etcd.clone()))
    } else {
        crate::control::cluster::Shared::single()
    };
    let prepared = if cfg.cluster.enabled() {
        Some(crate::cluster::agent::Prepared::new(cfg.cluster.clone(), cluster_shared.clone())?)
    } else {
        None
    };
    let (cluster_tx, cluster_rx) = crossbeam::channel::unbounded();

    // The control plane: restores the durable state into the shards before any packet.
    let mut ccfg = cfg.control();
    ccfg.fresh_store = args.fresh_store;
    let mut parts = Parts::open_claiming(&ccfg, prepared.as_ref().map(|p| p.claim()))?;
    if let Some(p) = &prepared {
        // A data directory with single-mode state is refused (import it explicitly); a fresh
        // one is marked as this cluster's.
        if let Some(local) = parts.durable.as_mut() {
            let loaded = local.load()?;
            let dir = ccfg.data_dir.clone().unwrap_or_default();
            match crate::cluster::import::check(&loaded, &cfg.cluster, &dir) {
                Ok(Some(mark)) => local.submit(mark, None, false),
                Ok(None) => {}
                Err(why) => return Err(why.into()),
            }
        }
        parts.durable = Some(p.durable(parts.durable.take()));
        let lock = std::mem::replace(&mut parts.lease, Box::new(crate::control::volumes::AlwaysLease));
        parts.lease = Box::new(crate::control::cluster::ClusterLease(cluster_shared.clone(), lock));
    }
    let mut control = Control::new(ccfg, clock.clone(), engine.shared().clone(), published.clone(), parts)?;
    control.set_cluster(cluster_shared.clone(), cluster_rx, prepared.as_ref().map(|p| p.writes()));
    control.add_task(ExtraTask { name: "confd_config_watch", spacing_ns: 1_000_000_000, run: Box::new(confd.watch()) });
    let commands = control.commands();
    // The sockets are bound only now, after the restore, and read at once: no heartbeat waits
    // in a socket nobody reads, and the start-up grace (counted from the restore's end) is not
    // eaten by it.
    engine.bind_sockets()?;
    let control_thread = crate::control::spawn(control, outputs)?;
    engine.start()?;

    // The surfaces.
    let ctx = Arc::new(ApiContext {
        engine: engine.shared().clone(),
        control: published,
        commands,
        confd: confd.clone(),
        keys: arc_swap::ArcSwap::from_pointee(info),
        cluster: crate::api::ClusterLink {
            shared: cluster_shared.clone(),
            input: prepared.is_some().then(|| cluster_tx.clone()),
            clock: clock.clone(),
        },
    });
    let options = AdminOptions { limits: cfg.admin.limits(), auth: admin_auth.clone(), tls: admin_tls.clone() };
    let admin = AdminServer::start_with(cfg.admin.addr, ctx.clone(), options)
        .map_err(|e| format!("cannot bind the admin socket to {}/tcp: {e}", cfg.admin.addr))?;

    let agent = match prepared {
        Some(p) => {
            let me = crate::control::cluster::Member {
                node: cfg.cluster.node.clone(),
                heartbeat: engine.local_addr().to_string(),
                admin: admin.local_addr().to_string(),
                confd: engine.lane_addr("confd").map(|a| a.to_string()),
                joined: 0,
                ready: true,
            };
            let wiring = crate::cluster::agent::Wiring {
                me,
                control: cluster_tx,
                clock: clock.clone(),
                engine: engine.shared().clone(),
                keys: engine.shared().pipeline.keyring.clone(),
                published: ctx.control.clone(),
            };
            Some(p.start(wiring)?)
        }
        None => None,
    };
    let line = Listening {
        event: "listening",
        heartbeat: engine.local_addr().to_string(),
        admin: admin.local_addr().to_string(),
        confd: engine.lane_addr("confd").map(|a| a.to_string()),
        data_dir: cfg.store.data_dir.display().to_string(),
        node: cfg.cluster.enabled().then(|| cfg.cluster.node.clone()),
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        out.flush()?;
    }
    let rb = engine.shared().rcvbuf();
    tracing::info!(
        heartbeat = %engine.local_addr(),
        admin = %admin.local_addr(),
        admin_tls = admin_tls.is_some(),
        admin_tokens = admin_auth.tokens().len(),
        workers = engine.shared().workers.len(),
        rcvbuf_requested = rb.requested,
        rcvbuf_effective = rb.effective,
        "heartsink serving"
    );
    if rb.requested > 0 && rb.effective < rb.requested {
        tracing::warn!(
            requested = rb.requested,
            effective = rb.effective,
            "the kernel granted a smaller receive buffer than asked (net.core.rmem_max)"
        );
    }

    let mut generation = 0;
    for sig in signals.forever() {
        if sig != SIGHUP {
            tracing::info!(signal = sig, "stopping");
            break;
        }
        // The same validation as at start; a failure keeps everything running as it is.
        let running = (engine.local_addr(), engine.lane_addr("confd"));
        let new = match Validated::load(args.config.as_deref(), &args.overrides)
            // Exposure first: its message names the socket and the address at risk.
            .and_then(|new| new.check_exposure(running.0, running.1).map(|()| new))
            .and_then(|new| new.check_reload(&in_use).map(|()| new))
        {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running configuration");
                continue;
            }
        };
        generation += 1;
        warn_insecure(&new);
        let restart_needed = restart_needed(&cfg, &new.config);
        if !restart_needed.is_empty() {
            tracing::warn!(settings = ?restart_needed, "changed settings take effect only after a restart");
        }
        let keyring = new.keyring(generation);
        let info = keys_info(&keyring, new.insecure_keys);
        in_use = new.keys_in_use();
        confd.state.store(Arc::new(new.confd));
        engine.reload(keyring, new.config.settings());
        if let Err(e) = ctx.call(Command::Reload(Box::new(new.config.control()))) {
            tracing::error!(error = %e, "control settings not reloaded");
        }
        warn_secret_files(&new.config.admin);
        reload_admin(&admin_auth, admin_tls.as_deref(), new.admin_tokens, new.admin_tls, new.config.admin.metrics_auth);
        tracing::info!(generation, keys = ?info.fingerprints, "reloaded");
        ctx.keys.store(Arc::new(info));
        cfg = new.config;
    }
    // Graceful stop, bounded by graceful_shutdown_timeout (oslo: alarm, then _exit(1)).
    let limit = cfg.service.graceful_shutdown_timeout;
    if limit > 0.0 {
        let limit = std::time::Duration::from_secs_f64(limit);
        std::thread::Builder::new().name("stop-timer".into()).spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(timeout_s = limit.as_secs_f64(), "graceful stop took too long; exiting");
            std::process::exit(1);
        })?;
    }
    admin.stop();
    // A leader gives its lead and lease up first: a successor within one campaign round, while
    // this member still writes its state down.
    if let Some(a) = agent {
        a.stop();
    }
    let t = engine.shutdown();
    // The workers are gone, so the control thread applies their last changes and exits.
    let _ = control_thread.join();
    tracing::info!(
        received = t.received,
        accepted = t.accepted,
        dropped = t.dropped(),
        kernel_drops = t.kernel_drops,
        "stopped"
    );
    Ok(())
}

/// Warns of an admin API that others can reach without tokens (`insecure`), or whose tokens
/// travel in clear text.
fn warn_admin(a: &crate::config::AdminConfig, tokens: &crate::api::auth::Tokens) {
    warn_secret_files(a);
    if a.addr.ip().to_canonical().is_loopback() {
        return;
    }
    if tokens.is_empty() {
        tracing::warn!(addr = %a.addr, "the admin API is served without tokens on a non-loopback address (admin.insecure)");
    } else if a.tls_cert.is_none() {
        tracing::warn!(
            addr = %a.addr,
            "admin tokens travel in clear text on a non-loopback address: configure TLS (--admin-tls-cert, --admin-tls-key)"
        );
    }
}

/// Warns of a tokens file or TLS key that other users may read (at start and on reload).
fn warn_secret_files(a: &crate::config::AdminConfig) {
    use std::os::unix::fs::PermissionsExt;
    for (what, path) in [("admin.tokens_file", &a.tokens_file), ("admin.tls_key", &a.tls_key)] {
        let Some(path) = path else { continue };
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    setting = what,
                    file = %path.display(),
                    mode = format!("{mode:o}"),
                    "a secret file that other users may read: chmod 600 it"
                );
            }
        }
    }
}

/// Swaps the admin API's tokens and certificate after a successful reload. Tokens are never
/// turned off by a reload (a removed `tokens_file` keeps the running tokens until a restart);
/// TLS on or off takes a restart (reported with the other such settings).
fn reload_admin(
    auth: &AdminAuth,
    tls: Option<&AdminTls>,
    tokens: crate::api::auth::Tokens,
    pair: Option<crate::api::tls::CertPair>,
    metrics_auth: bool,
) {
    let running = auth.tokens();
    if tokens.is_empty() && !running.is_empty() {
        tracing::warn!(
            tokens = running.len(),
            "admin.tokens_file is no longer configured: the running tokens stay until a restart"
        );
        auth.replace((*running).clone(), metrics_auth);
    } else {
        if !tokens.is_empty() {
            tracing::info!(tokens = tokens.len(), "admin tokens reloaded");
        }
        auth.replace(tokens, metrics_auth);
    }
    if let (Some(tls), Some(pair)) = (tls, pair) {
        tls.replace(pair);
        tracing::info!("admin TLS certificate reloaded");
    }
}

/// Warns of liveness settings that work against the rules: a fleet going quiet is seen before
/// its first member is stale only when `heartbeat_timeout ≥ 3 × heartbeat_interval +
/// health_check_interval` (Octavia's 60 ≥ 33), and a timeout at or below the interval makes
/// every sender flap stale between two beats.
fn warn_liveness(l: &crate::control::liveness::LivenessConfig) {
    let floor = 3.0 * l.heartbeat_interval + l.health_check_interval;
    if l.heartbeat_timeout <= l.heartbeat_interval {
        tracing::warn!(
            heartbeat_timeout = l.heartbeat_timeout,
            heartbeat_interval = l.heartbeat_interval,
            "liveness.heartbeat_timeout is not above heartbeat_interval: every sender will go stale between two beats"
        );
    } else if l.heartbeat_timeout < floor {
        tracing::warn!(
            heartbeat_timeout = l.heartbeat_timeout,
            recommended_at_least = floor,
            "liveness.heartbeat_timeout is below 3 × heartbeat_interval + health_check_interval: a fleet going quiet may have members stale before the sink reads as blind"
        );
    }
}

/// The settings that changed between `old` and `new` and take effect only after a restart.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("heartbeat.addr", new.heartbeat.addr != old.heartbeat.addr),
        ("admin", new.admin.restart_part() != old.admin.restart_part()),
        ("heartbeat.workers", new.heartbeat.workers != old.heartbeat.workers),
        ("heartbeat.rx_threads", new.heartbeat.rx_threads != old.heartbeat.rx_threads),
        ("heartbeat.rcvbuf", new.heartbeat.rcvbuf != old.heartbeat.rcvbuf),
        ("heartbeat.busy_poll_us", new.heartbeat.busy_poll_us != old.heartbeat.busy_poll_us),
        ("heartbeat.so_busy_poll_us", new.heartbeat.so_busy_poll_us != old.heartbeat.so_busy_poll_us),
        ("heartbeat.max_datagram", new.heartbeat.max_datagram != old.heartbeat.max_datagram),
        ("log", new.log != old.log),
        ("confd.addr", new.confd.addr != old.confd.addr || new.confd.enabled != old.confd.enabled),
        ("confd.replay_cache", new.confd.replay_cache != old.confd.replay_cache),
        ("store.data_dir", new.store.data_dir != old.store.data_dir),
        ("registry.types", new.registry.types != old.registry.types),
        ("cluster", new.cluster != old.cluster),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}
