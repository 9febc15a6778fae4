# NixOS module: services.llmctl-worker, a machine that lends its devices to a llmctld elsewhere
# (`llmctl worker`: one llama.cpp rpc-server, supervised). Imported by module.nix, so the
# flake's nixosModules.default has it beside services.llmctld.
#
# rpc-server has no authentication: it listens on loopback unless allowNetwork is set, and the
# firewall stays closed unless openFirewall is set too. See docs/multi-machine.md.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) types;

  cfg = config.services.llmctl-worker;
  loopback = [
    "127.0.0.1"
    "localhost"
  ];
  cacheDir = "/var/cache/llmctl-worker";

  args = [
    "worker"
    "--host"
    cfg.host
    "--port"
    (toString cfg.port)
    "--name"
    cfg.name
  ]
  ++ lib.optional cfg.allowNetwork "--allow-network"
  ++ lib.optionals (cfg.threads != null) [
    "--threads"
    (toString cfg.threads)
  ]
  ++ lib.optionals (cfg.devices != [ ]) [
    "--device"
    (lib.concatStringsSep "," cfg.devices)
  ]
  ++ lib.optionals cfg.cache [
    "--cache-dir"
    cacheDir
  ]
  ++ cfg.extraArgs;
in
{
  options.services.llmctl-worker = {
    enable = lib.mkEnableOption "an llmctl RPC worker: one llama.cpp rpc-server whose devices a llmctld on another machine can use";

    package = lib.mkOption {
      type = types.package;
      defaultText = lib.literalExpression "inputs.llmctl.packages.\${system}.llmctl-unwrapped";
      description = "The llmctl package (it runs `llmctl worker`).";
    };

    backendPackage = lib.mkOption {
      type = types.package;
      default = pkgs.llama-cpp.override { rpcSupport = true; };
      defaultText = lib.literalExpression "pkgs.llama-cpp.override { rpcSupport = true; }";
      example = lib.literalExpression "pkgs.llama-cpp.override { rpcSupport = true; cudaSupport = true; }";
      description = ''
        A llama.cpp built with RPC support (nixpkgs: `rpcSupport = true`), providing
        `bin/llama-rpc-server`, `bin/ggml-rpc-server` or `bin/rpc-server`. Use the same
        llama.cpp version as the llmctld host: the RPC protocol must match.
      '';
    };

    host = lib.mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = ''
        IPv4 address rpc-server listens on. rpc-server has no authentication: anyone who
        reaches it can run code on this machine's devices and read their memory. Keep it on
        loopback and reach it through an SSH tunnel, or set
        {option}`services.llmctl-worker.allowNetwork` on a private network you trust.
      '';
    };

    port = lib.mkOption {
      type = types.port;
      default = 50052;
      description = "Port rpc-server listens on.";
    };

    name = lib.mkOption {
      type = types.str;
      default = "rpc";
      description = "Name in the process title and the log file (`/run/llmctl-worker/logs/worker-<name>.log`).";
    };

    allowNetwork = lib.mkOption {
      type = types.bool;
      default = false;
      description = "Allow a {option}`services.llmctl-worker.host` other than loopback (`llmctl worker --allow-network`).";
    };

    openFirewall = lib.mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open {option}`services.llmctl-worker.port` in the firewall (only with allowNetwork).
        It opens it to every host that can reach this one: prefer a rule for the llmctld host
        alone, or an interface of a private network.
      '';
    };

    threads = lib.mkOption {
      type = types.nullOr types.int;
      default = null;
      description = "CPU threads of the CPU device (`--threads`); null: rpc-server's default.";
    };

    devices = lib.mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "CUDA0" ];
      description = "Devices to offer (`--device`); empty: every accelerator, else the CPU.";
    };

    cache = lib.mkOption {
      type = types.bool;
      default = false;
      description = "Keep received tensors in `${cacheDir}`, so a reload of the model does not send them again.";
    };

    extraArgs = lib.mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More arguments for `llmctl worker`.";
    };

    environment = lib.mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        CUDA_VISIBLE_DEVICES = "0";
      };
      description = "Extra environment for the worker and its rpc-server (not PATH).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.allowNetwork || lib.elem cfg.host loopback;
        message = "services.llmctl-worker.host is ${cfg.host}: rpc-server has no authentication; set services.llmctl-worker.allowNetwork = true to listen beyond loopback (or reach it through an SSH tunnel).";
      }
      {
        assertion = !cfg.openFirewall || cfg.allowNetwork;
        message = "services.llmctl-worker.openFirewall needs allowNetwork: a loopback worker has nothing to open.";
      }
      {
        assertion = !(cfg.environment ? PATH);
        message = "services.llmctl-worker.environment must not set PATH: it is built from package and backendPackage.";
      }
    ];

    warnings = lib.optional cfg.allowNetwork "services.llmctl-worker listens on ${cfg.host}:${toString cfg.port}: rpc-server has no authentication, so let only the llmctld host reach that port.";

    networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && cfg.allowNetwork) cfg.port;

    systemd.services.llmctl-worker = {
      description = "llmctl worker: a llama.cpp rpc-server for a llmctld elsewhere";
      documentation = [ "https://github.com/sigilmakes/llmctl/blob/main/docs/multi-machine.md" ];
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      path = lib.mkForce [
        cfg.package
        cfg.backendPackage
      ];
      environment = cfg.environment // {
        LLMCTL_RUNTIME_HOME = "/run/llmctl-worker";
        LLMCTL_HOME = "/run/llmctl-worker";
      };
      startLimitIntervalSec = 60;
      startLimitBurst = 5;
      serviceConfig = {
        Type = "exec";
        ExecStart = "${cfg.package}/bin/llmctl ${lib.escapeShellArgs args}";
        DynamicUser = true;
        RuntimeDirectory = "llmctl-worker";
        CacheDirectory = "llmctl-worker";
        # SIGTERM to `llmctl worker`, which stops its rpc-server (SIGKILL after 10 s).
        KillMode = "mixed";
        TimeoutStopSec = 20;
        Restart = "on-failure";
        RestartSec = 2;
        ProtectHome = true;
      }
      // import ./gpu-sandbox.nix;
    };

    # On a host that runs llmctld too: start it after the worker, so that it is stopped first
    # (llama-server aborts when a worker vanishes under it).
    systemd.services.llmctld = lib.mkIf config.services.llmctld.enable {
      after = [ "llmctl-worker.service" ];
      wants = [ "llmctl-worker.service" ];
    };
  };
}
