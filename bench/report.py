"""The summary table (rich or plain), the PNG chart and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    key: str
    label: str
    unit: str
    direct: float | None
    tunnel: float | None
    # The target: (kind, bound); kind is ratio_min, ratio_max, abs_min, abs_max, abs_lt.
    spec: tuple[str, float] | None = None
    ref_label: str = "direct"  # what the "direct" column holds for this row

    @property
    def ratio(self) -> float | None:
        if self.direct is None or self.tunnel is None or not self.direct:
            return None
        return self.tunnel / self.direct

    @property
    def target(self) -> str:
        if self.spec is None:
            return ""
        kind, bound = self.spec
        if kind == "ratio_min":
            return f"≥{bound * 100:.0f}% of {self.ref_label}"
        if kind == "ratio_max":
            return f"≤{bound:g}× {self.ref_label}"
        op = {"abs_min": "≥", "abs_max": "≤", "abs_lt": "<"}[kind]
        return f"{op}{bound:,g} {self.unit}"

    @property
    def ok(self) -> bool | None:
        if self.spec is None:
            return None
        kind, bound = self.spec
        value = self.ratio if kind.startswith("ratio") else self.tunnel
        if value is None or math.isnan(value):
            return False
        if kind.endswith("min"):
            return value >= bound
        if kind == "abs_lt":
            return value < bound
        return value <= bound

    def score(self) -> float | None:
        """>1 when the target is met, by how much (measured vs bound, oriented)."""
        if self.spec is None:
            return None
        kind, bound = self.spec
        value = self.ratio if kind.startswith("ratio") else self.tunnel
        if value is None or not bound or not value or math.isnan(value):
            return None
        return value / bound if kind.endswith("min") else bound / value


def fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r * 100:.1f}%" if r < 1 else f"{r:.1f}×"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def print_table(rows: list[Row], title: str) -> None:
    headers = ["measurement", "unit", "direct", "tunnel", "tunnel/direct", "target", "result"]
    cells = [
        [
            r.label,
            r.unit,
            fmt(r.direct),
            fmt(r.tunnel),
            fmt_ratio(r.ratio),
            r.target,
            verdict(r.ok),
        ]
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for c in cells:
            print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if 2 <= i <= 4 else "left")
    for c in cells:
        res = c[-1]
        style = "green" if res == "PASS" else "red" if res == "MISS" else ""
        table.add_row(*c[:-1], f"[{style}]{res}[/]" if style else res)
    Console(width=140).print(table)


def markdown_table(rows: list[Row]) -> str:
    out = [
        "| measurement | unit | direct | tunnel | tunnel/direct | target | result |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.label} | {r.unit} | {fmt(r.direct)} | {fmt(r.tunnel)} | {fmt_ratio(r.ratio)} "
            f"| {r.target} | {verdict(r.ok)} |"
        )
    return "\n".join(out)


def rows_from_json(doc: dict[str, Any]) -> list[Row]:
    return [
        Row(
            r["key"],
            r["label"],
            r["unit"],
            r["direct"],
            r["tunnel"],
            spec=(r["spec"][0], float(r["spec"][1])) if r.get("spec") else None,
            ref_label=r.get("ref_label", "direct"),
        )
        for r in doc["summary"]
    ]


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], raw: dict[str, Any]) -> None:
    doc = {
        "meta": meta,
        "summary": [
            {**asdict(r), "ratio": r.ratio, "target": r.target, "result": verdict(r.ok)}
            for r in rows
        ],
        "rounds": raw,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def write_chart(path: Path, rows: list[Row], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r.key: r for r in rows}
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    fig.suptitle(title, fontsize=12)

    def bars(ax: Any, keys: list[str], ylabel: str, panel: str, log: bool = False) -> None:
        present = [by[k] for k in keys if k in by]
        xs = range(len(present))
        d = [r.direct or 0 for r in present]
        t = [r.tunnel or 0 for r in present]
        w = 0.38
        ax.bar([x - w / 2 for x in xs], d, w, label="direct / reference", color="#8a9bb0")
        ax.bar([x + w / 2 for x in xs], t, w, label="through the tunnel", color="#2b6cb0")
        for x, r in zip(xs, present, strict=True):
            if r.ratio is not None:
                ax.annotate(
                    fmt_ratio(r.ratio),
                    (x + w / 2, r.tunnel or 0),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r.label for r in present], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    bars(
        axes[0][0],
        ["iperf1", "iperf1_warm", "iperf8", "iperfR", "tls1", "tls8", "tlsR"],
        "MB/s",
        "iperf3 throughput (TLS bars: reference = plain tunnel)",
    )
    bars(
        axes[0][1],
        ["pg1", "pg16", "pgC", "connrate"],
        "per second",
        "pgbench -S TPS, connections/s",
        log=True,
    )
    bars(
        axes[1][0],
        ["rtt_p50", "rtt_p99", "rtt_load_p50", "rtt_load_p99"],
        "µs",
        "64-byte round trip (sockperf)",
        log=True,
    )
    # Targets: how far each measured figure is from its bound (1.0 = exactly on target).
    ax = axes[1][1]
    scored = [(r, sc) for r in rows if (sc := r.score()) is not None]
    ys = list(range(len(scored)))
    ax.barh(
        ys, [sc for _, sc in scored], color=["#2f855a" if r.ok else "#c53030" for r, _ in scored]
    )
    for y, (r, sc) in zip(ys, scored, strict=True):
        kind = r.spec[0] if r.spec else ""
        shown = fmt_ratio(r.ratio) if kind.startswith("ratio") else f"{fmt(r.tunnel)} {r.unit}"
        ax.annotate(f" {shown}", (sc, y), va="center", fontsize=8)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r.label} ({r.target})" for r, _ in scored], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [0.01, 0.03, 0.1, 0.3, 1, 3, 10]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}×" for t in ticks])
    ax.minorticks_off()
    lo = min([sc for _, sc in scored] + [0.5]) / 2
    hi = max([sc for _, sc in scored] + [2.0]) * 3
    ax.set_xlim(lo, hi)
    ax.set_xlabel("measured vs target, oriented so that >1× is a PASS")
    ax.set_title("targets from issue 3", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
