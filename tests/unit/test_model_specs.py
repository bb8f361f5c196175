"""What a model name on the command line is taken to be: a path that can only be a path is
never sent to the hub."""

from __future__ import annotations

from pathlib import Path

import pytest

import atlas.models.loading as loading
from atlas.errors import AtlasError


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hub's downloads, recorded instead of made."""
    asked: list[str] = []

    def download(name: str) -> Path:
        asked.append(name)
        return Path("/hub") / name

    monkeypatch.setattr(loading, "_download", download)
    return asked


@pytest.mark.parametrize("spec", ["/no/such/folder", "./missing", "../up", "~/nope", "a/b/c"])
def test_a_missing_folder_is_named_as_given(spec: str, hub: list[str]) -> None:
    with pytest.raises(AtlasError, match=f"^no folder {spec}: a local model is a folder"):
        loading.resolve_spec(spec)
    assert hub == []


def test_a_home_directory_nobody_has_is_one_line(hub: list[str]) -> None:
    """``~nobody-here/x``: Python's expanduser raised "Could not determine home directory"."""
    with pytest.raises(AtlasError, match="^no folder ~nobody-here/x: ~nobody-here names no user"):
        loading.resolve_spec("~nobody-here/x")
    assert hub == []


@pytest.mark.parametrize("spec", ["gpt2", "EleutherAI/pythia-70m"])
def test_a_hub_id_goes_to_the_hub(spec: str, hub: list[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert loading.resolve_spec(spec).folder == Path("/hub") / spec and hub == [spec]
