"""`hf-causal-lm` trained by `apt-kernel run` against the Hugging Face `Trainer` (the anchor, run unmodified): the
same tiny Llama (one saved folder, so the same initial weights), the same batches in the same order (the text
data's, from the pipeline's seed, given to `Trainer` as a dataset it reads in sequence), the same steps and the
same optimisation (AdamW 0.9/0.95, weight decay 0.1 on matrices, cosine to 0.1 of the peak without warm-up,
gradient clipping at 1.0, float32). Each run is a fresh process with the same number of torch threads; ours and
the anchor alternate within each round.

Reported: the median step time of each side (per run the median over its steps after the first few; then the
median over rounds), their ratio (goal: ours / anchor <= 1.0), and the two loss curves side by side (from the
same weights and batches they should agree to float noise).

    python bench/bench_hf.py [--rounds 5] [--steps 40] [--threads 2]

The anchor needs `accelerate`, which `peft` (a requirement of `apt-plugin-hf`) already installs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SHAPE = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 128}
DATA = {"max_chars": 200_000, "block_size": 64, "batch_size": 16, "val_fraction": 0.1}
OPTIM = {"learning_rate": 1e-3, "weight_decay": 0.1, "min_lr_ratio": 0.1, "grad_clip": 1.0}
SEED, SKIP = 0, 5  # the first steps (allocation, lazy set-up) are left out of the step times

PIPELINE = """
[pipeline]
name = "bench-hf"
seed = {seed}
output_dir = "{out}"

[data]
use = "text"
path = "{text}"
tokenizer = "{model}"
max_chars = {max_chars}
block_size = {block_size}
batch_size = {batch_size}
val_fraction = {val_fraction}

[model]
use = "hf-causal-lm"
name_or_path = "{model}"

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = {steps}
learning_rate = {learning_rate}
weight_decay = {weight_decay}
min_lr_ratio = {min_lr_ratio}
grad_clip = {grad_clip}
warmup_steps = 0
log_every = 0
eval_batches = 1
export = false
save_checkpoints = false
temp_checkpoint_freq = 0

[[callbacks]]
use = "step-times"
path = "{times}"
"""


def make_model(folder: Path) -> None:
    """A tokenizer trained on the text and a Llama of SHAPE with fresh weights, saved as a hub model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
    bpe.train_from_iterator([TEXT.read_text(encoding="utf-8")[: DATA["max_chars"]]], trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(specials.values()), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **specials)
    fields = {k: v for k, v in SHAPE.items() if k != "model_type"}
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **fields)
    torch.manual_seed(SEED)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def ours(model: Path, work: Path, steps: int, env: dict) -> dict:
    """`apt-kernel run` of the pipeline, timed by bench/plugins/step_times.py."""
    times, out = work / "ours.json", work / "ours-run"
    pipeline = work / "bench-hf.toml"
    pipeline.write_text(PIPELINE.format(seed=SEED, out=out, text=TEXT, model=model, steps=steps, times=times,
                                        **DATA, **OPTIM))
    run = subprocess.run([sys.executable, "-m", "apt_kernel.cli", "run", str(pipeline), "--no-progress",
                          "--overwrite", "--plugins-dir", str(REPO / "bench" / "plugins")],
                         capture_output=True, text=True, env=env, timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"apt-kernel run failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return json.loads(times.read_text())


def anchor(model: Path, work: Path, steps: int, env: dict) -> dict:
    times = work / "anchor.json"
    run = subprocess.run([sys.executable, __file__, "--anchor", str(model), "--steps", str(steps), "--out", str(times)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if run.returncode != 0:
        raise SystemExit(f"the anchor failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return json.loads(times.read_text())


def run_anchor(model: Path, steps: int, out: Path) -> None:
    """The Hugging Face Trainer on the pipeline's batches: the text data module's, in the order ours reads them."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from apt_plugin_lm.data import build_text_data

    data = build_text_data({"path": str(TEXT), "tokenizer": str(model), "bpe_vocab_size": 512, "packing": None,
                            **DATA}, SEED)
    rows = []
    for epoch in range(steps):  # as many epochs as the steps need (one, at these sizes)
        rows += [{"input_ids": ids, "labels": labels, "shift_labels": labels}  # targets already shifted
                 for batch in data.train_batches(epoch)
                 for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)]
        if len(rows) >= steps * DATA["batch_size"]:
            break

    class StepEnds(TrainerCallback):
        ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=DATA["batch_size"],
            learning_rate=OPTIM["learning_rate"], weight_decay=OPTIM["weight_decay"], adam_beta1=0.9,
            adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=OPTIM["grad_clip"], warmup_steps=0,
            lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": OPTIM["min_lr_ratio"]},
            optim="adamw_torch_fused", train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
            eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=SEED, dataloader_num_workers=0,
            remove_unused_columns=False)  # it would drop shift_labels, and the model shift the labels again
        trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), args=args,
                          train_dataset=rows, callbacks=[StepEnds()])
        trainer.remove_callback(PrinterCallback)  # a line printed per step is no part of training
        trainer.train()
    ends = StepEnds.ends
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    out.write_text(json.dumps({"step_seconds": [b - a for a, b in zip(ends, ends[1:], strict=False)],
                               "losses": losses}))


def median_step(run: dict) -> float:
    return statistics.median(run["step_seconds"][SKIP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    parser.add_argument("--anchor", type=Path, help=argparse.SUPPRESS)  # the anchor's own process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor:
        run_anchor(args.anchor, args.steps, args.out)
        return
    if not TEXT.is_file():
        raise SystemExit(f"needs Tiny Shakespeare at {TEXT}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    load = os.getloadavg()[0]  # the cores are shared: say how busy they were
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        make_model(work / "tiny-llama")
        rounds = []
        for number in range(args.rounds):
            sides = ("ours", "anchor") if number % 2 == 0 else ("anchor", "ours")
            results = {side: (ours if side == "ours" else anchor)(work / "tiny-llama", work, args.steps, env)
                       for side in sides}
            rounds.append(results)
            print(f"round {number + 1}: apt-kernel run {median_step(results['ours']) * 1e3:6.1f} ms/step, "
                  f"HF Trainer {median_step(results['anchor']) * 1e3:6.1f} ms/step", flush=True)
    report(rounds, args, (load, os.getloadavg()[0]))


def report(rounds: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> None:
    ours_ms = [median_step(r["ours"]) * 1e3 for r in rounds]
    anchor_ms = [median_step(r["anchor"]) * 1e3 for r in rounds]
    ratio = statistics.median(o / a for o, a in zip(ours_ms, anchor_ms, strict=True))
    shape = ", ".join(f"{k} {v}" for k, v in SHAPE.items() if k != "model_type")
    print(f"\nLlama ({shape}), batch {DATA['batch_size']} x {DATA['block_size']} tokens, {args.steps} steps, "
          f"{args.threads} threads, {len(rounds)} rounds (steps after the first {SKIP}); the machine's load average "
          f"{load[0]:.1f} at the start, {load[1]:.1f} at the end:")
    print(f"  apt-kernel run  median {statistics.median(ours_ms):6.1f} ms/step  (rounds: "
          f"{', '.join(f'{t:.1f}' for t in ours_ms)})")
    print(f"  HF Trainer      median {statistics.median(anchor_ms):6.1f} ms/step  (rounds: "
          f"{', '.join(f'{t:.1f}' for t in anchor_ms)})")
    print(f"  ours / anchor step time: {ratio:.3f} (goal <= 1.0)")
    ours_loss, anchor_loss = rounds[0]["ours"]["losses"], rounds[0]["anchor"]["losses"]
    print("\n  step   apt-kernel run   HF Trainer   difference")
    for step in sorted({1, *range(5, len(ours_loss) + 1, 5)}):
        a, b = ours_loss[step - 1], anchor_loss[step - 1]
        print(f"  {step:4d}   {a:14.4f}   {b:10.4f}   {a - b:+10.4f}")
    differences = [abs(a - b) for a, b in zip(ours_loss, anchor_loss, strict=True)]
    across = [abs(x - y) for r in rounds[1:] for x, y in zip(r["ours"]["losses"], ours_loss, strict=True)]
    print(f"  largest difference over {len(differences)} steps: {max(differences):.4f} (the anchor logs losses "
          f"rounded to 4 decimals); ours between rounds: {max(across, default=0.0):.2g}")


if __name__ == "__main__":
    main()
