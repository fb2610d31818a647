"""Registers the ``multimodal`` data and the ``multimodal-apt`` model."""

from __future__ import annotations

from apt_sdk import BuildContext, OptionError, UserError, hookimpl


def build_data(options: dict, context: BuildContext):
    from .data_module import MultimodalDataModule

    return MultimodalDataModule(options, context.seed, context.report_error if context.is_main else None, context)


def build_model(options: dict, context: BuildContext):
    from apt_plugin_lm.model import APTConfig

    from .model import MultimodalAPTModel

    data = context.data
    if not hasattr(data, "uses_image"):
        raise UserError('[model] multimodal-apt needs the multimodal data component (use = "multimodal")')
    if not (data.uses_image or data.uses_audio):
        raise UserError("no record of the data has an image_path or an audio_path, and multimodal-apt needs images "
                        'or audio to attend to: for text only, use the "apt-lm" model')
    if options["d_model"] % options["num_heads"]:
        raise OptionError("num_heads", f"d_model = {options['d_model']} is not divisible by num_heads = "
                                       f"{options['num_heads']}")
    tokenizer = data.tokenizer
    config = APTConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id,
                       eos_token_id=tokenizer.eos_id, max_seq_len=data.block_size, d_model=options["d_model"],
                       num_heads=options["num_heads"], num_layers=options["num_layers"], d_ff=options["d_ff"],
                       dropout=options["dropout"], attention=options["attention"])
    given = _given_encoders(context.encoders, options["freeze_encoders"])
    vision, audio = given.get("image"), given.get("audio")
    freeze = options["freeze_encoders"]
    if data.uses_image and vision is None:  # a tower from a preset and the [model] vision fields
        from apt_plugin_vision import VisionEncoder

        fields = {**(options.get("vision") or {}), "image_size": data.image_size}
        try:
            vision = VisionEncoder(size=options["vision_size"], config=fields, freeze_encoder=freeze,
                                   position_std=options.get("vision_position_std"), stem=options.get("vision_stem"))
        except UserError as exc:
            raise OptionError("vision", str(exc)) from None
    if data.uses_audio and audio is None:
        from apt_plugin_audio import AudioEncoder

        try:
            audio = AudioEncoder(size=options["audio_size"], config=options.get("audio") or None,
                                 max_seconds=data.max_audio_seconds, freeze_encoder=freeze)
        except UserError as exc:
            raise OptionError("audio", str(exc)) from None
    # batches get the encoders' own preprocessing (an [encoders.*] plugin's, a 128-mel Whisper's features)
    data.use_encoders(vision if data.uses_image else None, audio if data.uses_audio else None)
    model = MultimodalAPTModel(config, use_vision=data.uses_image, use_audio=data.uses_audio, vision_encoder=vision,
                               audio_encoder=audio, freeze_encoders=freeze)
    model.tokenizer = tokenizer
    return model


def _given_encoders(encoders: dict, freeze: bool) -> dict:
    """The ``[encoders.image]`` and ``[encoders.audio]`` components, each checked for the modality of its section;
    any ``Encoder`` of it stands in for ``clip`` or ``whisper`` (the kernel checked its members when it was built).
    An encoder given in its own section keeps its state."""
    from torch import nn

    for name, encoder in encoders.items():
        if name not in ("image", "audio"):
            raise OptionError("use", "multimodal-apt attends to [encoders.image] and [encoders.audio] only",
                              table=f"encoders.{name}")
        if encoder.modality != name:
            raise OptionError("use", f"gives an encoder of {encoder.modality!r} ({type(encoder).__name__}), and "
                                     f"[encoders.{name}] takes an encoder of {name!r}", table=f"encoders.{name}")
        if not isinstance(encoder, nn.Module):
            raise OptionError("use", f"gives a {type(encoder).__name__}, which is not a torch.nn.Module: "
                                     "multimodal-apt holds its encoders as submodules, trained and saved with it",
                              table=f"encoders.{name}")
        if freeze and not encoder.frozen:
            raise OptionError("freeze_encoders", f"is true, but [encoders.{name}] sets freeze_encoder = false: "
                                                 "drop one of them")
    return encoders


@hookimpl
def register_data(register):
    register("multimodal", build_data, summary="Multimodal records from JSONL manifests")


@hookimpl
def register_models(register):
    register("multimodal-apt", build_model, summary="APT decoder conditioned on image and audio encoders")


def build_accuracy(options: dict, context: BuildContext):
    from .evaluate import MultimodalAccuracy

    if getattr(context, "data", None) is None:  # sandboxed: data and model stay in the training process
        return MultimodalAccuracy(**options)
    datasets = getattr(context.data, "datasets", None)
    if datasets is None:
        raise UserError('[callbacks] multimodal-accuracy needs the multimodal data component (use = "multimodal")')
    if options["split"] not in datasets:  # found now, not after the training
        raise OptionError("split", f"scores the {options['split']} split, but [data] has no "
                                   f"{options['split']}_manifest")
    return MultimodalAccuracy(**options)


@hookimpl
def register_callbacks(register):
    register("multimodal-accuracy", build_accuracy, summary="Exact-match accuracy (or caption F1) on the test manifest")
