//! The admin API's request handling (`heartsink::api::route_request`) on arbitrary requests:
//! every route × arbitrary ids, queries and bodies (JSON, near-JSON and raw bytes).
//!
//! Nothing a request carries may panic. A command only leaves the parser with bounded fields:
//! a volume's size in its documented range, names and tags within their limits (the bounds of
//! `heartsink::api::validate`), so nothing unbounded reaches the store or the scheduler.
#![no_main]

use std::sync::{Arc, OnceLock};

use heartsink::api::{route_request, validate, AdminCounters, ApiContext, Routed};
use heartsink::confd::server::{Confd, ConfdState};
use heartsink::control::{Command, Published, RegistryCommand, VolumeCommand};
use heartsink::engine::{ManualClock, PipelineShared, Settings, Shards, Shared};
use heartsink::proto::keyring::Keyring;
use libfuzzer_sys::fuzz_target;

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/cluster/digest"),
    ("GET", "/metrics"),
    ("GET", "/v1/latency"),
    ("GET", "/v1/amphorae"),
    ("GET", "/v1/amphorae/{id}"),
    ("PATCH", "/v1/amphorae/{id}"),
    ("PUT", "/v1/amphorae/{id}"),
    ("DELETE", "/v1/amphorae/{id}"),
    ("POST", "/v1/amphorae/{id}/failover"),
    ("GET", "/v1/failovers"),
    ("GET", "/v1/failovers/{id}"),
    ("POST", "/v1/services"),
    ("POST", "/v1/services/lock"),
    ("POST", "/v1/services/unlock"),
    ("POST", "/v1/services/flush"),
    ("GET", "/v1/services"),
    ("GET", "/v1/services/resolve"),
    ("GET", "/v1/service-types"),
    ("GET", "/v1/pools"),
    ("POST", "/v1/pools"),
    ("DELETE", "/v1/pools/{id}"),
    ("GET", "/v1/pools/{id}/next"),
    ("POST", "/v1/pools/{id}/poll"),
    ("POST", "/v1/volumes"),
    ("GET", "/v1/volumes"),
    ("GET", "/v1/volumes/{id}"),
    ("PATCH", "/v1/volumes/{id}"),
    ("DELETE", "/v1/volumes/{id}"),
    ("POST", "/v1/volumes/{id}/state"),
    ("OPTIONS", "/v1/{id}"),
];

/// The input: one byte choosing the route, then the id, the query and the body separated by
/// NUL bytes (so that seeds are plain files: `\x05<uuid>\0\0{"expected_listeners": 2}`).
struct Request<'a> {
    route: u8,
    id: &'a str,
    query: &'a str,
    body: &'a [u8],
}

fn split(data: &[u8]) -> Option<Request<'_>> {
    let (&route, rest) = data.split_first()?;
    let mut parts = rest.splitn(3, |b| *b == 0);
    let id = std::str::from_utf8(parts.next()?).ok()?;
    let query = std::str::from_utf8(parts.next().unwrap_or_default()).ok()?;
    let body = parts.next().unwrap_or_default();
    Some(Request { route, id, query, body })
}

struct Ctx {
    api: Arc<ApiContext>,
    registry: prometheus_client::registry::Registry,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let pipeline = PipelineShared {
            keyring: Arc::new(arc_swap::ArcSwap::from_pointee(Keyring::from_strs(&["k"], 0))),
            settings: Arc::new(arc_swap::ArcSwap::from_pointee(Settings::default())),
            shards: Arc::new(Shards::new(4)),
            clock,
            services: Default::default(),
        };
        // Nobody answers the commands: the target checks what would be sent, not its effect.
        let (commands, _) = crossbeam_channel::unbounded();
        let api = ApiContext {
            engine: Arc::new(Shared::detached(pipeline, 1, 4)),
            control: Arc::new(Published::new(0)),
            commands,
            confd: Arc::new(Confd::new(ConfdState::default(), 1)),
            keys: Default::default(),
            cluster: heartsink::api::ClusterLink::single(Arc::new(heartsink::engine::ManualClock::new(0))),
        };
        let api = Arc::new(api);
        let registry = heartsink::api::metrics::registry(api.clone(), Arc::new(AdminCounters::default()));
        Ctx { api, registry }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(r) = split(data) else { return };
    let (method, path) = ROUTES[usize::from(r.route) % ROUTES.len()];
    let path = path.replace("{id}", r.id);
    let c = ctx();
    match route_request(&c.api, &c.registry, method, &path, r.query, r.body) {
        Routed::Answer(status) => assert!((100..600).contains(&status), "status {status}"),
        Routed::Call(command, ok) => {
            assert!((200..300).contains(&ok));
            match command {
                Command::Volumes(VolumeCommand::Create(v)) => {
                    assert!(validate::volume_create(&v).is_ok(), "unbounded volume reached the scheduler: {v:?}")
                }
                Command::Volumes(VolumeCommand::Patch(_, p)) => assert!(validate::volume_patch(&p).is_ok()),
                Command::Volumes(VolumeCommand::Report(_, rep)) => assert!(validate::volume_report(&rep).is_ok()),
                Command::Registry(RegistryCommand::Push { entries, .. }) => {
                    for e in &entries {
                        assert!(validate::service(e).is_ok(), "unbounded service reached the registry: {e:?}");
                    }
                }
                Command::Registry(RegistryCommand::PoolCreate { name, targets, .. }) => {
                    assert!(validate::pool(&name, &targets).is_ok())
                }
                _ => {}
            }
        }
    }
});
