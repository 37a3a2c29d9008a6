"""Mixup / CutMix on the device: the draws' distributions, the mixed pixels and targets, the soft-target
losses, and a mid-epoch resume with mixing and RandAugment on that ends bit-equal to the uninterrupted run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visiontrain.config import AugmentConfig, load_config
from visiontrain.infra.errors import UsageError
from visiontrain.parallel.runtime import init_runtime
from visiontrain.train.mixing import BatchMixer, smoothed_one_hot, soft_target_losses
from visiontrain.train.run import build_run


def mixer(micro_batch: int = 8, **settings) -> BatchMixer:
    return BatchMixer(AugmentConfig(**settings), num_classes=5, smoothing=0.1, seed=3, rank=0,
                      micro_batch=micro_batch)


def test_mixup_lambdas_follow_beta_alpha_alpha_and_the_switch_picks_cutmix_at_its_rate():
    alpha = 0.4
    lams = np.array([mixer(mixup_alpha=alpha).draws(0, m, 8, 16, 16).lam[0] for m in range(4000)])
    variance = 1 / (4 * (2 * alpha + 1))  # of Beta(a, a)
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - variance) < 0.01
    both = mixer(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3)
    cut = np.mean([both.draws(0, m, 8, 16, 16).cutmix[0] for m in range(4000)])
    assert abs(cut - 0.3) < 0.025
    sometimes = mixer(mixup_alpha=1.0, mix_prob=0.25)
    mixed = np.mean([sometimes.draws(0, m, 8, 16, 16).lam[0] < 1 for m in range(4000)])
    assert abs(mixed - 0.25) < 0.025


def test_draws_are_a_function_of_seed_epoch_micro_batch_and_rank():
    m = mixer(mixup_alpha=1.0, mix_mode="elem")
    a, b = m.draws(2, 5, 8, 16, 16), m.draws(2, 5, 8, 16, 16)
    assert np.array_equal(a.lam, b.lam) and len(set(a.lam)) == 8  # elem: one lambda per image
    assert not np.array_equal(a.lam, m.draws(2, 6, 8, 16, 16).lam)
    assert not np.array_equal(a.lam, m.draws(3, 5, 8, 16, 16).lam)
    other_rank = BatchMixer(AugmentConfig(mixup_alpha=1.0, mix_mode="elem"), 5, 0.1, 3, 1, 8)
    assert not np.array_equal(a.lam, other_rank.draws(2, 5, 8, 16, 16).lam)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_blends_each_image_with_its_mirror_and_the_targets_by_the_same_weight(mode):
    m = mixer(mixup_alpha=1.0, mix_mode=mode)
    images, labels = torch.rand(8, 3, 6, 6), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed, targets = m(images, labels, 1, 4)
    lam = torch.from_numpy(m.draws(1, 4, 8, 6, 6).lam).float()
    expected = lam.view(8, 1, 1, 1) * images + (1 - lam.view(8, 1, 1, 1)) * images.flip(0)
    torch.testing.assert_close(mixed, expected)
    one_hot = smoothed_one_hot(labels, 5, 0.1)
    torch.testing.assert_close(targets, lam.view(8, 1) * one_hot + (1 - lam.view(8, 1)) * one_hot.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert one_hot[0, 0] == pytest.approx(0.92) and one_hot[0, 1] == pytest.approx(0.02)  # 1 - s + s/C, s/C


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pastes_the_partners_box_and_weighs_the_targets_by_the_area_kept(mode):
    m = mixer(cutmix_alpha=1.0, mix_mode=mode)
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 10, 10).clone()
    labels = torch.arange(8) % 5
    for micro in range(20):
        d = m.draws(0, micro, 8, 10, 10)
        mixed, targets = m(images, labels, 0, micro)
        for i in range(8):
            top, bottom, left, right = d.boxes[i]
            from_partner = mixed[i, 0] == 7 - i
            assert int(from_partner.sum()) == (bottom - top) * (right - left) or i == 7 - i
            assert d.lam[i] == pytest.approx(1 - (bottom - top) * (right - left) / 100)
            assert bool(from_partner[top:bottom, left:right].all())
        if micro == 0:
            one_hot = smoothed_one_hot(labels, 5, 0.1)
            lam = torch.from_numpy(d.lam).float().view(8, 1)
            torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))


def test_soft_target_losses_equal_cross_entropy_on_smoothed_labels_and_timms_bce():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    targets = smoothed_one_hot(labels, 5, 0.1)
    torch.testing.assert_close(soft_target_losses(logits, targets, "ce"),
                               F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none"))
    torch.testing.assert_close(soft_target_losses(logits, targets, "bce").mean(),
                               F.binary_cross_entropy_with_logits(logits, targets))  # timm: mean over all


def test_mixing_a_micro_batch_of_one_is_refused_in_one_line():
    with pytest.raises(UsageError, match="holds 1: raise train.batch_size"):
        mixer(micro_batch=1, mixup_alpha=0.2)


def trainer(shapes_dir, run_dir, *overrides: str):
    cfg = load_config("configs/demo/train.yaml", [
        "data.loader=torchvision", f"data.path={shapes_dir}", f"run.dir={run_dir}", "data.image_size=16",
        "data.val_image_size=16", "data.num_workers=0", "train.batch_size=50", "train.epochs=2",
        "model.name=resnet9", "model.width=8", "checkpoint.every_steps=3", "checkpoint.keep_last=10",
        "augment.auto=rand-m9-mstd0.5-inc1", "augment.erase_prob=0.5", "augment.mixup_alpha=0.8",
        "augment.cutmix_alpha=1.0", "augment.mix_mode=elem", "train.loss=bce", "optim.name=lamb", "optim.lr=0.005",
        "optim.weight_decay=0.02", "log.progress_bar=false",
        "log.tensorboard=false", "log.report=false", "log.plots=false", *overrides])
    return build_run(cfg, runtime=init_runtime("cpu")).trainer


def test_a_run_killed_mid_epoch_with_mixing_on_resumes_bit_exactly(shapes_dir, tmp_path):
    """The "ResNet strikes back" ingredients together: RandAugment, erasing, Mixup/CutMix, BCE, LAMB."""
    whole = trainer(shapes_dir, tmp_path / "whole")
    whole.fit()
    assert whole.steps_per_epoch == 8 and type(whole.optimizer).__name__ == "Lamb"
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole", killed)
    for checkpoint in (killed / "checkpoints").iterdir():  # as if killed after step 3, mid-epoch 1
        if not checkpoint.name.startswith("step_") or int(checkpoint.stem.split("_")[1]) > 3:
            checkpoint.unlink()
    (killed / "weights.safetensors").unlink()
    resumed = trainer(shapes_dir, killed)
    assert (resumed.state.step, resumed.state.batch_in_epoch) == (3, 3)
    resumed.fit()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    plain = trainer(shapes_dir, tmp_path / "plain", "augment.mixup_alpha=0", "augment.cutmix_alpha=0")
    plain.fit()
    assert not torch.equal(next(iter(plain.model.parameters())), next(iter(whole.model.parameters())))  # mixed


def test_lamb_is_refused_under_deepspeed_which_hands_it_flat_partitions():
    with pytest.raises(UsageError, match="'optim.name' = 'lamb' is invalid: lamb is not supported with "
                                         "parallel.strategy=deepspeed"):
        load_config(None, ["parallel.strategy=deepspeed", "parallel.deepspeed_config=configs/deepspeed/zero2.json",
                           "optim.name=lamb"])
