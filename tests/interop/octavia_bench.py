"""Octavia 19.0.0 receive-path baseline for `heartsink bench`.

Run with the Python of the Octavia virtualenv made by scripts/setup-octavia.sh
(default target/peers/octavia/bin/python). It measures Octavia's OWN receive
path on this machine; the load comes from heartsink's generator.

Usage
-----
octavia_bench.py MODE --key KEY [--rcvbuf BYTES] [--seconds S] [--idle-exit S]

MODE
  dorecv  a real heartbeat_udp.UDPStatusGetter() on 127.0.0.1:0, looping on
          getter.dorecv() only (recvfrom + unwrap_envelope + recv_time).
  check   the same getter looping on getter.check(), i.e. the HM_listener
          loop of octavia-health-manager: dorecv() plus, per accepted packet,
          a real ProcessPoolExecutor.submit() to the health executor and one
          to the stats executor (os.cpu_count() workers each, Octavia's
          default). Only the submitted functions are replaced: by no-ops
          defined at the top level of this file, so no database is touched.
          The real UpdateHealthDb instance is still pickled per submit
          (check() submits the bound method self.health_updater.update_health).

--rcvbuf BYTES   [health_manager] sock_rlimit (SO_RCVBUF); 0 / absent =
                 Octavia's default (kernel rmem_default). Linux doubles it
                 and caps it at rmem_max.
--seconds S      measurement length after the first accepted heartbeat (5).
--idle-exit S    stop when no datagram arrived for S seconds after the first
                 accepted heartbeat (2). Octavia's socket timeout is 1 s, so
                 for S >= 1 idleness is noticed with up to ~1 s delay.

stdout (exactly two JSON lines, everything else goes to stderr)
  {"event": "listening", "port": P, "mode": "dorecv"|"check",
   "rcvbuf": <getsockopt(SO_RCVBUF)>}
      printed right after binding; start sending after reading it.
  {"event": "result", "mode": ..., "processed": N, "rejected": R,
   "seconds": T, "rate": N / T,
   "latency_us": {"p50": .., "p99": .., "p999": .., "count": C},
   "cpu_s": S, "per_cpu_second": (N - 1) / S}
      S = this process's CPU seconds (time.process_time) from the first accepted
      heartbeat to the end of the run, N = accepted heartbeats (unwrap_envelope succeeded), R = datagrams
      Octavia rejected (InvalidHMACException and other errors), T = seconds
      between the first and the last accepted heartbeat. Latency is measured
      for accepted objects carrying "hs_sent_ns" (sender wall clock,
      time.time_ns() at send): time.time_ns() right after dorecv() returned
      (dorecv mode) or after check() returned (check mode, i.e. after both
      submits), minus hs_sent_ns; percentiles are nearest-rank, in
      microseconds (null when C = 0). Exit status 0.

Logging: Octavia's own logging setup (INFO level, oslo.log formatter) is
applied, sent to stderr. Every rejected datagram costs one oslo.log WARNING
line formatted and written to stderr -- Octavia's real behaviour, and it
slows the loop when many datagrams are bad. The caller must drain (or
inherit / discard) our stderr, or a full pipe will block this process.
"""

import argparse
import json
import math
import socket
import sys
import time

# Keep stdout clean for the two JSON lines: anything printed while importing
# or running Octavia (eventlet banner, warnings, logging) goes to stderr.
_STDOUT = sys.stdout
sys.stdout = sys.stderr

from oslo_config import cfg  # noqa: E402
from oslo_log import log as oslo_logging  # noqa: E402

from octavia.amphorae.drivers.health import heartbeat_udp  # noqa: E402
from octavia.common import config as octavia_config  # noqa: E402
from octavia.common import exceptions  # noqa: E402

CONF = cfg.CONF


# --------------------------------------------------------------------------
# No-op replacements for the work check() dispatches to its process pools.
# They live at module top level so worker processes can resolve them by
# reference whatever the multiprocessing start method: with "fork" (the
# Linux default up to Python 3.13, and what octavia-health-manager forces)
# the workers inherit the patched objects; with "spawn"/"forkserver" the
# workers import this file as __mp_main__, which re-applies the patch below.
# --------------------------------------------------------------------------

def noop_update_health(self, health, srcaddr):
    """Stands in for UpdateHealthDb.update_health (no database)."""
    return None


def noop_update_stats(health_message):
    """Stands in for heartbeat_udp.update_stats (no database)."""
    return None


# check() does:
#   self.health_executor.submit(self.health_updater.update_health, obj, src)
#   self.stats_executor.submit(update_stats, obj)
# `update_stats` is looked up in the heartbeat_udp module globals at call
# time; `update_health` is looked up on the (real) UpdateHealthDb instance,
# i.e. on its class. The bound method pickles as getattr(instance,
# func.__name__), so the no-op must carry that name; the worker resolves it
# against the patched class.
noop_update_health.__name__ = "update_health"
heartbeat_udp.update_stats = noop_update_stats
heartbeat_udp.UpdateHealthDb.update_health = noop_update_health


def emit(obj):
    _STDOUT.write(json.dumps(obj) + "\n")
    _STDOUT.flush()


def init_conf(key, rcvbuf):
    # As octavia-health-manager's prepare_service(): register the oslo.log
    # options, then Octavia's setup_logging() (INFO, oslo.log formatter),
    # but to stderr instead of its stdout fallback.
    oslo_logging.register_options(CONF)
    CONF(args=[], project="octavia", default_config_files=[])
    CONF.set_override("use_stderr", True)
    octavia_config.setup_logging(CONF)
    CONF.set_override("heartbeat_key", key, group="health_manager")
    CONF.set_override("bind_ip", "127.0.0.1", group="health_manager")
    CONF.set_override("bind_port", 0, group="health_manager")
    CONF.set_override("sock_rlimit", rcvbuf, group="health_manager")


def percentiles(samples_ns):
    n = len(samples_ns)
    if n == 0:
        return {"p50": None, "p99": None, "p999": None, "count": 0}
    s = sorted(samples_ns)

    def rank(q):  # nearest-rank: smallest sample >= q of all samples
        i = min(n - 1, max(0, math.ceil(q * n) - 1))
        return round(s[i] / 1000.0, 1)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999),
            "count": n}


def run(mode, seconds, idle_exit):
    getter = heartbeat_udp.UDPStatusGetter()
    sock = getter.sock
    if idle_exit < 1:
        # Octavia's 1 s timeout only bounds how late idleness is noticed.
        sock.settimeout(idle_exit)
    emit({"event": "listening", "port": sock.getsockname()[1], "mode": mode,
          "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)})

    cap = max(1 << 16, int(seconds * 100_000))
    lat = [0] * cap          # preallocated latency samples (ns)
    nlat = 0
    processed = 0
    rejected = 0
    first = last = None      # perf_counter of first / last accepted
    last_rx = None           # perf_counter of last datagram (any verdict)
    deadline = None
    perf = time.perf_counter
    cpu_now = time.process_time  # this process's user + system CPU, all its threads
    cpu = [0.0, 0.0]             # at the first accepted heartbeat, and at the end (the idle
                                 # wait before it blocks in recvfrom: next to no CPU)

    def accepted(obj):
        """Counts one processed heartbeat and its latency; True when the run is over."""
        nonlocal nlat, cap, lat, processed, first, last, last_rx, deadline
        t_ns = now_ns()
        t = perf()
        processed += 1
        last_rx = last = t
        sent = obj.get("hs_sent_ns")
        if sent is not None:
            if nlat == cap:
                lat.extend([0] * cap)
                cap *= 2
            lat[nlat] = t_ns - sent
            nlat += 1
        if first is None:
            first = t
            cpu[0] = cpu_now()
            deadline = t + seconds
            return False
        return t >= deadline
    now_ns = time.time_ns
    timeout_exc = socket.timeout
    invalid_exc = exceptions.InvalidHMACException

    if mode == "dorecv":
        dorecv = getter.dorecv
        while True:
            try:
                obj, _src = dorecv()
            except timeout_exc:
                if first is not None and perf() - last_rx >= idle_exit:
                    break
                continue
            except invalid_exc:
                rejected += 1
                last_rx = perf()
                continue
            except Exception as e:  # anything else check() would swallow
                print(f"dorecv error: {e!r}", file=sys.stderr)
                rejected += 1
                last_rx = perf()
                continue
            if accepted(obj):
                break
    else:
        # Observe check(): wrap dorecv on the instance (check() calls
        # self.dorecv()) to see the object and the verdict; check() itself,
        # its exception handling and both submits run unchanged.
        real_dorecv = getter.dorecv
        box = [None, 0]      # [accepted obj of this round, status]
        # status: 0 nothing / timeout, 1 accepted, 2 rejected

        def observed_dorecv(*args, **kw):
            try:
                res = real_dorecv(*args, **kw)
            except timeout_exc:
                box[1] = 0
                raise
            except Exception:
                box[1] = 2
                raise
            box[0] = res[0]
            box[1] = 1
            return res

        getter.dorecv = observed_dorecv
        check = getter.check
        while True:
            box[1] = 0
            check()
            status = box[1]
            if status == 1:
                obj = box[0]
                box[0] = None
                if accepted(obj):
                    break
            elif status == 2:
                rejected += 1
                last_rx = perf()
            elif first is not None and perf() - last_rx >= idle_exit:
                break

    cpu[1] = cpu_now() if processed else 0.0
    elapsed = (last - first) if processed else 0.0
    result = {
        "event": "result", "mode": mode, "processed": processed,
        "rejected": rejected, "seconds": round(elapsed, 6),
        "rate": round(processed / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_us": percentiles(lat[:nlat]),
        "cpu_s": round(cpu[1] - cpu[0], 6),
        "per_cpu_second": round((processed - 1) / (cpu[1] - cpu[0]), 1) if cpu[1] > cpu[0] else 0.0,
    }
    emit(result)
    if mode == "check":
        # Let queued no-op jobs finish so the workers exit cleanly.
        getter.health_executor.shutdown(wait=True)
        getter.stats_executor.shutdown(wait=True)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Octavia 19.0.0 heartbeat receive-path benchmark")
    parser.add_argument("mode", choices=("dorecv", "check"))
    parser.add_argument("--key", required=True, help="heartbeat_key")
    parser.add_argument("--rcvbuf", type=int, default=0,
                        help="sock_rlimit / SO_RCVBUF bytes (0 = default)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle-exit", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.idle_exit <= 0 or args.rcvbuf < 0:
        parser.error("--seconds/--idle-exit must be > 0, --rcvbuf >= 0")
    init_conf(args.key, args.rcvbuf)
    return run(args.mode, args.seconds, args.idle_exit)


if __name__ == "__main__":
    sys.exit(main())
