"""Training-step time of the APT model with autopoietic attention vs plain SDPA attention.

Same model size, same batch, T = 256, forward + backward + AdamW step. The two modes alternate
within each round so drift on the machine hits both; the ratio is the median over rounds of the
per-round ratios. The gate is set away from 0 so the refinement does real work.

    python bench/bench_attention.py [--device cpu|cuda] [--rounds 7] [--precision fp32|bf16] [--compile]

--compile compiles the autopoietic model only (torch.compile; the first steps, which compile, are the
warm-up): on CPU, Inductor fuses the refinement's elementwise work while SDPA is fastest eager, so each
side runs as it runs fastest. --compile-sdpa compiles the SDPA model too: the refinement's own cost with
both sides compiled, as the GPU table of issue 14 measures them. --compile-part blocks|attention compiles
only each decoder block, or each attention module, of the autopoietic model (regional compilation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from apt_plugin_lm.model import APTConfig, APTLargeModel


def make(mode: str, args, device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    config = APTConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, num_layers=args.layers,
                       d_ff=4 * args.d_model, max_seq_len=args.seq, attention=mode)
    model = APTLargeModel(config).to(device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(0.5)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step_time(model, optimizer, ids, steps: int, precision: str, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        with autocast:
            logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="the autopoietic model compiled")
    parser.add_argument("--compile-sdpa", action="store_true", help="the SDPA model compiled")
    parser.add_argument("--compile-part", choices=["model", "blocks", "attention"], default="model",
                        help="with --compile: what of the autopoietic model is compiled (regional compilation)")
    args = parser.parse_args()
    device = torch.device(args.device)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    models = {mode: make(mode, args, device) for mode in ("sdpa", "autopoietic")}
    if args.compile_sdpa:
        model, optimizer = models["sdpa"]
        models["sdpa"] = (torch.compile(model), optimizer)
    if args.compile and args.compile_part == "model":
        model, optimizer = models["autopoietic"]
        models["autopoietic"] = (torch.compile(model), optimizer)
    elif args.compile:  # each decoder block, or each block's attention module, compiled in place
        for block in models["autopoietic"][0].decoder:
            (block if args.compile_part == "blocks" else block.attn).compile()
    for model, optimizer in models.values():  # warm-up
        step_time(model, optimizer, ids, 2, args.precision, device)
    results: dict[str, list[float]] = {"sdpa": [], "autopoietic": []}
    for _ in range(args.rounds):
        for mode, (model, optimizer) in models.items():
            results[mode].append(step_time(model, optimizer, ids, args.steps, args.precision, device))
    ratios = [a / s for a, s in zip(results["autopoietic"], results["sdpa"], strict=True)]
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"threads {torch.get_num_threads()}, precision {args.precision}, batch {args.batch}, T {args.seq}, "
          f"d_model {args.d_model}, heads {args.heads}, layers {args.layers}"
          + (f", autopoietic compiled ({args.compile_part})" if args.compile else "")
          + (", sdpa compiled" if args.compile_sdpa else ""))
    for mode, times in results.items():
        print(f"{mode:<12} median step {statistics.median(times) * 1000:8.2f} ms")
    print(f"autopoietic / sdpa step-time ratio: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
