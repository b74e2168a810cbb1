"""PPO with GAE (an actor-critic) on LunarLander-v3, or any Gymnasium env with Discrete or Box actions.

    python lunarlander_ppo/train.py                       # trains a lander that lands (a few minutes)
    python lunarlander_ppo/train.py --env-id CartPole-v1 --total-timesteps 100000
    python lunarlander_ppo/train.py --continuous --wind    # LunarLanderContinuous with wind and turbulence
    python lunarlander_ppo/train.py --env-id Taxi-v4       # Discrete observations, one-hot encoded

Each update collects `num_envs x num_steps` transitions with the current policy, estimates advantages
with GAE, then takes several epochs of minibatch gradient steps on the clipped surrogate objective,
a (clipped) value loss and an entropy bonus.

Papers: Schulman et al., "Proximal Policy Optimization Algorithms" (2017), arXiv:1707.06347;
Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation" (2016),
arXiv:1506.02438; Huang et al., "The 37 Implementation Details of PPO" (ICLR blog track, 2022).
Notebooks: notebooks/02_gae.ipynb (compute_gae) and notebooks/03_ppo_clipping.ipynb (ppo_policy_loss).
"""
import argparse
import csv
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

FOLDER = Path(__file__).resolve().parent
SHIPPED_WEIGHTS = FOLDER / "agent.pt"


@dataclass
class Args:
    env_id: str = field(default="LunarLander-v3", metadata={
        "help": "any Gymnasium env with flat Box or Discrete observations and Discrete or flat Box actions"})
    env_kwargs: str = field(default="", metadata={
        "help": "JSON keyword arguments for gym.make, e.g. '{\"is_slippery\": false}' for FrozenLake-v1"})
    continuous: bool = field(default=False, metadata={
        "help": "LunarLander only: continuous engines (Gaussian policy)"})
    wind: bool = field(default=False, metadata={"help": "LunarLander only: turn on wind and turbulence"})
    seed: int = field(default=1, metadata={"help": "seed for python, numpy, torch and the envs"})
    total_timesteps: int = field(default=1_000_000, metadata={
        "help": "environment steps to train for (rounded to whole rollouts of num_envs * num_steps)"})
    num_envs: int = field(default=16, metadata={"help": "parallel environments"})
    num_steps: int = field(default=128, metadata={
        "help": "steps per env per rollout (batch = num_envs * num_steps)"})
    async_envs: bool = field(default=False, metadata={
        "help": "step the envs in subprocesses (AsyncVectorEnv)"})
    learning_rate: float = field(default=2e-3, metadata={
        "help": "Adam learning rate (annealed linearly to 0)"})
    anneal_lr: bool = field(default=True, metadata={"help": "linearly anneal the learning rate"})
    gamma: float = field(default=0.999, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.98, metadata={"help": "GAE lambda (0: TD error, 1: Monte-Carlo)"})
    num_minibatches: int = field(default=8, metadata={"help": "minibatches per epoch"})
    update_epochs: int = field(default=10, metadata={"help": "epochs over each batch"})
    norm_adv: bool = field(default=True, metadata={"help": "normalise advantages per minibatch"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO clip range epsilon"})
    clip_vloss: bool = field(default=True, metadata={
        "help": "clip the value loss as in the PPO paper's code"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    target_kl: float = field(default=0.0, metadata={
        "help": "stop the epochs early when approx_kl exceeds this (0: off)"})
    hidden: int = field(default=64, metadata={"help": "width of the two hidden layers of actor and critic"})
    eval_every: int = field(default=32_768, metadata={"help": "env steps between deterministic evaluations"})
    eval_episodes: int = field(default=20, metadata={"help": "greedy episodes per periodic evaluation"})
    stop_score: float = field(default=math.inf, metadata={
        "help": "stop once a periodic greedy evaluation, confirmed over 100 more episodes, "
                "reaches this mean"})
    out: str = field(default="", metadata={
        "help": "run directory, new or empty (default: the first free one of runs/ppo_<env>_s<seed>, "
                "-2, -3 ...)"})
    save_to: str = field(default="", metadata={
        "help": "also copy the best checkpoint to this .pt file: a new one, or a checkpoint of this script "
                "to replace (e.g. lunarlander_ppo/agent.pt)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (small MLPs run fastest on one)"})
    device: str = field(default="auto", metadata={
        "help": "cpu, cuda, cuda:N or auto (cuda when torch sees a GPU; small MLPs are fast on cpu)"})


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------
def env_kwargs(env_id: str, continuous: bool, wind: bool, extra: str = "") -> dict:
    """gym.make's keyword arguments: LunarLander's two switches, then --env-kwargs (a JSON object)."""
    lander = {"continuous": continuous, "enable_wind": wind} if env_id.startswith("LunarLander") else {}
    return {**lander, **(json.loads(extra) if extra else {})}


def make_env(env_id: str, continuous: bool = False, wind: bool = False, extra: str = "",
             render_mode: str | None = None) -> gym.Env:
    """gym.make, with Discrete observations (a state index: FrozenLake, Taxi, CliffWalking) turned into
    one-hot vectors, so the same MLP reads them: an index is a name, not a quantity (state 7 is not
    "more" than state 6), and one-hot input makes each state's first layer weights its own."""
    env = gym.make(env_id, render_mode=render_mode, **env_kwargs(env_id, continuous, wind, extra))
    space = env.observation_space
    if isinstance(space, gym.spaces.Discrete):
        eye = np.eye(int(space.n), dtype=np.float32)
        one_hot = gym.spaces.Box(0.0, 1.0, (int(space.n),), np.float32)
        env = gym.wrappers.TransformObservation(env, lambda s: eye[int(s) - int(space.start)], one_hot)
    return env


def make_vector_env(args: Args, num_envs: int, asynchronous: bool = False) -> gym.vector.VectorEnv:
    """SAME_STEP autoreset: an env that ends is reset inside the same `step`, its last observation
    handed back in infos["final_obs"]. We need it to bootstrap truncated episodes (see compute_gae)."""
    fns = [lambda: make_env(args.env_id, args.continuous, args.wind, args.env_kwargs)
           for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    vec = (gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode) if asynchronous
           else gym.vector.SyncVectorEnv(fns, autoreset_mode=mode))
    return gym.wrappers.vector.RecordEpisodeStatistics(vec)


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (Huang et al. 2022, detail 2)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(n_in: int, n_out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, n_out), std=out_std))


class Agent(nn.Module):
    """Separate actor and critic MLPs. Discrete actions: a categorical over logits. Box actions: a
    diagonal Gaussian with a state-independent log-std. Sampling and log-probs are written out by hand
    (no torch.distributions object per step: it costs more than the network on a tiny MLP)."""

    def __init__(self, obs_dim: int, action_dim: int, continuous: bool, hidden: int = 64):
        super().__init__()
        self.continuous = continuous
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        self.actor = mlp(obs_dim, action_dim, hidden, out_std=0.01)  # small: start near uniform / mean 0
        if continuous:
            self.log_std = nn.Parameter(torch.zeros(action_dim))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)  # (B,)

    def log_prob_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a|s) and the policy's entropy at s, both (B,)."""
        out = self.actor(obs)
        if self.continuous:
            log_std = self.log_std.expand_as(out)
            z = (actions - out) / log_std.exp()
            log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
            return log_prob, entropy
        log_p = torch.log_softmax(out, dim=-1)  # (B, A)
        return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample (or, greedy, take the mode of) an action; return it with its log-probability."""
        out = self.actor(obs)
        if self.continuous:
            std = self.log_std.exp()
            noise = torch.zeros_like(out) if greedy else torch.randn_like(out)
            actions = out + std * noise
            log_prob = (-0.5 * noise.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            return actions, log_prob
        log_p = torch.log_softmax(out, dim=-1)
        if greedy:
            actions = log_p.argmax(-1)
        else:  # Gumbel-max trick: argmax(log p + Gumbel noise) is a sample from p
            actions = (log_p - torch.empty_like(log_p).exponential_().log()).argmax(-1)
        return actions, log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def build_agent(env: gym.vector.VectorEnv, hidden: int) -> Agent:
    obs_space, act_space = env.single_observation_space, env.single_action_space
    check_spaces(obs_space, act_space)  # a flat Box of observations; Discrete or flat Box actions
    if isinstance(act_space, gym.spaces.Discrete):
        return Agent(int(np.prod(obs_space.shape)), int(act_space.n), continuous=False, hidden=hidden)
    return Agent(int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)), continuous=True, hidden=hidden)


# ---------------------------------------------------------------------------------------------
# The math of PPO
# ---------------------------------------------------------------------------------------------
def compute_gae(rewards, values, next_values, terminations, dones, gamma: float, gae_lambda: float):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), all tensors (T, N).

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)      (TD error)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
    `next_values[t]` is V(s_{t+1}); when step t was truncated (time limit) it is the value of the true
    final observation, so the return is bootstrapped: a time limit is not death. `terminations` cut the
    bootstrap, `dones` (terminated or truncated) cut the recursion at the episode boundary.
    Returns (advantages, returns = advantages + values), the latter the critic's regression target.
    """
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1.0 - terminations[t]) * next_values[t] - values[t]
        next_advantage = delta + gamma * gae_lambda * (1.0 - dones[t]) * next_advantage
        advantages[t] = next_advantage
    return advantages, advantages + values


def ppo_policy_loss(new_logprob, old_logprob, advantages, clip_coef: float):
    """Clipped surrogate (PPO paper eq. 7), as a loss to minimise:
    -E[min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)] with rho = pi_new(a|s) / pi_old(a|s).
    Also returns approx_kl, the k3 estimator E[(rho - 1) - log rho] >= 0 of KL(pi_old || pi_new), and the
    fraction of samples whose ratio left the clip range."""
    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return loss, approx_kl, clipfrac


def ppo_value_loss(new_values, old_values, returns, clip_coef: float, clip: bool = True):
    """0.5 * E[(V - R)^2]; clipped: the new value may not move more than clip_coef from the value at
    collection time, and the larger of the two errors is taken (a pessimistic bound, like the policy's)."""
    unclipped = (new_values - returns).pow(2)
    if not clip:
        return 0.5 * unclipped.mean()
    clipped_values = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (clipped_values - returns).pow(2)).mean()


def explained_variance(pred, target) -> float:
    """1 - Var[target - pred] / Var[target]: 1 is a perfect critic, 0 no better than a constant."""
    var = target.var()
    return float("nan") if var == 0 else float(1.0 - (target - pred).var() / var)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(agent: Agent, env_id: str, episodes: int, seed: int, greedy: bool = True,
             continuous: bool = False, wind: bool = False, num_envs: int = 16,
             extra: str = "") -> list[float]:
    """Return of each of `episodes` episodes, episode i reset with seed + i, run `num_envs` at a time."""
    returns, device = [], next(agent.parameters()).device
    for start in range(0, episodes, num_envs):
        n = min(num_envs, episodes - start)
        env = gym.vector.SyncVectorEnv([lambda: make_env(env_id, continuous, wind, extra) for _ in range(n)],
                                       autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        obs, _ = env.reset(seed=[seed + start + i for i in range(n)])
        totals, alive = np.zeros(n), np.ones(n, dtype=bool)
        while alive.any():
            actions, _ = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device), greedy=greedy)
            actions = to_env_actions(actions, env.single_action_space)
            obs, rewards, term, trunc, _ = env.step(actions)
            totals += rewards * alive
            ended = term | trunc
            alive &= ~ended
            if ended.any():  # DISABLED autoreset: an ended env must be reset before it steps again;
                obs, _ = env.reset(options={"reset_mask": ended})  # its later rewards are masked out
        env.close()
        returns.extend(totals.tolist())
    return returns


def to_env_actions(actions: torch.Tensor, space: gym.Space) -> np.ndarray:
    """Tensor of sampled actions -> what env.step takes (Box actions clipped to their bounds)."""
    actions = actions.cpu().numpy()
    if isinstance(space, gym.spaces.Box):
        return np.clip(actions, space.low, space.high)
    return actions


# ---------------------------------------------------------------------------------------------
# Checkpoints and logs
# ---------------------------------------------------------------------------------------------
def save_checkpoint(agent: Agent, args: Args, path: Path) -> None:
    """A state_dict plus the few facts needed to rebuild the agent (no pickled modules)."""
    state = {k: v.cpu() for k, v in agent.state_dict().items()}  # CPU tensors, whatever trained them
    torch.save({"state_dict": state, "env_id": args.env_id, "continuous": args.continuous,
                "wind": args.wind, "env_kwargs": args.env_kwargs, "hidden": args.hidden}, path)


def load_checkpoint(path) -> tuple[Agent, dict]:
    """Rebuild an agent from a checkpoint; raise ValueError with one readable sentence."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"weights file not found: {path}")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a plain file"
        raise ValueError(f"{path} is {kind}, not a weights file")
    if path.stat().st_size == 0:
        raise ValueError(f"weights file {path} is empty")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
        obs_dim = state["critic.0.weight"].shape[1]
        action_dim = state["actor.4.weight"].shape[0]
        agent = Agent(obs_dim, action_dim, continuous="log_std" in state, hidden=ckpt["hidden"])
        agent.load_state_dict(state)
    except Exception as err:
        raise ValueError(f"cannot read a PPO checkpoint from {path}: {type(err).__name__}") from None
    ckpt.setdefault("env_kwargs", "")  # checkpoints written before --env-kwargs existed
    return agent.eval(), ckpt


def check_fits_env(agent: Agent, ckpt: dict, path) -> None:
    """The env a checkpoint names can be made here (it may need a package) and the agent's networks fit its
    spaces (a checkpoint whose env id was changed, or of a look-alike env); ValueError, one line."""
    obs_space, act_space = check_env(ckpt["env_id"], ckpt["continuous"], ckpt["wind"], ckpt["env_kwargs"])
    n_actions = act_space.shape[0] if isinstance(act_space, gym.spaces.Box) else act_space.n
    env_dims = (obs_space.shape[0], n_actions)
    agent_dims = (agent.critic[0].in_features, agent.actor[-1].out_features)
    if agent_dims != env_dims or agent.continuous != isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"{path} names {ckpt['env_id']}, whose observations and actions are "
                         f"{env_dims[0]} and {env_dims[1]} wide, but its networks take {agent_dims[0]} "
                         f"and give {agent_dims[1]}")


def plot_learning_curve(episodes: list[tuple], evals: list[tuple], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if episodes:
        steps, rets = np.array(episodes).T
        ax.plot(steps, rets, ".", ms=1.5, alpha=0.3, label="training episode return")
        k = min(100, len(rets))
        ax.plot(steps[k - 1:], np.convolve(rets, np.ones(k) / k, mode="valid"), lw=1.5,
                label=f"{k}-episode average")
    if evals:
        ax.plot(*np.array(evals).T, "o-", lw=2, label="greedy evaluation")
    ax.set(xlabel="environment steps", ylabel="return", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(args: Args) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    run_dir = make_run_dir(args)
    writer = SummaryWriter(str(run_dir))
    env = make_vector_env(args, args.num_envs, args.async_envs)
    env.action_space.seed(args.seed)
    device = pick_device(args.device)
    agent = build_agent(env, args.hidden).to(device)
    # fused: fewer tiny CPU ops
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)

    T, N = args.num_steps, args.num_envs
    obs_shape, act_shape = env.single_observation_space.shape, env.single_action_space.shape
    obs_buf = torch.zeros((T, N) + obs_shape, device=device)
    act_buf = torch.zeros((T, N) + act_shape, device=device)
    logp_buf, rew_buf, term_buf, done_buf = (torch.zeros(T, N, device=device) for _ in range(4))
    batch_size = T * N
    minibatch_size = batch_size // args.num_minibatches
    num_updates = max(1, args.total_timesteps // batch_size)

    next_obs = torch.as_tensor(env.reset(seed=args.seed)[0], dtype=torch.float32, device=device)
    episodes, evals, metrics_rows = [], [], []
    best_eval, global_step, next_eval = -math.inf, 0, args.eval_every
    # Where the training time goes (wall-clock seconds; evaluations excluded): env.step, the rest of the
    # rollout (policy forward, sampling, storage), advantages, and the gradient updates. `cpu` is the
    # process CPU time, the fair clock when other jobs share the machine.
    clock = dict.fromkeys(("rollout", "env", "gae", "update", "train", "cpu"), 0.0)
    reached = None
    bar = tqdm(range(1, num_updates + 1), desc=f"PPO {args.env_id}", disable=None)
    for update in bar:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        if args.anneal_lr:  # linear decay to 0 over the run (Huang et al. 2022, detail 4)
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - (update - 1) / num_updates)

        # 1. Rollout: T steps in N envs with the current policy.
        final_obs = {}  # (t, i) -> true last observation of a truncated episode, for bootstrapping
        for t in range(T):
            obs_buf[t] = next_obs
            actions, log_prob = agent.act(next_obs)
            env_tick = time.perf_counter()
            obs, reward, term, trunc, info = env.step(to_env_actions(actions, env.single_action_space))
            clock["env"] += time.perf_counter() - env_tick
            act_buf[t], logp_buf[t] = actions, log_prob
            rew_buf[t] = torch.from_numpy(reward)
            term_buf[t] = torch.from_numpy(term)
            done_buf[t] = torch.from_numpy(term | trunc)
            for i in np.flatnonzero(trunc & ~term):
                final_obs[(t, i)] = info["final_obs"][i]
            if "_episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    episodes.append((global_step + (t + 1) * N, float(info["episode"]["r"][i]),
                                     int(info["episode"]["l"][i])))
            next_obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        global_step += batch_size
        rollout_end = time.perf_counter()
        clock["rollout"] += rollout_end - tick

        # 2. Advantages. V(s_{t+1}) is the next row's value, except after the last step and on truncation.
        with torch.no_grad():
            values = agent.value(obs_buf.reshape((T * N,) + obs_shape)).reshape(T, N)
            next_values = torch.cat([values[1:], agent.value(next_obs).unsqueeze(0)])
            if final_obs:
                keys = list(final_obs)
                last = np.stack([final_obs[k] for k in keys])
                bootstrap = agent.value(torch.as_tensor(last, dtype=torch.float32, device=device))
                for (t, i), v in zip(keys, bootstrap):
                    next_values[t, i] = v
            advantages, returns = compute_gae(rew_buf, values, next_values, term_buf, done_buf, args.gamma,
                                              args.gae_lambda)
        update_start = time.perf_counter()
        clock["gae"] += update_start - rollout_end

        # 3. Update: epochs of shuffled minibatches.
        b_obs, b_act = obs_buf.reshape((-1,) + obs_shape), act_buf.reshape((-1,) + act_shape)
        b_logp, b_adv, b_ret, b_val = (logp_buf.reshape(-1), advantages.reshape(-1), returns.reshape(-1),
                                       values.reshape(-1))
        stats = {"approx_kl": [], "clipfrac": [], "policy_loss": [], "value_loss": [], "entropy": []}
        for _ in range(args.update_epochs):
            perm = torch.randperm(batch_size)
            for start in range(0, batch_size, minibatch_size):
                idx = perm[start:start + minibatch_size]
                new_logp, entropy = agent.log_prob_entropy(b_obs[idx], b_act[idx])
                mb_adv = b_adv[idx]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss, approx_kl, clipfrac = ppo_policy_loss(new_logp, b_logp[idx], mb_adv, args.clip_coef)
                v_loss = ppo_value_loss(agent.value(b_obs[idx]), b_val[idx], b_ret[idx], args.clip_coef,
                                        args.clip_vloss)
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                for key, value in zip(stats, (approx_kl, clipfrac, pg_loss, v_loss, entropy.mean())):
                    stats[key].append(float(value.detach()))
            if args.target_kl and stats["approx_kl"][-1] > args.target_kl:
                break
        clock["update"] += time.perf_counter() - update_start
        clock["train"] += time.perf_counter() - tick
        clock["cpu"] += time.process_time() - cpu_tick
        train_seconds = clock["train"]

        # 4. Logs, and a greedy evaluation every `eval_every` steps (not counted in train_seconds).
        recent = [r for _, r, _ in episodes[-100:]]
        row = {"update": update, "global_step": global_step, "train_seconds": round(train_seconds, 3),
               "sps": int(global_step / train_seconds),
               "episodic_return": np.mean(recent) if recent else float("nan"),
               "explained_variance": explained_variance(b_val, b_ret), "lr": optimizer.param_groups[0]["lr"],
               **{k: float(np.mean(v)) for k, v in stats.items()}, "eval_mean_return": float("nan"),
               "cpu_seconds": round(clock["cpu"], 3), "env_seconds": round(clock["env"], 3),
               "policy_seconds": round(clock["rollout"] - clock["env"], 3),
               "gae_seconds": round(clock["gae"], 3),
               "update_seconds": round(clock["update"], 3)}
        if global_step >= next_eval or update == num_updates:
            next_eval += args.eval_every
            eval_returns = evaluate(agent, args.env_id, args.eval_episodes, seed=10_000,
                                    continuous=args.continuous, wind=args.wind, extra=args.env_kwargs)
            row["eval_mean_return"] = float(np.mean(eval_returns))
            evals.append((global_step, row["eval_mean_return"]))
            writer.add_scalar("eval/mean_return", row["eval_mean_return"], global_step)
            if row["eval_mean_return"] > best_eval:
                best_eval = row["eval_mean_return"]
                save_checkpoint(agent, args, run_dir / "best.pt")
            tqdm.write(f"step {global_step:8d}  train {train_seconds:6.1f}s  sps {row['sps']:6d}  "
                       f"return(100) {row['episodic_return']:7.1f}  "
                       f"greedy eval {row['eval_mean_return']:7.1f}")
        metrics_rows.append(row)
        for key in ("episodic_return", "sps"):
            writer.add_scalar(f"charts/{key}", row[key], global_step)
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance"):
            writer.add_scalar(f"losses/{key}", row[key], global_step)
        bar.set_postfix(ret=f"{row['episodic_return']:.0f}", sps=row["sps"])
        if row["eval_mean_return"] >= args.stop_score:  # confirm on 100 other episodes before stopping
            confirm = evaluate(agent, args.env_id, 100, seed=20_000, continuous=args.continuous,
                               wind=args.wind, extra=args.env_kwargs)
            tqdm.write(f"confirmation over 100 greedy episodes: {np.mean(confirm):.1f}")
            if np.mean(confirm) >= args.stop_score:
                reached = {"global_step": global_step, "train_seconds": train_seconds,
                           "cpu_seconds": clock["cpu"], "confirm_mean": float(np.mean(confirm))}
                break
    bar.close()
    env.close()
    writer.close()

    save_checkpoint(agent, args, run_dir / "final.pt")
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        csv_writer = csv.DictWriter(fh, fieldnames=list(metrics_rows[0]))
        csv_writer.writeheader()
        csv_writer.writerows(metrics_rows)
    plot_learning_curve([(s, r) for s, r, _ in episodes], evals, f"PPO on {args.env_id} (seed {args.seed})",
                        run_dir / "learning_curve.png")
    if args.save_to:
        target = Path(args.save_to)
        if target.exists():
            print(f"replacing {target} (a lunarlander_ppo checkpoint) as asked by --save-to", file=sys.stderr)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((run_dir / "best.pt").read_bytes())
    print(f"trained {global_step} steps in {train_seconds:.1f} s "
          f"({int(global_step / train_seconds)} steps/s); "
          f"best greedy eval {best_eval:.1f}; outputs in {run_dir}")
    print("time split: " + ", ".join(f"{k.removesuffix('_seconds')} {100 * row[k] / train_seconds:.0f}%"
                                     for k in ("env_seconds", "policy_seconds", "gae_seconds",
                                               "update_seconds")))
    return {"run_dir": str(run_dir), "global_step": global_step, "train_seconds": train_seconds,
            "best_eval": best_eval, "evals": evals, "reached": reached}


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


# ---------------------------------------------------------------------------------------------
# Plumbing: the command line, and every flag checked before anything runs
# ---------------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default, except the empty and off ones."""

    def _get_help_string(self, action):
        quiet = action.default is None or action.default is False or action.default == ""
        return action.help if quiet else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the defaults in `--help`, and every error as one line `error: ...` (exit status 2)."""

    def __init__(self, description: str):
        super().__init__(description=description, formatter_class=HelpFormatter)

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None) -> Args:
    """argparse built from the dataclass: `--flag` for booleans that default to off, `--flag false` otherwise.
    Every flag is checked here, before anything is trained: an error is one line that names the flag."""
    parser = Parser("PPO with GAE on LunarLander-v3 (or any Gymnasium env).")
    for f in dataclasses.fields(Args):
        name = "--" + f.name.replace("_", "-")
        if f.type is bool and not f.default:
            parser.add_argument(name, action="store_true", help=f.metadata["help"])
        elif f.type is bool:
            parser.add_argument(name, type=str2bool, nargs="?", const=True, default=True,
                                help=f.metadata["help"])
        else:
            parser.add_argument(name, type=f.type, default=f.default, help=f.metadata["help"])
    args = Args(**vars(parser.parse_args(argv)))
    positive = ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "hidden",
                "eval_every", "eval_episodes", "threads", "learning_rate")
    for name in positive:
        if not 0 < getattr(args, name) < math.inf:
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        parser.error(f"--num-minibatches must divide num_envs * num_steps = {batch}")
    if not (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        parser.error("--gamma and --gae-lambda must be in [0, 1]")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in 0 .. 2**32 - 1 (numpy's range), got {args.seed}")
    if (args.continuous or args.wind) and not args.env_id.startswith("LunarLander"):
        parser.error("--continuous and --wind apply to LunarLander only")
    try:
        kwargs = json.loads(args.env_kwargs) if args.env_kwargs else {}
    except json.JSONDecodeError as err:
        parser.error(f"--env-kwargs {args.env_kwargs!r} is not JSON: {err.msg}")
    if not isinstance(kwargs, dict):
        parser.error(f"--env-kwargs {args.env_kwargs!r} must be a JSON object, "
                     "like '{\"is_slippery\": false}'")
    try:
        check_env(args.env_id, args.continuous, args.wind, args.env_kwargs)
    except ValueError as err:
        flag = "--env-kwargs" if args.env_kwargs and "unexpected keyword" in str(err) else "--env-id"
        parser.error(f"{flag} {err}")
    try:
        pick_device(args.device)
        check_outputs(args)
    except ValueError as err:
        parser.error(str(err))
    if args.total_timesteps % batch:
        updates = max(1, args.total_timesteps // batch)
        print(f"--total-timesteps {args.total_timesteps} is not a whole number of rollouts of {batch} steps: "
              f"training for {updates} x {batch} = {updates * batch} steps", file=sys.stderr)
    return args


def check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    """The spaces the agent's MLPs take (after make_env's one-hot encoding of Discrete observations): a flat
    Box of observations, Discrete or flat Box actions. ValueError, one line, for any other."""
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
        raise ValueError(f"observations are {obs_space}; this PPO takes a flat Box (a vector of numbers) or "
                         "Discrete (one-hot encoded)")
    if not (isinstance(act_space, gym.spaces.Discrete) or
            (isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1)):
        raise ValueError(f"actions are {act_space}; this PPO takes Discrete or a flat Box")


def check_env(env_id: str, continuous: bool, wind: bool, extra: str = "") -> tuple[gym.Space, gym.Space]:
    """Make the env once, to see that it exists, that what it needs is installed and that its spaces fit.
    Returns (observation space, action space) as the agent sees them; ValueError, one line that starts
    with the env id."""
    try:
        env = make_env(env_id, continuous, wind, extra)
    except Exception as err:  # unknown or deprecated ids, missing packages (DependencyNotInstalled names pip)
        if isinstance(err, ModuleNotFoundError) and err.name:  # a bare import error: say what to install
            raise ValueError(f"{env_id} needs {err.name}, not installed: pip install {err.name}") from None
        raise ValueError(f"{env_id}: {' '.join(str(err).split())}") from None
    try:
        check_spaces(env.observation_space, env.action_space)
        return env.observation_space, env.action_space
    except ValueError as err:
        raise ValueError(f"{env_id}: {err}") from None
    finally:
        env.close()


def can_write_in(path: Path) -> bool:
    """Whether files can be made in the directory `path`, which may not exist yet: the nearest existing one
    of it and its parents must be a directory in which a probe directory can be made (and removed at once,
    so that the check leaves nothing behind)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return False
    try:
        tempfile.TemporaryDirectory(dir=path).cleanup()
    except OSError:
        return False
    return True


def pick_device(name: str) -> torch.device:
    """--device: auto is cuda when torch sees a GPU, else cpu; ValueError (one line) for one it cannot use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {name}: torch sees no such CUDA device; pass --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return device


def check_outputs(args: Args) -> Path:
    """Check --out and --save-to before anything runs; return the run directory (not created yet).
    A run directory is new or empty; --save-to is a new .pt file or a checkpoint of this script (replaced).
    Anything else is never overwritten: ValueError, one line that names the flag."""
    if args.out:
        run_dir = Path(args.out)
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"--out {run_dir} exists and is not a directory; pass another --out")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ValueError(f"--out {run_dir} exists and is not empty; "
                             "pass another --out (runs are never overwritten)")
    else:  # the first free one of runs/ppo_<env>_s<seed>, ...-2, ...-3
        base = run_dir = Path(f"runs/ppo_{args.env_id}_s{args.seed}")
        n = 2
        while run_dir.exists() and not (run_dir.is_dir() and not any(run_dir.iterdir())):
            run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    if not can_write_in(run_dir):
        raise ValueError(f"--out {run_dir} cannot be created (pass another --out)")
    if args.save_to:
        target = Path(args.save_to)
        if target.suffix != ".pt":
            raise ValueError(f"--save-to {target} must be a .pt file")
        if target.is_dir():
            raise ValueError(f"--save-to {target} is a directory; name a .pt file")
        if target.exists():
            try:
                load_checkpoint(target)
            except ValueError:
                raise ValueError(f"--save-to {target} exists and is not a lunarlander_ppo checkpoint; "
                                 "it is never overwritten") from None
        if not can_write_in(target.parent):
            raise ValueError(f"--save-to {target} cannot be created (its folder cannot be made or written)")
    return run_dir


def make_run_dir(args: Args) -> Path:
    """Create the run directory once the outputs are checked (a failed check leaves no directory behind)."""
    run_dir = check_outputs(args)  # again: train() may be called without parse_args
    if not args.out:
        print(f"writing the run to {run_dir} (pass --out to choose another directory)", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


if __name__ == "__main__":
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    sys.exit(main())
