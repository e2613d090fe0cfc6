"""The RLAIF-V pipeline: one module per stage (generate, feedback, pairs, ref_logps, train, bon), the loop over them,
and their I/O helpers (data, records, store, images, sharding, scoring). Every stage follows contract.py; stages.py
is the one table the CLI and the loop iterate."""
