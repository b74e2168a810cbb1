"""The exercises at the end of notebooks 01-05: notebooks/exercise_checks.py and notebooks/solutions/.

CI runs each notebook twice. `pytest --nbmake` runs it as shipped: every stub raises NotImplementedError,
its check cell prints "not done yet" and the notebook completes. test_notebook_with_solutions runs it again
with each stub cell replaced by the solution's function, and every check cell must print "correct"; so a
change to a script that breaks an exercise fails CI. The wrong solutions below show that every check catches
a plausible mistake and names the case that differs, without executing a notebook.
"""
import ast
import importlib.util
import json
import re

import nbformat
import pytest
import torch
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOKS = REPO / "notebooks"
FILES = {"nb01": "01_returns_and_reinforce.ipynb", "nb02": "02_gae.ipynb", "nb03": "03_ppo_clipping.ipynb",
         "nb04": "04_grpo_group_advantage.ipynb", "nb05": "05_rlhf_rewards.ipynb"}

_spec = importlib.util.spec_from_file_location("exercise_checks", NOTEBOOKS / "exercise_checks.py")
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)
SOLUTIONS = {nb: checks.load_file(NOTEBOOKS / "solutions" / f"{nb}.py") for nb in FILES}
nb01, nb02, nb03, nb04, nb05 = SOLUTIONS.values()  # the solutions, which the wrong ones below reuse
ALL = [(nb, name, check) for nb, exercises in checks.EXERCISES.items() for name, check in exercises]
IDS = [f"{nb}-{name}" for nb, name, _ in ALL]


def tagged(cells, tag):
    return [c for c in cells if tag in c["metadata"].get("tags", [])]


def function_name(source: str) -> str:
    return next(n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))


# ---------------------------------------------------------------------------------------------
# What ships: the cells of each notebook, the stubs, the solutions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nb", FILES)
def test_notebook_cells_match_the_checks(nb):
    cells = json.loads((NOTEBOOKS / FILES[nb]).read_text())["cells"]
    stubs, check_cells = tagged(cells, "exercise"), tagged(cells, "exercise-check")
    names = [function_name("".join(c["source"])) for c in stubs]
    assert names == [name for name, _ in checks.EXERCISES[nb]] and len(names) >= 3
    for stub, check_cell, (name, check) in zip(stubs, check_cells, checks.EXERCISES[nb]):
        source = "".join(stub["source"])
        assert "# TODO" in source and source.rstrip().endswith("raise NotImplementedError")
        assert "".join(check_cell["source"]) == f"print(checks.{check.__name__}({name}))"
        # saved as shipped: the check cell's stored output is the stub's verdict
        assert [o.get("text") for o in check_cell["outputs"]] == [["not done yet\n"]]
    assert cells.index(check_cells[-1]) == len(cells) - 1  # the exercises end the notebook


def test_at_least_twelve_exercises():
    assert len(ALL) >= 12 and all(len(exercises) >= 3 for exercises in checks.EXERCISES.values())


@pytest.mark.parametrize("nb, name, check", ALL, ids=IDS)
def test_stub_is_not_done_yet(nb, name, check):
    cells = json.loads((NOTEBOOKS / FILES[nb]).read_text())["cells"]
    namespace = {"torch": torch}
    for stub in tagged(cells, "exercise"):
        exec("".join(stub["source"]), namespace)
    assert check(namespace[name]) == checks.NOT_DONE


@pytest.mark.parametrize("nb, name, check", ALL, ids=IDS)
def test_solution_is_correct(nb, name, check):
    assert check(getattr(SOLUTIONS[nb], name)) == checks.CORRECT


# ---------------------------------------------------------------------------------------------
# Wrong solutions: each check reports the case that differs, and by how much
# ---------------------------------------------------------------------------------------------
def discounted_from_the_start(rewards, gamma):  # sum_k gamma^k r_k from t on: gamma^(k - t) forgotten
    weighted = gamma ** torch.arange(len(rewards)) * rewards
    return weighted.flip(0).cumsum(0).flip(0)


def whole_episode_return(rewards, gamma):  # G_0 for every step, not the reward-to-go
    return nb01.reward_to_go(rewards, gamma)[:1].expand(len(rewards))


def population_std_weights(rewards, gamma):
    G = nb01.reward_to_go(rewards, gamma)
    return (G - G.mean()) / (G.std(correction=0) + 1e-8)


def unguarded_weights(rewards, gamma):  # no + eps, no 1-step case: nan
    G = nb01.reward_to_go(rewards, gamma)
    return (G - G.mean()) / G.std()


def objective_gradient(logits, actions, weights):  # the gradient of the objective, not of the loss
    return -nb01.reinforce_gradient(logits, actions, weights)


def onehot_only_gradient(logits, actions, weights):  # forgot the - softmax term
    return -weights[:, None] * torch.nn.functional.one_hot(actions, logits.shape[-1]).float()


def always_bootstrap(rewards, values, next_values, terminations, gamma):
    return rewards + gamma * next_values - values


def gae_truncation_as_death(rewards, values, next_values, terminations, dones, gamma, lam):
    return nb02.gae(rewards, values, next_values, dones, dones, gamma, lam)


def gae_cut_by_terminations(rewards, values, next_values, terminations, dones, gamma, lam):
    return nb02.gae(rewards, values, next_values, terminations, terminations, gamma, lam)


def rollout_without_final_values(rewards, values, last_value, final_values, *rest):
    next_rows = torch.cat([values[1:], last_value[None]])  # after a truncation: the next episode's first obs
    return nb02.rollout_advantages(rewards, values, last_value, next_rows, *rest)


def rollout_truncation_as_death(rewards, values, last_value, final_values, terminated, truncated, *gamma_lam):
    ended = terminated | truncated
    return nb02.rollout_advantages(rewards, values, last_value, final_values, ended, ended, *gamma_lam)


def rollout_last_step_from_last_value(rewards, values, last_value, final_values, *rest):
    final_values = final_values.clone()
    final_values[-1] = last_value  # final_values used inside the rollout only
    return nb02.rollout_advantages(rewards, values, last_value, final_values, *rest)


def slope_zero_outside_the_range(advantages, ratios, clip_coef):  # "clipping removes every gradient outside"
    outside = (ratios - 1).abs() > clip_coef
    return torch.where(outside, torch.zeros_like(advantages), advantages)


def slope_zeros_swapped(advantages, ratios, clip_coef):
    wrong = ((advantages > 0) & (ratios < 1 - clip_coef)) | ((advantages < 0) & (ratios > 1 + clip_coef))
    return torch.where(wrong, torch.zeros_like(advantages), advantages)


def optimistic_policy_loss(new_logprob, old_logprob, advantages, clip_coef):  # max, not min
    ratio = (new_logprob - old_logprob).exp()
    _, approx_kl, clipfrac = nb03.clipped_policy_loss(new_logprob, old_logprob, advantages, clip_coef)
    loss = -torch.max(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages).mean()
    return loss, approx_kl, clipfrac


def k1_approx_kl(new_logprob, old_logprob, advantages, clip_coef):
    loss, _, clipfrac = nb03.clipped_policy_loss(new_logprob, old_logprob, advantages, clip_coef)
    return loss, (old_logprob - new_logprob).mean(), clipfrac


def value_loss_min(new_values, old_values, returns, clip_coef):
    clipped = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.min((new_values - returns) ** 2, (clipped - returns) ** 2).mean()


def value_clipped_around_the_return(new_values, old_values, returns, clip_coef):
    clipped = returns + (new_values - returns).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max((new_values - returns) ** 2, (clipped - returns) ** 2).mean()


def population_std_advantages(rewards, scale_by_std):
    centred = rewards - rewards.mean(1, keepdim=True)
    return centred / (rewards.std(1, keepdim=True, correction=0) + 1e-4) if scale_by_std else centred


def batch_wide_advantages(rewards, scale_by_std):  # the mean and std of the whole batch, not of each group
    centred = rewards - rewards.mean()
    return centred / (rewards.std() + 1e-4) if scale_by_std else centred


def k3_ratio_upside_down(logp, ref_logp):  # x = pi / pi_ref
    return nb04.k3_estimate(ref_logp, logp)


def k1_estimate(logp, ref_logp):
    return logp - ref_logp


def mask_not_pad(completion_ids, eos_id):  # drops the EOS (pad == eos)
    return (completion_ids != eos_id).long()


def mask_without_eos(completion_ids, eos_id):
    return (completion_ids == eos_id).long().cumsum(1).eq(0).long()


def clipped_tokens(logp, old_logp, advantages, epsilon, epsilon_high):  # (B, T), advantages (B,)
    ratio = (logp - old_logp).exp()
    adv = advantages.reshape(-1, 1)
    return -torch.min(ratio * adv, ratio.clamp(1 - epsilon, 1 + epsilon_high) * adv)


def dr_grpo_sequence_mean(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_completion_length):
    advantages = nb04.grpo_advantages(rewards, False)  # GRPO's aggregation: length-biased
    per_token = clipped_tokens(logp, old_logp, advantages, epsilon, epsilon_high)
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


def dr_grpo_std_scaled(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_completion_length):
    advantages = nb04.grpo_advantages(rewards, True)  # GRPO's advantage
    per_token = clipped_tokens(logp, old_logp, advantages, epsilon, epsilon_high)
    return (per_token * mask).sum() / (mask.shape[0] * max_completion_length)


def dr_grpo_symmetric_clip(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_length):
    return nb04.dr_grpo_loss(logp, old_logp, rewards, mask, epsilon, epsilon, max_length)


def dr_grpo_batch_width(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_completion_length):
    return nb04.dr_grpo_loss(logp, old_logp, rewards, mask, epsilon, epsilon_high, mask.shape[1])


def dr_grpo_non_empty_count(logp, old_logp, rewards, mask, *rest):
    non_empty = int((mask.sum(1) > 0).sum())  # counts only the completions with tokens
    return nb04.dr_grpo_loss(logp, old_logp, rewards, mask, *rest) * mask.shape[0] / non_empty


def preference_loss_summed(chosen, rejected):  # a sum over the pairs: the loss grows with the batch
    return -torch.nn.functional.logsigmoid(chosen - rejected).sum()


def preference_loss_upside_down(chosen, rejected):  # rewards the rejected answer
    return nb05.preference_loss(rejected, chosen)


def preference_loss_log_of_sigmoid(chosen, rejected):  # inf once sigmoid underflows to 0
    return -torch.log(torch.sigmoid(chosen - rejected)).mean()


def score_on_the_last_column(logp, ref_logp, mask, score, beta):  # on padding, for a short response
    rewards = -beta * (logp - ref_logp) * mask
    rewards[:, -1] += score
    return rewards


def penalty_on_the_padding(logp, ref_logp, mask, score, beta):  # the KL of the padding is paid too
    return nb05.shaped_rewards(logp, logp, mask, score, beta) - beta * (logp - ref_logp)  # the score alone


def k3_penalty(logp, ref_logp, mask, score, beta):  # the k3 estimate in the reward, not PPO's k1
    log_ratio = logp - ref_logp
    k3 = torch.exp(-log_ratio) + log_ratio - 1
    return nb05.shaped_rewards(logp, logp, mask, score, beta) - beta * k3 * mask


def whitened_and_returns(advantages, values, mask):  # what nb05.token_advantages does after its GAE
    real = advantages[mask.bool()]
    return (advantages - real.mean()) / torch.sqrt(real.var() + 1e-8) * mask, (advantages + values) * mask


def bootstrap_from_the_padding(rewards, values, mask, gamma, lam):  # V_{t+1} read past the last real token
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # not masked
    advantages = (rewards + gamma * next_values - values) * mask
    for t in reversed(range(rewards.shape[1] - 1)):
        advantages[:, t] += gamma * lam * advantages[:, t + 1] * mask[:, t]
    return whitened_and_returns(advantages, values, mask)


def lambda_without_gamma(rewards, values, mask, gamma, lam):  # A_t = delta_t + lam A_{t+1}
    return nb05.token_advantages(rewards, values, mask, gamma, lam / gamma)  # gamma * lam / gamma = lam


def returns_from_whitened(rewards, values, mask, gamma, lam):  # the critic's target rescaled every batch
    whitened, _ = nb05.token_advantages(rewards, values, mask, gamma, lam)
    return whitened, (whitened + values) * mask


def whitened_with_the_padding(rewards, values, mask, gamma, lam):  # the padding's zeros in the mean and std
    _, returns = nb05.token_advantages(rewards, values, mask, gamma, lam)
    return whitened_and_returns((returns - values) * mask, values, torch.ones_like(mask))[0], returns


def raises_type_error(*args):
    raise TypeError("unsupported operand")


def loss_without_gradient(new_values, old_values, returns, clip_coef):
    return torch.tensor(nb03.clipped_value_loss(new_values, old_values, returns, clip_coef).item())


C = checks
WRONG = [  # (check, wrong function, the case it must name, what it must say)
    (C.check_reward_to_go, discounted_from_the_start, "the 4-step episode", "reward-to-go: differs"),
    (C.check_reward_to_go, whole_episode_return, "the 4-step episode", "reward-to-go: differs"),
    (C.check_reinforce_weights, population_std_weights, "the 4-step episode", "weights: differs"),
    (C.check_reinforce_weights, unguarded_weights, "a 1-step episode", "got [nan]"),
    (C.check_reinforce_gradient, objective_gradient, "the 4 steps of section 3", "gradient w.r.t. the"),
    (C.check_reinforce_gradient, onehot_only_gradient, "the 4 steps of section 3", "differs"),
    (C.check_td_errors, always_bootstrap, "a termination at step 2 of env 0", "TD errors: differs"),
    (C.check_gae, gae_truncation_as_death, "a truncation inside the rollout", "advantages: differs"),
    (C.check_gae, gae_cut_by_terminations, "a truncation inside the rollout", "advantages: differs"),
    (C.check_rollout_advantages, rollout_without_final_values, "a truncation inside the rollout", "differs"),
    (C.check_rollout_advantages, rollout_truncation_as_death, "a truncation inside the rollout", "differs"),
    (C.check_rollout_advantages, rollout_last_step_from_last_value, "a truncation at the last", "differs"),
    (C.check_objective_slope, slope_zero_outside_the_range, "A = +1, ratio 0.5 (below 1 - eps)", "differs"),
    (C.check_objective_slope, slope_zeros_swapped, "A = +1, ratio 0.5 (below 1 - eps)", "differs"),
    (C.check_policy_loss, optimistic_policy_loss, "the six cases of section 2", "loss: differs"),
    (C.check_policy_loss, k1_approx_kl, "random: 64 samples", "approx_kl: differs"),
    (C.check_value_loss, value_loss_min, "the two samples of section 4", "value loss: differs"),
    (C.check_value_loss, value_clipped_around_the_return, "moved more than clip_coef towards", "differs"),
    (C.check_group_advantages, population_std_advantages, "the group of section 1", "advantages: differs"),
    (C.check_group_advantages, batch_wide_advantages, "all-equal groups", "advantages: differs"),
    (C.check_kl_k3, k3_ratio_upside_down, "random log-probs", "k3: differs"),
    (C.check_kl_k3, k1_estimate, "random log-probs", "k3: differs"),
    (C.check_completion_mask, mask_not_pad, "the three completions of section 3", "mask: differs"),
    (C.check_completion_mask, mask_without_eos, "the three completions of section 3", "mask: differs"),
    (C.check_dr_grpo_loss, dr_grpo_sequence_mean, "the group of section 4", "loss: differs"),
    (C.check_dr_grpo_loss, dr_grpo_std_scaled, "the group of section 4", "loss: differs"),
    (C.check_dr_grpo_loss, dr_grpo_symmetric_clip, "random: 2 groups of 4", "differs"),
    (C.check_dr_grpo_loss, dr_grpo_batch_width, "max_completion_length 12", "loss: differs"),
    (C.check_dr_grpo_loss, dr_grpo_non_empty_count, "a zero-length completion", "loss: differs"),
    (C.check_bradley_terry_loss, preference_loss_summed, "the three pairs of section 1", "loss: differs"),
    (C.check_bradley_terry_loss, preference_loss_upside_down, "the three pairs of section 1", "differs"),
    (C.check_bradley_terry_loss, preference_loss_log_of_sigmoid, "a pair ranked wrong by a margin of 200",
     "loss: differs by up to inf"),
    (C.check_shape_rewards, score_on_the_last_column, "the two completions of section 2", "rewards: differs"),
    (C.check_shape_rewards, penalty_on_the_padding, "a 5-token response in a tensor of 8", "differs"),
    (C.check_shape_rewards, k3_penalty, "the two completions of section 2", "rewards: differs"),
    (C.check_token_advantages, bootstrap_from_the_padding, "values on the padding", "advantages: differs"),
    (C.check_token_advantages, lambda_without_gamma, "gamma 0.9, lambda 0.8", "advantages: differs"),
    (C.check_token_advantages, returns_from_whitened, "the two completions of section 3", "returns: differs"),
    (C.check_token_advantages, whitened_with_the_padding, "the two completions of section 3",
     "advantages: differs"),
    (C.check_gae, raises_type_error, "the trajectory of section 2", "your function raised TypeError"),
    (C.check_value_loss, loss_without_gradient, "the two samples of section 4", "carries no gradient"),
]


@pytest.mark.filterwarnings("ignore:std\\(\\). degrees of freedom")
@pytest.mark.parametrize("check, wrong, case, says", WRONG, ids=[w.__name__ for _, w, _, _ in WRONG])
def test_wrong_solution_is_reported(check, wrong, case, says):
    verdict = check(wrong)
    assert verdict.startswith(f"case '{case}"), verdict
    assert says in verdict, verdict
    if "differs" in says:
        assert re.search(r"by up to (\d|inf)", verdict), verdict  # and by how much


def test_every_exercise_has_a_wrong_solution():
    assert {check for check, *_ in WRONG} >= {check for *_, check in ALL}


def test_command_line(tmp_path, capsys):
    assert checks.main(["nb01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"nb01 {name}: correct" for name, _ in C.EXERCISES["nb01"]]
    mine = tmp_path / "mine.py"  # gamma forgotten, and only one of the three functions
    mine.write_text("def reward_to_go(rewards, gamma):\n    return rewards.flip(0).cumsum(0).flip(0)\n")
    assert checks.main(["nb01", "--file", str(mine)]) == 1
    out = capsys.readouterr().out
    assert "nb01 reward_to_go: case 'the 4-step episode of section 1'" in out and "not defined in" in out


# ---------------------------------------------------------------------------------------------
# The second CI pass: each notebook executed with the solutions in place of the stubs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nb", FILES)
def test_notebook_with_solutions(nb):
    notebook = nbformat.read(str(NOTEBOOKS / FILES[nb]), as_version=4)
    source = (NOTEBOOKS / "solutions" / f"{nb}.py").read_text()
    solutions = {node.name: ast.get_source_segment(source, node) for node in ast.parse(source).body
                 if isinstance(node, ast.FunctionDef)}
    for cell in tagged(notebook.cells, "exercise"):
        cell.source = solutions[function_name(cell.source)]
    NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    verdicts = ["".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
                for cell in tagged(notebook.cells, "exercise-check")]
    assert verdicts == ["correct\n"] * len(checks.EXERCISES[nb])
