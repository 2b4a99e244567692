// Package integrity is the part of ipnix that decides what of a store path
// may be served: it hashes a NAR as its bytes stream past readers, parses
// it into the listing it really holds, tracks which bytes of which files
// have been served, and on the last of them compares the NAR with the
// signed NarHash and the parsed listing with the one that was served. A
// mismatch quarantines the path for good.
//
// It does no I/O of its own: the caller hands in leaves as they are read
// (OnLeaf) and a function that reads the NAR at an offset (for the bytes
// no reader brought). It knows nothing of FUSE, so the mount and `ipnix
// serve` share it and it is tested without a kernel.
//
// What it guarantees, with the trust model of DESIGN.md:
//   - Verify succeeds only when the SHA-256 of the whole NAR equals the
//     narinfo's NarHash and, when a listing was served, the NAR parses
//     into exactly that listing (types, sizes, offsets, modes, targets,
//     names).
//   - Once quarantined, a Checker never becomes verified; once verified,
//     never quarantined.
//   - A failure to read is an error, not a verdict: progress is kept and
//     Verify may be called again.
package integrity
