# NixOS module: services.llmctld, a hardened system service running llmctld as `llmctl`.
#
# Layout: LLMCTL_HOME=/var/lib/llmctl (StateDirectory) holds config/default.yaml, a link to the
# file rendered from `settings`, and gguf/, a directory or a link to `modelsDir`;
# LLMCTL_RUNTIME_HOME=/run/llmctl (RuntimeDirectory) holds state.json, llmctld.pid and the
# per-model logs. The service's PATH is built from `package` and `backendPackage` only.
#
# The flake's nixosModules.default sets `package`; imported on its own, set it yourself.
# worker-module.nix (services.llmctl-worker, a machine lending its devices over RPC) comes with it.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) types;

  cfg = config.services.llmctld;
  yaml = pkgs.formats.yaml { };

  home = "/var/lib/llmctl";
  runtimeHome = "/run/llmctl";

  # host, port and defaultModel are options of their own; they are not to be set twice.
  optionKeys = {
    host = "host";
    port = "port";
    default_model = "defaultModel";
  };
  settingsDaemon = cfg.settings.daemon or { };
  clashingKeys = lib.filter (key: settingsDaemon ? ${key}) (lib.attrNames optionKeys);

  configFile = yaml.generate "llmctl-default.yaml" (
    lib.recursiveUpdate cfg.settings {
      daemon = {
        inherit (cfg) host port;
      }
      // lib.optionalAttrs (cfg.defaultModel != null) { default_model = cfg.defaultModel; };
    }
  );

  coreutils = "${pkgs.coreutils}/bin";

  # Runs as the service user before llmctld: links the managed config file and the models.
  linkFiles = pkgs.writeShellScript "llmctld-link-files" ''
    set -eu
    ${coreutils}/mkdir -p ${home}/config
    ${coreutils}/ln -sfn ${configFile} ${home}/config/default.yaml
    ${
      if cfg.modelsDir != null then
        ''
          if [ -d ${home}/gguf ] && [ ! -L ${home}/gguf ]; then
            ${coreutils}/rmdir ${home}/gguf || {
              echo "${home}/gguf holds files: move them to ${cfg.modelsDir}," \
                "or unset services.llmctld.modelsDir" >&2
              exit 1
            }
          fi
          ${coreutils}/ln -sfn ${lib.escapeShellArg cfg.modelsDir} ${home}/gguf
        ''
      else
        ''
          if [ -L ${home}/gguf ]; then ${coreutils}/rm ${home}/gguf; fi
          ${coreutils}/mkdir -p ${home}/gguf
        ''
    }
  '';

  modelsUnderHome =
    cfg.modelsDir != null
    && lib.any (dir: lib.hasPrefix dir cfg.modelsDir) [
      "/home/"
      "/root/"
      "/run/user/"
    ];

  loopback = [
    "127.0.0.1"
    "::1"
    "localhost"
  ];
in
{
  imports = [ ./worker-module.nix ];

  options.services.llmctld = {
    enable = lib.mkEnableOption "llmctld, which serves one local GGUF model (llama-server) behind an OpenAI-compatible proxy";

    package = lib.mkOption {
      type = types.package;
      defaultText = lib.literalExpression "inputs.llmctl.packages.\${system}.llmctl-unwrapped";
      description = ''
        The llmctl package (llmctld and the llmctl CLI). Use one without a llama-server of its
        own, such as `llmctl-unwrapped`: a wrapped `llmctl` puts its own llama-server first on
        the PATH, ahead of {option}`services.llmctld.backendPackage`.
      '';
    };

    backendPackage = lib.mkOption {
      type = types.package;
      default = pkgs.llama-cpp;
      defaultText = lib.literalExpression "pkgs.llama-cpp";
      example = lib.literalExpression "pkgs.llama-cpp.override { vulkanSupport = true; }";
      description = ''
        The package providing `bin/llama-server`, e.g. a Vulkan, CUDA or ROCm build of
        llama.cpp. It and {option}`services.llmctld.package` make up the service's whole PATH.
      '';
    };

    host = lib.mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = ''
        Address llmctld listens on (`daemon.host`). llmctld has no authentication: keep it on
        loopback and reach it from elsewhere through an SSH tunnel or an authenticating proxy.
      '';
    };

    port = lib.mkOption {
      type = types.port;
      default = 16384;
      description = "Port of llmctld's control API and OpenAI-compatible proxy (`daemon.port`).";
    };

    defaultModel = lib.mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "qwen3.5-35b-a3b-q8_0";
      description = ''
        Id of the model llmctld loads for the first request when none is active
        (`daemon.default_model`).
      '';
    };

    modelsDir = lib.mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/srv/models";
      description = ''
        Directory of models, one subdirectory per model holding its GGUF and `config.yaml`.
        `${home}/gguf` becomes a link to it; the `llmctl` user must be able to read it. A
        string, not a path, so that the models are not copied into the Nix store. When null,
        models go in `${home}/gguf`.
      '';
    };

    settings = lib.mkOption {
      type = yaml.type;
      default = { };
      example = lib.literalExpression ''
        {
          server.readyTimeoutMs = 300000;
          daemon.load_default_on_startup = true;
          llama = { ctx_size = 32768; flash_attn = "on"; };
        }
      '';
      description = ''
        llmctl's global configuration, written to `${home}/config/default.yaml` (see the
        configuration table in llmctl's SPEC). `daemon.host`, `daemon.port` and
        `daemon.default_model` come from the options of the same meaning.
      '';
    };

    configFile = lib.mkOption {
      type = types.path;
      readOnly = true;
      description = "The file rendered from `settings`, linked as `${home}/config/default.yaml`.";
    };

    environment = lib.mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        GGML_VK_VISIBLE_DEVICES = "0";
      };
      description = "Extra environment for llmctld and its llama-server (not PATH).";
    };

    user = lib.mkOption {
      type = types.str;
      default = "llmctl";
      description = "User llmctld runs as; `llmctl` is created when left as it is.";
    };

    group = lib.mkOption {
      type = types.str;
      default = "llmctl";
      description = "Group llmctld runs as; `llmctl` is created when left as it is.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = clashingKeys == [ ];
        message = "services.llmctld.settings.daemon sets ${lib.concatStringsSep ", " clashingKeys}: use ${
          lib.concatMapStringsSep ", " (key: "services.llmctld.${optionKeys.${key}}") clashingKeys
        } instead.";
      }
      {
        assertion = !(cfg.environment ? PATH);
        message = "services.llmctld.environment must not set PATH: it is built from services.llmctld.package and backendPackage.";
      }
      {
        assertion = cfg.modelsDir == null || lib.hasPrefix "/" cfg.modelsDir;
        message = "services.llmctld.modelsDir must be an absolute path.";
      }
    ];

    warnings =
      lib.optional (!lib.elem cfg.host loopback) "services.llmctld.host is ${cfg.host}: llmctld has no authentication, so anyone who can reach that address can drive it."
      ++ lib.optional (cfg.package ? backend && cfg.package.backend != cfg.backendPackage) "services.llmctld.package is a wrapped llmctl whose own llama-server shadows services.llmctld.backendPackage; use llmctl-unwrapped.";

    services.llmctld.configFile = configFile;

    users.users = lib.mkIf (cfg.user == "llmctl") {
      llmctl = {
        isSystemUser = true;
        inherit (cfg) group;
        inherit home;
        description = "llmctld service user";
      };
    };
    users.groups = lib.mkIf (cfg.group == "llmctl") { llmctl = { }; };

    # The CLI (and the Pi extension) find the daemon through these.
    environment.systemPackages = [ cfg.package ];
    environment.variables = {
      LLMCTL_HOST = cfg.host;
      LLMCTL_PORT = toString cfg.port;
    };

    systemd.services.llmctld = {
      description = "llmctld: one local GGUF model (llama-server) behind an OpenAI-compatible proxy";
      documentation = [ "https://github.com/sigilmakes/llmctl" ];
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];

      # mkForce drops NixOS's default service PATH (coreutils, findutils, grep, sed, systemd).
      path = lib.mkForce [
        cfg.package
        cfg.backendPackage
      ];
      environment = cfg.environment // {
        LLMCTL_HOME = home;
        LLMCTL_RUNTIME_HOME = runtimeHome;
      };

      # Give up after 5 failed starts in a minute (e.g. the port held by another program).
      startLimitIntervalSec = 60;
      startLimitBurst = 5;

      serviceConfig = {
        Type = "exec";
        User = cfg.user;
        Group = cfg.group;
        ExecStartPre = linkFiles;
        ExecStart = "${cfg.package}/bin/llmctld";
        ExecReload = "${coreutils}/kill -HUP $MAINPID";
        StateDirectory = "llmctl";
        StateDirectoryMode = "0750";
        RuntimeDirectory = "llmctl";
        RuntimeDirectoryMode = "0750";
        # Keeps state.json and the model logs across a crash restart.
        RuntimeDirectoryPreserve = "restart";
        WorkingDirectory = home;
        UMask = "0027";

        Restart = "on-failure";
        RestartSec = 2;
        # SIGTERM goes to llmctld alone, which stops its llama-server (its own process group)
        # with a grace period of its own; whatever is left in the cgroup after TimeoutStopSec
        # gets SIGKILL.
        KillMode = "mixed";
        KillSignal = "SIGTERM";
        TimeoutStopSec = 45;

        # A models directory under /home stays readable.
        ProtectHome = if modelsUnderHome then "read-only" else true;
      }
      // import ./gpu-sandbox.nix;
    };
  };
}
