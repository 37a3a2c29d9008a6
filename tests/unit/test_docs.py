"""The documentation stays true: README short, links alive, example config as claimed, reference descriptions
from the source (that the generated reference is current: tests/integration/test_docs_reference.py)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from visiontrain import config
from visiontrain.config import reference as config_docs

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
QUICKSTART = ["make demo", "make test"]
README_MAX_LINES = 190  # a front page: detail belongs in docs/


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_reference_descriptions_come_from_source_comments():
    @__import__("dataclasses").dataclass
    class Example:
        # Line one above
        # line two above.
        first: int = 1  # trailing
        second: str = "x"

        third: float = 0.5  # only trailing | with a pipe

    comments = config_docs._comments(Example)
    assert comments == {"first": "Line one above line two above. trailing", "second": "",
                        "third": "only trailing | with a pipe"}
    assert config_docs._cell(comments["third"]) == "only trailing \\| with a pipe"


def test_readme_is_short_and_starts_with_the_quickstart():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    assert len(fences) >= 2, "README.md has no fenced code block"
    block = lines[fences[0] + 1:fences[1]]
    commands = [line.split("#", 1)[0].strip() for line in block]
    assert [c for c in commands if c] == QUICKSTART, block


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            slug = _slug(m.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


def _broken_links(path: Path) -> list[str]:
    broken = []
    for target in _links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path):
    broken = _broken_links(path)
    assert not broken, f"broken links in {path.relative_to(ROOT)}: {broken}"


def test_link_check_finds_missing_files_and_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Data preparation: `python -m visiontrain prep`\n\n## When to use which\n"
                    "[a](page.md#when-to-use-which) [b](#data-preparation-python--m-visiontrain-prep) "
                    "[c](https://example.org/x.md) `[d](in-code.md)`\n"
                    "[e](missing.md) [f](page.md#no-such-heading)\n```\n[g](in-block.md)\n```\n")
    assert _broken_links(page) == ["missing.md (no such file)", "page.md#no-such-heading (no such heading)"]


def test_docs_pages_exist():
    for name in ("data", "training", "deepspeed", "finetuning", "deploy", "cluster", "benchmarks", "configuration"):
        assert (DOCS / f"{name}.md").is_file(), name


def _flat(cfg: config.Config) -> dict[str, object]:
    return {f"{s}.{k}": v for s, values in config.to_dict(cfg).items() for k, v in values.items()}


def test_resnet18_example_is_the_default_run_except_what_its_header_says():
    path = ROOT / "configs" / "cifar10" / "resnet18.yaml"
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    claimed = {"data.num_workers": 8}  # the header: "the default run ... spelled out, except data.num_workers: 8"
    assert "the default run" in header[0] and all(k in " ".join(header) for k in claimed), header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a renamed key still in the file is not this test's concern
        loaded = _flat(config.load_config(path))
    default = _flat(config.load_config(None, []))  # the default run, the model's normalization filled in
    differs = {k: loaded[k] for k in default if loaded[k] != default[k] and k != "run.dir"}
    assert differs == claimed
