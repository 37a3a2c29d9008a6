"""The trainer's step is the plain PyTorch loop's numerics: one fp32 process without accumulation ends with
bit-equal weights, BatchNorm statistics and optimizer state."""

from __future__ import annotations

import contextlib
import copy

import torch

from visiontrain.config import load_config
from visiontrain.models import build_model, spec_of
from visiontrain.parallel.runtime import init_runtime
from visiontrain.train.optim import build_optimizer, build_scheduler
from visiontrain.train.run import build_run
from visiontrain.train.step import reference_loop


def test_one_fp32_process_without_accumulation_ends_bit_equal_to_the_reference_loop(shapes_dir, tmp_path):
    cfg = load_config("configs/demo/train.yaml", [
        "data.loader=torchvision", f"data.path={shapes_dir}", f"run.dir={tmp_path}", "data.image_size=16",
        "data.val_image_size=16", "data.num_workers=0", "train.batch_size=50", "train.epochs=2",
        "train.precision=fp32", "train.label_smoothing=0.1", "train.grad_clip_norm=0", "model.name=resnet9",
        "model.width=8", "optim.name=sgd", "log.progress_bar=false", "log.tensorboard=false"])
    torch.manual_seed(3)
    model = build_model(cfg.model)
    initial = copy.deepcopy(model)
    start = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = build_run(cfg, model=model, runtime=init_runtime("cpu")).trainer
    trainer.train_one_epoch(0)
    assert trainer.state.step == trainer.steps_per_epoch == 8  # 400 training images, batches of 50

    loader = trainer.data.train
    loader.set_epoch(0, start=0)
    batches = list(loader)  # the same augmented batches: draws are a function of (seed, epoch, sample)
    reference = initial.to(memory_format=trainer.backend.param_memory_format)
    ref_optimizer = build_optimizer(reference, cfg.optim, spec_of(cfg.model.name))
    ref_scheduler = build_scheduler(ref_optimizer, cfg.schedule, trainer.steps_per_epoch, cfg.train.epochs)
    reference_loop(reference, ref_optimizer, ref_scheduler, batches, contextlib.nullcontext, cfg.train.label_smoothing)

    trained, expected = trainer.model.state_dict(), reference.state_dict()
    assert trained.keys() == expected.keys()
    unequal = [name for name in expected if not torch.equal(trained[name], expected[name])]
    assert unequal == []
    moved = [name for name, value in start.items()
             if value.is_floating_point() and not torch.equal(value, expected[name])]
    assert len(moved) > len(expected) // 2  # the comparison is between trained models
    assert trainer.scheduler.get_last_lr() == ref_scheduler.get_last_lr()
    ours, theirs = trainer.optimizer.state_dict()["state"], ref_optimizer.state_dict()["state"]
    assert ours.keys() == theirs.keys() and all(
        torch.equal(ours[i][key], theirs[i][key]) for i in ours for key in ours[i])
