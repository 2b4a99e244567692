{
  description = "ipnix: Nix store paths mounted lazily from IPFS";

  # ipnix needs Go >= 1.26 (go.mod); nixos-unstable has it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0-" + (self.shortRev or self.dirtyShortRev or "dirty");
    in
    {
      packages = forAllSystems (pkgs: rec {
        ipnix = pkgs.callPackage ./nixos-module/package.nix { inherit version; };
        default = ipnix;
      });

      # services.ipnix, with the package defaulting to this flake's build.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nixos-module/module.nix ];
        services.ipnix.package = lib.mkDefault
          (self.packages.${pkgs.stdenv.hostPlatform.system}.default
            or (pkgs.callPackage ./nixos-module/package.nix { inherit version; }));
      };
      nixosModules.ipnix = self.nixosModules.default;
    };
}
