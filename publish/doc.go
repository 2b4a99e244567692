// Package publish turns Nix store paths, or the entries of an existing
// binary cache, into NARs stored in IPFS as UnixFS files, and writes a binary
// cache directory that both plain Nix and ipnix mount can use:
//
//	nix-cache-info
//	<hash>.narinfo   ordinary narinfo + IpfsCid, IpfsEncoding, IpfsLsHash
//	                 (+ IpfsCidSig, Sig with a key)
//	<hash>.ls        NAR listing with narOffset, built from the NAR
//	nar/<file>       the NAR file the narinfo's URL names
//
// Every NAR is hashed while it streams into IPFS and must match the NarHash
// recorded by the local Nix database or the source cache; a mismatch aborts
// that path and nothing is written for it. The narinfo is written last and
// atomically, so a reader never sees a narinfo whose NAR or listing is
// missing. IpfsLsHash is the SHA-256 of the .ls bytes written, and
// IpfsCidSig signs it with the CID (fingerprint ipnix-cid-2). IpfsEncoding
// (RFC 133's draft) says how the DAG was made, so that anyone holding the
// NAR can rebuild it and check the CID (RecomputeCID); it is written when
// the Adder can describe its layout (fixed-size chunks), and every DAG
// parameter is sent to kubo so that its Import configuration cannot make
// the description false. A path is skipped when its entry is current: a
// CID, a listing matching IpfsLsHash and, with a key, a CID signature by
// that key (an entry without IpfsEncoding, from an older ipnix, counts as
// current: the field is informational).
//
// A store path is read once: a walk opens its files in NAR order and asks
// the kernel to read them ahead (within a window shared with the walk of
// the next path), and the NAR is written straight into 1 MiB chunks that
// the upload to kubo, the hash and listing, and the NAR file (written with
// O_DIRECT where the file system allows) share without copies. Two paths
// stream side by side; syncing a NAR file and writing its listing and
// narinfo overlap the next paths' streaming.
package publish
