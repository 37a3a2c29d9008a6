"""The attacks of visiontrain/robust/: inside the epsilon-ball in [0, 1] pixels, stronger than noise, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from visiontrain.config.sections import CIFAR10_MEAN, CIFAR10_STD
from visiontrain.robust.attacks import (
    PixelSpace,
    apgd,
    apgd_checkpoints,
    dlr_losses,
    losses_for,
    noisy_fgsm,
    parse_pixels,
    pgd,
)
from visiontrain.robust.evaluation import AttackSpec, generator_for, robust_correct

EPS = 8 / 255
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def real_batch(cifar_slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """64 real CIFAR-10 JPEGs: their [0, 1] pixels as read from the files, the loaders' normalized images, labels."""
    classes = sorted(p.name for p in (cifar_slice / "train").iterdir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((cifar_slice / "train" / name).iterdir())[:7]]
    files = files[:64]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                          for f, _ in files]).float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return pixels, (pixels - mean) / std, torch.tensor([c for _, c in files])


@pytest.fixture(scope="module")
def fitted(real_batch) -> nn.Module:
    """A small CNN fitted to the batch (a model that classifies most of it, as attacks are meant for)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    _, images, labels = real_batch
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() > 0.5
    return model


def space() -> PixelSpace:
    return PixelSpace(CIFAR10_MEAN, CIFAR10_STD, CPU)


def losses_only(model, s, labels):
    """A training attack's loss: losses without correctness (the attack returns its last iterate)."""
    with_correct = losses_for(model, s, labels)
    return lambda pixels: with_correct(pixels)[0]


def test_pixel_space_round_trip_and_fractions():
    s = space()
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(s.to_pixels(s.to_inputs(x)), x, atol=1e-6)
    assert parse_pixels("8/255", "e") == pytest.approx(8 / 255) and parse_pixels(0.5, "e") == 0.5
    for bad in ("abc", "1/0", "inf", ""):
        with pytest.raises(ValueError, match="e="):
            parse_pixels(bad, "e")


@pytest.mark.parametrize("method", ["fgsm_rs", "pgd", "apgd"])
def test_the_attack_raises_the_loss_and_stays_in_the_ball_of_the_real_pixels(real_batch, fitted, method):
    pixels_from_files, images, labels = real_batch
    s = space()
    loss_of = losses_only(fitted, s, labels)
    g = generator_for(CPU, 0, 1)
    if method == "fgsm_rs":
        adversarial = pgd(loss_of, s.to_pixels(images), EPS, 1.25 * EPS, 1, True, g)
    elif method == "pgd":
        adversarial = pgd(loss_of, s.to_pixels(images), EPS, 2 / 255, 7, True, g)
    else:
        adversarial = apgd(loss_of, s.to_pixels(images), EPS, 20, g)
    # What the model reads (normalized), taken back to pixels by hand, against the files' own pixels.
    model_input = s.to_inputs(adversarial)
    seen = model_input * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    assert (seen - pixels_from_files).abs().max() <= EPS + 1e-5
    assert seen.min() >= -1e-6 and seen.max() <= 1 + 1e-6
    assert (adversarial - pixels_from_files).abs().max() > 0.9 * EPS  # it used the ball
    with torch.no_grad():
        clean_loss = F.cross_entropy(fitted(images), labels, reduction="none")
        attacked_loss = F.cross_entropy(fitted(model_input), labels, reduction="none")
        noise = s.to_inputs((s.to_pixels(images) + EPS * torch.randn_like(images).sign()).clamp(0, 1))
        noise_loss = F.cross_entropy(fitted(noise), labels, reduction="none")
    assert attacked_loss.mean() > clean_loss.mean() + 0.5
    assert attacked_loss.mean() > noise_loss.mean() + 0.3  # the gradient's direction, not any perturbation
    assert (attacked_loss > clean_loss).float().mean() > 0.9


def test_pgd_with_zero_steps_and_no_random_start_is_the_identity(real_batch, fitted):
    _, images, labels = real_batch
    s = space()
    pixels = s.to_pixels(images)
    assert torch.equal(pgd(losses_for(fitted, s, labels), pixels, EPS, EPS, 0, False), pixels)
    start = pgd(losses_for(fitted, s, labels), pixels, EPS, EPS, 0, True, generator_for(CPU, 3))
    assert 0 < (start - pixels).abs().max() <= EPS + 1e-7


def test_fgsm_with_a_random_start_is_one_signed_gradient_step_from_the_start(real_batch, fitted):
    _, images, labels = real_batch
    s = space()
    pixels = s.to_pixels(images)
    loss_of = losses_only(fitted, s, labels)
    start = pgd(loss_of, pixels, EPS, 0, 0, True, generator_for(CPU, 5))
    x = start.clone().requires_grad_(True)
    grad, = torch.autograd.grad(loss_of(x).sum(), x)
    by_hand = torch.min(torch.max(start + 1.25 * EPS * grad.sign(), pixels - EPS), pixels + EPS).clamp(0, 1)
    assert torch.equal(pgd(loss_of, pixels, EPS, 1.25 * EPS, 1, True, generator_for(CPU, 5)), by_hand)


def test_n_fgsm_is_one_step_from_twice_wider_noise_not_projected_back_into_the_ball(real_batch, fitted):
    pixels_from_files, images, labels = real_batch
    s = space()
    pixels = s.to_pixels(images)
    loss_of = losses_only(fitted, s, labels)
    adversarial = noisy_fgsm(loss_of, pixels, 2 * EPS, EPS, generator_for(CPU, 5))
    start = pgd(loss_of, pixels, 2 * EPS, 0, 0, True, generator_for(CPU, 5))  # the same draw, 2 eps wide
    x = start.clone().requires_grad_(True)
    grad, = torch.autograd.grad(loss_of(x).sum(), x)
    assert torch.equal(adversarial, (start + EPS * grad.sign()).clamp(0, 1))
    distance = (adversarial - pixels_from_files).abs()
    assert distance.max() <= 3 * EPS + 1e-5 and distance.max() > 2 * EPS  # beyond the eps-ball: no projection
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        attacked = F.cross_entropy(fitted(s.to_inputs(adversarial)), labels)
        noise_only = F.cross_entropy(fitted(s.to_inputs(start)), labels)
    assert attacked > noise_only + 0.3


def test_adversarial_defaults_per_method():
    from visiontrain.config import load_config

    def adversarial(*overrides):
        return load_config(None, list(overrides)).adversarial

    n_fgsm = adversarial("adversarial.method=n_fgsm")
    assert (n_fgsm.step_size, n_fgsm.noise_width, n_fgsm.attack_steps) == pytest.approx((EPS, 2 * EPS, 1))
    assert adversarial("adversarial.method=n_fgsm", "adversarial.noise=4/255").noise_width == pytest.approx(4 / 255)
    fgsm = adversarial("adversarial.method=fgsm_rs")
    assert (fgsm.step_size, fgsm.attack_steps) == pytest.approx((1.25 * EPS, 1))
    assert adversarial("adversarial.method=pgd").step_size == pytest.approx(2.5 * EPS / 7)


def test_random_starts_follow_the_seed(real_batch, fitted):
    _, images, labels = real_batch
    s = space()
    loss_of = losses_for(fitted, s, labels)

    def attack(*key):
        return pgd(loss_of, s.to_pixels(images), EPS, EPS / 4, 2, True, generator_for(CPU, *key))

    assert torch.equal(attack(0, 22, 1, 7), attack(0, 22, 1, 7))
    assert not torch.equal(attack(0, 22, 1, 7), attack(0, 22, 2, 7))  # another epoch


def test_apgd_checkpoints_are_the_papers():
    # Croce and Hein 2020, section 3.2: for 100 iterations the step size may halve at these iterations.
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_evaluation_keeps_an_images_first_misclassified_iterate(real_batch, fitted):
    """The highest-loss point need not be misclassified; an image fooled at any iterate counts as broken."""
    _, images, labels = real_batch
    s = space()
    pixels = s.to_pixels(images[:4])
    calls = iter([True, False, True])  # still right, fooled at the second iterate, right again at the third

    def loss_of(x):
        verdict = next(calls)
        return (x - pixels).sum(dim=(1, 2, 3)), torch.full((x.shape[0],), verdict)

    out = pgd(loss_of, pixels, EPS, EPS / 2, 3, False)
    second = torch.min(torch.max(pixels + EPS / 2, pixels - EPS), pixels + EPS).clamp(0, 1)  # after one step
    assert torch.equal(out, second)


def test_bad_fractions_are_value_errors_not_overflows():
    with pytest.raises(ValueError, match="e="):
        parse_pixels("1e400", "e")


def test_dlr_loss_is_the_difference_of_logits_ratio():
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0], [1.0, 4.0, 2.0, 0.0]])
    labels = torch.tensor([0, 0])
    # Correct: -(5 - 3) / (5 - 1); wrong: -(1 - 4) / (4 - 1).
    assert torch.allclose(dlr_losses(logits, labels), torch.tensor([-0.5, 1.0]))
    assert torch.allclose(dlr_losses(3 * logits, labels), dlr_losses(logits, labels))  # scale-invariant


def test_apgd_is_at_least_as_strong_as_pgd_and_a_tiny_ball_keeps_clean_accuracy(real_batch, fitted):
    _, images, labels = real_batch
    s = space()

    def accuracy(spec: AttackSpec) -> tuple[float, float]:
        clean, robust = robust_correct(fitted, s, images, labels, spec, lambda r: generator_for(CPU, 9, r))
        return clean.float().mean().item(), robust.float().mean().item()

    clean, robust_pgd = accuracy(AttackSpec("pgd", 4 / 255, 10))
    _, robust_apgd = accuracy(AttackSpec("apgd", 4 / 255, 20))
    assert robust_pgd < clean - 0.2  # a model trained the usual way is not robust
    assert robust_apgd <= robust_pgd
    _, tiny = accuracy(AttackSpec("pgd", 1e-6, 5))
    assert tiny == pytest.approx(clean, abs=1 / 64)


def test_under_bf16_autocast_the_attack_still_raises_the_loss(real_batch, fitted):
    _, images, labels = real_batch
    s = space()

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    with_correct = losses_for(fitted, s, labels, autocast=autocast)
    adversarial = pgd(lambda pixels: with_correct(pixels)[0], s.to_pixels(images), EPS, 2 / 255, 5, True,
                      generator_for(CPU, 1))
    with torch.no_grad():
        assert (F.cross_entropy(fitted(s.to_inputs(adversarial)), labels) >
                F.cross_entropy(fitted(images), labels) + 0.5)



@pytest.mark.parametrize("overrides, message", [
    (["adversarial.method=pgd", "adversarial.epsilon=abc"], "'adversarial.epsilon' = 'abc' is invalid: in (0, 1]"),
    (["adversarial.method=pgd", "adversarial.epsilon=0"], "'adversarial.epsilon' = '0' is invalid"),
    (["adversarial.method=pgd", "adversarial.epsilon=2"], "'adversarial.epsilon' = '2' is invalid"),
    (["adversarial.method=pgd", "adversarial.alpha=-1/255"], "'adversarial.alpha' = '-1/255' is invalid"),
    (["adversarial.method=pgd", "adversarial.steps=0"], "'adversarial.steps' = 0 is invalid: must be >= 1"),
    (["adversarial.method=fgsm"], "allowed none, fgsm_rs, n_fgsm, pgd (did you mean"),
    (["adversarial.method=fgsm_rs", "adversarial.noise=16/255"], "'adversarial.noise' = '16/255' is invalid: "
                                                                 "applies to method=n_fgsm only"),
    (["adversarial.method=n_fgsm", "adversarial.noise=0"], "'adversarial.noise' = '0' is invalid: in (0, 1]"),
    (["adversarial.method=pgd", "adversarial.collapse_drop=0"], "'adversarial.collapse_drop' = 0.0 is invalid"),
    (["train.monitor=robust_top1"], "robust_top1 is measured by adversarial training's check"),
    (["adversarial.method=pgd", "parallel.strategy=deepspeed",
      "parallel.deepspeed_config=configs/deepspeed/zero2.json"], "runs with parallel.strategy=ddp, not deepspeed"),
])
def test_bad_adversarial_settings_are_refused_naming_the_key(overrides, message):
    from visiontrain.config import load_config
    from visiontrain.infra.errors import UsageError

    with pytest.raises(UsageError) as err:
        load_config(None, overrides)
    assert "Traceback" not in str(err.value)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_epsilon_stops_train_py_with_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    result = subprocess.run([sys.executable, "train.py", "adversarial.method=fgsm_rs", "adversarial.epsilon=8/0",
                             f"run.dir={tmp_path / 'run'}", "--check", "1"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "adversarial.epsilon" in result.stderr and not (tmp_path / "run").exists()


def test_training_with_n_fgsm_attacks_each_batch_with_its_seeded_noise(real_batch, fitted):
    from visiontrain.config import load_config
    from visiontrain.robust.evaluation import SALT_TRAIN
    from visiontrain.robust.training import AdversarialBatches

    _, images, labels = real_batch
    cfg = load_config(None, ["adversarial.method=n_fgsm", "adversarial.noise=12/255"]).adversarial
    adversary = AdversarialBatches(cfg, fitted, CIFAR10_MEAN, CIFAR10_STD, CPU, seed=3, rank=1)
    s = space()
    expected = noisy_fgsm(losses_only(fitted, s, labels), s.to_pixels(images), 12 / 255, EPS,
                          generator_for(CPU, 3, SALT_TRAIN, 2, 5, 1))
    attacked = adversary(images, labels, epoch=2, micro=5)
    assert torch.allclose(attacked, s.to_inputs(expected), atol=1e-6)
    assert not torch.allclose(adversary(images, labels, epoch=2, micro=6), attacked)  # another batch, other noise
