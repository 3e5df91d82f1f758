//! `/metrics`: OpenMetrics text encoded by `prometheus-client` from the engine's own atomics,
//! read at scrape time (a collector), so the hot path never touches a metrics library.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{AdminCounters, ApiContext, Resp};
use crate::engine::DropReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
struct EngineCollector(Arc<ApiContext>, Arc<AdminCounters>);

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &self.0.engine;
        let ctl = &self.0.control;
        let t = e.totals();
        let r = Ordering::Relaxed;
        counter(&mut enc, "heartsink_packets_received", "Datagrams received from the heartbeat sockets.", t.received)?;
        counter(&mut enc, "heartsink_heartbeats_accepted", "Heartbeats verified, parsed and applied.", t.accepted)?;
        counter(
            &mut enc,
            "heartsink_kernel_drops",
            "Datagrams the kernel dropped on the sockets (SO_RXQ_OVFL).",
            t.kernel_drops,
        )?;
        counter(&mut enc, "heartsink_agent_restarts", "Agent restarts recognised by the sequence window.", t.restarts)?;
        {
            let c = ConstCounter::new(0u64);
            let mut m =
                enc.encode_descriptor("heartsink_drops", "Packets dropped, by reason.", None, c.metric_type())?;
            for d in DropReason::ALL {
                let labels = [("reason", d.label())];
                ConstCounter::new(t.drop_count(d)).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(
                "heartsink_worker_packets",
                "Packets processed, by worker.",
                None,
                c.metric_type(),
            )?;
            for (i, w) in e.workers.iter().enumerate() {
                let id = i.to_string();
                let labels = [("worker", id.as_str())];
                ConstCounter::new(w.packets.load(r)).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let (fill, cap) = e.ring_fill();
            let g = ConstGauge::new(0.0f64);
            let mut m = enc.encode_descriptor(
                "heartsink_ring_fill_ratio",
                "Fill of each worker's ring (0..1).",
                None,
                g.metric_type(),
            )?;
            for (i, f) in fill.iter().enumerate() {
                let id = i.to_string();
                let labels = [("worker", id.as_str())];
                ConstGauge::new(*f as f64 / cap as f64).encode(m.encode_family(&labels)?)?;
            }
        }
        gauge(&mut enc, "heartsink_amphorae", "Amphorae known.", ctl.amphora_count() as f64)?;
        {
            let c = &self.0.cluster.shared;
            let view = c.view.load();
            let leading = c.enabled && c.is_leader();
            gauge(&mut enc, "heartsink_cluster_enabled", "1 in cluster mode.", f64::from(u8::from(c.enabled)))?;
            gauge(
                &mut enc,
                "heartsink_cluster_leader",
                "1 while this member leads the cluster.",
                f64::from(u8::from(leading)),
            )?;
            gauge(
                &mut enc,
                "heartsink_cluster_members",
                "Members whose keys are alive in etcd.",
                view.members.len() as f64,
            )?;
            gauge(
                &mut enc,
                "heartsink_cluster_term",
                "The leader's term (its key's create revision).",
                view.term as f64,
            )?;
            gauge(
                &mut enc,
                "heartsink_cluster_etcd_reachable",
                "1 while etcd answers this member.",
                f64::from(u8::from(c.etcd_ok())),
            )?;
            let r = Ordering::Relaxed;
            counter(
                &mut enc,
                "heartsink_cluster_leader_changes",
                "Leadership gained or lost by this member.",
                c.leader_changes.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_etcd_writes",
                "Keys written to etcd by this member.",
                c.etcd_writes.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_etcd_write_bytes",
                "Bytes written to etcd by this member.",
                c.etcd_write_bytes.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_fenced_writes_refused",
                "Leader writes refused: this member's term was over.",
                c.fenced_refused.load(r),
            )?;
            counter(&mut enc, "heartsink_cluster_digests_sent", "Digests sent to peers.", c.digests_sent.load(r))?;
            counter(
                &mut enc,
                "heartsink_cluster_digests_received",
                "Peer digests applied.",
                c.digests_received.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_digests_refused",
                "Peer digests refused (bad signature or malformed).",
                c.digests_refused.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_forwarded",
                "Leader writes this member forwarded to the leader.",
                c.forwarded.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_tables_bad_rows",
                "Control-plane rows in etcd skipped because they do not decode.",
                c.bad_rows.load(r),
            )?;
            counter(
                &mut enc,
                "heartsink_cluster_forward_refused",
                "Leader writes refused with 503 and Retry-After (no leader, or it did not answer).",
                c.forward_refused.load(r),
            )?;
        }
        let snap = ctl.snapshot.load();
        gauge(
            &mut enc,
            "heartsink_amphorae_stale",
            "Amphorae without a liveness refresh for heartbeat_timeout.",
            snap.down.len() as f64,
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "heartsink_failovers_suspended",
                "1 while automatic failovers are suspended for this reason.",
                None,
                g.metric_type(),
            )?;
            for label in crate::control::liveness::SuspendReason::LABELS {
                let on = snap.suspended.iter().any(|s| s.label() == label);
                ConstGauge::new(i64::from(on)).encode(m.encode_family(&[("reason", label)])?)?;
            }
        }
        gauge(
            &mut enc,
            "heartsink_amphorae_unhealthy",
            "Amphorae stale, or alive with an operating status other than ONLINE.",
            snap.unhealthy_count() as f64,
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "heartsink_amphorae_by_status",
                "Amphorae by operating status and liveness.",
                None,
                g.metric_type(),
            )?;
            for (st, counts) in crate::control::census::STATUSES.iter().zip(snap.census) {
                for (live, n) in ["alive", "stale"].into_iter().zip(counts) {
                    ConstGauge::new(n as i64)
                        .encode(m.encode_family(&[("status", st.as_str()), ("liveness", live)])?)?;
                }
            }
        }
        {
            let g = ConstGauge::new(0i64);
            let mut m =
                enc.encode_descriptor("heartsink_failovers", "Failover records, by state.", None, g.metric_type())?;
            for (st, n) in crate::control::failover::FailoverState::ALL.iter().zip(snap.failover_counts) {
                ConstGauge::new(n as i64).encode(m.encode_family(&[("state", st.as_str())])?)?;
            }
        }
        {
            let (requests, replies, _, drops) = self.0.confd.totals();
            counter(&mut enc, "heartsink_confd_requests", "confd requests received.", requests)?;
            counter(&mut enc, "heartsink_confd_replies", "confd replies sent.", replies)?;
            counter(
                &mut enc,
                "heartsink_confd_replay_evictions",
                "confd replay cache entries evicted while inside their window (the cache is too small).",
                self.0.confd.replay.evictions(),
            )?;
            let c = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(
                "heartsink_confd_drops",
                "confd requests dropped, by reason.",
                None,
                c.metric_type(),
            )?;
            for (reason, n) in crate::confd::proto::RequestError::ALL.iter().zip(drops) {
                ConstCounter::new(n).encode(m.encode_family(&[("reason", reason.label())])?)?;
            }
        }
        if let Some(st) = &snap.store {
            gauge(
                &mut enc,
                "heartsink_store_healthy",
                "1 while the durable store writes, 0 while its commits fail.",
                f64::from(u8::from(st.healthy)),
            )?;
            counter(
                &mut enc,
                "heartsink_store_failures",
                "Store commit attempts that failed (each is retried).",
                st.failures,
            )?;
        }
        let now = e.now_ns();
        gauge(
            &mut enc,
            "heartsink_control_tick_age_seconds",
            "Seconds since the control thread's last tick.",
            now.saturating_sub(ctl.last_tick_ns.load(r)) as f64 / 1e9,
        )?;
        gauge(
            &mut enc,
            "heartsink_rcvbuf_bytes",
            "Effective SO_RCVBUF of the heartbeat socket.",
            e.rcvbuf().effective as f64,
        )?;
        gauge(
            &mut enc,
            "heartsink_keyring_generation",
            "Keyring reloads since start.",
            self.0.keys.load().generation as f64,
        )?;
        let a = &self.1;
        gauge(&mut enc, "heartsink_admin_connections", "Admin HTTP connections open.", a.connections.load(r) as f64)?;
        counter(
            &mut enc,
            "heartsink_admin_connections_accepted",
            "Admin HTTP connections accepted.",
            a.accepted.load(r),
        )?;
        counter(
            &mut enc,
            "heartsink_admin_connections_refused",
            "Admin HTTP connections refused (503): every connection had a request in progress.",
            a.refused.load(r),
        )?;
        counter(
            &mut enc,
            "heartsink_admin_connections_evicted",
            "Idle admin HTTP connections closed to make room for a new one.",
            a.evicted.load(r),
        )?;
        counter(
            &mut enc,
            "heartsink_admin_timeouts",
            "Admin HTTP requests whose head or body did not arrive in time (408).",
            a.timeouts.load(r),
        )?;
        counter(&mut enc, "heartsink_admin_panics", "Panics caught in the admin HTTP server.", a.panics.load(r))?;
        counter(
            &mut enc,
            "heartsink_admin_unauthorized",
            "Admin requests refused 401: no token, or an unknown one.",
            a.unauthorized.load(r),
        )?;
        counter(
            &mut enc,
            "heartsink_admin_forbidden",
            "Admin requests refused 403: a read token on a mutating route.",
            a.forbidden.load(r),
        )?;
        counter(
            &mut enc,
            "heartsink_admin_tls_handshake_failures",
            "Admin connections that failed before TLS was established (bad or slow handshake, plain HTTP).",
            a.tls_failures.load(r),
        )?;
        Ok(())
    }
}

/// The registry with the engine's and the admin server's collector.
pub fn registry(ctx: Arc<ApiContext>, admin: Arc<AdminCounters>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(EngineCollector(ctx, admin)));
    r
}

/// Encodes the registry.
pub(crate) fn render(registry: &Registry) -> Resp {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return super::error(500, "metrics encoding failed");
    }
    Resp {
        status: 200,
        body: text.into_bytes(),
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        headers: Vec::new(),
    }
}
