"""The ``streamrnn`` command line: run, check-config, score, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import __version__
from .config import Config, ConfigError, effective_config_yaml, load_config
from .core.model import ModelFileError

__all__ = ["main"]

log = logging.getLogger("streamrnn")


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        # extra={"sensor_id": ..., "partition": ..., "model_version": ...} on a record becomes fields
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    # kafka-python logs every refused connection at ERROR; the worker reports broker
    # outages itself (log line + streamrnn_broker_up), so keep the client quiet.
    logging.getLogger("kafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"streamrnn: invalid config: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_run(args: argparse.Namespace) -> int:
    from .worker import Worker

    cfg = _load(args.config)
    _setup_logging(cfg.logging.level, cfg.logging.format)
    worker = Worker(cfg)
    worker.install_signal_handlers()
    return worker.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    sys.stdout.write(effective_config_yaml(cfg))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .offline import read_readings_csv, score_frame
    from .worker import load_detector

    cfg = _load(args.config)
    _setup_logging("WARNING")
    import torch

    torch.set_num_threads(1)  # determinism and fair use of cores when files run in parallel
    df = read_readings_csv(args.input)
    detector = load_detector(cfg)
    retrainer = None
    if args.retrain_every > 0 and cfg.training.enabled and cfg.state.history_length:
        from .metrics import WorkerMetrics
        from .retraining import Retrainer

        # one series is enough offline; promoted models stay in memory (no registry writes)
        retrainer = Retrainer(cfg.training.model_copy(update={"min_sensors": 1}), None, WorkerMetrics())
    out = score_frame(df, detector, batch_size=args.batch_size, retrainer=retrainer, retrain_every=args.retrain_every)
    out.to_csv(args.output, index=False, float_format="%.9g")
    if args.plot:
        from .plot import plot_scores

        plot_scores(out, args.plot, cfg.alerts.threshold, title=args.input)
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from .registry import RegistryError
    from .worker import registry_for

    cfg = _load(args.config)
    reg = registry_for(cfg)
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


def cmd_train(args: argparse.Namespace) -> int:
    from .training_cli import train_command

    cfg = _load(args.config)
    _setup_logging("WARNING")
    return train_command(cfg, args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, sensors=args.sensors, metrics_port=args.metrics_port, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrnn", description="Streaming anomaly detection with a stateful GRU per sensor.")
    p.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the worker (SIGTERM/SIGINT: finish the batch, checkpoint, commit, exit 0)")
    r.add_argument("--config", required=True, help="YAML config file")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and print the effective config (secrets masked)")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    s = sub.add_parser("score", help="score a CSV (timestamp,value[,sensor_id]) offline with the worker's detector")
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--config", help="YAML config (scoring/alerts/model sections apply)")
    s.add_argument("--batch-size", type=int, default=250, help="rows per detector batch, as a poll batch (default 250)")
    s.add_argument("--plot", metavar="FILE.png", help="also draw the series, forecast band, score and alerts")
    s.add_argument("--retrain-every", type=int, default=0, help="run the scheduled retraining inline every N rows, on the history so far (default 0: off)")
    s.set_defaults(func=cmd_score)

    m = sub.add_parser("model", help="the model registry: list, show VERSION, rollback VERSION")
    m.add_argument("action", choices=["list", "show", "rollback"])
    m.add_argument("version", nargs="?")
    m.add_argument("--config", required=True, help="YAML config (the registry lives in state.dir/models)")
    m.set_defaults(func=cmd_model)

    t = sub.add_parser("train", help="train a new registry version from a file or the topics' retained history")
    t.add_argument("--config", required=True)
    t.add_argument("--input", help="CSV or Parquet with sensor_id,timestamp,value (default: read the configured topics)")
    t.add_argument("--max-seconds", type=float, help="time budget (default training.max_seconds)")
    t.add_argument("--epochs", type=int, help="epoch budget (default training.max_epochs)")
    t.add_argument("--force", action="store_true", help="publish even if it does not beat the serving model")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="embedded broker + synthetic sensors + worker; prints alerts as they happen")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    d.add_argument("--sensors", type=int, default=40, help="number of synthetic sensors (default 40)")
    d.add_argument("--rate", type=float, default=10.0, help="readings per sensor per second of wall time (default 10)")
    d.add_argument("--metrics-port", type=int, default=9108, help="metrics port (default 9108; 0 picks a free one)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamrnn`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "model" and args.action in ("show", "rollback") and not args.version:
        parser.error(f"model {args.action} needs a VERSION")
    return int(args.func(args) or 0)
