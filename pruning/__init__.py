"""Early-bird pruning of BERT and RoBERTa: the shared machinery behind bert.py and roberta.py.

- units:     what can be pruned (weights, or heads and FFN neurons) and where units live in the weights
- layouts:   where each architecture family (BERT layout, DistilBERT, DeBERTa-v2, ModernBERT) keeps its heads
             and FFN neurons (fused and gated projections included)
- criterion: the criterion base classes (a criterion only scores units)
- masks:     scores -> exact-count keep-masks (global, per layer, per tensor)
- schedule:  the phase plan, learning-rate policy and gradual (cubic) schedule
- distill:   the distillation loss and the teacher's cached logits
- surgery:   physical removal of heads and neurons; gates on unit outputs
- callbacks: the TrainerCallbacks of a run, one job each (early stopping among them)
- cost:      CostLog, the run's active parameters, FLOPs, memory and time as it goes
- trainer:   PruningTrainer, which wires them into HF's Trainer
- pruned_model: save/load of models whose layers keep different numbers of heads and neurons
- configuration, checks: a script's constants as its configuration; every check of the settings
- experiment, data, models, results: the experiment behind the scripts
- allocation: per-layer rates by an RL agent (allocate.py): budget, environment, reward, PPO search
- tickets, importance, patterns, heatmaps: the lottery study (lottery.py): random and bad tickets; gate importance and
  the to-fraction search; attention-pattern types; survival heatmaps and overlaps
- deploy, precision: ONNX Runtime variants of a finished run (compress.py); which matrices get 4 bits
"""
from pruning.config import PruningConfig
from pruning.criterion import AccumulatedCriterion, Criterion
from pruning.masks import keep_masks, kth_smallest
from pruning.state import PRUNING_STATE_FILE
from pruning.trainer import PruningTrainer
from pruning.units import PrunableUnits, prunable_parameters

__all__ = ["AccumulatedCriterion", "Criterion", "PRUNING_STATE_FILE", "PrunableUnits", "PruningConfig",
           "PruningTrainer", "keep_masks", "kth_smallest", "prunable_parameters"]
