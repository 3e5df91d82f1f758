//! `heartsink confd query`: ask one or more confd peers (heartsink or the real Ganeti daemon)
//! and print the merged answer as JSON.
//!
//! Exit status: 0 when the quorum answered consistently; 3 on timeout (too few replies);
//! 4 when replies of the same serial disagree; 2 on bad arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{BlockingClient, ConfdClient, Coverage};
use super::proto::{DictQuery, HmacKey, Query, ReqField, RequestType};

/// Exit code: the quorum was not reached in time.
pub const EXIT_TIMEOUT: u8 = 3;
/// Exit code: replies of the same serial disagree.
pub const EXIT_INCONSISTENT: u8 = 4;

/// The names `TYPE` accepts (numbers work too).
pub const TYPE_NAMES: [(&str, RequestType); 18] = [
    ("ping", RequestType::Ping),
    ("node-role-by-name", RequestType::NodeRoleByName),
    ("node-pip-by-instance-ip", RequestType::NodePipByInstanceIp),
    ("cluster-master", RequestType::ClusterMaster),
    ("node-pip-list", RequestType::NodePipList),
    ("mc-pip-list", RequestType::McPipList),
    ("instances-ips-list", RequestType::InstancesIpsList),
    ("node-drbd", RequestType::NodeDrbd),
    ("node-instances", RequestType::NodeInstances),
    ("instance-disks", RequestType::InstanceDisks),
    ("config-query", RequestType::ConfigQuery),
    ("data-collectors", RequestType::DataCollectors),
    ("amphora-health", RequestType::AmphoraHealth),
    ("lb-status", RequestType::LbStatus),
    ("down-senders", RequestType::DownSenders),
    ("engine-counters", RequestType::EngineCounters),
    ("pool-next", RequestType::PoolNext),
    ("pool-poll", RequestType::PoolPoll),
];

/// Parses `TYPE`: a name of [`TYPE_NAMES`] or a number.
pub fn parse_type(s: &str) -> Result<RequestType, String> {
    if let Ok(n) = s.parse::<i64>() {
        return RequestType::from_number(n).ok_or_else(|| format!("unknown request type {n}"));
    }
    TYPE_NAMES.iter().find(|(n, _)| *n == s).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<&str> = TYPE_NAMES.iter().map(|(n, _)| *n).collect();
        format!("unknown request type {s:?}; one of {} or 0–11, 100–105", names.join(", "))
    })
}

/// Parses `QUERY`: absent → empty; a JSON object → a dict query (`{"0": link, "1": ip,
/// "2": [ips], "3": [field ids]}`); anything else → a plain string.
pub fn parse_query(s: Option<&str>) -> Result<Query, String> {
    let Some(s) = s else { return Ok(Query::Empty) };
    if !s.trim_start().starts_with('{') {
        return Ok(Query::Plain(s.to_owned()));
    }
    let v: Value = serde_json::from_str(s).map_err(|e| format!("QUERY is not JSON: {e}"))?;
    let o = v.as_object().ok_or("QUERY must be an object")?;
    let mut q = DictQuery::default();
    for (k, v) in o {
        match k.as_str() {
            "0" => q.link = v.as_str().map(str::to_owned),
            "1" => q.ip = v.as_str().map(str::to_owned),
            "2" => {
                q.ip_list = v
                    .as_array()
                    .ok_or("\"2\" must be a list of IPs")?
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned).ok_or("\"2\" must be a list of IPs"))
                    .collect::<Result<_, _>>()?
            }
            "3" => {
                q.fields = v
                    .as_array()
                    .ok_or("\"3\" must be a list of field ids")?
                    .iter()
                    .map(|f| match f.as_i64() {
                        Some(0) => Ok(ReqField::Name),
                        Some(1) => Ok(ReqField::Ip),
                        Some(2) => Ok(ReqField::MNodePip),
                        _ => Err("field ids are 0 (name), 1 (ip), 2 (master node primary ip)"),
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown query key {other:?} (0 link, 1 ip, 2 ip list, 3 fields)")),
        }
    }
    Ok(Query::Dict(q))
}

/// Parses `--peer IP[:PORT]` values; all peers share one port (default 1814), as in Ganeti.
pub fn parse_peers(peers: &[String]) -> Result<(Vec<IpAddr>, u16), String> {
    let mut ips = Vec::new();
    let mut port = None;
    for p in peers {
        let (ip, pt) = match p.parse::<SocketAddr>() {
            Ok(a) => (a.ip(), Some(a.port())),
            Err(_) => (
                p.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>().map_err(|_| format!("bad peer {p:?}"))?,
                None,
            ),
        };
        if let Some(pt) = pt {
            if port.is_some_and(|q| q != pt) {
                return Err("every peer must use the same port".into());
            }
            port = Some(pt);
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err("give at least one --peer".into());
    }
    Ok((ips, port.unwrap_or(super::proto::DEFAULT_PORT)))
}

/// Runs a query; returns the JSON document to print and the exit code.
pub fn query(
    peers: &[String],
    key_file: &Path,
    kind: &str,
    query: Option<&str>,
    coverage: i64,
    timeout: Duration,
) -> Result<(Value, u8), String> {
    let (ips, port) = parse_peers(peers)?;
    let kind = parse_type(kind)?;
    let q = parse_query(query)?;
    let coverage = Coverage::from_ganeti(coverage).ok_or("coverage is 0 (default), -1 (all) or a peer count")?;
    let key = HmacKey::from_file(key_file).map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
    let core = ConfdClient::new(key, &ips, Some(port)).map_err(|e| e.to_string())?;
    let mut client = BlockingClient::new(core).map_err(|e| e.to_string())?;
    let (w, c) = client.query(kind, q, coverage, timeout).map_err(|e| e.to_string())?;
    let best = c.best().cloned();
    let doc = json!({
        "type": kind.number(),
        "answer": best.as_ref().map(|r| r.answer.clone()),
        "status": best.as_ref().map(|r| r.status),
        "serial": best.as_ref().map(|r| r.serial),
        "consistent": c.consistent,
        "timed_out": w.timed_out,
        "sent": w.sent,
        "received": w.received,
        "needed": super::client::needed_replies(w.sent),
        "quorum": w.received >= super::client::needed_replies(w.sent),
        "replies": c.replies.iter().map(|(from, r)| json!({
            "from": from.to_string(), "status": r.status, "serial": r.serial, "answer": r.answer,
        })).collect::<Vec<_>>(),
    });
    let code = if w.timed_out {
        EXIT_TIMEOUT
    } else if !c.consistent {
        EXIT_INCONSISTENT
    } else {
        0
    };
    Ok((doc, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_queries_and_peers() {
        assert_eq!(parse_type("cluster-master"), Ok(RequestType::ClusterMaster));
        assert_eq!(parse_type("10"), Ok(RequestType::ConfigQuery));
        assert!(parse_type("12").is_err() && parse_type("nope").is_err());
        assert_eq!(parse_query(None), Ok(Query::Empty));
        assert_eq!(parse_query(Some("node1")), Ok(Query::Plain("node1".into())));
        let Ok(Query::Dict(d)) = parse_query(Some(r#"{"0": "br0", "3": [0, 2]}"#)) else { panic!("dict") };
        assert_eq!(d.link.as_deref(), Some("br0"));
        assert_eq!(d.fields, vec![ReqField::Name, ReqField::MNodePip]);
        assert!(parse_query(Some(r#"{"9": 1}"#)).is_err());
        assert_eq!(
            parse_peers(&["127.0.0.1:1900".into(), "127.0.0.2".into()]).map(|(i, p)| (i.len(), p)),
            Ok((2, 1900))
        );
        assert_eq!(parse_peers(&["::1".into()]).map(|(_, p)| p), Ok(1814));
        assert!(parse_peers(&["127.0.0.1:1".into(), "127.0.0.2:2".into()]).is_err());
        assert!(parse_peers(&[]).is_err());
    }
}
