"""The checks before a ZeRO checkpoint of another process count is converted (the conversion itself runs in
tests/integration/test_deepspeed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from visiontrain.infra.errors import UsageError
from visiontrain.parallel import zero_reshard

CHECKPOINT = Path("/runs/a/checkpoints/step_000000016")


def test_another_zero_stage_and_a_non_adam_optimizer_are_one_line_with_the_way_forward():
    adamw = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(UsageError, match=r"holds ZeRO-2 shards of 2 processes; this run is ZeRO-3 on 1: use the "
                                         r"checkpoint's stage .* finetune.init_from=/runs/a$"):
        zero_reshard.check_convertible(adamw, CHECKPOINT, 2, 2, 3, 1)
    sgd = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(UsageError, match=r"Adam-family states only \(this optimizer is SGD\): resume with 2"):
        zero_reshard.check_convertible(sgd, CHECKPOINT, 2, 2, 2, 1)
    zero_reshard.check_convertible(adamw, CHECKPOINT, 2, 2, 2, 1)  # the case that converts


def test_parameter_names_that_are_not_the_models_are_not_converted(tmp_path):
    """The converter makes a directory per stored name: "../../x" would write outside its own directory."""
    model = nn.Sequential(nn.Linear(2, 2))
    torch.save({"param_shapes": [{"0.weight": torch.Size([2, 2]), "0.bias": torch.Size([2])}]},
               tmp_path / "mp_rank_00_model_states.pt")
    zero_reshard._check_names(tmp_path, set(model.state_dict()))
    torch.save({"param_shapes": [{"0.weight": torch.Size([2, 2]), "../../escape": torch.Size([2])}]},
               tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match=r"not this model's: \['../../escape'\]"):
        zero_reshard._check_names(tmp_path, set(model.state_dict()))
