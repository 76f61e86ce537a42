"""Documentation checks: the generated API reference, the docstring standard, relative links.

* ``docs/api.md`` matches the docstrings (``scripts/make_api_docs.py --check``, in-process;
  modules whose optional dependency is missing are skipped).
* Every name in every public module's ``__all__`` is documented, and every public function
  and class has an ``Example:`` section (the project standard).
* Every relative link in ``README.md`` and ``docs/*.md`` points to an existing file, and every
  ``#anchor`` in such a link (or a same-page one) to a heading or an HTML id of the target.
* The package description (``pyproject.toml``'s ``readme``) has no relative links: it is shown
  on a package index, where they would break.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_EXAMPLE = re.compile(r"^\s*Examples?:\s*$", re.MULTILINE)


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_api_docs", ROOT / "scripts" / "make_api_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _load_generator()


@pytest.fixture(scope="module")
def modules(generator):
    return generator.discover()


def test_api_reference_is_up_to_date(generator, modules):
    importable = [info for info in modules if info.module is not None]
    assert importable, "no public module imports"
    problems = generator.stale(generator.OUTPUT)
    assert not problems, (
        "docs/api.md is stale (" + "; ".join(problems) + "): run python scripts/make_api_docs.py"
    )
    missing = [info.name for info in modules if info.module is None]
    if missing:
        pytest.skip(f"checked all but {missing} (optional dependencies missing)")


def test_api_generator_check_mode(generator, tmp_path, capsys):
    assert generator.main(["--check"]) == 0
    stale_copy = tmp_path / "api.md"
    stale_copy.write_text(generator.OUTPUT.read_text(encoding="utf-8") + "\nextra\n")
    assert generator.main(["--check", "--output", str(stale_copy)]) == 1
    assert "stale" in capsys.readouterr().err


def test_api_reference_is_deterministic(generator, modules):
    text = generator.render(modules)
    assert text == generator.render(modules)
    assert not re.search(r" at 0x[0-9a-fA-F]+", text), "memory addresses in the reference"


def _offenders(generator, modules) -> set[str]:
    found, seen = set(), set()
    for info in modules:
        if info.module is None:
            continue
        for name in info.names:
            obj = getattr(info.module, name)
            key = generator._origin(info.name, name, obj)
            if key in seen:  # a re-export: judged once, under its first public name
                continue
            seen.add(key)
            where = f"{info.name}.{name}"
            kind = generator.kind_of(obj)
            if kind == "data":
                if not generator._data_doc(info.name, name):
                    found.add(f"{where}: undocumented data")
                continue
            doc = generator.own_doc(obj)
            if not doc:
                found.add(f"{where}: no docstring")
            elif not _EXAMPLE.search(doc):
                found.add(f"{where}: no Example: section")
    return found


def test_every_public_name_meets_the_docstring_standard(generator, modules):
    found = sorted(_offenders(generator, modules))
    assert not found, "public names below the docstring standard:\n" + "\n".join(found)


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)


def _relative_links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = _INLINE_CODE.sub("", text)
    targets = _LINK.findall(text) + _REFERENCE.findall(text)
    out = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue  # URL, mail address, same-page anchor or site-absolute path
        out.append(target)
    return out


def _link_cases():
    cases = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        if not path.is_file():
            continue
        source = path.relative_to(ROOT).as_posix()
        for target in _relative_links(path):
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            cases.append(pytest.param(source, target, resolved, id=f"{source}->{target}"))
    return cases


@pytest.mark.parametrize(("source", "target", "resolved"), _link_cases())
def test_relative_link_points_to_a_file(source, target, resolved):
    assert resolved.exists(), f"{source}: link target {target!r} does not exist ({resolved})"


def test_link_extraction(tmp_path):
    sample = (
        "[a](docs/x.md) [b](https://e.org) [c](#top) ![i](img.png)\n"
        "`[not](code.md)`\n```\n[no](fenced.md)\n```\n[ref]: other.md\n"
    )
    path = tmp_path / "sample.md"
    path.write_text(sample, encoding="utf-8")
    assert _relative_links(path) == ["docs/x.md", "img.png", "other.md"]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug, n = _slug(heading), 1
        while slug in found:  # a repeated heading gets -1, -2, ...
            slug, n = f"{_slug(heading)}-{n}", n + 1
        found.add(slug)
    found |= set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", text))
    return found


def _anchor_cases():
    cases = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = _INLINE_CODE.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))
        for target in _LINK.findall(text) + _REFERENCE.findall(text):
            if "#" not in target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            file_part, anchor = target.split("#", 1)
            resolved = (path.parent / file_part).resolve() if file_part else path
            if resolved.suffix == ".md" and resolved.is_file():
                source = path.relative_to(ROOT).as_posix()
                cases.append(pytest.param(source, target, resolved, id=f"{source}->{target}"))
    return cases


@pytest.mark.parametrize(("source", "target", "resolved"), _anchor_cases())
def test_link_anchor_exists(source, target, resolved):
    anchor = target.split("#", 1)[1]
    assert anchor in _anchors(resolved), f"{source}: no heading or id for {target!r}"


def test_anchor_slugs(tmp_path):
    path = tmp_path / "page.md"
    path.write_text(
        "# Results\n## Latent inversion (`jiio bench latent`)\n## A, b|c\n## A, b|c\n"
        '<a id="here"></a>\n```\n# not a heading\n```\n',
        encoding="utf-8",
    )
    assert _anchors(path) == {
        "results",
        "latent-inversion-jiio-bench-latent",
        "a-bc",
        "a-bc-1",
        "here",
    }


def test_package_description_has_no_relative_links():
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert readme, 'pyproject.toml: no readme = "FILE"'
    path = ROOT / readme.group(1)
    assert not _relative_links(path), f"{path.name} is shown off-site: use absolute links"
