"""Octavia 19.0.0 heartbeat peer for heartsink interop tests and the bench.

Run with the Python of the Octavia virtualenv made by scripts/setup-octavia.sh
(default target/peers/octavia/bin/python). Only Octavia's own code builds,
wraps, sends and unwraps heartbeats; this file supplies the surroundings an
amphora would have (config, HAProxy files, HAProxy stats socket).

Subcommands
-----------
send --target HOST:PORT (--key KEY | --key-file PATH)
     [--amphorae N] [--rounds R] [--seed S]

    Sends heartbeats to HOST:PORT and prints ONE JSON document on stdout:

        {"sent": [{...message..., "_tag": "hex"|"binary"}, ...]}

    listing every message object exactly as it was sent, in sending order.
    "_tag" is added for the caller only (it is not part of the datagram).

    * N amphorae (default 3) x R rounds (default 2), interleaved round by
      round: ver-3 messages from the real
      health_daemon.build_stats_message(), fed by a per-amphora temp
      base_path (<lb>/haproxy.cfg, <lb>/<lb>.pid = our own pid) and a
      stand-in HAProxy stats socket <base_path>/<lb>.sock that answers
      "show stat" CSV (1 frontend, 1 backend "<pool>:<listener>", 3 servers,
      plus an internal prometheus frontend that Octavia filters out).
      Member/listener statuses vary per amphora and round, counters grow,
      so ver-3 deltas are non-trivial. Each amphora has its own SEQ /
      COUNTERS / COUNTERS_FILE state (seq starts at 0 per amphora).
    * Then one hand-made message each from four extra amphorae:
      ver 2, ver 1 (pools nested in listeners), legacy (no "ver") -- all
      sent by the real health_sender.UDPStatusSender().dosend() (hex tag) --
      and one legacy message wrapped with
      status_message.wrap_envelope(msg, key, hex=False) and sent over a
      plain UDP socket (Queens-era 32-byte binary tag).
    Amphora/listener/pool/member ids are fixed, valid uuid4 strings derived
    from --seed (default "heartsink"); change the seed to get fresh ids.
    Sends are ~2 ms apart. Exit 0 on success.

unwrap (--key KEY | --key-file PATH) FILE

    Reads one envelope from FILE ("-" = stdin), runs Octavia's
    status_message.unwrap_envelope() and prints the decoded JSON value
    (exit 0). If Octavia rejects it, prints the exception class name
    (e.g. InvalidHMACException) and exits 3.

How the Rust interop test uses it: it starts heartsink on an ephemeral UDP
port, runs `send --target 127.0.0.1:PORT --key K`, and checks that heartsink
accepted and decoded each object listed in "sent" (minus "_tag"); for the
other direction it writes heartsink-encoded envelopes to files and runs
`unwrap --key K FILE`, expecting exit 0 and the original object.

Everything besides the final JSON (eventlet banner, Octavia log warnings)
goes to stderr.
"""

import argparse
import copy
import hashlib
import json
import os
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
import time
import uuid

SEND_GAP_S = 0.002

# Keep stdout clean for the single JSON document: anything printed while
# importing or running Octavia goes to stderr.
_STDOUT = sys.stdout
sys.stdout = sys.stderr

from oslo_config import cfg  # noqa: E402

import octavia.common.config  # noqa: E402,F401  (registers all options)
from octavia.amphorae.backends.health_daemon import health_daemon  # noqa: E402
from octavia.amphorae.backends.health_daemon import health_sender  # noqa: E402
from octavia.amphorae.backends.health_daemon import status_message  # noqa: E402

CONF = cfg.CONF


def emit(obj):
    _STDOUT.write(json.dumps(obj) + "\n")
    _STDOUT.flush()


def make_uuid(seed, name):
    """Deterministic, valid uuid4 string for (seed, name)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# --------------------------------------------------------------------------
# HAProxy stand-in
# --------------------------------------------------------------------------

# "show stat" columns of HAProxy 2.x (the amphora image's HAProxy).
CSV_FIELDS = (
    "pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,"
    "econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,"
    "downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,"
    "rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,"
    "hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,"
    "req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,"
    "last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,"
    "agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,"
    "agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,"
    "conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,"
    "cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,"
    "rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,"
    "need_conn_est,uweight"
).split(",")
TYPE_FRONTEND, TYPE_BACKEND, TYPE_SERVER = 0, 1, 2

# (HAProxy server status, weight). ("UP", "0") is reported by Octavia as
# DRAIN (its work-around for old HAProxy versions).
SERVER_STATES = (
    ("UP", "1"), ("DOWN", "1"), ("no check", "1"), ("MAINT", "0"),
    ("DRAIN", "0"), ("UP 1/3", "1"), ("DOWN 1/2", "1"), ("UP", "0"),
)
FRONTEND_SLIM = 50000


def csv_line(values):
    return ",".join(str(values.get(f, "")) for f in CSV_FIELDS) + ","


class FakeHAProxy:
    """HAProxy files and stats socket for one amphora with one listener."""

    def __init__(self, base_path, index, seed):
        self.base_path = base_path
        self.index = index
        name = f"amp{index}"
        self.amphora_id = make_uuid(seed, name)
        self.lb_id = make_uuid(seed, name + "/lb")
        self.listener_id = make_uuid(seed, name + "/listener")
        self.pool_id = make_uuid(seed, name + "/pool")
        self.member_ids = [make_uuid(seed, f"{name}/member{j}")
                           for j in range(3)]
        self.round = 0
        self.saved = {"SEQ": 0, "COUNTERS": None, "COUNTERS_FILE": None}

        lb_dir = os.path.join(base_path, self.lb_id)
        os.makedirs(lb_dir)
        self.sock_path = os.path.join(base_path, self.lb_id + ".sock")
        with open(os.path.join(lb_dir, self.lb_id + ".pid"), "w") as f:
            f.write(f"{os.getpid()}\n")
        with open(os.path.join(lb_dir, "haproxy.cfg"), "w") as f:
            f.write(self._haproxy_cfg())

        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode("ascii").strip()
                self.wfile.write(peer.answer(line).encode("ascii"))

        self.server = socketserver.ThreadingUnixStreamServer(
            self.sock_path, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _haproxy_cfg(self):
        """Shape of Octavia's combined_listeners template (only the file's
        existence matters to build_stats_message)."""
        servers = "".join(
            f"    server {m} 192.0.2.{11 + j}:8080 weight 1 check inter 5s "
            f"fall 3 rise 4\n" for j, m in enumerate(self.member_ids))
        backend = f"{self.pool_id}:{self.listener_id}"
        return (
            f"# Configuration for loadbalancer {self.lb_id}\n"
            "global\n"
            "    daemon\n"
            "    user nobody\n"
            "    log /run/rsyslog/octavia/log local0\n"
            "    log /run/rsyslog/octavia/log local1 notice\n"
            f"    stats socket {self.sock_path} mode 0666 level user\n"
            f"    maxconn {FRONTEND_SLIM}\n"
            "\n"
            "defaults\n"
            "    log global\n"
            "    retries 3\n"
            "    option redispatch\n"
            "    option splice-request\n"
            "    option splice-response\n"
            "    option http-keep-alive\n"
            "\n"
            "frontend prometheus-exporter-internal-endpoint\n"
            "    bind 127.0.0.1:9101\n"
            "    mode http\n"
            "    no log\n"
            "    http-request use-service prometheus-exporter if "
            "{ path /metrics }\n"
            "\n"
            f"frontend {self.listener_id}\n"
            f"    maxconn {FRONTEND_SLIM}\n"
            "    bind 203.0.113.10:80\n"
            "    mode http\n"
            f"    default_backend {backend}\n"
            "    timeout client 50000\n"
            "\n"
            f"backend {backend}\n"
            "    mode http\n"
            "    balance roundrobin\n"
            "    timeout check 10s\n"
            "    option httpchk GET /\n"
            "    http-check expect rstatus 200\n"
            f"    fullconn {FRONTEND_SLIM}\n"
            "    option allbackups\n"
            "    timeout connect 5000\n"
            "    timeout server 50000\n"
            f"{servers}")

    # -- stats for the current round --------------------------------------

    def _rows(self):
        i, r = self.index, self.round
        # Absolute counters, strictly growing from round to round.
        stot = 1000 * (i + 1) + r * (137 + 11 * i)
        rx = 123456 * (i + 1) + r * (64000 + 512 * i)
        tx = 654321 * (i + 1) + r * (512000 + 4096 * i)
        ereq = i + 2 * r
        full = (i + r) % 4 == 3
        scur = FRONTEND_SLIM if full else 3 + i + r
        backend = f"{self.pool_id}:{self.listener_id}"

        rows = [
            {"pxname": "prometheus-exporter-internal-endpoint",
             "svname": "FRONTEND", "scur": 1, "smax": 1, "slim": 8000,
             "stot": 40 + r, "bin": 9000 + r, "bout": 800000 + r, "dreq": 0,
             "dresp": 0, "ereq": 0, "status": "OPEN", "pid": 1, "iid": 2,
             "type": TYPE_FRONTEND, "mode": "http"},
            {"pxname": self.listener_id, "svname": "FRONTEND",
             "qcur": "", "scur": scur, "smax": max(scur, 40),
             "slim": FRONTEND_SLIM, "stot": stot, "bin": rx, "bout": tx,
             "dreq": 0, "dresp": 0, "ereq": ereq,
             "status": "FULL" if full else "OPEN", "pid": 1, "iid": 3,
             "type": TYPE_FRONTEND, "rate": 2, "rate_max": 19,
             "req_tot": stot, "mode": "http", "conn_tot": stot},
        ]
        backend_up = False
        for j, member_id in enumerate(self.member_ids):
            status, weight = SERVER_STATES[(3 * i + j + 2 * r)
                                           % len(SERVER_STATES)]
            if status in ("UP", "no check", "UP 1/3", "DOWN 1/2"):
                backend_up = True
            checked = status != "no check"
            rows.append({
                "pxname": backend, "svname": member_id, "qcur": 0,
                "qmax": 0, "scur": 1 if status.startswith("UP") else 0,
                "smax": 5, "stot": stot // 3, "bin": rx // 3,
                "bout": tx // 3, "dresp": 0, "econ": 0, "eresp": 0,
                "wretr": 0, "wredis": 0, "status": status, "weight": weight,
                "act": 1, "bck": 0, "chkfail": 1 if checked else "",
                "chkdown": 1 if checked else "", "lastchg": 120 + r,
                "downtime": 0 if checked else "", "pid": 1, "iid": 4,
                "sid": j + 1, "lbtot": stot // 3, "type": TYPE_SERVER,
                "check_status": "L7OK" if checked else "",
                "check_code": 200 if checked else "",
                "check_duration": 1 if checked else "",
                "check_desc": "Layer7 check passed" if checked else "",
                "check_rise": 4 if checked else "",
                "check_fall": 3 if checked else "",
                "check_health": 6 if checked else "",
                "addr": f"192.0.2.{11 + j}:8080", "mode": "http",
                "uweight": weight})
        rows.append({
            "pxname": backend, "svname": "BACKEND", "qcur": 0, "qmax": 0,
            "scur": scur if scur < 40 else 40, "smax": 40,
            "slim": FRONTEND_SLIM, "stot": stot, "bin": rx, "bout": tx,
            "dreq": 0, "dresp": 0, "econ": 0, "eresp": 0, "wretr": 0,
            "wredis": 0, "status": "UP" if backend_up else "DOWN",
            "weight": 2, "act": 3, "bck": 0, "chkdown": 1, "lastchg": 300,
            "downtime": 0, "pid": 1, "iid": 4, "sid": 0, "lbtot": stot,
            "type": TYPE_BACKEND, "mode": "http", "algo": "roundrobin"})
        return rows

    def answer(self, command):
        parts = command.split()
        if parts[:2] == ["show", "stat"]:
            # show stat [<iid> <type mask> <sid>]; mask 1=FE 2=BE 4=SRV
            iid, mask, sid = (int(x) for x in (parts[2:5] or [-1, -1, -1]))
            out = ["# " + ",".join(CSV_FIELDS) + ","]
            for row in self._rows():
                if mask != -1 and not mask & (1 << row["type"]):
                    continue
                if iid != -1 and row["iid"] != iid:
                    continue
                if sid != -1 and row.get("sid", 0) != sid:
                    continue
                out.append(csv_line(row))
            return "\n".join(out) + "\n\n"
        if parts[:2] == ["show", "info"]:
            return (f"Name: HAProxy\nVersion: 2.4.24-0ubuntu0.22.04.1\n"
                    f"Nbthread: 2\nPid: {os.getpid()}\n"
                    f"Uptime_sec: {100 + self.round}\n"
                    f"Maxconn: {FRONTEND_SLIM}\nCurrConns: 3\n\n")
        return "Unknown command.\n\n"

    # -- health_daemon module state of this amphora ------------------------

    def activate(self):
        CONF.set_override("amphora_id", self.amphora_id, group="amphora_agent")
        CONF.set_override("base_path", self.base_path,
                          group="haproxy_amphora")
        for name, value in self.saved.items():
            setattr(health_daemon, name, value)

    def deactivate(self):
        self.saved = {name: getattr(health_daemon, name)
                      for name in self.saved}

    def build(self, round_no):
        self.round = round_no
        self.activate()
        try:
            return health_daemon.build_stats_message()
        finally:
            self.deactivate()


# --------------------------------------------------------------------------
# Hand-made older message versions
# --------------------------------------------------------------------------

def stats(tx, rx, conns, totconns, ereq):
    return {"tx": tx, "rx": rx, "conns": conns, "totconns": totconns,
            "ereq": ereq}


def handmade_messages(seed):
    """(message, via) for the ver 2 / ver 1 / legacy-hex / legacy-binary
    amphorae; via is "dosend" or "binary"."""
    u = lambda name: make_uuid(seed, name)  # noqa: E731

    l1, l2, l3 = u("v2/listener1"), u("v2/listener2"), u("v2/listener-udp")
    p1, p2, p3 = u("v2/pool1"), u("v2/pool2"), u("v2/pool-udp")
    v2 = {"id": u("v2/amphora"), "seq": 1234,
          "listeners": {
              l1: {"status": "OPEN", "stats": stats(987654321, 123456789,
                                                    17, 45678, 12)},
              l2: {"status": "FULL", "stats": stats(5000, 7000, 2000, 40,
                                                    0)},
              l3: {"status": "OPEN", "stats": stats(300, 200, 1, 9, 0)}},
          "pools": {
              f"{p1}:{l1}": {"status": "UP", "members": {
                  u("v2/m1"): "UP", u("v2/m2"): "DOWN 1/2",
                  u("v2/m3"): "UP 1/3"}},
              f"{p2}:{l2}": {"status": "DOWN", "members": {
                  u("v2/m4"): "DOWN", u("v2/m5"): "MAINT"}},
              p3: {"status": "UP", "members": {u("v2/m6"): "no check"}}},
          "ver": 2}

    l1, l2 = u("v1/listener1"), u("v1/listener2")
    v1 = {"id": u("v1/amphora"), "seq": 57,
          "listeners": {
              l1: {"status": "OPEN",
                   "stats": stats(4096, 1024, 4, 77, 1),
                   "pools": {u("v1/pool1"): {"status": "UP", "members": {
                       u("v1/m1"): "DRAIN", u("v1/m2"): "UP",
                       u("v1/m3"): "no check"}}}},
              l2: {"status": "FULL",
                   "stats": stats(1, 2, 3, 4, 5),
                   "pools": {u("v1/pool2"): {"status": "DOWN", "members": {
                       u("v1/m4"): "DOWN", u("v1/m5"): "MAINT"}}}}},
          "ver": 1}

    legacy_hex = {"id": u("v0hex/amphora"), "seq": 5,
                  "listeners": {u("v0hex/listener1"): {
                      "status": "OPEN",
                      "stats": stats(10, 20, 0, 3, 1),
                      "pools": {u("v0hex/pool1"): {"status": "UP", "members": {
                          u("v0hex/m1"): "UP 1/3",
                          u("v0hex/m2"): "DOWN 1/2",
                          u("v0hex/m3"): "UP"}}}}}}

    legacy_bin = {"id": u("v0bin/amphora"), "seq": 6,
                  "listeners": {u("v0bin/listener1"): {
                      "status": "FULL",
                      "stats": stats(100, 200, 300, 400, 0),
                      "pools": {u("v0bin/pool1"): {
                          "status": "DOWN", "members": {
                              u("v0bin/m1"): "DOWN",
                              u("v0bin/m2"): "MAINT",
                              u("v0bin/m3"): "DRAIN",
                              u("v0bin/m4"): "no check"}}}}}}

    return [(v2, "dosend"), (v1, "dosend"), (legacy_hex, "dosend"),
            (legacy_bin, "binary")]


# --------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------

def init_conf(key, targets):
    CONF(args=[], project="octavia", default_config_files=[])
    CONF.set_override("heartbeat_key", key, group="health_manager")
    # Several targets: dosend() goes round-robin over them, as an amphora
    # over its controllers.
    CONF.set_override("controller_ip_port_list", list(targets),
                      group="health_manager")


def parse_target(target):
    host, port = target.rsplit(":", 1)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return socket.getaddrinfo(host, int(port), 0, socket.SOCK_DGRAM)[0]


def cmd_send(args, key):
    init_conf(key, args.target)
    # Hand-made binary-tag messages go to the first target.
    family, _, _, _, addr = parse_target(args.target[0])
    plain_sock = socket.socket(family, socket.SOCK_DGRAM)
    sender = health_sender.UDPStatusSender()
    sent = []

    def record(msg, tag):
        entry = copy.deepcopy(msg)
        entry["_tag"] = tag
        sent.append(entry)
        time.sleep(SEND_GAP_S)

    # Short paths: the stats socket path must fit in sun_path (108 bytes).
    tmp_root = tempfile.mkdtemp(prefix="octavia-peer-",
                                dir="/tmp" if os.path.isdir("/tmp") else None)
    amps = []
    try:
        for i in range(args.amphorae):
            base = os.path.join(tmp_root, f"a{i}")
            os.makedirs(base)
            amps.append(FakeHAProxy(base, i, args.seed))

        for r in range(args.rounds):
            for amp in amps:
                msg = amp.build(r)
                sender.dosend(msg)
                record(msg, "hex")

        for msg, via in handmade_messages(args.seed):
            if via == "dosend":
                sender.dosend(msg)
                record(msg, "hex")
            else:
                plain_sock.sendto(
                    status_message.wrap_envelope(msg, key, hex=False), addr)
                record(msg, "binary")
    finally:
        for amp in amps:
            amp.close()
            counters_file = amp.saved.get("COUNTERS_FILE")
            if counters_file is not None:
                counters_file.close()
        plain_sock.close()
        shutil.rmtree(tmp_root, ignore_errors=True)

    emit({"sent": sent})
    return 0


def cmd_unwrap(args, key):
    if args.file == "-":
        envelope = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            envelope = f.read()
    try:
        obj = status_message.unwrap_envelope(envelope, key)
    except Exception as e:  # Octavia's verdict: rejected
        _STDOUT.write(type(e).__name__ + "\n")
        _STDOUT.flush()
        return 3
    emit(obj)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Octavia 19.0.0 heartbeat peer for heartsink tests")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def add_key(p):
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--key", help="heartbeat_key")
        g.add_argument("--key-file",
                       help="file holding the key as UTF-8 (no newline)")

    p = sub.add_parser("send", help="send heartbeats via Octavia's code")
    p.add_argument("--target", required=True, action="append",
                   help="HOST:PORT (repeatable: the controller list)")
    add_key(p)
    p.add_argument("--amphorae", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", default="heartsink",
                   help="seed for the fixed uuid4 ids")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("unwrap", help="decode an envelope with Octavia")
    add_key(p)
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_unwrap)

    args = parser.parse_args(argv)
    if args.key_file is not None:
        with open(args.key_file, "rb") as f:
            key = f.read().decode("utf-8")
    else:
        key = args.key
    return args.func(args, key)


if __name__ == "__main__":
    sys.exit(main())
