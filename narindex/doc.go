// Package narindex knows the Nix binary-cache formats ipnix reads and writes,
// and finds a store path's metadata in substituters.
//
// It holds:
//   - nix-base32 ("nix32") and Nix's hash notations (Hash, ParseHash);
//   - store path names (StorePath, ParseStorePath, ParseStorePathBase);
//   - narinfo files (NarInfo, ParseNarInfo, Marshal), including the ipnix
//     fields IpfsCid and IpfsCidSig and the legacy IPFSHash field;
//   - Nix signing keys and signatures over the Nix fingerprint and over the
//     ipnix CID fingerprint (SecretKey, PublicKey, NarInfo.Sign, VerifySigs);
//   - the NAR format and NAR listings (.ls files);
//   - substituters (file:// and http(s):// binary caches) and the Resolver
//     that accepts or rejects a store path's narinfo and fetches its listing.
//
// Every parser here takes untrusted input: it bounds what it reads, never
// panics, and rejects what real Nix rejects (often a little more). Output is
// written the way Nix writes it, so a narinfo written by Nix round-trips
// byte for byte.
//
// The package does no FUSE and no IPFS work, and no network I/O of its own
// beyond the Substituter interface it defines.
package narindex
