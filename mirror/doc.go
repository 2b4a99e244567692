// Package mirror pins, on an IPFS node, the NAR of every narinfo a binary
// cache names (its IpfsCid, recursively), so that the node holds every block
// of the cache and serves them to the swarm over bitswap and through its
// gateway, whoever published them and whether or not the publisher is up.
//
// A run is resumable: the node is asked once for its recursive pins, and a
// CID already among them is counted and skipped. Pins run in parallel; a pin
// that fails, or on which the node fetches no block for a stall bound, is
// counted and named, and the others go on. Progress goes to a writer at most
// once a period, and a run ends with a Summary.
//
// With trusted keys, a narinfo is pinned only when both its Sig and its
// IpfsCidSig verify under them: the Nix signature does not cover IpfsCid,
// so it alone would let whoever can write to the cache make the mirror
// fetch, store and serve any DAG. Narinfos that fail are counted as
// rejected, with the reason logged.
package mirror
