"""`visiontune serve`: a local web page and JSON API for a run, an ensemble or an .onnx file."""

from __future__ import annotations

import argparse
import sys
import textwrap

from ..serve.config import ServeConfig
from .evaluate import split_runs
from .options import add_precision_option

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _default(name: str) -> str:
    return f"(default: {ServeConfig.default(name)})"


# (flag, ServeConfig field, type, metavar, help): each limit's default comes from ServeConfig
_LIMITS = (
    (
        "--max-batch",
        "max_batch",
        int,
        "N",
        "images from concurrent requests sharing one forward pass; 1 turns batching off",
    ),
    (
        "--max-wait-ms",
        "max_wait_ms",
        float,
        "MS",
        "how long the first image of a batch waits for others still being decoded (while a "
        "pass runs, the next batch fills without waiting)",
    ),
    ("--decode-threads", "decode_threads", int, "N", "uploads decoded at once; 0: one per core"),
    (
        "--max-queue",
        "max_queue",
        int,
        "N",
        "images waiting for the model; past it requests get 503 at once",
    ),
    ("--max-upload-mb", "max_upload_mb", float, "MB", "largest request body; larger ones get 413"),
    ("--max-files", "max_files", int, "N", "images in one request"),
    (
        "--graceful-timeout",
        "graceful_timeout_s",
        float,
        "SECONDS",
        "on Ctrl-C/SIGTERM: time in-flight requests get to finish",
    ),
)


def _add_limits(p) -> None:
    for flag, name, kind, metavar, text in _LIMITS:
        p.add_argument(
            flag,
            dest=name,
            type=kind,
            metavar=metavar,
            default=ServeConfig.default(name),
            help=textwrap.fill(f"{text} {_default(name)}", 64),  # raw help: wrapped here
        )


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page and a JSON API to try and call a trained model",
        description="Serve a trained model: a page to drop photos on at /, its model card at "
        "/card, and a JSON API (POST /predict, GET /model, GET /health; OpenAPI docs at /docs). "
        "Works offline; bound to this computer only unless --host says otherwise.",
        epilog="examples:\n"
        "  visiontune serve runs/poses                     # then open http://127.0.0.1:8000/\n"
        "  visiontune serve runs/a runs/b --port 8080      # an ensemble of two runs\n"
        "  visiontune serve runs/poses/model.onnx          # an exported file (onnxruntime)\n"
        "  curl -F files=@photo.jpg 'http://127.0.0.1:8000/predict?top_k=3'\n"
        "\n"
        "Requests that arrive together are batched into one forward pass (--max-batch,\n"
        '--max-wait-ms). Errors are JSON {"error": message, "status": code}: 400 no image,\n'
        "413 too large or too many pixels, 415 not an image, 422 a bad option, 503 busy.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "runs",
        metavar="RUN",
        nargs="+",
        help="run folder (train), ensemble folder (train --ensemble), several run\n"
        "folders (averaged as one ensemble; also a,b,c) or an .onnx export",
    )
    p.add_argument(
        "--host",
        default=ServeConfig.default("host"),
        help="address to listen on; 0.0.0.0 opens it to the network, with no\n"
        f"authentication {_default('host')}",
    )
    p.add_argument(
        "--port",
        type=int,
        default=ServeConfig.default("port"),
        help=f"0: any free one {_default('port')}",
    )
    _add_limits(p)
    p.add_argument(
        "--log-level",
        choices=("warning", "info", "debug"),
        default="warning",
        help="info also logs every request (default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    add_precision_option(p)
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    limits = {name: getattr(args, name) for _, name, *_ in _LIMITS}
    config = ServeConfig(host=args.host, port=args.port, **limits)
    from ..api import load
    from ..serve import create_app, run_server

    runs = split_runs(args.runs)
    target = runs if len(runs) > 1 else runs[0]
    model = load(target, device=args.device, precision=args.precision)
    if config.host not in _LOOPBACK:
        print(
            f"visiontune serve: warning: listening on {config.host} opens the model to the "
            "network, with no authentication",
            file=sys.stderr,
        )
    app = create_app(model, config)
    run_server(app, config, announce=lambda line: print(line, flush=True), log_level=args.log_level)
    print("visiontune serve: stopped", flush=True)
    return 0


def register(sub) -> None:
    _add_serve(sub)
