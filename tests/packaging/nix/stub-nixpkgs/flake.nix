{
  description = "A stand-in for nixpkgs, to evaluate llmctl's flake offline (tests/packaging)";

  # lib: the real nixpkgs lib named by $LLMCTL_NIXPKGS_LIB (evaluate with --impure), else ./lib.nix.
  outputs =
    { self }:
    let
      realLib = builtins.getEnv "LLMCTL_NIXPKGS_LIB";
      lib = if realLib != "" then import realLib else import ./lib.nix;
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ] (system: import ./pkgs.nix { inherit lib system; });
    };
}
