//! The `heartsink` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use heartsink::config::{LogFormat, Overrides};
use heartsink::daemon::{self, ServeArgs};
use heartsink::load::{Faults, LoadConfig, Shape};

/// heartsink: a heartbeat sink for HMAC-signed UDP heartbeats (OpenStack Octavia wire format).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: receive heartbeats, keep health and stats, serve the admin API.
    Serve(Box<ServeCli>),
    /// Simulate a fleet of amphorae sending signed ver-3 heartbeats (bounded by --duration or --count).
    Load(LoadCli),
    /// Measure end to end against Octavia's own receive path, in one run (see the README).
    Bench(BenchCli),
    /// Ganeti confd client.
    #[command(subcommand)]
    Confd(ConfdCmd),
    /// Watch services (TCP/HTTP checks, stats) and send signed service heartbeats to the sinks.
    Agent(AgentCli),
    /// Cluster mode's tools.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Import a single-mode data directory's control-plane state (volumes, the scheduler's id
    /// counter, pools, locked scores, amphora settings) into a cluster's etcd, once, with every
    /// member stopped; then the directory starts as a member's. Prints what it imported (JSON).
    Import {
        /// The data directory (its daemon stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// An etcd client URL (repeatable).
        #[arg(long = "etcd", required = true)]
        etcd: Vec<String>,
        /// The cluster's key prefix in etcd (`[cluster] prefix`).
        #[arg(long, default_value = "/heartsink")]
        prefix: String,
    },
}

#[derive(clap::Args, Debug)]
struct AgentCli {
    /// TOML configuration file: sinks, key, rise/fall, [[service]] entries (see the README).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Run one round of checks, send the heartbeats, print them as a JSON array and exit.
    #[arg(long)]
    once: bool,
}

#[derive(Subcommand, Debug)]
enum ConfdCmd {
    /// Ask confd peers (heartsink or Ganeti) and print the merged answer as JSON; exit 3 on
    /// timeout, 4 on inconsistent answers.
    Query {
        /// A peer, IP[:PORT] (repeatable; one port for all, default 1814).
        #[arg(long = "peer", required = true)]
        peers: Vec<String>,
        /// The confd HMAC key file (its raw bytes, trailing newline included, are the key).
        #[arg(long)]
        key_file: PathBuf,
        /// Peers to ask: 0 = Ganeti's default (up to 6), -1 = all, N = that many.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        coverage: i64,
        /// Seconds to wait for the quorum.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Request type: a name (ping, cluster-master, node-role-by-name, …) or 0–11.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The query: a string, or a JSON object {"0": link, "1": ip, "2": [ips], "3": [fields]}.
        query: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct BenchCli {
    /// Directory for bench.json, bench.svg and the logs.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Simulated amphorae.
    #[arg(long, default_value_t = 1000)]
    amphorae: u64,
    /// Skip the Octavia measurements.
    #[arg(long)]
    skip_octavia: bool,
    /// Scale mode, one fresh daemon per size (comma-separated, e.g. 10000,100000,1000000): the
    /// fill of N senders (time, rate, drops), 30 s at 20,000 heartbeats/s spread over them with
    /// heartbeat_interval = N/20000 s (RSS per amphora, control tick and health check maxima,
    /// store writes/s, receive-to-applied p99, drops, CPU per heartbeat, false failovers), then a
    /// SIGTERM restart under that load (restart time, RSS, kernel drops, failovers). Writes
    /// OUT/scale.json and prints a Markdown table.
    #[arg(long, value_name = "N[,N…]", value_delimiter = ',')]
    senders: Vec<u64>,
    /// Only run the in-process pipeline on N heartbeats (for the instruction-count gate).
    #[arg(long, value_name = "N")]
    pipeline_only: Option<u64>,
    /// Offered-load steps, as fractions of the saturated rate.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.2,0.5,0.8,1.0")]
    steps: Vec<f64>,
    /// Run only the confd section (heartsink serve vs the real ganeti-confd).
    #[arg(long)]
    confd_only: bool,
    /// Skip the real ganeti-confd in the confd section.
    #[arg(long)]
    skip_ganeti: bool,
    /// Heartbeats per second sent to heartsink while its confd is measured.
    #[arg(long, default_value_t = 20000.0)]
    ingest_rate: f64,
    /// confd load generator threads.
    #[arg(long, default_value_t = 2)]
    confd_threads: usize,
    /// confd requests outstanding per load generator thread.
    #[arg(long, default_value_t = 64)]
    confd_window: usize,
}

#[derive(clap::Args, Debug)]
struct LoadCli {
    /// Where to send heartbeats (repeatable: each amphora sends to the targets in turn,
    /// round-robin, as an amphora does over Octavia's controller_ip_port_list).
    #[arg(long = "target", value_name = "IP:PORT", default_value = "127.0.0.1:5555")]
    targets: Vec<SocketAddr>,
    /// Heartbeat key.
    #[arg(long, default_value = "insecure")]
    key: String,
    /// Simulated amphorae (distinct ids, spread over up to 256 source ports per thread).
    #[arg(long, default_value_t = 1000)]
    amphorae: u64,
    /// Listeners per amphora.
    #[arg(long, default_value_t = 1)]
    listeners: u32,
    /// Pools per amphora.
    #[arg(long, default_value_t = 1)]
    pools: u32,
    /// Members per pool.
    #[arg(long, default_value_t = 3)]
    members: u32,
    /// Heartbeats per second over all threads, or `max`.
    #[arg(long, default_value = "max")]
    rate: String,
    /// Stop after this many seconds (default 10 when --count is not given).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Stop after this many packets.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Sender threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Percent of packets with a malformed (non-hex) tag.
    #[arg(long, default_value_t = 0.0)]
    bad_tag_pct: f64,
    /// Percent of packets of random bytes.
    #[arg(long, default_value_t = 0.0)]
    garbage_pct: f64,
    /// Percent of packets that repeat the previous good packet.
    #[arg(long, default_value_t = 0.0)]
    replay_pct: f64,
    /// Percent of signed packets that inflate to 2 MiB (past any sane cap).
    #[arg(long, default_value_t = 0.0)]
    oversize_pct: f64,
    /// Percent of packets signed with a wrong key.
    #[arg(long, default_value_t = 0.0)]
    wrong_key_pct: f64,
    /// First sequence number of every amphora.
    #[arg(long, default_value_t = 0)]
    first_seq: u64,
    /// Seed of the ids and random choices (same seed, same ids).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Build every packet before sending (needs --count); packets then carry no send time.
    #[arg(long)]
    prebuilt: bool,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
}

fn load(l: LoadCli) -> ExitCode {
    let rate = match l.rate.as_str() {
        "max" => None,
        r => match r.parse::<f64>() {
            Ok(v) => Some(v),
            Err(_) => {
                eprintln!("heartsink load: --rate takes a number or `max`");
                return ExitCode::from(2);
            }
        },
    };
    let duration = match (l.duration, l.count) {
        (Some(d), _) if d.is_finite() && d > 0.0 => Some(std::time::Duration::from_secs_f64(d)),
        (Some(_), _) => {
            eprintln!("heartsink load: --duration must be positive");
            return ExitCode::from(2);
        }
        (None, Some(_)) => None,
        (None, None) => Some(std::time::Duration::from_secs(10)),
    };
    let cfg = LoadConfig {
        targets: l.targets,
        key: l.key,
        amphorae: l.amphorae,
        shape: Shape { listeners: l.listeners, pools: l.pools, members: l.members },
        rate,
        duration,
        count: l.count,
        threads: l.threads,
        faults: Faults {
            bad_tag: l.bad_tag_pct,
            garbage: l.garbage_pct,
            replay: l.replay_pct,
            oversize: l.oversize_pct,
            wrong_key: l.wrong_key_pct,
        },
        allow_remote: l.allow_remote,
        seed: l.seed,
        first_seq: l.first_seq,
        prebuilt: l.prebuilt,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    match heartsink::load::run(&cfg, &stop, true) {
        Ok(r) => {
            if l.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                eprintln!("load: sent {} in {:.2} s ({:.0}/s), {} errors", r.total, r.duration_s, r.rate, r.errors);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heartsink load: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(clap::Args, Debug)]
struct ServeCli {
    /// TOML configuration file (every key optional; see the README).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address for heartbeats (port 0: any free port) [default: 127.0.0.1:5555].
    #[arg(long, value_name = "IP:PORT")]
    heartbeat_addr: Option<SocketAddr>,
    /// HTTP address of the admin API [default: 127.0.0.1:9555].
    #[arg(long, value_name = "IP:PORT")]
    admin_addr: Option<SocketAddr>,
    /// Admin API bearer tokens, one per line as `ROLE NAME TOKEN` (ROLE: read or admin; `#`
    /// starts a comment); re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    admin_tokens_file: Option<PathBuf>,
    /// Serve the admin API over HTTPS with this PEM certificate chain (re-read on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The PEM private key of --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Serve the admin API on a non-loopback address without tokens (refused otherwise).
    #[arg(long)]
    admin_insecure: bool,
    /// An accepted heartbeat key (repeatable; all are accepted). Replaces the file's keys.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
    /// A file with one key per line, re-read on SIGHUP (repeatable).
    #[arg(long = "key-file", value_name = "FILE")]
    key_files: Vec<PathBuf>,
    /// Worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Receive threads (SO_REUSEPORT sockets); 0: each worker reads its own socket [default: 0].
    #[arg(long, value_name = "N")]
    rx_threads: Option<usize>,
    /// SO_RCVBUF to ask for per heartbeat socket, bytes [default: 33554432].
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<usize>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or heartsink=debug.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Data directory of the durable state (default ./heartsink-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// confd UDP address, IP:PORT (default 127.0.0.1:1814; port 0: any free port).
    #[arg(long, value_name = "IP:PORT")]
    confd_addr: Option<SocketAddr>,
    /// confd HMAC key file: its raw bytes, trailing newline included, are the key (repeatable).
    #[arg(long = "confd-key-file", value_name = "FILE")]
    confd_key_files: Vec<PathBuf>,
    /// A Ganeti config.data to answer confd request types 0–11 from.
    #[arg(long, value_name = "FILE")]
    confd_config: Option<PathBuf>,
    /// Do not serve confd.
    #[arg(long)]
    no_confd: bool,
    /// If the database is unreadable or corrupt, move it aside to <file>.corrupt-<unix time>
    /// and start with an empty store (without it, such a store is refused).
    #[arg(long)]
    fresh_store: bool,
    /// Serve with the built-in key "insecure" even on a non-loopback heartbeat or confd address
    /// (refused otherwise).
    #[arg(long)]
    allow_insecure_key: bool,
    /// Cluster mode: an etcd client URL (repeatable; replaces `[cluster] etcd`).
    #[arg(long = "etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// Cluster mode: this member's node name (default: `[cluster] node`, else the host name).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(s) => {
            let args = ServeArgs {
                config: s.config,
                overrides: Overrides {
                    heartbeat_addr: s.heartbeat_addr,
                    admin_addr: s.admin_addr,
                    keys: s.keys,
                    key_files: s.key_files,
                    workers: s.workers,
                    rx_threads: s.rx_threads,
                    rcvbuf: s.rcvbuf,
                    log_format: s.log_format,
                    log_level: s.log_level,
                    data_dir: s.data_dir,
                    confd_addr: s.confd_addr,
                    confd_key_files: s.confd_key_files,
                    confd_config: s.confd_config,
                    no_confd: s.no_confd,
                    allow_insecure_key: s.allow_insecure_key,
                    etcd: s.etcd,
                    node: s.node,
                    admin_tokens_file: s.admin_tokens_file,
                    admin_tls_cert: s.admin_tls_cert,
                    admin_tls_key: s.admin_tls_key,
                    admin_insecure: s.admin_insecure,
                },
                fresh_store: s.fresh_store,
            };
            match daemon::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heartsink: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Load(l) => load(l),
        Command::Agent(a) => {
            match heartsink::agent::run(&heartsink::agent::AgentArgs { config: a.config, once: a.once }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heartsink agent: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Cluster(ClusterCmd::Import { data_dir, etcd, prefix }) => {
            let cfg = heartsink::cluster::ClusterConfig { etcd, prefix, ..Default::default() };
            match heartsink::cluster::import::import(&data_dir, &cfg) {
                Ok(found) => {
                    println!("{}", serde_json::to_string(&found).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("heartsink cluster import: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Confd(ConfdCmd::Query { peers, key_file, coverage, timeout, kind, query }) => {
            let timeout = std::time::Duration::from_secs_f64(timeout.clamp(0.01, 3600.0));
            match heartsink::confd::cli::query(&peers, &key_file, &kind, query.as_deref(), coverage, timeout) {
                Ok((doc, code)) => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                    ExitCode::from(code)
                }
                Err(e) => {
                    eprintln!("heartsink confd query: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench(b) => {
            let args = heartsink::bench::BenchArgs {
                out: b.out,
                seconds: b.seconds,
                amphorae: b.amphorae,
                skip_octavia: b.skip_octavia,
                senders: b.senders,
                pipeline_only: b.pipeline_only,
                steps: b.steps,
                confd_only: b.confd_only,
                skip_ganeti: b.skip_ganeti,
                ingest_rate: b.ingest_rate,
                confd_threads: b.confd_threads,
                confd_window: b.confd_window,
            };
            match heartsink::bench::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heartsink bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
