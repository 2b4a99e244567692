// Package prefetch fetches whole closures into a disk block store ahead of
// time, so that a mount on the same cache directory reads them with no
// block source at all (offline), and keeps the record of what was
// prefetched that gc and stats work from.
//
// Guarantees: every block stored is checked against its CID (the store
// sits above fetch.Verify); narinfos are accepted as a mount accepts them
// (the caller's narindex.Resolver); a path without a trusted IpfsCidSig is
// also checked against its NarHash. Prefetched blocks are pinned in the
// store (cache.Disk.Pin): no mount evicts them; only gc unpins, under the
// directory's exclusive lock, what no recorded closure needs. A prefetch
// that would not fit beside the blocks pinned already fails before it
// fetches leaves, rather than evicting what was prefetched.
package prefetch
