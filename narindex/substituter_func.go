package narindex

import (
	"context"
	"fmt"
)

// FetchFunc reads one file of a binary cache by name: "nix-cache-info",
// "<hash>.narinfo" or "<hash>.ls". It returns the file's bytes, or an
// error wrapping ErrNotFound when the cache does not have it, or one
// wrapping ErrTooLarge when it holds more than limit bytes (it should find
// that out before reading them).
type FetchFunc func(ctx context.Context, name string, limit int64) ([]byte, error)

// ErrTooLarge is wrapped by the error of a FetchFunc for a file over its
// limit: a narinfo over MaxNarInfoSize is then malformed, a listing over
// MaxListingSize is not used (the mount reads the NAR's headers instead).
var ErrTooLarge = errTooLarge

// NewSubstituter makes a Substituter named url of a function that reads
// the cache's files, for caches that live where narindex does not go
// itself (a UnixFS directory in IPFS, say). It applies what the
// substituters of OpenSubstituter apply: hash parts are checked before
// anything is fetched, narinfos are parsed and must name a path of the
// hash asked for, nix-cache-info is read once. Unlike those, it keeps no
// memory of "not found" answers: a cache whose contents change under one
// URL (an IPNS name) must not be answered from a miss of its old contents,
// so remembering misses is fetch's business.
func NewSubstituter(url string, fetch FetchFunc) Substituter {
	// A negative cache whose entries expire as they are made: has never
	// answers yes.
	return &substituter{url: url, f: funcFetcher(fetch), neg: newNegCache(0, 1)}
}

// funcFetcher adapts a FetchFunc to the fetcher the substituter uses,
// holding it to its limit.
type funcFetcher FetchFunc

func (f funcFetcher) fetch(ctx context.Context, name string, limit int64) ([]byte, error) {
	data, err := f(ctx, name, limit)
	if err == nil && int64(len(data)) > limit {
		return nil, tag(errTooLarge, fmt.Errorf("%s: %d bytes, more than the limit of %d", name, len(data), limit))
	}
	return data, err
}
