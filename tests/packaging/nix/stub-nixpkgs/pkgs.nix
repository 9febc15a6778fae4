# The packages and builders llmctl's Nix files use, as fake derivations: no nixpkgs, no builds.
# A generated file keeps what it was generated from (`value`, `text`) for the checks to read;
# builders force the lists they are given, so that a misspelt package name fails here.
{
  lib,
  system ? "x86_64-linux",
}:

let
  fake =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
    }
    // extra;
  fakes = names: lib.genAttrs names (name: fake name { });
  forced = value: builtins.deepSeq (map (p: p.name) value);

  python3Packages =
    fakes [
      "gevent"
      "gguf"
      "huggingface-hub"
      "numpy"
      "nvidia-ml-py"
      "openai"
      "prometheus-client"
      "psutil"
      "pytest"
      "pytest-timeout"
      "pyyaml"
      "rapidfuzz"
      "requests"
      "setproctitle"
      "setuptools"
      "werkzeug"
      "wheel"
    ]
    // {
      python.sitePackages = "lib/python3.13/site-packages";
      buildPythonApplication =
        args:
        forced (args.dependencies ++ args.build-system ++ args.nativeBuildInputs or [ ]) (
          fake "${args.pname}-${args.version}" {
            inherit (args) version meta;
            postInstall = args.postInstall or "";
            passthru = args.passthru or { };
          }
          // args.passthru or { }
        );
    };

  pkgs =
    fakes [
      "coreutils"
      "installShellFiles"
      "makeBinaryWrapper"
      "nodejs"
      "ruff"
      "runit"
      "s6"
      "shellcheck"
    ]
    // {
      inherit fake lib python3Packages;
      llama-cpp-vulkan = fake "llama-cpp-vulkan" { };
      # .override as nixpkgs' package has it: rpcSupport (GGML_RPC=ON) shows in the name
      llama-cpp = fake "llama-cpp" {
        override = args: fake "llama-cpp${if args.rpcSupport or false then "-rpc" else ""}" { };
      };
      llmctl-unwrapped = fake "llmctl-0.1.0" { };
      callPackage = lib.callPackageWith pkgs;
      stdenv.hostPlatform = {
        inherit system;
        isLinux = builtins.match ".*-linux" system != null;
      };
      stdenv.buildPlatform.canExecute = _: true;
      python3 = fake "python3" {
        withPackages = f: forced (f python3Packages) (fake "python3-env" { });
      };
      mkShell = args: forced args.packages (fake "shell" { });
      symlinkJoin =
        args:
        forced (args.paths ++ args.nativeBuildInputs) (
          fake args.name (removeAttrs args [ "name" ] // args.passthru or { })
        );
      formats.yaml = _: {
        # Where the real format has its own recursive type: both merge attribute sets.
        type = lib.types.attrsOf lib.types.anything;
        generate = name: value: fake name { inherit value; };
      };
      writeShellScript = name: text: fake name { inherit text; };
      writeShellScriptBin = name: text: fake name { inherit text; };
      runCommand = name: _env: text: fake name { inherit text; };
      testers.runNixOSTest = test: fake "nixos-test-${test.name}" { inherit test; };
    };
in
pkgs
