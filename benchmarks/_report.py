"""One report over every benchmark: headline ratios, targets, plots, the docs page.

Each ``bench_<name>.py`` prints its own tables and calls :func:`ratio` for
its headline figures (anycore against the baseline a user would pick, in the
same run).  ``python -m benchmarks`` prints one summary table over every
facility at the end, with each target marked met or MISSED, and with
``--write-docs`` writes ``docs/benchmarks.md``: the machine, the summary, a
PNG chart per facility (matplotlib, the ``bench`` extra) and each
benchmark's full output.  A benchmark that found a wrong or missing result
records :func:`failure` instead of a figure.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ratio:
    facility: str
    what: str
    value: float
    baseline: str
    target: float | None
    higher_is_better: bool

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


_ratios: list[Ratio] = []
_failures: list[tuple[str, str]] = []


def ratio(
    facility: str,
    what: str,
    value: float,
    *,
    baseline: str,
    target: float | None = None,
    higher_is_better: bool = True,
) -> None:
    """Record a headline figure: anycore's result over the baseline's (same run)."""
    _ratios.append(Ratio(facility, what, value, baseline, target, higher_is_better))


def failure(facility: str, what: str) -> None:
    """Record that a benchmark's own check failed (a lost reply, item or record)."""
    _failures.append((facility, what))


def ratios() -> list[Ratio]:
    return list(_ratios)


def failures() -> list[tuple[str, str]]:
    return list(_failures)


def _verdict(r: Ratio) -> str:
    met = r.met
    if met is None:
        return ""
    sign = ">=" if r.higher_is_better else "<="
    return f"{sign} {r.target:g}: {'met' if met else 'MISSED'}"


def summary() -> str:
    """The summary table (Markdown, also readable as text)."""
    out = io.StringIO()
    out.write("| facility | measurement | ratio | baseline | target |\n|---|---|---|---|---|\n")
    for r in _ratios:
        out.write(f"| {r.facility} | {r.what} | {r.value:.2f}x | {r.baseline} | {_verdict(r)} |\n")
    for facility, what in _failures:
        out.write(f"| {facility} | {what} | FAILED | | |\n")
    return out.getvalue()


def plot(directory: Path) -> list[tuple[str, Path]]:
    """One horizontal bar chart per facility; returns (facility, png path)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    facilities = list(dict.fromkeys(r.facility for r in _ratios))
    for facility in facilities:
        rows = [r for r in _ratios if r.facility == facility]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
        labels = [f"{r.what}\n(vs {r.baseline})" for r in rows]
        colours = [
            "#888888" if r.met is None else ("#2e7d32" if r.met else "#c62828") for r in rows
        ]
        ax.barh(range(len(rows)), [r.value for r in rows], color=colours)
        for i, r in enumerate(rows):
            if r.target is not None:
                ax.plot([r.target, r.target], [i - 0.4, i + 0.4], color="black", linewidth=2)
            ax.text(r.value, i, f" {r.value:.2f}x", va="center", fontsize=8)
        ax.axvline(1.0, color="#1565c0", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("anycore / baseline (dashed: the baseline; black tick: the target)")
        ax.set_title(facility)
        fig.tight_layout()
        path = directory / f"{re.sub(r'[^a-z0-9]+', '-', facility.lower()).strip('-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append((facility, path))
    return made


def write_docs(page: Path, machine: str, mode: str, outputs: dict[str, str]) -> None:
    """Write docs/benchmarks.md from this run."""
    charts = plot(page.parent / "assets" / "bench")
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m benchmarks --write-docs` (`make bench`"
        " `BENCH_ARGS=--write-docs`); do not edit by hand. Every benchmark runs"
        " its baseline - what a user would pick instead, doing the same work - in"
        " the same invocation, and checks its own results: a lost reply, item or"
        " log record prints FAILED, not a figure. Machines are noisy: compare the"
        " ratios, not the absolute numbers.",
        "",
        f"Run: {mode}, on {machine}.",
        "",
        "## Summary",
        "",
        summary(),
    ]
    for facility, path in charts:
        lines += [f"### {facility}", "", f"![{facility}](assets/bench/{path.name})", ""]
    lines += ["## Every benchmark's output", ""]
    for name, text in outputs.items():
        lines += [f"### {name}", "", "```", text.rstrip(), "```", ""]
    page.write_text("\n".join(lines))
