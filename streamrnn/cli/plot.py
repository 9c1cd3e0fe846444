"""``streamrnn score --plot``: why did the detector fire?

One PNG per scored file: the series with the forecast and its +-3 sigma band, the
surprise of every reading with the alert threshold, the anomaly score (the surprise
at each incident's onset), and the readings flagged as anomalous. The
plotting library is optional (``pip install 'streamrnn[plot]'``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.detector import BAND_SIGMAS

__all__ = ["plot_scores"]


def plot_scores(out: pd.DataFrame, path: str, threshold: float, title: str = "") -> None:
    """Draw a scored frame (the columns :func:`streamrnn.cli.score.score_readings` makes, with timestamp and value) to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"streamrnn score --plot needs matplotlib ({e}): pip install 'streamrnn[plot]'") from None
    if "sensor_id" in out.columns and out["sensor_id"].nunique() > 1:
        first = out["sensor_id"].iloc[0]
        out = out[out["sensor_id"] == first]
        title = f"{title} (sensor {first})".strip()
    x = np.arange(len(out))
    value = pd.to_numeric(out["value"], errors="coerce").to_numpy()
    fc, sd = out["forecast"].to_numpy(), out["forecast_std"].to_numpy()
    score = out["anomaly_score"].to_numpy()
    surprise = out["surprise"].to_numpy() if "surprise" in out.columns else score
    flagged = out["is_anomaly"].to_numpy().astype(bool)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(x, value, lw=0.8, color="black", label="value")
    ax1.plot(x, fc, lw=0.8, color="tab:blue", label="forecast")
    ax1.fill_between(x, fc - BAND_SIGMAS * sd, fc + BAND_SIGMAS * sd, color="tab:blue", alpha=0.2, lw=0,
                     label=f"forecast +-{BAND_SIGMAS:g} sd")
    ax1.scatter(x[flagged], value[flagged], color="tab:red", s=18, zorder=3, label="anomalous")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title(title or "streamrnn score")
    ax2.plot(x, surprise, lw=0.6, color="tab:gray", label="surprise")
    onset = score > 0
    ax2.vlines(x[onset], 0, score[onset], lw=1.0, color="tab:orange", label="anomaly score (onsets)")
    ax2.axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"alert threshold {threshold:g}")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("row")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
