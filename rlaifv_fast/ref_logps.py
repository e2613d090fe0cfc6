"""Reference log-probs (method.md stage 6): before DPO, the frozen reference (the policy at the start of the
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

from .engines.hf import HFEngine
from .scoring import Triple, response_logps
from .store import atomic_path

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


@dataclasses.dataclass
class RefLogpsReport:
    stage: str = "reflogps"
    pairs: int = 0
    sequences: int = 0
    tokens: int = 0
    ref_model: str = ""
    out: str = ""


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


def run_ref_logps(
    pairs_path: str | os.PathLike,
    engine: HFEngine,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> RefLogpsReport:
    """Score chosen and rejected of every pair with the reference engine and write the extended parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs_path = Path(pairs_path)
    table = pq.read_table(pairs_path)
    missing = [c for c in ("question", "chosen", "rejected") if c not in table.column_names]
    if missing:
        raise ValueError(f"{pairs_path}: not a pairs parquet, columns {missing} are missing")
    clash = [c for c in REF_COLUMNS if c in table.column_names]
    if clash:
        raise ValueError(f"{pairs_path}: already has reference columns {clash}")
    rows = table.select([c for c in ("image", "question", "chosen", "rejected") if c in table.column_names])
    rows = rows.to_pylist()
    base = pairs_path.parent
    triples = [Triple(_image(r.get("image"), base), r["question"], r["chosen"]) for r in rows]
    triples += [Triple(_image(r.get("image"), base), r["question"], r["rejected"]) for r in rows]
    P = len(rows)
    scored = response_logps(engine, triples, batch_size=batch_size, return_per_token=True, progress=progress,
                            desc="reflogps")
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
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    return RefLogpsReport(pairs=P, sequences=2 * P, tokens=int(sum(counts)), ref_model=engine.model_name,
                          out=str(out_path))
