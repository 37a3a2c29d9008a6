"""The `visiontrain` command: one subcommand per job, each the entry point's own `main`."""

from __future__ import annotations

import importlib

import pytest

from visiontrain import cli
from visiontrain.infra.errors import run_cli


def test_every_subcommand_names_a_main():
    assert set(cli.COMMANDS) == {"train", "prep", "launch", "evaluate", "export", "predict", "checkpoint", "bench",
                                 "sweep"}
    for module in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main), module


def test_an_unknown_subcommand_is_one_line_naming_it_and_the_allowed_ones(capsys):
    assert run_cli(cli.main, ["trian", "-c", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'trian'" in err[0] and "train, prep, launch" in err[0]


def test_no_subcommand_prints_the_list_and_exits_2(capsys):
    assert run_cli(cli.main, []) == 2
    assert "visiontrain export" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "prep", "evaluate", "export"])
def test_a_subcommand_reaches_its_parser(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out
