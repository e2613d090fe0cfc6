"""Triton kernels, imported lazily by rlaifv_fast.ops._dispatch (the package works without triton installed)."""
