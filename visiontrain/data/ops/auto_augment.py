"""RandAugment and TrivialAugmentWide: random image operations at random or given strengths.

The op set is torchvision's (14 ops, `OPS`); the policy string is timm's grammar
(`rand-m9-mstd0.5-inc1`: `m` magnitude 0-10, `n` ops per image, `mstd` magnitude noise, `mmax` its
upper bound, `inc` the increasing strength maps, `p` the probability of each op) or `trivial`.

Strengths, from the fraction f of the full strength (magnitude / 10 for RandAugment, one of 31 bins
in [0, 1] for TrivialAugmentWide) and a random sign s:

| op | RandAugment (timm) | TrivialAugmentWide (torchvision) |
|---|---|---|
| shear_x / shear_y | s 0.3 f | s 0.99 f |
| translate_x / translate_y | s 0.45 f x image side | s 32 f px |
| rotate | s 30 f degrees | s 135 f degrees |
| brightness, color, contrast, sharpness | 1 + s 0.9 f (inc0: 0.1 + 1.8 f) | 1 + s 0.99 f |
| posterize (bits kept) | 8 - round(4 f), torchvision's map (inc0: int(4 f)) | 8 - round(6 f) |
| solarize (threshold) | 256 - int(256 f) (inc0: int(256 f)) | 256 - int(256 f) |
| identity, autocontrast, equalize | no strength | no strength |

At magnitude 0 every op with a strength is the identity (the increasing maps; torchvision's own
solarize starts at threshold 255, which inverts pure white, and timm's increasing posterize keeps 4 - int(4 f)
bits, 4 at magnitude 0, where this keeps torchvision's 8 - round(4 f)). Enhance factors stay >= 0.1, as in
timm (magnitudes above 10 with `mmax`). Geometry samples the nearest pixel and
fills with `fill` (the recipe's mean colour, as timm does). RandAugment draws its `n` ops uniformly
with replacement and applies each with probability `p` (timm's default 0.5); TrivialAugmentWide
applies one op always.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from visiontrain.data.draws import uniform, uniform_int
from visiontrain.data.jit import kernel
from visiontrain.data.ops import pixels
from visiontrain.infra.errors import UsageError

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
       "sharpness", "posterize", "solarize", "autocontrast", "equalize")
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate"})
ENHANCE = frozenset({"brightness", "color", "contrast", "sharpness"})
N_OPS = len(OPS)
TRIVIAL_BINS = 31
MAGNITUDE_SCALE = 10.0  # timm's magnitude: 10 is the full strength
POLICY_HELP = ("'rand-m<0..mmax>[-n<ops>][-mstd<std|inf>][-mmax<max>][-inc<0|1>][-p<0..1>]' "
               "(e.g. rand-m9-mstd0.5-inc1) or 'trivial'")
_POLICY_RAND, _POLICY_TRIVIAL = 0.0, 1.0


@dataclass(frozen=True)
class Policy:
    """A parsed `augment.auto`."""

    trivial: bool = False
    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    magnitude_max: float = 10.0
    increasing: bool = True
    prob: float = 0.5

    def params(self) -> np.ndarray:
        return np.array([_POLICY_TRIVIAL if self.trivial else _POLICY_RAND, self.num_ops, self.magnitude,
                         self.magnitude_std, self.magnitude_max, float(self.increasing), self.prob])


_KEYS = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "inc": "increasing",
         "p": "prob"}


def parse_policy(text: str, key: str = "augment.auto") -> Policy:
    """timm's policy grammar; UsageError (one line naming the part and what is allowed) otherwise."""
    def bad(detail: str) -> UsageError:
        named = f"{key} {text!r}" if key.startswith("--") else f"config key '{key}' = {text!r}"
        return UsageError(f"{named} is invalid: {detail}; allowed {POLICY_HELP}")

    if text in ("trivial", "trivial_wide", "ta_wide"):
        return Policy(trivial=True, num_ops=1, prob=1.0)
    name, *parts = text.split("-")
    if name != "rand":
        raise bad(f"unknown policy {name!r}")
    values: dict[str, float] = {}
    for part in parts:
        match = re.fullmatch(r"([a-z]+)(inf|\d+(?:\.\d*)?)", part)
        if match is None or match.group(1) not in _KEYS:
            raise bad(f"unknown part {part!r}")
        if match.group(2) == "inf" and match.group(1) != "mstd":
            raise bad(f"{part}: only mstd may be inf")
        values[_KEYS[match.group(1)]] = math.inf if match.group(2) == "inf" else float(match.group(2))
    if "magnitude" not in values:
        raise bad("no magnitude (m<0..10>)")
    policy = Policy(trivial=False, num_ops=int(values.get("num_ops", 2)), magnitude=values["magnitude"],
                    magnitude_std=values.get("magnitude_std", 0.0), magnitude_max=values.get("magnitude_max", 10.0),
                    increasing=bool(values.get("increasing", 0)), prob=values.get("prob", 0.5))
    if policy.num_ops < 1 or policy.num_ops != values.get("num_ops", 2):
        raise bad(f"n{values.get('num_ops')} ops: a whole number >= 1")
    if not 0 < policy.magnitude_max < math.inf:
        raise bad(f"mmax{policy.magnitude_max:g}: must be > 0")
    if not 0 <= policy.magnitude <= policy.magnitude_max:
        raise bad(f"magnitude m{policy.magnitude:g} out of range [0, mmax={policy.magnitude_max:g}]")
    if values.get("increasing", 0) not in (0, 1):
        raise bad(f"inc{values['increasing']:g}: 0 or 1")
    if not 0 <= policy.prob <= 1:
        raise bad(f"p{policy.prob:g}: a probability in [0, 1]")
    return policy


@kernel
def _gaussian(key, draw):
    """A standard normal number from two uniforms of the stream (Box-Muller)."""
    u1 = max(uniform(key, draw), 1e-300)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * uniform(key, draw + 1))


@kernel
def fraction_of_layer(key, layer, params):
    """The strength fraction f of op `layer`: timm's magnitude noise and bounds, or TrivialAugment's bin."""
    base = 8 * layer
    if params[0] == _POLICY_TRIVIAL:
        return uniform_int(key, base + 5, TRIVIAL_BINS - 1) / (TRIVIAL_BINS - 1.0)
    magnitude, std, upper = params[2], params[3], params[4]
    if std == np.inf:
        magnitude = uniform(key, base + 3) * magnitude
    elif std > 0:
        magnitude = magnitude + std * _gaussian(key, base + 3)
    return min(max(magnitude, 0.0), upper) / MAGNITUDE_SCALE


@kernel
def op_of_layer(key, layer):
    return uniform_int(key, 8 * layer, N_OPS - 1)


@kernel
def sign_of_layer(key, layer):
    return -1.0 if uniform(key, 8 * layer + 2) < 0.5 else 1.0


@kernel
def apply_op(image, scratch, op, f, sign, trivial, increasing, fill):
    h, w = image.shape[0], image.shape[1]
    if op == 1 or op == 2:  # shear
        amount = sign * (0.99 if trivial else 0.3) * f
        if op == 1:
            pixels.affine(image, scratch, 1.0, amount, 0.0, 0.0, 1.0, 0.0, fill)
        else:
            pixels.affine(image, scratch, 1.0, 0.0, 0.0, amount, 1.0, 0.0, fill)
    elif op == 3 or op == 4:  # translate
        side = w if op == 3 else h
        shift = sign * (32.0 * f if trivial else 0.45 * f * side)
        if op == 3:
            pixels.affine(image, scratch, 1.0, 0.0, shift, 0.0, 1.0, 0.0, fill)
        else:
            pixels.affine(image, scratch, 1.0, 0.0, 0.0, 0.0, 1.0, shift, fill)
    elif op == 5:
        pixels.rotate(image, scratch, sign * (135.0 if trivial else 30.0) * f, fill)
    elif 6 <= op <= 9:  # brightness, color, contrast, sharpness
        if trivial:
            factor = 1.0 + sign * 0.99 * f
        elif increasing:
            factor = 1.0 + sign * 0.9 * f
        else:
            factor = 0.1 + 1.8 * f
        factor = max(factor, 0.1)
        if op == 6:
            pixels.brightness(image, factor)
        elif op == 7:
            pixels.saturation(image, factor)
        elif op == 8:
            pixels.contrast(image, factor)
        else:
            pixels.sharpness(image, scratch, factor)
    elif op == 10:
        if trivial:
            bits = 8 - int(np.round(6.0 * f))
        elif increasing:
            bits = 8 - int(np.round(4.0 * f))
        else:
            bits = int(4.0 * f)
        pixels.posterize(image, min(max(bits, 0), 8))
    elif op == 11:
        threshold = int(256.0 * f) if not trivial and not increasing else 256 - int(256.0 * f)
        pixels.solarize(image, threshold)
    elif op == 12:
        pixels.autocontrast(image)
    elif op == 13:
        pixels.equalize(image)


@kernel
def auto_augment(image, scratch, key, params, fill):
    """The `Policy` `params` on one image, in place."""
    trivial = params[0] == _POLICY_TRIVIAL
    increasing = params[5] > 0
    for layer in range(int(params[1])):
        if not trivial and uniform(key, 8 * layer + 1) >= params[6]:
            continue
        apply_op(image, scratch, op_of_layer(key, layer), fraction_of_layer(key, layer, params),
                 sign_of_layer(key, layer), trivial, increasing, fill)
