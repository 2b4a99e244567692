package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// Ranged fetches. A gateway asked for bytes a-b of a UnixFS file
// (GET /ipfs/<root> with a Range header) fetches only the blocks of that
// range and streams the file's bytes back. With raw leaves those bytes are
// the leaves' bytes end to end, so the stream can be cut at the leaf
// boundaries the verified DAG gives and each slice hashed against its
// leaf's CID: one request for many blocks, and every byte still matched
// against a CID. A range that holds a non-raw leaf is not fetched this way.

// ByteSource serves byte ranges of a UnixFS file as plain file bytes.
type ByteSource interface {
	GetBytes(ctx context.Context, root cid.Cid, from, to int64) (io.ReadCloser, error)
}

// ErrNotRawLeaves is returned (wrapped) when a range asked of FetchBytes
// holds a leaf that is not a raw block, or leaves that do not follow each
// other: its bytes cannot be cut into blocks.
var ErrNotRawLeaves = errors.New("range is not contiguous raw leaves")

// MaxRangeLeaves bounds the leaves fetched in one ranged request.
const MaxRangeLeaves = 64

// Runs splits leaves into runs that FetchBytes can fetch in one request
// each: contiguous raw leaves, at most MaxRangeLeaves per run, none that
// skip(c) says are held already. Other leaves are left out.
func Runs(leaves []LeafRange, skip func(cid.Cid) bool) [][]LeafRange {
	var runs [][]LeafRange
	var cur []LeafRange
	flush := func() {
		if len(cur) > 0 {
			runs = append(runs, cur)
		}
		cur = nil
	}
	for _, l := range leaves {
		if l.data != nil || l.Cid.Type() != cid.Raw || (skip != nil && skip(l.Cid)) {
			flush()
			continue
		}
		if n := len(cur); n > 0 && (cur[n-1].Start+cur[n-1].Size != l.Start || n >= MaxRangeLeaves) {
			flush()
		}
		cur = append(cur, l)
	}
	flush()
	return runs
}

// FetchBytes fetches the contiguous raw leaves run from src in one ranged
// request, cuts the bytes at the leaf boundaries, checks each slice
// against its leaf's CID and hands each that matches to put, in order.
// The first slice that does not match ends the transfer with an error
// wrapping ErrHashMismatch; the leaves delivered before it stay delivered,
// and the count of them is returned.
func (f *File) FetchBytes(ctx context.Context, src ByteSource, run []LeafRange, put func(blocks.Block)) (int, error) {
	if len(run) == 0 {
		return 0, nil
	}
	for i, l := range run {
		if l.data != nil || l.Cid.Type() != cid.Raw || l.Size <= 0 || l.Size > MaxBlockSize ||
			(i > 0 && run[i-1].Start+run[i-1].Size != l.Start) {
			return 0, fmt.Errorf("%w: leaf %d of %d at %d", ErrNotRawLeaves, i, len(run), l.Start)
		}
	}
	n := 0
	_, err := f.Stream(ctx, src, run[0].Start, run[len(run)-1].Start+run[len(run)-1].Size, nil, func(_ LeafRange, b blocks.Block) error {
		put(b)
		n++
		return nil
	})
	return n, err
}

// GetBytes asks the gateway for bytes [from, to) of the UnixFS file root,
// as the file's own bytes (not a CAR, not a raw block). Only an answer of
// exactly that range is accepted.
func (g *Gateway) GetBytes(ctx context.Context, root cid.Cid, from, to int64) (io.ReadCloser, error) {
	if from < 0 || to <= from {
		return nil, fmt.Errorf("%s: empty byte range %d-%d of %s", g, from, to, root)
	}
	// A range may hold many blocks: allow each its timeout.
	ctx, cancel := context.WithTimeout(ctx, g.timeout*time.Duration((to-from)/(256<<10)+2))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.base+"/ipfs/"+root.String(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(to-1, 10))
	req.Header.Set("Accept", "application/octet-stream")
	resp, err := g.client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: bytes %d-%d of %s: %w", g, from, to-1, root, err)
	}
	if err := checkRangeAnswer(resp, from, to); err != nil {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("%s: bytes %d-%d of %s: %w", g, from, to-1, root, err)
	}
	return cancelCloser{io.NopCloser(io.LimitReader(resp.Body, to-from)), closeBoth(resp.Body, cancel)}, nil
}

// checkRangeAnswer accepts a 206 whose Content-Range is exactly [from,
// to), or a 200 (the whole file) when the range starts at 0.
func checkRangeAnswer(resp *http.Response, from, to int64) error {
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		want := "bytes " + strconv.FormatInt(from, 10) + "-" + strconv.FormatInt(to-1, 10) + "/"
		if !strings.HasPrefix(cr, want) {
			return fmt.Errorf("answered Content-Range %q", clip(cr))
		}
		return nil
	case http.StatusOK:
		if from == 0 {
			return nil
		}
		return errors.New("ranges not supported (HTTP 200 for a range)")
	case http.StatusNotFound, http.StatusGone:
		return ErrBlockNotFound
	default:
		return fmt.Errorf("HTTP %s", resp.Status)
	}
}

// closeBoth closes body, then releases the request's context.
func closeBoth(body io.Closer, cancel context.CancelFunc) context.CancelFunc {
	return func() {
		body.Close()
		cancel()
	}
}

// sourceName names src in an error.
func sourceName(src any) string {
	if s, ok := src.(fmt.Stringer); ok {
		return s.String()
	}
	return "range source"
}

// isRaw reports whether l is a raw block, whose bytes are the file's.
func isRaw(l LeafRange) bool { return l.Cid.Type() == cid.Raw }
