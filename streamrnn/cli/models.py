"""``streamrnn model list|show|rollback``: the model registry from the command line.

Needs the configuration only for ``state.dir`` (where the registry lives); imports
nothing of Kafka, so it works on a machine that only holds the state directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from ..config import Config
from ..lifecycle.artifacts import ModelFileError
from ..lifecycle.registry import ModelRegistry, RegistryError

__all__ = ["model_command"]


def model_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``streamrnn model``; returns the exit code."""
    reg = ModelRegistry.in_state_dir(cfg.state.dir, keep=cfg.training.registry_keep)
    try:
        if args.action == "list":
            cur = reg.current()
            rows = reg.versions()
            if not rows:
                print(f"no model versions in {reg.dir} (workers serve the packaged model)")
                return 0
            print(f"{'':2}{'version':<9}{'parent':<12}{'created (UTC)':<21}{'val loss':>10}{'parent':>10}  sha256")
            for m in rows:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.created))
                vl = f"{m.val_loss:.4f}" if m.val_loss is not None else "-"
                pl = f"{m.parent_val_loss:.4f}" if m.parent_val_loss is not None else "-"
                print(f"{'*' if m.version == cur else ' ':2}{m.version:<9}{str(m.parent):<12}{created:<21}{vl:>10}{pl:>10}  {m.sha256[:16]}")
        elif args.action == "show":
            print(json.dumps({**asdict(reg.meta(args.version)), "current": reg.current() == args.version}, indent=1))
        else:  # rollback
            reg.set_current(args.version)
            print(f"serving {args.version}; running workers switch within training.registry_poll_seconds")
    except (RegistryError, ModelFileError) as e:
        print(f"streamrnn model: {e}", file=sys.stderr)
        return 1
    return 0
