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


def test_pywsgi_refuses_bad_client_input_through_the_two_hooks_the_handler_overrides() -> None:
    """wsgi_server.Handler answers a body pywsgi refuses to read (a chunk size like 0x1a)
    with a JSON 400: pywsgi must still report it through _handle_client_error(ex) and then
    answer through _send_error_response_if_possible(400)."""
    handler = pywsgi.WSGIHandler
    source = inspect.getsource(handler.handle_one_response)
    assert "except _InvalidClientInput as ex:" in source
    assert source.index("self._handle_client_error(ex)") < \
        source.index("self._send_error_response_if_possible(400)")
    assert list(inspect.signature(handler._handle_client_error).parameters) == ["self", "ex"]
    assert list(inspect.signature(handler._send_error_response_if_possible).parameters) == [
        "self", "error_code"]
    assert issubclass(pywsgi._InvalidClientInput, OSError)


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


def _moved(what: str) -> str:
    import huggingface_hub

    return (f"huggingface_hub {huggingface_hub.__version__}: {what}. core/hf_fetch.py (the "
            "resumable `llmctl pull`) relies on it; pyproject.toml pins huggingface-hub below "
            "the next minor version for this reason: adapt hf_fetch.py before widening it")


def test_huggingface_hub_pieces_the_resumable_pull_uses() -> None:
    """hf_fetch.py continues a partial blob with huggingface_hub's private `http_get` and
    holds the blob with its private `WeakFileLock`, names partial downloads as the library's
    cache scanner expects, and calls a few public helpers with keyword arguments: each check
    names what moved."""
    from huggingface_hub import file_download, utils
    from huggingface_hub.utils import _cache_manager

    http_get = getattr(file_download, "http_get", None)
    assert callable(http_get), _moved("file_download.http_get is gone")
    params = inspect.signature(http_get).parameters
    for name in ("url", "temp_file", "resume_size", "headers", "expected_size",
                 "displayed_filename", "tqdm_class"):
        assert name in params, _moved(f"http_get() no longer takes {name!r}")
    lock = getattr(utils, "WeakFileLock", None)
    assert callable(lock), _moved("utils.WeakFileLock is gone")
    lock_params = inspect.signature(lock).parameters
    assert list(lock_params)[:1] == ["lock_file"] and "timeout" in lock_params, \
        _moved(f"WeakFileLock{inspect.signature(lock)} is not (lock_file, *, timeout)")
    assert file_download.repo_folder_name(repo_id="a/b", repo_type="model") == "models--a--b", \
        _moved("repo_folder_name() names a repository's cache folder differently")
    assert '"*/blobs/*.incomplete"' in inspect.getsource(_cache_manager._scan_incomplete_files), \
        _moved("the cache scanner no longer counts blobs/*.incomplete as partial downloads")
    from huggingface_hub import get_hf_file_metadata

    assert "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters, \
        _moved("get_hf_file_metadata() no longer takes retry_on_errors")


def test_the_weak_file_lock_excludes_a_second_holder(tmp_path) -> None:
    """What hf_fetch.py needs of WeakFileLock, run: a second holder times out with
    filelock.Timeout (the `busy` error of a second pull of one file)."""
    import filelock
    import pytest
    from huggingface_hub.utils import WeakFileLock

    path = tmp_path / "blob.lock"
    with WeakFileLock(path, timeout=0.1):
        with pytest.raises(filelock.Timeout), WeakFileLock(path, timeout=0.1):
            raise AssertionError(_moved("WeakFileLock let a second holder in"))
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


def test_pywsgi_reads_the_request_head_where_the_client_deadlines_expect() -> None:
    """wsgi_server.Handler waits for a request's first byte in read_requestline (rfile.peek),
    times its line and headers until get_environ, and answers its HeadTimeout in
    _handle_client_error: pywsgi must still read the line there, end the connection on an
    OSError from it, hand header errors to that hook, and build the environ after both."""
    handler = pywsgi.WSGIHandler
    assert "self.rfile.readline(" in inspect.getsource(handler.read_requestline)
    source = inspect.getsource(handler.handle_one_request).split('"""')[2]  # the code
    assert "self.read_requestline()" in source and "except socket.error:" in source
    assert "return self._handle_client_error(ex)" in source
    assert source.index("if not self.read_request(") < source.index("self.environ = self.get_environ()") < \
        source.index("self.handle_one_response()")
    assert list(inspect.signature(handler._handle_client_error).parameters) == ["self", "ex"]


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
