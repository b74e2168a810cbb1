"""Smoke and unit tests of cartpole_reinforce/ (REINFORCE on CartPole-v1)."""
import csv
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_script

train = load_script("cartpole_reinforce")
evaluate_script = REPO / "cartpole_reinforce" / "eval.py"


def run(script, *flags):
    return subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300)


def test_help_runs():
    for script in ("train.py", "eval.py"):
        result = run(REPO / "cartpole_reinforce" / script, "--help")
        assert result.returncode == 0 and "--seed" in result.stdout


def test_discounted_returns_by_hand():
    # rewards 1, 2, 3, 4 with gamma 0.5: G3 = 4, G2 = 3 + 2 = 5, G1 = 2 + 2.5 = 4.5, G0 = 1 + 2.25 = 3.25
    returns = train.discounted_returns([1.0, 2.0, 3.0, 4.0], gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([3.25, 4.5, 5.0, 4.0]))
    torch.testing.assert_close(train.discounted_returns([1.0, 1.0, 1.0], gamma=1.0),
                               torch.tensor([3.0, 2.0, 1.0]))


def test_standardize_and_loss():
    z = train.standardize(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(z, torch.tensor([-1.0, 0.0, 1.0]))
    # -(log 0.5 * 1 + log 0.25 * 2) = log 2 + 2 log 4
    loss = train.reinforce_loss(torch.log(torch.tensor([0.5, 0.25])), torch.tensor([1.0, 2.0]))
    assert math.isclose(float(loss), math.log(2) + 2 * math.log(4), rel_tol=1e-6)


def test_tiny_training_run(tmp_path):
    (tmp_path / "run").mkdir()  # an existing empty directory is a fine --out
    summary = train.train(train.Args(seed=0, max_episodes=20, eval_episodes=2, out=str(tmp_path / "run"),
                                     log_every=10))
    run_dir = tmp_path / "run"
    for name in ("metrics.csv", "learning_curve.png", "policy.pt"):
        assert (run_dir / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 20 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert summary["solved_at_episode"] is None
    train.load_policy(run_dir / "policy.pt")


def test_run_dir_is_never_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("earlier run")
    with pytest.raises(ValueError, match="exists and is not empty"):  # train() checks --out, not only the CLI
        train.train(train.Args(seed=0, max_episodes=2, eval_episodes=1, out=str(tmp_path / "run")))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["keep.txt"]
    assert (tmp_path / "run" / "keep.txt").read_text() == "earlier run"


def test_shipped_weights_score_500():
    policy = train.load_policy(train.SHIPPED_WEIGHTS)
    assert train.evaluate(policy, episodes=5, seed=777) == [500.0] * 5


def test_eval_json_line_is_last():
    result = run(evaluate_script, "--episodes", "2", "--seed", "5", "--json")
    assert result.returncode == 0
    assert '"mean_return": 500.0' in result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, message", [
    (["--weights", "does/not/exist.pt"], "not found"),
    (["--episodes", "-1"], "positive"),
    (["--no-such-flag"], "unrecognized"),
])
def test_eval_bad_input_is_one_clear_line(flags, message):
    result = run(evaluate_script, *flags)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_eval_corrupt_weights(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    result = run(evaluate_script, "--weights", str(bad))
    assert result.returncode == 1 and "cannot read" in result.stderr and "Traceback" not in result.stderr
