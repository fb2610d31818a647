"""Sort-of-CLEVR (Santoro et al. 2017, "A simple neural network module for relational reasoning"),
generated here from a seed: 75x75 images of 6 objects in 6 colours, each a circle or a square, with
non-relational and relational questions, and captions listing every object.

Questions, for each colour (the paper's kinds; answers are single words):

- non-relational: the object's shape; is it on the left or the right; at the top or the bottom.
- relational: the shape of the object nearest to it; of the object farthest from it; how many
  objects share its shape (itself included).

A caption names each object, colours in a fixed order: "a red circle at the top left, a green square
at the bottom right, an orange ...". ``caption_objects`` reads one back into (colour, shape, vertical,
horizontal) tuples, which is what captioning's object-level F1 compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 75
OBJECT = 5  # half the side of a square, the radius of a circle (the paper's 75x75 images, objects of 10 px)
COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255), "orange": (255, 150, 0),
           "gray": (128, 128, 128), "yellow": (230, 230, 0)}
SHAPES = ("circle", "square")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
NON_RELATIONAL = ("shape? ", "left or right? ", "top or bottom? ")
RELATIONAL = ("nearest shape? ", "farthest shape? ", "how many like it? ")


@dataclass
class Thing:
    colour: str
    shape: str
    x: int
    y: int

    @property
    def vertical(self) -> str:
        return "top" if self.y < SIZE / 2 else "bottom"

    @property
    def horizontal(self) -> str:
        return "left" if self.x < SIZE / 2 else "right"


def scene(rng: np.random.Generator) -> list[Thing]:
    """Six objects, one per colour, not overlapping and not touching the border."""
    things: list[Thing] = []
    while len(things) < len(COLOURS):
        x, y = (int(v) for v in rng.integers(OBJECT + 1, SIZE - OBJECT - 1, 2))
        if all((x - t.x) ** 2 + (y - t.y) ** 2 > (2 * OBJECT + 3) ** 2 for t in things):
            colour = list(COLOURS)[len(things)]
            things.append(Thing(colour, SHAPES[int(rng.integers(2))], x, y))
    return things


def draw(things: list[Thing]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "white")
    pen = ImageDraw.Draw(image)
    for t in things:
        box = (t.x - OBJECT, t.y - OBJECT, t.x + OBJECT, t.y + OBJECT)
        (pen.ellipse if t.shape == "circle" else pen.rectangle)(box, fill=COLOURS[t.colour])
    return image


def questions(things: list[Thing]) -> list[dict]:
    """``{"prompt", "text", "kind", "question"}`` for every colour and question type (6 x 6 = 36 per image);
    ``question`` names the type ("nearest shape"), so a score can be broken down by it."""
    out = []
    for t in things:
        others = [o for o in things if o is not t]
        distance = [(o.x - t.x) ** 2 + (o.y - t.y) ** 2 for o in others]
        answers = {
            NON_RELATIONAL[0]: t.shape, NON_RELATIONAL[1]: t.horizontal, NON_RELATIONAL[2]: t.vertical,
            RELATIONAL[0]: others[int(np.argmin(distance))].shape,
            RELATIONAL[1]: others[int(np.argmax(distance))].shape,
            RELATIONAL[2]: NUMBERS[sum(o.shape == t.shape for o in things)],
        }
        for question, answer in answers.items():
            kind = "non-relational" if question in NON_RELATIONAL else "relational"
            out.append({"prompt": f"{t.colour} {question}", "text": answer, "kind": kind,
                        "question": question.removesuffix("? ")})
    return out


def caption(things: list[Thing]) -> str:
    return ", ".join(f"{'an' if t.colour[0] in 'aeiou' else 'a'} {t.colour} {t.shape} at the {t.vertical} "
                     f"{t.horizontal}" for t in things)


_OBJECT = re.compile(r"\ban? (\w+) (\w+) at the (\w+) (\w+)")


def caption_objects(text: str) -> set[tuple[str, str, str, str]]:
    """The (colour, shape, vertical, horizontal) objects a caption names; what is not one is ignored."""
    return {m.groups() for m in _OBJECT.finditer(text)}


def object_f1(predicted: str, truth: str) -> tuple[int, int, int]:
    """(objects right, objects predicted, objects true) of one caption; F1 is computed over a whole set."""
    said, true = caption_objects(predicted), caption_objects(truth)
    return len(said & true), len(said), len(true)
