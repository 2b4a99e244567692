package blockfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// MaxPending bounds the reads of Bounded running at once, those left
// running after their caller gave up on them included: far more than the
// read-ahead workers and the kernel's concurrent reads, so only files that
// stopped answering fill it.
const MaxPending = 64

var pending = make(chan struct{}, MaxPending)

// ErrBusy is Bounded's answer while MaxPending reads are running: the
// caller asks elsewhere at once rather than wait its whole bound for
// every file of a disk that stopped answering.
var ErrBusy = errors.New("file reads are running (some may never return)")

// Pending is the number of Bounded reads running now.
func Pending() int { return len(pending) }

// Bounded runs read, a read of the file named what, within ctx. A file
// read cannot be interrupted (a disk or network file system that stopped
// answering holds it): when ctx ends first, read is left to finish on its
// own goroutine, which holds one of MaxPending slots until it does, and
// the error wraps ctx's.
func Bounded[T any](ctx context.Context, what string, read func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	select {
	case pending <- struct{}{}:
	default:
		return zero, fmt.Errorf("not reading %s: %d %w", what, MaxPending, ErrBusy)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() { <-pending }()
		v, err := read()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, fmt.Errorf("reading %s: %w", what, ctx.Err())
	}
}

// ReadBounded is Read within ctx (see Bounded).
func ReadBounded(ctx context.Context, p string, max int64) ([]byte, fs.FileInfo, error) {
	type file struct {
		data []byte
		fi   fs.FileInfo
	}
	f, err := Bounded(ctx, "block file "+p, func() (file, error) {
		data, fi, err := Read(p, max)
		return file{data, fi}, err
	})
	return f.data, f.fi, err
}
