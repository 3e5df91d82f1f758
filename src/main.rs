//! The `heartsink` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use heartsink::config::{LogFormat, Overrides};
use heartsink::serve::{self, ServeArgs};

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
    Serve(ServeCli),
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
    /// An accepted heartbeat key (repeatable; all are accepted). Replaces the file's keys.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
    /// A file with one key per line, re-read on SIGHUP (repeatable).
    #[arg(long = "key-file", value_name = "FILE")]
    key_files: Vec<PathBuf>,
    /// Worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Receive threads (SO_REUSEPORT sockets) [default: 1].
    #[arg(long, value_name = "N")]
    rx_threads: Option<usize>,
    /// SO_RCVBUF to ask for, bytes [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<usize>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or heartsink=debug.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
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
                },
            };
            match serve::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heartsink: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
