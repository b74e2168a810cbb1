"""The checks behind the exercises at the end of notebooks 01-05.

Each `check_<exercise>(your_function)` calls your function on random inputs and on the edge cases that
matter, compares it with the script's own function (the folder's train.py, imported by path as the
notebooks do) and returns one line:

- "correct": every case agrees (to 1e-5, or 0.1 % of the value);
- "not done yet": the stub still raises NotImplementedError;
- otherwise the first case that differs, what differs and by how much, or the error your function raised.

The notebooks' check cells print it. From the repository root, the same checks on a file of functions:

    python notebooks/exercise_checks.py                      # the solutions, notebooks/solutions/nb0*.py
    python notebooks/exercise_checks.py nb02 --file mine.py  # your functions, named as in the notebook
"""
import argparse
import importlib.util
import math
import sys
from pathlib import Path

import torch

CORRECT, NOT_DONE = "correct", "not done yet"
RTOL, ATOL = 1e-3, 1e-5
ROOT = Path(__file__).resolve().parents[1]


def load_train(folder: str):
    """<folder>/train.py, imported once by path under the name tests/conftest.py gives it (<folder>_train)."""
    name = f"{folder}_train"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / "train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


# ---------------------------------------------------------------------------------------------
# Running the cases and describing a difference
# ---------------------------------------------------------------------------------------------
class _Mismatch(Exception):
    """What a student's function returned cannot be compared (the message says why)."""


def _outputs(x, n: int) -> tuple:
    """A function's result as a tuple of its n outputs."""
    if n == 1:
        return (x,)
    if not isinstance(x, (tuple, list)) or len(x) != n:
        raise _Mismatch(f"expected {n} outputs, got {len(x) if isinstance(x, (tuple, list)) else 1}")
    return tuple(x)


def _tensor(x) -> torch.Tensor:
    """An output as a float64 tensor: a tensor, a number, a list of numbers or of 0-d tensors."""
    try:
        if isinstance(x, torch.Tensor):
            return x.detach().double()
        if isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
            return torch.stack([v.detach() for v in x]).double()  # a list of 0-d tensors, as in section 1
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise _Mismatch(f"expected a tensor, got {type(x).__name__}") from None


def _fmt(t: torch.Tensor) -> str:
    if t.dim() == 0:
        return f"{float(t):.4g}"
    shape = "" if t.dim() == 1 else f" (shape {tuple(t.shape)})"
    return str([round(v, 4) + 0.0 for v in t.flatten().tolist()]) + shape  # + 0.0: -0.0 printed as 0.0


def _difference(got: tuple, want: tuple, names) -> str | None:
    """None when the outputs `got` match `want` (tuples of tensors named by `names`), else what differs."""
    for name, g, w in zip(names, got, want):
        w = _tensor(w)
        try:
            g = _tensor(g)
        except _Mismatch as error:
            return f"{name}: {error}"
        if g.shape != w.shape:
            return f"{name}: expected shape {tuple(w.shape)}, got {tuple(g.shape)}"
        close = torch.isclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True)
        if close.all():
            continue
        gap = (g - w).abs().nan_to_num(nan=math.inf, posinf=math.inf).flatten()  # "by up to inf", not 1.8e308
        worst = int(gap.argmax())
        if w.numel() <= 8:
            return f"{name}: differs by up to {float(gap[worst]):.4g}: expected {_fmt(w)}, got {_fmt(g)}"
        where = [int(i) for i in torch.unravel_index(torch.tensor(worst), w.shape)]
        return (f"{name}: differs at {int((~close).sum())} of {w.numel()} positions, by up to "
                f"{float(gap[worst]):.4g} at {where}: expected {float(w.flatten()[worst]):.4g}, "
                f"got {float(g.flatten()[worst]):.4g}")
    return None


def _copy(args) -> list:
    """Fresh copies of a case's tensors: a function that writes into its inputs cannot alter the next call."""
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def _run(student_fn, reference_fn, cases, names=("output",)) -> str:
    """Call both functions on each (case name, arguments) and return the verdict line. `names` names the
    outputs; with _with_grad, the gradient is one more output, named last."""
    for case, args in cases:
        try:
            got = _outputs(student_fn(*_copy(args)), len(names))
        except NotImplementedError:
            return NOT_DONE
        except _Mismatch as error:
            return f"case '{case}': {error}"
        except Exception as error:  # a check reports, it never stops the notebook
            return f"case '{case}': your function raised {type(error).__name__}: {error}"
        problem = _difference(got, _outputs(reference_fn(*_copy(args)), len(names)), names)
        if problem:
            return f"case '{case}': {problem}"
    return CORRECT


def _with_grad(fn, wrt: int, outputs: int = 1):
    """fn (returning `outputs` values, the loss first) made to return them all and then the gradient of the
    loss w.r.t. its argument number `wrt`."""
    def outputs_and_grad(*args):
        args = list(args)
        args[wrt] = args[wrt].detach().clone().requires_grad_(True)
        out = _outputs(fn(*args), outputs)
        if not isinstance(out[0], torch.Tensor):
            raise _Mismatch(f"expected the loss as a tensor, got {type(out[0]).__name__}")
        if not out[0].requires_grad:
            raise _Mismatch("the loss carries no gradient: build it with torch operations on the inputs")
        grad, = torch.autograd.grad(out[0], args[wrt], allow_unused=True)
        return (*out, torch.zeros_like(args[wrt]) if grad is None else grad)
    return outputs_and_grad


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Notebook 01: cartpole_reinforce (discounted_returns, standardize, reinforce_loss)
# ---------------------------------------------------------------------------------------------
EPISODE = [1.0, 0.0, 2.0, 1.0]  # the 4-step episode of notebook 01, gamma 0.9


def check_reward_to_go(reward_to_go) -> str:
    """reward_to_go(rewards (T,), gamma) -> (T,), against discounted_returns."""
    g = _gen(1)
    cases = [("the 4-step episode of section 1", (torch.tensor(EPISODE), 0.9)),
             ("a random 12-step episode, gamma 0.97", (torch.randn(12, generator=g), 0.97)),
             ("a 1-step episode", (torch.tensor([2.5]), 0.9)),
             ("gamma = 0: each step keeps its own reward", (torch.randn(5, generator=g), 0.0)),
             ("gamma = 1: the plain sum of the rewards to come", (torch.randn(6, generator=g), 1.0))]

    def reference(rewards, gamma):
        return load_train("cartpole_reinforce").discounted_returns(rewards, gamma)
    return _run(reward_to_go, reference, cases, ("reward-to-go",))


def check_reinforce_weights(reinforce_weights) -> str:
    """reinforce_weights(rewards (T,), gamma) -> (T,): the standardised reward-to-go of train.py."""
    g = _gen(2)
    cases = [("the 4-step episode of section 1", (torch.tensor(EPISODE), 0.9)),
             ("a random 30-step episode, gamma 0.99", (torch.rand(30, generator=g), 0.99)),
             ("a 1-step episode: one return has no spread, its weight is 0", (torch.tensor([3.0]), 0.99)),
             ("every reward 0: equal returns get weight 0, not nan", (torch.zeros(5), 0.9)),
             ("a 200-step CartPole episode, gamma 0.99", (torch.ones(200), 0.99))]

    def reference(rewards, gamma):
        cartpole = load_train("cartpole_reinforce")
        return cartpole.standardize(cartpole.discounted_returns(rewards, gamma))
    return _run(reinforce_weights, reference, cases, ("weights",))


def _reinforce_gradient_reference(logits, actions, weights):
    logits = logits.clone().requires_grad_(True)
    log_probs = torch.log_softmax(logits, dim=-1).gather(1, actions.unsqueeze(1)).squeeze(1)  # (T,)
    load_train("cartpole_reinforce").reinforce_loss(log_probs, weights).backward()
    return logits.grad


def check_reinforce_gradient(reinforce_gradient) -> str:
    """reinforce_gradient(logits (T, A), actions (T,), weights (T,)) -> (T, A): autograd of reinforce_loss."""
    g = _gen(3)
    cases = [("the 4 steps of section 3, one row of logits per step",
              (torch.tensor([[0.2, -0.1]]).repeat(4, 1), torch.tensor([0, 1, 1, 0]),
               torch.tensor([3.349, 2.61, 2.9, 1.0]))),
             ("random: 6 steps, 3 actions",
              (torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g),
               torch.randn(6, generator=g))),
             ("a step with weight 0 contributes nothing",
              (torch.randn(3, 4, generator=g), torch.tensor([3, 0, 1]), torch.tensor([1.0, 0.0, -2.0]))),
             ("nearly certain actions (probability 1 - 1e-7), taken and not taken",
              (torch.tensor([[8.0, -8.0], [8.0, -8.0]]), torch.tensor([0, 1]), torch.tensor([1.0, 1.0])))]
    return _run(reinforce_gradient, _reinforce_gradient_reference, cases, ("gradient w.r.t. the logits",))


# ---------------------------------------------------------------------------------------------
# Notebook 02: lunarlander_ppo (compute_gae)
# ---------------------------------------------------------------------------------------------
def _trajectory():
    """Sections 1-2 of notebook 02: rewards, V(s_t), V(s_{t+1}) of a 4-step trajectory, as (T=4, N=1)."""
    return (torch.tensor([[1.0], [0.0], [0.5], [2.0]]), torch.tensor([[2.0], [1.5], [1.0], [1.2]]),
            torch.tensor([[1.5], [1.0], [1.2], [0.8]]))


def _ends(T: int, N: int, at=(), g=None, p: float = 0.0) -> torch.Tensor:
    """(T, N) float mask: 1 at the (t, env) pairs in `at`, and at random with probability p."""
    mask = (torch.rand(T, N, generator=g) < p).float() if p else torch.zeros(T, N)
    for t, i in at:
        mask[t, i] = 1.0
    return mask


def check_td_errors(td_errors) -> str:
    """td_errors(rewards, values, next_values, terminations, gamma) -> delta (T, N); compute_gae, lambda 0."""
    g = _gen(4)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    cases = [("the 4-step trajectory of section 1", (*_trajectory(), torch.zeros(4, 1), 0.9)),
             ("random: 6 steps, 3 envs, no episode ends",
              (r(6, 3), r(6, 3), r(6, 3), torch.zeros(6, 3), 0.99)),
             ("a termination at step 2 of env 0: no bootstrap",
              (r(5, 2), r(5, 2), r(5, 2), _ends(5, 2, at=[(2, 0)]), 0.9)),
             ("random: 8 steps, 3 envs, terminations anywhere",
              (r(8, 3), r(8, 3), r(8, 3), _ends(8, 3, g=g, p=0.3), 0.95))]

    def reference(rewards, values, next_values, terminations, gamma):
        dones = torch.zeros_like(rewards)  # at lambda = 0, A_t is delta_t whatever the recursion does
        ppo = load_train("lunarlander_ppo")
        return ppo.compute_gae(rewards, values, next_values, terminations, dones, gamma, 0.0)[0]
    return _run(td_errors, reference, cases, ("TD errors",))


def check_gae(gae) -> str:
    """gae(rewards, values, next_values, terminations, dones, gamma, lam) -> advantages (T, N)."""
    g = _gen(5)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    at_end = _ends(5, 2, at=[(4, 0)])
    terminated = _ends(6, 2, at=[(3, 1)])
    term, trunc = _ends(16, 4, g=g, p=0.1), _ends(16, 4, g=g, p=0.1)
    cases = [("the trajectory of section 2, lambda 0.5",
              (*_trajectory(), torch.zeros(4, 1), torch.zeros(4, 1), 0.9, 0.5)),
             ("a truncation inside the rollout (env 0, step 2): bootstrapped, the recursion stops",
              (r(6, 2), r(6, 2), r(6, 2), torch.zeros(6, 2), _ends(6, 2, at=[(2, 0)]), 0.9, 0.8)),
             ("a termination inside the rollout (env 1, step 3)",
              (r(6, 2), r(6, 2), r(6, 2), terminated, terminated, 0.9, 0.8)),
             ("lambda = 1: the Monte-Carlo return minus the value",
              (r(5, 2), r(5, 2), r(5, 2), at_end, at_end, 0.95, 1.0)),
             ("random: 16 steps, 4 envs, terminations and truncations anywhere",
              (r(16, 4), r(16, 4), r(16, 4), term, torch.maximum(term, trunc), 0.99, 0.95))]

    def reference(*args):
        return load_train("lunarlander_ppo").compute_gae(*args)[0]
    return _run(gae, reference, cases, ("advantages",))


def _rollout_case(T, N, g, terminated_at=(), truncated_at=(), p=0.0):
    """The arguments of rollout_advantages: what train.py's rollout loop holds at the end of a rollout."""
    terminated = _ends(T, N, at=terminated_at, g=g, p=p).bool()
    truncated = _ends(T, N, at=truncated_at, g=g, p=p).bool()
    final_values = torch.where(terminated | truncated, torch.randn(T, N, generator=g), 0.0)  # V(final_obs)
    return (torch.randn(T, N, generator=g), torch.randn(T, N, generator=g), torch.randn(N, generator=g),
            final_values, terminated, truncated, 0.99, 0.95)


def _rollout_reference(rewards, values, last_value, final_values, terminated, truncated, gamma, lam):
    """What train.py does between its rollout and its update (step 2), then compute_gae."""
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)])                 # V(obs_{t+1}) as stored
    next_values = torch.where(truncated & ~terminated, final_values, next_values)  # truncated: V(final obs)
    return load_train("lunarlander_ppo").compute_gae(rewards, values, next_values, terminated.float(),
                                                     (terminated | truncated).float(), gamma, lam)


def check_rollout_advantages(rollout_advantages) -> str:
    """rollout_advantages(rewards, values, last_value, final_values, terminated, truncated, gamma, lam)
    -> (advantages, returns), against train.py's bookkeeping around compute_gae."""
    g = _gen(6)
    cases = [("no episode ends: the last step bootstraps from last_value", _rollout_case(5, 2, g)),
             ("a truncation inside the rollout (env 1, step 2)",
              _rollout_case(6, 2, g, truncated_at=[(2, 1)])),
             ("a truncation at the last step: from final_values, not last_value",
              _rollout_case(4, 2, g, truncated_at=[(3, 0)])),
             ("a termination inside the rollout (env 0, step 1)",
              _rollout_case(5, 2, g, terminated_at=[(1, 0)])),
             ("terminated and truncated at the same step: no bootstrap",
              _rollout_case(5, 1, g, terminated_at=[(2, 0)], truncated_at=[(2, 0)])),
             ("random: 20 steps, 4 envs, episodes ending anywhere", _rollout_case(20, 4, g, p=0.1))]
    return _run(rollout_advantages, _rollout_reference, cases, ("advantages", "returns"))


# ---------------------------------------------------------------------------------------------
# Notebook 03: lunarlander_ppo (ppo_policy_loss, ppo_value_loss)
# ---------------------------------------------------------------------------------------------
SIX_CASES = [(+1.0, 0.5), (+1.0, 1.0), (+1.0, 1.5), (-1.0, 0.5), (-1.0, 1.0), (-1.0, 1.5)]  # (A, ratio)


def _slope_reference(advantages, ratios, clip_coef):
    """d objective / d ratio per sample, from autograd of ppo_policy_loss (minus a mean over log-probs)."""
    new_logprob = ratios.log().requires_grad_(True)
    ppo = load_train("lunarlander_ppo")
    loss, _, _ = ppo.ppo_policy_loss(new_logprob, torch.zeros_like(ratios), advantages, clip_coef)
    grad, = torch.autograd.grad(loss, new_logprob)
    return -grad * len(ratios) / ratios  # loss = -mean(objective), and d ratio / d log pi = ratio


def _ratios_off_the_edges(n, g, clip_coef):
    """Ratios in (0.3, 2), at least 0.01 away from the kinks at 1 - clip_coef and 1 + clip_coef."""
    ratios = 0.3 + 1.7 * torch.rand(n, generator=g)
    for edge in (1 - clip_coef, 1 + clip_coef):
        near = (ratios - edge).abs() < 0.01
        ratios[near] = edge + 0.02 * torch.sign(ratios[near] - edge + 1e-9)
    return ratios


def _region(ratio: float) -> str:
    return "below 1 - eps" if ratio < 0.8 else "above 1 + eps" if ratio > 1.2 else "inside the clip range"


def check_objective_slope(objective_slope) -> str:
    """objective_slope(advantages, ratios, clip_coef) -> d L_CLIP / d ratio per sample (the six cases)."""
    g = _gen(7)
    cases = [(f"A = {a:+.0f}, ratio {r} ({_region(r)})", (torch.tensor([a]), torch.tensor([r]), 0.2))
             for a, r in SIX_CASES]
    cases += [(f"random advantages and ratios, clip_coef {eps}",
               (torch.randn(40, generator=g), _ratios_off_the_edges(40, g, eps), eps)) for eps in (0.2, 0.1)]
    return _run(objective_slope, _slope_reference, cases, ("d objective / d ratio",))


def check_policy_loss(clipped_policy_loss) -> str:
    """clipped_policy_loss(new_logprob, old_logprob, advantages, clip_coef) -> (loss, approx_kl, clipfrac),
    and the gradient of the loss, against ppo_policy_loss."""
    g = _gen(8)
    old = torch.randn(64, generator=g) - 1.0
    same = torch.randn(16, generator=g) - 1.0
    signs = torch.tensor([1.0, -1.0] * 8)
    six_advantages, six_ratios = torch.tensor(SIX_CASES).T
    cases = [("the six cases of section 2", (six_ratios.log(), torch.zeros(6), six_advantages, 0.2)),
             ("the first epoch: new_logprob equals old_logprob",
              (same, same.clone(), torch.randn(16, generator=g), 0.2)),
             ("random: 64 samples, clip_coef 0.2",
              (old + 0.4 * torch.randn(64, generator=g), old, torch.randn(64, generator=g), 0.2)),
             ("every sample moved past the clip range, the way its advantage pushes",
              (same + signs, same, 2.0 * signs, 0.2))]
    ppo = load_train("lunarlander_ppo")
    names = ("loss", "approx_kl", "clipfrac", "gradient of the loss w.r.t. new_logprob")
    return _run(_with_grad(clipped_policy_loss, 0, 3), _with_grad(ppo.ppo_policy_loss, 0, 3), cases, names)


def check_value_loss(clipped_value_loss) -> str:
    """clipped_value_loss(new_values, old_values, returns, clip_coef) -> loss, and its gradient, against
    ppo_value_loss(..., clip=True)."""
    g = _gen(9)
    old = torch.randn(32, generator=g)
    zero, one = torch.zeros(1), torch.ones(1)
    cases = [("the two samples of section 4", (torch.tensor([2.0, 0.1]), torch.zeros(2), torch.ones(2), 0.2)),
             ("moved more than clip_coef towards the target", (torch.tensor([0.9]), zero, one, 0.2)),
             ("moved more than clip_coef away from the target", (torch.tensor([-0.9]), zero, one, 0.2)),
             ("random: 32 values, clip_coef 0.2",
              (old + 0.5 * torch.randn(32, generator=g), old, old + torch.randn(32, generator=g), 0.2)),
             ("random: 32 values, clip_coef 0.5",
              (old + torch.randn(32, generator=g), old, old + torch.randn(32, generator=g), 0.5))]

    def reference(new_values, old_values, returns, clip_coef):
        ppo = load_train("lunarlander_ppo")
        return ppo.ppo_value_loss(new_values, old_values, returns, clip_coef, clip=True)
    names = ("value loss", "gradient w.r.t. new_values")
    return _run(_with_grad(clipped_value_loss, 0), _with_grad(reference, 0), cases, names)


# ---------------------------------------------------------------------------------------------
# Notebook 04: grpo_lm (group_advantages, kl_k3, completion_mask, grpo_loss)
# ---------------------------------------------------------------------------------------------
def check_group_advantages(grpo_advantages) -> str:
    """grpo_advantages(rewards (num_groups, G), scale_by_std) -> (num_groups, G), against group_advantages."""
    g = _gen(10)
    binary = (torch.rand(5, 8, generator=g) < 0.4).float()
    cases = [("the group of section 1 (one correct of four)", (torch.tensor([[1.0, 0.0, 0.0, 0.0]]), True)),
             ("all-equal groups (all correct, all wrong) beside a mixed one: zero, not nan",
              (torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]]), True)),
             ("groups of two", (torch.tensor([[1.0, 0.0], [0.3, 0.9]]), True)),
             ("random: 5 groups of 8 right-or-wrong rewards", (binary, True)),
             ("random rewards, 3 groups of 6", (torch.randn(3, 6, generator=g), True)),
             ("scale_by_std=False (Dr. GRPO): r - mean only", (binary, False))]

    def reference(rewards, scale_by_std):
        return load_train("grpo_lm").group_advantages(rewards, scale_by_std=scale_by_std)
    return _run(grpo_advantages, reference, cases, ("advantages",))


def check_kl_k3(k3_estimate) -> str:
    """k3_estimate(logp, ref_logp) -> per-token estimate of KL(policy || reference), against kl_k3."""
    g = _gen(11)
    logp = -3.0 * torch.rand(3, 5, generator=g)
    cases = [("the policy equals the reference: 0 everywhere", (logp, logp.clone())),
             ("random log-probs, 3 x 5 tokens", (logp, -3.0 * torch.rand(3, 5, generator=g))),
             ("the reference finds the token far likelier (ref_logp - logp = 3)",
              (torch.tensor([-4.0]), torch.tensor([-1.0]))),
             ("the reference finds the token far less likely (ref_logp - logp = -3)",
              (torch.tensor([-1.0]), torch.tensor([-4.0])))]

    def reference(logp, ref_logp):
        return load_train("grpo_lm").kl_k3(logp, ref_logp)
    return _run(k3_estimate, reference, cases, ("k3",))


def check_completion_mask(eos_mask) -> str:
    """eos_mask(completion_ids (B, T), eos_id) -> (B, T) mask, 1 up to and including the first EOS."""
    g = _gen(12)
    cases = [("the three completions of section 3",
              (torch.tensor([[5, 7, 2, 2, 2], [4, 4, 4, 4, 4], [2, 2, 2, 2, 2]]), 2)),
             ("EOS at the first position (stopped at once)", (torch.tensor([[0, 3, 3], [1, 0, 0]]), 0)),
             ("no EOS: cut by the length limit, every token counts", (torch.tensor([[4, 5, 6, 7]]), 2)),
             ("other tokens after the first EOS", (torch.tensor([[5, 2, 7, 2, 9], [2, 8, 8, 8, 8]]), 2)),
             ("random: 6 completions of 10 tokens", (torch.randint(0, 6, (6, 10), generator=g), 2))]

    def reference(completion_ids, eos_id):
        return load_train("grpo_lm").completion_mask(completion_ids, eos_id)
    return _run(eos_mask, reference, cases, ("mask",))


def _dr_grpo_reference(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_completion_length):
    grpo = load_train("grpo_lm")
    advantages = grpo.group_advantages(rewards, scale_by_std=False).reshape(-1)  # (B,), group after group
    return grpo.grpo_loss(logp, old_logp, advantages, mask, epsilon, epsilon_high, "dr_grpo",
                          max_completion_length)[0]


def _lengths_mask(lengths, T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()  # (B, T)


def check_dr_grpo_loss(dr_grpo_loss) -> str:
    """dr_grpo_loss(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_completion_length) -> loss,
    and its gradient w.r.t. logp, against grpo_loss(loss_type="dr_grpo") on Dr. GRPO's advantages."""
    g = _gen(13)
    flat = torch.full((2, 8), -1.0)
    old = -2.0 * torch.rand(8, 8, generator=g)
    near = old + 0.15 * torch.randn(8, 8, generator=g)  # ratios around 1, some in (1.2, 1.28): clip-higher
    rewards = (torch.rand(2, 4, generator=g) < 0.5).float()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # both groups have a spread
    mask = _lengths_mask([3, 8, 5, 1, 7, 2, 8, 4], 8)
    cases = [("the group of section 4: a short right answer, a long wrong one",
              (flat, flat.clone(), torch.tensor([[1.0, 0.0]]), _lengths_mask([2, 6], 8), 0.2, 0.28, 8)),
             ("random: 2 groups of 4, ratios near 1, clip-higher 0.28",
              (near, old, rewards, mask, 0.2, 0.28, 8)),
             ("a zero-length completion (its mask row is all zero)",
              (near[:4], old[:4], torch.tensor([[1.0, 0.0, 0.0, 1.0]]), _lengths_mask([3, 0, 5, 2], 8),
               0.2, 0.28, 8)),
             ("an all-equal group beside a mixed one",
              (near[:6], old[:6], torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]),
               _lengths_mask([2, 4, 6, 8, 1, 3], 8), 0.2, 0.28, 8)),
             ("max_completion_length 12, above the longest completion",
              (near, old, rewards, mask, 0.2, 0.28, 12))]
    names = ("loss", "gradient of the loss w.r.t. logp")
    return _run(_with_grad(dr_grpo_loss, 0), _with_grad(_dr_grpo_reference, 0), cases, names)


# ---------------------------------------------------------------------------------------------
# Notebook 05: ppo_rlhf_math (bradley_terry_loss, per_token_kl, shape_rewards, compute_gae, whiten)
# ---------------------------------------------------------------------------------------------
def _section2():
    """Section 2 of notebook 05: logp, ref_logp, mask (B=2, T=4; the second has 2 tokens), score."""
    return (torch.tensor([[-0.5, -1.0, -0.2, -0.3], [-0.7, -0.1, 0.0, 0.0]]),
            torch.tensor([[-0.7, -0.9, -0.6, -0.3], [-0.7, -0.4, 0.0, 0.0]]),
            torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]), torch.tensor([1.0, -0.5]))


def _logps(lengths, T: int, g) -> tuple:
    """(logp, ref_logp, mask, score) for responses of these lengths in a (B, T) tensor. The padding holds
    log-probs too, as the model's forward pass leaves them there: a forgotten mask shows."""
    B = len(lengths)
    logp = -2.0 * torch.rand(B, T, generator=g)
    return (logp, logp + 0.3 * torch.randn(B, T, generator=g), _lengths_mask(lengths, T),
            torch.randn(B, generator=g))


def check_bradley_terry_loss(preference_loss) -> str:
    """preference_loss(chosen (N,), rejected (N,)) -> loss, and its gradient w.r.t. chosen, against
    bradley_terry_loss."""
    g = _gen(14)
    cases = [("the three pairs of section 1", (torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 1.5, 1.0]))),
             ("ties: equal scores, log 2 per pair", (torch.full((4,), 0.7), torch.full((4,), 0.7))),
             ("one pair", (torch.tensor([0.3]), torch.tensor([-1.2]))),
             ("random: 64 pairs", (2.0 * torch.randn(64, generator=g), 2.0 * torch.randn(64, generator=g))),
             ("a pair ranked wrong by a margin of 200 (sigmoid(-200) is 0 in float32)",
              (torch.tensor([-100.0, 1.0]), torch.tensor([100.0, 0.0])))]

    def reference(chosen, rejected):
        return load_train("ppo_rlhf_math").bradley_terry_loss(chosen, rejected)
    names = ("loss", "gradient w.r.t. chosen")
    return _run(_with_grad(preference_loss, 0), _with_grad(reference, 0), cases, names)


def _shaped_reference(logp, ref_logp, mask, score, beta):
    rlhf = load_train("ppo_rlhf_math")
    return rlhf.shape_rewards(score, rlhf.per_token_kl(logp, ref_logp, mask, "k1"), mask, beta)


def check_shape_rewards(shaped_rewards) -> str:
    """shaped_rewards(logp, ref_logp, mask, score, beta) -> (B, T) rewards, against per_token_kl (k1) and
    shape_rewards."""
    g = _gen(15)
    cases = [("the two completions of section 2", (*_section2(), 0.1)),
             ("a 5-token response in a tensor of 8 (padding holds log-probs, not zeros)",
              (*_logps([5], 8, g), 0.1)),
             ("a one-token response (it stopped at once) beside a longer one", (*_logps([1, 6], 6, g), 0.1)),
             ("a response that fills the tensor: the score on its last column", (*_logps([7, 3], 7, g), 0.1)),
             ("beta = 0: only the score, on each last real token", (*_logps([2, 5, 4], 5, g), 0.0)),
             ("random: 6 responses of 1 to 10 tokens, beta 0.05",
              (*_logps([4, 10, 1, 7, 9, 3], 10, g), 0.05))]
    return _run(shaped_rewards, _shaped_reference, cases, ("rewards",))


def _advantages_case(lengths, T: int, g, gamma: float = 1.0, lam: float = 0.95) -> tuple:
    """(rewards, values, mask, gamma, lam): KL-shaped rewards (0 on padding, as shape_rewards leaves them),
    and values on every position, padding included (the value head runs on all of them)."""
    logp, ref_logp, mask, score = _logps(lengths, T, g)
    rewards = _shaped_reference(logp, ref_logp, mask, score, 0.1)
    return rewards, torch.randn(len(lengths), T, generator=g), mask, gamma, lam


def _token_advantages_reference(rewards, values, mask, gamma, lam):
    """What train.py's advantages() does with the shaped rewards: GAE over tokens, then whitening."""
    rlhf = load_train("ppo_rlhf_math")
    advantages, returns = rlhf.compute_gae(rewards, values, mask, gamma, lam)
    return rlhf.whiten(advantages, mask), returns


def check_token_advantages(token_advantages) -> str:
    """token_advantages(rewards, values, mask, gamma, lam) -> (whitened advantages, returns), each (B, T),
    against compute_gae and whiten."""
    g = _gen(16)
    logp, ref_logp, mask, score = _section2()
    values = torch.tensor([[0.3, 0.4, 0.5, 0.8], [0.1, -0.2, 0.0, 0.0]])
    cases = [("the two completions of section 3, gamma 1, lambda 0.95 (train.py's GAMMA, LAM)",
              (_shaped_reference(logp, ref_logp, mask, score, 0.1), values, mask, 1.0, 0.95)),
             ("values on the padding (the value head runs there too): no bootstrap from them",
              _advantages_case([3, 6, 2], 6, g)),
             ("a one-token response beside longer ones", _advantages_case([1, 5, 3], 5, g)),
             ("gamma 0.9, lambda 0.8: discounting inside a response",
              _advantages_case([4, 6, 6], 6, g, 0.9, 0.8)),
             ("lambda 0: each advantage is its one-step TD error, whitened",
              _advantages_case([5, 2], 5, g, 1.0, 0.0)),
             ("random: 8 responses of 1 to 12 tokens", _advantages_case([12, 1, 7, 3, 12, 9, 5, 2], 12, g))]
    return _run(token_advantages, _token_advantages_reference, cases, ("advantages", "returns"))


# ---------------------------------------------------------------------------------------------
# Every exercise, and the command line
# ---------------------------------------------------------------------------------------------
EXERCISES = {  # notebook -> (the function the student writes, its check), in the notebook's order
    "nb01": [("reward_to_go", check_reward_to_go), ("reinforce_weights", check_reinforce_weights),
             ("reinforce_gradient", check_reinforce_gradient)],
    "nb02": [("td_errors", check_td_errors), ("gae", check_gae),
             ("rollout_advantages", check_rollout_advantages)],
    "nb03": [("objective_slope", check_objective_slope), ("clipped_policy_loss", check_policy_loss),
             ("clipped_value_loss", check_value_loss)],
    "nb04": [("grpo_advantages", check_group_advantages), ("k3_estimate", check_kl_k3),
             ("eos_mask", check_completion_mask), ("dr_grpo_loss", check_dr_grpo_loss)],
    "nb05": [("preference_loss", check_bradley_terry_loss), ("shaped_rewards", check_shape_rewards),
             ("token_advantages", check_token_advantages)],
}


def load_file(path: Path):
    """A .py file of exercise functions, imported by path."""
    spec = importlib.util.spec_from_file_location(f"exercises_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check exercise functions against the scripts' functions.")
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                        help=f"any of {', '.join(EXERCISES)} (default: all)")
    parser.add_argument("--file", type=Path, help="a .py file with your functions, named as in the notebook "
                        "(default: notebooks/solutions/NOTEBOOK.py)")
    args = parser.parse_args(argv)
    unknown = [nb for nb in args.notebooks if nb not in EXERCISES]
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}: choose from {', '.join(EXERCISES)}")
    if args.file and not args.file.is_file():
        parser.error(f"--file {args.file}: no such file")
    all_correct = True
    for nb in args.notebooks or list(EXERCISES):
        path = args.file or Path(__file__).parent / "solutions" / f"{nb}.py"
        module = load_file(path)
        for name, check in EXERCISES[nb]:
            fn = getattr(module, name, None)
            verdict = check(fn) if callable(fn) else f"not defined in {path}"
            all_correct &= verdict == CORRECT
            print(f"{nb} {name}: {verdict}")
    return 0 if all_correct else 1


if __name__ == "__main__":
    sys.exit(main())
