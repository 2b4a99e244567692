package fusefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/narindex"
)

// narGapSlack is how far past the end of one read the next may start and
// still continue a walk in NAR order: the headers of the next entries (and
// of empty files, symlinks and directories between) sit in that gap.
const narGapSlack = 64 << 10

// Verification states of a store path.
const (
	unverified int32 = iota
	verified
	quarantined
)

// storePath is one accepted store path: its narinfo, its NAR as a UnixFS
// file, the listing its tree is served from, and what has been read of it.
type storePath struct {
	fs       *FS
	index    uint32
	base     string
	info     *narindex.NarInfo
	cid      cid.Cid
	nar      *fetch.File
	listing  *narindex.Listing
	ordinals map[*narindex.ListingNode]uint32
	regular  int // regular files with at least one byte

	// narRA spots readers that walk the store path in NAR order (tar, cp
	// -r, nix hash path, find -exec cat) and reads ahead across files.
	narRA *fetch.Readahead

	// copies is set when the files directory holds local copies of this
	// NAR's larger files, written after an earlier verification, and the
	// listing is the one saved with them.
	copies bool
	// copiesKey names the local copies' directory: the NarHash in nix32.
	copiesKey string

	state atomic.Int32

	mu        sync.Mutex
	covered   map[*narindex.ListingNode]*coverage
	filesDone int
	allRead   bool

	verifyMu sync.Mutex

	// The NAR is hashed as it streams past readers: every leaf that ReadAt
	// delivers at the hash frontier is fed in, so a store path read in NAR
	// order is checked without a second pass.
	hmu      sync.Mutex
	hasher   hash.Hash
	parser   *narStream // started with the first byte hashed
	hashedTo int64
	hashing  bool
	// Leaves delivered past the frontier, by offset, and their bytes.
	ahead      map[int64][]byte
	aheadBytes int64
}

// onLeaf is the NAR file's leaf hook.
func (sp *storePath) onLeaf(start int64, data []byte) {
	sp.hmu.Lock()
	defer sp.hmu.Unlock()
	if !sp.hashing || start < sp.hashedTo {
		return
	}
	if start > sp.hashedTo {
		// Ahead of the frontier (concurrent reads finish out of order):
		// kept, within bounds, until the leaves before it arrive.
		if _, dup := sp.ahead[start]; !dup && sp.aheadBytes+int64(len(data)) <= maxAheadBytes {
			if sp.ahead == nil {
				sp.ahead = make(map[int64][]byte)
			}
			sp.ahead[start] = data
			sp.aheadBytes += int64(len(data))
		}
		return
	}
	sp.feed(data)
	sp.feedAhead()
}

// maxAheadBytes bounds the leaves kept for the hasher ahead of its frontier.
const maxAheadBytes = 32 << 20

// feedAhead feeds the kept leaves that now continue the frontier.
func (sp *storePath) feedAhead() {
	for len(sp.ahead) > 0 {
		d, ok := sp.ahead[sp.hashedTo]
		if !ok {
			return
		}
		delete(sp.ahead, sp.hashedTo)
		sp.aheadBytes -= int64(len(d))
		sp.feed(d)
	}
}

// feed hashes and parses the next bytes of the NAR; data must not change
// afterwards. Callers hold hmu or own the hasher.
func (sp *storePath) feed(data []byte) {
	if sp.parser == nil {
		sp.parser = newNarStream()
	}
	sp.hasher.Write(data)
	sp.parser.write(data)
	sp.hashedTo += int64(len(data))
}

// storePath returns the accepted store path named base, resolving it on
// first use. Concurrent lookups of one name share one resolution; failures
// are not remembered here (the resolver caches negative answers).
func (f *FS) storePath(ctx context.Context, base string) (*storePath, error) {
	f.mu.Lock()
	sp := f.paths[base]
	f.mu.Unlock()
	if sp != nil {
		return sp, nil
	}
	v, err, _ := f.lookups.Do(base, func() (any, error) {
		res, err := f.cfg.Resolver.Resolve(ctx, base)
		if err != nil {
			return nil, err
		}
		sp, err := f.load(ctx, base, res)
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if old := f.paths[base]; old != nil {
			return old, nil
		}
		f.next++
		sp.index = f.next
		f.paths[base] = sp
		// The kernel keeps the root's listing (directories are cached
		// without asking, see noOpendir). A new root mtime, fetched again
		// once the notification has dropped the root's attributes, makes
		// it list the newcomer.
		f.rootGen.Add(1)
		go f.root.NotifyContent(0, 0)
		return sp, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*storePath), nil
}

// load opens the NAR behind an accepted narinfo and its listing.
func (f *FS) load(ctx context.Context, base string, res *narindex.Resolved) (*storePath, error) {
	info := res.Info
	c, err := cid.Decode(info.IpfsCid)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: IpfsCid %q: %v", narindex.ErrRejected, base, info.IpfsCid, err)
	}
	nar, err := fetch.OpenFile(ctx, f.cfg.Blocks, c)
	if err != nil {
		if errors.Is(err, fetch.ErrMalformedDAG) {
			return nil, fmt.Errorf("%w: %s: CID %s: %v", narindex.ErrRejected, base, c, err)
		}
		return nil, fmt.Errorf("%s: opening NAR %s: %w", base, c, err)
	}
	if nar.Size() != int64(info.NarSize) {
		return nil, fmt.Errorf("%w: %s: CID %s holds %d bytes but NarSize is %d", narindex.ErrRejected, base, c, nar.Size(), info.NarSize)
	}
	sp := &storePath{fs: f, base: base, info: info, cid: c, nar: nar, covered: make(map[*narindex.ListingNode]*coverage),
		hasher: sha256.New(), hashing: true, copiesKey: narindex.EncodeNix32(info.NarHash.Digest)}
	nar.SetLeafHook(sp.onLeaf)
	if f.prefetch != nil {
		sp.narRA = fetch.NewStreamReadahead(f.cfg.Readahead, narGapSlack)
	}
	if f.files != nil {
		// Local copies of a verified NAR come with its own listing.
		if l, ok := f.files.listing(sp.copiesKey); ok {
			if err := l.Validate(int64(info.NarSize)); err == nil {
				sp.listing, sp.copies = l, true
				f.Stats.LocalListings.Add(1)
			}
		}
	}
	if sp.listing == nil && res.ListingData != nil {
		l, err := narindex.ParseListing(res.ListingData)
		if err == nil {
			err = l.Validate(int64(info.NarSize))
		}
		if err != nil {
			f.log.Warn("ignoring listing from substituter; reading NAR headers instead", "path", base, "from", res.From, "err", err)
		} else {
			sp.listing = l
		}
	}
	if sp.listing == nil {
		l, err := narindex.ListingFromNar(newSeekBuffer(ctxReaderAt{ctx, nar}, nar.Size()))
		if err != nil {
			if errors.Is(err, narindex.ErrMalformedNAR) {
				return nil, fmt.Errorf("%w: %s: NAR %s: %v", narindex.ErrRejected, base, c, err)
			}
			return nil, fmt.Errorf("%s: reading NAR headers of %s: %w", base, c, err)
		}
		sp.listing = l
	}
	if err := sp.number(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", narindex.ErrRejected, base, err)
	}
	if int64(info.NarSize) <= f.cfg.EagerVerifyBytes {
		// A quarantined path is kept, so that it stays quarantined.
		if err := sp.verify(ctx, nil); err != nil && sp.state.Load() != quarantined {
			return nil, err
		}
	}
	return sp, nil
}

// number gives every listing entry its ordinal in NAR order and counts the
// regular files that must be read before the NAR can be checked.
func (sp *storePath) number() error {
	sp.ordinals = make(map[*narindex.ListingNode]uint32)
	var walk func(n *narindex.ListingNode) error
	walk = func(n *narindex.ListingNode) error {
		if len(sp.ordinals) >= 1<<32-1 {
			return errors.New("too many entries for 32-bit ordinals")
		}
		sp.ordinals[n] = uint32(len(sp.ordinals))
		if n.Type == narindex.TypeRegular && n.Size > 0 {
			sp.regular++
		}
		for _, name := range sortedNames(n) {
			if err := walk(n.Entries[name]); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(sp.listing.Root)
}

func sortedNames(n *narindex.ListingNode) []string {
	names := make([]string, 0, len(n.Entries))
	for name := range n.Entries {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// noteRead records that bytes [off, end) of regular file n were served. It
// reports true when every byte of every file has now been served (or was
// before, with the NAR check still to do).
func (sp *storePath) noteRead(n *narindex.ListingNode, off, end int64) bool {
	if sp.state.Load() != unverified || end <= off {
		return false
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.allRead {
		return true
	}
	cv := sp.covered[n]
	if cv == nil {
		cv = &coverage{}
		sp.covered[n] = cv
	}
	if cv.done {
		return false
	}
	if cv.add(off, end, n.Size) {
		sp.filesDone++
		sp.allRead = sp.filesDone == sp.regular
	}
	return sp.allRead
}

// verify streams the whole NAR, hashes it and parses it against the
// listing. A mismatch quarantines the store path and is returned as an
// error; a failure to fetch is returned and may be retried later.
// reading is the inode whose read brought the last bytes, or nil.
func (sp *storePath) verify(ctx context.Context, reading *fs.Inode) error {
	quarantined, err := sp.verifyLocked(ctx)
	if quarantined {
		// Outside verifyMu: readers of other files waiting for it hold
		// their pages locked, and the flush waits for those locks.
		sp.fs.flushKernelCache(sp.base, reading)
	}
	return err
}

// verifyLocked does verify's work under verifyMu and reports whether this
// call quarantined the store path.
func (sp *storePath) verifyLocked(ctx context.Context) (bool, error) {
	sp.verifyMu.Lock()
	defer sp.verifyMu.Unlock()
	switch sp.state.Load() {
	case verified:
		return false, nil
	case quarantined:
		return false, errQuarantined
	}
	bad, err := sp.check(ctx)
	if err != nil {
		return false, err
	}
	if bad != nil {
		sp.quarantine(bad)
		return true, errQuarantined
	}
	sp.state.Store(verified)
	sp.fs.Stats.Verified.Add(1)
	if sp.fs.files != nil && !sp.copies {
		sp.fs.files.materialize(sp)
	}
	sp.fs.log.Debug("NAR verified", "path", sp.base, "cid", sp.cid, "bytes", sp.nar.Size())
	// Coverage is no longer needed.
	sp.mu.Lock()
	sp.covered = nil
	sp.mu.Unlock()
	return false, nil
}

var errQuarantined = errors.New("store path is quarantined: its NAR does not match the signed NarHash")

// check returns a non-nil bad when the NAR is not what the narinfo and the
// listing promised, and err when it could not be read. Hashing and parsing
// pick up where streaming left them; the listing parsed from the NAR must
// equal the one served.
func (sp *storePath) check(ctx context.Context) (bad, err error) {
	size := sp.nar.Size()
	sp.hmu.Lock()
	sp.hashing = false // from here on this goroutine owns the hasher
	sp.hmu.Unlock()
	for sp.hashedTo < size {
		if sp.feedAhead(); sp.hashedTo >= size {
			break
		}
		buf := make([]byte, min(1<<20, size-sp.hashedTo)) // handed to the parser
		n, err := sp.nar.ReadAt(ctx, buf, sp.hashedTo)
		sp.feed(buf[:n])
		if err != nil && err != io.EOF {
			return nil, err // the progress is kept for the next try
		}
	}
	sp.ahead, sp.aheadBytes = nil, 0
	want := sp.info.NarHash
	if got := sp.hasher.Sum(nil); want.Algo != "sha256" || !bytes.Equal(got, want.Digest) {
		return fmt.Errorf("NAR hash is %s, narinfo says %s", narindex.SHA256(got), want), nil
	}
	if sp.parser == nil { // an empty NAR cannot be valid
		sp.parser = newNarStream()
	}
	l, err := sp.parser.finish()
	if err != nil {
		return err, nil // the bytes that match NarHash do not parse
	}
	if p := listingDiff(l.Root, sp.listing.Root, ""); p != "" {
		return fmt.Errorf("NAR entry %q differs from the listing that was served", p), nil
	}
	return nil, nil
}

// listingDiff returns the path of the first entry where a and b differ, or
// "" when they are equal.
func listingDiff(a, b *narindex.ListingNode, path string) string {
	if a.Type != b.Type || a.Executable != b.Executable || a.Target != b.Target ||
		a.Size != b.Size || a.NarOffset != b.NarOffset || len(a.Entries) != len(b.Entries) {
		return "/" + path
	}
	for name, ca := range a.Entries {
		cb, ok := b.Entries[name]
		if !ok {
			return "/" + path + "/" + name
		}
		if p := listingDiff(ca, cb, path+"/"+name); p != "" {
			return p
		}
	}
	return ""
}

// quarantine makes every later open and read of the store path fail and
// drops what caches hold of it.
func (sp *storePath) quarantine(reason error) {
	if !sp.state.CompareAndSwap(unverified, quarantined) {
		return
	}
	sp.fs.Stats.Quarantined.Add(1)
	sp.fs.log.Error("store path quarantined", "path", sp.base, "cid", sp.cid, "reason", reason)
	if sp.fs.cfg.Evict != nil {
		for _, c := range sp.nar.KnownBlocks() {
			sp.fs.cfg.Evict(c)
		}
	}
	if sp.fs.files != nil {
		sp.fs.files.drop(sp.copiesKey)
	}
}

// ctxReaderAt gives a fetch.File the io.ReaderAt shape with a fixed context.
type ctxReaderAt struct {
	ctx context.Context
	f   *fetch.File
}

func (r ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return r.f.ReadAt(r.ctx, p, off)
}

// coverage is the set of byte ranges of one file served so far, as sorted,
// disjoint, non-adjacent spans.
type coverage struct {
	spans []span
	done  bool
}

type span struct{ lo, hi int64 }

// add records [lo, hi) and reports whether [0, size) is now covered.
func (c *coverage) add(lo, hi, size int64) bool {
	i := sort.Search(len(c.spans), func(i int) bool { return c.spans[i].hi >= lo })
	j := i
	for j < len(c.spans) && c.spans[j].lo <= hi {
		lo, hi = min(lo, c.spans[j].lo), max(hi, c.spans[j].hi)
		j++
	}
	c.spans = append(c.spans[:i], append([]span{{lo, hi}}, c.spans[j:]...)...)
	if len(c.spans) == 1 && c.spans[0].lo <= 0 && c.spans[0].hi >= size {
		c.done = true
		c.spans = nil
	}
	return c.done
}

// seekBuffer reads an io.ReaderAt as an io.ReadSeeker through a buffer, so
// that a NAR parser's many small token reads become few block reads while
// its seeks over file contents still skip them.
type seekBuffer struct {
	ra     io.ReaderAt
	size   int64
	pos    int64
	buf    []byte
	bufOff int64
}

func newSeekBuffer(ra io.ReaderAt, size int64) *seekBuffer {
	return &seekBuffer{ra: ra, size: size, buf: make([]byte, 0, 64<<10)}
}

func (s *seekBuffer) Read(p []byte) (int, error) {
	if s.pos >= s.size {
		return 0, io.EOF
	}
	if s.pos < s.bufOff || s.pos >= s.bufOff+int64(len(s.buf)) {
		n := min(int64(cap(s.buf)), s.size-s.pos)
		s.buf = s.buf[:n]
		m, err := s.ra.ReadAt(s.buf, s.pos)
		s.buf, s.bufOff = s.buf[:m], s.pos
		if m == 0 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	n := copy(p, s.buf[s.pos-s.bufOff:])
	s.pos += int64(n)
	return n, nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.size
	default:
		return 0, errors.New("seekBuffer: bad whence")
	}
	if off < 0 {
		return 0, errors.New("seekBuffer: negative position")
	}
	s.pos = off
	return off, nil
}
