# Evaluation test of the NixOS module without NixOS: nixpkgs' own
# lib.evalModules, the module, and small stand-ins for the NixOS options it
# sets (systemd.services, nix.settings, fileSystems,
# environment.systemPackages, assertions, services.kubo) and for the few
# packages it names. The result is JSON that integration/nixos_test.go
# checks (command lines against `ipnix mount --help`, Type=notify, the
# assertions):
#
#   nix-instantiate --eval --strict --json nixos-module/eval-test.nix \
#     --argstr nixpkgsLib /path/to/nixpkgs/lib
#
# It needs only nixpkgs' lib directory (github:nix-community/nixpkgs.lib
# holds it alone), no nixpkgs packages and no network. It builds nothing:
# what it checks is what the module generates, not that NixOS runs it.
{ nixpkgsLib }:

let
  lib = import nixpkgsLib;
  inherit (lib) mkOption types;

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  # Stands in for buildGoModule: a fake derivation that records the
  # arguments package.nix passed.
  buildGoModule = args: fakeDrv "${args.pname}-${args.version}" // { goModuleArgs = args; };

  pkgs = {
    fuse3 = fakeDrv "fuse-3.16.2";
    coreutils = fakeDrv "coreutils-9.5";
    callPackage = fn: args:
      let f = if builtins.isFunction fn then fn else import fn; in
      f (builtins.intersectAttrs (builtins.functionArgs f) { inherit lib buildGoModule; } // args);
    stdenv.hostPlatform.system = "x86_64-linux";
  };

  # The NixOS options the module sets, declared loosely: only their shape
  # matters here.
  stubs = {
    options = {
      systemd.services = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
      nix.settings = mkOption {
        type = types.attrsOf (types.listOf types.str);
        default = { };
      };
      fileSystems = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      assertions = mkOption {
        type = types.listOf (types.submodule {
          options.assertion = mkOption { type = types.bool; };
          options.message = mkOption { type = types.str; };
        });
        default = [ ];
      };
      services.kubo.enable = mkOption {
        type = types.bool;
        default = false;
      };
      services.kubo.group = mkOption {
        type = types.str;
        default = "ipfs";
      };
      services.kubo.dataDir = mkOption {
        type = types.str;
        default = "/var/lib/ipfs";
      };
    };
  };

  evalWith = module: config:
    let
      c = (lib.evalModules {
        modules = [ stubs module { _module.args.pkgs = pkgs; } config ];
      }).config;
    in
    {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
      # Derivations become their store paths in the JSON.
      services = c.systemd.services;
      nixSettings = c.nix.settings;
      systemPackages = map (p: p.name) c.environment.systemPackages;
      fileSystems = c.fileSystems;
    };
  eval = evalWith ./module.nix;

  key = "cache.example.org-1:rS5Gf+Kx8Q3eJ3i0m7cPqV1VPxq/3ZfW9s2mY6pN2tA=";
  otherKey = "other-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
  closure = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.1";

  # The flake, with nixpkgs replaced by the stand-ins above.
  flake =
    let
      outputs = (import ../flake.nix).outputs {
        self = outputs // { shortRev = "abcdef0"; };
        nixpkgs = {
          inherit lib;
          legacyPackages = { x86_64-linux = pkgs; aarch64-linux = pkgs; };
        };
      };
    in
    outputs;
in
{
  # Everything set, the local kubo of services.kubo, ipnix serve beside the
  # mount. Values hold the characters systemd treats specially ('%', '$',
  # spaces, quotes) to check the quoting.
  full = eval {
    services.kubo.enable = true;
    services.ipnix = {
      enable = true;
      substituters = [ "https://cache.example.org/ipnix?x=%41$HOME" "file:///srv/ipnix cache" ];
      trustedPublicKeys = [ key otherKey ];
      gateways = [ "http://127.0.0.1:8080" ];
      cacheSize = "20GiB";
      memoryCache = 268435456;
      closures = [ closure "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-data" ];
      requireCidSig = true;
      overlay = true;
      extraArgs = [ "--metrics" "127.0.0.1:9464" "--read-timeout" "60s" ];
      serve.enable = true;
    };
  };

  # A remote kubo API: no ordering after kubo.service even where one runs.
  remoteApi = eval {
    services.kubo.enable = true;
    services.ipnix = {
      enable = true;
      substituters = [ "https://cache.example.org/ipnix" ];
      trustedPublicKeys = [ key ];
      api = "/ip4/10.0.0.2/tcp/5001";
      cacheDir = null;
      mountPoint = "/mnt/ipnix";
    };
  };

  # The defaults only (and no kubo module).
  minimal = eval {
    services.ipnix = {
      enable = true;
      substituters = [ "https://cache.example.org/ipnix" ];
      trustedPublicKeys = [ key ];
    };
  };

  # ipnix serve alone (a machine without FUSE), on a wildcard address.
  serveOnly = eval {
    services.ipnix = {
      serve.enable = true;
      serve.listen = ":9000";
      serve.cacheDir = "/var/cache/ipnix-http";
      substituters = [ "https://cache.example.org/ipnix" ];
      trustedPublicKeys = [ key ];
    };
  };

  # Settings the assertions must refuse.
  bad = eval {
    services.ipnix = {
      enable = true;
      mountPoint = "/nix/store";
      substituters = [ ];
      trustedPublicKeys = [ ];
      serve.enable = true;
      serve.cacheDir = "/srv/ipnix-cache";
    };
  };
  badRoot = eval {
    services.ipnix = {
      enable = true;
      mountPoint = "/";
      substituters = [ "https://cache.example.org/ipnix" ];
      trustedPublicKeys = [ key ];
    };
  };
  badValues = eval {
    services.ipnix = {
      enable = true;
      substituters = [ "cache.example.org" ];
      trustedPublicKeys = [ "not a key" ];
      serve.enable = true;
      serve.cacheDir = "/var/cache/ipnix";
    };
  };

  # Not enabled: the module adds nothing.
  disabled = eval { services.ipnix.substituters = [ "https://cache.example.org/ipnix" ]; };

  # The flake's module: the package defaults to the flake's own build.
  flakeModule = evalWith flake.nixosModules.default {
    services.ipnix = {
      enable = true;
      substituters = [ "https://cache.example.org/ipnix" ];
      trustedPublicKeys = [ key ];
    };
  };
  flakePackages = lib.mapAttrs (_: p: { default = p.default.name; }) flake.packages;
  packageArgs = {
    inherit (flake.packages.x86_64-linux.default.goModuleArgs) subPackages doCheck ldflags postInstall vendorHash;
  };
}
