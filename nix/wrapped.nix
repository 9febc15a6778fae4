# `llmctl`: llmctl-unwrapped with a llama-server on its PATH (nixpkgs' llama-cpp unless
# overridden), so that `nix run` works out of the box:
#
#   llmctl.override { llama-cpp = pkgs.llama-cpp.override { vulkanSupport = true; }; }
#
# llama-server named by `server.binary` in config/default.yaml still wins over this PATH.
{
  lib,
  symlinkJoin,
  makeBinaryWrapper,
  llmctl-unwrapped,
  llama-cpp,
}:

symlinkJoin {
  name = "llmctl-${llmctl-unwrapped.version}";
  inherit (llmctl-unwrapped) version;
  paths = [ llmctl-unwrapped ];
  nativeBuildInputs = [ makeBinaryWrapper ];

  postBuild = ''
    if [ ! -x ${llama-cpp}/bin/llama-server ]; then
      echo "${llama-cpp.name} has no bin/llama-server: pass a llama.cpp build that does" >&2
      exit 1
    fi
    for program in llmctl llmctld; do
      wrapProgram "$out/bin/$program" --prefix PATH : ${lib.makeBinPath [ llama-cpp ]}
    done
  '';

  passthru = {
    unwrapped = llmctl-unwrapped;
    backend = llama-cpp;
  };

  meta = llmctl-unwrapped.meta // {
    description = "${llmctl-unwrapped.meta.description}, with llama.cpp's llama-server";
  };
}
