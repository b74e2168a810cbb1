"""Smoke and unit tests of lunarlander_ppo/ (PPO + GAE)."""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_script

train = load_script("lunarlander_ppo")
EVAL = REPO / "lunarlander_ppo" / "eval.py"


def run(script, *flags):
    return subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300)


def test_help_runs():
    for script in ("train.py", "eval.py"):
        result = run(REPO / "lunarlander_ppo" / script, "--help")
        assert result.returncode == 0 and "--seed" in result.stdout


def test_compute_gae_by_hand_with_a_truncation():
    # One env, 3 steps. Step 0 is an ordinary step, step 1 is truncated (time limit: bootstrap from
    # V(final obs) = 5), step 2 starts a new episode and terminates (no bootstrap).
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [2.0]])
    next_values = torch.tensor([[1.0], [5.0], [7.0]])  # V(s1), V(final obs of episode 1), V(s3) (ignored)
    terminations = torch.tensor([[0.0], [0.0], [1.0]])
    dones = torch.tensor([[0.0], [1.0], [1.0]])
    d2 = 3.0 - 2.0                       # terminated: no bootstrap
    d1 = 2.0 + 0.9 * 5.0 - 1.0           # truncated: bootstrap from the final observation's value
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2, a1 = d2, d1                      # the recursion stops at each episode end
    a0 = d0 + gamma * lam * a1
    adv, ret = train.compute_gae(rewards, values, next_values, terminations, dones, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[a0], [a1], [a2]]))
    torch.testing.assert_close(ret, adv + values)


def test_gae_lambda_one_is_monte_carlo():
    rewards, values = torch.tensor([[1.0], [1.0], [1.0]]), torch.tensor([[0.3], [0.2], [0.1]])
    next_values = torch.cat([values[1:], torch.zeros(1, 1)])
    done = torch.tensor([[0.0], [0.0], [1.0]])
    _, ret = train.compute_gae(rewards, values, next_values, done, done, gamma=1.0, gae_lambda=1.0)
    torch.testing.assert_close(ret, torch.tensor([[3.0], [2.0], [1.0]]))


def test_ppo_losses_on_hand_made_tensors():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([0.5, 1.0, 1.5]))  # ratios 0.5, 1, 1.5
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, approx_kl, clipfrac = train.ppo_policy_loss(new, old, adv, clip_coef=0.2)
    # min(0.5*1, 0.8*1) = 0.5; min(1, 1) = 1; min(-1.5, -1.2) = -1.5  -> loss = -(0.5 + 1 - 1.5)/3 = 0
    assert math.isclose(float(loss), 0.0, abs_tol=1e-6)
    assert math.isclose(float(clipfrac), 2 / 3, rel_tol=1e-6)
    assert float(approx_kl) > 0
    v = train.ppo_value_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]), clip_coef=0.5)
    assert math.isclose(float(v), 0.5 * max(1.0, 0.25), rel_tol=1e-6)  # unclipped error 1, clipped (0.5-1)^2


@pytest.mark.parametrize("flags", [
    ["--env-id", "LunarLander-v3"],
    ["--env-id", "CartPole-v1"],
    ["--env-id", "LunarLander-v3", "--continuous", "--wind"],
    ["--env-id", "FrozenLake-v1", "--env-kwargs", '{"is_slippery": false}'],  # Discrete observations
    ["--env-id", "Taxi-v4"],
])
def test_tiny_training_run(tmp_path, flags):
    (tmp_path / "run").mkdir()  # an existing empty directory is a fine --out
    args = train.parse_args(flags + ["--num-envs", "2", "--num-steps", "64", "--total-timesteps", "256",
                                     "--num-minibatches", "2", "--update-epochs", "1", "--eval-every", "128",
                                     "--eval-episodes", "2", "--out", str(tmp_path / "run")])
    summary = train.train(args)
    assert summary["global_step"] == 256
    run_dir = tmp_path / "run"
    for name in ("metrics.csv", "learning_curve.png", "best.pt", "final.pt"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 2
    assert all(math.isfinite(float(r[k]))
               for r in rows for k in ("policy_loss", "value_loss", "entropy", "approx_kl"))
    agent, ckpt = train.load_checkpoint(run_dir / "final.pt")
    assert agent.continuous == ("--continuous" in flags) and ckpt["env_id"] == args.env_id
    assert ckpt["env_kwargs"] == args.env_kwargs and ckpt["wind"] == args.wind
    train.check_fits_env(agent, ckpt, run_dir / "final.pt")  # eval.py rebuilds the same env from it


def test_discrete_observations_are_one_hot():
    env = train.make_env("FrozenLake-v1", extra='{"is_slippery": false}')
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (16,) and obs.dtype == "float32"
    assert obs.tolist() == [1.0] + [0.0] * 15  # the start state, 0
    obs, *_ = env.step(2)  # right: state 1
    assert obs.argmax() == 1 and obs.sum() == 1


def test_a_checkpoint_that_does_not_fit_its_env_is_refused(tmp_path):
    ckpt = torch.load(train.SHIPPED_WEIGHTS, weights_only=True)
    torch.save({**ckpt, "env_id": "CartPole-v1"}, tmp_path / "renamed.pt")
    result = run(EVAL, "--weights", str(tmp_path / "renamed.pt"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = (f"error: --weights: {tmp_path / 'renamed.pt'} names CartPole-v1, whose observations and actions "
            "are 4 and 2 wide, but its networks take 8 and give 4")
    assert result.stderr.splitlines() == [said]


def test_the_wind_gif_draws_the_wind():
    evaluation = load_script("lunarlander_ppo", "eval")
    env = train.make_env("LunarLander-v3", wind=True, render_mode="rgb_array")
    env.reset(seed=3)
    frame = env.render()
    drawn = evaluation.with_wind(frame, env.unwrapped)
    assert drawn.shape == frame.shape and (drawn != frame).any()  # the arrow and its label
    env.close()


@pytest.mark.parametrize("name", ["agent.pt", "agent_wind.pt", "agent_continuous.pt"])
def test_shipped_weights_land(name):
    agent, ckpt = train.load_checkpoint(REPO / "lunarlander_ppo" / name)
    train.check_fits_env(agent, ckpt, name)
    returns = train.evaluate(agent, ckpt["env_id"], episodes=3, seed=424242, continuous=ckpt["continuous"],
                             wind=ckpt["wind"], extra=ckpt["env_kwargs"])
    assert min(returns) >= 200, returns
    assert (ckpt["wind"], ckpt["continuous"]) == ("wind" in name, "continuous" in name)


def test_eval_json_and_bad_input(tmp_path):
    result = run(EVAL, "--episodes", "2", "--seed", "7", "--json")
    assert result.returncode == 0 and "mean_return" in json.loads(result.stdout.strip().splitlines()[-1])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    for flags, message in ([["--weights", str(bad)], "cannot read"], [["--weights", "nope.pt"], "not found"],
                           [["--episodes", "0"], "positive"], [["--bogus"], "unrecognized"]):
        result = run(EVAL, *flags)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_train_rejects_bad_flags():
    for flags, message in ([["--num-envs", "0"], "positive"], [["--env-id", "NoSuchEnv-v0"], "--env-id No"]):
        result = run(REPO / "lunarlander_ppo" / "train.py", *flags)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
