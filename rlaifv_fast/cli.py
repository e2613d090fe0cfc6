"""`rlaifv-fast`: the RLAIF-V pipeline from the command line.

    rlaifv-fast generate --prompts prompts.jsonl --model ./policy --out run/candidates.jsonl
    rlaifv-fast feedback --prompts prompts.jsonl --candidates run/candidates.jsonl --labeler ./labeler --out run/feedback.jsonl
    rlaifv-fast pairs    --prompts prompts.jsonl --feedback run/feedback.jsonl --out-dir run/
    rlaifv-fast reflogps --pairs run/pairs.rlaifv.parquet --model ./policy --out run/pairs.ref.parquet
    rlaifv-fast bon      --prompts prompts.jsonl --policy ./dpo-policy --reference ./policy --out run/bon.jsonl
    rlaifv-fast demo     [--ablation confounded --ablation holistic --ablation self]   (offline shapes-world demo)

Every option can also come from a YAML or JSON file given with --config: top-level keys apply to every command, a
section named after the command overrides them, and flags on the command line override both. Keys are the option
names with underscores (engine_options is a mapping). Stages resume: re-running a command skips finished records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .engines.base import NO_WORDS, YES_WORDS, DecodingConfig


def _engine_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--engine-option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def _words(text: str) -> tuple[str, ...]:
    words = tuple(w for w in (s.strip() for s in text.split(",")) if w)
    if not words:
        raise argparse.ArgumentTypeError("a word list needs at least one word")
    return words


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: I must be in [0, N)")
    return i, n


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", help="prompt source: .jsonl or .parquet file (rows with 'question' and 'image' "
                   "(path relative to the file, or {bytes, path}), optional 'id'), or a saved datasets folder")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="skip malformed rows and unreadable images (counted in the report) instead of failing")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--shard", type=_shard, help="process shard I of N (prompts split by a hash of their id, so "
                   "shard outputs concatenate into exactly the records of one run)")
    p.add_argument("--no-progress", action="store_true", default=None, help="hide progress bars")


def _add_engine(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}engine", choices=("hf", "vllm"),
                   help="runtime: hf (transformers, the default) or vllm")
    p.add_argument(f"--{prefix}engine-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                   help="an engine option, repeatable; values are JSON when they parse as JSON. hf: device, dtype, "
                   "batch_size, trust_remote_code, local_files_only; vllm: anything vllm.LLM takes "
                   "(tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype, ...)")


def _add_decoding(p: argparse.ArgumentParser) -> None:
    """The one decoding setting every candidate shares (deconfounded sampling)."""
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.7)")
    p.add_argument("--max-new-tokens", type=int, help="default 512")
    p.add_argument("--top-p", type=float, help="default 1.0 (off)")
    p.add_argument("--top-k", type=int, help="default 0 (off)")
    p.add_argument("--repetition-penalty", type=float, help="default 1.0 (off)")


def _decoding(args: argparse.Namespace) -> DecodingConfig:
    given = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "top_p": args.top_p,
             "top_k": args.top_k, "repetition_penalty": args.repetition_penalty}
    return DecodingConfig(**{k: v for k, v in given.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaifv-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file of option values (see above)")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="sample n candidates per prompt with one decoding setting (deconfounded)")
    _add_common(g)
    g.add_argument("--model", help="policy model folder (or hub name with --engine-option local_files_only=false)")
    _add_engine(g)
    g.add_argument("--out", help="candidates JSONL (appended; finished candidates are skipped on re-run)")
    g.add_argument("--n", type=int, help="candidates per prompt (default 10)")
    _add_decoding(g)
    g.add_argument("--seed", type=int, help="run seed; candidate seeds derive from (seed, prompt id, index); default 0")
    g.add_argument("--batch-size", type=int, help="prompts per engine call (default 8)")

    f = sub.add_parser("feedback", help="divide answers into claims, ask the labeler yes/no, score -(rejected)")
    _add_common(f)
    f.add_argument("--candidates", help="candidates JSONL from `generate`")
    f.add_argument("--labeler", help="labeler model folder (the policy itself for self-feedback)")
    _add_engine(f)
    f.add_argument("--out", help="feedback JSONL (appended; finished candidates are skipped on re-run)")
    f.add_argument("--divider", choices=("rule", "llm"), help="claim splitter: rule (deterministic, offline; the "
                   "default) or llm (prompted model)")
    f.add_argument("--divider-model", help="model for --divider llm (default: the labeler)")
    _add_engine(f, prefix="divider-")
    f.add_argument("--batch-size", type=int, help="candidates per batch (default 16)")
    f.add_argument("--yes-words", type=_words, help="comma-separated yes words (default yes,Yes)")
    f.add_argument("--no-words", type=_words, help="comma-separated no words (default no,No)")

    pr = sub.add_parser("pairs", help="build preference pairs and write RLAIF-V and TRL parquet files")
    _add_common(pr)
    pr.add_argument("--feedback", help="feedback JSONL from `feedback`")
    pr.add_argument("--out-dir", help="folder for pairs.rlaifv.parquet, pairs.trl.parquet, pairs.report.json")
    pr.add_argument("--max-pairs-per-prompt", type=int, help="keep at most k pairs per image (default 2)")
    pr.add_argument("--min-score-gap", type=float, help="minimum score difference of a pair (default 1)")
    pr.add_argument("--seed", type=int, help="seed of the per-image pair sampling (default 0)")
    pr.add_argument("--no-length-balance", action="store_true", default=None, help="skip length balancing")
    pr.add_argument("--ds-name", help="ds_name column of the RLAIF-V parquet (default rlaifv_fast)")

    rf = sub.add_parser("reflogps", help="score each pair's chosen and rejected once with the frozen reference "
                        "model; write the pairs with cached reference log-probs (sum, mean, per token)")
    rf.add_argument("--pairs", help="pairs parquet in the RLAIF-V schema (pairs.rlaifv.parquet from `pairs`)")
    rf.add_argument("--model", help="reference model folder (the policy at the start of the iteration)")
    rf.add_argument("--out", help="output parquet: the pairs' columns plus ref_* columns (written atomically)")
    rf.add_argument("--batch-size", type=int, help="sequences per forward (default 8)")
    rf.add_argument("--engine-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                    help="a transformers engine option, repeatable (device, dtype, trust_remote_code, "
                    "local_files_only, attn_implementation); values are JSON when they parse as JSON")
    rf.add_argument("--no-progress", action="store_true", default=None, help="hide the progress bar")

    bn = sub.add_parser("bon", help="self-feedback Best-of-N: sample n candidates with the policy and answer with "
                        "the highest reward beta/T * sum(log pi_policy - log pi_reference)")
    _add_common(bn)
    bn.add_argument("--policy", help="the DPO-aligned policy model folder (samples and scores the candidates)")
    bn.add_argument("--reference", help="the reference model folder (the policy before DPO)")
    bn.add_argument("--out", help="Best-of-N JSONL, one record per prompt (appended; finished prompts are skipped "
                    "on re-run); the report goes beside it as <name>.report.json")
    bn.add_argument("--report", help="report JSON path (default: beside --out)")
    bn.add_argument("--n", type=int, help="candidates per prompt (default 16)")
    bn.add_argument("--beta", type=float, help="the policy's DPO beta (default 0.1)")
    bn.add_argument("--no-length-normalize", action="store_true", default=None,
                    help="reward beta * sum instead of beta / T * sum (RLAIF-V normalises by the token count)")
    _add_decoding(bn)
    bn.add_argument("--seed", type=int, help="run seed; candidate seeds derive from (seed, prompt id, index); "
                    "default 0")
    bn.add_argument("--batch-size", type=int, help="prompts per sampling call (default 4)")
    bn.add_argument("--score-batch-size", type=int, help="candidate sequences per scoring forward (default 8)")
    bn.add_argument("--engine-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                    help="a transformers engine option for both models, repeatable (device, dtype, batch_size, "
                    "trust_remote_code, local_files_only); values are JSON when they parse as JSON")

    tr = sub.add_parser("train", help="DPO-train the policy on the reference-annotated pairs (one forward over "
                        "[chosen; rejected], reference log-probs from the parquet); multi-process with "
                        "`accelerate launch -m rlaifv_fast.cli train ...`")
    tr.add_argument("--pairs", help="pairs parquet with reference log-probs (pairs.ref.parquet from `reflogps`)")
    tr.add_argument("--model", help="policy model folder to train (the model the reference log-probs came from)")
    tr.add_argument("--output-dir", help="folder for metrics.jsonl, checkpoint-<step>/ and final/")
    tr.add_argument("--beta", type=float, help="DPO beta, the KL strength (default 0.1)")
    tr.add_argument("--loss-type", choices=("sigmoid", "ipo", "robust", "hinge"),
                    help="DPO loss (default sigmoid; ipo uses length-normalised log-probs)")
    tr.add_argument("--label-smoothing", type=float, help="label smoothing eps of sigmoid / robust, in [0, 0.5) "
                    "(default 0)")
    tr.add_argument("--sft-weight", type=float, help="RLAIF-V's w_sft: weight of the SFT term mean(-log pi(chosen)) "
                    "(default 0)")
    tr.add_argument("--lr", type=float, help="peak learning rate (default 5e-7, or 1e-5 with --lora)")
    tr.add_argument("--warmup-ratio", type=float, help="fraction of the steps with linear warmup before the cosine "
                    "decay (default 0.05)")
    tr.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    tr.add_argument("--max-grad-norm", type=float, help="gradient clipping norm (default 1.0; 0 disables)")
    tr.add_argument("--epochs", type=int, help="passes over the pairs (default 1)")
    tr.add_argument("--max-steps", type=int, help="optimiser steps; overrides --epochs")
    tr.add_argument("--batch-size", type=int, help="pairs per process and micro-step (default 1)")
    tr.add_argument("--grad-accum", type=int, help="micro-steps per optimiser step (default 1)")
    tr.add_argument("--max-length", type=int, help="tokens per sequence; longer answers are cut from the right, never "
                    "the prompt or image (default 2048)")
    tr.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast (GPU)")
    tr.add_argument("--gradient-checkpointing", action="store_true", default=None,
                    help="recompute activations in the backward (less memory, ~30%% more compute)")
    tr.add_argument("--logps-path", choices=("logits", "lm_head_chunked"),
                    help="log-probs from the model's logits (default) or from its hidden states with the LM head run "
                    "per chunk of sequences under checkpointing, so the full logits never exist")
    tr.add_argument("--no-freeze-vision-tower", action="store_true", default=None,
                    help="train the vision encoder too (frozen by default)")
    tr.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters on the language model "
                    "instead of all weights (needs peft); final/ holds the merged model")
    tr.add_argument("--lora-r", type=int, help="LoRA rank (default 64)")
    tr.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 16)")
    tr.add_argument("--seed", type=int, help="seed of the data order and initialisation (default 0)")
    tr.add_argument("--save-every", type=int, help="checkpoint every N optimiser steps (default 0: only at the end)")
    tr.add_argument("--save-total-limit", type=int, help="keep only the newest N checkpoints")
    tr.add_argument("--log-every", type=int, help="log metrics every N optimiser steps (default 1)")
    tr.add_argument("--report-to", action="append", metavar="TRACKER",
                    help="an accelerate tracker (tensorboard, wandb, ...), repeatable")
    tr.add_argument("--resume", action="store_true", default=None,
                    help="continue from the newest checkpoint in --output-dir (model, optimizer, scheduler, RNG)")
    tr.add_argument("--trust-remote-code", action="store_true", default=None,
                    help="pass trust_remote_code to transformers")
    tr.set_defaults(no_progress=None)  # training logs metrics.jsonl, no progress bar

    lp = sub.add_parser("loop", help="K iterations of generate -> feedback -> pairs -> reflogps -> train, each "
                        "with the newest policy; resumable at stage granularity")
    _add_common(lp)
    lp.add_argument("--model", help="the initial policy folder (also the first iteration's reference)")
    lp.add_argument("--work-dir", help="folder for every iteration's outputs and loop_state.json")
    lp.add_argument("--iterations", type=int, help="K (default 4, as in the paper)")
    lp.add_argument("--labeler", help="a separate labeler model; default: self-feedback (the policy labels)")
    lp.add_argument("--divider", choices=("rule", "llm", "holistic"), help="claim splitter (default rule; "
                    "holistic: one 'is this description accurate?' question per answer, the ablation)")
    lp.add_argument("--engine-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                    help="a transformers engine option for every model, repeatable (device, dtype, batch_size, ...)")
    lp.add_argument("--n", type=int, help="candidates per prompt (default 10)")
    _add_decoding(lp)
    lp.add_argument("--seed", type=int, help="run seed; iteration k samples with seed + k (default 0)")
    lp.add_argument("--max-pairs-per-prompt", type=int, help="pairs kept per prompt (default 2)")
    lp.add_argument("--train-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                    help="a TrainConfig field for every iteration's DPO run (beta, sft_weight, lr, epochs, "
                    "max_steps, per_device_batch_size, warmup_ratio, ...), repeatable; JSON values")

    dm = sub.add_parser("demo", help="the offline shapes-world demo: the shipped SFT policy and labeler, K RLAIF-V "
                        "iterations, exact CHAIR after each, Best-of-N, a table + report.json + report.png")
    dm.add_argument("--no-progress", action="store_true", default=None, help="hide progress bars")
    dm.add_argument("--ablation", action="append", choices=("confounded", "holistic", "self", "all"),
                    help="also run an ablation loop (repeatable; 'all' runs the three)")
    from .demo import FIELD_HELP

    _add_fields(dm, _demo_fields(), FIELD_HELP)
    return parser


def _demo_fields():
    from .demo import DemoConfig

    return [f for f in dataclasses.fields(DemoConfig) if f.name not in ("ablations", "progress")]


def _add_fields(p: argparse.ArgumentParser, fields, helps: dict[str, str]) -> None:
    """One flag per dataclass field (--work-dir for work_dir), typed by the field's default."""
    for f in fields:
        kind = type(f.default) if f.default is not None else str
        if f.name == "threads":
            kind = int
        elif kind is bool:
            kind = _bool
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, help=helps[f.name] + ("" if f.default is None else f" (default {f.default})"))


def _load_config(path: str | None, command: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values")
    sections = ("generate", "feedback", "pairs", "reflogps", "bon", "train", "loop", "demo")
    merged = {k: v for k, v in data.items() if k not in sections}
    merged.update(data.get(command) or {})
    return {k.replace("-", "_"): v for k, v in merged.items()}


def _apply_config(args: argparse.Namespace, config: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    for key, value in config.items():
        target = {"engine_options": "engine_option", "divider_engine_options": "divider_engine_option",
                  "train_options": "train_option"}.get(key, key)
        if not hasattr(args, target):
            parser.error(f"--config: unknown option {key!r} for `{args.command}`")
        if getattr(args, target) is None:
            if target.endswith("_option") and isinstance(value, dict):
                value = list(value.items())
            setattr(args, target, value)


def _require(args: argparse.Namespace, parser: argparse.ArgumentParser, *names: str) -> None:
    missing = [n for n in names if getattr(args, n) in (None, "")]
    if missing:
        parser.error(f"`{args.command}` needs " + ", ".join("--" + n.replace("_", "-") for n in missing))


def _prompts(args):
    from .data import load_prompts, shard

    prompts, report = load_prompts(args.prompts, skip_bad=bool(args.skip_bad), limit=args.limit)
    if args.shard:
        prompts = shard(prompts, *args.shard)
    for line in report.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _apply_config(args, _load_config(args.config, args.command, parser), parser)
    progress = not args.no_progress

    if args.command == "demo":
        from .demo import ABLATIONS, DemoConfig, run_demo

        chosen = args.ablation or []
        ablations = ABLATIONS if "all" in chosen else tuple(dict.fromkeys(chosen))
        given = {f.name: getattr(args, f.name) for f in _demo_fields() if getattr(args, f.name) is not None}
        report = run_demo(DemoConfig(ablations=ablations, progress=progress, **given))
        print(f"report: {Path(report['config']['work_dir']) / 'report.json'}")
        return 0

    from . import stages
    from .engines import make_engine

    if args.command == "generate":
        _require(args, parser, "prompts", "model", "out")
        decoding = _decoding(args)
        config = stages.GenerateConfig(n=args.n or 10, decoding=decoding, run_seed=args.seed or 0,
                                       batch_size=args.batch_size or 8, skip_bad=bool(args.skip_bad))
        prompts = _prompts(args)
        engine = make_engine(args.engine or "hf", args.model, options=dict(args.engine_option or []))
        report = stages.run_generate(prompts, engine, args.out, config, progress=progress)
    elif args.command == "feedback":
        _require(args, parser, "prompts", "candidates", "labeler", "out")
        from .divide import LLMDivider, RuleDivider

        prompts = _prompts(args)
        wanted = {p.id for p in prompts}
        candidates = [c for c in stages.load_stage_records(args.candidates) if c["prompt_id"] in wanted]
        labeler = make_engine(args.engine or "hf", args.labeler, options=dict(args.engine_option or []))
        if (args.divider or "rule") == "rule":
            divider = RuleDivider()
        elif args.divider_model and args.divider_model != args.labeler:
            divider = LLMDivider(make_engine(args.divider_engine or "hf", args.divider_model,
                                             options=dict(args.divider_engine_option or [])))
        else:
            divider = LLMDivider(labeler)
        config = stages.FeedbackConfig(batch_size=args.batch_size or 16, yes_words=args.yes_words or YES_WORDS,
                                       no_words=args.no_words or NO_WORDS, skip_bad=bool(args.skip_bad))
        report = stages.run_feedback(candidates, prompts, divider, labeler, args.out, config, progress=progress)
    elif args.command == "reflogps":
        _require(args, parser, "pairs", "model", "out")
        from .ref_logps import run_ref_logps

        engine = make_engine("hf", args.model, options=dict(args.engine_option or []))
        report = run_ref_logps(args.pairs, engine, args.out, batch_size=args.batch_size or 8, progress=progress)
    elif args.command == "train":
        _require(args, parser, "pairs", "model", "output_dir")
        from .train import LoRAConfig, TrainConfig, train_dpo

        lora = None
        if args.lora:
            lora = LoRAConfig(r=args.lora_r or 64, alpha=args.lora_alpha or 16)
        given = {
            "beta": args.beta, "loss_type": args.loss_type, "label_smoothing": args.label_smoothing,
            "sft_weight": args.sft_weight, "lr": args.lr, "warmup_ratio": args.warmup_ratio,
            "weight_decay": args.weight_decay, "epochs": args.epochs, "max_steps": args.max_steps,
            "per_device_batch_size": args.batch_size, "gradient_accumulation_steps": args.grad_accum,
            "max_length": args.max_length, "seed": args.seed, "save_every": args.save_every,
            "save_total_limit": args.save_total_limit, "log_every": args.log_every,
            "logps_path": args.logps_path,
        }
        config = TrainConfig(
            **{k: v for k, v in given.items() if v is not None},
            max_grad_norm=(args.max_grad_norm or None) if args.max_grad_norm is not None else 1.0,
            bf16=bool(args.bf16), gradient_checkpointing=bool(args.gradient_checkpointing),
            freeze_vision_tower=not args.no_freeze_vision_tower, lora=lora,
            trust_remote_code=bool(args.trust_remote_code), output_dir=args.output_dir,
            report_to=tuple(args.report_to or ()), resume=bool(args.resume),
        )
        result = train_dpo(args.pairs, args.model, config)
        report = {"stage": "train", "final_dir": result.final_dir, "steps": result.steps,
                  "truncated": result.truncated, "resumed_from": result.resumed_from,
                  "last_metrics": result.metrics[-1] if result.metrics else None}
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return 0
    elif args.command == "loop":
        _require(args, parser, "prompts", "model", "work_dir")
        from .loop import LoopConfig, run_loop
        from .pairs import PairConfig
        from .train import TrainConfig

        decoding = _decoding(args)
        train_fields = dict(args.train_option or [])
        unknown = sorted(set(train_fields) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            parser.error(f"--train-option: unknown TrainConfig field(s) {unknown}")
        config = LoopConfig(
            work_dir=args.work_dir, iterations=args.iterations or 4, labeler=args.labeler,
            divider=args.divider or "rule", engine_options=dict(args.engine_option or []),
            generate=stages.GenerateConfig(n=args.n or 10, decoding=decoding, run_seed=args.seed or 0,
                                           skip_bad=bool(args.skip_bad)),
            feedback=stages.FeedbackConfig(skip_bad=bool(args.skip_bad)),
            pairs=PairConfig(max_pairs_per_prompt=args.max_pairs_per_prompt if args.max_pairs_per_prompt is not None
                             else 2, seed=args.seed or 0),
            train=TrainConfig(**train_fields), progress=progress,
        )
        result = run_loop(_prompts(args), args.model, config)
        report = {"stage": "loop", "final_policy": result.policy, "iterations": result.iterations}
    elif args.command == "bon":
        _require(args, parser, "prompts", "policy", "reference", "out")
        from .bon import BoNConfig, run_bon

        decoding = _decoding(args)
        config = BoNConfig(n=args.n or 16, beta=args.beta if args.beta is not None else 0.1,
                           length_normalize=not args.no_length_normalize, decoding=decoding,
                           run_seed=args.seed or 0, batch_size=args.batch_size or 4,
                           score_batch_size=args.score_batch_size or 8, skip_bad=bool(args.skip_bad))
        prompts = _prompts(args)
        options = dict(args.engine_option or [])
        policy = make_engine("hf", args.policy, options=options)
        # the same folder is loaded once (then every reward is 0 and the first candidate wins)
        reference = policy if args.reference == args.policy else make_engine("hf", args.reference, options=options)
        report = run_bon(prompts, policy, reference, args.out, config, report_path=args.report, progress=progress)
    else:
        _require(args, parser, "prompts", "feedback", "out_dir")
        from .pairs import PairConfig

        prompts = _prompts(args)
        config = PairConfig(
            max_pairs_per_prompt=args.max_pairs_per_prompt if args.max_pairs_per_prompt is not None else 2,
            min_score_gap=args.min_score_gap if args.min_score_gap is not None else 1.0,
            seed=args.seed or 0,
            length_balance=not args.no_length_balance,
        )
        out, report = stages.run_pairs(stages.load_stage_records(args.feedback), prompts, args.out_dir, config,
                                       ds_name=args.ds_name or "rlaifv_fast", origin_dataset=str(args.prompts))
        print(f"wrote {out.rlaifv_parquet}, {out.trl_parquet}, {out.report_json}")
    summary = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
