"""Integrations of the fused ops into third-party trainers.

- `rlaifv_fast.integrations.trl`: TRL's `DPOTrainer` (TRL >=1.15,<1.17) computing its per-token label log-probs
  with the lm_head-fused `rlaifv_fast.linear_sequence_logps` (`FusedLogpsDPOTrainer`, `patch_dpo_trainer`). Imported
  on demand, so that `rlaifv_fast` itself never needs TRL.
"""
