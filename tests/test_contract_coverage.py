"""The contract page lists what the builtin consumers use of each component, and says nothing they do not use.

The consumers: the trainer (``apt-trainer``, with its early stopping), the kernel's runner and profiler, the
multimodal model and data (``multimodal-apt``, ``multimodal``, its accuracy callback) and the SDK's helpers they call,
the gradient monitor (a callback reading the model), and the serve plugin. Three tiny runs (a text run, its resume,
a multimodal run with a CLIP and a Whisper encoder) record what they read of each built component
(``contract_recording``); what only other paths reach (FSDP, --profile, a model folder loaded back) is listed in
``UNREACHED`` with the line that reads it, and serve's reads are found in its source. That is compared, both ways,
with what each protocol of ``apt_kernel.protocols`` declares, its ``<Kind>Optional`` protocol's included: the
members ``docs/reference/contract.md`` renders.

``TrainerState`` and ``BuildContext`` are given to their consumers rather than called: what callbacks and factories
read of them must be declared (that the trainer gives every member of ``TrainerState`` and nothing else is the
trainer's test_run_state.py).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from contract_recording import REPO, Recorder
from PIL import Image

from apt_kernel import building, conformance, protocols
from apt_kernel.callbacks import CallbackDispatcher
from apt_kernel.context import BuildContext
from apt_plugin_lm.testing import TINY_PIPELINE
from apt_sdk.testing import SELECTION_VARIABLES

KIND_LABELS = {"data": "DataModule", "model": "Model", "loss": "Loss", "encoder": "Encoder", "trainer": "Trainer"}
CALLED = ("DataModule", "Tokenizer", "Model", "Loss", "Encoder", "Preprocessor", "Trainer")  # compared both ways
GIVEN = {"TrainerState": protocols.TrainerState,  # what a callback reads must be declared
         "BuildContext": BuildContext}  # what a factory or the trainer reads must be declared
TRAINER = "builtin_plugins/apt-plugin-trainer/apt_plugin_trainer"
CONTRACT_PAGE = REPO / "docs" / "reference" / "contract.md"
SERVE = REPO / "builtin_plugins" / "apt-plugin-serve" / "apt_plugin_serve"
#: serve's reads, found in its source: an attribute read off one of these names is a read of that protocol
SERVE_NAMES = {"tokenizer": "Tokenizer", "vision": "Encoder", "audio": "Encoder", "preprocessor": "Preprocessor"}

#: (protocol, member, file, the code there that reads it): what a consumer reads on a path the runs here do not take.
UNREACHED = [
    # MFU's sequence length, when no batch tensor has two dimensions to say it
    ("DataModule", "block_size", f"{TRAINER}/fit_loop.py", 'getattr(self.context.data, "block_size", None)'),
    # FSDP: the blocks of each layer list are sharded, and model/ is written from a model rebuilt on rank 0
    ("Model", "modules", f"{TRAINER}/distributed.py", "for child in model.modules():"),
    ("Model", "from_config", f"{TRAINER}/export.py", "self.runtime.model_class.from_config(model.config)"),
    ("Model", "from_config", f"{TRAINER}/end_of_run.py", 'callable(getattr(type(model), "from_config", None))'),
    # --profile times the forward pass with torch's module hooks
    ("Model", "register_forward_pre_hook", "apt_kernel/profiler.py", "model.register_forward_pre_hook("),
    ("Model", "register_forward_hook", "apt_kernel/profiler.py", "model.register_forward_hook("),
    # a multimodal model folder loaded back (from_pretrained) rebuilds each encoder from its record
    ("Encoder", "from_config", "sdk/apt_sdk/encoders.py", 'encoder = found.from_config(record.get("config") or {})'),
    ("Encoder", "freeze", "sdk/apt_sdk/encoders.py", "encoder.freeze(frozen)"),
]

MULTIMODAL = """
[pipeline]
name = "colours"
seed = 0
output_dir = "{out}"

[data]
use = "multimodal"
train_manifest = "{folder}/records.jsonl"
val_manifest = "{folder}/records.jsonl"
test_manifest = "{folder}/records.jsonl"
image_size = 16
batch_size = 4
num_workers = 0
max_length = 16

[encoders.image]
use = "clip"
size = "tiny"

[encoders.audio]
use = "whisper"
size = "tiny"
max_seconds = 0.5

[model]
use = "multimodal-apt"
d_model = 16
num_heads = 2
num_layers = 1
d_ff = 32

[loss]
use = "lm-cross-entropy"

[trainer]
use = "apt-trainer"
max_steps = 2
log_every = 1

[[callbacks]]
use = "multimodal-accuracy"
max_new_tokens = 2
"""
EXTRA_CALLBACKS = '\n[[callbacks]]\nuse = "early-stopping"\n\n[[callbacks]]\nuse = "gradient-monitor"\nevery = 1\n'


def _records(folder: Path) -> None:
    """Four coloured images, a tone and a text-only record."""
    (folder / "media").mkdir(parents=True)
    lines = []
    for i, colour in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 220), (200, 200, 30))):
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(folder / "media" / f"{i}.png")
        lines.append({"prompt": "c? ", "text": "rgby"[i], "image_path": f"media/{i}.png"})
    sf.write(folder / "media" / "tone.wav", 0.3 * np.sin(np.arange(8000) * 0.3), 16000)
    lines += [{"prompt": "s? ", "text": "t", "audio_path": "media/tone.wav"}, {"prompt": "p? ", "text": "x"}]
    (folder / "records.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _watch_builds(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every component the kernel builds, its data's tokenizer and its encoders' preprocessors, the context and its
    callback dispatcher, and the state the trainer gives callbacks are recorded from the moment they exist."""
    import apt_plugin_trainer.trainer as trainer_module

    build = building.build_component

    def build_component(kernel, kind, name, options, context, source, table):
        recorder.watch(context, "BuildContext")
        recorder.watch(context.callbacks, "CallbackDispatcher")
        component = build(kernel, kind, name, options, context, source, table)
        if kind in KIND_LABELS:
            recorder.watch(component, KIND_LABELS[kind])
        parts = {"data": ("tokenizer", "Tokenizer"), "encoder": ("preprocessor", "Preprocessor")}
        if kind in parts and (part := vars(component).get(parts[kind][0])) is not None:
            recorder.watch(part, parts[kind][1])  # read without recording it: vars() is the instance's dict
        return component

    monkeypatch.setattr(building, "build_component", build_component)
    state = trainer_module.RunState
    monkeypatch.setattr(trainer_module, "RunState", lambda *args: recorder.watch(state(*args), "TrainerState"))


@pytest.fixture(scope="module")
def used(tmp_path_factory) -> dict[str, dict[str, str]]:
    """protocol -> member -> where a consumer reads it, from the runs, ``UNREACHED`` and serve's source."""
    from apt_kernel.api import run_pipeline
    from apt_plugin_multimodal import encoders

    root = tmp_path_factory.mktemp("coverage")
    # generic checks read every declared member of what they check: the kernel's, and the model's of an encoder
    recorder = Recorder(checkers=(encoders.checked,), checker_files=(REPO / "apt_kernel" / "conformance.py",))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("APT_KERNEL_HOME", str(root / "apt-home"))
        for name in SELECTION_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        _watch_builds(recorder, monkeypatch)
        text = TINY_PIPELINE.format(out=(root / "text").as_posix()) + EXTRA_CALLBACKS
        steps = ["trainer.log_every=1", "trainer.eval_every=1"]
        run_pipeline(text, ["trainer.max_steps=2", *steps])
        run_pipeline(text, ["trainer.max_steps=3", *steps], resume="latest")  # what only a resume reads
        _records(root / "records")
        run_pipeline(MULTIMODAL.format(out=(root / "multimodal").as_posix(), folder=(root / "records").as_posix()))
    found = {label: dict(uses) for label, uses in recorder.uses.items()}
    for label, member, file, code in UNREACHED:
        line = next((n for n, text in enumerate((REPO / file).read_text().splitlines(), 1) if code in text), None)
        assert line is not None, f"UNREACHED: {file} no longer reads {label}.{member} with {code!r}; update the table"
        found.setdefault(label, {}).setdefault(member, f"{file}:{line} (not reached by these runs)")
    for path in sorted(SERVE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                owner = getattr(node.value, "attr", getattr(node.value, "id", None))
                if owner in SERVE_NAMES:
                    where = f"{path.relative_to(REPO).as_posix()}:{node.lineno} (serve, read in its source)"
                    found.setdefault(SERVE_NAMES[owner], {}).setdefault(node.attr, where)
    return found


def declared(protocol: type) -> set[str]:
    """The members a protocol declares, with those of its ``<Kind>Optional`` protocol."""
    optional = getattr(protocols, f"{protocol.__name__}Optional", None)
    return set(conformance.declared_members(protocol)) | set(conformance.declared_members(optional) if optional
                                                              else ())


def documented(target: str) -> list[str]:
    """The members the contract page lists under ``::: target``."""
    block = re.search(rf"^::: {re.escape(target)}\n(?:    .*\n)*", CONTRACT_PAGE.read_text(), re.MULTILINE)
    assert block, f"{CONTRACT_PAGE.name} renders no {target}"
    return re.findall(r"^ +- (\w+)$", block[0], re.MULTILINE)


def difference(label: str, used: dict[str, str], contract: set[str]) -> list[str]:
    extra = [f"  {name}: {where}" for name, where in sorted(used.items()) if name not in contract]
    unused = sorted(contract - set(used))
    lines = [f"{label}: called but not in the contract:", *extra] if extra else []
    return lines + ([f"{label}: in the contract but never called: {', '.join(unused)}"] if unused else [])


@pytest.mark.parametrize("label", CALLED)
def test_each_protocol_declares_what_its_consumers_call_and_nothing_else(used, label):
    problems = difference(label, used.get(label, {}), declared(getattr(protocols, label)))
    assert not problems, "\n".join(problems)


def test_the_dispatcher_documents_what_the_trainer_calls_of_it(used):
    problems = difference("CallbackDispatcher", used.get("CallbackDispatcher", {}),
                          set(documented("apt_kernel.callbacks.CallbackDispatcher")))
    assert not problems, "\n".join(problems)
    assert all(callable(getattr(CallbackDispatcher, name)) for name in used["CallbackDispatcher"])


@pytest.mark.parametrize("label", GIVEN)
def test_what_callbacks_and_factories_read_of_what_they_are_given_is_declared(used, label):
    given = GIVEN[label]
    if dataclasses.is_dataclass(given):  # its fields and properties
        names = {f.name for f in dataclasses.fields(given)} | {n for n, v in vars(given).items()
                                                                if isinstance(v, property)}
    else:
        names = set(conformance.declared_members(given))
    extra = [f"  {name}: {where}" for name, where in sorted(used.get(label, {}).items()) if name not in names]
    assert not extra, "\n".join([f"{label}: read but not in the contract:", *extra])
    assert used.get(label), f"nothing read of {label}: the recording did not run"


def test_the_contract_page_renders_exactly_the_protocols():
    defined = [name for name, value in vars(protocols).items()
               if isinstance(value, type) and getattr(value, "_is_protocol", False) and value.__module__ ==
               protocols.__name__]
    assert sorted(documented("apt_kernel.protocols")) == sorted(["Batch", *defined])
    for name in defined:
        if name.endswith("Optional"):  # a kind's optional members: of a protocol that exists, none of them required
            required = conformance.declared_members(getattr(protocols, name.removesuffix("Optional")))
            assert not set(required) & set(conformance.declared_members(vars(protocols)[name]))
