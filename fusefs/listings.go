package fusefs

import (
	"sort"
	"time"
)

// Listing memory. Every accepted store path holds its listing, its inode
// ordinals and, for directories listed, their sorted entries. Their size is
// estimated when the path is loaded and added up; when the sum passes
// Config.ListingMemory, the least recently used idle paths are dropped:
// forgotten here, and their names in the root invalidated in the kernel,
// so that the next lookup finds them again, narinfo and listing. Inodes
// the kernel still holds (open files, working directories) keep their old
// listing alive until it forgets them; nothing is ever served from a
// listing other than the one authenticated for the path.

// Estimated bytes per listing entry beside its name and target: the node,
// its map slot, its ordinal and, when listed, its directory entry.
const entryOverhead = 200

// idleFor is how long a path must have gone unused before its listing
// may be dropped (FS.idleFor, changed by tests).
const idleFor = time.Second

// touch records a use of sp for the LRU order of listings.
func (sp *storePath) touch() { sp.lastUse.Store(time.Now().UnixNano()) }

// trimListings offers the least recently used idle paths back to the
// kernel until the listings would fit the budget. Runs in its own
// goroutine: entry notifications wait for lookups in flight.
func (f *FS) trimListings() {
	if f.listingBytes.Load() <= f.cfg.ListingMemory {
		return
	}
	cutoff := time.Now().Add(-f.idleFor).UnixNano()
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
	var dropped []string
	f.mu.Lock()
	for _, sp := range idle {
		if over <= 0 {
			break
		}
		if f.paths[sp.base] != sp || sp.quarantined() {
			continue
		}
		delete(f.paths, sp.base)
		f.listingBytes.Add(-sp.bytes)
		go sp.chk.Release()
		over -= sp.bytes
		dropped = append(dropped, sp.base)
	}
	if len(dropped) > 0 {
		f.rootGen.Add(1)
		f.listingsChanged(f.listingBytes.Load())
	}
	f.mu.Unlock()
	for _, base := range dropped {
		f.dropEntry(&f.root.Inode, base)
		f.Stats.ListingsDropped.Add(1) // counted once the kernel forgot the name too
		f.log.Debug("listing of idle store path dropped", "path", base)
	}
	if over > 0 {
		f.log.Warn("store path listings exceed --listing-memory even without idle paths", "bytes", f.listingBytes.Load(), "limit", f.cfg.ListingMemory)
	}
}

// ListingBytes is the estimated memory of the listings held.
func (f *FS) ListingBytes() int64 { return f.listingBytes.Load() }

// listingsChanged reports the listings' new total to Config.OnListings.
// Callers hold f.mu, so reports arrive in order.
func (f *FS) listingsChanged(total int64) {
	if f.cfg.OnListings != nil {
		f.cfg.OnListings(total)
	}
}
