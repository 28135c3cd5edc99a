"""Run bert.py's experiment and break it at optimizer step N, like a crash or a divergence would.

    python tests/sabotaged_run.py sigkill N --key=value ...   # SIGKILL this very process
    python tests/sabotaged_run.py nan N --key=value ...       # a NaN appears in the weights

`sigkill` strikes at the end of step N, before that step's Early-Bird check and checkpoint;
`nan` right after step N's optimizer update.
"""
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transformers import TrainerCallback  # noqa: E402

import bert  # noqa: E402
from pruning import experiment  # noqa: E402


class Sabotage(TrainerCallback):
    def __init__(self, mode: str, step: int):
        self.mode, self.step = mode, step

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.mode == "nan" and state.global_step + 1 == self.step:  # global_step counts finished steps
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")

    def on_step_end(self, args, state, control, **kwargs):
        if self.mode == "sigkill" and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    mode, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    experiment.main(vars(bert), argv=argv, callbacks=(Sabotage(mode, step),))
    raise SystemExit("the run finished before it was broken")
