"""A legacy chunk whose body the server stops reading part way (see tests/faults/test_clients.py for the live cases).

Between reads of the body the upload handler may stop the chunk: another
request took the upload over, or the client went silent. The view then
answers with the reason and stores nothing. The body is left half read, and
request.POST does not try to read it again afterwards (a middleware or a
hook that looked at it would otherwise block on a silent client): the
handler marks the body as read, and Django then gives an empty POST.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.support.data import payload
from tests.support.legacy import body_of, post_chunk
from tusbridge.chunked_upload.exceptions import ChunkedUploadError
from tusbridge.chunked_upload.handlers import DirectChunkHandler
from tusbridge.chunked_upload.multipart import ChunkBodyParser
from tusbridge.service import get_service

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]


@pytest.mark.real_stores  # looks at the files in the upload directory
def test_a_stopped_chunk_is_answered_and_its_body_is_not_parsed_again(
    client_logged_in: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[int] = []
    parse = ChunkBodyParser.parse

    def counted_parse(self: ChunkBodyParser) -> Any:
        parses.append(1)
        return parse(self)

    def stop(self: DirectChunkHandler, silent_for: float) -> None:
        raise ChunkedUploadError(409, detail="stopped between reads")

    monkeypatch.setattr(ChunkBodyParser, "parse", counted_parse)
    monkeypatch.setattr(DirectChunkHandler, "between_reads", stop)
    response = post_chunk(client_logged_in, payload(50_000, 1), total=100_000)
    assert response.status_code == 409
    assert body_of(response) == {"detail": "stopped between reads"}
    request = response.wsgi_request
    assert not request.POST and not request.FILES
    assert parses == [1]
    assert not get_service().records.client.keys(f"{get_service().records.prefix}:upload:*")
