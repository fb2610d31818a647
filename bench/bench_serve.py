"""Serving on this machine's CPU cores: ``apt-kernel serve`` against ``transformers serve``, the same clients
and prompts, side by side in one run.

For the quickstart's model (its shape: 4 layers, 128 wide, 4 heads, its character vocabulary; a context of
128 so that 64 new tokens fit after a prompt) and a multimodal digits-shaped model (a 16 px image with every
request), random weights, 32 prompts of equal length, 64 new tokens each, greedy (``ignore_eos``):

- throughput (new tokens/s over all 32 requests) at 1, 8 and 32 concurrent streaming clients; p50/p99 time
  to first token and between tokens;
- the server at 32 clients against the same requests one after another (goal: >= 5x);
- the model's batched ``generate`` (``generate_batch``) called directly on the same 32 prompts against the
  server at 32 clients (the server's overhead; goal: <= 1.15x), the two in turn within each of 3x the rounds
  (the median of the rounds' ratios: the machine's speed changes by more than the goal's margin);
- ``APTLargeModel.generate`` with and without its KV cache (batch 1 and 32);
- the anchor: ``transformers serve --continuous-batching``, unmodified, serving a GPT-2 of the same shape
  (layers, width, heads, feed-forward, vocabulary, context; random weights saved to a local folder, with a
  character tokenizer) to the same clients and prompts.

    .venv/bin/python -m pip install --target .venv/bench-anchor --no-deps accelerate==1.15.0  # the anchor's
    .venv/bin/python bench/bench_serve.py --rounds 3

Each server runs alone in its own process (ours: two, its engine's and its HTTP side); the clients are one
asyncio loop in this process (``serve_clients.py``, light, as they share the cores with the server; the same
for every server). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from serve_clients import load
from serve_servers import Server, cpu_seconds, free_port

NEW, CLIENTS, REQUESTS, CONTEXT = 64, (1, 8, 32), 32, 128
PROMPTS = [f"{word:<15.15}|" for word in (
    "Return the", "If the object", "The default is", "Create a new", "This module", "Raise an error", "List of all",
    "Open the file", "x = value", "Set the name", "Read data from", "The value of", "Call the", "A string", "When",
    "Add the item")] * 2  # 32 prompts of 16 characters


def quickstart_model(folder: Path):
    """The quickstart's model shape with its character vocabulary, random weights, saved as a run's model/."""
    from apt_plugin_lm.corpus import stdlib_docstrings
    from apt_plugin_lm.model import APTConfig, APTLargeModel
    from apt_plugin_lm.tokenization import CharTokenizer

    tokenizer = CharTokenizer.train(stdlib_docstrings(max_chars=600_000))  # pipelines/quickstart.toml's data
    torch.manual_seed(0)
    model = APTLargeModel(APTConfig(vocab_size=tokenizer.vocab_size, d_model=128, num_heads=4, num_layers=4,
                                    d_ff=512, max_seq_len=CONTEXT, attention="autopoietic")).eval()
    model.save_pretrained(folder / "model")
    tokenizer.save(folder / "model" / "tokenizer")
    return model, tokenizer


def gpt2_twin(model, tokenizer, folder: Path) -> None:
    """A GPT-2 of the same shape, random weights, and a character tokenizer of the same vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    c = model.config
    vocabulary = {token: i for i, token in enumerate(tokenizer.itos)}
    chars = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    chars.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    chars.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=chars, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    twin = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model,
                                      n_layer=c.num_layers, n_head=c.num_heads, n_inner=c.d_ff,
                                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                                      pad_token_id=tokenizer.pad_id))
    twin.save_pretrained(folder)
    fast.save_pretrained(folder)


def digits_model(folder: Path):
    """pipelines/multimodal-digits.toml's model shape (a 16 px image, 2-px patches), random weights."""
    from apt_plugin_lm.model import APTConfig
    from apt_plugin_lm.tokenization import CharTokenizer
    from apt_plugin_multimodal import MultimodalAPTModel

    tokenizer = CharTokenizer.train(["what digit is this? zero one two three four five six seven eight nine"])
    torch.manual_seed(0)
    model = MultimodalAPTModel(APTConfig(vocab_size=tokenizer.vocab_size, d_model=128, num_heads=4, num_layers=2,
                                         d_ff=256, max_seq_len=96, attention="sdpa"), use_vision=True,
                               vision_config={"size": "small", "image_size": 16, "patch_size": 2, "hidden_size": 128,
                                              "intermediate_size": 256, "num_hidden_layers": 3,
                                              "num_attention_heads": 4})
    model.tokenizer = tokenizer
    model.eval().save_pretrained(folder / "model")
    return model


def digit_images() -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits

    images = []
    for pixels in load_digits().images[:REQUESTS]:
        buffer = io.BytesIO()
        Image.fromarray((pixels * 16).clip(0, 255).astype("uint8")).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def measure(targets: dict[str, tuple], rounds: int) -> dict[str, dict[int, dict]]:
    """``targets``: label -> (url, bodies, server pid, client counts). The servers are measured in turn within
    each round (interleaved), so a change in the machine's load falls on all of them alike."""
    for url, bodies, _, _ in targets.values():
        asyncio.run(load(url, bodies[:2], 2))  # warm-up
    runs: dict[str, dict[int, list]] = {label: {} for label in targets}
    for clients in CLIENTS:
        for _ in range(rounds):
            for label, (url, bodies, pid, levels) in targets.items():
                if clients not in levels:
                    continue
                server, client, start = cpu_seconds(pid), time.process_time(), time.perf_counter()
                try:
                    run = asyncio.run(load(url, bodies, clients))
                except httpx.HTTPError as exc:
                    raise RuntimeError(f"{label} at {url} failed at {clients} clients: {exc!r}") from exc
                wall = time.perf_counter() - start
                run["server_cpu"] = (cpu_seconds(pid) - server) / wall
                run["client_cpu"] = (time.process_time() - client) / wall
                runs[label].setdefault(clients, []).append(run)
        for label in targets:
            if clients in runs[label]:
                row = {key: statistics.median(r[key] for r in runs[label][clients]) for key in runs[label][clients][0]}
                runs[label][clients] = row
                print(f"  {label:<30} {clients:>2} clients {row['tps']:8.1f} tokens/s  TTFT p50 "
                      f"{row['ttft50'] * 1e3:6.1f} ms p99 {row['ttft99'] * 1e3:6.1f} ms  between tokens p50 "
                      f"{row['itl50'] * 1e3:5.1f} ms p99 {row['itl99'] * 1e3:5.1f} ms  (cores busy: server "
                      f"{row['server_cpu']:.2f}, clients {row['client_cpu']:.2f})", flush=True)
    return runs


def timed(function, rounds: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def direct_text(model, tokenizer, rounds: int) -> None:
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(p)] for p in PROMPTS])
    for rows in (1, REQUESTS):
        batch = ids[:rows]
        cached = timed(lambda b=batch: model.generate(b, max_length=b.shape[1] + NEW, do_sample=False), rounds)
        plain = timed(lambda b=batch: model.generate(b, max_length=b.shape[1] + NEW, do_sample=False,
                                                     use_cache=False), rounds)
        print(f"  generate, batch {rows:>2}: KV cache {rows * NEW / cached:8.1f} tokens/s, without "
              f"{rows * NEW / plain:8.1f} tokens/s: {plain / cached:.2f}x", flush=True)


def overhead(name: str, url: str, bodies: list[dict], table: dict, direct, rounds: int) -> None:
    """The server at 32 clients against ``direct()`` (the same 32 answers from the model's batched decoding),
    in turn within each round, so that a change in the machine's speed falls on both; the median of the
    rounds' ratios. The server is idle while ``direct`` runs."""
    direct()
    ratios = []
    for _ in range(rounds):
        start = time.perf_counter()
        direct()
        seconds = time.perf_counter() - start
        ratios.append(REQUESTS * NEW / seconds / asyncio.run(load(url, bodies, REQUESTS))["tps"])
    print(f"  {name}: 32 clients / one after another {table[32]['tps'] / table[1]['tps']:.2f}x (goal >= 5x); "
          f"batched decoding directly / server at 32 clients, in turn: {statistics.median(ratios):.3f}x (goal <= "
          f"1.15x; rounds {', '.join(f'{r:.3f}' for r in ratios)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true", help="leave out the transformers serve anchor")
    parser.add_argument("--skip-multimodal", action="store_true")
    parser.add_argument("--anchor-site", type=Path, default=Path(".venv/bench-anchor"),
                        help="a folder on the anchor's PYTHONPATH with what transformers' [serving] extra adds to "
                             "this environment: `pip install --target .venv/bench-anchor --no-deps accelerate==1.15.0`")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    apt = [sys.executable, "-m", "apt_kernel.cli", "serve"]
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores - 1))  # what apt-kernel serve takes by default, for the direct calls too
    try:
        print(f"{cores} cores, {torch.get_num_threads()} compute thread(s) for ours and for direct calls; {REQUESTS} "
              f"requests x {NEW} new "
              f"tokens, greedy; medians of {args.rounds} rounds", flush=True)
        model, tokenizer = quickstart_model(root / "quickstart")
        bodies = [{"model": "quickstart", "prompt": p, "max_tokens": NEW, "temperature": 0, "stream": True,
                   "ignore_eos": True, "stream_options": {"include_usage": True}} for p in PROMPTS]
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/completions"
        with Server([*apt, str(root / "quickstart"), "--port", str(port)], port, "/health") as ours_server:
            ours_target = (url, bodies, ours_server.pid, CLIENTS)
            table = {}
            if args.skip_transformers:
                table = measure({"apt-kernel serve": ours_target}, args.rounds)
            else:
                gpt2_twin(model, tokenizer, root / "gpt2")
                # transformers serve refuses the ignore_eos extension; a random GPT-2 rarely picks its <eos> (the
                # tokens/s count the tokens each answer has)
                theirs = [{key: value for key, value in b.items() if key != "ignore_eos"} | {
                    "model": str(root / "gpt2")} for b in bodies]
                command = [str(Path(sys.executable).with_name("transformers")), "serve", str(root / "gpt2"),
                           "--continuous-batching", "--device", "cpu", "--dtype", "float32"]
                # one anchor at a time beside ours (two instances of transformers serve at once lost one), at our
                # thread count, then at torch's default (2 threads: far slower for one client, so at 8 and 32 only)
                for threads, levels in ((str(torch.get_num_threads()), CLIENTS), (None, (8, 32))):
                    port = free_port()
                    env = {"PYTHONPATH": str(args.anchor_site.resolve())}
                    env.update({"OMP_NUM_THREADS": threads} if threads else {})
                    label = f"transformers serve ({threads or 'default'} thr.)"
                    with Server([*command, "--port", str(port)], port, "/health", env) as server:
                        pair = measure({"apt-kernel serve": ours_target, label: (
                            f"http://127.0.0.1:{port}/v1/completions", theirs, server.pid, levels)}, args.rounds)
                    table[label] = pair[label]
                    for clients, row in pair["apt-kernel serve"].items():  # ours: its runs beside the first anchor
                        table.setdefault("apt-kernel serve", {}).setdefault(clients, row)
                    ours_target = (url, bodies, ours_server.pid, ())  # measured once is enough
            whole = [{k: v for k, v in b.items() if k not in ("stream", "stream_options")} for b in bodies]
            runs = [asyncio.run(load(url, whole, 32))["tps"] for _ in range(args.rounds)]
            print(f"  {'apt-kernel serve':<30} 32 clients {statistics.median(runs):8.1f} tokens/s  whole answers, "
                  "not streamed", flush=True)
            ours = table.pop("apt-kernel serve")
            batch = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(p)] for p in PROMPTS])
            overhead("apt-kernel serve, quickstart", url, bodies, ours, lambda: model.generate(
                batch, max_length=batch.shape[1] + NEW, do_sample=False), 3 * args.rounds)
        for clients in (8, 32):
            if table:
                label, best = max(table.items(), key=lambda item: item[1][clients]["tps"])
                print(f"  {clients} clients, against the faster {label}: ours / theirs "
                      f"{ours[clients]['tps'] / best[clients]['tps']:.2f}x tokens/s (goal >= 1); p99 TTFT ours "
                      f"{ours[clients]['ttft99'] * 1e3:.1f} ms, theirs {best[clients]['ttft99'] * 1e3:.1f} ms",
                      flush=True)
        direct_text(model, tokenizer, args.rounds)
        if not args.skip_multimodal:
            multimodal(root, apt, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def multimodal(root: Path, apt: list[str], rounds: int) -> None:
    model = digits_model(root / "digits")
    images = digit_images()
    prompt = "what digit is this? "
    urls = ["data:image/png;base64," + base64.b64encode(image).decode() for image in images]
    bodies = [{"model": "digits", "max_tokens": NEW, "temperature": 0, "stream": True, "ignore_eos": True,
               "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": [
                   {"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]}]}
              for url in urls]
    # the model's batched generate, generate_batch(prompts, image=the 32 PNG files), stops at <eos> and cannot
    # ignore it: this is what it runs, fed 64 tokens: the files preprocessed, encoded, and KVBatch decoding
    from apt_plugin_lm.generation import Decoder, KVBatch

    decoder, ids = Decoder.of(model), [[model.tokenizer.bos_id, *model.tokenizer.encode(prompt)]] * REQUESTS

    def direct() -> None:
        with torch.no_grad():
            memory, mask = model.memory(REQUESTS, image=model.vision.preprocess(images))
            batch, logits = KVBatch.prefill(decoder, ids, memory, mask)
            for _ in range(NEW - 1):
                logits = batch.step(logits.argmax(-1))

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with Server([*apt, str(root / "digits"), "--port", str(port)], port, "/health") as server:
        label = "apt-kernel serve, image"
        ours = measure({label: (url, bodies, server.pid, CLIENTS)}, rounds)[label]
        overhead("apt-kernel serve, digits", url, bodies, ours, direct, 3 * rounds)


if __name__ == "__main__":
    main()
