"""The docs' view of ``bench peers`` runs saved with ``--json``: one markdown table of every
row, and a plot of amortized time per image against the batch size for hecnn and OpenFHE (each
run measures one batch size; the plot puts runs together; needs matplotlib, the ``peers``
extra)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def batch_points(
    json_files: list[Path], *, cpu: bool = False
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(network, system) → sorted (images, ms/image) of every measured batch-packed row; with
    ``cpu`` the server's CPU milliseconds per image instead of wall milliseconds."""
    pts: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for f in json_files:
        for r in json.loads(Path(f).read_text()):
            if r["packing"] == "batch" and r["status"] == "ok" and r["ms"]:
                system = "OpenFHE" if r["system"].startswith("OpenFHE") else r["system"]
                if system not in ("hecnn", "OpenFHE"):
                    continue
                value = 1e3 * r["cpu_s"] / r["images"] if cpu else r["ms"]
                if cpu and not r.get("cpu_s"):
                    continue
                pts[(r["network"], system)][int(r["images"])] = float(value)
    return {k: sorted(v.items()) for k, v in pts.items()}


def plot_amortized(json_files: list[Path], out: Path, networks: tuple[str, ...] | None = None):
    """Write a PNG of ms/image against images per batch for hecnn and OpenFHE: wall time (left)
    and the server's CPU time (right; on a shared machine it does not count waiting for a
    core)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = batch_points(json_files)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    styles = {"hecnn": "-o", "OpenFHE": "--s"}
    for ax, cpu in zip(axes, (False, True), strict=True):
        data = batch_points(json_files, cpu=cpu)
        nets = networks or tuple(sorted({n for n, _ in data}))
        for net in nets:
            for system, style in styles.items():
                xy = data.get((net, system))
                if xy:
                    ax.plot(*zip(*xy, strict=True), style, label=f"{system} — {net}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("images per batch (one per slot)")
        ax.set_title("CPU time per image" if cpu else "wall time per image (shared machine)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("server ms per image (amortized)")
    fig.suptitle("Encrypted MNIST inference, batch packing, 128-bit CKKS (hecnn bench peers)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return pts


def markdown_table(json_files: list[Path]) -> str:
    """All rows of the runs as a markdown table (``~``: projected from a stopped run)."""
    head = (
        "| network | system | packing | parameters | images | server s | CPU s "
        "| ms/image (batch) or latency ms (image) | peak RSS GiB | agreement % | max logit err "
        "| hecnn speed-up |"
    )
    lines = [head, "|" + "---|" * 12]

    def num(v, fmt, proj=""):
        return "—" if v is None else f"{proj}{v:{fmt}}"

    for f in json_files:
        for r in json.loads(Path(f).read_text()):
            if r["status"] in ("skipped", "failed"):
                lines.append(
                    f"| {r['network']} | {r['system']} | {r['packing']} | {r['status']}: "
                    f"{r['note']} | | | | | | | | |"
                )
                continue
            proj = "~" if r["status"] == "stopped" else ""
            lines.append(
                f"| {r['network']} | {r['system']} | {r['packing']} | {r['params']} "
                f"| {r['images']} | {num(r['total_s'], '.1f', proj)} "
                f"| {num(r.get('cpu_s'), '.1f', proj)} | {num(r['ms'], '.3f', proj)} "
                f"| {num(r['peak_rss'] / 2**30 if r['peak_rss'] else None, '.2f')} "
                f"| {num(r['agreement'], '.2f')} | {num(r['max_error'], '.1e')} "
                f"| {num(r['ratio'], '.2f')}{'×' if r['ratio'] else ''} |"
            )
    return "\n".join(lines)
