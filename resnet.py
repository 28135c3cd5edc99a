"""Early-bird channel pruning of a convolutional image classifier (You et al., ICLR 2020): ResNet-18, ResNet-50 or
MobileNetV2 (Hugging Face's implementations) on the bundled digits, CIFAR-10 or any ImageFolder set.

    python resnet.py                                  # ResNet-18 on digits (8x8, CIFAR stem): runs here as is
    python resnet.py --trainer=slimming --pruning_rate=0.7
    python resnet.py --data=cifar10 --data_dir=/path/to/cifar-10-batches-py --image_size=32 --search_epochs=160
    python resnet.py --help                           # every setting, its default and meaning

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
MODEL = "resnet18"                 # resnet18 (basic blocks), resnet50 (bottlenecks), mobilenet_v2 (inverted residuals)
PRETRAINED = ""                    # a local folder of HF weights (save_pretrained); "" = random init from the config
WIDTH = 1.0                        # channel multiplier of every layer (1.0 = the paper's widths)
STEM = "cifar"                     # "cifar": 3x3 stride-1 first conv, no max-pool (small images); "imagenet": the model's own
DATA = "digits"                    # digits (sklearn's bundled 8x8), cifar10 (DATA_DIR: cifar-10-batches-py, or "hub"), imagefolder
DATA_DIR = ""                      # cifar10: the python-batches folder or "hub" (uoft-cs/cifar10); imagefolder: root with train/ and val/
IMAGE_SIZE = 8                     # side of the images the model sees (digits are upsampled to it; CIFAR: 32; ImageNet: 224)
# --- pruning
TRAINER = SlimmingPruningTrainer   # the criterion on channels: SlimmingPruningTrainer (You et al.'s), MagnitudePruningTrainer (filter L1), GradientPruningTrainer (Taylor), UndecayedPruningTrainer, ActivationPruningTrainer, or Trainer (dense)
PRUNING_RATE = 0.5                 # fraction of the prunable channels removed (You et al.: 0.3, 0.5, 0.7)
PRUNE_RESIDUAL = False             # also prune the residual streams' channels (a stage's shortcut and block outputs, coupled); False: they stay whole
THRESHOLD = "global"               # "global": one threshold over every channel group (You et al.); "layerwise": the rate in each group
SLIMMING_L1 = 1e-4                 # L1 penalty on the BatchNorm scales (You et al.'s 1e-4)
UNDECAYED_EPSILON = 5e-4           # epsilon of the undecayed score (the weight decay of these runs)
ACTIVATION_STATISTIC = "mean_abs"  # activation criterion: mean |BatchNorm output| per channel
EB_CHECK_EVERY = 10                # optimizer steps between mask checks; 0 = once per epoch (You et al.'s, over 160 epochs)
EB_WINDOW = 5                      # masks in the FIFO (You et al.: 5)
EB_EPSILON = 0.1                   # early bird when every distance to the newest mask is below this (You et al.: 0.1)
EB_SKIP_WARMUP = True              # start checking when the learning-rate warm-up ends
SEARCH_EPOCHS = 6.0                # dense search budget; pruned at its end if no early bird appears
RETRAIN_EPOCHS = 6.0               # training of the pruned network (fresh optimizer and schedule)
MASK_FROM = ""                     # a finished run of this script (or a lottery ticket): train its channel mask, fixed from step 0 (removed at step 0), for SEARCH_EPOCHS + RETRAIN_EPOCHS
REWIND_TO = "pretrained"           # with MASK_FROM: start from the "pretrained" weights (the seed's init, or PRETRAINED's) or that run's "early_bird" weights
SAVE_EB_WEIGHTS = False            # keep the dense weights at the pruning step (weights_at_prune.safetensors), for REWIND_TO=early_bird
# --- optimization
OPTIMIZER = "sgd"                  # "sgd" (momentum 0.9, You et al.) or "adamw"
LEARNING_RATE = 0.05               # peak learning rate (You et al.: 0.1 at batch 256)
LR_SCHEDULE = "cosine"             # HF's lr_scheduler_type: linear, cosine, constant, ...
WEIGHT_DECAY = 5e-4                # decoupled (adamw) or L2 (sgd) weight decay
WARMUP_RATIO = 0.05                # fraction of each phase spent warming up
MAX_GRAD_NORM = 0.0                # clip the gradient norm to this; 0 = no clipping (You et al.)
BATCH_SIZE = 32                    # images per optimizer step
SEED = 42                          # seeds init, data order and augmentation
# --- output
OUT_DIR = "runs"                   # each run writes its own sub-directory here
RUN_NAME = ""                      # "" = a fresh time-stamped name; set it to name (or resume) a run
RESUME = False                     # continue RUN_NAME from its newest checkpoint
SAVE_EVERY = 100                   # optimizer steps between checkpoints
EVAL_EVERY = 0                     # optimizer steps between dev evaluations during training (logged); 0 = none
LOG_EVERY = 20                     # optimizer steps between loss logs
MEASURE_SPEED = True               # at the end: CPU speed of the final model against a dense one, side by side

if __name__ == "__main__":
    experiment.main(globals(), "image")
