"""The rule for tests marked ``vision`` (they need torchvision, timm and pycocotools: the vision environment,
``make vision``). conftest.py imports the hook from here, so that pytest finds it there."""

from __future__ import annotations

import importlib
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "vision: needs torchvision, timm and pycocotools; runs in the vision environment (make test-vision)")


def _vision_missing() -> str | None:
    """Why the vision environment is not here (torchvision, timm or pycocotools fails to import), or None."""
    for module in ("torchvision", "timm", "pycocotools.cocoeval"):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001  (a torchvision built for another torch raises RuntimeError)
            return f"{module} does not import ({type(e).__name__}): run it in the vision environment (make test-vision)"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vision`` skip, in one line, where the vision environment is missing, except under
    RESPROUT_REQUIRE_VISION=1 (``make test-vision``), where they must run. ``make test`` deselects them."""
    marked = [item for item in items if item.get_closest_marker("vision")]
    if not marked or os.environ.get("RESPROUT_REQUIRE_VISION") == "1":
        return
    reason = _vision_missing()
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))
