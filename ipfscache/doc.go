// Package ipfscache reads a Nix binary cache that is itself in IPFS: a
// UnixFS directory (plain, or HAMT-sharded when large, as kubo writes it)
// holding nix-cache-info, <hash>.narinfo and <hash>.ls, named by its CID
// (ipfs://CID) or by an IPNS name (ipns://NAME) that the publisher moves
// to each new directory. `ipnix publish --ipfs-dir` writes such a
// directory.
//
// Guarantees:
//   - Every block is fetched through the caller's block getter, which
//     checks it against its CID: the directory and its entries are exactly
//     the DAG under the root. The narinfos found there are still checked by
//     narindex.Resolver like those of any substituter (trusted signatures
//     required), so whoever controls the root can only hide paths or offer
//     older validly signed ones.
//   - One lookup fetches at most MaxDirBlocks directory blocks and reads an
//     entry only when its declared size is within the limit asked for
//     (narindex.MaxNarInfoSize, MaxListingSize); HAMT fanouts outside 8 to
//     1024 are refused before boxo allocates for them. Every wait is bounded
//     by the caller's context and the resolvers' timeouts.
//   - An IPNS record fetched from a gateway (or kubo's routing/get) is
//     verified against the name's key (boxo/ipns) and must point to
//     /ipfs/<dag-pb CID>; a record older (lower sequence) than one already
//     verified is ignored. kubo's name/resolve, the fallback, is trusted
//     for the root it names (see KuboResolver).
//   - No "not found" is remembered: a path published under a new root is
//     found by the first lookup after the refresh that saw the root.
//
// ipfscache imports fetch and narindex; narindex knows nothing of it.
package ipfscache
