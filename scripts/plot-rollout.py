"""The rollout as a picture: for each run of scripts/bench-rollout.sh, the containerds down at once
against the pacing's limit, the nodes asking for a restart and not yet restarting, and the agents'
nodes ready on the phase's version, over the phase's seconds — one panel for the rollout, one for
the Shim upgrade that follows it. Reads the timelines bench-rollout wrote (KWASM_BENCH_TIMELINE),
writes one PNG a run:

    python plot-rollout.py TIMELINE_DIR OUT_DIR RUN[=TITLE] ...
"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0]} if rows else None


def panel(ax, data, title):
    t = data["seconds"]
    ax.step(t, data["down"], where="post", label="containerds down", color="tab:red")
    ax.plot(t, data["limit"], linestyle="--", color="tab:red", alpha=0.5, label="limit")
    ax.step(t, data["waiting"], where="post", label="nodes waiting for a permit", color="tab:orange")
    ax.set_title(title)
    ax.set_xlabel("seconds")
    ax.set_ylabel("nodes")
    ready = ax.twinx()
    ready.plot(t, data["ready"], color="tab:green", label="nodes ready")
    ready.set_ylabel("nodes ready")
    ready.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = ready.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize="small")


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for spec in sys.argv[3:]:
        run, _, title = spec.partition("=")
        phases = [(p, load(src / f"{run}-{p}.csv")) for p in ("rollout", "upgrade")]
        phases = [(p, d) for p, d in phases if d]
        fig, axes = plt.subplots(1, len(phases), figsize=(7 * len(phases), 4), squeeze=False)
        for ax, (phase, data) in zip(axes[0], phases):
            panel(ax, data, f"{title or run}: {'rollout' if phase == 'rollout' else 'Shim upgrade (in place)'}")
        fig.tight_layout()
        fig.savefig(out / f"fleet-{run}.png", dpi=90)
        print(out / f"fleet-{run}.png")


if __name__ == "__main__":
    main()
