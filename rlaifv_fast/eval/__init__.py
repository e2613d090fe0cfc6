"""Evaluation without an LLM judge: the hallucination benchmarks (pope.py, objhal.py for Object HalBench and COCO
CHAIR, amber.py, shapes.py for the synthetic world), CHAIR itself (chair.py), the benchmark interface (base.py) and
the `eval` stage that runs a benchmark through an engine (stage.py)."""
