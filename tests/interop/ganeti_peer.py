#!/usr/bin/python3
"""Queries a confd server with the REAL Ganeti 3.0.2 Python ConfdClient and prints the answers.

Run under Debian's /usr/bin/python3 with PYTHONPATH=/usr/share/ganeti/3.0 (scripts/setup-ganeti.sh
installs it). Usage:

    ganeti_peer.py --host 127.0.0.1 --port 1814 --key-file hmac.key [--cases CASES.json]
                   [--extend-reqs 100,101,102,103] [--hosts 127.0.0.1,127.0.0.2 --coverage N]

--hosts gives several peers (one port for all) and --coverage how many to ask (Ganeti's rule: 0
is min(peers, 6), -1 all). After the quorum, replies still due are awaited (bounded by
--timeout), so "consistent" (ConfdFilterCallback.consistent for the request's salt) covers every
peer that answered.

CASES.json is a list of {"type": N, "query": Q} (Q omitted or null for no query); the default is
one case per request type the Python client can send (it refuses type 8, NODE_INSTANCES).
Prints one JSON document: a list of {"type", "query", "timed_out", "sent", "received", "reply",
"error"} where reply is {"protocol", "status", "answer", "serial"} or null, and error is the
ConfdClientError the client raised for the case (then nothing was sent) or null. Every wait is
bounded.

The client refuses a type outside ganeti.constants.CONFD_REQS twice (in ConfdClientRequest and
in SendRequest: "Invalid request type"); both look the set up at call time, so --extend-reqs
adds numbers to it for this process (how an application would use heartsink's own types, 100-103,
through the unmodified client).
"""
import argparse
import json
import sys
import time

from ganeti import constants as C
from ganeti import errors
from ganeti.confd import client as cc

DEFAULT_CASES = [
    {"type": C.CONFD_REQ_PING},
    {"type": C.CONFD_REQ_NODE_ROLE_BYNAME, "query": "node1.example.com"},
    {"type": C.CONFD_REQ_NODE_PIP_BY_INSTANCE_IP, "query": {C.CONFD_REQQ_IP: "198.51.100.11"}},
    {"type": C.CONFD_REQ_CLUSTER_MASTER},
    {"type": C.CONFD_REQ_NODE_PIP_LIST},
    {"type": C.CONFD_REQ_MC_PIP_LIST},
    {"type": C.CONFD_REQ_INSTANCES_IPS_LIST},
    {"type": C.CONFD_REQ_NODE_DRBD, "query": "node1.example.com"},
    {"type": C.CONFD_REQ_INSTANCE_DISKS, "query": "instance1"},
    {"type": C.CONFD_REQ_CONFIG_QUERY, "query": "/cluster/cluster_name"},
    {"type": C.CONFD_REQ_DATA_COLLECTORS},
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host")
    ap.add_argument("--hosts", default="")
    ap.add_argument("--coverage", type=int, default=0)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--cases")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--extend-reqs", default="")
    args = ap.parse_args()
    extra = [int(n) for n in args.extend_reqs.split(",") if n]
    if extra:
        C.CONFD_REQS = frozenset(C.CONFD_REQS | set(extra))
    key = open(args.key_file).read()  # a str, LF included, as GetConfdClient reads it
    cases = json.load(open(args.cases)) if args.cases else DEFAULT_CASES
    hosts = [h for h in args.hosts.split(",") if h] or [args.host]
    store = cc.StoreResultCallback()
    filt = cc.ConfdFilterCallback(store)
    client = cc.ConfdClient(key, hosts, filt, port=args.port)
    out = []
    for case in cases:
        kw = {"type": case["type"]}
        if case.get("query") is not None:
            kw["query"] = case["query"]
        try:
            req = cc.ConfdClientRequest(**kw)
            client.SendRequest(req, coverage=args.coverage, async_=False)
        except errors.ConfdClientError as e:
            out.append({"type": case["type"], "query": case.get("query"), "timed_out": None,
                        "sent": 0, "received": 0, "reply": None, "error": str(e)})
            continue
        start = time.monotonic()
        timed_out, sent, received = client.WaitForReply(req.rsalt, timeout=args.timeout)
        # The replies still due after the quorum (from live peers), within the same bound.
        while received < sent and time.monotonic() - start < args.timeout:
            client.ReceiveReply(timeout=0.1)
            rq = client._requests.get(req.rsalt)
            if rq is None:
                break
            received = len(rq.rcvd)
        ok, upcall = store.GetResponse(req.rsalt)
        reply = upcall.server_reply.ToDict() if ok else None
        out.append({"type": case["type"], "query": case.get("query"), "timed_out": timed_out,
                    "sent": sent, "received": received, "reply": reply, "error": None,
                    "consistent": filt.consistent.get(req.rsalt, True)})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
