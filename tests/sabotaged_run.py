"""Run bert.py's experiment and break it at optimizer step N, like a crash or a divergence would.

    python tests/sabotaged_run.py sigkill N --key=value ...   # SIGKILL this very process
    python tests/sabotaged_run.py nan N --key=value ...       # a NaN appears in the weights
    python tests/sabotaged_run.py enospc N --key=value ...    # the disk fills up

`sigkill` strikes at the end of step N, before that step's Early-Bird check and checkpoint;
`nan` right after step N's optimizer update; `enospc` in the first checkpoint written at step N or later,
once its config.json is written, where the weights would go (as a full disk would: SimpleTuner#2353).
"""
import errno
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transformers import TrainerCallback  # noqa: E402

import bert  # noqa: E402
from pruning.run import experiment  # noqa: E402


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


def fill_the_disk_from(step: int) -> TrainerCallback:
    """From optimizer step `step` on, every model weights file fails with ENOSPC. Returns the callback
    that tells the patched writer which step the run is at."""
    import transformers.modeling_utils as modeling
    write, reached = modeling.safe_save_file, {"step": 0}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            reached["step"] = state.global_step

    def full_disk(*args, **kwargs):
        if reached["step"] >= step:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(*args, **kwargs)
    modeling.safe_save_file = full_disk
    return Clock()


if __name__ == "__main__":
    mode, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    sabotage = fill_the_disk_from(step) if mode == "enospc" else Sabotage(mode, step)
    experiment.main(vars(bert), argv=argv, callbacks=(sabotage,))
    raise SystemExit("the run finished before it was broken")
