"""Multimodal APT: generation with and without the KV cache, and the digits task's baseline.

- generation: ``generate_batch`` greedy, same model, prompts and image, ``use_cache`` True vs False; the
  two alternate within each round and the ratio is the median of the per-round ratios. The tokens
  are checked to be the same.
- digits: an RBF SVM (``SVC(C=10, gamma="scale")``) on the split of the digits task (``load_digits``,
  stratified 80/20, seed 0): test accuracy and fit time, the number the digits pipeline is held to.
  Our model's accuracy comes from ``apt-kernel run pipelines/multimodal-digits.toml`` (bench/README.md).

    python bench/bench_multimodal.py [--rounds 7] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from apt_plugin_lm.model import APTConfig
from apt_plugin_lm.tokenization import CharTokenizer
from apt_plugin_multimodal import MultimodalAPTModel


def svm_digits() -> tuple[float, float]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    start = time.perf_counter()
    svm = SVC(C=10, gamma="scale").fit(x_train, y_train)
    return svm.score(x_test, y_test), time.perf_counter() - start


def generation(rounds: int, new_tokens: int, batch: int) -> None:
    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz ?,"])
    tokenizer.eos_id = -1  # never stop early: every call makes new_tokens tokens
    config = APTConfig(vocab_size=tokenizer.vocab_size, d_model=128, num_heads=4, num_layers=2, d_ff=512,
                       max_seq_len=new_tokens + 32, attention="autopoietic")
    torch.manual_seed(0)
    model = MultimodalAPTModel(config, vision_config={"size": "small", "image_size": 64}).eval()
    model.tokenizer = tokenizer
    images = torch.randn(batch, 3, 64, 64)
    prompts = ["what is in the picture? "] * batch

    def run(cache: bool) -> tuple[float, list[str]]:
        start = time.perf_counter()
        out = model.generate_batch(prompts, image=images, max_length=new_tokens, use_cache=cache)
        return time.perf_counter() - start, out

    assert run(True)[1] == run(False)[1], "the cache changed the tokens"
    ratios, cached, full = [], [], []
    for _ in range(rounds):
        t_cached, t_full = run(True)[0], run(False)[0]
        cached.append(t_cached)
        full.append(t_full)
        ratios.append(t_full / t_cached)
    tokens = batch * new_tokens
    print(f"generation, batch {batch}, {new_tokens} new tokens, autopoietic, d_model 128, 2 layers, 64 px image:")
    print(f"  KV cache      {tokens / statistics.median(cached):8.0f} tokens/s")
    print(f"  no cache      {tokens / statistics.median(full):8.0f} tokens/s")
    print(f"  speed-up      {statistics.median(ratios):8.2f}x (median of {rounds} per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    generation(args.rounds, args.new_tokens, args.batch)
    accuracy, seconds = svm_digits()
    print(f"digits baseline: SVC(C=10, gamma='scale') test accuracy {accuracy:.2%}, fit {seconds:.2f} s")


if __name__ == "__main__":
    main()
