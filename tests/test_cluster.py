"""The sweep on a Ray cluster (a local one of two worker slots): one task per cell, finished cells
skipped, a killed cell resumed, the same results as cells run one after another."""
import torch
from safetensors.torch import load_file

from conftest import run_script, tiny_args


def weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


def bert(args, sabotage=()):
    """bert.py, forked like every script run of the tests: on one thread (conftest), as a Ray task of one CPU
    runs (Ray sets OMP_NUM_THREADS to the task's CPUs), so that the weights can be compared bit for bit."""
    return run_script("tests/sabotaged_run.py", [*sabotage, *args]) if sabotage else run_script("bert.py", args)


def test_a_cluster_sweep_skips_finished_cells_and_resumes_a_killed_one(tiny_bert_config, sst2_slice, tmp_path):
    out, ref = tmp_path / "sweep", tmp_path / "ref"
    common = [a for a in tiny_args(tiny_bert_config, sst2_slice, out, save_every=3) if not a.startswith("--out_dir")]
    cell = ["--trainer=magnitude", "--seed=1", "--pruning_rate=0.5"]
    finished = run_script("bert.py", [*common, f"--out_dir={out}", "--run_name=dense-s1", "--trainer=dense", "--seed=1",
                                      "--eval_every=50"])
    assert finished.returncode == 0, finished.stderr[-2000:]
    stamp = (out / "dense-s1" / "results.json").stat().st_mtime
    killed = bert([*common, *cell, f"--out_dir={out}", "--run_name=magnitude-r0.5-s1"], sabotage=("sigkill", "5"))
    assert killed.returncode == -9 and (out / "magnitude-r0.5-s1" / "checkpoints" / "checkpoint-3").is_dir()
    (out / "magnitude-r0.5-s1" / "killed-here").write_text("")  # survives a resume; a restart would delete it
    reference = bert([*common, *cell, f"--out_dir={ref}", "--run_name=uninterrupted"])
    assert reference.returncode == 0, reference.stderr[-2000:]

    proc = run_script("sweep.py", [*common, f"--out_dir={out}", "--trainers=dense,magnitude", "--rates=0.5",
                                   "--seeds=1,2", "--cluster=local", "--local_cpus=2", "--cell_cpus=1"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (out / "dense-s1" / "results.json").stat().st_mtime == stamp  # skipped
    for name in ("dense-s2", "magnitude-r0.5-s2", "magnitude-r0.5-s1"):
        assert (out / name / "results.json").is_file()
    resumed, whole = weights(out / "magnitude-r0.5-s1"), weights(ref / "uninterrupted")
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert (out / "magnitude-r0.5-s1" / "killed-here").exists()  # resumed, not started again
    assert (out / "results.md").is_file()
