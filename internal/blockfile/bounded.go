package blockfile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// DefaultPending is the usual bound of a Limiter: far more than the
// read-ahead workers and the kernel's concurrent reads, so only files
// that stopped answering fill it.
const DefaultPending = 64

// Limiter bounds the reads of Bounded running at once for one store,
// those left running after their caller gave up on them included. Each
// store has its own, so that files that stop answering in one (a kubo
// repository whose owner points a shard at a FUSE mount of theirs) do not
// shut another (ipnix's own disk cache) out.
type Limiter struct{ slots chan struct{} }

// NewLimiter returns a limiter of n reads at once.
func NewLimiter(n int) *Limiter { return &Limiter{slots: make(chan struct{}, n)} }

// Pending is the number of reads running now under l.
func (l *Limiter) Pending() int { return len(l.slots) }

// ErrBusy is Bounded's answer while its limiter is full: the caller asks
// elsewhere at once rather than wait its whole bound for every file of a
// disk that stopped answering.
var ErrBusy = errors.New("file reads are running (some may never return)")

// Unanswered tells an error of Bounded that says nothing of the file (its
// read did not answer within the bound, was not tried because too many had
// not, or its caller gave up) from one that does (absent, unreadable,
// damaged).
func Unanswered(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, ErrBusy)
}

// Bounded runs read, a read of the file named what, within ctx and a slot
// of l. A file read cannot be interrupted (a disk or network file system
// that stopped answering holds it): when ctx ends first, read is left to
// finish on its own goroutine, which keeps its slot until it does, and the
// error wraps ctx's.
func Bounded[T any](ctx context.Context, l *Limiter, what string, read func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	select {
	case l.slots <- struct{}{}:
	default:
		return zero, fmt.Errorf("not reading %s: %d %w", what, cap(l.slots), ErrBusy)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() { <-l.slots }()
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

// ReadBounded is Read within ctx and a slot of l (see Bounded).
func ReadBounded(ctx context.Context, l *Limiter, p string, max int64) ([]byte, fs.FileInfo, error) {
	type file struct {
		data []byte
		fi   fs.FileInfo
	}
	f, err := Bounded(ctx, l, "block file "+p, func() (file, error) {
		data, fi, err := Read(p, max)
		return file{data, fi}, err
	})
	return f.data, f.fi, err
}
