// Package fetch gets IPFS blocks from outside sources and gives random access
// to the bytes of a UnixFS file built from them.
//
// Guarantees:
//   - No block reaches a caller before its bytes have been hashed and matched
//     against the multihash of the CID that named it (Verify). A block larger
//     than MaxBlockSize is refused before it is read whole.
//   - Every request to a source is bounded in time; a source that does not
//     answer costs at most its timeout.
//   - File.ReadAt is safe for concurrent use and keeps no shared position:
//     each read locates its blocks by prefix sums over the DAG's block sizes.
//
// fetch never imports FUSE or command-line packages; it is used by fusefs and
// publish and wrapped by cache.
package fetch
