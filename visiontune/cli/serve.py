"""`visiontune serve`: a local web page and JSON API for a run, an ensemble or an .onnx file."""

from __future__ import annotations

import argparse
import sys

from ..serve.config import ServeConfig
from .evaluate import split_runs

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _default(name: str) -> str:
    return f"(default: {ServeConfig.default(name)})"


def _add_limits(p) -> None:
    p.add_argument(
        "--max-batch",
        type=int,
        default=ServeConfig.default("max_batch"),
        help="images from concurrent requests sharing one forward pass; 1 turns batching "
        f"off {_default('max_batch')}",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=ServeConfig.default("max_wait_ms"),
        help="how long the first image of a batch waits for others (while a pass runs, the "
        f"next batch fills without waiting) {_default('max_wait_ms')}",
    )
    p.add_argument(
        "--decode-threads",
        type=int,
        default=ServeConfig.default("decode_threads"),
        help=f"uploads decoded at once; 0: one per core {_default('decode_threads')}",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=ServeConfig.default("max_queue"),
        help="images waiting for the model; past it requests get 503 at once "
        f"{_default('max_queue')}",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=ServeConfig.default("max_upload_mb"),
        help=f"largest request body; larger ones get 413 {_default('max_upload_mb')}",
    )
    p.add_argument(
        "--max-files",
        type=int,
        default=ServeConfig.default("max_files"),
        help=f"images in one request {_default('max_files')}",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=ServeConfig.default("graceful_timeout_s"),
        metavar="SECONDS",
        help="on Ctrl-C/SIGTERM: time in-flight requests get to finish "
        f"{_default('graceful_timeout_s')}",
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
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    config = ServeConfig(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        decode_threads=args.decode_threads,
        max_upload_mb=args.max_upload_mb,
        max_files=args.max_files,
        graceful_timeout_s=args.graceful_timeout,
    )
    from ..api import load
    from ..serve import create_app, run_server

    runs = split_runs(args.runs)
    model = load(runs if len(runs) > 1 else runs[0], device=args.device)
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
