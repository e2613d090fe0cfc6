#!/usr/bin/env python
"""Benchmark `rlaifv-fast eval`: end-to-end throughput of the shapes-world benchmark through the transformers and
vLLM engines (the shipped SFT policy, in the published weight layout both load), and the scoring throughput of
every benchmark's metrics on synthetic records in its exact format (what a re-score of merged shards costs).

  python benchmarks/bench_eval.py                    # ~3 minutes on 2 cores
  python benchmarks/bench_eval.py --engines hf --images 100

Prints a markdown table, writes benchmarks/results/eval_cpu.json and a PNG.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _end_to_end(engine: str, root: Path, images: int) -> dict:
    from rlaifv_fast.engines.layout import write_hub_layout
    from rlaifv_fast.shapes.demo import CHECKPOINTS

    policy = root / "policy"
    if not policy.exists():
        shutil.copytree(CHECKPOINTS / "policy", policy)
        write_hub_layout(policy)
    out = root / f"eval-{engine}"
    cmd = [sys.executable, "-m", "rlaifv_fast.cli", "eval", "--benchmark", "shapes", "--model", str(policy),
           "--limit", str(images), "--out", str(out), "--max-new-tokens", "40", "--batch-size", "64",
           "--engine", engine, "--no-progress"]
    if engine == "vllm":
        cmd += ["--engine-options", "kv_cache_memory_bytes=268435456", "--engine-options", "max_model_len=512"]
    else:
        cmd += ["--engine-options", "batch_size=64"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"eval on {engine} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"case": f"shapes end to end, {engine}", "items": report["items"], "seconds": round(seconds, 2),
            "items_per_s": round(report["items"] / seconds, 1),
            "descriptions.response_level": report["rows"]["descriptions"]["response_level"],
            "polar.accuracy": report["rows"]["polar"]["accuracy"]}


def _timed_score(name: str, bench, records: list[dict], repeats: int = 3) -> dict:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        bench.score(records)
        best = min(best, time.perf_counter() - t0)
    return {"case": f"{name} scoring", "items": len(records), "seconds": round(best, 4),
            "items_per_s": round(len(records) / best, 1)}


def _pope_scoring(root: Path, n: int) -> dict:
    from rlaifv_fast.eval.pope import PopeBenchmark

    rng = random.Random(0)
    rows = [{"question_id": i, "image": f"COCO_val2014_{i // 6:012d}.jpg", "text": "Is there a dog in the image?",
             "label": "yes" if i % 2 else "no"} for i in range(n)]
    path = root / "coco_pope_random.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = PopeBenchmark(path)
    records = [{"id": it.id, "split": it.split, "meta": it.meta, "answer": rng.choice(["Yes, there is.", "No."]),
                "logp_yes": -rng.random(), "logp_no": -rng.random()} for it in bench.items()]
    return _timed_score("pope", bench, records)


def _chair_scoring(root: Path, n: int) -> dict:
    from rlaifv_fast.eval.chair import CocoChair

    cats = [{"id": i + 1, "name": name} for i, name in enumerate(
        ["person", "dog", "cat", "car", "dining table", "hot dog", "chair", "toilet", "tie", "train"])]
    rng = random.Random(0)
    anns = [{"id": k, "image_id": k % n, "category_id": rng.randint(1, len(cats))} for k in range(3 * n)]
    images = [{"id": i} for i in range(n)]
    ann_dir = root / "annotations"
    ann_dir.mkdir(exist_ok=True)
    (ann_dir / "instances_val2014.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                  "categories": cats}))
    caps = [{"id": k, "image_id": k % n, "caption": "A man and his two dogs sit at a dining table."}
            for k in range(2 * n)]
    (ann_dir / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": caps}))
    chair = CocoChair(ann_dir)
    answers = {i: "A baby elephant stands near a man with a bow tie, two puppies and a hot dog on the table. "
                  "A train passes on the train track behind a toilet seat." for i in range(n)}
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        chair.score(answers)
        best = min(best, time.perf_counter() - t0)
    return {"case": "COCO CHAIR scoring (objhal, chair)", "items": n, "seconds": round(best, 4),
            "items_per_s": round(n / best, 1)}


def _amber_scoring(root: Path, n: int) -> dict:
    """AMBER's files in the published format: n/2 generative items, n/2 discriminative ones of every dimension."""
    from rlaifv_fast.eval.amber import AmberBenchmark

    data = root / "amber"
    (data / "query").mkdir(parents=True, exist_ok=True)
    words = ["sky", "grass", "tree", "person", "dog", "car", "road", "building", "cloud", "bird"]
    relation = {w: [] for w in words}
    relation.update({"grass": ["ground"], "person": ["man", "woman"], "tree": ["forest"]})
    (data / "relation.json").write_text(json.dumps(relation))
    (data / "safe_words.txt").write_text("orange\nsnack\nline\ncamera\nlight\nshoe\nsign\nrange\nindividual")
    rng = random.Random(0)
    types = ["discriminative-attribute-state", "discriminative-attribute-number", "discriminative-attribute-action",
             "discriminative-hallucination", "discriminative-relation", "relation"]
    annotations, queries = [], []
    for i in range(1, n + 1):
        if i <= n // 2:
            truth = rng.sample(words, 4)
            annotations.append({"id": i, "type": "generative", "truth": truth,
                                "hallu": [w for w in words if w not in truth][:3]})
            queries.append({"id": i, "image": f"AMBER_{i % 20}.jpg", "query": "Describe this image."})
        else:
            kind = types[i % len(types)]
            annotations.append({"id": i, "type": kind, "truth": "no" if kind in ("discriminative-hallucination",
                                                                                 "relation") else "yes"})
            queries.append({"id": i, "image": f"AMBER_{i % 20}.jpg", "query": "Is there a dog in this image?"})
    (data / "annotations.json").write_text(json.dumps(annotations, indent=4))
    from PIL import Image

    (data / "image").mkdir(exist_ok=True)
    for k in range(20):
        Image.new("RGB", (8, 8), (k, 0, 0)).save(data / "image" / f"AMBER_{k}.jpg")
    (data / "query" / "query_all.json").write_text(json.dumps(queries, indent=4))
    bench = AmberBenchmark(data)
    records = []
    for it in bench.items():
        r = {"id": it.id, "split": it.split, "kind": it.kind, "meta": it.meta, "logp_yes": -rng.random(),
             "logp_no": -rng.random(), "answer": rng.choice(["Yes", "No"])}
        if it.kind == "generate":
            r["answer"] = "A man walks his two dogs on the road under a cloudy sky, near trees and a red car."
        records.append(r)
    return _timed_score("amber", bench, records)


def _table(rows: list[dict]) -> str:
    lines = ["| case | items | seconds | items/s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['items']:,} | {r['seconds']} | {r['items_per_s']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", choices=("hf", "vllm"), default=["hf", "vllm"])
    parser.add_argument("--images", type=int, default=100, help="held-out shapes images (5 items each)")
    parser.add_argument("--records", type=int, default=30000, help="synthetic records per scoring case")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        root = Path(tmp)
        for engine in args.engines:
            rows.append(_end_to_end(engine, root, args.images))
        rows.append(_pope_scoring(root, args.records))
        rows.append(_chair_scoring(root, args.records // 10))
        rows.append(_amber_scoring(root, args.records // 10))
    print(_table(rows))
    import torch

    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh([r["case"] for r in rows], [r["items_per_s"] for r in rows])
        ax.set_xscale("log")
        ax.set_xlabel("items / s (log)")
        fig.tight_layout()
        fig.savefig(out / "eval_cpu.png", dpi=110)
    except ImportError:
        pass
    print(f"wrote {out / 'eval_cpu.json'}")


if __name__ == "__main__":
    main()
