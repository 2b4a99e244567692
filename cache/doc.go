// Package cache keeps verified IPFS blocks close to the reader. Each cache
// wraps any fetch.BlockGetter and is one itself, so layers stack:
// memory -> (disk) -> fetch.Verify(source).
//
// Guarantees: entries are keyed by multihash, so CIDv0 and CIDv1 names of one
// block share an entry; the bytes held never exceed the configured bound;
// concurrent requests for one missing block cause one fetch; a waiter whose
// context ends returns at once while the shared fetch carries on, bounded by
// the source's own timeout, and fills the cache for the next reader.
// Caches hold only what the layer below returned, so they must sit above
// fetch.Verify.
//
// The disk store is shared by the processes that open one directory (a
// mount, a server, a prefetch): each takes in the block files the others
// write; a pinned block (Disk.Pin: a prefetched closure needs it) is never
// evicted or released by any of them; only GC, holding the directory's
// lock exclusively (no store open), deletes what nothing needs any more.
package cache
