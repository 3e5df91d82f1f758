//! Every Octavia vector (made by the real Octavia 19.0.0 code, copied into tests/data/octavia):
//! accepted ones verify, inflate to exactly the JSON given and parse to the same content;
//! rejected ones are dropped under the right reason. The pipeline runs with a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use common::data;
use heartsink::engine::{DropReason, ManualClock, Pipeline, PipelineShared, Settings, Shards, WorkerCounters};
use heartsink::proto::envelope::{verify, EnvelopeError, TagForm};
use heartsink::proto::inflate::{Backend, Inflater};
use heartsink::proto::keyring::Keyring;
use heartsink::proto::octavia::{Heartbeat, MemberStatus, Uuid};
use serde_json::Value;

fn manifest() -> Vec<Value> {
    serde_json::from_slice(&data("manifest.json")).unwrap()
}

fn keyring_of(v: &Value) -> Keyring {
    let key = data(v["key_file"].as_str().unwrap());
    Keyring::from_bytes([&key[..]], 0)
}

/// Checks that the parsed heartbeat carries exactly the content of the JSON object.
fn assert_same_content(hb: &Heartbeat, json: &Value) {
    assert_eq!(hb.id.to_string(), json["id"].as_str().unwrap());
    assert_eq!(hb.seq, json["seq"].as_u64());
    assert_eq!(hb.ver, json["ver"].as_u64());
    let listeners = json["listeners"].as_object().unwrap();
    assert_eq!(hb.listeners().len(), listeners.len());
    for l in hb.listeners() {
        let j = &listeners[&l.id.to_string()];
        assert_eq!(l.status.as_str(), j["status"].as_str().unwrap());
        let s = l.stats.unwrap();
        for (got, name) in [(s.tx, "tx"), (s.rx, "rx"), (s.conns, "conns"), (s.totconns, "totconns"), (s.ereq, "ereq")]
        {
            assert_eq!(Some(got), j["stats"][name].as_u64(), "{name}");
        }
    }
    // The pools the status rules read: nested for ver < 2, top-level otherwise.
    let mut want_pools = serde_json::Map::new();
    if hb.ver.unwrap_or(0) < 2 {
        for l in listeners.values() {
            for (k, p) in l["pools"].as_object().unwrap() {
                want_pools.insert(k.clone(), p.clone());
            }
        }
    } else {
        for (k, p) in json["pools"].as_object().unwrap() {
            let id = k.rsplit_once(':').map_or(k.as_str(), |(a, _)| a);
            want_pools.insert(id.to_owned(), p.clone());
        }
    }
    assert_eq!(hb.status_pools().len(), want_pools.len());
    for p in hb.status_pools() {
        let j = &want_pools[&p.id.to_string()];
        assert_eq!(p.status.as_str(), j["status"].as_str().unwrap());
        let members = j["members"].as_object().unwrap();
        assert_eq!(hb.members(p).count(), members.len());
        for m in hb.members(p) {
            let raw = members[&m.id.to_string()].as_str().unwrap();
            assert_eq!(m.status, MemberStatus::parse(raw), "{raw}");
        }
    }
}

#[test]
fn accepted_vectors_decode_to_their_json() {
    let mut accepted = 0;
    for v in manifest().iter().filter(|v| v["expect"] == "accept") {
        let name = v["name"].as_str().unwrap();
        let env = data(v["file"].as_str().unwrap());
        let want_json = data(v["json_file"].as_str().unwrap());
        let verified = verify(&env, &keyring_of(v)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let form = if v["digest"] == "hex" { TagForm::Hex } else { TagForm::Binary };
        assert_eq!(verified.form(), form, "{name}");
        for backend in [Backend::Libdeflate, Backend::ZlibRs] {
            let mut inf = Inflater::new(backend, 1 << 20);
            let json = inf.inflate(&verified).unwrap();
            assert_eq!(json, &want_json[..], "{name}: inflated bytes are exactly the JSON given");
            let mut hb = Heartbeat::default();
            hb.parse(json).unwrap();
            assert_same_content(&hb, &serde_json::from_slice(&want_json).unwrap());
        }
        accepted += 1;
    }
    assert_eq!(accepted, 4);
}

#[test]
fn rejected_vectors_are_dropped_as_no_key_matched() {
    let mut rejected = 0;
    for v in manifest().iter().filter(|v| v["expect"] != "accept") {
        let env = data(v["file"].as_str().unwrap());
        assert_eq!(verify(&env, &keyring_of(v)).unwrap_err(), EnvelopeError::NoKeyMatched, "{}", v["name"]);
        rejected += 1;
    }
    assert_eq!(rejected, 2);
}

fn pipeline(keys: &[&str]) -> (Pipeline, Arc<Shards>, Arc<WorkerCounters>) {
    let shards = Arc::new(Shards::new(8));
    let counters = Arc::new(WorkerCounters::default());
    let shared = PipelineShared {
        keyring: Arc::new(ArcSwap::from_pointee(Keyring::from_strs(keys, 0))),
        settings: Arc::new(ArcSwap::from_pointee(Settings::default())),
        shards: shards.clone(),
        clock: Arc::new(ManualClock::new(1_000)),
        services: Default::default(),
    };
    (Pipeline::new(shared, Backend::Libdeflate, counters.clone(), None), shards, counters)
}

#[test]
fn the_pipeline_applies_vectors_and_counts_rejects() {
    let (mut p, shards, _) = pipeline(&["insecure", "s3cr3t-ключ"]);
    let packets: Vec<Vec<u8>> = [
        "v3_small_hex.bin",
        "v3_large_hex_utf8key.bin",
        "v2_hex.bin",
        "v0_legacy_binary_digest.bin",
        "neg_v3_bad_hmac.bin",
    ]
    .iter()
    .map(|f| data(f))
    .collect();
    let t = p.process(packets.iter().map(|p| &p[..]), 5_000);
    assert_eq!(t.packets, 5);
    assert_eq!(t.accepted, 4);
    assert_eq!(t.drops[DropReason::NoKeyMatched as usize], 1);
    assert_eq!(t.new_senders, 4);
    let large = shards.get(&Uuid::parse_str("a5240b60-20d0-429c-8cf1-97f45625871b").unwrap()).unwrap();
    assert_eq!(large.listeners.len(), 11);
    assert_eq!(large.pools.len(), 11);
    assert_eq!(large.member_count(), 1004);
    assert_eq!(large.last_seen_ns, 5_000);
    // v2: absolute counters as sent.
    let v2 = shards.get(&Uuid::parse_str("7f6f5b9a-3fb8-4ca3-aed9-869e28b572e2").unwrap()).unwrap();
    let l = v2.listeners.iter().find(|l| l.id.to_string() == "b8110682-5727-49bb-9f42-c841c6fae8eb").unwrap();
    assert_eq!((l.stats.tx, l.stats.conns, l.stats.totconns), (987654321, 17, 45678));
    // The same packets again: replays, nothing changes.
    let before = shards.get(&v2_id()).unwrap();
    let t = p.process(packets.iter().map(|p| &p[..]), 6_000);
    assert_eq!(t.accepted, 0);
    assert_eq!(t.drops[DropReason::Replay as usize], 4);
    assert_eq!(shards.get(&v2_id()).unwrap(), before);
}

fn v2_id() -> Uuid {
    Uuid::parse_str("7f6f5b9a-3fb8-4ca3-aed9-869e28b572e2").unwrap()
}

#[test]
fn wrong_key_vector_is_accepted_only_with_the_right_key() {
    let env = data("neg_v3_wrong_key.bin");
    let (mut wrong, _, _) = pipeline(&["insecure2"]);
    assert_eq!(wrong.process([&env[..]], 1).drops[DropReason::NoKeyMatched as usize], 1);
    let (mut right, _, _) = pipeline(&["insecure2", "insecure"]);
    assert_eq!(right.process([&env[..]], 1).accepted, 1);
}
