"""Run by test_hub_fresh_venv.py with the python of a venv holding torch and transformers and nothing of this
project: loads each exported model folder given as an argument as any Hub model is loaded, and prints as JSON
what it gives for the prompt (its tokens, logits, greedy tokens from generate, the text-generation pipeline's
text) into the file OUT. Usage: python hub_check.py OUT PROMPT NEW_TOKENS FOLDER...

The tokenizer is loaded as model cards of custom architectures load it, with trust_remote_code (transformers 5
reads the folder's config.json, custom code, before the tokenizer), and also without: run without a terminal,
transformers then falls back to a generic configuration, and the tokenizer must be the same."""

import importlib.util
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

out, prompt, new_tokens, folders = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
results = {"project_importable": [m for m in ("apt_plugin_lm", "apt_sdk", "apt_kernel")
                                  if importlib.util.find_spec(m) is not None]}
for folder in folders:
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    plain = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    greedy = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator(prompt, max_new_tokens=new_tokens, do_sample=False)[0]["generated_text"]
    results[folder] = {"class": f"{type(model).__module__}.{type(model).__name__}", "ids": ids[0].tolist(),
                       "logits": logits[0].tolist(), "greedy": greedy[0].tolist(), "text": text,
                       "plain_ids": plain(prompt).input_ids, "tokenizer": type(tokenizer).__name__}
with open(out, "w") as fh:
    json.dump(results, fh)
