"""Fixtures of the page tests: the real app served by `streamlit run`, for the browser tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser import StreamlitServer, require_browser


@pytest.fixture(scope="module")
def streamlit_server() -> Iterator[StreamlitServer]:
    """The app served by `streamlit run` for the tests of one module; always terminated afterwards."""
    require_browser()  # no point starting a server that no browser will visit
    server = StreamlitServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
