"""The timeline plot (``--plot``; needs the ``plot`` extra, matplotlib)."""

from __future__ import annotations

from .report import BUCKET, DemoReport


def write_plot(report: DemoReport, path: str) -> None:
    """The timeline: transfers/s and errors/retries per 100 ms, faults shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'mssql_pool[plot]'") from exc
    tl = report.timeline
    xs = [i * BUCKET for i in range(len(tl.get("commit", [])))]
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 6), gridspec_kw={"height_ratios": [2, 1]}
    )
    mids = [x + BUCKET / 2 for x in xs]
    top.plot(mids, [v / BUCKET for v in tl.get("commit", [])], color="tab:blue", lw=1.2)
    top.set_ylabel("transfers committed / s")
    bottom.bar(
        xs, tl.get("retry", []), width=BUCKET, align="edge", color="tab:orange", label="retries"
    )
    bottom.bar(
        xs, tl.get("error", []), width=BUCKET, align="edge", color="tab:red", label="app errors"
    )
    bottom.bar(
        xs,
        tl.get("unknown", []),
        width=BUCKET,
        align="edge",
        color="tab:purple",
        label="commit unknown",
    )
    bottom.set_ylabel("per 100 ms")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right", fontsize=8)
    for row in report.faults:
        if row["skipped"] or not row["at"]:
            continue
        start, width = row["at"], max(row["window"], 0.05)
        for ax in (top, bottom):
            ax.axvspan(start, start + width, color="grey", alpha=0.25)
        top.annotate(
            row["fault"],
            (start, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
        )
    verdict = "invariant PASS" if report.invariant.get("ok") else "invariant FAIL"
    top.set_title(f"mssql-pool demo: {report.threads} threads, seed {report.seed} ({verdict})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
