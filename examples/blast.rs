//! Sends pre-built, signed ver-3 heartbeats to a running `heartsink serve` as fast as `sendmmsg`
//! allows, then reads `/v1/stats` until every datagram is accounted for, and prints the
//! end-to-end rate. A quick measurement tool until the full load generator exists.
//!
//! ```sh
//! cargo run --release --example blast -- 127.0.0.1:5555 127.0.0.1:9555 insecure 1000 100
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use heartsink::io::SendBatch;
use heartsink::proto::envelope::{wrap, TagForm};
use heartsink::proto::keyring::Key;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, admin, key, amphorae, rounds] = &args[..] else {
        eprintln!("usage: blast HEARTBEAT_ADDR ADMIN_ADDR KEY AMPHORAE ROUNDS");
        std::process::exit(2);
    };
    let target: SocketAddr = target.parse().unwrap();
    let (amphorae, rounds): (u64, u64) = (amphorae.parse().unwrap(), rounds.parse().unwrap());
    let key = Key::new(key.as_bytes());
    let template = include_str!("../tests/data/octavia/v3_small_hex.json");
    let mut packets = Vec::with_capacity((amphorae * rounds) as usize);
    for r in 0..rounds {
        for a in 0..amphorae {
            let json = template
                .replace("79c8c292-6b94-45b5-b498-82321e35049e", &format!("79c8c292-6b94-45b5-b498-{a:012x}"))
                .replace("\"seq\": 1,", &format!("\"seq\": {r},"));
            packets.push(wrap(json.as_bytes(), &key, TagForm::Hex));
        }
    }
    let stats =
        || -> serde_json::Value { ureq::get(&format!("http://{admin}/v1/stats")).call().unwrap().into_json().unwrap() };
    let before = stats();
    let base = before["received"].as_u64().unwrap();
    // Several sockets, so the daemon's workers each get a share (one source, one worker).
    let sockets: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut batch = SendBatch::new(64);
    let start = Instant::now();
    for (i, chunk) in packets.chunks(64).enumerate() {
        for p in chunk {
            batch.push(&target, |b| b.extend_from_slice(p));
        }
        let s = &sockets[i % sockets.len()];
        while !batch.is_empty() {
            let _ = batch.flush(s);
        }
    }
    let sent_in = start.elapsed();
    let n = packets.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let s = stats();
        let processed = s["accepted"].as_u64().unwrap() + s["dropped_total"].as_u64().unwrap()
            - before["accepted"].as_u64().unwrap()
            - before["dropped_total"].as_u64().unwrap();
        let received = s["received"].as_u64().unwrap() - base;
        if (processed >= received && received + s["kernel_drops"].as_u64().unwrap() >= n) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let total = start.elapsed();
    let accepted = done["accepted"].as_u64().unwrap() - before["accepted"].as_u64().unwrap();
    println!(
        "{{\"sent\":{n},\"send_s\":{:.3},\"send_pps\":{:.0},\"accepted\":{accepted},\"kernel_drops\":{},\"dropped\":{},\"total_s\":{:.3},\"accepted_pps\":{:.0}}}",
        sent_in.as_secs_f64(),
        n as f64 / sent_in.as_secs_f64(),
        done["kernel_drops"],
        done["dropped"],
        total.as_secs_f64(),
        accepted as f64 / total.as_secs_f64()
    );
}
