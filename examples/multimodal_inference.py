"""Captioning, visual question answering and text-only generation with a trained multimodal APT model.

    python examples/multimodal_inference.py CHECKPOINT --image scene.png [--question "red shape? "]
        [--audio clip.wav] [--prompt "text to continue"] [--max-length 200] [--sample]

CHECKPOINT is a run folder (its exported model/ or newest checkpoint), a checkpoint file, or a
save_pretrained folder. With --image and no --question the image is captioned (--prompt, if given,
starts the caption); with --question the question is answered about it; --audio answers about a clip;
--prompt alone generates text only. A flag that would be ignored is an error (exit 2), as is a
CHECKPOINT that holds no model.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run folder, a checkpoint file or a saved model folder")
    parser.add_argument("--image", help="an image file: captioned, or asked about with --question")
    parser.add_argument("--question", help="a question about the image or the audio (the prompt)")
    parser.add_argument("--audio", help="an audio file")
    parser.add_argument("--prompt", help="text to continue (text-only generation without media)")
    parser.add_argument("--max-length", type=int, default=200, help="new tokens at most")
    parser.add_argument("--sample", action="store_true", help="sample instead of the most likely token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # found before the model loads: each of these would be silently ignored or give an empty answer
    if args.question is not None and not (args.image or args.audio):
        parser.error("--question asks about an --image or --audio: give one (--prompt alone generates text only)")
    if args.question is not None and args.prompt is not None:
        parser.error("give --question or --prompt, not both: each is the text the answer continues")
    if args.max_length < 1:
        parser.error(f"--max-length must be at least 1, got {args.max_length}")

    from apt_sdk import UserError

    try:
        return infer(args)
    except UserError as exc:  # a wrong path or input: the message says which, a traceback would bury it
        print(f"error: {exc}", file=sys.stderr)
        return 2


def infer(args: argparse.Namespace) -> int:
    import torch

    from apt_plugin_multimodal import MultimodalAPTModel
    from apt_sdk import UserError

    model = MultimodalAPTModel.from_pretrained(args.checkpoint)
    for media, given, encoder in (("image", args.image, model.vision), ("audio", args.audio, model.audio)):
        if given and encoder is None:
            raise UserError(f"--{media}: {args.checkpoint} was trained without {media}, it cannot take one")
    generator = torch.Generator().manual_seed(args.seed)
    options = dict(max_length=args.max_length, do_sample=args.sample, generator=generator)
    if args.image or args.audio:
        prompt = args.question if args.question is not None else args.prompt or ""
        task = "answer" if args.question is not None else "caption"
        output = model.generate_from_multimodal(prompt, image=args.image, audio=args.audio, **options)
    else:
        task, output = "text", model.generate_from_multimodal(args.prompt or "", **options)
    print(f"{task}: {output}")
    return 0


if __name__ == "__main__":
    warnings.formatwarning = lambda message, *_: f"warning: {message}\n"  # the message, not a line of our code
    sys.exit(main())
