# NixOS VM test of services.llmctld (flake check `nixos-module`, Linux only): the service starts,
# the CLI reaches it, a switch starts llama-server from backendPackage, a reload keeps it, and
# stopping the service stops llama-server too. The backend is the test suite's fake llama-server
# (stdlib Python), so the check builds in seconds instead of compiling llama.cpp.
{ pkgs, module }:

let
  fakeBackend = pkgs.writeShellScriptBin "llama-server" ''
    exec ${pkgs.python3}/bin/python3 ${../tests/support/fake_llama_server.py} "$@"
  '';
  models = pkgs.runCommand "llmctl-test-models" { } ''
    mkdir -p $out/tiny
    echo '{"load_seconds": 0.2}' > $out/tiny/tiny.gguf
    cat > $out/tiny/config.yaml <<'EOF'
    id: tiny-a
    name: Tiny A
    model_file: tiny.gguf
    EOF
  '';
in
pkgs.testers.runNixOSTest {
  name = "llmctld";

  nodes.machine = {
    imports = [ module ];
    services.llmctld = {
      enable = true;
      backendPackage = fakeBackend;
      modelsDir = "${models}";
      port = 16500;
      settings.server.port = 16501;
    };
  };

  testScript = ''
    machine.wait_for_unit("llmctld.service")
    machine.wait_until_succeeds("llmctl status", timeout=60)
    machine.succeed("llmctl switch tiny-a")
    machine.succeed("pgrep -u llmctl -f fake_llama_server")
    machine.succeed("test $(stat -c %U /run/llmctl/llmctld.pid) = llmctl")

    # PATH holds the two packages (llmctl, the fake llama-server) and nothing else.
    environment = machine.succeed("systemctl show -P Environment llmctld").split()
    path = next(item for item in environment if item.startswith("PATH="))
    for entry in path.removeprefix("PATH=").split(":"):
        assert "-llmctl-" in entry or entry.endswith(("-llama-server/bin", "-llama-server/sbin")), path

    machine.succeed("systemctl reload llmctld")
    machine.succeed("llmctl status")
    machine.succeed("pgrep -f fake_llama_server")

    machine.systemctl("stop llmctld.service")
    machine.fail("pgrep -f fake_llama_server")
    machine.fail("llmctl status")
  '';
}
