// Package narindex knows the Nix binary-cache formats ipnix reads and writes,
// and finds a store path's metadata in substituters.
//
// It holds:
//   - nix-base32 ("nix32") and Nix's hash notations (Hash, ParseHash);
//   - store path names (StorePath, ParseStorePath, ParseStorePathBase);
//   - narinfo files (NarInfo, ParseNarInfo, Marshal), including the ipnix
//     fields IpfsCid, IpfsLsHash and IpfsCidSig, the legacy IPFSHash
//     field, and IpfsEncoding from RFC 133's draft, kept verbatim and read
//     only on request (IpfsEncoding, ParseIpfsEncoding);
//   - Nix signing keys and signatures over the Nix fingerprint and over the
//     ipnix CID fingerprint, version 2, which covers the CID and the
//     listing's digest (SecretKey, PublicKey, NarInfo.Sign, SignCid,
//     VerifySigs, VerifyCidSig);
//   - the NAR format, NAR listings (.ls files) with a bound on their
//     entries, and ListingBuilder, which builds a listing from a NAR as it
//     streams past;
//   - substituters (file:// and http(s):// binary caches) and the Resolver
//     that accepts or rejects a store path's narinfo, remembers rejections
//     for a while, and fetches its listing only when a trusted signature
//     vouches for it.
//
// Every parser here takes untrusted input: it bounds what it reads, never
// panics, and rejects what real Nix rejects (often a little more). Output is
// written the way Nix writes it, so a narinfo written by Nix round-trips
// byte for byte.
//
// The package does no FUSE and no IPFS work, and no network I/O of its own
// beyond the Substituter interface it defines.
package narindex
