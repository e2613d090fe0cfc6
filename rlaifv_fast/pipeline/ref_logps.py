"""Reference log-probs: before DPO, the frozen reference (the policy at the start of the
iteration) scores every pair's chosen and rejected answer once; the sums, means and per-token log-probs are cached
beside each pair, so training never runs the reference model.

Input: a pairs parquet in the RLAIF-V schema (`rlaifv-fast pairs` writes pairs.rlaifv.parquet: image {bytes, path},
question, chosen, rejected, idx, ...). Output: the same rows and columns plus

    ref_chosen_logp, ref_rejected_logp                  sums over the response tokens (+EOS)
    ref_chosen_logp_mean, ref_rejected_logp_mean        the sums over the token counts
    ref_chosen_ntokens, ref_rejected_ntokens            response tokens (+EOS)
    ref_chosen_token_logps, ref_rejected_token_logps    per-token log-probs, response tokens only
    ref_model                                           the reference model's name

written atomically (a temporary file renamed into place). Scoring is described in scoring.py.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..engines import EngineKind, EngineSpec
from ..options import option
from .contract import IterationContext, RunOptions, StageReport, TemplateOptions, require
from .scoring import Triple, response_logps
from .sharding import Part, Shard, check_shard, merge_parquet, select
from .store import atomic_path

NAME = "reflogps"
HELP = ("score each pair's chosen and rejected once with the frozen reference model (transformers, the trainer's own "
        "forward); write the pairs with cached reference log-probs (sum, mean, per token)")
DATA_PARALLEL = True

REF_COLUMNS = (
    "ref_chosen_logp",
    "ref_rejected_logp",
    "ref_chosen_logp_mean",
    "ref_rejected_logp_mean",
    "ref_chosen_ntokens",
    "ref_rejected_ntokens",
    "ref_chosen_token_logps",
    "ref_rejected_token_logps",
    "ref_model",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(RunOptions, TemplateOptions):
    pairs: str | None = option(None, io=True, help="pairs parquet in the RLAIF-V schema (pairs.rlaifv.parquet from "
                               "`pairs`)")
    model: str | None = option(None, io=True, help="reference model folder (the policy at the start of the "
                               "iteration)")
    out: str | None = option(None, io=True, help="output parquet: the pairs' columns plus ref_* columns (written "
                             "atomically)")
    shard: str | None = option(None, io=True, check=check_shard, identity=False, help="score shard I of N of the pairs (I/N, by a "
                               "hash of the pair id); merge the shards' parquets with `rlaifv-fast merge`")
    batch_size: int = option(8, ge=1, identity=False, help="sequences per forward")
    engine_options: dict = option(factory=dict, help="a transformers engine option (device, dtype, "
                                  "trust_remote_code, local_files_only, attn_implementation)")


def _image(value, base_dir: Path):
    """The RLAIF-V {bytes, path} struct as an image input (None when empty); relative paths resolve against the
    parquet's folder."""
    if not isinstance(value, dict):
        return value
    if value.get("bytes"):
        return value
    path = value.get("path")
    if not path:
        return None
    return path if os.path.isabs(path) else str(base_dir / path)


def engines(config: Config) -> dict[str, EngineSpec]:
    require(config, "model")
    return {"reference": EngineSpec.of(EngineKind.HF, config.model, config.engine_options,
                                       chat_template=config.chat_template)}


def load(config: Config, part: Part):
    """The pairs table (this shard's and this process's rows), checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    require(config, "pairs", "out")
    path = Path(config.pairs)
    table = pq.read_table(path)
    missing = [c for c in ("question", "chosen", "rejected") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a pairs parquet, columns {missing} are missing")
    clash = [c for c in REF_COLUMNS if c in table.column_names]
    if clash:
        raise ValueError(f"{path}: already has reference columns {clash}")
    shard = Shard.parse(config.shard)
    if (shard.count > 1 or part.world > 1) and "idx" not in table.column_names:
        raise ValueError(f"{path}: sharded or data-parallel scoring needs the pairs' 'idx' column")
    if shard.count > 1 or part.world > 1:
        keep = set(select([str(i) for i in table.column("idx").to_pylist()], str, shard, part))
        mask = pa.array([str(i) in keep for i in table.column("idx").to_pylist()])
        table = table.filter(mask)
    return table



def bind(config: Config, ctx: IterationContext) -> Config:
    # the frozen reference is the policy at the start of this iteration
    return dataclasses.replace(config, pairs=str(ctx.folder / "pairs" / "pairs.rlaifv.parquet"), model=ctx.policy,
                               out=str(ctx.folder / "pairs.ref.parquet"), shard=None, progress=ctx.progress)


def merge_parts(parts, out, table, config: Config) -> None:
    order = [str(i) for i in table.column("idx").to_pylist()]
    merge_parquet([p for p in parts if Path(p).exists()], out, key="idx", order=order)


def _complete(out: Path, table) -> bool:
    """A finished output of these pairs (a re-run after the write, e.g. the loop killed before it noted it)."""
    import pyarrow.parquet as pq

    if not out.exists():
        return False
    done = pq.read_table(out)
    if not all(c in done.column_names for c in REF_COLUMNS) or done.num_rows != table.num_rows:
        return False
    if "idx" in table.column_names:
        return done.column("idx").to_pylist() == table.column("idx").to_pylist()
    return done.select(["chosen", "rejected"]).equals(table.select(["chosen", "rejected"]))


def run(table, out: str | os.PathLike, config: Config, *, engines, progress: bool = True) -> StageReport:
    """Score chosen and rejected of every pair with the reference engine and write the extended parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    P = table.num_rows
    if _complete(out, table):
        return StageReport(NAME, total=P, already_done=P, notes={"out": str(out)})
    engine = engines["reference"]
    rows = table.select([c for c in ("image", "question", "chosen", "rejected") if c in table.column_names])
    rows = rows.to_pylist()
    base = Path(config.pairs).parent
    triples = [Triple(_image(r.get("image"), base), r["question"], r["chosen"]) for r in rows]
    triples += [Triple(_image(r.get("image"), base), r["question"], r["rejected"]) for r in rows]
    scored = response_logps(engine, triples, batch_size=config.batch_size, return_per_token=True,
                            progress=progress, desc=NAME)
    sums, means, counts = scored.logps.tolist(), scored.means.tolist(), scored.counts.tolist()
    tokens = [t.double().tolist() for t in scored.token_logps]
    f64, i64, flist = pa.float64(), pa.int64(), pa.list_(pa.float64())
    new = {
        "ref_chosen_logp": pa.array(sums[:P], f64),
        "ref_rejected_logp": pa.array(sums[P:], f64),
        "ref_chosen_logp_mean": pa.array(means[:P], f64),
        "ref_rejected_logp_mean": pa.array(means[P:], f64),
        "ref_chosen_ntokens": pa.array(counts[:P], i64),
        "ref_rejected_ntokens": pa.array(counts[P:], i64),
        "ref_chosen_token_logps": pa.array(tokens[:P], flist),
        "ref_rejected_token_logps": pa.array(tokens[P:], flist),
        "ref_model": pa.array([engine.model_name] * P, pa.string()),
    }
    for name in REF_COLUMNS:
        table = table.append_column(name, new[name])
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return StageReport(NAME, total=P, written=P, notes={"sequences": 2 * P, "tokens": int(sum(counts)),
                                                         "ref_model": engine.model_name, "out": str(out)})


def run_ref_logps(pairs_path, engine, out_path, *, batch_size: int = 8, progress: bool = True) -> StageReport:
    """Reference log-probs of a pairs parquet with an engine already loaded (Python API; the CLI and the loop go
    through the stage contract)."""
    config = Config(pairs=os.fspath(pairs_path), out=os.fspath(out_path), batch_size=batch_size, progress=progress)
    return run(load(config, Part()), out_path, config, engines={"reference": engine}, progress=progress)
