"""processes/slim.py: a package registered without its __init__, ssl hidden for a block, and a
module that needs HTTPS imported beside an http.client that has none. Each in a fresh
interpreter (they change sys.modules)."""

from __future__ import annotations

from test_import_hygiene import run_fresh


def test_a_bare_package_imports_its_submodules_without_its_init() -> None:
    out = run_fresh("import sys\n"
                    "from llmctl.daemon.processes.slim import bare_package\n"
                    "bare_package('werkzeug')\n"
                    "from werkzeug.routing import Map\n"
                    "import werkzeug\n"
                    "print('werkzeug.serving' in sys.modules, 'werkzeug.test' in sys.modules,"
                    " hasattr(werkzeug, 'run_simple'), callable(Map))\n")
    assert out.split() == ["False", "False", "False", "True"]


def test_ssl_is_missing_inside_the_block_and_importable_after_it() -> None:
    out = run_fresh("import sys\n"
                    "from llmctl.daemon.processes.slim import without_ssl\n"
                    "with without_ssl():\n"
                    "    import http.client\n"
                    "print(hasattr(http.client, 'HTTPSConnection'), 'ssl' in sys.modules)\n"
                    "import ssl\n"
                    "print(callable(ssl.create_default_context))\n")
    assert out.split() == ["False", "False", "True"]


def test_a_module_needing_https_gets_its_own_http_client() -> None:
    out = run_fresh("import sys\n"
                    "from llmctl.daemon.processes.slim import import_needing_https, without_ssl\n"
                    "with without_ssl():\n"
                    "    import http.client\n"
                    "ours = http.client\n"
                    "exposition = import_needing_https('prometheus_client.exposition')\n"
                    "import http\n"
                    "print(callable(exposition.generate_latest), sys.modules['http.client'] is"
                    " ours, http.client is ours, hasattr(ours, 'HTTPSConnection'))\n")
    assert out.split() == ["True", "True", "True", "False"]
