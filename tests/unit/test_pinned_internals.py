"""The proxy overrides a few private internals of gevent's pywsgi (processes/wsgi_server.py) and of
http.client (openai_proxy.py UpstreamConnection). gevent is pinned in pyproject.toml to the
versions this was written against; these checks fail the moment an upgrade (gevent or
Python) changes what the overrides rely on, instead of the proxy misbehaving quietly. The same
goes for the two huggingface_hub pieces `llmctl pull`'s resume relies on (hf_fetch.py)."""

from __future__ import annotations

import http.client
import inspect

from gevent import pywsgi


def test_pywsgi_writes_the_head_through_write_with_headers() -> None:
    handler = pywsgi.WSGIHandler
    assert list(inspect.signature(handler._write_with_headers).parameters) == ["self", "data"]
    assert "self._write_with_headers(" in inspect.getsource(handler.write)
    source = inspect.getsource(handler._write_with_headers)
    for used in ("headers_sent", "finalize_headers", "response_use_chunked", "_sendall"):
        assert used in source or hasattr(handler, used), used
    for attribute in ("_sendall", "finalize_headers", "response_use_chunked", "headers_sent",
                      "status", "response_headers", "wsgi_input", "close_connection"):
        assert hasattr(handler, attribute), attribute


def test_pywsgi_input_has_the_chunked_input_error_flag() -> None:
    assert "self._chunked_input_error = False" in inspect.getsource(pywsgi.Input.__init__)
    # the flag must still be what decides "do not drain the body, the socket will close"
    assert "if self._chunked_input_error:" in inspect.getsource(pywsgi.Input._discard)


def test_http_client_sends_head_and_body_through_send_output() -> None:
    conn = http.client.HTTPConnection
    assert list(inspect.signature(conn._send_output).parameters) == [
        "self", "message_body", "encode_chunked"]
    assert "self._send_output(message_body" in inspect.getsource(conn.endheaders)
    assert isinstance(conn("localhost")._buffer, list)
    assert "self._output(" in inspect.getsource(conn.putheader)
    assert "self._buffer.append(" in inspect.getsource(conn._output)


def test_pywsgi_result_loop_and_chunking_decision_are_what_the_relay_bypass_expects() -> None:
    """wsgi_server.Handler.process_result takes over pywsgi's result loop for a chunked upstream
    answer: it must still be the one place results are written, and finalize_headers the
    one place that decides chunking (the handler reads response_use_chunked after it)."""
    handler = pywsgi.WSGIHandler
    assert "self.process_result()" in inspect.getsource(handler.run_application)
    assert "self.response_use_chunked =" in inspect.getsource(handler.finalize_headers)
    assert "self.response_use_chunked = False" in inspect.getsource(handler.handle_one_response)
    assert "b'0\\r\\n\\r\\n'" in inspect.getsource(handler.process_result)  # it ends the body
    source = inspect.getsource(handler._sendall)
    assert "self.socket.sendall(" in source and "self.response_length +=" in source


def test_http_client_response_reads_through_a_small_buffered_file() -> None:
    """The relay's first framed read takes what fp has buffered with read1, then reads the
    socket itself: fp must be sock.makefile("rb") with a buffer smaller than READ_SIZE."""
    import io

    from llmctl.daemon.relay.openai_proxy import READ_SIZE

    assert 'self.fp = sock.makefile("rb")' in inspect.getsource(http.client.HTTPResponse.__init__)
    assert io.DEFAULT_BUFFER_SIZE < READ_SIZE
    for attribute in ("chunked", "will_close"):
        assert attribute in inspect.getsource(http.client.HTTPResponse.begin), attribute


def test_huggingface_hub_pieces_the_resumable_pull_uses() -> None:
    """hf_fetch.py continues a partial blob with huggingface_hub's `http_get` (not exported at
    the top level) and names it as the library's cache scanner expects partial downloads."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _cache_manager

    params = inspect.signature(file_download.http_get).parameters
    for name in ("url", "temp_file", "resume_size", "headers", "expected_size",
                 "displayed_filename", "tqdm_class"):
        assert name in params, name
    assert file_download.repo_folder_name(repo_id="a/b", repo_type="model") == "models--a--b"
    assert '"*/blobs/*.incomplete"' in inspect.getsource(_cache_manager._scan_incomplete_files)


def test_gevent_sockets_wait_on_their_read_watcher() -> None:
    """sockio waits, through the socket's hub, on the watcher gevent's own recv_into waits on
    (`_read_event`), then reads the plain socket inside it (`_sock`)."""
    import _socket

    from gevent import socket as gsocket
    from gevent._socketcommon import SocketMixin

    assert "self._wait(self._read_event)" in inspect.getsource(SocketMixin.recv_into)
    assert "self._sock.recv_into(" in inspect.getsource(SocketMixin.recv_into)
    a, b = gsocket.socketpair()
    try:
        assert callable(a._wait) and a._read_event is not None
        assert callable(a.hub.wait) and callable(a.hub.cancel_wait)
        assert isinstance(a._sock, _socket.socket)
        assert a._sock.gettimeout() == 0.0  # non-blocking: a read that finds nothing raises
    finally:
        a.close()
        b.close()


def test_pywsgi_sendall_counts_what_it_sends() -> None:
    """wsgi_server.Handler._sendall replaces pywsgi's and keeps its bookkeeping."""
    source = inspect.getsource(pywsgi.WSGIHandler._sendall)
    assert "self.response_length += len(data)" in source
    assert "self.socket.sendall(data)" in source


def test_pywsgi_logs_each_request_through_log_request() -> None:
    """wsgi_server.Handler turns the access log off by overriding log_request."""
    assert "self.log_request()" in inspect.getsource(pywsgi.WSGIHandler.handle_one_response)


def test_gevent_announces_patches_through_notify_and_call_entry_points() -> None:
    """proxy_worker.monkey_patch swaps gevent.events.notify_and_call_entry_points for
    gevent.events.notify while patching (no entry-point scan): that works only while
    monkey's announcements look the function up in gevent.events at call time."""
    from gevent import events
    from gevent.monkey import _util

    assert callable(events.notify) and callable(events.notify_and_call_entry_points)
    assert "from gevent.events import notify_and_call_entry_points" in \
        inspect.getsource(_util._notify_patch)
    seen: list[object] = []
    real = events.notify_and_call_entry_points
    events.notify_and_call_entry_points = seen.append
    try:
        _util._notify_patch(events.GeventWillPatchModuleEvent("x", None, None, []))
    finally:
        events.notify_and_call_entry_points = real
    assert len(seen) == 1
