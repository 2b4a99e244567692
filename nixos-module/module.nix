# NixOS module for ipnix: `services.ipnix` runs `ipnix mount` as a systemd
# service (a read-only Nix store served lazily from IPFS over FUSE) and,
# optionally, `ipnix serve` (the same store paths as an HTTP binary cache for
# plain Nix, which needs no FUSE).
#
# Every command line below is built only from flags `ipnix mount --help`
# (and `ipnix serve --help`) accept; nixos-module/eval-test.nix and
# integration/nixos_test.go check that against the built binary.
#
# `overlay` puts the lazy closures under /nix/store (ipnix mount
# --overlay): an overlay on the store as its own upper layer, the closures
# registered with Nix and kept by GC roots under /nix/var/nix/gcroots/ipnix/,
# all undone when the service stops.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types literalExpression optional optionals optionalAttrs concatMap;

  cfg = config.services.ipnix;

  # The local kubo of NixOS's services.kubo, used when `api` is null. That
  # module runs the daemon as ipfs.service and its RPC API as the
  # socket-activated ipfs-api.socket on /run/ipfs.sock (mode 0660, group
  # services.kubo.group); a TCP API address exists only if configured.
  kuboLocal = (config.services.kubo.enable or false) && cfg.api == null;
  kuboApi = "/unix/run/ipfs.sock";
  # Its repository: the mount (root) reads blocks straight from its flatfs
  # blockstore rather than through the API (ipnix mount --kubo-repo).
  kuboRepo = config.services.kubo.dataDir or "/var/lib/ipfs";
  api = if kuboLocal then kuboApi else cfg.api;

  # One argument of a systemd command line: JSON string syntax (systemd
  # reads C-style quotes and escapes), with the systemd specifier '%' and
  # variable expansion '$' doubled. As NixOS's utils.escapeSystemdExecArg,
  # written out here so that the module evaluates with lib alone.
  escapeArg = arg: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
  commandLine = args: lib.concatMapStringsSep " " escapeArg args;
  # Unit descriptions expand specifiers too.
  escapeSpecifiers = lib.replaceStrings [ "%" ] [ "%%" ];

  # A flag that repeats: --name v1 --name v2 ...
  repeated = name: values: concatMap (v: [ name v ]) values;
  # A flag given only when the option is set.
  optionalFlag = name: value: optionals (value != null) [ name (toString value) ];

  # Store paths are given as strings; their string context (when a
  # derivation was interpolated) is dropped, or the system closure would
  # contain the very paths meant to be fetched lazily.
  closurePaths = map (p: builtins.unsafeDiscardStringContext (toString p)) cfg.closures;

  # The flags `ipnix mount` and `ipnix serve` share: where narinfos and
  # blocks come from, which keys are trusted, the caches.
  sourceArgs = cacheDir:
    repeated "--substituter" cfg.substituters
    ++ repeated "--trusted-public-key" cfg.trustedPublicKeys
    ++ optionalFlag "--api" api
    ++ repeated "--gateway" cfg.gateways
    ++ optionalFlag "--memory-cache" cfg.memoryCache
    ++ optionalFlag "--cache-dir" cacheDir
    ++ optionalFlag "--cache-size" cfg.cacheSize
    ++ optional cfg.requireCidSig "--require-cid-sig";

  mountArgs =
    [ "${cfg.package}/bin/ipnix" "mount" ]
    ++ sourceArgs cfg.cacheDir
    ++ optionals kuboLocal [ "--kubo-repo" kuboRepo ]
    ++ repeated "--closure" closurePaths
    ++ optionals cfg.overlay [ "--overlay" "/nix/store" ]
    # The service runs as root; every user (and nix-daemon's builders) may
    # read the store it serves.
    ++ [ "-o" "allow_other" ]
    ++ cfg.extraArgs
    ++ [ cfg.mountPoint ];

  serveArgs =
    [ "${cfg.package}/bin/ipnix" "serve" "--listen" cfg.serve.listen ]
    ++ sourceArgs cfg.serve.cacheDir
    ++ cfg.serve.extraArgs;

  fusermount = "${pkgs.fuse3}/bin/fusermount3";

  # systemd creates (and owns) a cache directory under /var/cache itself;
  # any other directory is created by ipnix.
  cacheDirectory = dir:
    optionalAttrs (dir != null && lib.hasPrefix "/var/cache/" dir) {
      CacheDirectory = lib.removePrefix "/var/cache/" dir;
      CacheDirectoryMode = "0700";
    };

  # The URL Nix uses to reach `ipnix serve`: a wildcard listen address is
  # reached through loopback.
  serveUrl =
    let l = cfg.serve.listen; in
    if lib.hasPrefix ":" l then "http://127.0.0.1${l}"
    else if lib.hasPrefix "0.0.0.0:" l then "http://127.0.0.1:${lib.removePrefix "0.0.0.0:" l}"
    else if lib.hasPrefix "[::]:" l then "http://[::1]:${lib.removePrefix "[::]:" l}"
    else "http://${l}";

  # Both services start after the network and, when they use the local
  # kubo, after its daemon and API socket.
  wants = [ "network-online.target" ] ++ optional kuboLocal "ipfs.service";
  after = wants ++ optional kuboLocal "ipfs-api.socket";

  sizeType = types.nullOr (types.either types.str types.ints.positive);
in
{
  options.services.ipnix = {
    enable = mkEnableOption "the ipnix mount: Nix store paths served lazily from IPFS over FUSE, at `mountPoint`";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nixos-module/package.nix { }";
      description = "The ipnix package.";
    };

    mountPoint = mkOption {
      type = types.str;
      default = "/run/ipnix/store";
      description = ''
        Where the store is mounted: `<mountPoint>/<hash>-<name>` appears when
        looked up. Not /nix/store itself (that would hide the system's
        store; see `overlay` for putting the closures under /nix/store).
      '';
    };

    overlay = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Put the `closures` under /nix/store: an overlay on the store with
        the existing store as its upper layer (what Nix builds still goes
        there), the closures registered in the Nix database and given GC
        roots under /nix/var/nix/gcroots/ipnix/. Stopping the service undoes
        it (GC roots, overlay, then `nix-store --verify` drops the lazy
        paths from the database).
      '';
    };

    substituters = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "https://cache.example.org/ipnix" ];
      description = ''
        Binary caches holding narinfos with IpfsCid (`file:///dir` or
        `http(s)://host/path`), asked in order.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "cache.example.org-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" ];
      description = "Public keys (`name:base64`) the narinfos must be signed with.";
    };

    api = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/ip4/127.0.0.1/tcp/5001";
      description = ''
        The kubo RPC API (a multiaddr or `http://` URL). When null and
        `services.kubo.enable` is set, the local node's API socket
        (${kuboApi}), and the services start after ipfs.service; when null
        otherwise, ipnix's default (`$IPFS_PATH/api`, else
        /ip4/127.0.0.1/tcp/5001).
      '';
    };

    gateways = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "http://127.0.0.1:8080" ];
      description = ''
        HTTP trustless gateways to fetch blocks from before the kubo RPC API
        (by default, the local kubo's gateway when it listens on loopback).
      '';
    };

    cacheDir = mkOption {
      type = types.nullOr types.str;
      default = "/var/cache/ipnix";
      description = ''
        The mount's on-disk cache of verified blocks (and local copies of
        verified files); null for none. Only one ipnix process may use a
        cache directory (see `serve.cacheDir`).
      '';
    };

    cacheSize = mkOption {
      type = sizeType;
      default = null;
      example = "20GiB";
      description = "Bytes the on-disk cache may hold (null: ipnix's default, 10 GiB).";
    };

    memoryCache = mkOption {
      type = sizeType;
      default = null;
      example = "256MiB";
      description = "Bytes of blocks kept in memory (null: ipnix's default, 64 MiB).";
    };

    closures = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.1" ];
      description = ''
        Store paths whose closures are resolved at start, so that the mount's
        root lists them before any lookup (start-up fails if one cannot be
        resolved). Give them as strings: the string context of an
        interpolated derivation is dropped, so the paths do not become part
        of the system closure.
      '';
    };

    requireCidSig = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Refuse store paths whose narinfo has no IpfsCidSig by a trusted key
        (without it such paths are fetched whole and checked against their
        NarHash before anything of them is served).
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--metrics" "127.0.0.1:9464" "--read-timeout" "60s" ];
      description = "More arguments for `ipnix mount`, placed before the mount point.";
    };

    serve = {
      enable = mkEnableOption ''
        `ipnix serve`: an HTTP binary cache in front of the same substituters
        and IPFS sources, for plain Nix (no FUSE needed; independent of
        `services.ipnix.enable`)
      '';

      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:8480";
        description = "Address `ipnix serve` listens on. ipnix warns about non-loopback addresses.";
      };

      cacheDir = mkOption {
        type = types.nullOr types.str;
        default = "/var/cache/ipnix-serve";
        description = ''
          The on-disk block cache of `ipnix serve`, under /var/cache (the
          service runs as a dynamic user); null for none. It must differ from
          `cacheDir`: each process keeps its own index and quota.
        '';
      };

      addToNix = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Add `ipnix serve` to `nix.settings.substituters`, and
          `trustedPublicKeys` to `nix.settings.trusted-public-keys` (the
          narinfos it serves carry the original signatures).
        '';
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More arguments for `ipnix serve`.";
      };
    };
  };

  config = mkIf (cfg.enable || cfg.serve.enable) (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.substituters != [ ];
          message = "services.ipnix.substituters is empty: ipnix needs a binary cache holding narinfos with IpfsCid.";
        }
        {
          assertion = cfg.trustedPublicKeys != [ ];
          message = "services.ipnix.trustedPublicKeys is empty: ipnix serves only narinfos signed by a trusted key.";
        }
        {
          assertion = lib.all (s: lib.any (p: lib.hasPrefix p s) [ "file:///" "http://" "https://" ]) cfg.substituters;
          message = "services.ipnix.substituters: each must start with file:///, http:// or https://.";
        }
        {
          assertion = lib.all (k: builtins.match "[^:]+:[A-Za-z0-9+/]+=*" k != null) cfg.trustedPublicKeys;
          message = "services.ipnix.trustedPublicKeys: each must be name:base64, as in nix.settings.trusted-public-keys.";
        }
      ];
      environment.systemPackages = [ cfg.package ];
    }

    (mkIf cfg.enable {
      assertions = [
        {
          assertion = lib.hasPrefix "/" cfg.mountPoint && !(lib.hasPrefix "/nix/store" cfg.mountPoint)
            && !(lib.elem (lib.removeSuffix "/" cfg.mountPoint) [ "" "/nix" ]);
          message = "services.ipnix.mountPoint must be an absolute path outside /nix/store, and not / or /nix (use services.ipnix.overlay to put closures under /nix/store).";
        }
        {
          assertion = !cfg.overlay || cfg.closures != [ ];
          message = "services.ipnix.overlay needs services.ipnix.closures: the store paths to register with Nix.";
        }
      ];

      systemd.services.ipnix = {
        description = "ipnix: Nix store paths served lazily from IPFS at ${escapeSpecifiers cfg.mountPoint}";
        wantedBy = [ "multi-user.target" ];
        inherit after wants;
        # fusermount3 for go-fuse's mount and unmount.
        path = [ pkgs.fuse3 ];
        # Restarting a mount under running programs breaks them (their open
        # files vanish): a changed configuration applies on the next
        # `systemctl restart ipnix` or boot.
        restartIfChanged = false;
        serviceConfig = {
          # ipnix sends READY=1 once the store is mounted (after the
          # --closure paths resolved), so units ordered after this one find
          # it in place.
          Type = "notify";
          NotifyAccess = "main";
          ExecStartPre = [
            # A mount left by a killed run answers ENOTCONN; detach it.
            "-${fusermount} -u -q -z ${escapeArg cfg.mountPoint}"
            "${pkgs.coreutils}/bin/mkdir -p ${escapeArg cfg.mountPoint}"
          ];
          ExecStart = commandLine mountArgs;
          # ipnix unmounts on SIGTERM; if the mount was busy it exits with
          # it still attached, and this detaches it.
          ExecStopPost = "-${fusermount} -u -q -z ${escapeArg cfg.mountPoint}";
          Restart = "on-failure";
          RestartSec = "5s";
          # A bad command line (exit 2) does not heal by restarting.
          RestartPreventExitStatus = "2";
          # Resolving --closure paths happens before READY=1.
          TimeoutStartSec = "5min";
          RuntimeDirectory = "ipnix";
          # No state of its own: everything ipnix keeps is a cache.
          # Deliberately no ProtectSystem, PrivateTmp, PrivateDevices and the
          # like: they put the service in its own mount namespace, where the
          # FUSE mount would be invisible to the rest of the system.
        } // cacheDirectory cfg.cacheDir;
      };
    })

    (mkIf cfg.serve.enable {
      assertions = [
        {
          assertion = !(cfg.enable && cfg.cacheDir != null && cfg.cacheDir == cfg.serve.cacheDir);
          message = "services.ipnix.serve.cacheDir must differ from services.ipnix.cacheDir: two ipnix processes cannot share one cache directory.";
        }
        {
          assertion = cfg.serve.cacheDir == null || lib.hasPrefix "/var/cache/" cfg.serve.cacheDir;
          message = "services.ipnix.serve.cacheDir must be under /var/cache/ (or null): ipnix serve runs as a dynamic user, whose directories systemd creates there.";
        }
      ];

      systemd.services.ipnix-serve = {
        description = "ipnix serve: a Nix binary cache from IPFS on ${escapeSpecifiers cfg.serve.listen}";
        wantedBy = [ "multi-user.target" ];
        inherit after wants;
        serviceConfig = {
          Type = "notify"; # ipnix serve sends READY=1 once listening
          ExecStart = commandLine serveArgs;
          Restart = "on-failure";
          RestartSec = "5s";
          RestartPreventExitStatus = "2";
          # An HTTP server with no mount: it runs unprivileged and confined
          # (DynamicUser implies ProtectSystem=strict, ProtectHome=read-only
          # and PrivateTmp; file:// substituters must be world-readable, as
          # `ipnix publish` writes them).
          DynamicUser = true;
          # The local kubo's API socket is open to its group only.
          SupplementaryGroups = optional kuboLocal (config.services.kubo.group or "ipfs");
          PrivateDevices = true;
          NoNewPrivileges = true;
        } // cacheDirectory cfg.serve.cacheDir;
      };

      nix.settings = mkIf cfg.serve.addToNix {
        substituters = [ serveUrl ];
        trusted-public-keys = cfg.trustedPublicKeys;
      };
    })
  ]);
}
