{
  description = "llmctl: one local GGUF model at a time behind a stable OpenAI-compatible endpoint";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      packagesFor = pkgs: rec {
        llmctl-unwrapped = pkgs.callPackage ./nix/package.nix { };
        llmctl = pkgs.callPackage ./nix/wrapped.nix { inherit llmctl-unwrapped; };
      };
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          own = packagesFor pkgs;
        in
        own // { default = own.llmctl; }
      );

      apps = forAllSystems (
        pkgs:
        let
          llmctl = self.packages.${pkgs.stdenv.hostPlatform.system}.llmctl;
          app = program: description: {
            type = "app";
            program = "${llmctl}/bin/${program}";
            meta = { inherit description; };
          };
        in
        rec {
          llmctl = app "llmctl" "The llmctl CLI: switch, stop, status, models, logs";
          llmctld = app "llmctld" "The llmctl daemon, in the foreground, with nixpkgs' llama-server";
          default = llmctl;
        }
      );

      overlays.default = final: _prev: packagesFor final;

      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.llmctld.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.llmctl-unwrapped;
          services.llmctl-worker.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.llmctl-unwrapped;
        };

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
        in
        {
          inherit (self.packages.${system}) llmctl llmctl-unwrapped;
        }
        // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
          nixos-module = import ./nix/nixos-test.nix {
            inherit pkgs;
            module = self.nixosModules.default;
          };
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps:
              (packagesFor pkgs).llmctl-unwrapped.runtimeDependencies
              ++ (with ps; [
                gguf
                numpy
                openai
                pytest
                pytest-timeout
              ])
            ))
            pkgs.llama-cpp
            pkgs.nodejs
            pkgs.ruff
            pkgs.shellcheck
          ]
          ++ lib.optionals pkgs.stdenv.hostPlatform.isLinux [
            pkgs.runit
            pkgs.s6
          ];
        };
      });
    };
}
