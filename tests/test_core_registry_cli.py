"""Registry lookups with suggestions, and the CLI dispatcher."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drivedistill import registry
from drivedistill.cli import main


def test_unknown_kind_and_name() -> None:
    with pytest.raises(registry.RegistryError, match="unknown component kind"):
        registry.get("nope", "x")
    with pytest.raises(registry.RegistryError, match="unknown student 'transfusr'"):
        registry.get("student", "transfusr")


def test_cli_unknown_command_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["colect"]) == 2
    assert "Did you mean 'collect'" in capsys.readouterr().err


def test_cli_list_prints_every_kind() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "drivedistill.cli", "list"], capture_output=True, text=True, check=True
    ).stdout
    for kind in registry.KIND_PACKAGES:
        assert f"{kind}s:" in out
