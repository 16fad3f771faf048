"""Runs every benchmark and writes one report: each figure next to its baseline from the same run,
their ratio and the target, with the machine described; as Markdown and as a chart (PNG).

    .venv/bin/python bench/report.py [--quick] [--out bench-report] [--only throughput,gftp]

Each benchmark runs as its own process, one after the other (so none disturbs another), and its
printed figures are read back; one that fails is reported as failed with its last lines, and the
others still run. ``--quick`` uses smaller sizes (minutes rather than a quarter of an hour).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Row:
    measure: str
    ours: float | None
    baseline: float | None
    unit: str
    baseline_name: str
    min_ratio: float | None = None
    """The target as a ratio to the baseline (at least this)."""
    max_value: float | None = None
    """The target as a bound on our figure (at most this, in ``unit``)."""
    higher_is_better: bool = True
    note: str = ""
    any_of: str = ""
    """Rows of one benchmark with the same ``any_of`` make one target, met when any of them
    meets its own (GFTP: half a local copy, or near the GSB's own ceiling)."""

    @property
    def target(self) -> str:
        parts = []
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:.3g}x")
        if self.max_value is not None:
            parts.append(f"<= {self.max_value:g} {self.unit}")
        text = ", ".join(parts)
        return f"{text} (or the other {self.any_of} row)" if self.any_of and text else text

    @property
    def own_met(self) -> bool | None:
        if self.min_ratio is None and self.max_value is None:
            return None
        ratio, ours = self.ratio, self.ours
        return ((self.min_ratio is None or (ratio is not None and ratio >= self.min_ratio))
                and (self.max_value is None or (ours is not None and ours <= self.max_value)))

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours


def met(row: Row, rows: list[Row]) -> bool | None:
    """Whether ``row``'s target is met, counting the other rows of its ``any_of`` group."""
    if not row.any_of:
        return row.own_met
    outcomes = [r.own_met for r in rows if r.any_of == row.any_of]
    return any(outcomes) if any(o is not None for o in outcomes) else None


def _number(pattern: str, text: str) -> float | None:
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _throughput(out: str) -> list[Row]:
    def cpu(label: str) -> str:
        found = re.search(rf"^  {label}\s+:\s+([\d.]+) /\s+([\d.]+)$", out, re.MULTILINE)
        return f"{label} {found.group(1)} ms ({found.group(2)} in its own process)" if found else ""

    ways = [cpu("execute_tasks"), cpu("raw asyncio"), cpu("xargs")]
    note = "CPU per task: " + ", ".join(w for w in ways) if all(ways) else ""
    split = re.search(r"^  execute_tasks\s+:\s+([\d.]+) /\s+([\d.]+) supervisors /\s+([\d.]+)",
                      out, re.MULTILINE)
    if note and split:
        note += (f"; execute_tasks' goes to the commands {split.group(1)}, the sandboxes' "
                 f"supervisors {split.group(2)}, workgen's process {split.group(3)}")
    return [
        Row("tasks/s, execute_tasks on the local network", _number(
            r"execute_tasks, local network:\s+([\d.]+)", out), _number(
            r"raw asyncio subprocess\s+:\s+([\d.]+)", out), "tasks/s",
            "raw asyncio subprocesses", min_ratio=1.0),
        Row("tasks/s, the same against xargs -P (C spawning)", _number(
            r"execute_tasks, local network:\s+([\d.]+)", out), _number(
            r"xargs -P\d+\s+:\s+([\d.]+)", out), "tasks/s", "xargs -P", min_ratio=0.9,
            note=note),
        Row("tasks/s, the sandboxes alone (no exe unit, no requestor) against xargs -P",
            _number(r"sandboxes alone \(no exe unit, no requestor\):\s+([\d.]+)", out), _number(
            r"xargs -P\d+\s+:\s+([\d.]+)", out), "tasks/s", "xargs -P",
            note="the floor under the engine: the same commands straight through the "
            "activities' sandboxes"),
        *[Row(f"tasks/s, the same against {name}", _number(
            r"execute_tasks, local network:\s+([\d.]+)", out), float(rate), "tasks/s",
            f"{name}, the same commands as its tasks") for name, rate in re.findall(
            r"^((?:Ray|Dask) [\w.]+) \(same commands\)\s*:\s+([\d.]+)", out, re.MULTILINE)],
        Row("examples/hello.py wall time", _number(r"hello.py wall time\s+:\s+([\d.]+)", out),
            _number(r"python -c pass wall time\s+:\s+([\d.]+)", out), "s", "python -c pass",
            max_value=1.0, higher_is_better=False),
    ]


def _exeunit(out: str) -> list[Row]:
    return [Row("commands/s through one sandboxed activity", _number(
        r"sandboxed exe unit\s+:\s+([\d.]+)", out), _number(
        r"raw asyncio subprocess\s+:\s+([\d.]+)", out), "commands/s", "raw asyncio subprocesses",
        min_ratio=1.0)]


def _long_run(out: str) -> list[Row]:
    rss = re.findall(r"RSS at\s+(\d+) tasks:\s+([\d.]+) MiB", out)
    last = float(rss[-1][1]) if rss else None
    tasks = rss[-1][0] if rss else "?"
    devnet = "network: devnet" in out
    where = ", devnet, the requestor" if devnet else ""
    growth = _number(r"growth after the first two fifths: ([-\d.]+)", out)
    rows = [Row(f"RSS after {tasks} tasks{where}", last, _number(
        r"baseline RSS \(Golem started, no task yet\):\s+([\d.]+)", out), "MiB",
        "RSS before the first task", max_value=250, higher_is_better=False,
        note=f"growth {growth:.1f} B/task once warm" if growth is not None else "")]
    # On a devnet, each provider agent (its activity's exe unit inside) is a process too.
    for name, first, last_agent in re.findall(
            r"^  (agent of \S+)\s+([\d.]+) / (?:[\d.]+ / )*([\d.]+)$", out, re.MULTILINE):
        growth = _number(rf"growth after the first two fifths \({re.escape(name)}\): ([-\d.]+)",
                         out)
        rows.append(Row(f"RSS after {tasks} tasks, devnet, the {name}", float(last_agent),
                        float(first), "MiB", "RSS before the first task", max_value=250,
                        higher_is_better=False,
                        note=f"growth {growth:.1f} B/task once warm" if growth is not None
                        else ""))
    return rows


def _gftp(out: str) -> list[Row]:
    gftp = _number(r"GFTP download A->B[^:]*:\s+([\d.]+)", out)
    rss = _number(r"downloader peak RSS growth:\s+([-\d.]+)", out)
    note = f"downloader RSS +{rss:.0f} MiB" if rss is not None else ""
    return [
        Row("GFTP between two daemons, vs a copy", gftp,
            _number(r"shutil.copyfile, same file, same disk:\s+([\d.]+)", out), "MB/s",
            "a plain file copy", min_ratio=0.5, note=note, any_of="GFTP"),
        Row("GFTP between two daemons, vs the GSB", gftp,
            _number(r"GSB ceiling A->B[^:]*:\s+([\d.]+)", out), "MB/s",
            "the GSB's own ceiling, same daemons", min_ratio=1 / 1.5, any_of="GFTP"),
    ]


def _scripts(out: str) -> list[Row]:
    def median(label: str) -> float | None:
        row = re.search(rf"^{label}.*?\s([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
        return float(row.group(2)) if row else None

    ours = median("devnet, yagna backend")
    cpu = re.search(r"^CPU per script, yagna backend, \d+ more scripts \(ms\): (.*)$", out,
                    re.MULTILINE)
    return [Row("one-command script round trip, devnet (median)", ours,
                median("local network"), "ms", "the local network",
                max_value=5.0, higher_is_better=False,
                note=f"CPU per script: {cpu.group(1)}" if cpu else ""),
            Row("the same, vs the daemon's REST API", ours, median("devnet, daemon's REST API"),
                "ms", "exec + long poll through the daemon's REST API (as other SDKs do)",
                higher_is_better=False),
            Row("the same, vs the GSB floor", ours, median("devnet, GSB floor"), "ms",
                "Exec and GetExecBatchResults through the same daemons, answered at once",
                higher_is_better=False)]


def _images(out: str) -> list[Row]:
    size = _number(r"image: \w+, ([\d.]+) MB", out)
    return [
        Row(f"first deploy of a {size or '?'} MB image", _number(
            r"first deploy \(download \+ verify \+ unpack \+ start\):\s+([\d.]+)", out),
            _number(r"baseline, same run \(download \+ sha3 \+ plain unsquashfs\):\s+([\d.]+)",
                    out), "s", "download + sha3 + plain unsquashfs", min_ratio=0.8,
            higher_is_better=False),
        Row("cached deploy of the same image", _number(
            r"cached deploy \(\+ start\):\s+([\d.]+)", out), None, "s", "",
            higher_is_better=False),
    ]


def _devnet_sdks(out: str) -> list[Row]:
    rates = dict(re.findall(r"^(\S.*?)\s{2,}[\d.]+\s+([\d.]+)\s+[\d.]+x$", out, re.MULTILINE))
    ours = float(rates["workgen"]) if "workgen" in rates else None
    rows = []
    for name, rate in rates.items():
        if name != "workgen":
            rows.append(Row(f"tasks/s on a devnet, workgen vs {name}", ours, float(rate),
                            "tasks/s", name, min_ratio=1.0))
    return rows or [Row("tasks/s on a devnet", ours, None, "tasks/s", "other SDKs")]


@dataclass(frozen=True)
class Bench:
    name: str
    argv: tuple[str, ...]
    quick: tuple[str, ...]
    read: Callable[[str], list[Row]]


BENCHES = (
    Bench("throughput", ("bench/throughput.py",), ("-n", "1000", "--hello-runs", "3"),
          _throughput),
    Bench("exeunit", ("bench/exeunit.py",), ("-n", "500",), _exeunit),
    Bench("long_run", ("bench/long_run.py",), ("-n", "20000"), _long_run),
    Bench("long_run_devnet", ("bench/long_run.py", "--network", "devnet", "-n", "20000"),
          ("-n", "3000"), _long_run),
    Bench("scripts", ("bench/scripts.py",), ("-n", "100", "--tasks", "100"), _scripts),
    Bench("gftp", ("bench/gftp.py",), ("--size-mib", "64", "--rounds", "1", "--sweep-rounds", "0"),
          _gftp),
    Bench("images", ("bench/images.py",), ("--rounds", "1"), _images),
    Bench("devnet", ("bench/devnet.py",), ("-n", "20"), _devnet_sdks),
)


def machine() -> list[str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"{model}, {os.cpu_count()} CPUs, {mem} memory",
            f"Linux {platform.release()}, Python {platform.python_version()}",
            f"load average at the start: {load}"]


def run(bench: Bench, quick: bool) -> tuple[list[Row], float, str]:
    argv = [sys.executable, *bench.argv, *(bench.quick if quick else ())]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return [], took, " / ".join(tail)
    rows = bench.read(done.stdout)
    return rows, took, ""


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def markdown(results: list[tuple[Bench, list[Row], float, str]], started: str) -> str:
    lines = [f"# Benchmark report, {started}", "", *[f"- {m}" for m in machine()], "",
             "| benchmark | measure | workgen | baseline (same run) | ratio | target | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for bench, rows, took, error in results:
        if error:
            lines.append(f"| {bench.name} | failed after {took:.0f} s: {error} | | | | | |")
        for row in rows:
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
            base = f"{_fmt(row.baseline)} {row.unit} ({row.baseline_name})" \
                if row.baseline is not None else "-"
            note = f" ({row.note})" if row.note else ""
            outcome = {True: "yes", False: "no", None: ""}[met(row, rows)]
            lines.append(f"| {bench.name} | {row.measure}{note} | {_fmt(row.ours)} {row.unit} "
                         f"| {base} | {ratio} | {row.target} | {outcome} |")
    lines += ["", "Ratios are workgen over the baseline, turned so that above 1 is better."]
    return "\n".join(lines) + "\n"


def chart(rows: list[tuple[str, float, bool | None]], path: Path) -> None:
    """Horizontal bars of the ratios, a line at 1.0 (as good as the baseline); green where the
    target is met, red where not."""
    width, bar, left, pad = 900, 26, 380, 10
    height = pad * 2 + 30 + len(rows) * (bar + 8)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (width - left - 60) / max([2.0, *[r for _, r, _ in rows]])
    draw.text((pad, pad), "workgen / baseline, same run (above 1: better than the baseline; "
              "green: target met)", fill="black")
    top = pad + 30
    for i, (label, ratio, met) in enumerate(rows):
        y = top + i * (bar + 8)
        draw.text((pad, y + 7), label if len(label) <= 58 else label[:57] + "…", fill="black")
        colour = {True: (46, 139, 87), False: (205, 92, 92), None: (150, 150, 150)}[met]
        draw.rectangle((left, y, left + ratio * scale, y + bar), fill=colour)
        draw.text((left + ratio * scale + 6, y + 7), f"{ratio:.2f}x", fill="black")
    one = left + scale
    draw.line((one, top - 6, one, height - pad), fill="black", width=2)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--out", type=Path, default=Path("bench-report"))
    parser.add_argument("--only", default="", help="comma-separated benchmark names "
                        f"({', '.join(b.name for b in BENCHES)})")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    for bench in chosen:
        print(f"running {bench.name}...", file=sys.stderr, flush=True)
        rows, took, error = run(bench, args.quick)
        results.append((bench, rows, took, error))
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, started)
    (args.out / "report.md").write_text(text)
    # Bars only where the target is a ratio: a figure bounded absolutely (hello's wall time
    # under 1 s) would read as a failure against its floor.
    chart([(f"{bench.name}: {row.measure}", row.ratio, met(row, rows)) for bench, rows, _, _ in results
           for row in rows if row.ratio is not None and row.min_ratio is not None],
          args.out / "report.png")
    print(text)
    print(f"written to {args.out / 'report.md'} and {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
