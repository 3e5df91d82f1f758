//! Loopback tests of the real `heartsink serve` binary: UDP in, HTTP out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{client, data, heartbeat, heartbeat_json, uuid, Daemon};
use heartsink::proto::envelope::{compress, push_tag, wrap, TagForm};
use heartsink::proto::keyring::Key;

fn signed(payload: &[u8], key: &str) -> Vec<u8> {
    let mut v = payload.to_vec();
    push_tag(&mut v, 0, &Key::new(key.as_bytes()), TagForm::Hex);
    v
}

#[test]
fn every_drop_reason_is_counted_and_good_traffic_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("heartsink.toml");
    std::fs::write(&cfg, "[heartbeat]\nmax_datagram = 2048\nmax_inflated = 4096\n").unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "--key", "insecure", "--key", "s3cr3t-ключ"]);
    let s = client();
    let mut sent = 0u64;
    let mut send = |bytes: &[u8]| {
        s.send_to(bytes, d.heartbeat).unwrap();
        sent += 1;
    };
    // Real Octavia packets: accepted (the large one is over max_datagram here: truncated).
    send(&data("v3_small_hex.bin"));
    send(&data("v2_hex.bin"));
    send(&data("v0_legacy_binary_digest.bin"));
    send(&data("v3_large_hex_utf8key.bin"));
    send(&data("neg_v3_bad_hmac.bin"));
    // One of each malformed kind.
    send(b"short");
    send(&[7u8; 100]);
    send(&signed(b"not a zlib stream", "insecure"));
    send(&signed(&compress(&vec![b' '; 8192]), "insecure"));
    send(&signed(&compress(b"{\"id\": \"\xff\"}"), "insecure"));
    send(&signed(&compress(b"{\"id\": "), "insecure"));
    send(&signed(&compress(b"[1, 2]"), "insecure"));
    let fresh = heartbeat(1, 100, 5, "insecure");
    send(&fresh);
    send(&fresh);
    send(&heartbeat(1, 10, 5, "insecure"));
    send(&heartbeat(2, 0, 5, "wrong key"));
    let stats = d.wait_processed(sent);
    let dropped = &stats["dropped"];
    for (reason, n) in [
        ("truncated", 1),
        ("no_key_matched", 2),
        ("too_short", 1),
        ("bad_tag", 1),
        ("inflate_error", 1),
        ("too_large", 1),
        ("not_utf8", 1),
        ("not_json", 1),
        ("bad_schema", 1),
        ("replay", 1),
        ("stale", 1),
        ("ring_full", 0),
    ] {
        assert_eq!(dropped[reason], n, "{reason}: {stats}");
    }
    assert_eq!(stats["accepted"], 4, "{stats}");
    assert_eq!(stats["dropped_total"], 12);
    let metrics = d.get_text("/metrics");
    assert!(metrics.contains("heartsink_drops_total{reason=\"replay\"} 1"), "{metrics}");
    assert!(metrics.contains("heartsink_heartbeats_accepted_total 4"), "{metrics}");
    assert!(metrics.contains("heartsink_packets_received_total 16"), "{metrics}");
    assert!(metrics.contains("heartsink_rcvbuf_bytes "), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));
}

#[test]
fn admin_api_lists_shows_and_paginates() {
    let d = Daemon::start(&["--key", "insecure"]);
    let s = client();
    s.send_to(&data("v3_small_hex.bin"), d.heartbeat).unwrap();
    s.send_to(&data("v0_legacy_binary_digest.bin"), d.heartbeat).unwrap();
    for a in 0..5 {
        s.send_to(&heartbeat(a, 0, 10, "insecure"), d.heartbeat).unwrap();
    }
    d.wait_stats("7 amphorae listed", |s| s["amphorae"] == 7);

    let (code, small) = d.get("/v1/amphorae/79c8c292-6b94-45b5-b498-82321e35049e");
    assert_eq!(code, 200);
    assert_eq!(small["operating_status"], "ONLINE");
    assert_eq!(small["seq"], 1);
    assert_eq!(small["ver"], 3);
    let l = &small["listeners"][0];
    assert_eq!(l["id"], "82b9bfbc-91ba-4257-9abe-22cad37b17c6");
    assert_eq!(l["operating_status"], "ONLINE");
    assert_eq!(l["stats"]["tx"], 1308642);
    assert_eq!(l["stats"]["totconns"], 2000);
    let p = &small["pools"][0];
    assert_eq!(p["id"], "515c6123-6c88-4537-bcf3-bd58da60fb1c");
    let no_check = p["members"].as_array().unwrap().iter().find(|m| m["id"] == "4a894db7-e48f-42b9-aa5d-670af9a3638e");
    assert_eq!(no_check.unwrap()["operating_status"], "NO_MONITOR");
    assert!(small["last_seen"].as_str().unwrap().ends_with('Z'));

    // Legacy message: pool DOWN nested in the listener → LB ERROR.
    let (code, legacy) = d.get("/v1/amphorae/e257274d-cd2f-4abe-b500-948d6abdf8f8");
    assert_eq!(code, 200);
    assert_eq!(legacy["operating_status"], "ERROR");
    assert_eq!(legacy["pools"][0]["operating_status"], "ERROR");

    // Pagination: 7 ids in 3 pages of at most 3, in order, no repeats.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..4 {
        let path = match &marker {
            Some(m) => format!("/v1/amphorae?limit=3&marker={m}"),
            None => "/v1/amphorae?limit=3".to_owned(),
        };
        let (code, page) = d.get(&path);
        assert_eq!(code, 200);
        for a in page["amphorae"].as_array().unwrap() {
            assert!(a["last_refresh"].is_string() && a["operating_status"].is_string());
            assert_eq!(a["liveness"], "alive");
            seen.push(a["id"].as_str().unwrap().to_owned());
        }
        match page["next_marker"].as_str() {
            Some(m) => marker = Some(m.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen);

    let (code, body) = d.get(&format!("/v1/amphorae/{}", uuid(9, 9)));
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("no amphora"));
    assert_eq!(d.get("/v1/amphorae/not-a-uuid").0, 404);
    assert_eq!(d.get("/v1/amphorae?limit=0").0, 400);
    assert_eq!(d.get("/v1/amphorae?limit=1001").0, 400);
    assert_eq!(d.get("/v1/amphorae?bogus=1").0, 400);
    assert_eq!(d.get("/v1/nothing").0, 404);
    let (code, h) = d.get("/healthz");
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")));
    let stats = d.stats();
    assert!(stats["rcvbuf"]["effective"].as_u64().unwrap() > 0);
    assert!(stats["workers"].as_array().unwrap().iter().all(|w| w["ring_capacity"].as_u64() > Some(0)));
}

#[test]
fn ver3_deltas_accumulate_and_replays_do_not_double_count() {
    let d = Daemon::start(&["--key", "k"]);
    let s = client();
    for seq in 0..10 {
        s.send_to(&heartbeat(42, seq, 100, "k"), d.heartbeat).unwrap();
        // Every packet twice: the copy is a replay.
        s.send_to(&heartbeat(42, seq, 100, "k"), d.heartbeat).unwrap();
    }
    let stats = d.wait_processed(20);
    assert_eq!(stats["accepted"], 10);
    assert_eq!(stats["dropped"]["replay"], 10);
    let (_, a) = d.get(&format!("/v1/amphorae/{}", uuid(1, 42)));
    assert_eq!(a["listeners"][0]["stats"]["tx"], 1000);
    assert_eq!(a["listeners"][0]["stats"]["conns"], 3);
    assert_eq!(a["heartbeats"], 10);
}

#[test]
fn sighup_rotates_keys_without_losing_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "old\n").unwrap();
    let d = Daemon::start(&["--key-file", keys.to_str().unwrap()]);
    let target = d.heartbeat;
    // A sender that never stops during the rotation; it switches key only once the daemon has
    // loaded the keyring that accepts both.
    let (switch_tx, switch_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let s = client();
        let mut key = "old";
        let mut seq = 0u64;
        while stop_rx.try_recv().is_err() && seq < 100_000 {
            if switch_rx.try_recv().is_ok() {
                key = "new";
            }
            s.send_to(&heartbeat(seq % 50, seq / 50, 1, key), target).unwrap();
            seq += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        seq
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&keys, "old\nnew\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_stats("keyring generation 1", |s| {
        s["keys"]["generation"] == 1 && s["keys"]["fingerprints"].as_array().unwrap().len() == 2
    });
    std::thread::sleep(Duration::from_millis(200));
    switch_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&keys, "new\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_stats("keyring generation 2", |s| s["keys"]["generation"] == 2);
    std::thread::sleep(Duration::from_millis(300));
    stop_tx.send(()).unwrap();
    let sent = sender.join().unwrap();
    assert!(sent > 500, "the sender ran through both reloads ({sent} sent)");
    let stats = d.wait_processed(sent);
    assert_eq!(stats["accepted"], sent, "{stats}");
    assert_eq!(stats["dropped_total"], 0, "{stats}");
    // The old key is gone now.
    client().send_to(&heartbeat(999, 0, 1, "old"), target).unwrap();
    let stats = d.wait_processed(sent + 1);
    assert_eq!(stats["dropped"]["no_key_matched"], 1);
    assert!(d.stderr_text().contains("reloaded"));
}

#[test]
fn sighup_with_a_broken_config_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[heartbeat]\nkeys = [\"a\"]\n").unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    std::fs::write(&cfg, "[heartbeat]\nkeys = 7\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_stderr("reload failed");
    client().send_to(&heartbeat(1, 0, 1, "a"), d.heartbeat).unwrap();
    assert_eq!(d.wait_processed(1)["accepted"], 1);
    assert_eq!(d.stats()["keys"]["generation"], 0);
}

#[test]
fn sighup_never_falls_back_to_the_insecure_key_nor_drops_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[heartbeat]\nkeys = [\"a\"]\n").unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    // Configuration management truncated the file: the built-in key would take over.
    std::fs::write(&cfg, "").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_stderr("reload refused");
    assert!(d.stderr_text().contains("insecure"), "{}", d.stderr_text());
    // A keyring that keeps none of the running keys would drop every sender.
    std::fs::write(&cfg, "[heartbeat]\nkeys = [\"b\"]\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_stderr("none of the running heartbeat keys");
    client().send_to(&heartbeat(1, 0, 1, "a"), d.heartbeat).unwrap();
    client().send_to(&heartbeat(2, 0, 1, "insecure"), d.heartbeat).unwrap();
    let stats = d.wait_processed(2);
    assert_eq!(stats["accepted"], 1, "the running key still works: {stats}");
    assert_eq!(stats["dropped"]["no_key_matched"], 1, "the built-in key was never taken: {stats}");
    assert_eq!(d.stats()["keys"]["generation"], 0);
}

/// A key file or `config.data` that never ends (`/dev/zero`) or is huge used to be read whole on
/// SIGHUP: gigabytes of memory and a reload thread that never returned (SIGTERM then hung).
#[test]
fn sighup_with_an_endless_key_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[heartbeat]\nkeys = [\"a\"]\n").unwrap();
    let mut d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    for (i, extra) in [
        "[heartbeat]\nkeys = [\"a\"]\nkey_files = [\"/dev/zero\"]\n",
        "[heartbeat]\nkeys = [\"a\"]\n[confd]\nkey_files = [\"/dev/zero\"]\n",
        "[heartbeat]\nkeys = [\"a\"]\n[confd]\nconfig = \"/dev/zero\"\n",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&cfg, extra).unwrap();
        d.signal(libc::SIGHUP);
        common::wait_until("the reload refused", Duration::from_secs(10), || {
            (d.stderr_text().matches("larger than").count() > i).then_some(())
        });
    }
    assert_eq!(d.get("/healthz").0, 200);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn graceful_stop_applies_everything_received() {
    let mut d = Daemon::start(&["--key", "k", "--log-format", "json"]);
    let s = client();
    let n = 3000u64;
    for i in 0..n {
        s.send_to(&heartbeat(i % 300, i / 300, 1, "k"), d.heartbeat).unwrap();
    }
    // No waiting: the datagrams are in the socket buffer or the rings when SIGTERM arrives.
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "exit status {st:?}");
    // stderr is read by a thread; give it the last lines.
    d.wait_stderr("\"message\":\"stopped\"");
    let text = d.stderr_text();
    let line = text.lines().find(|l| l.contains("\"message\":\"stopped\"")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["fields"]["received"], n, "{line}");
    assert_eq!(v["fields"]["accepted"], n, "{line}");
    assert_eq!(v["fields"]["dropped"], 0, "{line}");
    // Exactly one JSON line on stdout over the whole life of the daemon.
    assert!(d.extra_stdout.lock().unwrap().is_empty(), "{:?}", d.extra_stdout.lock().unwrap());
}

#[test]
fn bad_configuration_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[heartbeat]\nadress = \"x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("adress"));
    assert!(out.stdout.is_empty());
}

#[test]
fn defaults_without_any_configuration() {
    // The embedded default: fixed ports, the insecure key, a warning.
    let d = Daemon::start_raw(&["serve"]);
    assert_eq!(d.heartbeat.to_string(), "127.0.0.1:5555");
    assert_eq!(d.admin.to_string(), "127.0.0.1:9555");
    d.wait_stderr("insecure default key");
    let json = heartbeat_json(5, 0, 1);
    client().send_to(&wrap(json.as_bytes(), &Key::new(b"insecure"), TagForm::Hex), d.heartbeat).unwrap();
    let stats = d.wait_processed(1);
    assert_eq!(stats["accepted"], 1);
    assert_eq!(stats["keys"]["insecure_default"], true);
}

#[test]
fn ipv6_loopback_heartbeats() {
    let d = Daemon::start_raw(&[
        "serve",
        "--heartbeat-addr",
        "[::1]:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--key",
        "insecure",
    ]);
    assert!(d.heartbeat.is_ipv6());
    let s = std::net::UdpSocket::bind("[::1]:0").unwrap();
    s.send_to(&data("v3_small_hex.bin"), d.heartbeat).unwrap();
    assert_eq!(d.wait_processed(1)["accepted"], 1);
}

#[test]
fn several_rx_threads_share_the_port() {
    let d = Daemon::start(&["--key", "k", "--rx-threads", "2", "--workers", "2"]);
    let sockets: Vec<_> = (0..8).map(|_| client()).collect();
    for i in 0..400u64 {
        sockets[(i % 8) as usize].send_to(&heartbeat(i % 40, i / 40, 1, "k"), d.heartbeat).unwrap();
    }
    let stats = d.wait_processed(400);
    assert_eq!(stats["accepted"], 400);
    let rx: Vec<_> = stats["rx"].as_array().unwrap().iter().filter(|r| r["socket"] == "heartbeat").collect();
    assert_eq!(rx.len(), 2);
    assert_eq!(rx.iter().map(|r| r["packets"].as_u64().unwrap()).sum::<u64>(), 400);
}

#[test]
fn each_worker_reads_its_own_socket_and_keeps_a_senders_order() {
    // The default (`rx_threads = 0`): two workers, two SO_REUSEPORT sockets on one port, no rx
    // thread. Each source is hashed to one socket, so its heartbeats arrive in order: none is
    // refused as a replay or as stale, although each amphora sends 20 in a row.
    let d = Daemon::start(&["--key", "k", "--workers", "2"]);
    let sockets: Vec<_> = (0..16).map(|_| client()).collect();
    for seq in 0..20u64 {
        for a in 0..40u64 {
            sockets[(a % 16) as usize].send_to(&heartbeat(a, seq, 1, "k"), d.heartbeat).unwrap();
        }
    }
    let stats = d.wait_processed(800);
    assert_eq!(stats["accepted"], 800, "{stats}");
    assert_eq!(stats["dropped"]["replay"], 0);
    assert_eq!(stats["dropped"]["stale"], 0);
    let rx: Vec<_> = stats["rx"].as_array().unwrap().iter().filter(|r| r["socket"] == "heartbeat").collect();
    assert_eq!(rx.len(), 2, "one heartbeat socket per worker");
    assert_eq!(rx.iter().map(|r| r["packets"].as_u64().unwrap()).sum::<u64>(), 800);
    let threads = std::fs::read_dir(format!("/proc/{}/task", d.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect::<Vec<_>>();
    assert!(!threads.iter().any(|c| c.trim() == "rx-0"), "no heartbeat rx thread: {threads:?}");
}

#[test]
fn busy_polling_workers_keep_every_heartbeat_in_order_and_stop_promptly() {
    // `busy_poll_us`: a worker whose socket runs empty asks again for 2 ms before it sleeps;
    // `so_busy_poll_us` sets SO_BUSY_POLL on the sockets, where this process may (older kernels
    // want CAP_NET_ADMIN for it; 6.18 lets anyone). Nothing is lost or reordered, and a stop is
    // not held up.
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let so_busy = if probe.set_busy_poll(50).is_ok() { "so_busy_poll_us = 50\n" } else { "" };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[heartbeat]\nkeys = [\"k\"]\nworkers = 2\nbusy_poll_us = 2000\n{so_busy}")).unwrap();
    let mut d = Daemon::start(&["--config", cfg.to_str().unwrap(), "--no-confd"]);
    let sockets: Vec<_> = (0..16).map(|_| client()).collect();
    for seq in 0..20u64 {
        for a in 0..40u64 {
            sockets[(a % 16) as usize].send_to(&heartbeat(a, seq, 1, "k"), d.heartbeat).unwrap();
        }
        // Gaps longer than the busy-poll window: the workers go to sleep and wake again.
        if seq % 5 == 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stats = d.wait_processed(800);
    assert_eq!(stats["accepted"], 800, "{stats}");
    assert_eq!(stats["dropped"]["replay"], 0);
    assert_eq!(stats["dropped"]["stale"], 0);
    let asked = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(6));
    assert!(status.success(), "{status:?}: {}", d.stderr_text());
    assert!(asked.elapsed() < Duration::from_secs(3), "the stop took {:?}", asked.elapsed());
}

#[test]
fn a_flood_does_not_hold_up_a_graceful_stop() {
    // One worker on its own socket, heartbeats sent as fast as two threads can for 14 s: a
    // SIGTERM one second in stops the daemon in about a second (bounded at 6 s: the stop's
    // last store commit waits for fsync, which a busy disk can hold up for seconds), not when
    // the flood ends 13 s later.
    let mut d = Daemon::start(&["--key", "k", "--workers", "1", "--no-confd"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..2u64)
        .map(|t| {
            let (stop, to) = (stop.clone(), d.heartbeat);
            std::thread::spawn(move || {
                let s = client();
                let packets: Vec<Vec<u8>> = (0..64).map(|i| heartbeat(t * 100 + i, 1, 1, "k")).collect();
                let until = std::time::Instant::now() + Duration::from_secs(14);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < until {
                    for p in &packets {
                        let _ = s.send_to(p, to);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let asked = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    assert!(status.success(), "{status:?}: {}", d.stderr_text());
    assert!(took < Duration::from_secs(6), "the stop took {took:?} under a flood: {}", d.stderr_text());
    assert!(d.stderr_text().contains("stopped"), "{}", d.stderr_text());
}

#[test]
fn a_second_daemon_cannot_share_the_heartbeat_port() {
    // Both would bind SO_REUSEPORT sockets (one per worker); the second must refuse rather than
    // take half of the first one's heartbeats.
    let d = Daemon::start(&["--key", "k", "--workers", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["serve", "--key", "k", "--workers", "2", "--no-confd", "--admin-addr", "127.0.0.1:0"])
        .args(["--heartbeat-addr", &d.heartbeat.to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second daemon started on {}", d.heartbeat);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&format!("heartbeat socket to {}/udp", d.heartbeat)), "{e}");
    // The first one still gets every heartbeat.
    let c = client();
    for seq in 0..10 {
        c.send_to(&heartbeat(1, seq, 1, "k"), d.heartbeat).unwrap();
    }
    assert_eq!(d.wait_processed(10)["accepted"], 10);
}

#[test]
fn startup_errors_name_the_socket_the_file_and_the_key() {
    let run = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"));
        cmd.arg("serve").arg("--data-dir").arg(dir.path());
        if !args.contains(&"--admin-addr") {
            cmd.args(["--admin-addr", "127.0.0.1:0"]);
        }
        let out = cmd.args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let e = run(&["--heartbeat-addr", &port, "--no-confd"]);
    assert!(e.contains(&format!("heartbeat socket to {port}/udp")), "{e}");
    let e = run(&["--heartbeat-addr", "127.0.0.1:0", "--confd-addr", &port]);
    assert!(e.contains(&format!("confd socket to {port}/udp")), "{e}");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = tcp.local_addr().unwrap().to_string();
    let e = run(&["--heartbeat-addr", "127.0.0.1:0", "--no-confd", "--admin-addr", &admin]);
    assert!(e.contains(&format!("admin socket to {admin}/tcp")), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[heartbeat]\naddr = \"127.0.0.1:0\"\nworkers = \"two\"\n").unwrap();
    let e = run(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains(cfg.to_str().unwrap()) && e.contains("line 3, column 11"), "{e}");
    std::fs::write(&cfg, "[liveness]\nheartbeat_timeout = 0\n").unwrap();
    let e = run(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains("liveness.heartbeat_timeout must be a number of seconds, at least 0.01"), "{e}");
    std::fs::write(&cfg, "[heartbeat]\nbusy_poll_us = 20000\n").unwrap();
    let e = run(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains("heartbeat.busy_poll_us must be in 0..=10000"), "{e}");
    std::fs::write(&cfg, "[heartbeat]\nbusy_poll_us = 50\nrx_threads = 1\n").unwrap();
    let e = run(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains("it needs heartbeat.rx_threads = 0"), "{e}");
    std::fs::write(&cfg, "[log]\nlevel = \"garbage\"\n").unwrap();
    let e = run(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains("log.level"), "{e}");
}

/// `GET /v1/history`: a sample a second of what was received, accepted and dropped, with the
/// latency of what was applied; the samples add up to what was sent; `since` filters.
#[test]
fn history_holds_a_sample_a_second_that_adds_up_to_the_traffic() {
    let d = Daemon::start(&["--key", "k"]);
    let s = client();
    for seq in 0..100 {
        s.send_to(&heartbeat(seq % 10, seq / 10, 1, "k"), d.heartbeat).unwrap();
        s.send_to(&heartbeat(seq % 10, seq / 10, 1, "wrong"), d.heartbeat).unwrap();
    }
    d.wait_processed(200);
    let v = common::wait_until("two samples after the traffic", Duration::from_secs(10), || {
        let (code, v) = d.get("/v1/history");
        assert_eq!(code, 200, "{v}");
        let sum = |f: &str| -> f64 {
            v["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s[f].as_f64().unwrap() * s["interval_s"].as_f64().unwrap())
                .sum()
        };
        (sum("accepted_per_s").round() == 100.0 && sum("dropped_per_s").round() == 100.0).then_some(v)
    });
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(v["capacity"], 900);
    assert!(samples.iter().any(|s| s["p99_us"].is_number()), "a latency where heartbeats were applied");
    let no_key: f64 = samples
        .iter()
        .filter_map(|s| s["drops_per_s"]["no_key_matched"].as_f64().map(|r| r * s["interval_s"].as_f64().unwrap()))
        .sum();
    assert_eq!(no_key.round(), 100.0, "{v}");
    let last = samples.last().unwrap()["t_ms"].as_u64().unwrap();
    assert!(d.get(&format!("/v1/history?since={last}")).1["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["t_ms"].as_u64() > Some(last)));
    assert_eq!(d.get("/v1/history?since=yesterday").0, 400);
}
