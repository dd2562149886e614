"""The command line end to end, through subprocesses, as a user runs it."""
import hashlib
import json
import subprocess
import sys

import pytest
from conftest import REPO, write_config

from vae.run import rundir


def cli(script, *args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def snapshot(folder):
    """Every file under folder with its content hash: to prove nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_root):
    """A finished 2-epoch CLI run on synthetic data, shared (read-only) by the tests below."""
    base = tmp_path_factory.mktemp("cli")
    config = write_config(base / "tiny.yaml", mnist_root)
    result = cli("train.py", "--config", config, f"output.dir={base / 'run'}")
    assert result.returncode == 0, result.stderr
    return base, config, result


def test_train_prints_one_line_per_epoch_and_writes_the_run(trained):
    base, _, result = trained
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "nats/example" in lines[0]
    assert (base / "run" / "checkpoints" / "best.pt").is_file()
    assert json.loads((base / "run" / "run.json").read_text())["argv"][1:3] == ["--config", str(base / "tiny.yaml")]


def test_resume_a_run_directory_with_more_epochs(trained, tmp_path):
    base, _, _ = trained
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(base / "run"), str(run)], check=True)
    result = cli("train.py", "--resume", run, "train.epochs=3")
    assert result.returncode == 0, result.stderr
    assert "epochs 3..3" in result.stdout
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]
    assert len(json.loads((run / "run.json").read_text())["previous"]) == 1


def test_resume_forks_with_a_spaced_output_dir_override(trained, tmp_path):
    base, _, _ = trained
    before = snapshot(base / "run")
    result = cli("train.py", "--resume", base / "run", f"output.dir = {tmp_path / 'fork'}", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "fork")] == [1, 2, 3]
    assert snapshot(base / "run") == before


def test_a_loose_checkpoint_needs_an_output_dir(trained, tmp_path):
    base, _, _ = trained
    loose = tmp_path / "model.pt"
    loose.write_bytes((base / "run" / "checkpoints" / "last.pt").read_bytes())
    result = cli("train.py", "--resume", loose, "train.epochs=3")
    assert result.returncode == 2 and "give output.dir=DIR" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_evaluate_writes_metrics_pictures_and_report(trained, tmp_path):
    base, _, _ = trained
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(base / "run"), str(run)], check=True)
    result = cli("evaluate.py", "--checkpoint", run / "checkpoints" / "best.pt", "viz.digit=7",
                 "eval.iwae_samples=16")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 200 and metrics["protocol"]["iwae_samples"] == 16
    best = min(rundir.read_metrics(run), key=lambda r: r["test_loss"])
    # train.seed == eval.seed here, so evaluation draws the same noise as training's test pass did.
    assert metrics["negative_elbo"] == pytest.approx(best["test_loss"], abs=1e-9)
    assert f"{metrics['nll_iwae']:.3f} nats" in result.stdout and "active units" in result.stdout
    assert {"digit7.png", "metrics.json", "recon.png", "samples.png", "traversal.png"} <= {
        p.name for p in (run / "eval").iterdir()}
    assert (run / "report.html").is_file()


# Two malformed inputs as real processes (a new run, a resume); tests/test_malformed.py holds the whole corpus,
# in process.
BAD_TRAIN_ARGS = {
    "unknown key": (["train.ephocs=3"], "did you mean 'train.epochs'"),
    "architecture change on resume": (["--resume", "{base}/run", "model.hidden_dims=[64]"],
                                      "trained with another config"),
    "a run there already": (["output.dir={base}/run"], "already holds a run: resume it with python train.py --resume"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_ARGS))
def test_bad_train_input_is_one_clear_line_and_changes_nothing(trained, tmp_path, case):
    base, config, _ = trained
    args, message = BAD_TRAIN_ARGS[case]
    args = [a.format(base=base) for a in args]
    if "--resume" not in args:
        args = ["--config", config, f"output.dir={tmp_path / 'new'}", *args]
    before = snapshot(base)
    result = cli("train.py", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert snapshot(base) == before and not (tmp_path / "new").exists()


def test_bad_evaluate_input_is_one_clear_line(trained):
    base, _, _ = trained
    before = snapshot(base)
    result = cli("evaluate.py", "--checkpoint", base / "run" / "checkpoints" / "best.pt", "model.latent_dim=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "trained with another config" in result.stderr
    assert snapshot(base) == before


@pytest.mark.parametrize("script, args, message", [
    ("train.py", [], "give --config FILE to start a run, or --resume RUN_DIR|CKPT to continue one"),
    ("train.py", ["--config"], "argument --config: expected one argument"),
    ("train.py", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("train.py", ["--config", "mnist", "--epochs", "20"],
     "unrecognized arguments: --epochs; set config keys as section.key=value: train.epochs=20"),
    ("train.py", ["--config", "mnist", "--batch-size=64"],
     "unrecognized arguments: --batch-size=64; set config keys as section.key=value: train.batch_size=64"),
    ("train.py", ["--config", "mnist", "--seed"],  # train.seed, not data.seed; no value given
     "unrecognized arguments: --seed; set config keys as section.key=value: train.seed=VALUE"),
    ("evaluate.py", ["--checkpoint", "x", "--iwae-samples", "50"],
     "unrecognized arguments: --iwae-samples; set config keys as section.key=value: eval.iwae_samples=50"),
    ("evaluate.py", [], "one of the arguments --checkpoint --compare is required"),
])
def test_usage_errors_are_one_line(script, args, message):
    result = cli(script, *args)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message} (see {script} --help)"

