"""The layers point down at run time too: what each entry point loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loaded_after(imports: str) -> set[str]:
    code = f"import sys; {imports}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_offline_scoring_and_the_model_commands_load_no_kafka_and_no_metrics_library() -> None:
    mods = loaded_after("import streamrnn.core, streamrnn.cli.score, streamrnn.cli.models, streamrnn.lifecycle.serving")
    assert "streamrnn.cli.score" in mods
    for banned in ("kafka", "confluent_kafka", "prometheus_client", "streamrnn.daemon"):
        assert not any(m == banned or m.startswith(banned + ".") for m in mods), banned


def test_the_core_loads_nothing_of_the_project_outside_it() -> None:
    mods = loaded_after("import streamrnn.core")
    outside = {m for m in mods if m.startswith("streamrnn.") and not m.startswith("streamrnn.core")}
    assert outside == set()


def test_model_list_works_without_a_kafka_client(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state:\n  dir: {tmp_path / 'state'}\n")
    code = ("import sys; sys.modules['kafka'] = None; sys.modules['prometheus_client'] = None\n"
            f"from streamrnn.cli import main; raise SystemExit(main(['model', 'list', '--config', {str(cfg)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "no model versions" in p.stdout
