"""Fleet benchmark: N simulated posts against the real central, with a trivial echo subscriber
measured in the same run as the baseline.

    .venv/bin/python bench/fleet.py --posts 10000 --rate 1000 --heartbeat 20 --duration 30 \\
        [--procs 4] [--ingest 1] [--p1-rate 0] [--backlog 0] [--dashboards 2] [--rw-posts 7] [--unsigned] \\
        [--no-echo] [--repeat 1] [--json out.json] [--p1-process [--p1-nice -5]] [--mqtt-window 2] \\
        [--ingest-set linger_ms=0 ...]

Everything runs on this machine, on loopback: a LocalMosquitto with the project's dev config
(plus ``set_tcp_nodelay true``) on a free port; a central config with a CA (``ca init``), every
simulated post's Ed25519 key registered in the node registry (events are signed and verified),
a dashboard user; ``--procs`` processes of simulated posts (``bench/fleet_sim.py``: one MQTT 5
connection per post, all driven by epoll; the client is ``bench/mqtt_lite.py``, a minimal one
for the load generator, as paho's per-packet CPU bounded the measurement; central, the broker
and the echo stay on paho). ``posts_cpu_us_per_offered``: the simulator's CPU per offered event.

Per repeat, phases with the same fleet and load:

1. **echo**: a plain paho subscriber answers one Ack per event message (no storage, no checks);
   it receives the posts' heartbeats too (parsed, nothing else), as central's ingest does;
2. **echo+verify** (signed runs only): the same echo that also checks every Ed25519 signature
   the plain way (re-encodes the received object in canonical form and verifies), the honest
   baseline for a receiver that must verify: central's ratio to it shows what is NOT signature
   checking;
3. **central**: ``--ingest N`` workers (``kentongan-central ingest``, one shared-subscription
   group) plus ``kentongan-central web``; ``--ingest 0`` runs the all-in-one ``kentongan-central
   run`` instead. ``--p1-process``: the workers run ``--lane bulk`` and one more process
   ``ingest --lane p1`` consumes the P1 channel (``kentongan-ingest-p1.service``).
   ``--dashboards`` operators each have the desk's queue page open and do what its scripts do
   in a browser (``bench/fleet_dash.py``: the page once, the live stream, a row fragment and the
   P1 banner per change, the link poll every 5 s).

CPU per event: CPU seconds of the receiving processes over the measured window (``--duration``)
divided by the events stored (central) or answered (echo, which reports its count on SIGUSR1)
within that same window. Other load on the machine changes CPU time per instruction, so the
ratios are the median over the repeats of each repeat's own ratio (phases minutes apart), not a
ratio of medians; prefer ``--repeat 3`` or more.

Printed per phase: offered / committed / acked events/s, publish->Ack p50/p99 (ms; P1 p99 when
``--p1-rate``), CPU ms per committed event of the receiving processes and its ratios to the echoes',
peak RSS (VmHWM) of the receiving processes, dashboard GET p50/p99, and events lost (offered,
never acknowledged nor rejected after the drain) and duplicated (stored twice: impossible by the
schema, counted anyway). Medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import median, pct, table
from bench.fleet_procs import (
    ECHO,
    Dashboards,
    cpu_seconds,
    echo_count,
    kill_all,
    peak_rss_mib,
    start_central,
    start_fleet,
    stop,
    tree_cpu_seconds,
    wait_line,
)
from bench.fleet_setup import PY, Setup


@dataclass
class PhaseResult:
    name: str
    offered: float = 0.0
    committed: float = 0.0
    acked: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p1_p99_ms: float = float("nan")
    cpu_ms_per_event: float = float("nan")
    rss_mib: float = 0.0
    get_p50_ms: float = float("nan")
    get_p99_ms: float = float("nan")
    lost: int = 0
    duplicated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def other_cpu(setup: Setup, fleet: list[tuple[subprocess.Popen[str], Path]]) -> dict[str, float]:
    """CPU seconds so far of the broker, the PostgreSQL cluster and the simulated posts."""
    out = {"broker": cpu_seconds(setup.broker.proc.pid) if setup.broker.proc is not None else 0.0,
           "posts": sum(cpu_seconds(p.pid) for p, _ in fleet)}
    if setup.pg is not None:
        pid_file = setup.pg.root / "data" / "postmaster.pid"
        out["postgres"] = tree_cpu_seconds(int(pid_file.read_text().split()[0])) if pid_file.exists() else 0.0
    return out


def run_phase(setup: Setup, args: argparse.Namespace, name: str, receivers: list[subprocess.Popen[str]],
              dashboards: Dashboards | None, web: subprocess.Popen[str] | None = None) -> PhaseResult:
    fleet = start_fleet(setup, args, name)
    try:
        return measure_phase(setup, args, name, receivers, dashboards, web, fleet)
    finally:  # a failed or interrupted phase leaves no simulated post behind (they outlive their broker)
        kill_all([proc for proc, _ in fleet])


def measure_phase(setup: Setup, args: argparse.Namespace, name: str, receivers: list[subprocess.Popen[str]],
                  dashboards: Dashboards | None, web: subprocess.Popen[str] | None,
                  fleet: list[tuple[subprocess.Popen[str], Path]]) -> PhaseResult:
    time.sleep(args.heartbeat and 1.0)
    echo = receivers[0] if name.startswith("echo") else None
    n0 = echo_count(echo) if echo is not None else setup.events()
    cpu0 = sum(cpu_seconds(p.pid) for p in receivers)
    web_cpu0 = cpu_seconds(web.pid) if web is not None else 0.0
    others0 = other_cpu(setup, fleet)
    t0 = time.monotonic()
    for proc, _ in fleet:
        proc.send_signal(signal.SIGUSR1)
    if dashboards is not None:
        dashboards.start()
    time.sleep(args.duration)
    window = time.monotonic() - t0
    cpu = sum(cpu_seconds(p.pid) for p in receivers) - cpu0
    web_cpu = cpu_seconds(web.pid) - web_cpu0 if web is not None else None
    others = {k: round(v - others0[k], 1) for k, v in other_cpu(setup, fleet).items()}
    n1 = echo_count(echo) if echo is not None else setup.events()
    if dashboards is not None:
        dashboards.close()
    for proc, _ in fleet:
        proc.send_signal(signal.SIGTERM)
    results = []
    for proc, out in fleet:
        proc.wait(args.drain + 120)
        results.append(json.loads(out.read_text()))
    errors = [(r["protocol_errors"], r["protocol_notes"]) for r in results if r.get("protocol_errors")]
    if errors:  # the simulator's MQTT client (bench/mqtt_lite.py) saw something it does not accept
        raise RuntimeError(f"simulated posts: MQTT protocol errors {errors}")
    lat = [x for r in results for x in r["latencies"]]
    p1 = [x for r in results for x in r["p1_latencies"]]
    offered = sum(r["offered"] for r in results)
    acked = sum(r["acked"] for r in results)
    res = PhaseResult(name)
    res.offered = offered / window
    res.acked = len(lat) / window  # acknowledged during the window and the drain, per window second
    committed = n1 - n0  # stored (central) or answered (echo) within the window, as the CPU is
    res.committed = committed / window
    res.p50_ms, res.p99_ms = pct(lat, 50) * 1000, pct(lat, 99) * 1000
    res.p1_p99_ms = pct(p1, 99) * 1000 if p1 else float("nan")
    res.cpu_ms_per_event = cpu * 1000 / max(committed, 1)
    res.rss_mib = max((peak_rss_mib(p.pid) for p in receivers), default=0.0)
    if dashboards is not None and dashboards.latencies:
        res.get_p50_ms = pct(dashboards.latencies, 50) * 1000
        res.get_p99_ms = pct(dashboards.latencies, 99) * 1000
    res.lost = sum(r["unacked"] + r["backlog_left"] for r in results)
    res.duplicated = setup.duplicated() if echo is None else 0
    drained = [r["drained_s"] for r in results]
    res.extra = {"drained_s": max(drained) if drained and None not in drained else None,
                 "acked_total": acked, "rejected": sum(r["rejected"] for r in results),
                 "resent": sum(r["resent"] for r in results), "window_s": round(window, 1),
                 "events_in_window": committed,
                 "dashboard_errors": dashboards.errors if dashboards else 0, "stored": setup.events(),
                 "rss_per_receiver_mib": [round(peak_rss_mib(p.pid)) for p in receivers],
                 "web_rss_mib": round(peak_rss_mib(web.pid)) if web is not None else None,
                 "web_cpu_s": round(web_cpu, 1) if web_cpu is not None else None,
                 "get_p50_p99_ms_n_by_path": {path: [round(pct(v, 50) * 1000, 1), round(pct(v, 99) * 1000, 1), len(v)]
                                              for path, v in dashboards.by_path.items() if v} if dashboards else None,
                 "dashboard": dashboards.summary() if dashboards else None,
                 "cpu_s": {"receivers": round(cpu, 1), **others},
                 "posts_cpu_us_per_offered": round(others["posts"] * 1e6 / max(offered, 1), 1),
                 }
    return res


def exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP end the run through its ``finally`` blocks: central, the echo, the simulated
    posts, the broker and the PostgreSQL cluster are stopped, not left running."""
    raise SystemExit(128 + signum)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500.0, help="events/s offered by the whole fleet")
    ap.add_argument("--p1-rate", type=float, default=0.0, help="extra P1 events/s (single messages)")
    ap.add_argument("--heartbeat", type=float, default=20.0, help="seconds between a post's heartbeats (0: none)")
    ap.add_argument("--backlog", type=int, default=0, help="events queued per post before the start")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last Acks")
    ap.add_argument("--ack-timeout", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=4, help="processes of simulated posts")
    ap.add_argument("--per-envelope-batches", action="store_true",
                    help="backlog batches without the batch signature (the old wire form: central "
                    "verifies every envelope), for an A/B of one signature per batch")
    ap.add_argument("--live-sign", action="store_true",
                    help="posts sign and encode each event when they send it (as before), not ahead of the window")
    ap.add_argument("--ingest", type=int, default=1, help="ingest workers (0: all-in-one 'run')")
    ap.add_argument("--dashboards", type=int, default=2)
    ap.add_argument("--rw-posts", type=int, default=7,
                    help="posts per RW (default 7: a city like Semarang has about 10,000 RTs in 1,518 RWs; "
                         "docs/scale.md); every 50th event is a PANIC whose new incident warns the rest of its RW")
    ap.add_argument("--mqtt-window", type=int, default=2,
                    help="backlog messages per post not yet PUBACKed by the broker at most (0: no limit, "
                         "the simulator before the post's MAX_UNCONFIRMED)")
    ap.add_argument("--p1-process", action="store_true",
                    help="ingest workers with --lane bulk plus one 'ingest --lane p1' process (needs --ingest >= 1)")
    ap.add_argument("--p1-nice", type=int, default=0,
                    help="run the P1 process under 'nice -n N' (-5: kentongan-ingest-p1.service's Nice=; needs root)")
    ap.add_argument("--web-nice", type=int, default=0,
                    help="run the web process under 'nice -n N' (kentongan-central-web.service's Nice=; needs root)")
    ap.add_argument("--no-web", action="store_true", help="ingest workers only (no web process, no dashboards)")
    ap.add_argument("--unsigned", action="store_true")
    ap.add_argument("--no-p1-channel", action="store_true", help="posts send P1s on event only (as before the P1 lane)")
    ap.add_argument("--postgres", action="store_true", help="central on a throwaway PostgreSQL cluster (fsync on)")
    ap.add_argument("--no-echo", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--ingest-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra [ingest] setting of central, as TOML (repeatable), e.g. linger_ms=0")
    ap.add_argument("--seed", default="fleet")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, databases)")
    ap.add_argument("--profile", type=Path, help="write cProfile output of each ingest worker into this directory")
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # run the cleanup below, as Ctrl-C does
        signal.signal(sig, exit_on_signal)
    rows: dict[str, list[PhaseResult]] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp_dir:
        tmp = str(args.keep) if args.keep else tmp_dir
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        setup = Setup(Path(tmp), args.posts, args.seed, postgres=args.postgres, signed=not args.unsigned,
                      rw_posts=args.rw_posts)
        setup.ingest_extra = [line.replace("=", " = ", 1) for line in args.ingest_set]
        try:
            for repeat in range(args.repeat):
                setup.configure(repeat)
                echoes = [] if args.no_echo else [("echo", [])]
                if echoes and not args.unsigned:
                    echoes.append(("echo+verify", [args.seed]))
                for name, extra in echoes:
                    echo = subprocess.Popen([PY, "-c", ECHO, str(setup.broker.port), "kentongan/v1", *extra],
                                            stdout=subprocess.PIPE, text=True)
                    wait_line(echo, "ready", 30)
                    try:
                        rows.setdefault(name, []).append(run_phase(setup, args, name, [echo], None))
                    finally:
                        stop([echo])
                central, web = start_central(setup, args)
                try:
                    dash = Dashboards(setup.web_port, args.dashboards) if args.dashboards and not args.no_web else None
                    rows.setdefault("central", []).append(run_phase(setup, args, "central", central, dash, web))
                finally:
                    stop([*central, *([web] if web else [])])
        finally:
            setup.close()
    print_table(args, rows)
    if args.json:
        args.json.write_text(json.dumps({k: [vars(r) for r in v] for k, v in rows.items()}, indent=1))


def print_table(args: argparse.Namespace, rows: dict[str, list[PhaseResult]]) -> None:
    def med(name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in rows.get(name, [])])

    def ratio(name: str, base: str) -> str:
        """Median over the repeats of the ratio within each repeat: the phases of one repeat run
        minutes apart at most, so the machine's other load shifts both alike."""
        pairs = [(r.cpu_ms_per_event, b.cpu_ms_per_event) for r, b in zip(rows.get(name, []), rows.get(base, []),
                                                                            strict=False)]
        values = [r / b for r, b in pairs if b == b and b > 0]
        return f"{median(values):.2f}x" if values else "-"

    out = []
    for name in rows:
        cpu = med(name, "cpu_ms_per_event")
        out.append([name, f"{med(name, 'offered'):.0f}", f"{med(name, 'committed'):.0f}", f"{med(name, 'acked'):.0f}",
                    f"{med(name, 'p50_ms'):.1f}", f"{med(name, 'p99_ms'):.1f}", f"{med(name, 'p1_p99_ms'):.1f}",
                    f"{cpu:.3f}", ratio(name, "echo"), ratio(name, "echo+verify"),
                    f"{med(name, 'rss_mib'):.0f}", f"{med(name, 'get_p50_ms'):.1f}", f"{med(name, 'get_p99_ms'):.1f}",
                    f"{med(name, 'lost'):.0f}", f"{med(name, 'duplicated'):.0f}"])
    p1 = f" + {args.p1_rate:.0f} P1/s" if args.p1_rate else ""
    print(f"fleet: {args.posts} posts in {args.procs} processes, {args.rate:.0f} ev/s offered{p1}, "
          f"heartbeat {args.heartbeat:g} s, backlog {args.backlog}/post, "
          f"{'unsigned' if args.unsigned else 'signed'}, {args.duration:g} s x {args.repeat}, "
          f"ingest {'all-in-one run' if args.ingest == 0 else f'{args.ingest} worker(s)'}"
          f"{' + P1 process' if args.p1_process else ''}"
          f"{'' if args.no_web else ' + web'}, store {'PostgreSQL' if args.postgres else 'SQLite'}, "
          f"{args.rw_posts} posts per RW")
    print(table(["system", "offered/s", "committed/s", "acked/s", "Ack p50 ms", "Ack p99 ms", "P1 p99 ms",
                 "CPU ms/ev", "vs echo", "vs echo+verify", "RSS MiB", "GET p50 ms", "GET p99 ms", "lost", "dup"], out))
    print("CPU ms/ev per repeat: " + "; ".join(f"{name} {[round(r.cpu_ms_per_event, 3) for r in rs]}"
                                              for name, rs in rows.items()))
    for name, rs in rows.items():
        print(f"{name}: " + "; ".join(json.dumps(r.extra) for r in rs))


if __name__ == "__main__":
    main()
