"""`rlaifv-fast`: the RLAIF-V pipeline from the command line.

    rlaifv-fast generate --prompts prompts.jsonl --model ./policy --out run/candidates.jsonl [--engine vllm]
    rlaifv-fast feedback --prompts prompts.jsonl --candidates run/candidates.jsonl --labeler ./labeler --out run/feedback.jsonl
    rlaifv-fast pairs    --prompts prompts.jsonl --feedback run/feedback.jsonl --out run/pairs
    rlaifv-fast reflogps --pairs run/pairs/pairs.rlaifv.parquet --model ./policy --out run/pairs.ref.parquet
    rlaifv-fast train    --pairs run/pairs.ref.parquet --model ./policy --output-dir run/dpo
    rlaifv-fast loop     --prompts prompts.jsonl --model ./policy --work-dir run --iterations 4 [--isolate]
    rlaifv-fast bon      --prompts prompts.jsonl --policy ./dpo-policy --reference ./policy --out run/bon.jsonl
    rlaifv-fast merge    --out run/candidates.jsonl run/candidates.shard*.jsonl
    rlaifv-fast demo     [--ablations all]   (the offline shapes-world demo)

Every command's flags are generated from its config dataclass (pipeline/<stage>.py `Config`): one flag per option,
with its default and help. Options can also come from a YAML or JSON file given with --config: top-level keys apply
to every command that has them, a section named after the command overrides them (for `loop`, the sections
generate/feedback/pairs/reflogps/train are its per-stage options), and flags override both. Stages resume: re-running
a command skips finished records. Errors print one line naming the file, row or option (--debug: the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .options import OptionError, add_arguments, build, namespace_to_dict, to_dict

GLOBAL_DESTS = ("config", "debug", "overwrite", "command", "report_json", "inputs")


def _commands() -> dict[str, tuple[str, type]]:
    """command -> (help, config class), stages from the one table first."""
    from .pipeline.loop import LoopConfig
    from .pipeline.stages import STAGES
    from .shapes.demo import DemoConfig

    commands = {name: (stage.help, stage.config) for name, stage in STAGES.items()}
    commands["loop"] = ("K iterations of generate -> feedback -> pairs -> reflogps -> train, each with the newest "
                        "policy; every stage in this process or (--isolate) as its own process; resumable",
                        LoopConfig)
    commands["demo"] = ("the offline shapes-world demo: the shipped SFT policy and labeler, K RLAIF-V iterations, "
                        "exact CHAIR after each, Best-of-N, a table + report.json + report.png", DemoConfig)
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaifv-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file of option values (see above)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    parser.add_argument("--overwrite", action="store_true", help="a stage whose output holds another run's records "
                        "(other settings or inputs) starts over instead of refusing")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, cls) in _commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p, cls, skip_io=name == "loop")
        if name not in ("loop", "demo"):
            p.add_argument("--report-json", metavar="PATH",
                           help="also write the stage report here (JSON, atomically; the loop reads it)")
    m = sub.add_parser("merge", help="merge the outputs of one stage's shards (JSONL records or parquet) into one "
                       "file: each record once, shards that disagree on a record are an error")
    m.add_argument("--out", required=True, help="merged output file (written atomically)")
    m.add_argument("inputs", nargs="+", help="the shard outputs")
    return parser


def _load_config(path: str | None, command: str, cls: type) -> dict[str, Any]:
    if not path:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise OptionError(f"--config {path}: expected a mapping of option names to values")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    commands = _commands()
    fields = {f.name for f in dataclasses.fields(cls)}
    known = {f.name for _, c in commands.values() for f in dataclasses.fields(c)} | set(commands)
    unknown = sorted(set(data) - known)
    if unknown:
        raise OptionError(f"--config {path}: unknown option(s) {unknown}")
    merged = {k: v for k, v in data.items() if k in fields}
    section = data.get(command) if command not in fields else None
    if section is not None:
        if not isinstance(section, dict):
            raise OptionError(f"--config {path}: section {command!r} must be a mapping")
        merged.update({k.replace("-", "_"): v for k, v in section.items()})
    return merged


def _stage_config(args: argparse.Namespace, cls: type) -> Any:
    given = {k: v for k, v in vars(args).items() if k not in GLOBAL_DESTS}
    return build(cls, _load_config(args.config, args.command, cls), namespace_to_dict(given),
                 where=f"rlaifv-fast {args.command}")


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        from .pipeline.sharding import merge_files

        count = merge_files(args.inputs, args.out)
        print(json.dumps({"stage": "merge", "out": args.out, "inputs": args.inputs, "records": count}, indent=2))
        return 0
    _, cls = _commands()[args.command]
    config = _stage_config(args, cls)
    if args.command == "demo":
        from .shapes.demo import run_demo

        report = run_demo(config)
        print(f"report: {Path(report['config']['work_dir']) / 'report.json'}")
        return 0
    if args.command == "loop":
        from .pipeline.loop import run_loop

        result = run_loop(config)
        print(json.dumps({"stage": "loop", "final_policy": result.policy, "iterations": result.iterations},
                         indent=2, default=str))
        return 0
    from .pipeline.contract import execute
    from .pipeline.sharding import Part
    from .pipeline.stages import STAGES
    from .pipeline.store import write_json

    report = execute(STAGES[args.command], config, overwrite=args.overwrite).to_dict()
    if not Part.from_env().main:
        return 0  # the first process of a launch reports
    report["config"] = to_dict(config)
    if args.report_json:
        write_json(args.report_json, report)
    print(json.dumps(report, indent=2, default=str))
    if "table" in report["notes"]:  # eval: the benchmark's table, readable
        print("\n" + report["notes"]["table"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import os

    if os.environ.get("RLAIFV_FAST_DIE_WITH_PARENT"):
        from .pipeline.loop import die_with_parent

        die_with_parent()
    if args.debug:
        return _run(args)
    try:
        return _run(args)
    except (ValueError, OSError, RuntimeError, ImportError) as e:  # the pipeline's errors name what is wrong
        print(f"rlaifv-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
