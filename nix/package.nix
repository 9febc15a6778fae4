# llmctl's daemon (llmctld) and CLI (llmctl), with no llama-server: `llmctl-unwrapped`.
# The version comes from pyproject.toml, so there is one place to bump it.
{
  lib,
  python3Packages,
}:

let
  pyproject = lib.importTOML ../pyproject.toml;
  dependencies = with python3Packages; [
    gevent
    psutil
    pyyaml
    rapidfuzz
    requests
    setproctitle
    werkzeug
  ];
in
python3Packages.buildPythonApplication {
  pname = "llmctl";
  inherit (pyproject.project) version;
  pyproject = true;

  # Only what the wheel is built from: editing tests, docs or nix/ does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../llmctl
      (lib.fileset.maybeMissing ../README.md)
      (lib.fileset.maybeMissing ../LICENSE)
    ];
  };

  build-system = with python3Packages; [
    setuptools
    wheel
  ];

  inherit dependencies;
  # For the flake's devShell, which needs the same packages without llmctl itself.
  passthru.runtimeDependencies = dependencies;

  # The test suite needs a llama-server and real processes (the flake's checks run the NixOS VM
  # test instead). Here: the modules import and both programs start. (Python builders run
  # checkPhase after the install, so $out is there.)
  pythonImportsCheck = [
    "llmctl"
    "llmctl.daemon.main"
    "llmctl.cli.main"
  ];
  checkPhase = ''
    runHook preCheck
    $out/bin/llmctld --help > /dev/null
    $out/bin/llmctl --help > /dev/null
    runHook postCheck
  '';

  meta = {
    description = "One local GGUF model at a time behind a stable OpenAI-compatible endpoint (llama-server manager)";
    homepage = "https://github.com/sigilmakes/llmctl";
    license = lib.licenses.mit;
    mainProgram = "llmctl";
    platforms = lib.platforms.unix;
  };
}
