"""Studies over finished runs or around them: per-layer rates by an RL agent (`allocation`, `iterative`), the lottery
study (`to_fraction`, `tickets`, `patterns`, `heatmaps`), retraining-free pruning of a fine-tuned model
(`retraining_free`), a sweep's tables and plots (`sweep_tables`, `sweep_plots`) and the statistics that compare
sets of runs (`stats`).

May import: `pruning.settings`, `pruning.core`, `pruning.data`, `pruning.run`, `pruning.deploy`; never grid.
"""
