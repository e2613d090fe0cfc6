"""Integrations of the fused ops into third-party trainers.

- `rlaifv_fast.integrations.trl`: TRL's `DPOTrainer` computing its per-token / per-sequence label log-probs with
  `rlaifv_fast.sequence_logps` (`FusedLogpsDPOTrainer`, `patch_dpo_trainer`). Imported on demand, so that
  `rlaifv_fast` itself never needs TRL.
"""
