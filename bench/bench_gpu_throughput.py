"""Issue 14, goals 1-4: training throughput of the APT model on a GPU, side by side in one run.

Each line runs in its own process (a fresh CUDA context, so compile caches and peak memory are its
own), in this order, at the GPT-2-small shape (vocab 50304, T 1024, d 768, 12 heads, 12 layers, bf16
autocast, torch.compile, AdamW fused, grad clip 1.0, random tokens):

    gpt2 b16        a plain nanoGPT-shaped GPT-2 in a hand-written loop (the reference)
    apt sdpa b16    APTLargeModel, attention = "sdpa", in the same loop           goal 1: >= 1.00x gpt2
    apt auto b16    the same with attention = "autopoietic"                        goal 2: <= 1.3x the step
    kernel sdpa b16 `apt-kernel run` of the same model (apt-trainer)               goal 3: >= 0.98x, memory <= 1.05x
    gpt2 b32, apt sdpa b32                                                         goal 4: MFU >= 40%

A line's tok/s is the median over ``--rounds`` windows of ``--steps`` steps after the warm-up (the
kernel line: the trainer's own per-interval rates). MFU counts 6 FLOPs per weight and 12 * L * d * T
per token for attention, over the device's dense bf16 peak.

    python bench/bench_gpu_throughput.py [--rounds 5] [--steps 10] [--json out.json]
    python bench/bench_gpu_throughput.py --small     # tiny shapes, no compile: checks the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINES = [("gpt2", "sdpa", 16), ("apt", "sdpa", 16), ("apt", "autopoietic", 16), ("kernel", "sdpa", 16),
         ("gpt2", "sdpa", 32), ("apt", "sdpa", 32)]


def shape(small: bool) -> dict:
    if small:
        return {"vocab": 512, "seq": 64, "d": 64, "heads": 4, "layers": 2}
    return {"vocab": 50304, "seq": 1024, "d": 768, "heads": 12, "layers": 12}


def reference_gpt2(s: dict):
    """GPT-2 as nanoGPT writes it: one qkv projection, causal flash SDPA, GELU MLP, tied embeddings."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = s["d"]
            self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, s["heads"], C // s["heads"]).transpose(1, 2)
                       for t in self.qkv(self.ln1(x)).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.proj(y)
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(s["vocab"], s["d"]), nn.Embedding(s["seq"], s["d"])
            self.blocks = nn.ModuleList(Block() for _ in range(s["layers"]))
            self.ln_f, self.head = nn.LayerNorm(s["d"]), nn.Linear(s["d"], s["vocab"], bias=False)
            self.head.weight = self.wte.weight
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

        def flops_per_token(self, seq: int) -> float:
            weights = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
            return 6.0 * weights + 12.0 * s["layers"] * s["d"] * seq

    return GPT()


def apt_model(s: dict, attention: str):
    from apt_plugin_lm.model import APTConfig, APTLargeModel

    return APTLargeModel(APTConfig(vocab_size=s["vocab"], d_model=s["d"], num_heads=s["heads"], num_layers=s["layers"],
                                   d_ff=4 * s["d"], max_seq_len=s["seq"], attention=attention))


def peak_flops() -> float | None:
    import torch

    from apt_plugin_trainer.progress import PEAK_BF16_FLOPS

    if not torch.cuda.is_available():
        return None
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name()), None)


def raw_loop(args, model) -> dict:
    """Forward, loss, backward, clip, fused AdamW: what a hand-written compiled training loop does."""
    import torch
    from torch.nn import functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = shape(args.small)
    model.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=6e-4, fused=device == "cuda")
    step_model = model if args.small else torch.compile(model)
    generator = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, s["vocab"], (args.batch, s["seq"] + 1), generator=generator) for _ in range(8)]
    if device == "cuda":
        pool = [b.pin_memory() for b in pool]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(i: int):
        batch = pool[i % len(pool)].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = step_model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(args.warmup):
        step(i)
    rates = []
    for _ in range(args.rounds):
        sync()
        start = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        sync()
        rates.append(args.steps * args.batch * s["seq"] / (time.perf_counter() - start))
    return {"tok_s": statistics.median(rates), "loss": float(loss),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            "flops_per_token": model.flops_per_token(s["seq"])}


def kernel_run(args) -> dict:
    """The same model through `apt-kernel run` and apt-trainer, on the random-tokens data plugin."""
    import torch

    s = shape(args.small)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(tempfile.mkdtemp())
    (out / "bench.toml").write_text(f"""
[pipeline]
name = "gpu-throughput"
seed = 0
output_dir = "{out / 'run'}"
[data]
use = "random-tokens"
batch_size = {args.batch}
block_size = {s["seq"]}
vocab_size = {s["vocab"]}
[model]
use = "apt-lm"
d_model = {s["d"]}
num_heads = {s["heads"]}
num_layers = {s["layers"]}
d_ff = {4 * s["d"]}
attention = "{args.attention}"
[loss]
use = "lm-cross-entropy"
[trainer]
use = "apt-trainer"
device = "{device}"
precision = "bf16"
compile = {"false" if args.small else "true"}
learning_rate = 6e-4
max_steps = {args.warmup + args.rounds * args.steps}
log_every = {args.steps}
eval_every = 0
save_checkpoints = false
temp_checkpoint_freq = 0
export = false
""")
    proc = subprocess.run([sys.executable, "-m", "apt_kernel.cli", "run", str(out / "bench.toml"), "--no-progress",
                           "--plugins-dir", str(HERE / "plugins")], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise SystemExit(f"apt-kernel run failed ({proc.returncode}):\n{text[-3000:]}")
    rates = [(int(step), float(rate.replace(",", "")))
             for step, rate in re.findall(r"step (\d+): loss [\d.]+, ([\d,]+) tok/s", text)]
    timed = [rate for step, rate in rates if step > args.warmup]
    peak = re.search(r"peak GPU memory\s+([\d.]+) GiB", text)
    with torch.device("meta"):  # only its shape is needed: no 124M weights allocated for one number
        flops = apt_model(s, args.attention).flops_per_token(s["seq"])
    return {"tok_s": statistics.median(timed), "intervals": rates, "peak_gib": float(peak[1]) if peak else None,
            "flops_per_token": flops}


def one(args) -> None:
    s = shape(args.small)
    if args.one == "kernel":
        result = kernel_run(args)
    else:
        model = reference_gpt2(s) if args.one == "gpt2" else apt_model(s, args.attention)
        result = raw_loop(args, model)
    peak = peak_flops()
    result["mfu"] = result["tok_s"] * result["flops_per_token"] / peak if peak else None
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes, no compile (a CPU check of the script)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per line")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=["gpt2", "apt", "kernel"], help=argparse.SUPPRESS)
    parser.add_argument("--attention", default="sdpa", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    results = {}
    for mode, attention, batch in LINES:
        name = f"{mode} {attention} b{batch}"
        command = [sys.executable, __file__, "--one", mode, "--attention", attention, "--batch", str(batch),
                   "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--small"] if args.small else []
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            results[name] = json.loads(found[-1][7:]) if found else {"error": (proc.stdout + proc.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"over {args.timeout} s"}
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        line = results[name]
        if "error" in line:
            print(f"{name:18} error: {line['error']}", flush=True)
            continue
        mfu = f"{line['mfu']:.1%}" if line.get("mfu") else "-"
        peak = f"{line['peak_gib']:.2f} GiB" if line.get("peak_gib") else "-"
        print(f"{name:18} {line['tok_s']:>12,.0f} tok/s   MFU {mfu:>6}   peak {peak:>10}   ({line['wall_s']} s)",
              flush=True)

    def ratio(a: str, b: str, key: str = "tok_s") -> float | None:
        x, y = results.get(a, {}).get(key), results.get(b, {}).get(key)
        return x / y if x and y else None

    goals = [("1: apt sdpa / gpt2 tok/s (b16)", ratio("apt sdpa b16", "gpt2 sdpa b16"), ">= 1.00"),
             ("2: autopoietic / sdpa step time", ratio("apt sdpa b16", "apt autopoietic b16"), "<= 1.30"),
             ("3: kernel / raw apt tok/s", ratio("kernel sdpa b16", "apt sdpa b16"), ">= 0.98"),
             ("3: kernel / raw apt peak memory", ratio("kernel sdpa b16", "apt sdpa b16", "peak_gib"), "<= 1.05"),
             ("4: MFU apt sdpa b32", results.get("apt sdpa b32", {}).get("mfu"), ">= 0.40"),
             ("4: MFU gpt2 b32 (beside it)", results.get("gpt2 sdpa b32", {}).get("mfu"), "")]
    for label, value, goal in goals:
        print(f"goal {label:34} {'-' if value is None else f'{value:.3f}':>7}   {goal}")
    if args.json:
        args.json.write_text(json.dumps({"lines": results, "goals": {g[0]: g[1] for g in goals}}, indent=1))


if __name__ == "__main__":
    main()
