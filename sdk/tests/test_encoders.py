"""``apt_sdk.encoders``: the freezing an encoder's contract describes, and an encoder saved as its class's import path
and config and rebuilt from them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apt_sdk import UserError
from apt_sdk.encoders import EncoderConfig, EncoderModule, encoder_record, rebuild_encoder


class Tiny(EncoderModule):
    modality = "image"

    def __init__(self, width: int = 4):
        super().__init__()
        self.width = self.output_dim = width
        self.net = nn.Sequential(nn.Linear(3, width), nn.Dropout(0.5))
        self.positions = nn.Parameter(torch.zeros(2, width), requires_grad=False)  # fixed, as Whisper's
        self.preprocessor = None

    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(width=self.width)

    @classmethod
    def from_config(cls, config: dict) -> Tiny:
        return cls(config["width"])

    def encode(self, inputs, mask=None):
        with self.frozen_grad():
            return self.net(inputs), None


class Unsaved(Tiny):
    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(width=torch.ones(1))  # not JSON: a checkpoint could not hold it as plain data


def test_frozen_means_no_gradients_eval_mode_under_a_parents_train_and_no_grad():
    encoder = Tiny().freeze()
    parent = nn.ModuleDict({"encoder": encoder}).train()
    assert encoder.frozen and not encoder.net.training and not any(p.requires_grad for p in encoder.parameters())
    features, _ = encoder.encode(torch.ones(2, 2, 3))
    assert features.grad_fn is None and torch.equal(features, encoder.encode(torch.ones(2, 2, 3))[0])  # no dropout
    encoder.freeze(False)
    parent.train()
    assert encoder.net.training and encoder.encode(torch.ones(1, 2, 3))[0].grad_fn is not None
    assert not encoder.positions.requires_grad  # what never trained stays fixed


def test_an_encoder_is_saved_by_its_class_and_config_and_rebuilt_frozen_or_not():
    record = encoder_record(Tiny(6))
    assert record == {"class": f"{__name__}:Tiny", "distribution": None, "config": {"width": 6}}
    rebuilt = rebuild_encoder(record, frozen=True, where="config.json, encoders.image")
    assert isinstance(rebuilt, Tiny) and rebuilt.output_dim == 6 and rebuilt.frozen
    assert not rebuild_encoder(record, frozen=False, where="x").frozen


def test_what_cannot_be_saved_or_rebuilt_is_said():
    class Local(Tiny):
        pass

    with pytest.raises(UserError, match="define it at the top level of an installed module"):
        encoder_record(Local())
    with pytest.raises(UserError, match=r"Unsaved.config.to_dict\(\) is not plain JSON values"):
        encoder_record(Unsaved())
    with pytest.raises(UserError, match=r"x.json, encoders.audio: the encoder 'no_such_module:Enc' cannot be "
                                        r"imported \(No module named 'no_such_module'\); install no-such \(pip "
                                        r"install no-such\)"):
        rebuild_encoder({"class": "no_such_module:Enc", "distribution": "no-such", "config": {}}, True,
                        "x.json, encoders.audio")
