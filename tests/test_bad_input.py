"""Every bad input gets one clear message before any training, and nothing existing is overwritten."""
import socket
import threading

import pytest

import bert
from pruning import settings
from pruning.data import loading as sst2, models
from pruning.run import checks, experiment
from conftest import SST2, tiny_args, write_slice


def configure(*args):
    return experiment.configure(vars(bert), [str(a) for a in args])


def run(config):
    return experiment.run(config, bert.__file__)


@pytest.mark.parametrize("arg,message", [
    ("--pruning_rate=1.0", r"pruning rate must be a number in \[0, 1\)"),
    ("--pruning_rate=-0.1", r"pruning rate must be a number in \[0, 1\)"),
    ("--eb_epsilon=0", "epsilon must be > 0"),
    ("--eb_epsilon=-1", "epsilon must be > 0"),
    ("--eb_window=1", "window must be an integer >= 2"),
    ("--eb_check_every=0", "check_every must be a positive"),
    ("--threshold=per-row", "unknown threshold scope"),
    ("--trainer=movement", "unknown trainer .movement.; choose one of dense, activation, fisher, gradient, magnitude, slimming, undecayed"),
    ("--pruning_rat=0.5", "unknown setting --pruning_rat"),
    ("--pruning_rate=half", "--pruning_rate='half': expected a rate"),
    ("--eb_window=2.5", "expected int"),
    ("--resume=maybe", "expected bool"),
    ("pruning_rate=0.5", "write overrides as --key=value"),
    ("--warmup_ratio=0.5", "the LR warm-up .0.5 of the budget. lasts past the search budget"),
])
def test_bad_settings_fail_before_anything_is_written(arg, message, tmp_path):
    with pytest.raises(settings.ConfigError, match=message):
        run(configure(arg, f"--out_dir={tmp_path}"))
    assert not any(tmp_path.iterdir())


def test_overrides_are_applied_and_typed():
    config = configure("--pruning_rate=0.7", "--trainer=gradient", "--eb_window=4", "--resume=false",
                       "--data_dir=/x", "--learning_rate=3e-5")
    assert config["PRUNING_RATE"] == 0.7 and config["TRAINER"].__name__ == "GradientPruningTrainer"
    assert config["EB_WINDOW"] == 4 and config["RESUME"] is False and config["DATA_DIR"] == "/x"
    assert config["LEARNING_RATE"] == 3e-5
    assert configure("--trainer=UndecayedPruningTrainer")["TRAINER"].__name__ == "UndecayedPruningTrainer"
    assert configure("--pruning_rate=0")["PRUNING_RATE"] == 0.0  # an int is a valid float


def _tsv(tmp_path, train: str, dev: str | None = None):
    d = write_slice(tmp_path / "data", 20, 20)
    (d / "train.tsv").write_bytes(train.encode())
    if dev is not None:
        (d / "dev.tsv").write_bytes(dev.encode())
    return d


@pytest.mark.parametrize("train,message", [
    ("text\tlabel\nnice film \t1\n", r"train.tsv:1: the header is `text<TAB>label`, but SST-2's train.tsv has "
                                     r"`sentence<TAB>label`"),
    ("sentence\nnice film \n", r"train.tsv:1: the header is `sentence`"),
    ("sentence\tlabel\nnice film \t1\nbad film \t2\n", r"train.tsv:3: label '2' is not one of SST-2's labels 0, 1"),
    ("sentence\tlabel\nnice film \tpositive\n", r"train.tsv:2: label 'positive' is not one of SST-2's labels"),
    ("sentence\tlabel\n", "train.tsv: the split is empty"),
    ("", "train.tsv: the file is empty"),
    ("sentence\tlabel\nnice\tfilm\t1\n", r"train.tsv:2: expected 2 tab-separated fields, got 3"),
])
def test_malformed_tsv_names_the_file_and_the_problem(train, message, tmp_path):
    with pytest.raises(sst2.DataError, match=message):
        sst2.load_sst2(str(_tsv(tmp_path, train)))


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(sst2.DataError, match="does not exist or is not a directory"):
        sst2.load_sst2(str(tmp_path / "nowhere"))
    d = write_slice(tmp_path / "data", 5, 5)
    (d / "dev.tsv").unlink()
    with pytest.raises(sst2.DataError, match=r"dev.tsv: file not found"):
        sst2.load_sst2(str(d))


def test_crlf_line_endings_simply_work(tmp_path):
    lf = (SST2 / "dev.tsv").read_text(encoding="utf-8")
    d = _tsv(tmp_path, lf.replace("\n", "\r\n"), lf.replace("\n", "\r\n"))
    ds, _ = sst2.load_sst2(str(d))
    plain, _ = sst2.load_sst2(str(write_slice(tmp_path / "plain", 10_000, 10_000)))
    assert ds["validation"]["sentence"] == plain["validation"]["sentence"]
    assert ds["validation"]["label"] == plain["validation"]["label"] and len(ds["validation"]) == 872


def test_the_shared_glue_files_are_found_without_a_path_and_read_exactly(monkeypatch):
    monkeypatch.delenv("SST2_DIR", raising=False)
    ds, source = sst2.load_sst2("")
    assert source.endswith("shared/sst2")
    assert (len(ds["train"]), len(ds["validation"])) == (67349, 872)
    assert sum(ds["train"]["label"]) == 37569 and sum(ds["validation"]["label"]) == 444
    assert all(s.endswith(" ") for s in ds["validation"]["sentence"][:20])  # sentences kept verbatim


def test_env_var_data_dir_and_its_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("SST2_DIR", str(tmp_path / "missing"))
    with pytest.raises(sst2.DataError, match=r"from \$SST2_DIR"):
        sst2.load_sst2("")


def test_bad_data_stops_the_run_before_training(tiny_bert_config, tmp_path):
    d = _tsv(tmp_path, "sentence\tlabel\nok \t1\nbad \t-1\n")
    config = configure(*tiny_args(tiny_bert_config, d, tmp_path / "runs"))
    with pytest.raises(sst2.DataError, match="label '-1'"):
        run(config)
    assert not (tmp_path / "runs").exists()


def test_model_path_that_does_not_exist(tmp_path):
    with pytest.raises(models.ModelError, match="model path './no/such/checkpoint' does not exist"):
        models.load_model_and_tokenizer("./no/such/checkpoint")
    with pytest.raises(models.ModelError, match="is a config file .* has no tokenizer"):
        (tmp_path / "c.json").write_text('{"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, '
                                         '"num_attention_heads": 1, "intermediate_size": 8}')
        models.load_model_and_tokenizer(str(tmp_path / "c.json"))


def test_unreachable_hub_fails_fast_with_a_way_out(monkeypatch):
    # Fast by construction, not by a stopwatch: offline, not a single connection is attempted.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: attempts.append(a))
    with pytest.raises(models.ModelError, match="cannot be reached.*configs/roberta-base.json"):
        models.load_model_and_tokenizer("roberta-base", how_to_fix=experiment.MODEL_HINT)
    assert attempts == []


def test_hub_probe_gives_up_after_its_timeout_even_if_the_network_hangs(monkeypatch):
    # The connection hangs until the test releases it, then succeeds: a probe that waited for it would
    # answer True. An answer of False is the probe giving up, whatever the machine's load.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    release = threading.Event()

    class Connection:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (release.wait(60), Connection())[1])
    try:
        assert models.hub_reachable(timeout=0.05) is False
    finally:
        release.set()


def test_output_dir_holding_a_finished_run_is_refused_and_untouched(tmp_path):
    finished = tmp_path / "runs" / "done"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text('{"accuracy": 0.9}')
    with pytest.raises(settings.ConfigError, match="already holds a finished run"):
        run(configure(f"--out_dir={tmp_path / 'runs'}", "--run_name=done"))
    assert (finished / "results.json").read_text() == '{"accuracy": 0.9}'
    assert sorted(p.name for p in finished.iterdir()) == ["results.json"]


def test_resume_needs_a_run_with_checkpoints(tmp_path):
    with pytest.raises(settings.ConfigError, match="RESUME needs RUN_NAME"):
        run(configure("--resume=true", f"--out_dir={tmp_path}"))
    with pytest.raises(settings.ConfigError, match="has no checkpoints"):
        run(configure("--resume=true", "--run_name=ghost", f"--out_dir={tmp_path}"))


def test_rates_may_be_given_per_layer_on_the_command_line():
    assert configure("--pruning_rate=0.2,0.4")["PRUNING_RATE"] == (0.2, 0.4)
    assert configure("--head_rate=0.25,0.5,0.5")["HEAD_RATE"] == (0.25, 0.5, 0.5)
    with pytest.raises(settings.ConfigError, match="one rate per encoder layer"):
        configure("--neuron_rate=0.2,x")
    with pytest.raises(settings.ConfigError, match=r"pruning rate must be a number in \[0, 1\)"):
        checks.validate(configure("--pruning_rate=0.2,1.5"))
