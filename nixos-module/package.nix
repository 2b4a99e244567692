# ipnix as a Nix package: `pkgs.callPackage ./nixos-module/package.nix { }`.
#
# go.mod asks for Go 1.26: use a nixpkgs whose default Go is at least that
# (or pass `buildGoModule = pkgs.buildGo126Module;` where it exists). Nix
# builds with GOTOOLCHAIN=local, so an older Go fails with "go.mod requires
# go >= 1.26".
{ lib, buildGoModule, version ? "0.1.0-dev" }:

buildGoModule {
  pname = "ipnix";
  inherit version;

  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.; # drops .git, editor files and result links
    # Only what the Go build reads: a change to the README, the scripts or
    # this directory does not rebuild ipnix.
    filter = path: type:
      let rel = lib.removePrefix (toString ../. + "/") (toString path); in
      !(lib.hasPrefix "nixos-module" rel || lib.hasPrefix "scripts" rel
        || lib.hasPrefix ".ci" rel
        || rel == "flake.nix" || rel == "flake.lock" || lib.hasSuffix ".md" rel);
  };

  # The hash of the Go module dependencies (ipnix has no vendor/ directory,
  # so null does not work). To update it after go.mod or go.sum change: set
  # it to lib.fakeHash, run `nix build .#default` (or
  # `nix-build -E 'with import <nixpkgs> {}; callPackage ./nixos-module/package.nix {}'`),
  # and paste the `got: sha256-...` hash Nix reports.
  vendorHash = lib.fakeHash;

  subPackages = [ "cmd/ipnix" ];

  ldflags = [ "-s" "-w" "-X main.version=${version}" ];

  # The tests need root, /dev/fuse, real Nix and kubo daemons (integration/);
  # none of them exists in the build sandbox. Run scripts/test.sh instead.
  doCheck = false;

  # mount(8) runs the helper mount.<type>: `mount -t fuse.ipnix` and fstab
  # entries of type fuse.ipnix run mount.fuse.ipnix (ipnix mount reads the
  # SOURCE MOUNTPOINT -o ... arguments mount(8) passes).
  postInstall = ''
    ln -s ipnix $out/bin/mount.fuse.ipnix
  '';

  meta = {
    description = "Mount Nix store paths lazily from IPFS (read-only FUSE), verified against signed narinfos";
    homepage = "https://github.com/ipnix/ipnix";
    mainProgram = "ipnix";
    platforms = lib.platforms.linux;
  };
}
