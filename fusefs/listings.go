package fusefs

import (
	"sort"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// Listing memory. Every accepted store path holds its listing, its inode
// ordinals and, for directories listed, their sorted entries. Their size is
// estimated when the path is loaded and added up; when the sum passes
// Config.ListingMemory, the least recently used paths are offered back to
// the kernel (an entry notification for their name in the root). Once the
// kernel has forgotten a path's top inode (nothing holds it open or as a
// working directory), the path is dropped and found again, narinfo and
// listing, by its next lookup. A path the kernel keeps cannot be dropped;
// the sum may then stay above the budget, and that is logged.

// Estimated bytes per listing entry beside its name and target: the node,
// its map slot, its ordinal and, when listed, its directory entry.
const entryOverhead = 200

// idleFor is how long a path must have gone unused before it is offered
// back to the kernel.
var idleFor = time.Second

// estimateListing returns the estimated memory of listing l.
func estimateListing(l *narindex.Listing) int64 {
	var n int64
	var walk func(ln *narindex.ListingNode)
	walk = func(ln *narindex.ListingNode) {
		n += entryOverhead + int64(len(ln.Target))
		for name, c := range ln.Entries {
			n += int64(len(name))
			walk(c)
		}
	}
	walk(l.Root)
	return n
}

// touch records a use of sp for the LRU order of listings.
func (sp *storePath) touch() { sp.lastUse.Store(time.Now().UnixNano()) }

// trimListings offers the least recently used idle paths back to the
// kernel until the listings would fit the budget. Runs in its own
// goroutine: entry notifications wait for lookups in flight.
func (f *FS) trimListings() {
	if f.listingBytes.Load() <= f.cfg.ListingMemory {
		return
	}
	cutoff := time.Now().Add(-idleFor).UnixNano()
	f.mu.Lock()
	var idle []*storePath
	for _, sp := range f.paths {
		if !sp.quarantined() && sp.lastUse.Load() < cutoff {
			idle = append(idle, sp)
		}
	}
	f.mu.Unlock()
	sort.Slice(idle, func(i, j int) bool { return idle[i].lastUse.Load() < idle[j].lastUse.Load() })
	over := f.listingBytes.Load() - f.cfg.ListingMemory
	var offered []string
	for _, sp := range idle {
		if over <= 0 {
			break
		}
		sp.dropping.Store(true)
		over -= sp.bytes
		offered = append(offered, sp.base)
	}
	for _, base := range offered {
		f.root.NotifyEntry(base)
	}
	if over > 0 {
		f.log.Warn("store path listings exceed --listing-memory; the kernel holds the rest", "bytes", f.listingBytes.Load(), "limit", f.cfg.ListingMemory)
	}
}

// forgotten is called when the kernel has forgotten the top inode of sp: if
// sp was offered back, its listing is dropped.
func (f *FS) forgotten(sp *storePath) {
	if !sp.dropping.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paths[sp.base] != sp {
		return
	}
	delete(f.paths, sp.base)
	f.listingBytes.Add(-sp.bytes)
	f.Stats.ListingsDropped.Add(1)
	f.rootGen.Add(1)
	f.log.Debug("listing of idle store path dropped", "path", sp.base, "bytes", sp.bytes)
}

// ListingBytes is the estimated memory of the listings held.
func (f *FS) ListingBytes() int64 { return f.listingBytes.Load() }
