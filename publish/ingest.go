package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/narindex"
)

// ingested is what one pass over a NAR stream produced.
type ingested struct {
	cid     cid.Cid
	hash    narindex.Hash
	size    uint64
	listing []byte
}

// ingest streams a NAR read from r once: into IPFS through add, into a
// SHA-256, into the listing builder (which also validates the NAR and
// refuses more than maxEntries entries; 0 means the default), and into
// extra (may be nil). The caller checks hash and size against what it was
// promised.
func ingest(ctx context.Context, add Adder, r io.Reader, extra io.Writer, maxEntries int) (*ingested, error) {
	return ingestFrom(ctx, add, readChunks(r), extra, maxEntries)
}

// ingestFrom is ingest for a source that fills chunks itself. The upload,
// the hash and listing, and extra each run on their own, side by side,
// sharing the source's chunks; the slowest sets the pace. A malformed
// NAR fails the listing builder, and with it the upload, early.
func ingestFrom(ctx context.Context, add Adder, source func(*fanout) error, extra io.Writer, maxEntries int) (*ingested, error) {
	nsinks := 2
	if extra != nil {
		nsinks = 3
	}
	f := newFanout(nsinks)
	h := sha256.New()
	var size uint64
	lb := narindex.NewListingBuilderLimit(maxEntries)
	waitHash := f.drain(1, func(p []byte) error {
		h.Write(p)
		size += uint64(len(p))
		_, err := lb.Write(p)
		return err
	})
	waitExtra := func() error { return nil }
	if extra != nil {
		waitExtra = f.drain(2, func(p []byte) error {
			_, err := extra.Write(p)
			return err
		})
	}
	srcDone := make(chan struct{})
	go func() {
		defer close(srcDone)
		if err := source(f); err != nil {
			f.fail(err)
		}
		f.close()
	}()
	up := f.reader(0)
	c, err := add.Add(ctx, up)
	if err != nil {
		f.fail(err)
	}
	// Whatever add did not consume is still hashed and parsed by the
	// other sinks; but a root for part of the NAR is no root for it.
	if !up.discard() && err == nil {
		err = errors.New("kubo answered before it had read the whole NAR")
	}
	<-srcDone
	waitHash()
	waitExtra()
	f.recycle()
	if ferr := f.failed(); ferr != nil {
		// The first failure (a malformed NAR, an unreadable file, a full
		// disk) is the cause of whatever add made of it.
		err = ferr
	}
	if err != nil {
		if errors.Is(err, narindex.ErrMalformedNAR) || errors.Is(err, narindex.ErrTooManyEntries) {
			return nil, fmt.Errorf("not a valid NAR: %w", err)
		}
		return nil, err
	}
	l, err := lb.Finish()
	if err != nil {
		return nil, fmt.Errorf("not a valid NAR: %w", err)
	}
	data, err := l.Marshal()
	if err != nil {
		return nil, err
	}
	return &ingested{cid: c, hash: narindex.SHA256(h.Sum(nil)), size: size, listing: data}, nil
}

// readChunks is the source for a NAR read from r.
func readChunks(r io.Reader) func(*fanout) error {
	return func(f *fanout) error {
		for {
			c, err := f.get()
			if err != nil {
				return err
			}
			n, err := io.ReadFull(r, c.b[:chunkSize])
			c.b = c.b[:n]
			f.send(c)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
}

// checkNar compares what was ingested with what the source promised.
func (in *ingested) check(what string, want narindex.Hash, wantSize uint64) error {
	if in.size != wantSize {
		return fmt.Errorf("%s: NAR is %d bytes, expected NarSize %d", what, in.size, wantSize)
	}
	if want.Algo != "sha256" || !bytes.Equal(in.hash.Digest, want.Digest) {
		return fmt.Errorf("%s: NAR hash is %s, expected %s", what, in.hash, want)
	}
	return nil
}
