// Package fusefs is the read-only FUSE filesystem of ipnix (go-fuse v2).
//
// The root directory is empty until something looks up <hash>-<name>; then
// the store path's narinfo is resolved and accepted (name, signature, CID,
// NarSize), its NAR listing is loaded (or built from the NAR's headers by
// random access), and its tree appears: directories 0555, regular files 0444
// or 0555, symlinks as in the NAR, mtime 1, owner root. File bytes are read
// from the NAR's UnixFS file through the verified, cached block getter given
// in Config, only when read.
//
// Trust: every byte served came from a block whose hash matched its CID. Once
// every file of a store path has been read, the whole NAR is streamed, hashed
// and parsed; if its hash is not the signed NarHash, or its entries disagree
// with the listing that was served, the store path is quarantined: every
// later open and read fails with EIO, its blocks are evicted from the caches
// and the kernel's page cache, and the event is logged and counted. Store
// paths whose NAR is small are verified whole before they are shown.
//
// Inode numbers: bits 63..32 hold the store path's index (1, 2, ... in the
// order paths were first looked up in this mount), bits 31..0 the entry's
// ordinal in NAR order (0 is the store path itself). The mount root is 1.
// Numbers never derive from content hashes: go-fuse merges nodes with equal
// numbers, and equal bytes may differ in their executable bit.
package fusefs
