"""Two real processes of the language-model scripts, with the command the top-level README gives.

`accelerate launch --multi_gpu --num_processes 2` starts two processes, on a machine without CUDA too (they
talk over gloo); `--cpu` instead would start one. Each run is one step on a tiny random model, and the test
checks that two processes ran (each says its rank and the world size), that both finished, that one of them
wrote the run directory, that the step updated the adapter and logged a finite entropy, and that the
trainable weights of the two processes are equal afterwards (DistributedDataParallel averaged the
gradients). The ranks and weights come from a sitecustomize module the test puts on PYTHONPATH: at exit it
hashes the trainable weights of every model `Accelerator.prepare` wrapped. The scripts carry no hook of
their own.
"""
import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_script, save_tiny_models

LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]  # as in the README
ACCELERATE = Path(sys.executable).parent / "accelerate"  # the launcher installed beside this Python

SITECUSTOMIZE = '''
import atexit, hashlib, os, sys
if "RANK" in os.environ:  # a process the launcher started, not the launcher
    import accelerate
    prepared, prepare = [], accelerate.Accelerator.prepare

    def recording_prepare(self, *objects, **kwargs):
        result = prepare(self, *objects, **kwargs)
        prepared.append((self, result if isinstance(result, tuple) else (result,)))
        return result
    accelerate.Accelerator.prepare = recording_prepare

    @atexit.register
    def report():
        import torch
        digest = hashlib.sha256()
        for accelerator, objects in prepared:
            for model in (o for o in objects if isinstance(o, torch.nn.Module)):
                for name, p in accelerator.unwrap_model(model).named_parameters():
                    if p.requires_grad:
                        digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
        if prepared:
            print(f"rank {prepared[0][0].process_index} of {prepared[0][0].num_processes}: trainable weights "
                  f"{digest.hexdigest()}", file=sys.stderr)
'''

pytestmark = pytest.mark.skipif(not ACCELERATE.is_file(), reason="no accelerate launcher beside this Python")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random LM, an SFT adapter of it and a character reward model (ppo_rlhf_math's PPO stage reads
    both), and the sitecustomize module."""
    root = tmp_path_factory.mktemp("multiprocess")
    save_tiny_models(root)
    rlhf = load_script("ppo_rlhf_math")
    base, _ = rlhf.load_base(str(root / "lm"))
    rlhf.save_adapter(rlhf.add_lora(base), root / "sft")
    rlhf.RewardModel(dim=16, layers=1).save(root / "reward")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return root


def launch(tiny: Path, script: str, flags: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tiny / "site"), os.environ.get(
        "PYTHONPATH")])), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    command = [str(ACCELERATE), *LAUNCH[1:], str(REPO / script), *flags]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr, result.stderr  # e.g. transformers' is_gradient_checkpointing one
    return result


def ranks(stderr: str) -> dict[int, str]:
    """{rank: hash of its trainable weights}, from the sitecustomize lines; each says a world size of 2."""
    found = re.findall(r"^rank (\d+) of (\d+): trainable weights ([0-9a-f]+)$", stderr, re.MULTILINE)
    assert {world for _, world, _ in found} == {"2"}, stderr
    return {int(rank): digest for rank, _, digest in found}


def lora_b_moved(adapter: Path) -> bool:
    from safetensors.torch import load_file
    return any(w.abs().sum() > 0 for name, w in load_file(adapter / "adapter_model.safetensors").items()
               if "lora_B" in name)  # LoRA B starts at zero


def one_writer(run_dir: Path) -> list[dict]:
    """metrics.csv rows and TensorBoard files of one process only."""
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_readme_gives_the_command_these_tests_run():
    readme = (REPO / "README.md").read_text()
    for script in ("grpo_lm/train.py", "ppo_rlhf_math/train.py --stage ppo"):
        assert f"{' '.join(LAUNCH)} {script}" in readme


def test_grpo_two_processes(tiny, tmp_path):
    run_dir = tmp_path / "run"
    # the warm-up moves the adapter away from the base, so the KL to the base has a gradient
    result = launch(tiny, "grpo_lm/train.py", [
        "--model", str(tiny / "lm"), "--beta", "0.1", "--steps", "1", "--prompts-per-step", "2",
        "--num-generations", "2", "--max-completion-length", "48", "--warmup-examples", "8",
        "--eval-size", "2", "--out", str(run_dir)], cwd=tmp_path)
    digests = ranks(result.stderr)
    assert sorted(digests) == [0, 1] and digests[0] == digests[1], result.stderr
    rows = one_writer(run_dir)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["entropy"])) and float(rows[0]["kl"]) > 0
    assert lora_b_moved(run_dir / "adapter") and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_ppo_stage_two_processes(tiny, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(tiny, "ppo_rlhf_math/train.py", [
        "--stage", "ppo", "--model", str(tiny / "lm"), "--sft-adapter", str(tiny / "sft"), "--reward-dir",
        str(tiny / "reward"), "--ppo-steps", "1", "--rollout-size", "4", "--minibatch-size", "2",
        "--eval-size", "2", "--max-new-tokens", "6", "--batch-size", "4", "--ppo-lora-layers", "1",
        "--threads", "1", "--out", str(run_dir)], cwd=tmp_path)
    assert "PPO: 2 processes on " in result.stdout, result.stdout
    digests = ranks(result.stderr)
    assert sorted(digests) == [0, 1] and digests[0] == digests[1], result.stderr
    rows = one_writer(run_dir / "ppo")
    assert len(rows) == 1 and math.isfinite(float(rows[0]["entropy"]))
    assert lora_b_moved(run_dir / "ppo" / "adapter") and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
