"""``MultimodalConfig``: what rebuilds a ``MultimodalAPTModel`` (``from_config``), saved in its ``config.json`` and
checkpoints. In a module of its own so that the model and its loading both import it without importing each
other."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SLOTS = {"vision": "image", "audio": "audio"}  # the model's attribute -> the modality, its [encoders.*] name


@dataclass
class MultimodalConfig:
    """Everything needed to rebuild the model: the decoder, which encoders, and how to rebuild each."""

    apt: dict
    use_vision: bool = True
    use_audio: bool = False
    vision: dict | None = None  # saved before encoders were recorded: CLIPVisionConfig fields (read, not written)
    audio: dict | None = None  # the same: WhisperConfig fields and max_seconds
    freeze_encoders: bool = True  # for encoders the model builds, and configs saved without ``frozen``
    frozen: dict[str, bool] | None = None  # each encoder's state, {"vision": True, ...}: restored on loading
    # each encoder as apt_sdk.encoders.encoder_record wrote it, by modality: {"image": {"class": ..., "config": ...}}
    encoders: dict[str, dict] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MultimodalConfig:
        return cls(**data)

    def encoder_records(self) -> dict[str, dict]:
        """Each encoder's record by the model's attribute (``vision``, ``audio``); a config saved before encoders
        were recorded names CLIP's and Whisper's configs, which their classes rebuild as they are."""
        records = dict(self.encoders or {})
        if self.vision is not None:
            records.setdefault("image", {"class": "apt_plugin_vision.encoder:VisionEncoder",
                                         "distribution": "apt-plugin-vision", "config": self.vision})
        if self.audio is not None:
            records.setdefault("audio", {"class": "apt_plugin_audio.encoder:AudioEncoder",
                                         "distribution": "apt-plugin-audio", "config": self.audio})
        return {slot: records[modality] for slot, modality in SLOTS.items()
                if getattr(self, f"use_{slot}") and modality in records}
