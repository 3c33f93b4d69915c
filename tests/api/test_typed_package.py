"""The Python API's types reach a user's type checker: the package carries PEP 561's marker,
without which mypy skips `import batchrun` ("missing library stubs or py.typed marker")."""

from __future__ import annotations

from importlib.resources import files


def test_the_package_says_it_is_typed() -> None:
    assert files("batchrun").joinpath("py.typed").is_file()
