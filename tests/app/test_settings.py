from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme_with_its_default() -> None:
    text = README.read_text()
    for name, field in Settings.model_fields.items():
        var = f"DFG_{name.upper()}"
        row = re.search(rf"^\| `{var}` \| (.+?) \|", text, flags=re.M)
        assert row, f"{var} is missing from the README settings table"
        value = str(field.default).lower() if isinstance(field.default, bool) else field.default  # as typed in env
        default = "unset" if field.default is None else f"`{value}`"
        assert row.group(1) == default, f"{var}: README says {row.group(1)}, code says {default}"


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFG_PORT", "9123")
    monkeypatch.setenv("DFG_DEVICE", "cpu")
    s = Settings()
    assert s.port == 9123 and s.device == "cpu"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [("DFG_DEVICE", "tpu", "device"), ("DFG_PORT", "0", "port"), ("DFG_REDIS_URL", "http://x", "redis://")],
)
def test_bad_values_fail_fast(monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=needle):
        Settings()
