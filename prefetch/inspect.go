package prefetch

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/internal/blockfile"
)

// walkWindow is the span of NAR bytes whose leaves are listed at once when
// walking a DAG that may be incomplete: a missing inner node hides only
// the leaves of the windows below it.
const walkWindow = 32 << 20

// dagBlocks lists the blocks of the UnixFS file c that can be found
// through bg, skipping the parts below missing inner nodes; complete says
// whether nothing was missing on the way (leaves are not read: see
// Status). A block whose read did not answer is not missing: GC would
// drop everything below it, so that is an error.
func dagBlocks(ctx context.Context, bg fetch.BlockGetter, c cid.Cid) (known []cid.Cid, leaves []fetch.LeafRange, complete bool, err error) {
	f, err := fetch.OpenFile(ctx, bg, c)
	if err != nil {
		if err := unanswered(ctx, c, err); err != nil {
			return nil, nil, false, err
		}
		return []cid.Cid{c}, nil, false, nil
	}
	complete = true
	for off := int64(0); off < f.Size(); off += walkWindow {
		ls, err := f.Leaves(ctx, off, min(off+walkWindow, f.Size()))
		if err != nil {
			if err := unanswered(ctx, c, err); err != nil {
				return nil, nil, false, err
			}
			complete = false
			continue
		}
		// Windows share a leaf that straddles their boundary.
		if len(leaves) > 0 && len(ls) > 0 && ls[0].Start == leaves[len(leaves)-1].Start {
			ls = ls[1:]
		}
		leaves = append(leaves, ls...)
	}
	return f.KnownBlocks(), leaves, complete, nil
}

// unanswered is the error to stop on when err, from reading the DAG of c,
// says nothing of whether a block is there (ctx ended, or a read of the
// store did not answer), or nil when err says it is absent or damaged.
func unanswered(ctx context.Context, c cid.Cid, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case blockfile.Unanswered(err):
		return fmt.Errorf("reading the DAG of %s: %w", c, err)
	}
	return nil
}

// Needed gives the keys (cache.Key) of every block of the recorded
// closures' NARs that bg (a store's blocks: cache.ReadOnly) leads to: GC
// keeps those.
func Needed(ctx context.Context, bg fetch.BlockGetter, rec *Record) (map[string]bool, error) {
	keep := map[string]bool{}
	done := map[string]bool{}
	for _, c := range rec.Closures {
		for _, p := range c.Paths {
			if done[p.Cid.KeyString()] {
				continue
			}
			done[p.Cid.KeyString()] = true
			known, _, _, err := dagBlocks(ctx, bg, p.Cid)
			if err != nil {
				return nil, err
			}
			for _, k := range known {
				keep[cache.Key(k)] = true
			}
		}
	}
	return keep, nil
}

// ClosureStatus says how much of a prefetched closure the store holds.
type ClosureStatus struct {
	Closure
	Blocks       int   // blocks known (all of them when the inner nodes are all there)
	Present      int   // of Blocks: with a file of the right size
	Pinned       int   // of Present: pinned
	Bytes        int64 // NAR bytes of the closure
	PresentBytes int64 // of Bytes: held in leaves present
	// Complete: every block of every NAR is there, so the closure reads
	// with no source at all.
	Complete bool
	// Missing names the first path found incomplete.
	Missing string
}

// Status walks each recorded closure's DAGs in the store in dir (without
// reading leaves: their files must be there with the size their parent
// declares) and says what is there.
func Status(ctx context.Context, dir string, rec *Record) ([]ClosureStatus, error) {
	bg := cache.ReadOnly(dir)
	out := make([]ClosureStatus, 0, len(rec.Closures))
	for _, c := range rec.Closures {
		st := ClosureStatus{Closure: c, Complete: true}
		for _, p := range c.Paths {
			st.Bytes += int64(p.NarSize)
			known, leaves, complete, err := dagBlocks(ctx, bg, p.Cid)
			if err != nil {
				return nil, err
			}
			size := map[string]int64{}
			for _, l := range leaves {
				if l.Cid.Defined() {
					size[cache.Key(l.Cid)] = l.Size
				} else {
					st.PresentBytes += l.Size // inline in a node that is there
				}
			}
			seen := map[string]bool{}
			for _, k := range known {
				key := cache.Key(k)
				if seen[key] {
					continue
				}
				seen[key] = true
				st.Blocks++
				got, pinned, ok := cache.StatBlock(dir, k)
				want, leaf := size[key]
				if ok && leaf && k.Type() == cid.Raw && got != want {
					ok = false // torn: a mount would fetch it again
				}
				if !ok {
					complete = false
					continue
				}
				st.Present++
				if pinned {
					st.Pinned++
				}
			}
			for _, l := range leaves {
				if !l.Cid.Defined() {
					continue
				}
				if got, _, ok := cache.StatBlock(dir, l.Cid); ok && (l.Cid.Type() != cid.Raw || got == l.Size) {
					st.PresentBytes += l.Size
				}
			}
			if !complete && st.Complete {
				st.Complete, st.Missing = false, p.Base
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// Collect removes from the store in dir every block that no recorded
// closure needs and that was not used within keepRecent, after dropping
// the closures of forget (root base names) from the record. It fails
// (wrapping cache.ErrInUse) while a store is open on dir: see cache.GC.
func Collect(ctx context.Context, dir string, keepRecent time.Duration, forget []string) (cache.GCResult, *Record, error) {
	var rec *Record
	res, err := cache.GC(dir, func(bg fetch.BlockGetter) (map[string]bool, error) {
		if len(forget) > 0 {
			err := UpdateRecord(dir, func(r *Record) error {
				var unknown []string
				for _, root := range forget {
					if !r.Remove(root) {
						unknown = append(unknown, root)
					}
				}
				if len(unknown) > 0 {
					var have []string
					for _, c := range r.Closures {
						have = append(have, c.Root)
					}
					sort.Strings(have)
					return fmt.Errorf("not a prefetched closure: %v (prefetched: %v)", unknown, have)
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		var err error
		if rec, err = LoadRecord(dir); err != nil {
			return nil, err
		}
		return Needed(ctx, bg, rec)
	}, time.Now().Add(-keepRecent))
	return res, rec, err
}
