"""Deterministic per-candidate seeds (deconfounded sampling; FIX: the reference code never seeds torch).

A candidate's seed depends only on (run seed, request id, candidate index), so any candidate can be reproduced alone,
in any batch, on any machine, and sharded runs merge exactly.
"""

from __future__ import annotations

import hashlib


def candidate_seed(run_seed: int, request_id: str, index: int) -> int:
    """A 63-bit seed from (run_seed, request_id, index), stable across Python versions and processes."""
    digest = hashlib.blake2b(f"{int(run_seed)}\x1f{request_id}\x1f{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
