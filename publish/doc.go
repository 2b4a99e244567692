// Package publish turns Nix store paths, or the entries of an existing
// binary cache, into NARs stored in IPFS as UnixFS files, and writes a binary
// cache directory that both plain Nix and ipnix mount can use:
//
//	nix-cache-info
//	<hash>.narinfo   ordinary narinfo + IpfsCid, IpfsLsHash
//	                 (+ IpfsCidSig, Sig with a key)
//	<hash>.ls        NAR listing with narOffset, built from the NAR
//	nar/<file>       the NAR file the narinfo's URL names
//
// Every NAR is hashed while it streams into IPFS and must match the NarHash
// recorded by the local Nix database or the source cache; a mismatch aborts
// that path and nothing is written for it. The narinfo is written last and
// atomically, so a reader never sees a narinfo whose NAR or listing is
// missing. IpfsLsHash is the SHA-256 of the .ls bytes written, and
// IpfsCidSig signs it with the CID (fingerprint ipnix-cid-2). A path is
// skipped when its entry is current: a CID, a listing matching IpfsLsHash
// and, with a key, a CID signature by that key.
package publish
