"""`rlaifv-fast demo`: the whole RLAIF-V loop on the synthetic shapes world, offline, on a CPU in minutes.

    SFT policy (shipped) -> evaluate -> K x [deconfounded sampling -> rule divide -> labeler yes/no -> pairs (length
    balanced) -> reference log-probs -> DPO + SFT term] -> evaluate after each iteration -> self-feedback Best-of-N

Every stage is the pipeline's own (pipeline.loop.run_loop, pipeline.bon.run_bon, the fused ops); the demo only makes the
prompts (train-distribution images the SFT models never saw), evaluates with exact CHAIR on the held-out split, and
reports. Ablations (flags; each a second loop in its own folder, reported side by side):
  --ablation confounded   pairs from candidates sampled with different decoding settings (no deconfounding)
  --ablation holistic     one "Is this description of the image accurate?" question per answer (no divide-and-conquer)
  --ablation self         self-feedback: the policy labels its own claims instead of the separate labeler

Outputs in the work folder: report.json, report.png, the loop's stage files; the table is printed. Resumable: the
loop resumes at stage granularity and every evaluation is cached in eval/ (a re-run with the same settings redoes
nothing).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ..pipeline.data import Prompt
from ..engines.base import DecodingConfig
from ..pipeline.pairs import PairConfig
from . import tasks
from .evaluate import evaluate_descriptions, evaluate_holistic, evaluate_qa, heldout, relative_drop
from .sft import demo_world
from .world import ShapesWorldConfig, make_scene, mentioned_objects, render
from ..options import Options, option
from ..pipeline.store import write_json

CHECKPOINTS = Path(__file__).parent / "checkpoints"
ABLATIONS = ("confounded", "holistic", "self")


def _ablations(value: tuple[str, ...]) -> None:
    bad = [a for a in value if a not in ABLATIONS + ("all",)]
    if bad:
        raise ValueError(f"unknown ablation(s) {bad}; choose from {ABLATIONS + ('all',)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(Options):
    """Defaults are sized for a 2-core CPU (<= 10 minutes for the full method); README documents larger settings."""

    work_dir: str = option("rlaifv-demo", help="output folder (report.json, report.png, every stage's files); "
                           "re-running resumes")
    policy: str | None = option(None, help="the initial policy folder (default: the shipped SFT policy)")
    labeler: str | None = option(None, help="the separate labeler folder (default: the shipped labeler)")
    iterations: int = option(3, ge=1, help="RLAIF-V iterations K")
    n_prompts: int = option(400, ge=1, help="new train-distribution images per iteration")
    n_candidates: int = option(8, ge=1, help="candidates sampled per image (one decoding setting)")
    temperature: float = option(0.9, gt=0, finite=True, help="sampling temperature of candidates, sampled "
                                "evaluation and Best-of-N")
    max_new_tokens: int = option(40, ge=1, help="longest answer in tokens")
    eval_images: int = option(200, ge=1, help="held-out images evaluated after each iteration")
    eval_samples: int = option(4, ge=0, help="sampled descriptions per held-out image (besides the greedy one)")
    bon_n: int = option(8, ge=1, help="Best-of-N candidates per held-out image")
    lr: float = option(2e-4, gt=0, finite=True, help="DPO learning rate (full fine-tuning of the tiny model)")
    beta: float = option(0.1, gt=0, finite=True, help="DPO beta")
    sft_weight: float = option(1.0, ge=0, finite=True, help="weight of the SFT term on the chosen answers")
    epochs: int = option(2, ge=1, help="DPO epochs over each iteration's pairs")
    batch_size: int = option(8, ge=1, help="pairs per DPO step")
    max_pairs_per_prompt: int = option(2, ge=1, help="preference pairs kept per image")
    # Off here, unlike the method's default: in this world a hallucination is an ADDED sentence, so the accurate
    # answer is rightly shorter, and balancing chosen/rejected lengths rewarded padding with repeated true objects
    # (measured: the hallucination fell, but answers grew and repetition rose). The `rep` column keeps it visible.
    length_balance: bool = option(False, help="balance chosen/rejected lengths when picking pairs (off here: a "
                                  "hallucination is an added sentence, see the README)")
    ablations: tuple[str, ...] = option((), check=_ablations, help="also run ablation loops: confounded, holistic, "
                                        "self, or all (comma-separated)")
    isolate: bool = option(False, help="run every loop stage as its own process (as at scale); the records are "
                           "the same as in-process")
    seed: int = option(0, help="run seed (sampling, pairs, DPO data order)")
    threads: int | None = option(None, ge=1, help="torch CPU threads (default: torch's choice)")
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        super().__post_init__()
        chosen = ABLATIONS if "all" in self.ablations else tuple(dict.fromkeys(self.ablations))
        object.__setattr__(self, "ablations", chosen)


def _shipped(name: str) -> str:
    path = CHECKPOINTS / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"the shipped {name} checkpoint is missing at {path}; train one with "
            f"`python -m rlaifv_fast.shapes.sft --role {name} --out {path}`"
        )
    return str(path)


def _world_of(model_dir: str) -> ShapesWorldConfig:
    """The world a shipped SFT model was trained on (its sft_report.json), else the demo default."""
    report = Path(model_dir) / "sft_report.json"
    if not report.exists():
        return demo_world()
    w = dict(json.loads(report.read_text())["config"]["world"])
    w["cooccurrence"] = {tuple(k): tuple(v) for k, v in w["cooccurrence"]}
    for key in ("colours", "shapes", "background"):
        w[key] = tuple(w[key])
    return ShapesWorldConfig(**w)


def make_prompts(world: ShapesWorldConfig, n: int, image_dir: Path, *, first_index: int) -> list[Prompt]:
    """n "Describe the image." prompts on train-split scenes first_index.. (beyond the SFT data), saved as PNG."""
    image_dir.mkdir(parents=True, exist_ok=True)
    prompts = []
    for i in range(first_index, first_index + n):
        scene = make_scene(world, "train", i)
        path = image_dir / f"train-{i}.png"
        if not path.exists():
            render(scene, world).save(path)
        truth = sorted(scene.truth())
        prompts.append(Prompt(f"shapes-{i}", tasks.DESCRIBE_PROMPT, str(path), meta={"truth": truth}))
    return prompts


def labeler_agreement(feedback: list[dict], prompts: list[Prompt], world: ShapesWorldConfig) -> dict:
    """How often the labeler's verdict on a claim equals the ground truth: a claim is true when every object it names
    is in the image (claims naming no object are not counted). Works for one-object claims (rule divider) and whole
    answers (holistic ablation) alike."""
    truth = {p.id: {tuple(o) for o in p.meta["truth"]} for p in prompts}
    agree = total = 0
    hall_caught = hall = 0
    for r in feedback:
        for claim, verdict in zip(r["claims"], r["verdicts"]):
            objs = mentioned_objects(claim, world)
            if not objs:
                continue
            real = all(o in truth[r["prompt_id"]] for o in objs)
            total += 1
            agree += verdict == real
            if not real:
                hall += 1
                hall_caught += not verdict
    return {"agreement": agree / total if total else None, "claims": total,
            "false_claims_rejected": hall_caught / hall if hall else None, "false_claims": hall}


def _cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    write_json(path, result)
    return result


def write_prompts(prompts: list[Prompt], path: Path) -> Path:
    """The loop's prompts file (id, image path, question), written atomically."""
    from ..pipeline.store import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p in prompts:
            # absolute: a relative image path would be read against the prompts file's folder
            f.write(json.dumps({"id": p.id, "image": str(Path(p.image).resolve()), "question": p.question}) + "\n")
    return path


def _loop(config: DemoConfig, prompts_file: Path, policy: str, labeler: str | None, work: Path, *,
          divider: str = "rule", mixed: tuple[DecodingConfig, ...] = ()):
    from ..pipeline.feedback import FeedbackConfig
    from ..pipeline.generate import GenerateConfig
    from ..pipeline.loop import LoopConfig, run_loop
    from ..pipeline.ref_logps import Config as RefLogpsConfig
    from ..pipeline.train import TrainConfig

    engine = {"batch_size": 64}
    decoding = DecodingConfig(temperature=config.temperature, max_new_tokens=config.max_new_tokens)
    loop_config = LoopConfig(
        prompts=str(prompts_file),
        model=policy,
        work_dir=str(work),
        iterations=config.iterations,
        isolate=config.isolate,
        progress=config.progress,
        generate=GenerateConfig(n=config.n_candidates, decoding=decoding, run_seed=config.seed, batch_size=32,
                                mixed_decodings=mixed, engine_options=engine),
        feedback=FeedbackConfig(batch_size=64, labeler=labeler, divider=divider, engine_options=engine),
        pairs=PairConfig(max_pairs_per_prompt=config.max_pairs_per_prompt, seed=config.seed,
                         length_balance=config.length_balance),
        reflogps=RefLogpsConfig(batch_size=64, engine_options=engine),
        train=TrainConfig(lr=config.lr, beta=config.beta, sft_weight=config.sft_weight, epochs=config.epochs,
                          per_device_batch_size=config.batch_size, max_length=128, seed=config.seed,
                          warmup_ratio=0.1, log_every=10),
    )
    return run_loop(loop_config)


def _evaluate(config: DemoConfig, world: ShapesWorldConfig, model: str, cache: Path) -> dict:
    from ..engines.hf import HFEngine

    def compute():
        engine = HFEngine(model, batch_size=64)
        return evaluate_descriptions(engine, world, n_images=config.eval_images, samples=config.eval_samples,
                                     temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                                     run_seed=config.seed + 1)
    return _cached(cache, compute)


def run_demo(config: DemoConfig = DemoConfig()) -> dict:
    from ..engines.hf import HFEngine
    from ..pipeline.bon import BoNConfig, run_bon

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load weight bars would drown the stage bars
    if config.threads:
        torch.set_num_threads(int(config.threads))
    t0 = time.time()
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    policy = config.policy or _shipped("policy")
    labeler = config.labeler or _shipped("labeler")
    world = _world_of(policy)
    first = world.n_train  # images the SFT models never saw
    prompts = make_prompts(world, config.n_prompts, work / "images", first_index=first)
    prompts_file = write_prompts(prompts, work / "prompts.jsonl")
    evals = work / "eval"

    def labeler_skills():
        engine = HFEngine(labeler, batch_size=64)
        return {**evaluate_qa(engine, world, n_images=config.eval_images),
                "holistic": evaluate_holistic(engine, world, n_images=config.eval_images)}

    qa = _cached(evals / "labeler_qa.json", labeler_skills)
    qa_self = _cached(evals / "policy_qa.json",
                      lambda: evaluate_qa(HFEngine(policy, batch_size=64), world, n_images=config.eval_images))
    rows = [{"name": "SFT policy", **_evaluate(config, world, policy, evals / "sft.json")}]

    runs = {"full": dict(labeler=labeler)}
    for a in config.ablations:
        if a == "confounded":
            t = config.temperature
            runs[a] = dict(labeler=labeler, mixed=(DecodingConfig(temperature=0.3, max_new_tokens=config.max_new_tokens),
                                                   DecodingConfig(temperature=t + 0.4,
                                                                  max_new_tokens=config.max_new_tokens)))
        elif a == "holistic":
            runs[a] = dict(labeler=labeler, divider="holistic")
        else:
            runs[a] = dict(labeler=None)
    loops = {}
    for name, kw in runs.items():
        result = _loop(config, prompts_file, policy, kw.pop("labeler"), work / f"loop-{name}", **kw)
        loops[name] = result
        iters = range(1, config.iterations + 1) if name == "full" else [config.iterations]
        for it in iters:
            model = result.iterations[it].get("policy") if it < config.iterations else result.policy
            label = f"iteration {it}" if name == "full" else f"ablation: {name}"
            row = {"name": label, **_evaluate(config, world, model, evals / f"{name}-iter{it}.json")}
            fb = _records(work / f"loop-{name}" / f"iter{it - 1}" / "feedback.jsonl")
            row["labeler_agreement"] = labeler_agreement(fb, prompts, world)
            rows.append(row)

    # Best-of-N with the self-reward: the final policy against the SFT policy as the reference
    final = loops["full"].policy
    heldout_prompts = [
        Prompt(f"heldout-{i}", tasks.DESCRIBE_PROMPT, render(s, world), meta={"truth": sorted(s.truth())})
        for i, s in enumerate(heldout(world, config.eval_images))
    ]
    bon_path = work / "bon" / "bon.jsonl"
    run_bon(heldout_prompts, HFEngine(final, batch_size=64), HFEngine(policy, batch_size=64), bon_path,
            BoNConfig(n=config.bon_n, decoding=DecodingConfig(temperature=config.temperature,
                                                             max_new_tokens=config.max_new_tokens),
                      run_seed=config.seed + 2, batch_size=32, score_batch_size=64),
            progress=config.progress)
    rows.append(_bon_row(_records(bon_path), heldout_prompts, world, config.bon_n))

    report = _report(config, world, qa, qa_self, rows, time.time() - t0)
    write_json(work / "report.json", report)
    _plot(report, work / "report.png")
    print(format_table(report))
    return report


def _records(path: Path) -> list[dict]:
    from ..pipeline.store import read_records

    return list(read_records(path))


def _bon_row(records: list[dict], prompts: list[Prompt], world: ShapesWorldConfig, n: int) -> dict:
    from ..eval.chair import chair_scores

    truth = {p.id: {tuple(o) for o in p.meta["truth"]} for p in prompts}
    recs = [r for r in records if r["id"] in truth]
    parse = lambda text: mentioned_objects(text, world)  # noqa: E731
    picked = chair_scores([r["text"] for r in recs], [truth[r["id"]] for r in recs], parse).as_dict()
    pool = chair_scores([c["text"] for r in recs for c in r["candidates"]],
                        [truth[r["id"]] for r in recs for _ in r["candidates"]], parse).as_dict()
    return {"name": f"Best-of-{n} (final policy)", "greedy": None, "sampled": pool, "bon": picked}


def _report(config, world, qa, qa_self, rows, seconds) -> dict:
    sft = rows[0]
    full = [r for r in rows if r["name"].startswith("iteration")][-1]
    targets = {}
    for mode in ("greedy", "sampled"):
        for key in ("response_level", "object_level"):
            targets[f"{mode}_{key}_relative_drop"] = relative_drop(sft[mode], full[mode], key)
        targets[f"{mode}_recall_relative_change"] = (
            (full[mode]["recall"] - sft[mode]["recall"]) / sft[mode]["recall"] if sft[mode]["recall"] else 0.0)
    agreement = full.get("labeler_agreement", {}).get("agreement")
    checks = {
        "labeler_competent (QA accuracy >= 0.75)": qa["accuracy"] >= 0.75,
        "hallucination_halved (greedy and sampled, response and object level)": all(
            targets[f"{m}_{k}_relative_drop"] >= 0.5 for m in ("greedy", "sampled")
            for k in ("response_level", "object_level")),
        "recall_kept (relative drop <= 10%)": all(targets[f"{m}_recall_relative_change"] >= -0.10
                                                  for m in ("greedy", "sampled")),
        "labeler_agreement >= 0.90": agreement is not None and agreement >= 0.90,
    }
    bon = rows[-1]
    checks["best_of_n_lowers_hallucination"] = bon["bon"]["response_level"] < bon["sampled"]["response_level"]
    for r in rows:
        if r["name"] in ("ablation: confounded", "ablation: holistic"):
            checks[f"{r['name']} worse than full"] = (
                r["greedy"]["response_level"] > full["greedy"]["response_level"]
                or r["greedy"]["object_level"] > full["greedy"]["object_level"])
    if qa["accuracy"] < 0.6:
        checks = {"labeler_near_chance: no success reported": False}
    return {"config": dataclasses.asdict(config), "world": {"cooccurrence": [[list(k), list(v)] for k, v in
                                                                              world.cooccurrence.items()],
                                                             "hallucination_rate": world.hallucination_rate},
            "labeler_qa": qa, "policy_qa": qa_self, "rows": rows, "targets": targets, "checks": checks,
            "seconds": round(seconds, 1)}


def format_table(report: dict) -> str:
    cols = f"{'CHAIRs':>7s} {'CHAIRi':>7s} {'recall':>7s} {'len':>5s} {'rep':>5s}"
    width = len(cols)
    head = f"{'':34s} | {'greedy':^{width}s} | {'sampled':^{width}s} | {'agree':>6s}"
    lines = [head, f"{'':34s} | {cols} | {cols} |", "-" * len(head)]

    def cells(s):
        if s is None:
            return " " * width
        return (f"{s['response_level']:7.3f} {s['object_level']:7.3f} {s['recall']:7.3f} "
                f"{s['mean_length_words']:5.1f} {s.get('repetition', 0.0):5.3f}")

    for r in report["rows"]:
        agree = (r.get("labeler_agreement") or {}).get("agreement")
        greedy = r["greedy"] if r["greedy"] is not None else r.get("bon")
        name = r["name"] + (" [pick]" if r["greedy"] is None else "")
        agree_text = "-" if agree is None else f"{agree:.3f}"
        lines.append(f"{name:34s} | {cells(greedy)} | {cells(r['sampled'])} | {agree_text:>6s}")
    qa = report["labeler_qa"]
    lines.append(f"labeler held-out polar QA accuracy {qa['accuracy']:.3f} (yes rate {qa['yes_rate']:.2f}, "
                 f"co-occurrence partners {qa['partner_accuracy']:.3f}; whole-description questions "
                 f"{qa['holistic']['accuracy']:.3f}); SFT policy's own polar QA {report['policy_qa']['accuracy']:.3f}")
    lines.append("agree: the labeler's verdicts on that run's claims vs the ground truth; [pick]: Best-of-N picks in "
                 "the greedy columns, all its candidates in the sampled ones")
    for name, ok in report["checks"].items():
        lines.append(f"[{'x' if ok else ' '}] {name}")
    lines.append(f"total {report['seconds']:.0f} s")
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is optional (the `bench` extra); the JSON and table are always written
        return
    from ..pipeline.store import atomic_path

    rows = [r for r in report["rows"] if r["greedy"] is not None]
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, mode in zip(axes, ("greedy", "sampled")):
        x = range(len(rows))
        for key, label in (("response_level", "CHAIRs"), ("object_level", "CHAIRi"), ("recall", "recall")):
            ax.plot(x, [r[mode][key] for r in rows], marker="o", label=label)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{mode} descriptions (held-out)")
        ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
