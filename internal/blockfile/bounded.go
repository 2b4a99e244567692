package blockfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// MaxPending bounds the reads of ReadBounded running at once, those left
// running after their caller gave up on them included: far more than the
// read-ahead workers and the kernel's concurrent reads, so only files that
// stopped answering fill it.
const MaxPending = 64

var pending = make(chan struct{}, MaxPending)

// ErrBusy is ReadBounded's answer while MaxPending reads are running: the
// caller asks elsewhere at once rather than wait its whole bound for
// every block of a disk that stopped answering.
var ErrBusy = errors.New("block file reads are running (some may never return)")

// Pending is the number of ReadBounded reads running now.
func Pending() int { return len(pending) }

// ReadBounded is Read within ctx. A file read cannot be interrupted (a
// disk or network file system that stopped answering holds it): when ctx
// ends first, the read is left to finish on its own goroutine, which holds
// one of MaxPending slots until it does, and the error wraps ctx's.
func ReadBounded(ctx context.Context, p string, max int64) ([]byte, fs.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	select {
	case pending <- struct{}{}:
	default:
		return nil, nil, fmt.Errorf("not reading block file %s: %d %w", p, MaxPending, ErrBusy)
	}
	type result struct {
		data []byte
		fi   fs.FileInfo
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer func() { <-pending }()
		data, fi, err := Read(p, max)
		done <- result{data, fi, err}
	}()
	select {
	case r := <-done:
		return r.data, r.fi, r.err
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("reading block file %s: %w", p, ctx.Err())
	}
}
