//! Unit tests of the Ganeti answers.

use super::*;
use crate::confd::proto::{DictQuery, Query, ReplyMsg};

fn index() -> ConfigIndex {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/confd/config.data.json");
    ConfigIndex::load(path).expect("test config loads")
}

fn ask(ix: &ConfigIndex, kind: RequestType, query: Query) -> (i64, Value, i64) {
    let r = ix.answer(&Request::new(kind, query, "r"));
    (r.status, r.answer, r.serial)
}

fn plain(s: &str) -> Query {
    Query::Plain(s.to_owned())
}

#[test]
fn answers_observed_from_the_daemon() {
    use RequestType::*;
    let ix = index();
    assert_eq!(ask(&ix, Ping, Query::Empty), (0, json!(3000000), 0));
    assert_eq!(ask(&ix, NodeRoleByName, plain("node1.example.com")), (0, json!(0), 3189));
    assert_eq!(ask(&ix, NodeRoleByName, plain("node1")), (0, json!(1), 3189));
    assert_eq!(ask(&ix, NodeRoleByName, plain("2ae3d962-2dad-44f2-bdb1-85f77107f907")), (0, json!(1), 3189));
    assert_eq!(
        ask(&ix, NodeRoleByName, plain("node")),
        (1, json!("Failure: prerequisites not met for this operation:\nerror type: ECodeNoEnt, error details:\nNode name node not found"), 0)
    );
    assert_eq!(ask(&ix, NodeRoleByName, Query::Empty), (1, json!("Invalid query type EmptyQuery"), 0));
    let d = Query::Dict(DictQuery { link: Some("n\u{f6}de\n\\".into()), ..Default::default() });
    assert_eq!(
        ask(&ix, NodeRoleByName, d).1,
        json!("Invalid query type DictQuery (ConfdReqQ {confdReqQIp = Nothing, confdReqQIpList = [], confdReqQLink = Just \"n\\246de\\n\\\\\", confdReqQFields = []})")
    );
    let q = Query::Dict(DictQuery {
        ip_list: vec!["198.51.100.11".into(), "198.51.100.12".into(), "1.2.3.4".into()],
        ..Default::default()
    });
    assert_eq!(
        ask(&ix, NodePipByInstanceIp, q),
        (0, json!([[0, "192.0.2.82", 3189], [0, "192.0.2.84", 3189], [1, 0, 0]]), 3189)
    );
    let q = Query::Dict(DictQuery { ip: Some("198.51.100.11".into()), ..Default::default() });
    assert_eq!(ask(&ix, NodePipByInstanceIp, q), (0, json!("192.0.2.82"), 3189));
    assert_eq!(ask(&ix, NodePipByInstanceIp, Query::Empty), (1, json!(2), 0));
    let fields = Query::Dict(DictQuery {
        fields: vec![ReqField::MNodePip, ReqField::Ip, ReqField::Name, ReqField::Name],
        ..Default::default()
    });
    assert_eq!(
        ask(&ix, ClusterMaster, fields),
        (0, json!(["192.0.2.82", "192.0.2.87", "node1.example.com", "node1.example.com"]), 3189)
    );
    assert_eq!(ask(&ix, ClusterMaster, plain("x")), (1, json!(2), 0));
    assert_eq!(ask(&ix, NodePipList, Query::Empty), (0, json!(["192.0.2.82", "192.0.2.84", "192.0.2.83"]), 3189));
    assert_eq!(
        ask(&ix, InstancesIpsList, Query::Empty),
        (0, json!(["198.51.100.11", "198.51.100.12", "198.51.100.13"]), 3189)
    );
    assert_eq!(ask(&ix, InstancesIpsList, plain("br0")), (0, json!([]), 3189));
    assert_eq!(
        ask(&ix, NodeDrbd, plain("node1.example.com")),
        (0, json!([["node1.example.com", 0, "instance1.example.com", "disk/0", "primary", "node3.example.com"]]), 197)
    );
    assert_eq!(ask(&ix, NodeDrbd, plain("node2")), (0, json!([]), 6));
    assert_eq!(
        ask(&ix, NodeDrbd, plain("nope")),
        (1, json!("OpPrereqError \"Node name nope not found\" ECodeNoEnt"), 0)
    );
    assert_eq!(
        ask(&ix, NodeInstances, plain("nope")).1,
        json!("Node not found in the configuration: OpPrereqError \"Node name nope not found\" ECodeNoEnt")
    );
    assert_eq!(
        ask(&ix, InstanceDisks, plain("nope")).1,
        json!("Instance not found in the configuration: OpPrereqError \"Instance name nope not found\" ECodeNoEnt")
    );
    let (s, disks, serial) = ask(&ix, InstanceDisks, plain("instance1"));
    assert_eq!((s, serial), (0, 2));
    assert_eq!(disks[0]["children"][0]["iv_name"], json!(""));
    assert_eq!(disks[0]["children"][0]["children"], json!([]));
    let (s, insts, serial) = ask(&ix, NodeInstances, plain("node3"));
    assert_eq!((s, serial), (0, 2));
    assert_eq!(insts[1][0]["name"], json!("instance1.example.com"));
    assert_eq!(ask(&ix, ConfigQuery, plain("/cluster/cluster_name")), (0, json!("cluster.name.example.com"), 3189));
    assert_eq!(ask(&ix, ConfigQuery, plain("/cluster//x")).1["cluster_name"], json!("cluster.name.example.com"));
    for bad in [
        "",
        "/",
        "//",
        "/cluster/",
        "cluster",
        "/nope",
        "/cluster/enabled_hypervisors/5",
        "/cluster/enabled_hypervisors/-",
    ] {
        assert_eq!(ask(&ix, ConfigQuery, plain(bad)), (1, json!(2), 0), "{bad:?}");
    }
    assert_eq!(ask(&ix, ConfigQuery, plain("/cluster/enabled_hypervisors/00")).1, json!("xen-pvm"));
    assert_eq!(ask(&ix, ConfigQuery, plain("/cluster/data_collectors/lv/interval")).1, json!(5000000));
    let (_, dc, serial) = ask(&ix, DataCollectors, Query::Empty);
    assert_eq!(serial, 3189);
    assert_eq!(dc["cpu-avg-load"], json!({"active": true, "interval": 5000000}));
}

#[test]
fn timestamps_round_trip_through_picoseconds() {
    let t = |s: &str| daemon_time(&serde_json::from_str(s).unwrap()).unwrap().to_string();
    assert_eq!(t("1358348755.779906"), "1358348755.7799058");
    assert_eq!(t("1343869205.934807"), "1343869205.9348073");
    assert_eq!(t("1343869045.604884"), "1343869045.604884");
    assert_eq!(t("0"), "0");
    assert_eq!(t("1360000000.0"), "1360000000");
    assert_eq!(daemon_time(&json!("x")), None);
    let ix = index();
    let nodes = ask(&ix, RequestType::ConfigQuery, plain("/nodes")).1;
    assert!(nodes.as_object().unwrap().values().any(|n| n["mtime"] == json!(1358348755.7799058)));
}

#[test]
fn name_lookup_rules() {
    let names = ["a.x", "a.y", "b.x", "bb.x"];
    assert!(matches!(lookup_name(names.into_iter(), "a"), Lookup::Multiple));
    assert!(matches!(lookup_name(names.into_iter(), "b"), Lookup::Found("b.x")));
    assert!(matches!(lookup_name(names.into_iter(), "a.x"), Lookup::Found("a.x")));
    assert!(matches!(lookup_name(names.into_iter(), "c"), Lookup::NotFound));
}

#[test]
fn bad_files_are_named() {
    assert!(ConfigIndex::from_slice(b"not json").unwrap_err().reason.contains("not JSON"));
    let e = ConfigIndex::from_slice(b"{\"version\": 3000000}").unwrap_err();
    assert_eq!(e.reason, "missing serial_no");
}

/// The error texts as they were built before they were written in place.
fn reference_show_query(q: &QueryView<'_>) -> String {
    use crate::confd::json::hs_show_string;
    match q {
        QueryView::Empty => "EmptyQuery".to_owned(),
        QueryView::Plain(s) => format!("PlainQuery {}", hs_show_string(s)),
        QueryView::Dict(d) => {
            let maybe = |m: Option<&str>| m.map_or("Nothing".to_owned(), |s| format!("Just {}", hs_show_string(s)));
            let ips: Vec<String> = d.ip_list.iter().map(hs_show_string).collect();
            let fields: Vec<&str> = d.fields.iter().map(|f| f.hs_name()).collect();
            format!(
                "DictQuery (ConfdReqQ {{confdReqQIp = {}, confdReqQIpList = [{}], confdReqQLink = {}, confdReqQFields = [{}]}})",
                maybe(d.ip),
                ips.join(","),
                maybe(d.link),
                fields.join(",")
            )
        }
    }
}

#[test]
fn error_texts_are_the_built_ones() {
    let dicts = [
        DictQuery::default(),
        DictQuery {
            link: Some("\u{e4}9".into()),
            ip: Some("x\u{1}".into()),
            ip_list: vec!["\u{20ac}1".into(), "2".into(), "\u{e}H".into()],
            fields: vec![ReqField::Ip, ReqField::Name, ReqField::MNodePip],
        },
    ];
    let mut queries = vec![Query::Empty, plain(""), plain("a\u{e9}1\"\\")];
    queries.extend(dicts.into_iter().map(Query::Dict));
    for q in &queries {
        let req = Request::new(RequestType::NodeDrbd, q.clone(), "r");
        let v = req.view();
        let want = format!("Invalid query type {}", reference_show_query(&v.query));
        assert_eq!(ErrorText::InvalidQuery(v.query).to_string(), want);
    }
    let key = "k\u{e9}1";
    let shown = |e: NoEnt<'_>, old: &str| {
        assert_eq!(
            ErrorText::Shown("p: ", e).to_string(),
            format!("p: OpPrereqError {} ECodeNoEnt", crate::confd::json::hs_show_string(old))
        );
        assert_eq!(
            ErrorText::Formatted(e).to_string(),
            format!(
                "Failure: prerequisites not met for this operation:\nerror type: ECodeNoEnt, error details:\n{old}"
            )
        );
    };
    shown(NoEnt::not_found("Node name", key), &format!("Node name {key} not found"));
    shown(NoEnt::multiple("Instance name", key), &format!("Instance name {key} has multiple matches"));
    shown(NoEnt::not_found("Disk uuid", key), &format!("Disk uuid {key} not found"));
}

/// The answers written in place are the bytes of the built ones, for every type.
#[test]
fn borrowed_answers_are_byte_identical_to_built_ones() {
    use RequestType::*;
    let ix = index();
    let dict = |f: fn(&mut DictQuery)| {
        let mut d = DictQuery::default();
        f(&mut d);
        Query::Dict(d)
    };
    let queries = [
        Query::Empty,
        plain(""),
        plain("node1.example.com"),
        plain("node1"),
        plain("node2"),
        plain("node"),
        plain("2ae3d962-2dad-44f2-bdb1-85f77107f907"),
        plain("instance1"),
        plain("br0"),
        plain("xen-br0"),
        plain("/cluster/cluster_name"),
        plain("/cluster//x"),
        plain("/cluster/enabled_hypervisors/00"),
        plain("/cluster/enabled_hypervisors/0abc"),
        plain("/cluster/enabled_hypervisors/-1"),
        plain("/cluster/enabled_hypervisors/99999999999999999999"),
        plain("/cluster/x~1y"),
        plain("/cluster/~0"),
        plain("/cluster/a~2b"),
        plain("/cluster/data_collectors/lv"),
        plain("/nodes"),
        plain("/instances"),
        plain("/disks/"),
        plain("/"),
        plain("//"),
        plain("~"),
        plain("n\u{f6}de\n\\"),
        plain("nope"),
        plain("n\u{e9}1\u{e}H\u{7f}\""),
        dict(|d| {
            d.link = Some("\u{e4}9".into());
            d.ip = Some("x\u{1}".into());
            d.ip_list = vec!["\u{20ac}1".into(), "2".into()];
            d.fields = vec![ReqField::Ip, ReqField::Name];
        }),
        dict(|d| d.fields = vec![ReqField::Name, ReqField::Ip, ReqField::MNodePip]),
        dict(|d| d.ip = Some("198.51.100.11".into())),
        dict(|d| d.ip_list = vec!["198.51.100.11".into(), "1.2.3.4".into()]),
        dict(|d| d.link = Some("xen-br0".into())),
    ];
    let (mut fast, mut built) = (ReplyMsg::default(), ReplyMsg::default());
    for kind in RequestType::ALL {
        for q in &queries {
            let req = Request::new(kind, q.clone(), "r");
            ix.write_answer(&req.view(), &mut fast);
            built.write_reply(&ix.answer_built(&req.view()).unwrap_or_else(ErrorText::to_reply));
            assert_eq!(fast.as_str(), built.as_str(), "{req:?}");
        }
    }
    for link in ix.link_ips.keys() {
        let req = Request::new(InstancesIpsList, plain(link), "r");
        ix.write_answer(&req.view(), &mut fast);
        built.write_reply(&ix.answer_built(&req.view()).unwrap_or_else(ErrorText::to_reply));
        assert_eq!(fast.as_str(), built.as_str(), "{req:?}");
    }
}
