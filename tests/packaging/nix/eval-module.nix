# Evaluates nix/module.nix in a few configurations and returns what the checks look at, as JSON:
#
#   nix-instantiate --eval --strict --json -E 'import tests/packaging/nix/eval-module.nix {}'
#
# or `{ lib = import /path/to/nixpkgs/lib; }`.
#
# Without `lib`, the stand-in stub-nixpkgs/lib.nix is used. NixOS itself is not there: the options the
# module defines outside services.llmctld are declared here, loosely.
{
  lib ? import ./stub-nixpkgs/lib.nix,
  # The flake's nixosModules.default comes here with setPackage = false: it sets its own.
  module ? ../../../nix/module.nix,
  setPackage ? true,
}:

let
  pkgs = import ./stub-nixpkgs/pkgs.nix { inherit lib; };

  nixosStubs =
    let
      inherit (lib) types mkOption;
      attrs = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
    in
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        users.users = attrs;
        users.groups = attrs;
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        environment.variables = mkOption {
          type = types.attrsOf types.str;
          default = { };
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
      }
      # The stub merges undeclared definitions freely; the real lib needs a declaration, here
      # with NixOS's default PATH packages, which the module has to override.
      // lib.optionalAttrs (!(lib ? isStub)) {
        systemd.services = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              freeformType = types.attrsOf types.anything;
              options.path = mkOption {
                type = types.listOf types.package;
                default = [ ];
              };
              config.path = lib.mkAfter [ pkgs.coreutils ];
            }
          );
        };
      };
    };

  evaluate =
    services:
    (lib.evalModules {
      modules = [
        module
        nixosStubs
        { config.services.llmctld = lib.optionalAttrs setPackage { package = pkgs.llmctl-unwrapped; } // services; }
      ];
      specialArgs = { inherit pkgs; };
    }).config;

  summary =
    config:
    let
      service = (config.systemd or { }).services.llmctld or null;
    in
    {
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
    }
    // lib.optionalAttrs (service != null) {
      service = removeAttrs service [ "serviceConfig" ] // {
        serviceConfig = removeAttrs service.serviceConfig [ "ExecStartPre" ];
      };
      path = map (p: p.name) service.path;
      packageIsWrapped = config.services.llmctld.package ? backend;
      execStartPre = service.serviceConfig.ExecStartPre.text;
      settings = config.services.llmctld.configFile.value;
      users = config.users.users;
      groups = lib.attrNames config.users.groups;
      systemPackages = map (p: p.name) config.environment.systemPackages;
      inherit (config.environment) variables;
    };

  # services.llmctl-worker (nix/worker-module.nix), beside or without llmctld
  evaluateWorker =
    { worker, llmctld ? { } }:
    (lib.evalModules {
      modules = [
        module
        nixosStubs
        {
          config.services.llmctl-worker =
            lib.optionalAttrs setPackage { package = pkgs.llmctl-unwrapped; } // worker;
          config.services.llmctld = lib.optionalAttrs setPackage { package = pkgs.llmctl-unwrapped; } // llmctld;
        }
      ];
      specialArgs = { inherit pkgs; };
    }).config;

  workerSummary =
    config:
    let
      service = (config.systemd or { }).services.llmctl-worker or null;
      daemon = (config.systemd or { }).services.llmctld or null;
    in
    {
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      firewall = config.networking.firewall.allowedTCPPorts;
    }
    // lib.optionalAttrs (service != null) {
      inherit (service) serviceConfig environment wantedBy;
      path = map (p: p.name) service.path;
      llmctldAfter = if daemon == null then null else daemon.after or null;
    };

  workerScenarios = {
    worker-disabled = { worker = { }; };
    worker-defaults = { worker.enable = true; };
    worker-custom = {
      worker = {
        enable = true;
        host = "10.0.0.7";
        port = 50100;
        name = "gpu-box";
        allowNetwork = true;
        openFirewall = true;
        threads = 8;
        devices = [ "CUDA0" "CUDA1" ];
        cache = true;
        environment.CUDA_VISIBLE_DEVICES = "0,1";
      };
      llmctld.enable = true;
    };
    worker-refused = {
      worker = {
        enable = true;
        host = "0.0.0.0";
        openFirewall = true;
        environment.PATH = "/usr/bin";
      };
    };
  };

  scenarios = {
    disabled = { };
    defaults = {
      enable = true;
    };
    custom = {
      enable = true;
      backendPackage = pkgs.llama-cpp-vulkan;
      host = "127.0.0.1";
      port = 17000;
      defaultModel = "tiny-a";
      modelsDir = "/home/alice/models";
      user = "alice";
      group = "users";
      environment.GGML_VK_VISIBLE_DEVICES = "0";
      settings = {
        server.port = 11500;
        llama.ctx_size = 8192;
      };
    };
    clashing = {
      enable = true;
      host = "0.0.0.0";
      modelsDir = "models";
      environment.PATH = "/usr/bin";
      settings.daemon.port = 1234;
    };
  };
in
{
  lib = if lib ? isStub then "stub" else "nixpkgs";
}
// lib.mapAttrs (_: services: summary (evaluate services)) scenarios
// lib.mapAttrs (_: s: workerSummary (evaluateWorker s)) workerScenarios
