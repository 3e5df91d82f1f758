//! Answers to the Ganeti request types 0–11 from a Ganeti 3.0 `config.data`, as the Haskell
//! `ganeti-confd` 3.0.2 computes them (`Confd/Server.hs` `buildResponse`, `Config.hs`).
//!
//! [`ConfigIndex::load`] parses the file once into lookup tables; [`ConfigIndex::answer`] is then
//! a pure function of the request. Statuses, error texts and serials are the daemon's, checked
//! against it (`tests/interop_ganeti.rs`):
//!
//! * serials: PING and every error 0; `NODE_DRBD` and `NODE_INSTANCES` the node's `serial_no`;
//!   `INSTANCE_DISKS` the instance's; everything else the **cluster** `serial_no`;
//! * names: a node or instance is found by UUID, then by exact name, then by a unique prefix
//!   that ends at a dot (`node2` → `node2.example.com`; two candidates → "has multiple matches");
//! * `NODE_ROLE_BYNAME` answers master (0) only when the query is the master's full name;
//! * error answers are the daemon's strings, including its Haskell `show` renderings.
//!
//! Objects in answers (`NODE_INSTANCES`, `INSTANCE_DISKS`, `CONFIG_QUERY`) are the file's
//! objects with the defaults the daemon adds when a field is absent (disk `children`, `iv_name`,
//! `mode`; `tags`, `ctime`, `mtime`, nodegroup `members`), and data-collector intervals as
//! integers, and `ctime`/`mtime` rounded through whole picoseconds as the daemon keeps them
//! ([`daemon_time`]). They are equal to the daemon's as JSON values (Python's `==`, so `32.0` and
//! `32` agree); the daemon re-serialises its typed objects, so its member order and the form of
//! integral floats differ.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::json::hs_int;
use super::json::write_json;
use super::proto::{
    Answer, Answered, QueryView, Reply, ReplyMsg, ReqField, Request, RequestType, RequestView, ERROR_ARGUMENT,
    ERROR_UNKNOWN_ENTRY, STATUS_ERROR, STATUS_OK,
};
use write::{ErrorText, NoEnt};

/// The data collectors compiled into `ganeti-confd` 3.0.2 (`DataCollectors.collectors`).
pub const DATA_COLLECTORS: [&str; 6] =
    ["cpu-avg-load", "diskstats", "drbd", "inst-status-xen", "lv", "xen-cpu-avg-load"];
/// A collector's interval when the config does not set one (`mond` interval, 5 s, in µs).
pub const DEFAULT_COLLECTOR_INTERVAL_US: i64 = 5_000_000;

/// Why a `config.data` could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GanetiConfigError {
    /// What is wrong, naming the JSON path.
    pub reason: String,
}

impl std::fmt::Display for GanetiConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad Ganeti config.data: {}", self.reason)
    }
}

impl std::error::Error for GanetiConfigError {}

fn bad(reason: impl Into<String>) -> GanetiConfigError {
    GanetiConfigError { reason: reason.into() }
}

#[derive(Clone, Debug)]
struct Node {
    uuid: String,
    name: String,
    primary_ip: String,
    master_candidate: bool,
    drained: bool,
    offline: bool,
    serial: i64,
}

#[derive(Clone, Debug)]
struct Instance {
    name: Option<String>,
    primary_node: Option<String>,
    disks: Vec<String>,
    serial: i64,
    value: Value,
}

/// A DRBD logical id: `[nodeA, nodeB, port, minorA, minorB, secret]`.
#[derive(Clone, Debug)]
struct Drbd {
    node_a: String,
    node_b: String,
    minor_a: i64,
    minor_b: i64,
}

#[derive(Clone, Debug)]
struct Disk {
    drbd: Option<Drbd>,
    children: Vec<Disk>,
}

/// A loaded `config.data`, indexed for answering confd queries.
#[derive(Clone, Debug)]
pub struct ConfigIndex {
    version: i64,
    serial_no: i64,
    cluster_serial: i64,
    master_uuid: String,
    master_ip: String,
    default_link: String,
    /// By UUID (the daemon's `Map` order).
    nodes: BTreeMap<String, Node>,
    /// Node name → UUID (`M.mapKeys nodeName`: on equal names the greatest UUID's node).
    node_names: BTreeMap<String, String>,
    /// By UUID.
    instances: BTreeMap<String, Instance>,
    /// Name → UUID of the named instances (on equal names the greatest UUID's).
    instance_names: BTreeMap<String, String>,
    /// By UUID: the parsed tree and the JSON value (with defaults).
    disks: BTreeMap<String, (Disk, Value)>,
    /// link → instance IP → instance name.
    link_ips: BTreeMap<String, BTreeMap<String, String>>,
    /// link → its `INSTANCES_IPS_LIST` answer, written at load time.
    link_ips_json: BTreeMap<String, String>,
    data_collectors: Value,
    /// The whole file with defaults, for `CONFIG_QUERY`.
    config: Value,
}

fn num_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| hs_int(&n.to_string())),
        _ => None,
    }
}

fn get<'a>(v: &'a Value, path: &str) -> Result<&'a Value, GanetiConfigError> {
    let mut cur = v;
    for p in path.split('.') {
        cur = cur.get(p).ok_or_else(|| bad(format!("missing {path}")))?;
    }
    Ok(cur)
}

fn get_str(v: &Value, path: &str) -> Result<String, GanetiConfigError> {
    get(v, path)?.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{path} is not a string")))
}

fn get_int(v: &Value, path: &str) -> Result<i64, GanetiConfigError> {
    num_int(get(v, path)?).ok_or_else(|| bad(format!("{path} is not a number")))
}

fn get_bool(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn objects<'a>(v: &'a Value, key: &str) -> Result<&'a Map<String, Value>, GanetiConfigError> {
    match v.get(key) {
        Some(Value::Object(m)) => Ok(m),
        Some(Value::Null) | None => Err(bad(format!("missing {key}"))),
        Some(_) => Err(bad(format!("{key} is not an object"))),
    }
}

fn default(obj: &mut Value, key: &str, v: Value) {
    if let Value::Object(m) = obj {
        m.entry(key.to_owned()).or_insert(v);
    }
}

/// A `ctime`/`mtime` as the daemon answers it. Ganeti keeps timestamps as `ClockTime`
/// (`Ganeti.JSON.TimeAsDoubleJSON`): read as a double `t`, stored as whole picoseconds
/// `round (t * 10^12)` (half to even) split by `divMod` into seconds and picoseconds, and shown
/// as the double `s + ps / 10^12`. That round trip moves some values by one ulp
/// (`1358348755.779906` → `1358348755.7799058`). Text.JSON writes an integral double as an
/// integer. `None` for a value that is not a number.
pub fn daemon_time(v: &Value) -> Option<Value> {
    const PICO: i128 = 1_000_000_000_000;
    let t = v.as_f64()?;
    let p = (t * 1e12).round_ties_even();
    if !p.is_finite() || p.abs() >= 1e36 {
        return None;
    }
    let p = p as i128;
    let d = p.div_euclid(PICO) as f64 + p.rem_euclid(PICO) as f64 / 1e12;
    if d.fract() == 0.0 && d.abs() < 9.0e15 {
        Some(json!(d as i64))
    } else {
        serde_json::Number::from_f64(d).map(Value::Number)
    }
}

fn daemon_times(obj: &mut Value) {
    for key in ["ctime", "mtime"] {
        if let Some(t) = obj.get(key).and_then(daemon_time) {
            obj[key] = t;
        }
    }
}

fn disk_defaults(d: &mut Value) {
    default(d, "children", json!([]));
    default(d, "iv_name", json!(""));
    default(d, "mode", json!("rw"));
    if let Some(Value::Array(ch)) = d.get_mut("children") {
        ch.iter_mut().for_each(disk_defaults);
    }
}

fn parse_disk(v: &Value, path: &str, depth: usize) -> Result<Disk, GanetiConfigError> {
    if depth > 16 {
        return Err(bad(format!("{path}: disks nested too deep")));
    }
    let drbd = if v.get("dev_type").and_then(Value::as_str) == Some("drbd") {
        let id = v.get("logical_id").and_then(Value::as_array).filter(|a| a.len() == 6);
        let id = id.ok_or_else(|| bad(format!("{path}.logical_id is not a DRBD id")))?;
        let s = |i: usize| id[i].as_str().map(str::to_owned).ok_or_else(|| bad(format!("{path}.logical_id[{i}]")));
        let n = |i: usize| num_int(&id[i]).ok_or_else(|| bad(format!("{path}.logical_id[{i}]")));
        Some(Drbd { node_a: s(0)?, node_b: s(1)?, minor_a: n(3)?, minor_b: n(4)? })
    } else {
        None
    };
    let children = match v.get("children") {
        Some(Value::Array(ch)) => ch
            .iter()
            .enumerate()
            .map(|(i, c)| parse_disk(c, &format!("{path}.children[{i}]"), depth + 1))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    Ok(Disk { drbd, children })
}

/// How a name lookup ended (Ganeti `lookupName`).
enum Lookup<'a> {
    Found(&'a str),
    Multiple,
    NotFound,
}

/// `lookupName`: an exact match, else a unique `name.`-prefix match.
fn lookup_name<'a>(names: impl Iterator<Item = &'a str>, key: &str) -> Lookup<'a> {
    let mut partial: Option<&'a str> = None;
    let mut multiple = false;
    for n in names {
        if n == key {
            return Lookup::Found(n);
        }
        if n.len() > key.len() && n.starts_with(key) && n.as_bytes()[key.len()] == b'.' {
            if partial.is_some() {
                multiple = true;
            }
            partial = Some(n);
        }
    }
    match (multiple, partial) {
        (true, _) => Lookup::Multiple,
        (false, Some(n)) => Lookup::Found(n),
        (false, None) => Lookup::NotFound,
    }
}

impl ConfigIndex {
    /// Loads `config.data` from a file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, GanetiConfigError> {
        let path = path.as_ref();
        let bytes = crate::util::read_bounded(path, crate::util::MAX_GANETI_CONFIG)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Self::from_slice(&bytes)
    }

    /// Loads `config.data` from its bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, GanetiConfigError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        Self::from_value(v)
    }

    /// Indexes a parsed `config.data`.
    pub fn from_value(mut config: Value) -> Result<Self, GanetiConfigError> {
        if !config.is_object() {
            return Err(bad("the top level is not an object"));
        }
        let version = get_int(&config, "version")?;
        let serial_no = get_int(&config, "serial_no")?;
        let cluster_serial = get_int(&config, "cluster.serial_no")?;
        let master_uuid = get_str(&config, "cluster.master_node")?;
        let master_ip = get_str(&config, "cluster.master_ip")?;
        let default_link = get_str(&config, "cluster.nicparams.default.link")?;

        // Defaults the daemon's typed objects carry when the file omits them.
        if let Some(Value::Object(disks)) = config.get_mut("disks") {
            disks.values_mut().for_each(disk_defaults);
        }
        if let Some(Value::Object(insts)) = config.get_mut("instances") {
            for i in insts.values_mut() {
                default(i, "tags", json!([]));
            }
        }
        for key in ["networks", "nodegroups"] {
            if let Some(Value::Object(objs)) = config.get_mut(key) {
                for o in objs.values_mut() {
                    default(o, "ctime", json!(0));
                    default(o, "mtime", json!(0));
                    default(o, "tags", json!([]));
                    if key == "nodegroups" {
                        default(o, "members", json!([]));
                    }
                }
            }
        }
        // Timestamps as the daemon's typed objects hold them (`timeStampFields`).
        daemon_times(&mut config);
        if let Some(c) = config.get_mut("cluster") {
            daemon_times(c);
        }
        for key in ["nodes", "instances", "disks", "nodegroups", "networks"] {
            if let Some(Value::Object(objs)) = config.get_mut(key) {
                objs.values_mut().for_each(daemon_times);
            }
        }
        let mut collectors = Map::new();
        if let Some(Value::Object(dc)) = config.get_mut("cluster").and_then(|c| c.get_mut("data_collectors")) {
            for c in dc.values_mut() {
                if let Some(iv) = c.get("interval").and_then(num_int) {
                    c["interval"] = json!(iv);
                }
            }
        }
        let dc = config.get("cluster").and_then(|c| c.get("data_collectors"));
        for name in DATA_COLLECTORS {
            let c = dc.and_then(|d| d.get(name));
            let active = c.and_then(|c| c.get("active")).and_then(Value::as_bool).unwrap_or(true);
            let interval = c.and_then(|c| c.get("interval")).and_then(num_int).unwrap_or(DEFAULT_COLLECTOR_INTERVAL_US);
            collectors.insert(name.to_owned(), json!({"active": active, "interval": interval}));
        }

        let mut nodes = BTreeMap::new();
        for (uuid, n) in objects(&config, "nodes")? {
            let p = format!("nodes.{uuid}");
            nodes.insert(
                uuid.clone(),
                Node {
                    uuid: uuid.clone(),
                    name: get_str(n, "name").map_err(|e| bad(format!("{p}: {}", e.reason)))?,
                    primary_ip: get_str(n, "primary_ip").map_err(|e| bad(format!("{p}: {}", e.reason)))?,
                    master_candidate: get_bool(n, "master_candidate"),
                    drained: get_bool(n, "drained"),
                    offline: get_bool(n, "offline"),
                    serial: get_int(n, "serial_no").map_err(|e| bad(format!("{p}: {}", e.reason)))?,
                },
            );
        }
        let mut disks = BTreeMap::new();
        if let Some(Value::Object(ds)) = config.get("disks") {
            for (uuid, d) in ds {
                disks.insert(uuid.clone(), (parse_disk(d, &format!("disks.{uuid}"), 0)?, d.clone()));
            }
        }
        let mut instances = BTreeMap::new();
        let mut link_ips: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (uuid, i) in objects(&config, "instances")? {
            let p = format!("instances.{uuid}");
            let name = i.get("name").and_then(Value::as_str).map(str::to_owned);
            let disk_ids = match i.get("disks") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|d| d.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{p}.disks: not a UUID string"))))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
                Some(_) => return Err(bad(format!("{p}.disks is not a list"))),
            };
            if let Some(Value::Array(nics)) = i.get("nics") {
                for nic in nics {
                    let Some(ip) = nic.get("ip").and_then(Value::as_str) else { continue };
                    let link = nic
                        .get("nicparams")
                        .and_then(|np| np.get("link"))
                        .and_then(Value::as_str)
                        .unwrap_or(&default_link)
                        .to_owned();
                    let iname = name.clone().unwrap_or_else(|| uuid.clone());
                    link_ips.entry(link).or_default().insert(ip.to_owned(), iname);
                }
            }
            instances.insert(
                uuid.clone(),
                Instance {
                    name,
                    primary_node: i.get("primary_node").and_then(Value::as_str).map(str::to_owned),
                    disks: disk_ids,
                    serial: get_int(i, "serial_no").map_err(|e| bad(format!("{p}: {}", e.reason)))?,
                    value: i.clone(),
                },
            );
        }
        let node_names = nodes.values().map(|n| (n.name.clone(), n.uuid.clone())).collect();
        let instance_names = instances
            .iter()
            .filter_map(|(u, i)| i.name.clone().filter(|n| !n.is_empty()).map(|n| (n, u.clone())))
            .collect();
        let link_ips_json = link_ips
            .iter()
            .map(|(link, ips)| {
                let mut text = Vec::new();
                write_json(&mut text, &ips.keys().collect::<Vec<_>>());
                (link.clone(), String::from_utf8(text).unwrap_or_default())
            })
            .collect();
        Ok(ConfigIndex {
            version,
            serial_no,
            cluster_serial,
            master_uuid,
            master_ip,
            default_link,
            nodes,
            node_names,
            instances,
            instance_names,
            disks,
            link_ips,
            link_ips_json,
            data_collectors: Value::Object(collectors),
            config,
        })
    }

    /// The top-level `serial_no` (what the daemon logs on load: "Loaded new config, serial N").
    pub fn serial_no(&self) -> i64 {
        self.serial_no
    }

    /// The cluster `serial_no` (the serial of most answers).
    pub fn cluster_serial(&self) -> i64 {
        self.cluster_serial
    }

    /// `getNode`: by UUID, then by name (`lookupName`).
    fn node<'a>(&'a self, key: &'a str) -> Result<&'a Node, NoEnt<'a>> {
        if let Some(n) = self.nodes.get(key) {
            return Ok(n);
        }
        let by_name = |n: &str| self.node_names.get(n).and_then(|u| self.nodes.get(u));
        match lookup_name(self.node_names.keys().map(String::as_str), key) {
            Lookup::Found(n) => by_name(n).ok_or(NoEnt::not_found("Node name", key)),
            Lookup::Multiple => Err(NoEnt::multiple("Node name", key)),
            Lookup::NotFound => Err(NoEnt::not_found("Node name", key)),
        }
    }

    /// `getInstance`: by UUID, then by name among the named instances.
    fn instance<'a>(&'a self, key: &'a str) -> Result<(&'a str, &'a Instance), NoEnt<'a>> {
        if let Some((u, i)) = self.instances.get_key_value(key) {
            return Ok((u.as_str(), i));
        }
        let by_name = |n: &str| self.instance_names.get(n).and_then(|u| self.instances.get_key_value(u));
        match lookup_name(self.instance_names.keys().map(String::as_str), key) {
            Lookup::Found(n) => by_name(n).map(|(u, i)| (u.as_str(), i)).ok_or(NoEnt::not_found("Instance name", key)),
            Lookup::Multiple => Err(NoEnt::multiple("Instance name", key)),
            Lookup::NotFound => Err(NoEnt::not_found("Instance name", key)),
        }
    }

    /// The disks of an instance, or `Err` naming the first missing one (`getInstDisks`).
    fn instance_disks<'a>(&'a self, inst: &'a Instance) -> Result<Vec<&'a (Disk, Value)>, NoEnt<'a>> {
        inst.disks.iter().map(|d| self.disks.get(d).ok_or(NoEnt::not_found("Disk uuid", d))).collect()
    }

    fn master_name(&self) -> Result<&str, NoEnt<'_>> {
        self.node(&self.master_uuid).map(|n| n.name.as_str())
    }

    /// `getNodePipByInstanceIp`.
    fn node_pip(&self, link: &str, ip: &str) -> Answered<'_> {
        let unknown = Answered { status: STATUS_ERROR, answer: Answer::Int(ERROR_UNKNOWN_ENTRY), serial: 0 };
        let Some(iname) = self.link_ips.get(link).and_then(|m| m.get(ip)) else { return unknown };
        // `getInstanceByName`: exact name, first in UUID order.
        let Some(inst) = self.instances.values().find(|i| i.name.as_deref() == Some(iname.as_str())) else {
            return unknown;
        };
        match inst.primary_node.as_deref().map(|p| self.node(p)) {
            Some(Ok(node)) => {
                Answered { status: STATUS_OK, answer: Answer::Str(&node.primary_ip), serial: self.cluster_serial }
            }
            _ => unknown,
        }
    }

    /// The DRBD minors of `node` in `disk` and its children (`getDrbdMinorsForNode`).
    fn drbd_minors<'a>(node: &str, disk: &'a Disk, out: &mut Vec<(i64, &'a str)>) {
        if let Some(d) = &disk.drbd {
            if d.node_a == node {
                out.push((d.minor_a, &d.node_b));
            } else if d.node_b == node {
                out.push((d.minor_b, &d.node_a));
            }
        }
        for c in &disk.children {
            Self::drbd_minors(node, c, out);
        }
    }

    /// Answers a request as the daemon does (allocates: see [`ConfigIndex::answer_view`]).
    pub fn answer(&self, req: &Request) -> Reply {
        self.answer_view(&req.view()).to_reply()
    }

    /// Answers a request as the daemon does. The answers of `PING`, `NODE_ROLE_BYNAME`,
    /// `CLUSTER_MASTER` (name) and `INSTANCES_IPS_LIST` are borrowed from the index; the
    /// others, and errors, are built (see [`ConfigIndex::write_answer`]).
    pub fn answer_view<'a>(&'a self, req: &RequestView<'a>) -> Answered<'a> {
        self.answer_or_error(req).unwrap_or_else(|e| e.to_reply().into())
    }

    /// Writes the answer to a request into `msg`, as the daemon answers it, without allocating:
    /// the answers [`ConfigIndex::answer_view`] builds are written from the index as they are
    /// walked, and error texts as they are formatted.
    pub fn write_answer(&self, req: &RequestView<'_>, msg: &mut ReplyMsg) {
        if self.write_in_place(req, msg) {
            return;
        }
        match self.answer_or_error(req) {
            Ok(a) => msg.write(&a),
            Err(e) => msg.write_text(STATUS_ERROR, &e, 0),
        }
    }

    /// The answer, or the text of the error answer (status 1, serial 0).
    fn answer_or_error<'a>(&'a self, req: &RequestView<'a>) -> Result<Answered<'a>, ErrorText<'a>> {
        let cs = self.cluster_serial;
        let ok = |answer| Ok(Answered { status: STATUS_OK, answer, serial: cs });
        match (req.kind, &req.query) {
            (RequestType::Ping, _) => Ok(Answered { status: STATUS_OK, answer: Answer::Int(self.version), serial: 0 }),
            (RequestType::NodeRoleByName, QueryView::Plain(name)) => match self.node_role(name) {
                Ok(role) => ok(Answer::Int(role)),
                Err(e) => Err(ErrorText::Formatted(e)),
            },
            (RequestType::ClusterMaster, QueryView::Empty) => match self.master_name() {
                Ok(m) => ok(Answer::Str(m)),
                Err(e) => Err(ErrorText::Formatted(e)),
            },
            (RequestType::InstancesIpsList, QueryView::Plain(_) | QueryView::Empty) => {
                let link = match req.query {
                    QueryView::Plain(l) => l,
                    _ => &self.default_link,
                };
                ok(Answer::Json(self.link_ips_json.get(link).map_or("[]", String::as_str)))
            }
            _ => self.answer_built(req).map(Answered::from),
        }
    }

    /// `NODE_ROLE_BYNAME`: master (0) only for the master's full name, then drained (3),
    /// offline (2), master candidate (1), regular (4).
    fn node_role<'a>(&'a self, name: &'a str) -> Result<i64, NoEnt<'a>> {
        let master = self.master_name()?;
        let node = self.node(name)?;
        Ok(if master == name {
            0
        } else if node.drained {
            3
        } else if node.offline {
            2
        } else if node.master_candidate {
            1
        } else {
            4
        })
    }

    /// The answers [`ConfigIndex::answer_view`] builds, or the text of an error answer.
    fn answer_built<'a>(&'a self, req: &RequestView<'a>) -> Result<Reply, ErrorText<'a>> {
        let cs = self.cluster_serial;
        let invalid_query = |q: &QueryView<'a>| Err(ErrorText::InvalidQuery(*q));
        Ok(match req.kind {
            RequestType::Ping => Reply::ok(self.version, 0),
            RequestType::NodeRoleByName => {
                let QueryView::Plain(name) = req.query else { return invalid_query(&req.query) };
                match self.node_role(name) {
                    Ok(role) => Reply::ok(role, cs),
                    Err(e) => return Err(ErrorText::Formatted(e)),
                }
            }
            RequestType::NodePipByInstanceIp => {
                let QueryView::Dict(q) = &req.query else { return Ok(Reply::error(ERROR_ARGUMENT)) };
                let link = q.link.unwrap_or(&self.default_link);
                match q.ip {
                    Some(ip) => self.node_pip(link, ip).to_reply(),
                    None => {
                        let list: Vec<Value> = q
                            .ip_list
                            .iter()
                            .map(|ip| {
                                let a = self.node_pip(link, ip);
                                json!([a.status, a.answer.to_value(), a.serial])
                            })
                            .collect();
                        Reply::ok(list, cs)
                    }
                }
            }
            RequestType::ClusterMaster => match &req.query {
                QueryView::Empty => match self.master_name() {
                    Ok(m) => Reply::ok(m, cs),
                    Err(e) => return Err(ErrorText::Formatted(e)),
                },
                QueryView::Plain(_) => Reply::error(ERROR_ARGUMENT),
                QueryView::Dict(q) => {
                    let mnode = match self.node(&self.master_uuid) {
                        Ok(n) => n,
                        Err(e) => return Err(ErrorText::Shown("", e)),
                    };
                    let vals: Vec<&str> = q
                        .fields
                        .iter()
                        .map(|f| match f {
                            ReqField::Name => mnode.name.as_str(),
                            ReqField::Ip => self.master_ip.as_str(),
                            ReqField::MNodePip => mnode.primary_ip.as_str(),
                        })
                        .collect();
                    Reply::ok(vals, cs)
                }
            },
            RequestType::NodePipList => {
                let ips: Vec<&str> = self.nodes.values().rev().map(|n| n.primary_ip.as_str()).collect();
                Reply::ok(ips, cs)
            }
            RequestType::McPipList => {
                let ips: Vec<&str> =
                    self.nodes.values().rev().filter(|n| n.master_candidate).map(|n| n.primary_ip.as_str()).collect();
                Reply::ok(ips, cs)
            }
            RequestType::InstancesIpsList => {
                let link = match req.query {
                    QueryView::Plain(l) => l,
                    QueryView::Empty => &self.default_link,
                    QueryView::Dict(_) => return Err(ErrorText::Fixed("Invalid query type")),
                };
                let ips: Vec<&str> =
                    self.link_ips.get(link).map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
                Reply::ok(ips, cs)
            }
            RequestType::NodeDrbd => {
                let QueryView::Plain(name) = req.query else { return invalid_query(&req.query) };
                let node = match self.node(name) {
                    Ok(n) => n,
                    Err(e) => return Err(ErrorText::Shown("", e)),
                };
                let mut rows = Vec::new();
                for inst in self.instances.values() {
                    let disks = self.instance_disks(inst).unwrap_or_default();
                    let role = if inst.primary_node.as_deref() == Some(&node.uuid) { "primary" } else { "secondary" };
                    for (idx, (disk, _)) in disks.iter().enumerate() {
                        let mut minors = Vec::new();
                        Self::drbd_minors(&node.uuid, disk, &mut minors);
                        for (minor, peer) in minors {
                            let peer = match self.node(peer) {
                                Ok(p) => p.name.clone(),
                                Err(e) => return Err(ErrorText::Shown("", e)),
                            };
                            rows.push(json!([
                                node.name,
                                minor,
                                inst.name.clone().unwrap_or_default(),
                                format!("disk/{idx}"),
                                role,
                                peer
                            ]));
                        }
                    }
                }
                Reply::ok(rows, node.serial)
            }
            RequestType::NodeInstances => {
                let QueryView::Plain(name) = req.query else { return invalid_query(&req.query) };
                let node = match self.node(name) {
                    Ok(n) => n,
                    Err(e) => return Err(ErrorText::Shown("Node not found in the configuration: ", e)),
                };
                let mut primary = Vec::new();
                let mut secondary = Vec::new();
                for inst in self.instances.values() {
                    if inst.primary_node.as_deref() == Some(&node.uuid) {
                        primary.push(inst.value.clone());
                    }
                    // Secondaries: the nodes of the instance's own DRBD disks (not their
                    // children), minus its primary (`instSecondaryNodes`).
                    let disk_nodes: BTreeSet<&str> = self
                        .instance_disks(inst)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|(d, _)| d.drbd.as_ref())
                        .flat_map(|d| [d.node_a.as_str(), d.node_b.as_str()])
                        .collect();
                    if disk_nodes.contains(node.uuid.as_str()) && inst.primary_node.as_deref() != Some(&node.uuid) {
                        secondary.push(inst.value.clone());
                    }
                }
                Reply::ok(json!([primary, secondary]), node.serial)
            }
            RequestType::InstanceDisks => {
                let QueryView::Plain(name) = req.query else { return invalid_query(&req.query) };
                let (_, inst) = match self.instance(name) {
                    Ok(i) => i,
                    Err(e) => return Err(ErrorText::Shown("Instance not found in the configuration: ", e)),
                };
                match self.instance_disks(inst) {
                    Ok(disks) => Reply::ok(disks.into_iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(), inst.serial),
                    Err(e) => return Err(ErrorText::Shown("Could not retrieve disks: ", e)),
                }
            }
            RequestType::ConfigQuery => {
                let QueryView::Plain(path) = req.query else { return invalid_query(&req.query) };
                match parse_pointer(path).and_then(|p| extract(&self.config, &p)) {
                    Some(v) => Reply::ok(v.clone(), cs),
                    None => Reply::error(ERROR_ARGUMENT),
                }
            }
            RequestType::DataCollectors => Reply::ok(self.data_collectors.clone(), cs),
            // heartsink's own types are answered from the live snapshot (`confd::server`).
            RequestType::AmphoraHealth
            | RequestType::LbStatus
            | RequestType::DownSenders
            | RequestType::EngineCounters
            | RequestType::PoolNext
            | RequestType::PoolPoll => Reply::error(ERROR_ARGUMENT),
        })
    }
}

/// The daemon's JSON-pointer reader (`pointerFromString`, attoparsec, partial input allowed):
/// a `/`, then tokens separated by `/` (`~0` → `~`, `~1` → `/`). A token is one or more other
/// characters, or empty at the very end. The first token that cannot be read ends the pointer
/// (the rest is ignored: `/cluster//x` is `/cluster`); no first token is an error.
fn parse_pointer(s: &str) -> Option<Vec<String>> {
    let chars: Vec<char> = s.chars().collect();
    if chars.first() != Some(&'/') {
        return None;
    }
    let token = |i: &mut usize| -> Option<String> {
        let mut t = String::new();
        loop {
            match (chars.get(*i), chars.get(*i + 1)) {
                (Some('~'), Some('0')) => {
                    t.push('~');
                    *i += 2;
                }
                (Some('~'), Some('1')) => {
                    t.push('/');
                    *i += 2;
                }
                (Some(&c), _) if c != '~' && c != '/' => {
                    t.push(c);
                    *i += 1;
                }
                _ => break,
            }
        }
        if !t.is_empty() || *i == chars.len() {
            Some(t)
        } else {
            None
        }
    };
    let mut i = 1;
    let mut tokens = vec![token(&mut i)?];
    while chars.get(i) == Some(&'/') {
        let mut j = i + 1;
        match token(&mut j) {
            Some(t) => {
                tokens.push(t);
                i = j;
            }
            None => break,
        }
    }
    Some(tokens)
}

/// Follows a pointer: object members by key, list items by a leading decimal (`readInteger`:
/// `"0abc"` is 0, wrapped to 64 bits, then bounds-checked).
fn extract<'a>(v: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => {
                let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
                if digits.is_empty() {
                    return None;
                }
                let i =
                    digits.bytes().fold(0u64, |acc, d| acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))) as i64;
                a.get(usize::try_from(i).ok()?)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests;
mod write;
