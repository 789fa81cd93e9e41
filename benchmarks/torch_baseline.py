"""The SEAL inner loop written with PyTorch + transformers + PEFT: the baseline the speed benchmarks compare with.

It runs in a child process (:func:`run`): seal_env preloads OpenBLAS into the global symbol namespace, which would
take over torch's BLAS calls in the same process; a fresh process with ``SEAL_ENV_BLAS=none`` lets torch use its
own MKL, as a user of PyTorch + PEFT would. The parent tokenizes everything (training sequences, quiz prompts,
gold answers), so both sides train and quiz on the same token ids; the child imports no mlx.

Same weights (the mlx model folder's safetensors), LoRA, AdamW, linear decay and data order per seed as the env.

    python -m benchmarks.torch_baseline JOB.json OUT.json      # what run() starts; needs the torch extra
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np


def run(job: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run ``job`` (see :func:`main`) in a fresh Python process without seal_env's OpenBLAS; its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        with open(job_path, "w") as f:
            json.dump(job, f)
        env = {**os.environ, "SEAL_ENV_BLAS": "none"}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-m", "benchmarks.torch_baseline", job_path, out_path], check=True, env=env)
        with open(out_path) as f:
            return json.load(f)


def quiz_job(tokenizer: Any, article: Any) -> dict[str, Any]:
    """The quiz part of a job: answer prompts and gold answers as token ids (as the env builds them)."""
    from seal_env.prompts import answer_prompt, uses_chat

    prompts = [
        tokenizer.encode(
            answer_prompt(article.title, q.question, tokenizer), add_special_tokens=not uses_chat(tokenizer)
        )
        for q in article.questions
    ]
    answers = [tokenizer.encode(q.answer.strip(), add_special_tokens=False) for q in article.questions]
    return {"prompts": prompts, "answers": answers, "pad": tokenizer.eos_token_id}


def peft_model(folder: str, settings: dict[str, Any]) -> Any:
    """transformers' LlamaForCausalLM with the mlx folder's fp32 weights, wrapped by PEFT with the env's LoRA."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig.from_dict(json.loads(open(os.path.join(folder, "config.json")).read())))
    missing, unexpected = model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=False)
    if unexpected or not all("lm_head" in k or "rotary" in k for k in missing):
        raise ValueError(f"weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.float()
    lora = LoraConfig(
        r=settings["lora_rank"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
        target_modules=list(settings["lora_modules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _reset(model: Any) -> None:
    import torch

    for name, p in model.named_parameters():  # PEFT's init: A kaiming-uniform, B = 0
        if "lora_A" in name:
            torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        elif "lora_B" in name:
            torch.nn.init.zeros_(p)


def _step(model: Any, opt: Any, ids: list[int], start: int) -> None:
    import torch

    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, : max(start, 1)] = -100
    model(input_ids=x, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def rewards(
    model: Any, settings: dict[str, Any], datas: list[list[list[Any]]], seeds: list[int], quiz: dict[str, Any]
) -> list[dict[str, float]]:
    """One inner loop per (data, seed), one after another: fresh LoRA, train, greedy answers, gold log-likelihoods."""
    import torch

    pad, runs = quiz["pad"], []
    for data, seed in zip(datas, seeds, strict=True):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        _reset(model)
        t_reset = time.perf_counter() - t0
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
        total = settings["epochs"] * len(data)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, total=total: max(0.0, 1 - s / max(total, 1)))
        model.train()
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for _ in range(settings["epochs"] if data else 0):
            for j in rng.permutation(len(data)):
                _step(model, opt, *data[j])
                sched.step()
        t_train = time.perf_counter() - t0
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            enc = quiz["prompts"]
            width = max(map(len, enc))
            x = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
            attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
            if settings["answer_max_tokens"] > 0:
                model.generate(
                    input_ids=x,
                    attention_mask=attn,
                    max_new_tokens=settings["answer_max_tokens"],
                    do_sample=False,
                    pad_token_id=pad,
                )
            rows = [e + a for e, a in zip(enc, quiz["answers"], strict=True)]
            width = max(map(len, rows))
            x = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
            torch.log_softmax(model(input_ids=x).logits.float(), -1)
        t_eval = time.perf_counter() - t0
        runs.append(
            {
                "seconds_reset": t_reset,
                "seconds_train": t_train,
                "seconds_eval": t_eval,
                "seconds_total": t_reset + t_train + t_eval,
                "train_steps": total,
            }
        )
    return runs


def step_seconds(
    model: Any, settings: dict[str, Any], data: list[list[Any]], epochs: int = 1, reps: int = 2
) -> dict[str, float]:
    """Best wall and CPU seconds per training step over ``reps`` timed passes (after one warm-up epoch)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    model.train()

    def epoch() -> None:
        for ids, start in data:
            _step(model, opt, ids, start)

    epoch()
    best = best_cpu = math.inf
    for _ in range(reps):
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            epoch()
        best = min(best, (time.perf_counter() - t) / (epochs * len(data)))
        best_cpu = min(best_cpu, (time.process_time() - cpu) / (epochs * len(data)))
    return {"seconds_per_step": best, "cpu_seconds_per_step": best_cpu}


def main(argv: list[str] | None = None) -> None:
    """``JOB OUT``: JOB is ``{"folder", "settings", "threads", "kind": "rewards"|"steps", ...}``.

    ``rewards`` also needs ``datas`` (training sequences as ``[ids, loss start]``), ``seeds`` and ``quiz``
    (:func:`quiz_job`); ``steps`` needs ``data`` and optional ``epochs``, ``reps``, ``repeats``.
    """
    import torch

    job_path, out_path = (argv or sys.argv[1:])[:2]
    with open(job_path) as f:
        job = json.load(f)
    torch.set_num_threads(int(job.get("threads") or os.cpu_count() or 1))
    model = peft_model(job["folder"], job["settings"])
    if job["kind"] == "rewards":
        out: dict[str, Any] = {"runs": rewards(model, job["settings"], job["datas"], job["seeds"], job["quiz"])}
    elif job["kind"] == "steps":
        out = {
            "steps": [
                step_seconds(model, job["settings"], job["data"], job.get("epochs", 1), job.get("reps", 2))
                for _ in range(job.get("repeats", 1))
            ]
        }
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")
    out["torch"] = torch.__version__
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
