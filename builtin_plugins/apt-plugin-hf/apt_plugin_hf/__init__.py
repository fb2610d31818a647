"""``apt-plugin-hf``: any Hugging Face transformers causal LM as the APT Kernel model ``hf-causal-lm``, from a
local folder, a hub id or a config, with LoRA through PEFT; trained by any trainer of the contract."""

__version__ = "0.1.0"
