package prefetch

import (
	"context"
	"fmt"
	"testing"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/internal/blockfile"
)

// failing is a store's blocks with one block answering err.
type failing struct {
	fetch.BlockGetter
	c   cid.Cid
	err error
}

func (f failing) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if c == f.c {
		return nil, f.err
	}
	return f.BlockGetter.GetBlock(ctx, c)
}

// A block whose read did not answer (a disk that stopped answering, a
// store whose reads are all taken) is not a missing block: Needed, and so
// GC, stops rather than leave out everything below it, which GC would
// unpin and delete. A block that is absent is left out as before.
func TestNeededStopsOnUnansweredReads(t *testing.T) {
	e := newEnv(t)
	d := e.open(t, 1<<30)
	if _, err := e.run(t, d, false, e.top); err != nil {
		t.Fatal(err)
	}
	d.Close()
	rec, err := LoadRecord(e.dir)
	if err != nil || len(rec.Closures) != 1 {
		t.Fatalf("record: %v %v", rec, err)
	}
	store := cache.ReadOnly(e.dir)
	all, err := Needed(context.Background(), store, rec)
	if err != nil {
		t.Fatal(err)
	}
	root := rec.Closures[0].Paths[0].Cid
	for name, tc := range map[string]struct {
		err  error
		stop bool
	}{
		"timed out":   {fmt.Errorf("reading block file x: %w", context.DeadlineExceeded), true},
		"all taken":   {fmt.Errorf("not reading block file x: 64 %w", blockfile.ErrBusy), true},
		"absent":      {fmt.Errorf("%w: x", fetch.ErrBlockNotFound), false},
		"damaged":     {fmt.Errorf("block file in x: %w: x", fetch.ErrHashMismatch), false},
		"not regular": {fmt.Errorf("x is not a regular file (p---------)"), false},
	} {
		t.Run(name, func(t *testing.T) {
			keep, err := Needed(context.Background(), failing{store, root, tc.err}, rec)
			switch {
			case tc.stop && err == nil:
				t.Fatalf("kept %d of %d blocks and said nothing", len(keep), len(all))
			case !tc.stop && err != nil:
				t.Fatalf("stopped: %v", err)
			case !tc.stop && len(keep) >= len(all):
				t.Fatalf("kept %d of %d blocks with the root gone", len(keep), len(all))
			}
		})
	}
}
