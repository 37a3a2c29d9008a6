"""docs/configuration.md, generated from the config dataclasses' source, is current and lists every key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from visiontrain import config
from visiontrain.config import reference as config_docs


@pytest.fixture(scope="module")
def rendered() -> str:
    """config_docs.render() in a fresh interpreter: CPython 3.11's ast.parse (inspect.getsource) can fail
    with "AST constructor recursion depth mismatch" inside a long-lived test process."""
    result = subprocess.run([sys.executable, "-c", "import sys\nfrom visiontrain.config.reference import render\n"
                             "sys.stdout.write(render())"], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout


def test_configuration_reference_is_current(rendered):
    generated = rendered
    current = config_docs.OUTPUT.read_text(encoding="utf-8") if config_docs.OUTPUT.is_file() else ""
    assert current == generated, (
        f"{config_docs.OUTPUT.relative_to(ROOT)} is stale or missing: run `python -m visiontrain.config.reference`"
    )


def test_configuration_reference_lists_every_key_once_with_its_default(rendered):
    text = rendered
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.]+)` \|.*$", text, re.MULTILINE)}
    keys = config.all_keys()
    assert keys, "the config has no keys"
    missing = [k for k in keys if k not in rows]
    assert not missing, f"keys missing from the reference: {missing}"
    defaults = config.to_dict(config.Config())
    for key in keys:
        section, name = key.split(".", 1)
        assert f"| `{config_docs._value(defaults[section][name])}` |" in rows[key], (key, rows[key])
    for key, choices in config.CHOICES.items():
        assert all(f"`{c}`" in rows[key] for c in choices), (key, rows[key])


def test_the_augmentation_ops_in_docs_data_md_are_current_and_list_every_augment_key():
    result = subprocess.run([sys.executable, "-m", "visiontrain.data.ops.reference", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    assert all(f"| `{key}` |" in text for key in config.all_keys() if key.startswith("augment."))
    assert all(name in text for name in ("RandAugment", "TrivialAugmentWide", "Random erasing", "3-Augment",
                                         "Mixup and CutMix"))
