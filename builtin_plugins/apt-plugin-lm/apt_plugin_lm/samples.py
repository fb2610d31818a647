"""A callback that shows what the model writes, before and after training."""

from __future__ import annotations

from pathlib import Path

import torch

from apt_sdk import Callback


class TextSamples(Callback):
    def __init__(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int,
                 run_dir: Path) -> None:
        self.prompt, self.max_new_tokens, self.temperature, self.top_k = prompt, max_new_tokens, temperature, top_k
        self.seed, self.path = seed, run_dir / "samples.txt"
        self.samples: dict[str, str] = {}

    def generate(self, trainer) -> str:
        model, tokenizer = trainer.model, trainer.data.tokenizer
        device = next(model.parameters()).device
        prompt_ids = [tokenizer.bos_id, *tokenizer.encode(self.prompt)] if tokenizer.bos_id is not None \
            else tokenizer.encode(self.prompt)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        out = model.generate(ids, max_length=ids.shape[1] + self.max_new_tokens, temperature=self.temperature,
                             top_k=self.top_k, do_sample=True, eos_token_id=None,
                             generator=torch.Generator(device=device).manual_seed(self.seed))
        return tokenizer.decode(out[0].tolist())

    def _show(self, trainer, when: str) -> None:
        if trainer.model is None:  # sandboxed: the model stays in the training process
            if when == "before":
                trainer.log("text-samples: a sandboxed callback sees no model, so it writes no samples; "
                            "run it in-process (sandbox = false)")
            return
        text = self.generate(trainer)  # on every rank: a sharded (FSDP) model needs all of them
        if not trainer.is_main:  # one sample per run, not one per rank
            return
        if when == "before":
            self._unknown_characters(trainer)
        self.samples[when] = text
        trainer.log(f"--- sample {when} training ---\n{text}\n---")
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {when} training (step {trainer.step}) ---\n{text}\n\n")

    def _unknown_characters(self, trainer) -> None:
        """A character the tokenizer has not seen reaches the model as <unk> and is gone from the sample
        shown: say so, or the prompt looks as if it had been cut."""
        tokenizer = trainer.data.tokenizer
        kept = tokenizer.decode(tokenizer.encode(self.prompt))
        lost = [ch for ch in dict.fromkeys(self.prompt) if ch not in kept]
        if lost:
            trainer.log(f"text-samples: the tokenizer does not know {', '.join(map(repr, lost))} of the prompt; "
                        "the model sees <unk> there")

    def on_fit_start(self, trainer) -> None:
        self._show(trainer, "before")

    def on_fit_end(self, trainer, result: dict) -> None:
        self._show(trainer, "after")
        result["samples"] = dict(self.samples)
        entropy = getattr(trainer.data, "unigram_entropy", None)
        if entropy is not None and "summary" in result:  # the loss a model that ignores context would reach
            result["summary"].append(("unigram entropy", f"{entropy:.4f}"))
