"""Whether a library architecture takes the image sizes a run will feed it, checked before anything is written.

timm and torchvision state the smallest input of some architectures (min_input_size, checked at config time);
others fail only inside a layer: Inception v3 below 75 px (timm states no minimum for it), CrossViT built with
an `img_size` its two patch sizes do not divide into equal grids, a model whose pooling leaves a zero-sized
map. One forward pass of a single image at each size below the one the architecture is built for, in eval mode
and without gradients (no running statistic or random draw changes), turns that into a one-line error naming
the key instead of a traceback at the first step. Sizes at or above the built size are not probed (they are
what the architecture is made for, and probing them would cost a large model's forward pass at every start);
the project's own networks take any size.
"""

from __future__ import annotations

import torch
from torch import nn

from visiontrain.infra.errors import UsageError


def check_image_sizes(model: nn.Module, name: str, sizes: dict[int, str], built_for: int) -> None:
    """`sizes`: image size -> what sets it (a config key). UsageError naming the first (smallest) size below
    `built_for` that the model fails on."""
    was_training = model.training
    model.eval()
    try:
        for size in sorted(s for s in sizes if s < built_for):
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, size, size))
            except (RuntimeError, ValueError, AssertionError, IndexError) as err:
                if "can't allocate memory" in str(err) or isinstance(err, torch.OutOfMemoryError):
                    raise
                reason = (str(err).strip().splitlines() or [""])[0]
                reason = f"{type(err).__name__}: {reason[:200]}{'...' if len(reason) > 200 else ''}"
                raise UsageError(f"{sizes[size]} = {size} is invalid: {name} fails on one {size} px image "
                                 f"({reason}); use a size the architecture takes") from None
    finally:
        model.train(was_training)


def image_sizes(cfg) -> dict[int, str]:
    """The sizes a run feeds its model (`cfg`: the Config), each with what sets it: training and evaluation;
    with progressive resizing every resolution of its schedule instead of data.image_size; the random loader
    feeds data.image_size only."""
    from visiontrain.data.augment import resolution_for_epoch

    d = cfg.data
    sizes: dict[int, str] = {}
    if d.progressive_resizing:
        for epoch in range(cfg.train.epochs):
            size = resolution_for_epoch(epoch, d)
            sizes.setdefault(size, f"progressive resizing's size for epoch {epoch} (data.min_res={d.min_res}, "
                                   f"data.max_res={d.max_res})")
    else:
        sizes[d.image_size] = "config key 'data.image_size'"
    if d.loader != "random":
        sizes.setdefault(d.val_image_size, "config key 'data.val_image_size'")
    return sizes
