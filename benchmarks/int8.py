"""int8 against fp32 ONNX on yoga: speed of the graph and of ``predict``, and accuracy.

    python benchmarks/int8.py [--run RUN] [--rounds 5]

One yoga run (``head``, Lite0; trained into ``--work`` when ``--run`` is not given) is exported
twice: ``visiontune export RUN`` (fp32) and ``--quantize int8`` (its gate's validation numbers
are reported as measured during the export). Then, alternating fp32 and int8, round after
round: the graph alone on a batch of 32 eval crops (onnxruntime, this process), and
``predict`` on every yoga TEST file through ``visiontune.load(FILE)`` (decoding in its loader's
worker processes included). TEST accuracy of each file from ``evaluate``. ``predict`` runs
twice per file and round: with visiontune's sessions (``session_options``: no spin-waiting)
and with onnxruntime's default options, whose idle threads spin on the cores the decoding
workers need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402
from serve import yoga_run  # noqa: E402


def _graph_speed(model, crops: np.ndarray, repeats: int = 5) -> float:
    model.run(crops)  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        model.run(crops)
    return repeats * len(crops) / (time.perf_counter() - start)


def _predict_speed(model, paths: list[Path]) -> float:
    start = time.perf_counter()
    model.predict(paths, batch_size=32)
    return len(paths) / (time.perf_counter() - start)


def _preprocess_ms(preprocess, paths: list[Path]) -> float:
    """Decode (JPEG draft mode) + eval resize/crop/normalise of each file, one thread: the
    per-image work ``predict`` adds to the graph, whatever the graph's precision."""
    import torch

    from visiontune.data.images import decode_image
    from visiontune.data.preprocess import decode_size, eval_transform

    transform, size = eval_transform(preprocess), decode_size(preprocess)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for path in paths:
            transform(decode_image(path, min_short_side=size).image)
        return 1000 * (time.perf_counter() - start) / len(paths)
    finally:
        torch.set_num_threads(threads)


def _spinning(path: Path):
    """``path`` loaded as ``visiontune.load`` does, but on onnxruntime's default session
    options (its intra-op threads spin-wait): what ``predict`` ran on before ``session_options``."""
    import onnxruntime as ort

    from visiontune.formats.onnx_reader import read_onnx
    from visiontune.prediction.onnx_predictor import OnnxModel

    data, _, meta = read_onnx(path)
    session = ort.InferenceSession(data, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    return OnnxModel(session, meta, path=path)


def measure(run: Path, rounds: int) -> tuple[dict, dict]:
    import visiontune
    from visiontune.exporting.quantize import run_crops
    from visiontune.prediction.predictor import TrainedModel

    fp32_report = visiontune.export(run, out=run / "model.onnx")
    int8_report = visiontune.export(run, quantize="int8")
    models = {"fp32": visiontune.load(fp32_report.path), "int8": visiontune.load(int8_report.path)}
    spinning = {"fp32": _spinning(fp32_report.path), "int8": _spinning(int8_report.path)}
    trained = TrainedModel.from_run(run)
    crops = run_crops(trained.config, trained.preprocess, validation=32)[1][0]
    paths = sorted(p for p in (YOGA / "TEST").rglob("*") if p.is_file())
    kinds = ("graph", "predict", "spinning")
    speeds: dict = {(name, kind): [] for name in models for kind in kinds}
    for r in range(rounds):
        for name, model in models.items():
            speeds[(name, "graph")].append(_graph_speed(model, crops))
            speeds[(name, "predict")].append(_predict_speed(model, paths))
            speeds[(name, "spinning")].append(_predict_speed(spinning[name], paths))
            print(
                f"round {r + 1} {name}: {speeds[(name, 'predict')][-1]:.1f} img/s, spinning "
                f"{speeds[(name, 'spinning')][-1]:.1f}",
                flush=True,
            )
        speeds.setdefault("preprocess_ms", []).append(_preprocess_ms(trained.preprocess, paths))
    accuracy = {name: m.evaluate(YOGA / "TEST")["accuracy"] for name, m in models.items()}
    sizes = {"fp32": fp32_report.size_bytes, "int8": int8_report.size_bytes}
    return {k: statistics.median(v) for k, v in speeds.items()}, {
        "accuracy": accuracy,
        "gate": int8_report.quantization,
        "sizes": sizes,
    }


def body(speeds: dict, facts: dict, rounds: int) -> str:
    gate = facts["gate"]
    rows = [
        "| file | size | graph, batch 32 | `predict` on TEST (467 files) | the same, threads "
        "spinning | TEST accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("fp32", "int8"):
        rows.append(
            f"| {name} | {facts['sizes'][name] / 1e6:.1f} MB | {speeds[(name, 'graph')]:.1f} img/s "
            f"| {speeds[(name, 'predict')]:.1f} img/s | {speeds[(name, 'spinning')]:.1f} img/s "
            f"| {100 * facts['accuracy'][name]:.2f} % |"
        )
    spin = {n: speeds[(n, "predict")] / speeds[(n, "spinning")] for n in ("fp32", "int8")}
    graph = speeds[("int8", "graph")] / speeds[("fp32", "graph")]
    predict = speeds[("int8", "predict")] / speeds[("fp32", "predict")]
    drop = 100 * (facts["accuracy"]["fp32"] - facts["accuracy"]["int8"])
    pre = speeds["preprocess_ms"]
    graph_ms = {n: 1000 / speeds[(n, "graph")] for n in ("fp32", "int8")}
    predict_ms = {n: 1000 / speeds[(n, "predict")] for n in ("fp32", "int8")}
    return (
        "## int8 ONNX export (yoga `head` run, Lite0)\n\n"
        "`visiontune export RUN --quantize int8`: onnxruntime static quantization (QDQ, "
        "per-channel int8 weights, uint8 activations calibrated on 128 training images) of the "
        "backbone's body; head, softmax and unknown score float32. Medians over "
        f"{rounds} alternating rounds.\n\n" + "\n".join(rows) + "\n\n"
        f"int8 / fp32: **{graph:.2f}x** the graph's speed, {predict:.2f}x `predict`'s (which "
        f"also decodes and crops every photo). Per photo: the graph {graph_ms['fp32']:.1f} ms "
        f"(fp32) and {graph_ms['int8']:.1f} ms (int8) of wall time on the {os.cpu_count()} "
        f"cores; `predict` {predict_ms['fp32']:.1f} and {predict_ms['int8']:.1f} ms; decoding "
        f"and cropping, the same for both files, {pre:.1f} ms of one core (draft-mode JPEG "
        "decode; median of the rounds, in this process). int8 shortens only the graph, so the "
        "shared decoding keeps `predict`'s ratio below the graph's. TEST accuracy "
        f"{drop:+.2f} points (fp32 minus int8). The export's gate, on the run's "
        f"{gate['images']} validation "
        f"images: accuracy {100 * gate['fp32_accuracy']:.2f} % -> "
        f"{100 * gate['int8_accuracy']:.2f} %, same top-1 on {100 * gate['agreement']:.1f} %, "
        f"{gate['speedup']:.2f}x measured during the export; validation images flagged "
        f"unknown: fp32 {100 * gate['flagged'][0]:.1f} %, int8 {100 * gate['flagged'][1]:.1f} %"
        " (the threshold was set on fp32 features). CPU int8 instructions: "
        f"{', '.join(gate['instructions'])}. Quantizing the convolutions alone (a dequantize and "
        "quantize around every ReLU6 and addition) measured 0.65-0.94x during development, "
        "so the body is quantized whole.\n\n"
        "`predict` runs its sessions without spin-waiting threads "
        "(`visiontune.formats.onnx_reader.session_options`), to leave the cores to the decoding "
        "workers; against onnxruntime's default options (idle threads spinning, the column "
        f"before TEST accuracy) in the same rounds, that is {spin['fp32']:.2f}x `predict`'s "
        f"rate for fp32 and {spin['int8']:.2f}x for int8."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("/work/bench/serve"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run = args.run or yoga_run(args.work)
    speeds, facts = measure(run, args.rounds)
    text = body(speeds, facts, args.rounds)
    write_section("int8", text, command="python benchmarks/int8.py")
    print(text)


if __name__ == "__main__":
    main()
