package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ipfs/go-cid"
)

// ErrNotHeld is returned (wrapped) by Pin for a block the store does not
// hold.
var ErrNotHeld = errors.New("block not held")

// Pin marks the stored block c as needed by a prefetched closure: from now
// on no store on this directory evicts it or drops it on Release, and it
// counts against the quota until GC unpins it. It fails, wrapping
// ErrNotHeld, when the block is not stored (not fetched yet, or evicted
// since).
func (d *Disk) Pin(ctx context.Context, c cid.Cid) error {
	key := string(c.Hash())
	d.mu.Lock()
	_, pinned, ok := d.entry(key)
	d.mu.Unlock()
	if pinned {
		return nil
	}
	if !ok {
		if _, ok, unanswered := d.adopt(ctx, key, c); !ok {
			if err := ctx.Err(); err != nil {
				return err
			}
			if unanswered != nil {
				return fmt.Errorf("pinning %s: %w", c, unanswered)
			}
			return fmt.Errorf("%w: %s", ErrNotHeld, c)
		}
	}
	p := d.path(key)
	if err := os.Chmod(p, modePinned); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			d.mu.Lock()
			d.unindex(key)
			d.mu.Unlock()
			return fmt.Errorf("%w: %s", ErrNotHeld, c)
		}
		return fmt.Errorf("pinning block %s: %w", c, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.lru.Peek(key); ok {
		d.lru.Remove(key)
		d.pinned[key] = e
		d.pinnedBytes += e.size
	}
	return nil
}

// Release drops the block c, if stored and not pinned: a copy elsewhere
// (a local copy of a file) holds its bytes. Unlike Remove, it leaves a
// pinned block, also one pinned by another process since it was indexed.
func (d *Disk) Release(c cid.Cid) {
	key := string(c.Hash())
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.pinned[key]; ok {
		return
	}
	e, ok := d.lru.Peek(key)
	if !ok {
		return
	}
	p := d.path(key)
	d.lru.Remove(key)
	if fi, err := os.Lstat(p); err == nil && pinnedMode(fi.Mode()) {
		d.pinned[key] = e
		d.pinnedBytes += e.size
		return
	}
	d.bytes -= e.size
	os.Remove(p)
}

// Pinned is the number and bytes of pinned blocks held.
func (d *Disk) Pinned() (n int, bytes int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pinned), d.pinnedBytes
}

// IsPinned reports whether c is held and pinned (as this store knows).
func (d *Disk) IsPinned(c cid.Cid) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.pinned[string(c.Hash())]
	return ok
}
