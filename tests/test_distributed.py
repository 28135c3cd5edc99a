"""Two processes (torchrun, or two ranks forked with its environment; gloo on CPU): identical masks on every
rank, one writer, unscaled loss."""
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO, only_run_dir, tiny_args
from pruning.grid.processes import run_python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forked_ranks(args: list[str], out: Path, script: Path = REPO / "bert.py") -> subprocess.CompletedProcess:
    """`script` (bert.py) as two ranks forked like every script run of the tests (`pruning.grid.processes`), each with the
    environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), which is all HF's Trainer and torch.distributed read: the same run as under torchrun, without
    two new interpreters importing torch. Output: both ranks' together; status: the first failure's."""
    port = free_port()

    def rank(r: int) -> int:
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        return run_python(script, args, out / f"rank{r}.out", out / f"rank{r}.err", cwd=REPO, env=env, timeout=300)
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(rank, range(2)))
    stdout, stderr = ("".join((out / f"rank{r}.{kind}").read_text() for r in range(2)) for kind in ("out", "err"))
    return subprocess.CompletedProcess([str(script), *args], next((s for s in statuses if s), 0), stdout, stderr)


# The unstructured run under torchrun itself (what the README documents); the structured criteria's rank
# agreement (slimming's hand-reduced gradients, activation's reduced sums) as two forked ranks.
@pytest.mark.parametrize("extra, launcher", [(dict(trainer="gradient"), "torchrun"),
                                             (dict(trainer="slimming", granularity="heads+neurons", head_rate=0.5),
                                              "forked"),
                                             (dict(trainer="activation", granularity="heads+neurons", head_rate=0.5),
                                              "forked")])
def test_two_processes_agree(extra, launcher, tiny_bert_config, sst2_slice, tmp_path):
    runs = tmp_path / "runs"
    args = tiny_args(tiny_bert_config, sst2_slice, runs, batch_size=8, **extra)
    if launcher == "torchrun":
        # --standalone: torchrun picks a free rendezvous port itself (no window for another process to take it).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "bert.py", *args]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)  # one thread: conftest
    else:
        proc = forked_ranks(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = only_run_dir(runs)              # rank 1 wrote no second run directory
    res = json.loads((run_dir / "results.json").read_text())
    context = proc.stdout[-2000:] + proc.stderr[-2000:]
    assert res["world_size"] == 2, context
    # 320 rows, 8 per rank and step: 20 steps an epoch (EB at step 6 for unstructured gradient, like the
    # single-process run), then 20 steps of retraining.
    p = res["pruning"]
    assert p["eb_found"] and res["optimizer_steps"] == p["eb_step"] + 20, context
    if "granularity" not in extra:
        assert p["eb_step"] == 6, context
    # Every check compared the ranks' mask fingerprints (a mismatch stops the run); each check has one.
    for history in res["pruning"]["distance_history"].values():
        assert history and all(len(h["fingerprint"]) == 16 for h in history)
    if extra.get("granularity") == "heads+neurons":
        # slimming's coefficients are not DDP parameters: their gradients are all-reduced by hand, or the
        # ranks' masks would differ and the fingerprint check would have stopped the run; activation sums
        # (each rank sees its own batches) are all-reduced before each check for the same reason.
        assert res["pruning"]["structure"]["heads_kept_per_layer"] == [1, 1]
    else:
        assert res["prunable_nonzero"] == res["prunable_params"] - round(0.5 * res["prunable_params"])
    # The loss of a 2-class model at random init is ln 2, not 2 ln 2 (no world-size scaling).
    first_loss = next(h["loss"] for h in res["log_history"] if "loss" in h)
    assert abs(first_loss - math.log(2)) < 0.15, first_loss
    assert proc.stdout.count("results:") == 1, context


DISAGREE = textwrap.dedent("""
    import torch.distributed as dist
    from pruning.core.masks import assert_same_on_all_ranks
    if __name__ == "__main__":
        dist.init_process_group("gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
        try:
            assert_same_on_all_ranks(f"print-{dist.get_rank()}", "test")
            print("agreed")
        except RuntimeError as e:
            print(e)
        finally:
            dist.destroy_process_group()
""")


def test_ranks_with_different_masks_stop_loudly(tmp_path):
    (tmp_path / "disagree.py").write_text(DISAGREE)
    proc = forked_ranks([], tmp_path, tmp_path / "disagree.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = proc.stdout.strip().splitlines()
    assert len(answers) == 2 and all("ranks computed different test masks" in a for a in answers), proc.stdout
