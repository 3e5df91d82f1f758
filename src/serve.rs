//! `heartsink serve`: the daemon's lifecycle around the engine.
//!
//! Start: signals are registered first (so a SIGHUP never kills a starting daemon), then the
//! sockets are bound and the threads started, then exactly one JSON line goes to stdout with
//! the bound addresses; logs go to stderr. SIGHUP re-reads the configuration file and key files
//! and swaps the keyring and reloadable settings atomically (no packet is lost: a batch uses
//! one keyring, the next batch the new one); settings that need new sockets or threads are
//! reported as needing a restart. SIGTERM or SIGINT stop gracefully: stop receiving after one
//! last drain of the socket buffer, apply everything already received, flush the durable state,
//! exit 0; a stop that takes longer than `service.graceful_shutdown_timeout` exits 1.

use std::path::PathBuf;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::api::{AdminServer, ApiContext, KeysInfo};
use crate::confd::proto::HmacKey;
use crate::confd::server::ConfdState;
use crate::config::{Config, LogFormat, Overrides};
use crate::engine::{Engine, SystemClock};
use crate::proto::keyring::Keyring;

/// Where the configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct ServeArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// Flags that override the file.
    pub overrides: Overrides,
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

fn load_keyring(cfg: &Config, generation: u64) -> Result<(Keyring, bool), crate::config::ConfigError> {
    let (keys, insecure) = cfg.keys()?;
    if insecure {
        tracing::warn!(
            "no heartbeat key configured: using the insecure default key \"insecure\"; set --key or --key-file"
        );
    }
    Ok((Keyring::from_strs(&keys, generation), insecure))
}

fn load_confd(cfg: &Config) -> Result<ConfdState, Box<dyn std::error::Error>> {
    let (keys, insecure) = cfg.confd_keys()?;
    if insecure && cfg.confd.enabled {
        tracing::warn!(
            "no confd key file configured: using the insecure default key \"insecure\"; set --confd-key-file"
        );
    }
    let keys = keys.iter().map(|k| HmacKey::new(k)).collect();
    Ok(ConfdState::load(keys, cfg.confd.config.clone())?)
}

#[derive(serde::Serialize)]
struct Listening {
    event: &'static str,
    heartbeat: String,
    admin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    confd: Option<String>,
    data_dir: String,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let mut cfg = Config::load(args.config.as_deref(), &args.overrides)?;
    init_logging(&cfg);
    let (keyring, insecure) = load_keyring(&cfg, 0)?;
    let info = keys_info(&keyring, insecure);
    let mut ecfg = cfg.engine(keyring);
    ecfg.confd = Arc::new(load_confd(&cfg)?);
    let engine = Engine::start(ecfg, Arc::new(SystemClock))?;
    let ctx = Arc::new(ApiContext { engine: engine.shared().clone(), keys: arc_swap::ArcSwap::from_pointee(info) });
    let admin = AdminServer::start_with(cfg.admin.addr, ctx.clone(), cfg.admin.limits())?;

    let line = Listening {
        event: "listening",
        heartbeat: engine.local_addr().to_string(),
        admin: admin.local_addr().to_string(),
        confd: engine.confd_addr().map(|a| a.to_string()),
        data_dir: cfg.store.data_dir.display().to_string(),
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
        out.flush()?;
    }
    let rb = engine.shared().rcvbuf;
    tracing::info!(
        heartbeat = %engine.local_addr(),
        admin = %admin.local_addr(),
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
        match Config::load(args.config.as_deref(), &args.overrides)
            .and_then(|new| load_keyring(&new, generation + 1).map(|k| (new, k)))
        {
            Ok((new, (keyring, insecure))) => {
                generation += 1;
                let restart_needed: Vec<&str> = [
                    ("heartbeat.addr", new.heartbeat.addr != cfg.heartbeat.addr),
                    ("admin", new.admin != cfg.admin),
                    ("heartbeat.workers", new.heartbeat.workers != cfg.heartbeat.workers),
                    ("heartbeat.rx_threads", new.heartbeat.rx_threads != cfg.heartbeat.rx_threads),
                    ("heartbeat.rcvbuf", new.heartbeat.rcvbuf != cfg.heartbeat.rcvbuf),
                    ("heartbeat.max_datagram", new.heartbeat.max_datagram != cfg.heartbeat.max_datagram),
                    ("log", new.log != cfg.log),
                    ("confd.addr", new.confd.addr != cfg.confd.addr || new.confd.enabled != cfg.confd.enabled),
                    ("store.data_dir", new.store.data_dir != cfg.store.data_dir),
                ]
                .into_iter()
                .filter_map(|(name, changed)| changed.then_some(name))
                .collect();
                if !restart_needed.is_empty() {
                    tracing::warn!(settings = ?restart_needed, "changed settings take effect only after a restart");
                }
                let info = keys_info(&keyring, insecure);
                match load_confd(&new) {
                    Ok(state) => engine.reload_confd(state),
                    Err(e) => tracing::error!(error = %e, "confd keys or configuration not reloaded"),
                }
                engine.reload(keyring, new.settings(), new.control());
                tracing::info!(generation, keys = ?info.fingerprints, "reloaded");
                ctx.keys.store(Arc::new(info));
                cfg = new;
            }
            Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
        }
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
    let t = engine.shutdown();
    tracing::info!(received = t.received, accepted = t.accepted, dropped = t.dropped(), "stopped");
    Ok(())
}
