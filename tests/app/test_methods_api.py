"""GET /methods lists every registered attack and purifier with its parameters, as their declarations state them
(models/methods.py): the page builds its choices from it (tests/browser/test_page.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.routes.attack import DEFENSE_PREFIX
from models import attacks
from models import purify as purifiers
from models.attacks.adaptive import ADAPTIVE_PARAMS
from tests.app.test_api import assert_problem, make_client
from tests.test_method_registry import toys  # noqa: F401  (a fixture: a toy attack and purifier, registered)


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url) as c:
        yield c


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def test_methods_lists_every_registered_attack_and_purifier_as_declared(client: TestClient) -> None:
    resp = client.get("/methods")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [a["name"] for a in body["attacks"]] == attacks.names()
    assert {"fgsm", "pgd", "cw_l2", "apgd_ce", "fab", "square"} <= set(attacks.names())
    assert [p["name"] for p in body["purifiers"]] == purifiers.names()
    assert body["defense_prefix"] == DEFENSE_PREFIX
    assert [p["name"] for p in body["adaptive"]] == [p.name for p in ADAPTIVE_PARAMS]
    for a in body["attacks"]:
        spec = attacks.get(a["name"])
        assert a["summary"] == spec.description and a["step_budget"] == spec.sync_budget
        assert [p["name"] for p in a["parameters"]] == [p.field for p in spec.request_params]

    fgsm = by_name(by_name(body["attacks"])["fgsm"]["parameters"])
    eps = attacks.get("fgsm").param("eps")
    # The API's bound (an eps that rounding to 8 bits undoes is refused), not the function's 0.
    assert fgsm["eps"] == {
        "name": "eps", "type": "float", "description": eps.description, "default": eps.default,
        "default_doc": None, "minimum": eps.api_low, "exclusive_minimum": False, "maximum": 1.0, "choices": None,
        "nullable": False,
    }  # fmt: skip
    assert fgsm["targeted"]["type"] == "bool" and fgsm["targeted"]["default"] is False
    step = by_name(by_name(body["attacks"])["pgd"]["parameters"])["step_size"]
    assert step["default"] is None and step["default_doc"] == "eps / 4" and step["exclusive_minimum"] is True
    cw = by_name(by_name(body["attacks"])["cw_l2"]["parameters"])
    assert cw["preset"]["choices"] == list(attacks.get("cw_l2").presets) and cw["preset"]["default"] == "default"
    assert "c" in cw and "c_init" not in cw  # the field a client sends, not the function's keyword
    dip = by_name(body["purifiers"])["dip"]
    assert dip["iterative"] is True and dip["randomized"] is True
    assert by_name(dip["parameters"])["max_iterations"]["nullable"] is True
    jpeg = by_name(body["purifiers"])["jpeg"]
    assert jpeg["iterative"] is False and by_name(jpeg["parameters"])["quality"]["maximum"] == 95


@pytest.mark.usefixtures("toys")
def test_a_method_registered_later_is_listed(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url) as c:
        body = c.get("/methods").json()
    toy = by_name(body["attacks"])["toy_brighten"]
    assert toy["summary"] == "adds a constant brightness (a test fixture)"
    assert toy["parameters"][0] | {"description": ""} == {
        "name": "strength", "type": "float", "description": "", "default": 0.25, "default_doc": None,
        "minimum": 0.0, "exclusive_minimum": False, "maximum": 1.0, "choices": None, "nullable": False,
    }  # fmt: skip
    assert "toy_posterize" in by_name(body["purifiers"])


def test_methods_is_documented_and_needs_a_key_when_keys_are_on(tiny_checkpoints: Path, redis_url: str) -> None:
    from app.auth import hash_key

    with make_client(tiny_checkpoints, redis_url, api_keys=hash_key("sesame")) as c:
        assert "/methods" in c.get("/openapi.json").json()["paths"]
        assert_problem(c.get("/methods"), 401, "needs an API key")
        assert c.get("/methods", headers={"Authorization": "Bearer sesame"}).status_code == 200
