# A small stand-in for nixpkgs' `lib`, enough to evaluate llmctl's flake.nix and nix/*.nix where
# nixpkgs is not at hand (CI has Nix but no network). It implements what those files use,
# including a path-driven `evalModules` that, like the real one, pushes mkIf/mkMerge/mkOverride
# down to the leaves, so that `config` can be read while it is being defined. Type checks are
# shallow (`check` only); file sets are not filtered. The checks run the same evaluations with
# the real lib when $LLMCTL_NIXPKGS_LIB names one.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    head
    isAttrs
    isFunction
    isList
    length
    listToAttrs
    mapAttrs
    map
    replaceStrings
    substring
    stringLength
    ;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  genAttrs = names: f: listToAttrs (map (name: { inherit name; value = f name; }) names);
  optional = cond: x: if cond then [ x ] else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  isDerivation = x: isAttrs x && (x.type or null) == "derivation";

  recursiveUpdate =
    a: b:
    a
    // genAttrs (attrNames b) (
      name:
      if a ? ${name} && isAttrs a.${name} && isAttrs b.${name} && !isDerivation b.${name} then
        recursiveUpdate a.${name} b.${name}
      else
        b.${name}
    );

  type = name: check: { inherit name check; };
  types = rec {
    anything = type "anything" (_: true);
    unspecified = anything;
    bool = type "bool" builtins.isBool;
    str = type "str" builtins.isString;
    int = type "int" builtins.isInt;
    port = type "port" (x: builtins.isInt x && x >= 0 && x <= 65535);
    package = type "package" isDerivation;
    path = type "path" (x: (builtins.isString x || builtins.isPath x || isDerivation x) && substring 0 1 (toString x) == "/");
    nullOr = t: type "null or ${t.name}" (x: x == null || t.check x);
    listOf = t: type "list of ${t.name}" (x: isList x && all t.check x);
    attrsOf = t: type "attrs of ${t.name}" (x: isAttrs x && all (n: t.check x.${n}) (attrNames x));
  };

  isOption = x: isAttrs x && (x._type or null) == "option";
  mkOption = args: args // { _type = "option"; };
  mkEnableOption = description: mkOption {
    type = types.bool;
    default = false;
    inherit description;
  };
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };

  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkForce = mkOverride 50;
  mkDefault = mkOverride 1000;

  # Peel the wrappers off a definition without deciding any condition: is it an attribute set?
  shape =
    def:
    let
      t = def._type or null;
    in
    if !isAttrs def || isDerivation def then
      "leaf"
    else if t == "if" || t == "override" then
      shape def.content
    else if t == "merge" then
      (if any (d: shape d == "attrs") def.contents then "attrs" else "leaf")
    else if t == null then
      "attrs"
    else
      "leaf";

  namesOf =
    def:
    let
      t = def._type or null;
    in
    if t == "if" || t == "override" then
      namesOf def.content
    else if t == "merge" then
      unique (concatLists (map namesOf (filter (d: shape d == "attrs") def.contents)))
    else
      attrNames def;

  # The definitions of attribute `name` inside `def`, still wrapped in def's conditions.
  attrOf =
    name: def:
    let
      t = def._type or null;
    in
    if t == "if" then
      map (mkIf def.condition) (attrOf name def.content)
    else if t == "override" then
      map (mkOverride def.priority) (attrOf name def.content)
    else if t == "merge" then
      concatLists (map (attrOf name) (filter (d: shape d == "attrs") def.contents))
    else
      optional (def ? ${name}) def.${name};

  # A leaf definition as { priority, value } pairs, now deciding its conditions.
  leaves =
    priority: def:
    let
      t = def._type or null;
    in
    if t == "if" then
      (if def.condition then leaves priority def.content else [ ])
    else if t == "override" then
      leaves def.priority def.content
    else if t == "merge" then
      concatLists (map (leaves priority) def.contents)
    else
      [ { inherit priority; value = def; } ];

  mergeLeaf =
    path: values:
    if all isList values then
      concatLists values
    else if all (v: isAttrs v && !isDerivation v) values then
      foldl' recursiveUpdate { } values
    else if all (v: v == head values) values then
      head values
    else
      throw "stub evalModules: conflicting definitions of ${concatStringsSep "." path}";

  isPlainAttrs = v: isAttrs v && !isDerivation v && !(v ? _type);

  # The winning definitions (highest priority, i.e. lowest number) among { priority, value }s.
  winners =
    defs:
    let
      best = foldl' (m: d: if d.priority < m then d.priority else m) 1500 defs;
    in
    filter (d: d.priority == best) defs;

  mergeAt =
    path: decl: defs:
    if isOption decl then
      let
        candidates = concatLists (map (leaves 100) defs) ++ optional (decl ? default) {
          priority = 1500;
          value = decl.default;
        };
        value =
          if candidates == [ ] then
            throw "stub evalModules: option ${concatStringsSep "." path} is used but not defined"
          else
            mergeLeaf path (map (d: d.value) (winners candidates));
      in
      if decl ? type && !(decl.type.check value) then
        throw "stub evalModules: ${concatStringsSep "." path} is not of type ${decl.type.name}"
      else
        value
    else if decl != null then
      # Declared options live below: find the names without deciding any mkIf, since those
      # conditions may read the very options being merged here.
      let
        attrDefs = filter (d: shape d == "attrs") defs;
        names = unique (attrNames decl ++ concatLists (map namesOf attrDefs));
      in
      genAttrs names (
        name:
        mergeAt (path ++ [ name ]) (decl.${name} or null) (concatLists (map (attrOf name) attrDefs))
      )
    else
      # Undeclared (what the module defines for NixOS): decide conditions now, merge freely,
      # carrying each definition's priority down to its leaves.
      let
        candidates = concatLists (map (leaves 100) defs);
        carry = d: v: if d.priority == 100 then v else mkOverride d.priority v;
      in
      if candidates == [ ] then
        { }
      else if all (d: isPlainAttrs d.value) candidates then
        genAttrs (unique (concatLists (map (d: attrNames d.value) candidates))) (
          name:
          mergeAt (path ++ [ name ]) null (
            concatLists (map (d: optional (d.value ? ${name}) (carry d d.value.${name})) candidates)
          )
        )
      else
        mergeLeaf path (map (d: d.value) (winners candidates));

  evalModules =
    {
      modules,
      specialArgs ? { },
    }:
    let
      apply =
        module:
        let
          m = if builtins.isPath module then import module else module;
          applied =
            if isFunction m then
              m (
                specialArgs
                // {
                  inherit config lib;
                  options = { };
                }
              )
            else
              m;
        in
        [ (removeAttrs applied [ "imports" ]) ] ++ concatLists (map apply (applied.imports or [ ]));
      applied = concatLists (map apply modules);
      declarations = foldl' recursiveUpdate { } (map (m: m.options or { }) applied);
      definitions = map (
        m: if m ? config || m ? options then m.config or { } else m
      ) applied;
      config = mergeAt [ ] declarations definitions;
    in
    {
      inherit config;
    };

  lib = {
    inherit
      all
      any
      attrNames
      concatStringsSep
      elem
      evalModules
      filter
      genAttrs
      hasPrefix
      isDerivation
      literalExpression
      mapAttrs
      mkDefault
      mkEnableOption
      mkForce
      mkIf
      mkMerge
      mkOption
      mkOverride
      optional
      optionalAttrs
      recursiveUpdate
      types
      ;
    concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
    optionals = cond: list: if cond then list else [ ];
    optionalString = cond: string: if cond then string else "";
    mkAfter = x: x;
    importTOML = file: builtins.fromTOML (builtins.readFile file);
    callPackageWith =
      autoArgs: fn: args:
      let
        f = if builtins.isPath fn then import fn else fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) autoArgs // args);
    fileset = {
      toSource = { root, fileset }: builtins.seq fileset root;
      unions = paths: paths;
      maybeMissing = path: path;
    };
    licenses.mit = {
      spdxId = "MIT";
    };
    platforms.unix = [ ];
    escapeShellArg = s: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
    escapeShellArgs = args: concatStringsSep " " (map lib.escapeShellArg args);
    makeBinPath = pkgs: concatStringsSep ":" (map (p: "${p}/bin") pkgs);
    # Marks this lib for eval-module.nix, which reports which lib it ran with.
    isStub = true;
  };
in
lib
