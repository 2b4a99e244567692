package fusefs

import (
	"errors"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/ipnix/ipnix/integrity"
	"github.com/ipnix/ipnix/narindex"
)

// Small files without a READ round trip. When a leaf of a store path's
// NAR has been read (its bytes matched its CID on the way in), the small
// files it completes are written into the kernel's page cache with
// FUSE_NOTIFY_STORE, for the files whose inodes the kernel knows; a walk
// such as find -exec cat then costs one READ per leaf, not one per file.
// A file looked up after its leaf went by is pushed from the leaves kept
// here, once the lookup has been answered.
//
// What is promised:
//   - Only bytes of leaves handed over by fetch.File's leaf hook, which
//     come through the verifying block getter, of a path whose state lets
//     Read serve it: lazily served under a trusted CID signature, or
//     verified whole. The push counts as serving for the checker
//     (Checker.NoteRead): a push that would serve a lazy path's last
//     unserved bytes is not made, and the READ that follows verifies the
//     NAR first, as for any read.
//   - Never for a quarantined path. The state is checked before and after
//     each push; a push that lost the race with a quarantine is
//     invalidated again (forget, which follows the quarantine, may have
//     run before the push landed).
//   - A file is pushed whole, from offset 0, with exactly the size the
//     kernel was told at lookup: never past its end, so the kernel keeps
//     the file's size and attributes (a store past the end would extend
//     the size and drop the attributes).
//   - Never from a request handler, never through go-fuse (see notify.go:
//     a store takes the locks of the pages it fills, which reads in flight
//     hold until go-fuse writes their replies): one worker writes to the
//     device. Handlers only queue work, without blocking: when the queue
//     is full, the work is dropped (counted).
//
// The kernel keeps the pushed pages: files are opened either without
// asking (OPEN answered ENOSYS: the kernel then opens with
// FOPEN_KEEP_CACHE) or with FOPEN_KEEP_CACHE, and a file's size and
// mtime never change (go-fuse asks for FUSE_AUTO_INVAL_DATA, under which
// the kernel drops a file's pages when either changes).

// Bounds of page pushing.
const (
	// pushMaxFile is the largest file pushed; the kernel's read-ahead
	// serves larger ones in few requests anyway.
	pushMaxFile = 128 << 10
	// pushQueue bounds the work waiting for the worker.
	pushQueue = 64
	// pushKeepBytes and pushKeepLeaves bound the verified leaves kept for
	// files looked up after their leaf went by (the slices are normally
	// the memory cache's own).
	pushKeepBytes  = 4 << 20
	pushKeepLeaves = 256
	// pushRetries bounds the attempts at a file the kernel does not know
	// yet: the worker may get to a lookup before the kernel has taken in
	// its reply.
	pushRetries   = 6
	pushRetryWait = time.Millisecond
)

// pusher is the mount's page pushing: a queue, one worker, the leaves
// kept.
type pusher struct {
	fs   *FS
	jobs chan pushJob
	quit chan struct{}
	done chan struct{}
	// busy counts jobs queued, in work or waiting for a retry (for tests).
	busy atomic.Int64

	mu        sync.Mutex
	kept      []keptLeaf // oldest first
	keptBytes int64

	// testStore, when set, replaces the write to the device (tests).
	testStore atomic.Pointer[func(n *notifier, node uint64, data []byte) error]
}

// pushJob is a leaf read (push what it completes) or a file looked up
// (push it from the leaves kept).
type pushJob struct {
	sp    *storePath
	start int64
	leaf  []byte
	file  *smallFile
	tries int
}

type keptLeaf struct {
	sp    *storePath
	start int64
	data  []byte
}

// pathPages is a store path's part of page pushing.
type pathPages struct {
	// lazy: the path is served from its listing before its NAR is
	// verified whole (trusted CID signature). Set by load once the
	// listing is in place.
	lazy     atomic.Bool
	once     sync.Once
	index    atomic.Pointer[[]smallFile] // the small regular files by NAR offset
	lastLeaf atomic.Int64                // start+1 of the leaf last queued
}

// smallFile is one regular file of up to pushMaxFile bytes.
type smallFile struct {
	ln *narindex.ListingNode
	// where names the file's inode in the tree the kernel knows, once
	// looked up: the child name of a directory inode.
	where atomic.Pointer[kernelName]
	// holds is the kernel node id whose pages hold the file (pushed to,
	// or read whole through a READ), or 0.
	holds atomic.Uint64
}

type kernelName struct {
	dir  *fs.Inode
	name string
}

func newPusher(f *FS) *pusher {
	p := &pusher{fs: f, jobs: make(chan pushJob, pushQueue), quit: make(chan struct{}), done: make(chan struct{})}
	go p.work()
	return p
}

// close stops the worker; queued work is dropped.
func (p *pusher) close() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	<-p.done
}

// servable reports whether sp's bytes may be served now, as Read serves
// them: a lazy path until it is quarantined, a path verified whole.
func (sp *storePath) servable() bool {
	switch sp.chk.State() {
	case integrity.Verified:
		return true
	case integrity.Unverified:
		return sp.pages.lazy.Load()
	}
	return false
}

// onLeaf is the NAR's leaf hook: the checker hashes the leaf, and the
// files it completes are queued for pushing. Called by readers; never
// blocks.
func (sp *storePath) onLeaf(start int64, data []byte) {
	sp.chk.OnLeaf(start, data)
	p := sp.fs.pages
	if p == nil || len(data) == 0 || !sp.servable() {
		return
	}
	// A file read in several requests brings its leaf again each time.
	if sp.pages.lastLeaf.Swap(start+1) == start+1 {
		return
	}
	if idx := sp.pages.index.Load(); idx != nil {
		if lo, hi := overlapping(*idx, start, start+int64(len(data))); lo == hi {
			return
		}
	}
	p.enqueue(pushJob{sp: sp, start: start, leaf: data})
}

// noteLookup records that the kernel is being told about ln, child name
// of dir; called by Lookup before it answers. The file is pushed after
// the answer if the leaves kept hold all of it.
func (sp *storePath) noteLookup(dir *fs.Inode, name string, ln *narindex.ListingNode) {
	p := sp.fs.pages
	if p == nil || ln.Type != narindex.TypeRegular || ln.Size <= 0 || ln.Size > pushMaxFile {
		return
	}
	f := sp.smallFile(ln)
	if f == nil {
		return
	}
	if w := f.where.Load(); w == nil || w.dir != dir || w.name != name {
		f.where.Store(&kernelName{dir: dir, name: name})
	}
	if p.keeps(sp, ln.NarOffset, ln.NarOffset+ln.Size) {
		p.enqueue(pushJob{sp: sp, file: f})
	}
}

// noteRead records that a READ of the kernel node id is bringing all of
// ln into that node's pages: nothing to push there.
func (sp *storePath) noteRead(in *fs.Inode, ln *narindex.ListingNode, off, end int64) {
	if sp.fs.pages == nil || off != 0 || end != ln.Size || ln.Size > pushMaxFile || sp.pages.index.Load() == nil {
		return
	}
	if f := sp.smallFile(ln); f != nil {
		f.holds.Store(nodeID(in))
	}
}

// smallFile finds ln in sp's index, building the index on first use.
func (sp *storePath) smallFile(ln *narindex.ListingNode) *smallFile {
	idx := sp.smallFiles()
	i := sort.Search(len(idx), func(i int) bool { return idx[i].ln.NarOffset >= ln.NarOffset })
	if i < len(idx) && idx[i].ln == ln {
		return &idx[i]
	}
	return nil
}

func (sp *storePath) smallFiles() []smallFile {
	sp.pages.once.Do(func() {
		var idx []smallFile
		var walk func(n *narindex.ListingNode)
		walk = func(n *narindex.ListingNode) {
			if n.Type == narindex.TypeRegular && n.Size > 0 && n.Size <= pushMaxFile {
				idx = append(idx, smallFile{ln: n})
			}
			for _, e := range n.Entries {
				walk(e)
			}
		}
		walk(sp.listing.Root)
		sort.Slice(idx, func(i, j int) bool { return idx[i].ln.NarOffset < idx[j].ln.NarOffset })
		sp.pages.index.Store(&idx)
	})
	return *sp.pages.index.Load()
}

// overlapping returns the range of idx whose files overlap NAR bytes
// [start, end).
func overlapping(idx []smallFile, start, end int64) (lo, hi int) {
	lo = sort.Search(len(idx), func(i int) bool { return idx[i].ln.NarOffset+idx[i].ln.Size > start })
	hi = lo
	for hi < len(idx) && idx[hi].ln.NarOffset < end {
		hi++
	}
	return lo, hi
}

func (p *pusher) enqueue(j pushJob) {
	p.busy.Add(1)
	select {
	case p.jobs <- j:
	default:
		p.busy.Add(-1)
		p.fs.Stats.PagePushDrops.Add(1)
	}
}

func (p *pusher) work() {
	defer close(p.done)
	for {
		select {
		case <-p.quit:
			return
		case j := <-p.jobs:
			if j.file != nil {
				p.push(j.sp, j.file, j.tries)
			} else {
				p.leaf(j.sp, j.start, j.leaf)
			}
			p.busy.Add(-1)
		}
	}
}

// leaf keeps a leaf that holds small files and pushes those it completes
// that the kernel knows.
func (p *pusher) leaf(sp *storePath, start int64, data []byte) {
	idx := sp.smallFiles()
	lo, hi := overlapping(idx, start, start+int64(len(data)))
	if lo == hi {
		return
	}
	p.keep(sp, start, data)
	for i := lo; i < hi; i++ {
		if idx[i].where.Load() != nil {
			p.push(sp, &idx[i], 0)
		}
	}
}

// push writes file f of sp into the kernel's pages of its inode, if the
// leaves kept hold all of it and the kernel knows the inode and does not
// hold the file already.
func (p *pusher) push(sp *storePath, f *smallFile, tries int) {
	if !sp.servable() {
		p.drop(sp)
		return
	}
	w := f.where.Load()
	if w == nil {
		return
	}
	data := p.assemble(sp, f.ln.NarOffset, f.ln.Size)
	if data == nil {
		return
	}
	in := w.dir.GetChild(w.name)
	var id uint64
	if in != nil {
		if fn, ok := in.Operations().(*fileNode); ok && fn.sp == sp && fn.ln == f.ln {
			id = nodeID(in)
		}
	}
	if id == 0 {
		// Not in the tree yet (the lookup is being answered), or forgotten.
		p.retry(sp, f, tries)
		return
	}
	old := f.holds.Load()
	if old == id || !f.holds.CompareAndSwap(old, id) {
		return
	}
	if sp.chk.NoteRead(f.ln, 0, f.ln.Size) {
		// The last unserved bytes of the path: the READ that will come
		// checks the whole NAR before serving them.
		return
	}
	n := p.fs.notify.Load()
	if n == nil {
		return
	}
	err := p.store(n, id, data)
	if !sp.servable() {
		// Quarantined while pushing: forget may have dropped the pages
		// before these landed.
		n.invalInode(id, 0, 0)
		p.drop(sp)
		return
	}
	switch {
	case err == nil:
		p.fs.Stats.PagePushes.Add(1)
		p.fs.Stats.PagePushBytes.Add(f.ln.Size)
	case errors.Is(err, syscall.ENOENT):
		f.holds.CompareAndSwap(id, 0)
		p.retry(sp, f, tries)
	default:
		f.holds.CompareAndSwap(id, 0)
		p.fs.Stats.PagePushErrors.Add(1)
		p.fs.log.Debug("page push failed", "path", sp.base, "node", id, "bytes", f.ln.Size, "err", err)
	}
}

func (p *pusher) store(n *notifier, node uint64, pieces [][]byte) error {
	if t := p.testStore.Load(); t != nil {
		return (*t)(n, node, slices.Concat(pieces...))
	}
	return n.store(node, 0, pieces...)
}

// retry queues f again a little later, a few times: the kernel takes in a
// lookup's answer only after go-fuse has written it.
func (p *pusher) retry(sp *storePath, f *smallFile, tries int) {
	if tries+1 >= pushRetries {
		return
	}
	p.busy.Add(1)
	time.AfterFunc(pushRetryWait<<(2*tries), func() {
		defer p.busy.Add(-1)
		select {
		case <-p.quit:
		default:
			p.enqueue(pushJob{sp: sp, file: f, tries: tries + 1})
		}
	})
}

// keep adds a leaf to those kept, dropping the oldest beyond
// pushKeepBytes or pushKeepLeaves.
func (p *pusher) keep(sp *storePath, start int64, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range p.kept {
		if k.sp == sp && k.start == start {
			return
		}
	}
	p.kept = append(p.kept, keptLeaf{sp: sp, start: start, data: data})
	p.keptBytes += int64(len(data))
	for (p.keptBytes > pushKeepBytes || len(p.kept) > pushKeepLeaves) && len(p.kept) > 1 {
		p.keptBytes -= int64(len(p.kept[0].data))
		p.kept[0] = keptLeaf{}
		p.kept = p.kept[1:]
	}
}

// drop lets go of the leaves kept for sp.
func (p *pusher) drop(sp *storePath) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.kept[:0]
	for _, k := range p.kept {
		if k.sp == sp {
			p.keptBytes -= int64(len(k.data))
			continue
		}
		kept = append(kept, k)
	}
	clear(p.kept[len(kept):])
	p.kept = kept
}

// keeps reports whether the leaves kept hold all of sp's NAR bytes
// [start, end).
func (p *pusher) keeps(sp *storePath, start, end int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cover(sp, start, end, nil)
}

// assemble returns sp's NAR bytes [start, start+size) as pieces of the
// leaves kept, in order (one piece unless the bytes straddle leaves), or
// nil if the leaves do not hold all of them. Nothing is copied: the
// pieces are written to the device as they are (notifier.store), and
// leaves are never written to once fetched.
func (p *pusher) assemble(sp *storePath, start, size int64) [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var pieces [][]byte
	if !p.cover(sp, start, start+size, func(b []byte) { pieces = append(pieces, b) }) {
		return nil
	}
	return pieces
}

// cover reports whether the leaves kept hold sp's bytes [start, end) and,
// with piece, hands it their parts in order. Callers hold mu.
func (p *pusher) cover(sp *storePath, start, end int64, piece func([]byte)) bool {
	at := start
	for at < end {
		found := false
		for _, k := range p.kept {
			kend := k.start + int64(len(k.data))
			if k.sp != sp || k.start > at || kend <= at {
				continue
			}
			hi := min(kend, end)
			if piece != nil {
				piece(k.data[at-k.start : hi-k.start])
			}
			at, found = hi, true
			break
		}
		if !found {
			return false
		}
	}
	return true
}

// waitIdle waits until the page pushing queued so far is done (tests).
func (p *pusher) waitIdle(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.busy.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}
