"""Benchmark: button hold -> siren relay latency (bench/local_alarm.py's measurement, outbox at
500 events/s) while a software update downloads and installs, against the same measurement with
no update running (baseline in the same run).

The update load is the real thing, in its own process like kentongan-update.service (nice 10,
ionice idle when available): a release of THIS project built offline (wheels repacked from this
venv, as the tests do), served by the real mTLS release server, downloaded by the post's
ReleaseClient (unlimited rate: worst case) and installed into a fresh venv, over and over.

    .venv/bin/python bench/update_alarm.py [--presses 1000] [--load 500] [--runs 3]

Target: p99 during download+install within 2x of idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import median, pct, table
from local_alarm import measure_engine


def prepare(work: Path) -> tuple[Path, str]:
    """CA, release key, a release of this tree, an enrolled post; returns (post dir, version)."""
    from test_release_build import copy_tree
    from update_helpers import Pki

    from central_sync.release.build import BuildOptions, build_release
    from central_sync.release.manifest import load_release_key
    from central_sync.release.wheelhouse import build_wheelhouse

    pki = Pki.create(work / "pki")
    wheelhouse = work / "wheelhouse"
    build_wheelhouse(wheelhouse)
    src = copy_tree(work / "src")
    m = build_release(BuildOptions(project_dir=src, root=work / "releases", platforms=("host",),
                                   wheelhouse=wheelhouse), load_release_key(pki.dir))
    pki.enrol("bench-post", work / "post" / "prefix")
    shutil.copyfile(pki.dir / "release.pub", work / "post" / "release.pub")
    return work / "post", m.version


def updater_loop(work: Path, version: str, stop_file: Path) -> None:
    """Child process: download + install the release again and again until ``stop_file``."""
    import sqlite3

    from update_helpers import BASE_PYTHON, Pki, Server

    from central_sync.registry import Registry
    from edge.signing import load_verify_key
    from edge.update.fetch import ReleaseClient, ServerTls
    from edge.update.install import InstallOptions, install_release
    from edge.update.switch import Layout
    from edge.update.updater import Updater

    os.nice(10)
    pki = Pki(work / "pki", Registry(sqlite3.connect(work / "reg.db")))
    srv = Server(pki, work / "releases", work / "rollout.db")
    keys = work / "post" / "prefix" / "etc" / "kentongan" / "keys"
    n = 0
    try:
        while not stop_file.exists():
            root = work / "post" / f"opt-{n % 2}"
            shutil.rmtree(root, ignore_errors=True)
            layout = Layout(root)
            client = ReleaseClient(srv.url, ServerTls(keys / "ca.crt", keys / "node.crt",
                                                      keys / "node.key"))
            upd = Updater(layout, client, load_verify_key(work / "post" / "release.pub"),
                          None, lambda r, t: {}, sync_enabled=False,  # type: ignore[arg-type]
                          install=InstallOptions(python=BASE_PYTHON,
                                                 system_site_packages=False, nice=10))
            m = upd.fetch_manifest(version)
            stage = upd.download(m)
            install_release(layout, m, upd._opts_for(stage))
            n += 1
            (work / "installs").write_text(str(n))
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presses", type=int, default=1000)
    ap.add_argument("--load", type=float, default=500.0)
    ap.add_argument("--runs", type=int, default=3, help="repetitions (median of p99s)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        updater_loop(Path(args.child[0]), args.child[1], Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        _post, version = prepare(work)
        print(f"release {version} built offline in {time.monotonic() - t0:.0f}s")
        idle_p99, busy_p99, idle_p50, busy_p50 = [], [], [], []
        installs = 0
        for _ in range(args.runs):
            lat, _n, _r = measure_engine(args.presses, args.load)
            idle_p99.append(pct(lat, 99))
            idle_p50.append(median(lat))
            stop = work / "stop"
            stop.unlink(missing_ok=True)
            (work / "installs").unlink(missing_ok=True)
            child = subprocess.Popen([sys.executable, __file__, "--child", str(work), version,
                                      str(stop)])
            time.sleep(2.0)  # let the download/install get going
            lat, _n, _r = measure_engine(args.presses, args.load)
            stop.write_text("stop")
            child.wait(900)
            done = work / "installs"
            installs += int(done.read_text()) if done.exists() else 0
            busy_p99.append(pct(lat, 99))
            busy_p50.append(median(lat))
        rows = [["idle (no update)", f"{median(idle_p50):.4f}", f"{median(idle_p99):.4f}"],
                ["during download+install", f"{median(busy_p50):.4f}", f"{median(busy_p99):.4f}"]]
        print(table(["alarm path (button hold -> relay)", "p50 ms", "p99 ms (median of runs)"],
                    rows))
        ratio = median(busy_p99) / median(idle_p99)
        print(f"\np99 ratio during update / idle: {ratio:.2f}x   target <= 2x: "
              f"{'MET' if ratio <= 2.0 else 'NOT MET'}; runs {args.runs}, presses "
              f"{args.presses}/run, complete installs during measurement: {installs}")


if __name__ == "__main__":
    main()
