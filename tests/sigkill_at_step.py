"""Run bert.py's experiment and SIGKILL this very process at the end of optimizer step N.

    python tests/sigkill_at_step.py N --key=value ...

The kill comes before that step's Early-Bird check and checkpoint, like a crash or an OOM kill.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from transformers import TrainerCallback  # noqa: E402

import bert  # noqa: E402
import experiment  # noqa: E402


class SigkillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    kill_at, argv = int(sys.argv[1]), sys.argv[2:]
    experiment.run(experiment.configure(vars(bert), argv), bert.__file__, callbacks=(SigkillAt(kill_at),))
    raise SystemExit("the run finished before it was killed")
