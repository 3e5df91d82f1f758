//! confd helpers shared by `tests/confd_serve.rs` and `tests/interop_ganeti.rs`: the test data,
//! the request cases, number-tolerant JSON comparison and raw exchanges.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use heartsink::confd::client::unix_now;
use heartsink::confd::proto::{encode_request, DictQuery, HmacKey, Query, ReqField, Request, RequestType};
use serde_json::Value;

/// A file of `tests/data/confd/`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/confd")).join(name)
}

/// `tests/data/confd/<name>` as a string (for command lines).
pub fn data_arg(name: &str) -> String {
    data(name).to_str().unwrap().to_owned()
}

/// The test key (`hmac.key`, trailing LF included).
pub fn key() -> HmacKey {
    HmacKey::from_file(data("hmac.key")).unwrap()
}

/// Sends `datagram` to `to` from a fresh loopback socket and waits up to `timeout` for one
/// datagram back.
pub fn exchange_raw(to: SocketAddr, datagram: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let bind = if to.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(datagram, to).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// One request signed with [`key`] at the current time; the reply's bytes, or `None` after
/// `timeout`.
pub fn exchange(to: SocketAddr, req: &Request, timeout: Duration) -> Option<Vec<u8>> {
    exchange_raw(to, &encode_request(req, unix_now().as_secs() as i64, &key()), timeout)
}

/// JSON equality with numbers compared as numbers, exactly (the daemon writes `5000000` where
/// the file has `5000000.0`, `1.36e9` where it has `1360000000.0`). Timestamps are exact too:
/// heartsink rounds them through picoseconds as the daemon does (`ganeti::daemon_time`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().unwrap() == y.as_f64().unwrap(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// True when `v` holds no object and no float (its serialisation is the same in every peer).
pub fn plain_only(v: &Value) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        Value::Array(a) => a.iter().all(plain_only),
        _ => true,
    }
}

/// A dict query built by `f`.
pub fn dict(f: impl FnOnce(&mut DictQuery)) -> Query {
    let mut d = DictQuery::default();
    f(&mut d);
    Query::Dict(d)
}

/// A plain (string) query.
pub fn p(s: &str) -> Query {
    Query::Plain(s.to_owned())
}

/// Good and bad queries for every Ganeti request type (0–11), for `config.data.json`.
pub fn cases() -> Vec<(RequestType, Query)> {
    use RequestType::*;
    let mut c = vec![
        (Ping, Query::Empty),
        (Ping, p("ignored")),
        (NodeRoleByName, p("node1.example.com")),
        (NodeRoleByName, p("node1")),
        (NodeRoleByName, p("node2")),
        (NodeRoleByName, p("node3.example.com")),
        (NodeRoleByName, p("2ae3d962-2dad-44f2-bdb1-85f77107f907")),
        (NodeRoleByName, p("node")),
        (NodeRoleByName, p("nope\"\\")),
        (NodeRoleByName, Query::Empty),
        (NodeRoleByName, dict(|d| d.link = Some("x\u{1}y".into()))),
        (NodePipByInstanceIp, dict(|d| d.ip = Some("198.51.100.11".into()))),
        (NodePipByInstanceIp, dict(|d| d.ip = Some("198.51.100.99".into()))),
        (
            NodePipByInstanceIp,
            dict(|d| d.ip_list = vec!["198.51.100.13".into(), "198.51.100.12".into(), "1.2.3.4".into()]),
        ),
        (
            NodePipByInstanceIp,
            dict(|d| {
                d.link = Some("br0".into());
                d.ip = Some("198.51.100.11".into());
            }),
        ),
        (NodePipByInstanceIp, dict(|_| {})),
        (NodePipByInstanceIp, p("198.51.100.11")),
        (NodePipByInstanceIp, Query::Empty),
        (ClusterMaster, Query::Empty),
        (ClusterMaster, dict(|d| d.fields = vec![ReqField::Name, ReqField::Ip, ReqField::MNodePip])),
        (ClusterMaster, dict(|d| d.fields = vec![ReqField::MNodePip, ReqField::Name, ReqField::Name])),
        (ClusterMaster, dict(|_| {})),
        (ClusterMaster, p("x")),
        (NodePipList, Query::Empty),
        (McPipList, Query::Empty),
        (InstancesIpsList, Query::Empty),
        (InstancesIpsList, p("br974")),
        (InstancesIpsList, p("br0")),
        (InstancesIpsList, dict(|_| {})),
        (NodeDrbd, p("node1.example.com")),
        (NodeDrbd, p("node2")),
        (NodeDrbd, p("node3")),
        (NodeDrbd, p("nope")),
        (NodeDrbd, Query::Empty),
        (NodeInstances, p("node1.example.com")),
        (NodeInstances, p("node2")),
        (NodeInstances, p("node3")),
        (NodeInstances, p("nope")),
        (NodeInstances, Query::Empty),
        (InstanceDisks, p("instance1")),
        (InstanceDisks, p("instance2.example.com")),
        (InstanceDisks, p("4e091bdc-e205-4ed7-8a47-0c9130a6619f")),
        (InstanceDisks, p("nope")),
        (InstanceDisks, dict(|d| d.ip_list = vec!["a".into()])),
        (ConfigQuery, Query::Empty),
        (DataCollectors, Query::Empty),
    ];
    for path in [
        "/cluster/cluster_name",
        "/cluster",
        "/nodes",
        "/instances",
        "/disks",
        "/nodegroups",
        "/networks",
        "/version",
        "/serial_no",
        "/cluster/enabled_hypervisors/0",
        "/cluster/enabled_hypervisors/00",
        "/cluster/enabled_hypervisors/5",
        "/cluster//x",
        "/cluster/",
        "/cluster/hvparams/kvm/migration_downtime",
        "/cluster/data_collectors",
        "",
        "/",
        "//",
        "/nope",
        "cluster",
    ] {
        c.push((ConfigQuery, p(path)));
    }
    c
}
