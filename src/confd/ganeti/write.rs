//! Ganeti answers written into the reply as the index is walked, without allocating: the
//! types whose built answers (`ConfigIndex::answer_view`) copy the index into values, and the
//! error texts (the daemon's messages and Haskell `show` renderings, formatted in place).

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use super::{ConfigIndex, Disk, Instance, Node};
use crate::confd::json::{HsShow, Seq};
use crate::confd::proto::{
    Answer, Answered, QueryView, Reply, ReplyMsg, ReqField, RequestType, RequestView, ERROR_ARGUMENT, STATUS_ERROR,
    STATUS_OK,
};

/// An `OpPrereqError … ECodeNoEnt` message, `<what> <key> not found` (or `has multiple
/// matches`), borrowed: rendered one of the daemon's two ways by [`ErrorText`].
#[derive(Clone, Copy, Debug)]
pub(super) struct NoEnt<'a> {
    what: &'static str,
    key: &'a str,
    multiple: bool,
}

impl<'a> NoEnt<'a> {
    pub(super) fn not_found(what: &'static str, key: &'a str) -> Self {
        NoEnt { what, key, multiple: false }
    }

    pub(super) fn multiple(what: &'static str, key: &'a str) -> Self {
        NoEnt { what, key, multiple: true }
    }

    fn end(&self) -> &'static str {
        if self.multiple {
            " has multiple matches"
        } else {
            " not found"
        }
    }

    /// The message's characters (for `show`).
    fn chars(&self) -> impl Iterator<Item = char> + Clone + 'a {
        self.what.chars().chain(" ".chars()).chain(self.key.chars()).chain(self.end().chars())
    }
}

impl std::fmt::Display for NoEnt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}{}", self.what, self.key, self.end())
    }
}

/// The text of an error answer, written where it goes (no intermediate `String`).
#[derive(Clone, Copy, Debug)]
pub(super) enum ErrorText<'a> {
    /// `formatError err`: `Failure: prerequisites not met …`.
    Formatted(NoEnt<'a>),
    /// A prefix, then `show err`: `OpPrereqError "…" ECodeNoEnt`.
    Shown(&'static str, NoEnt<'a>),
    /// `Invalid query type <show query>`.
    InvalidQuery(QueryView<'a>),
    /// A fixed text.
    Fixed(&'static str),
}

impl std::fmt::Display for ErrorText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorText::Formatted(e) => write!(
                f,
                "Failure: prerequisites not met for this operation:\nerror type: ECodeNoEnt, error details:\n{e}"
            ),
            ErrorText::Shown(prefix, e) => write!(f, "{prefix}OpPrereqError {} ECodeNoEnt", HsShow(e.chars())),
            ErrorText::InvalidQuery(q) => write!(f, "Invalid query type {}", ShowQuery(q)),
            ErrorText::Fixed(t) => f.write_str(t),
        }
    }
}

impl ErrorText<'_> {
    /// The error reply, built (allocates).
    pub(super) fn to_reply(self) -> Reply {
        Reply::error(self.to_string())
    }
}

/// `show` of a query, as in the daemon's "Invalid query type …" answers.
struct ShowQuery<'q, 'a>(&'q QueryView<'a>);

impl std::fmt::Display for ShowQuery<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = match self.0 {
            QueryView::Empty => return f.write_str("EmptyQuery"),
            QueryView::Plain(s) => return write!(f, "PlainQuery {}", HsShow(s.chars())),
            QueryView::Dict(d) => d,
        };
        let maybe = |f: &mut std::fmt::Formatter<'_>, m: Option<&str>| match m {
            None => f.write_str("Nothing"),
            Some(s) => write!(f, "Just {}", HsShow(s.chars())),
        };
        f.write_str("DictQuery (ConfdReqQ {confdReqQIp = ")?;
        maybe(f, d.ip)?;
        f.write_str(", confdReqQIpList = [")?;
        for (i, ip) in d.ip_list.iter().enumerate() {
            write!(f, "{}{}", if i > 0 { "," } else { "" }, HsShow(ip.chars()))?;
        }
        f.write_str("], confdReqQLink = ")?;
        maybe(f, d.link)?;
        f.write_str(", confdReqQFields = [")?;
        for (i, field) in d.fields.iter().enumerate() {
            write!(f, "{}{}", if i > 0 { "," } else { "" }, field.hs_name())?;
        }
        f.write_str("]})")
    }
}

/// An answer of `NODE_PIP_BY_INSTANCE_IP` in a list: an integer or a string.
struct IntOrStr<'a>(Answer<'a>);

impl Serialize for IntOrStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Answer::Int(i) => s.serialize_i64(*i),
            Answer::Str(t) => s.serialize_str(t),
            _ => s.serialize_unit(),
        }
    }
}

/// `disk/<index>`.
struct DiskName(usize);

impl Serialize for DiskName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("disk/{}", self.0))
    }
}

/// One DRBD minor of a node (a `NODE_DRBD` row before its names are looked up).
#[derive(Clone, Copy)]
struct DrbdRow<'a> {
    minor: i64,
    instance: &'a str,
    disk: usize,
    role: &'static str,
    peer: &'a str,
}

/// The `NODE_DRBD` rows of a node, checked (every peer is a node).
struct DrbdRows<'a> {
    ix: &'a ConfigIndex,
    node: &'a Node,
}

impl Serialize for DrbdRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        self.ix.each_drbd_row(self.node, &mut |r| {
            let peer = self.ix.node(r.peer).map_or("", |p| p.name.as_str());
            seq.serialize_element(&(&self.node.name, r.minor, r.instance, DiskName(r.disk), r.role, peer))
        })?;
        seq.end()
    }
}

/// The DRBD minors of `node` in `disk` and its children, in the order of `drbd_minors`.
fn each_minor<'a, E>(node: &str, disk: &'a Disk, f: &mut impl FnMut(i64, &'a str) -> Result<(), E>) -> Result<(), E> {
    if let Some(d) = &disk.drbd {
        if d.node_a == node {
            f(d.minor_a, &d.node_b)?;
        } else if d.node_b == node {
            f(d.minor_b, &d.node_a)?;
        }
    }
    disk.children.iter().try_for_each(|c| each_minor(node, c, f))
}

/// The daemon's JSON-pointer reader and follower (`parse_pointer` then `extract`) in one walk:
/// each token is followed as it is read, unescaped only to be compared.
fn follow_pointer<'v>(root: &'v Value, s: &str) -> Option<&'v Value> {
    let b = s.as_bytes();
    if b.first() != Some(&b'/') {
        return None;
    }
    // The end of the token starting at `i`, if one can be read there.
    let token_end = |mut i: usize| -> Option<usize> {
        let start = i;
        loop {
            match (b.get(i), b.get(i + 1)) {
                (Some(b'~'), Some(b'0' | b'1')) => i += 2,
                (Some(&c), _) if c != b'~' && c != b'/' => i += 1,
                _ => break,
            }
        }
        (i > start || i == b.len()).then_some(i)
    };
    let mut end = token_end(1)?;
    let mut cur = follow_token(root, &s[1..end])?;
    while b.get(end) == Some(&b'/') {
        match token_end(end + 1) {
            Some(e) => {
                cur = follow_token(cur, &s[end + 1..e])?;
                end = e;
            }
            None => break,
        }
    }
    Some(cur)
}

/// The characters of a pointer token (`~0` → `~`, `~1` → `/`).
fn unescaped(raw: &str) -> impl Iterator<Item = char> + '_ {
    let mut chars = raw.chars();
    std::iter::from_fn(move || match chars.next()? {
        '~' => match chars.next() {
            Some('0') => Some('~'),
            _ => Some('/'),
        },
        c => Some(c),
    })
}

/// One pointer step: an object member by key, a list item by a leading decimal (`readInteger`:
/// `"0abc"` is 0, wrapped to 64 bits, then bounds-checked).
fn follow_token<'v>(v: &'v Value, raw: &str) -> Option<&'v Value> {
    match v {
        Value::Object(m) if raw.contains('~') => m.iter().find(|(k, _)| unescaped(raw).eq(k.chars())).map(|(_, v)| v),
        Value::Object(m) => m.get(raw),
        Value::Array(a) => {
            let digits = &raw[..raw.bytes().take_while(u8::is_ascii_digit).count()];
            if digits.is_empty() {
                return None;
            }
            let i = digits.bytes().fold(0u64, |acc, d| acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))) as i64;
            a.get(usize::try_from(i).ok()?)
        }
        _ => None,
    }
}

impl ConfigIndex {
    /// Calls `f` with every `NODE_DRBD` row of `node`, in the daemon's order: instances by
    /// UUID (those with a missing disk have none), their disks, each disk then its children.
    fn each_drbd_row<'a, E>(
        &'a self,
        node: &'a Node,
        f: &mut impl FnMut(DrbdRow<'a>) -> Result<(), E>,
    ) -> Result<(), E> {
        for inst in self.instances.values() {
            if !inst.disks.iter().all(|d| self.disks.contains_key(d)) {
                continue;
            }
            let role = if inst.primary_node.as_deref() == Some(&node.uuid) { "primary" } else { "secondary" };
            let instance = inst.name.as_deref().unwrap_or("");
            for (disk, (tree, _)) in inst.disks.iter().filter_map(|d| self.disks.get(d)).enumerate() {
                each_minor(&node.uuid, tree, &mut |minor, peer| f(DrbdRow { minor, instance, disk, role, peer }))?;
            }
        }
        Ok(())
    }

    /// Whether `node` is a secondary of `inst`: a node of one of its own DRBD disks (not their
    /// children), not its primary (`instSecondaryNodes`); none when a disk is missing.
    fn is_secondary(&self, inst: &Instance, node: &str) -> bool {
        inst.primary_node.as_deref() != Some(node)
            && inst.disks.iter().all(|d| self.disks.contains_key(d))
            && inst
                .disks
                .iter()
                .filter_map(|d| self.disks.get(d))
                .any(|(d, _)| d.drbd.as_ref().is_some_and(|d| d.node_a == node || d.node_b == node))
    }

    /// Writes the answers that `answer_built` builds from copies of the index, and their
    /// errors; `false` (nothing written) for the other requests.
    pub(super) fn write_in_place(&self, req: &RequestView<'_>, msg: &mut ReplyMsg) -> bool {
        let cs = self.cluster_serial;
        let shown = |msg: &mut ReplyMsg, prefix, e| msg.write_text(STATUS_ERROR, &ErrorText::Shown(prefix, e), 0);
        match (req.kind, &req.query) {
            (RequestType::NodePipByInstanceIp, QueryView::Dict(q)) => {
                let link = q.link.unwrap_or(&self.default_link);
                match q.ip {
                    Some(ip) => msg.write(&self.node_pip(link, ip)),
                    None => {
                        let rows = q.ip_list.iter().map(|ip| {
                            let a = self.node_pip(link, ip);
                            (a.status, IntOrStr(a.answer), a.serial)
                        });
                        msg.write_json(STATUS_OK, &Seq(rows), cs);
                    }
                }
            }
            (RequestType::ClusterMaster, QueryView::Dict(q)) => match self.node(&self.master_uuid) {
                Ok(m) => {
                    let vals = q.fields.iter().map(|f| match f {
                        ReqField::Name => m.name.as_str(),
                        ReqField::Ip => self.master_ip.as_str(),
                        ReqField::MNodePip => m.primary_ip.as_str(),
                    });
                    msg.write_json(STATUS_OK, &Seq(vals), cs);
                }
                Err(e) => shown(msg, "", e),
            },
            (RequestType::NodePipList, _) => {
                msg.write_json(STATUS_OK, &Seq(self.nodes.values().rev().map(|n| n.primary_ip.as_str())), cs);
            }
            (RequestType::McPipList, _) => {
                let ips = self.nodes.values().rev().filter(|n| n.master_candidate).map(|n| n.primary_ip.as_str());
                msg.write_json(STATUS_OK, &Seq(ips), cs);
            }
            (RequestType::NodeDrbd, QueryView::Plain(name)) => match self.node(name) {
                Ok(node) => {
                    let checked = self.each_drbd_row(node, &mut |r| self.node(r.peer).map(|_| ()));
                    match checked {
                        Ok(()) => msg.write_json(STATUS_OK, &DrbdRows { ix: self, node }, node.serial),
                        Err(e) => shown(msg, "", e),
                    }
                }
                Err(e) => shown(msg, "", e),
            },
            (RequestType::NodeInstances, QueryView::Plain(name)) => match self.node(name) {
                Ok(node) => {
                    let insts = self.instances.values();
                    let primary = insts.clone().filter(|i| i.primary_node.as_deref() == Some(&node.uuid));
                    let secondary = insts.filter(|i| self.is_secondary(i, &node.uuid));
                    let answer = (Seq(primary.map(|i| &i.value)), Seq(secondary.map(|i| &i.value)));
                    msg.write_json(STATUS_OK, &answer, node.serial);
                }
                Err(e) => shown(msg, "Node not found in the configuration: ", e),
            },
            (RequestType::InstanceDisks, QueryView::Plain(name)) => match self.instance(name) {
                Ok((_, inst)) => match inst.disks.iter().find(|d| !self.disks.contains_key(*d)) {
                    Some(d) => shown(msg, "Could not retrieve disks: ", NoEnt::not_found("Disk uuid", d)),
                    None => {
                        let disks = inst.disks.iter().filter_map(|d| self.disks.get(d)).map(|(_, v)| v);
                        msg.write_json(STATUS_OK, &Seq(disks), inst.serial);
                    }
                },
                Err(e) => shown(msg, "Instance not found in the configuration: ", e),
            },
            (RequestType::ConfigQuery, QueryView::Plain(path)) => match follow_pointer(&self.config, path) {
                Some(v) => msg.write_json(STATUS_OK, v, cs),
                None => msg.write(&Answered { status: STATUS_ERROR, answer: Answer::Int(ERROR_ARGUMENT), serial: 0 }),
            },
            (RequestType::DataCollectors, _) => msg.write_json(STATUS_OK, &self.data_collectors, cs),
            _ => return false,
        }
        true
    }
}
