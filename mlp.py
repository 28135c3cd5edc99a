"""Early-bird neuron pruning of an MLP on tabular data: scikit-learn's bundled breast_cancer (default), wine or iris,
the Titanic train.csv in Kaggle's layout, or any CSV of numeric and categorical columns.

    python mlp.py                                     # 3 hidden layers on breast_cancer: runs here as is
    python mlp.py --data=titanic --data_file=/path/to/train.csv
    python mlp.py --data=csv --data_file=my.csv --label_column=outcome
    python mlp.py --help

The configuration is the block of constants below; any of them can be overridden as --name=value.
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__, check=True)

from transformers import Trainer  # noqa: F401  (TRAINER = Trainer is the dense baseline)

from activation_pruning import ActivationPruningTrainer  # noqa: F401
from gradient_pruning import GradientPruningTrainer  # noqa: F401
from magnitude_pruning import MagnitudePruningTrainer  # noqa: F401
from pruning.convnets import experiment
from pruning.convnets.experiment import check as validate  # noqa: F401  (sweep.py checks every cell with it)
from slimming_pruning import SlimmingPruningTrainer
from undecayed_pruning import UndecayedPruningTrainer  # noqa: F401

# --- model and data
HIDDEN = "256,128,64"              # hidden layer sizes (each Linear -> BatchNorm1d -> ReLU -> Dropout)
DROPOUT = 0.1                      # dropout after each hidden layer
DATA = "breast_cancer"             # breast_cancer, wine, iris (bundled with scikit-learn), titanic, csv
DATA_FILE = ""                     # titanic: Kaggle's train.csv (or its folder); csv: the file
LABEL_COLUMN = "label"             # csv: the label column (titanic: Survived)
# --- pruning
TRAINER = SlimmingPruningTrainer   # SlimmingPruningTrainer, MagnitudePruningTrainer, GradientPruningTrainer, UndecayedPruningTrainer, ActivationPruningTrainer, or Trainer (dense)
PRUNING_RATE = 0.5                 # fraction of the hidden neurons removed
THRESHOLD = "global"               # "global": one threshold over every layer; "layerwise": the rate in each layer
SLIMMING_L1 = 1e-4                 # L1 penalty on the BatchNorm scales
UNDECAYED_EPSILON = 5e-4           # epsilon of the undecayed score
ACTIVATION_STATISTIC = "mean_abs"  # activation criterion: mean |BatchNorm output| per neuron
EB_CHECK_EVERY = 0                 # optimizer steps between mask checks; 0 = once per epoch
EB_WINDOW = 5                      # masks in the FIFO
EB_EPSILON = 0.1                   # early bird when every distance to the newest mask is below this
EB_SKIP_WARMUP = True              # start checking when the learning-rate warm-up ends
SEARCH_EPOCHS = 30.0               # dense search budget; pruned at its end if no early bird appears
RETRAIN_EPOCHS = 30.0              # training of the pruned network
MASK_FROM = ""                     # a finished run of this script (or a lottery ticket): train its neuron mask, fixed from step 0 (removed at step 0), for SEARCH_EPOCHS + RETRAIN_EPOCHS
REWIND_TO = "pretrained"           # with MASK_FROM: start from the "pretrained" weights (the seed's init) or that run's "early_bird" weights
SAVE_EB_WEIGHTS = False            # keep the dense weights at the pruning step (weights_at_prune.safetensors), for REWIND_TO=early_bird
# --- optimization
OPTIMIZER = "sgd"                  # "sgd" (momentum 0.9) or "adamw"
LEARNING_RATE = 0.05               # peak learning rate
LR_SCHEDULE = "cosine"             # HF's lr_scheduler_type
WEIGHT_DECAY = 5e-4                # weight decay
WARMUP_RATIO = 0.0                 # fraction of each phase spent warming up
MAX_GRAD_NORM = 0.0                # clip the gradient norm to this; 0 = no clipping
BATCH_SIZE = 32                    # rows per optimizer step
SEED = 42                          # seeds init, data order and dropout
# --- output
OUT_DIR = "runs"                   # each run writes its own sub-directory here
RUN_NAME = ""                      # "" = a fresh time-stamped name; set it to name (or resume) a run
RESUME = False                     # continue RUN_NAME from its newest checkpoint
SAVE_EVERY = 100                   # optimizer steps between checkpoints
EVAL_EVERY = 0                     # optimizer steps between dev evaluations during training (logged); 0 = none
LOG_EVERY = 50                     # optimizer steps between loss logs
MEASURE_SPEED = True               # at the end: CPU speed of the final model against a dense one, side by side

if __name__ == "__main__":
    experiment.main(globals(), "tabular")
