"""The ``streamrnn`` command line: run, check-config, score, model, train, demo.

This module parses arguments and hands each command to the module that does it
(:mod:`streamrnn.daemon.worker` for ``run``, :mod:`.score`, :mod:`.models`,
:mod:`.train`, :mod:`.demo`), importing it only when that command runs: ``score`` and
``model`` never load a Kafka client or the metrics library.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..config import Config, ConfigError, effective_config_yaml, load_config

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
    from ..daemon.worker import Worker

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
    from .score import score_command

    cfg = _load(args.config)
    _setup_logging("WARNING")
    return score_command(cfg, args)


def cmd_model(args: argparse.Namespace) -> int:
    from .models import model_command

    return model_command(_load(args.config), args)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_command

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
    s.add_argument("--batch-size", type=int, default=5000, help="rows per detector batch, as a poll batch (default 5000, kafka.max_poll_records); rows of one batch are taken in time order")
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
