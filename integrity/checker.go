package integrity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/ipnix/ipnix/narindex"
)

// State is where a store path stands.
type State int32

const (
	// Unverified: not every byte has been checked against NarHash yet.
	Unverified State = iota
	// Verified: the whole NAR matched NarHash (and the served listing).
	Verified
	// Quarantined: it did not; nothing of it may be served any more.
	Quarantined
)

func (s State) String() string {
	switch s {
	case Unverified:
		return "unverified"
	case Verified:
		return "verified"
	case Quarantined:
		return "quarantined"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// ErrQuarantined is returned for every check of a quarantined store path.
var ErrQuarantined = errors.New("store path is quarantined: its NAR does not match the signed NarHash or the listing served")

// ReadAtFunc reads the NAR at off, as io.ReaderAt with a context.
type ReadAtFunc func(ctx context.Context, p []byte, off int64) (int, error)

// Budget bounds the bytes of leaves that the checkers sharing it keep
// ahead of their hash frontiers (concurrent reads finish out of order,
// and a reader may start in the middle of a path). It is shared by every
// store path of a mount: kept leaves are held beside the block cache, so
// a bound per path alone would let many paths hold many times it. A leaf
// that does not fit is not kept; Verify then reads it again.
type Budget struct{ left atomic.Int64 }

// NewBudget returns a budget of bytes.
func NewBudget(bytes int64) *Budget {
	b := &Budget{}
	b.left.Store(bytes)
	return b
}

func (b *Budget) take(n int64) bool {
	if b.left.Add(-n) >= 0 {
		return true
	}
	b.left.Add(n)
	return false
}

func (b *Budget) give(n int64) { b.left.Add(n) }

// DefaultAheadBytes is the budget of a checker made without one.
const DefaultAheadBytes = 32 << 20

// Checker is the integrity state of one store path's NAR.
type Checker struct {
	want       narindex.Hash
	size       int64
	maxEntries int

	state atomic.Int32

	// What was served: the listing, and which bytes of its files.
	mu        sync.Mutex
	served    *narindex.Listing
	regular   int // regular files with at least one byte
	covered   map[*narindex.ListingNode]*coverage
	filesDone int
	allRead   bool

	verifyMu sync.Mutex // one Verify at a time
	parsed   *narindex.Listing

	// The NAR is hashed and parsed as it streams past readers: every leaf
	// delivered at the frontier is fed in, so a path read in NAR order is
	// checked without a second pass.
	hmu        sync.Mutex
	hasher     hash.Hash
	parser     *narindex.ListingBuilder // the one streaming listing builder
	hashedTo   int64
	hashing    bool // false once Verify owns the hasher
	ahead      map[int64][]byte
	aheadBytes int64
	budget     *Budget
	tee        func(off int64, p []byte) // see Tee
	untee      func()
}

// New returns the checker of a NAR of size bytes that must hash to want.
// maxEntries bounds the entries parsed from it (0: the narindex default);
// ahead is the budget for leaves kept ahead of the frontier, shared with
// other checkers (nil: a budget of DefaultAheadBytes of its own).
func New(want narindex.Hash, size int64, maxEntries int, ahead *Budget) *Checker {
	if ahead == nil {
		ahead = NewBudget(DefaultAheadBytes)
	}
	return &Checker{want: want, size: size, maxEntries: maxEntries, budget: ahead, hasher: sha256.New(), hashing: true}
}

// Serve records the listing the caller serves the path from, before any
// of it is served. Verify then demands that the NAR parses into exactly
// it, and NoteRead counts its regular files.
func (c *Checker) Serve(l *narindex.Listing) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.served = l
	c.regular = 0
	c.covered = make(map[*narindex.ListingNode]*coverage)
	var walk func(n *narindex.ListingNode)
	walk = func(n *narindex.ListingNode) {
		if n.Type == narindex.TypeRegular && n.Size > 0 {
			c.regular++
		}
		for _, e := range n.Entries {
			walk(e)
		}
	}
	walk(l.Root)
}

// State reports the current state.
func (c *Checker) State() State { return State(c.state.Load()) }

// Parsed is the listing parsed from the NAR itself; set once Verify has
// succeeded.
func (c *Checker) Parsed() *narindex.Listing {
	c.verifyMu.Lock()
	defer c.verifyMu.Unlock()
	return c.parsed
}

// OnLeaf feeds one leaf of the NAR that a reader fetched (start is its
// offset). data must not change afterwards. Safe for concurrent use.
func (c *Checker) OnLeaf(start int64, data []byte) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if !c.hashing || start < c.hashedTo || c.State() != Unverified {
		return
	}
	if start > c.hashedTo {
		if _, dup := c.ahead[start]; !dup && c.budget.take(int64(len(data))) {
			if c.ahead == nil {
				c.ahead = make(map[int64][]byte)
			}
			c.ahead[start] = data
			c.aheadBytes += int64(len(data))
		}
		return
	}
	c.feed(data)
	c.feedAhead()
}

// feedAhead feeds the kept leaves that now continue the frontier.
func (c *Checker) feedAhead() {
	for len(c.ahead) > 0 {
		d, ok := c.ahead[c.hashedTo]
		if !ok {
			return
		}
		delete(c.ahead, c.hashedTo)
		c.aheadBytes -= int64(len(d))
		c.budget.give(int64(len(d)))
		c.feed(d)
	}
}

// feed hashes and parses the next bytes; callers hold hmu or own the
// hasher.
func (c *Checker) feed(data []byte) {
	if len(data) == 0 {
		return
	}
	if c.hashedTo+int64(len(data)) > c.size {
		data = data[:c.size-c.hashedTo]
	}
	if c.parser == nil {
		c.parser = narindex.NewListingBuilderLimit(c.maxEntries)
	}
	c.hasher.Write(data)
	c.parser.Write(data) // an error is kept and returned by Finish
	if c.tee != nil {
		c.tee(c.hashedTo, data)
	}
	c.hashedTo += int64(len(data))
}

// Tee hands w, from now on, every byte the checker hashes, in NAR order
// (off is the NAR offset of p[0]), each before the hash is compared: once
// Verify has succeeded, w has seen every byte from the offset Tee returns
// to the end of the NAR (the bytes before it were hashed already). w is
// called with the checker's lock held, so it must not call into the
// checker; it may keep p, which is never modified. Release stops the tee
// and then calls released, if not nil. A later Tee replaces an earlier one.
func (c *Checker) Tee(w func(off int64, p []byte), released func()) int64 {
	c.verifyMu.Lock() // Verify owns the hasher without hmu
	defer c.verifyMu.Unlock()
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.tee, c.untee = w, released
	return c.hashedTo
}

// NoteRead records that bytes [off, end) of regular file n of the served
// listing were served. It reports true when every byte of every file has
// now been served and the NAR is still to be checked: the caller must
// then Verify before serving those last bytes.
func (c *Checker) NoteRead(n *narindex.ListingNode, off, end int64) bool {
	if c.State() != Unverified || end <= off {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.allRead {
		return true
	}
	if c.covered == nil {
		return false // Serve was not called: nothing is served lazily
	}
	cv := c.covered[n]
	if cv == nil {
		cv = &coverage{}
		c.covered[n] = cv
	}
	if cv.done {
		return false
	}
	if cv.add(off, end, n.Size) {
		c.filesDone++
		c.allRead = c.filesDone == c.regular
	}
	return c.allRead
}

// Served reports whether every byte of regular file n has been served
// (read, or pushed into the kernel's cache) while the path was served
// lazily.
func (c *Checker) Served(n *narindex.ListingNode) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cv := c.covered[n]
	return cv != nil && cv.done
}

// Verify checks the whole NAR: it reads (through read) whatever streaming
// did not bring, compares the hash with NarHash and the parsed listing
// with the served one. It returns nil once verified, ErrQuarantined when
// the NAR is not what was promised, and any other error when it could not
// be read, in which case the progress is kept for the next call. now is
// true for the one call that decided (verified or quarantined).
func (c *Checker) Verify(ctx context.Context, read ReadAtFunc) (now bool, err error) {
	c.verifyMu.Lock()
	defer c.verifyMu.Unlock()
	switch c.State() {
	case Verified:
		return false, nil
	case Quarantined:
		return false, ErrQuarantined
	}
	bad, err := c.check(ctx, read)
	if err != nil {
		return false, err
	}
	if bad != nil {
		if c.quarantine() {
			return true, fmt.Errorf("%w: %v", ErrQuarantined, bad)
		}
		return false, ErrQuarantined
	}
	c.state.Store(int32(Verified))
	c.mu.Lock()
	c.covered = nil
	c.mu.Unlock()
	return true, nil
}

// Quarantine marks the path bad for a reason found elsewhere (a local
// copy, a block that can never match). It reports whether this call did
// it; a verified path cannot be quarantined.
func (c *Checker) Quarantine() bool { return c.quarantine() }

func (c *Checker) quarantine() bool {
	if !c.state.CompareAndSwap(int32(Unverified), int32(Quarantined)) {
		return false
	}
	c.hmu.Lock()
	c.dropAhead()
	c.hmu.Unlock()
	return true
}

// check returns a non-nil bad when the NAR is not what was promised, and
// err when it could not be read.
func (c *Checker) check(ctx context.Context, read ReadAtFunc) (bad, err error) {
	c.hmu.Lock()
	c.hashing = false // from here on this goroutine owns the hasher
	c.hmu.Unlock()
	defer func() {
		if err != nil { // let streaming resume where this left off
			c.hmu.Lock()
			c.hashing = true
			c.hmu.Unlock()
		}
	}()
	for c.hashedTo < c.size {
		if c.feedAhead(); c.hashedTo >= c.size {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Read up to the next leaf kept ahead, not over it.
		want := min(1<<20, c.size-c.hashedTo)
		for off := range c.ahead {
			if off > c.hashedTo && off-c.hashedTo < want {
				want = off - c.hashedTo
			}
		}
		buf := make([]byte, want) // handed to the parser
		n, err := read(ctx, buf, c.hashedTo)
		c.feed(buf[:n])
		if err != nil && err != io.EOF {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("NAR ends at %d bytes, narinfo says %d", c.hashedTo, c.size)
		}
	}
	c.dropAhead()
	if got := c.hasher.Sum(nil); c.want.Algo != "sha256" || !bytes.Equal(got, c.want.Digest) {
		return fmt.Errorf("NAR hash is %s, narinfo says %s", narindex.SHA256(got), c.want), nil
	}
	if c.parser == nil { // an empty NAR cannot be valid
		c.parser = narindex.NewListingBuilderLimit(c.maxEntries)
	}
	l, perr := c.parser.Finish()
	if perr != nil {
		// Bytes that match the signed NarHash but do not parse: the
		// publisher signed garbage. Nothing of it may be served.
		return fmt.Errorf("NAR matching NarHash does not parse: %v", perr), nil
	}
	c.mu.Lock()
	served := c.served
	c.mu.Unlock()
	if served != nil {
		if p := ListingDiff(l.Root, served.Root); p != "" {
			return fmt.Errorf("NAR entry %q differs from the listing that was served", p), nil
		}
	}
	c.parsed = l
	return nil, nil
}

// dropAhead lets go of every kept leaf and returns its bytes to the
// budget; callers hold hmu or own the hasher.
func (c *Checker) dropAhead() {
	c.budget.give(c.aheadBytes)
	c.ahead, c.aheadBytes = nil, 0
}

// Release lets go of what the checker keeps for a path that is no longer
// served (its listing dropped): the leaves kept ahead of its frontier, and
// its tee (see Tee).
func (c *Checker) Release() {
	c.verifyMu.Lock() // Verify owns the hasher without hmu
	c.hmu.Lock()
	c.dropAhead()
	released := c.untee
	c.tee, c.untee = nil, nil
	c.hmu.Unlock()
	c.verifyMu.Unlock()
	if released != nil {
		released()
	}
}
