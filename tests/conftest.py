"""Fixtures shared by all tests."""

from __future__ import annotations

import pytest
from helpers import labelstudio_fixture


@pytest.fixture
def ocr_config_xml() -> str:
    """The OCR label config Label Studio sent in the captured /setup request."""
    return labelstudio_fixture("setup")["schema"]
