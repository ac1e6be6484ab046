"""Prediction throughput on the yoga TEST set: the run folder (eager PyTorch) vs. its ONNX export.

    python benchmarks/export.py [--run RUN] [--repeats 3]

Without ``--run`` it first trains a ``--strategy head`` Lite0 run on yoga TRAIN (frozen backbone,
seconds to minutes). Both sides then predict the same 467 TEST files with the same loader
(decode in a worker, eval crop, batch 32): end-to-end images/s is what a user of
``visiontune predict`` sees. Forward-only images/s runs both models on the same pre-cropped
batches, without decoding. Repeats alternate between the two and the median is reported, so a
burst of load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section

BATCH = 32


def _train(out: Path) -> Path:
    import visiontune

    print("training a --strategy head run on yoga TRAIN ...", file=sys.stderr)
    return visiontune.fit(YOGA, strategy="head", out=str(out), progress=False).run_dir


def _timed_predict(model, files) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    rows = model.predict(files, top_k=len(model.labels), batch_size=BATCH)
    return time.perf_counter() - start, rows


def _crops(spec, files, count: int):
    """The first ``count`` decodable TEST images as uint8 crops and normalised tensors."""
    import torch

    from visiontune.data.images import ImageDecodeError, decode_image
    from visiontune.data.transforms import decode_size, eval_geometry, eval_transform

    uint8, normalized = [], []
    for path in files:
        try:
            image = decode_image(path, min_short_side=decode_size(spec)).image
        except ImageDecodeError:
            continue
        uint8.append(eval_geometry(spec)(image).as_subclass(torch.Tensor))
        normalized.append(eval_transform(spec)(image).as_subclass(torch.Tensor))
        if len(uint8) == count:
            break
    return torch.stack(uint8), torch.stack(normalized)


def _forward_rates(run_model, onnx_model, files, repeats: int) -> tuple[float, float]:
    import torch

    uint8, normalized = _crops(run_model.preprocess, files, BATCH * 4)
    normalized = normalized.contiguous(
        memory_format=torch.channels_last
    )  # as the run folder feeds it
    eager = run_model.model.eval()

    def eager_pass():
        with torch.inference_mode():
            for i in range(0, len(normalized), BATCH):
                torch.softmax(eager(normalized[i : i + BATCH]), dim=1)

    def onnx_pass():
        for i in range(0, len(uint8), BATCH):
            onnx_model.run(uint8[i : i + BATCH].numpy())

    eager_pass(), onnx_pass()  # warm-up: first-call allocations, oneDNN/MLAS kernel selection
    times = {"eager": [], "onnx": []}
    for _ in range(repeats):
        for name, fn in (("eager", eager_pass), ("onnx", onnx_pass)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return (
        len(uint8) / statistics.median(times["eager"]),
        len(uint8) / statistics.median(times["onnx"]),
    )


def _probabilities(rows, names) -> np.ndarray:
    return np.array(
        [
            [{t["class"]: t["probability"] for t in r["top"]}[n] for n in names]
            for r in rows
            if "top" in r
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, help="an existing run folder (default: train a head run)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    test = YOGA / "TEST"
    if not test.is_dir():
        raise SystemExit(f"the yoga dataset is not at {YOGA}")

    import visiontune
    from visiontune.data.folder import list_images

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or _train(Path(tmp) / "run")
        start = time.perf_counter()
        report = visiontune.export(run, format="onnx", out=Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - start
        print(report.summary(), file=sys.stderr)
        run_model, onnx_model = visiontune.load(run), visiontune.load(report.path)
        files = list_images(test)
        (
            _timed_predict(run_model, files[:BATCH]),
            _timed_predict(onnx_model, files[:BATCH]),
        )  # warm-up
        times, rows = {"run": [], "onnx": []}, {}
        for _ in range(args.repeats):
            for name, model in (("run", run_model), ("onnx", onnx_model)):
                seconds, rows[name] = _timed_predict(model, files)
                times[name].append(seconds)
        fwd_eager, fwd_onnx = _forward_rates(run_model, onnx_model, files, args.repeats)
    load_after = os.getloadavg()

    names = run_model.labels.names
    p_run, p_onnx = _probabilities(rows["run"], names), _probabilities(rows["onnx"], names)
    same_top1 = int((p_run.argmax(1) == p_onnx.argmax(1)).sum())
    rate_run = len(files) / statistics.median(times["run"])
    rate_onnx = len(files) / statistics.median(times["onnx"])
    backbone = run_model.model.backbone.name
    cores = len(os.sched_getaffinity(0))
    busy = max(load_before[0], load_after[0]) > cores * 0.75  # others were running
    machine_note = (
        "a shared machine, other jobs were running, so the rates are a fraction of a quiet "
        "machine's and the ratios are indicative only (contention need not slow both "
        "runtimes alike)"
        if busy
        else "a quiet machine"
    )
    end_to_end = (
        "| predict, end to end (decode + crop + model), images/s "
        f"| {rate_run:.1f} | {rate_onnx:.1f} | {rate_onnx / rate_run:.2f}x |"
    )
    model_only = (
        "| model only, pre-cropped batches, images/s "
        f"| {fwd_eager:.1f} | {fwd_onnx:.1f} | {fwd_onnx / fwd_eager:.2f}x |"
    )
    body = f"""## Export: prediction throughput, run folder vs. ONNX (issue 7)

{backbone} `--strategy head` run, {len(files)} yoga TEST files ({len(p_run)} decodable), batch
{BATCH}, default loader workers; median of {args.repeats} alternating repeats after a warm-up.

| | run folder (eager PyTorch) | ONNX export (onnxruntime {_ort_version()}) | ONNX / run |
|---|---:|---:|---:|
{end_to_end}
{model_only}

Same top-1 class on {same_top1} of {len(p_run)} images; largest probability difference
{np.abs(p_run - p_onnx).max():.1e}. Export (torch.onnx dynamo exporter + parity check on
{report.images} images): {export_s:.0f} s, {report.size_bytes / 1e6:.1f} MB, max |dp| at export
{report.max_abs_diff:.1e}. Load average {load_before[0]:.1f} before and {load_after[0]:.1f} after
on {cores} cores: {machine_note}.
"""
    print(body)
    write_section(
        "export",
        body,
        command="python benchmarks/export.py" + (f" --run {args.run}" if args.run else ""),
    )


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
