package fusefs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/narindex"
)

// Local copies written as the NAR is verified. The checker of a store path
// hashes every byte of its NAR once, in NAR order (integrity.Checker.Tee);
// the bytes of its passthrough-sized files are written, as they pass, into
// a temporary directory, each file checksummed for the manifest on the way
// (copysum.go).
// The moment the whole NAR has matched NarHash (and the listing served),
// the manifest is written and the directory renamed into place: the read
// that completed the verification returns with the copies usable, and
// nothing was read a second time. A mismatch or a quarantine, a listing
// dropped, a write that fails or a byte the stream did not see removes the
// temporary directory; in the last two cases the copies are written the
// old way, from blocks, once the path is verified (materialize).
//
// The bytes are written on a goroutine of the stream's (run), not on the
// checker's: the checker hashes under its lock, on the reader's goroutine,
// and writing there held up every reader of the path for each write. The
// goroutine runs while bytes come and goes when none have come for
// writerIdle (a path read in part keeps none). Before the copies are
// sealed, everything queued is written (flush).
//
// The copies are not synced: a directory found at start is hashed again
// against its manifest before any copy in it is used (copycheck.go), so a
// copy torn by a crash is found and dropped.

// prefillMax bounds the bytes a stream reads back from blocks when it is
// attached after the checker passed the start of the first file to copy
// (a listing built from the NAR's headers reads the NAR's beginning).
const prefillMax = 4 << 20

// streamQueue bounds the spans queued for a stream's writer, held beyond
// the caches for each path being copied: 16 leaves, 4 MiB of 256 KiB
// leaves (up to 16 MiB of the final check's 1 MiB reads, 32 MiB of the
// largest blocks). The checker waits when it is full, so a slow disk slows
// the readers rather than grows the mount. A stream that stops lets go of
// what is queued (stopWriter).
const streamQueue = 16

// writerIdle is how long a stream's writer waits for bytes before it goes.
const writerIdle = 100 * time.Millisecond

// copyStream writes the copies of one store path from its checker's
// stream.
type copyStream struct {
	fl    *files
	sp    *storePath
	nh    string
	todo  []*narindex.ListingNode // by NarOffset
	total int64

	mu    sync.Mutex
	state streamState
	err   error    // the first failure; the stream then writes nothing more
	tmp   string   // the temporary directory, made on the first byte
	next  int      // index in todo of the file being written
	have  int64    // bytes of todo[next] written
	f     *os.File // the copy of todo[next], once its first byte came
	h     hash.Hash
	sums  []string // manifest checksums of todo[:next]

	queue   chan queuedSpan // bytes for the writer (run), in NAR order
	writing atomic.Bool     // a writer runs, or is being started
	quit    chan struct{}   // closed when nothing more is to be written
	stop    sync.Once
}

// queuedSpan is NAR bytes at off for the writer, or, when flushed is
// set, a marker it closes once everything before it is written.
type queuedSpan struct {
	off     int64
	p       []byte
	flushed chan struct{}
}

type streamState int

const (
	streaming streamState = iota
	sealed                // complete and its manifest written; being renamed into place
	aborted               // its directory removed
)

// stream attaches a copy stream to the checker of sp, which serves lazily
// and is not verified yet, when sp has files worth copying that fit the
// quota and no copies. ctx bounds reading back what the checker hashed
// before (at most prefillMax bytes).
func (fl *files) stream(ctx context.Context, sp *storePath) {
	todo, total := copyable(sp)
	if len(todo) == 0 || total > fl.quota {
		return
	}
	slices.SortFunc(todo, func(a, b *narindex.ListingNode) int { return cmp.Compare(a.NarOffset, b.NarOffset) })
	s := &copyStream{fl: fl, sp: sp, nh: sp.copiesKey, todo: todo, total: total, h: newCopySum(),
		queue: make(chan queuedSpan, streamQueue), quit: make(chan struct{})}
	fl.mu.Lock()
	if fl.lru.Contains(s.nh) || fl.busy[s.nh] || fl.ctx.Err() != nil {
		fl.mu.Unlock()
		return
	}
	// A stream already here belongs to a path that is gone (its listing
	// dropped, or it lost a race to be registered) or, rarely, to another
	// path with the same NAR, which then copies from blocks.
	old := fl.streams[s.nh]
	fl.streams[s.nh] = s
	fl.mu.Unlock()
	if old != nil {
		old.abort()
	}
	from := sp.chk.Tee(s.write, s.release)
	if start := todo[0].NarOffset; from > start {
		if err := s.prefill(ctx, start, from); err != nil {
			fl.log.Debug("local copies of this path will be copied from blocks", "path", sp.base, "err", err)
			s.release()
		}
	}
}

// prefill reads bytes [start, from) of the NAR, which the checker hashed
// before the stream was attached, and writes them. Bytes that the checker
// streams meanwhile leave a gap before them, which fails the stream.
func (s *copyStream) prefill(ctx context.Context, start, from int64) error {
	if from-start > prefillMax {
		return fmt.Errorf("the checker is %d bytes past the first file to copy", from-start)
	}
	buf := make([]byte, from-start)
	n, err := s.sp.nar.ReadAt(ctx, buf, start)
	if n < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("reading back NAR bytes %d-%d: %w", start, from, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != streaming {
		return s.failure()
	}
	s.writeLocked(start, buf)
	return s.err
}

// failure says why a stream that is not streaming cannot finish.
func (s *copyStream) failure() error {
	if s.err != nil {
		return s.err
	}
	return errors.New("local copies dropped while being written")
}

// write is the checker's tee: bytes of the NAR at off, in order, which
// it never modifies. They are queued for the writer; once the stream is
// over (stopWriter) they are dropped.
func (s *copyStream) write(off int64, p []byte) { s.enqueue(queuedSpan{off: off, p: p}) }

// enqueue queues q for the writer and starts one if none runs; false
// once the stream is over. It waits while the queue is full: a writer is
// then running, started by whoever queued last.
func (s *copyStream) enqueue(q queuedSpan) bool {
	select {
	case <-s.quit:
		return false
	default:
	}
	select {
	case s.queue <- q:
	case <-s.quit:
		return false
	}
	select {
	case <-s.quit: // stopped meanwhile: q is not to stay referenced
		s.drain()
		return false
	default:
	}
	if s.writing.CompareAndSwap(false, true) {
		go s.run()
	}
	return true
}

// run is the stream's writer: it writes what was queued until none has
// come for writerIdle, or the stream is over.
func (s *copyStream) run() {
	idle := time.NewTimer(writerIdle)
	defer idle.Stop()
	for {
		select {
		case q := <-s.queue:
			s.handle(q)
			idle.Reset(writerIdle)
		case <-idle.C:
			s.writing.Store(false)
			// Bytes queued after the timer fired but before the flag was
			// cleared started no writer: take them now.
			if len(s.queue) == 0 || !s.writing.CompareAndSwap(false, true) {
				return
			}
			idle.Reset(writerIdle)
		case <-s.quit:
			return // s.writing stays set: nothing more is written
		}
	}
}

// handle writes one queued span, or answers a flush.
func (s *copyStream) handle(q queuedSpan) {
	if q.flushed != nil {
		close(q.flushed)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == streaming {
		s.writeLocked(q.off, q.p)
	}
}

// flush waits until everything queued before it is written; false if the
// stream was over first.
func (s *copyStream) flush() bool {
	done := make(chan struct{})
	if !s.enqueue(queuedSpan{flushed: done}) {
		return false
	}
	select {
	case <-done:
	case <-s.quit:
	}
	select {
	case <-s.quit:
		return false
	default:
		return true
	}
}

// stopWriter ends the stream's writing: what is still queued is not
// written but dropped, so that a stream kept by its checker (a quarantined
// path keeps its checker, and the checker its tee) holds no bytes; nothing
// more is queued.
func (s *copyStream) stopWriter() {
	s.stop.Do(func() { close(s.quit) })
	s.drain()
}

// drain drops what is queued; once quit is closed nothing comes after.
func (s *copyStream) drain() {
	for {
		select {
		case <-s.queue:
		default:
			return
		}
	}
}

func (s *copyStream) writeLocked(off int64, p []byte) {
	for len(p) > 0 && s.next < len(s.todo) && s.err == nil {
		ln := s.todo[s.next]
		at := ln.NarOffset + s.have // the next byte wanted
		end := off + int64(len(p))
		if end <= at {
			return // headers and small files before it
		}
		if off > at {
			s.err = fmt.Errorf("the stream skipped NAR bytes %d-%d", at, off)
			return
		}
		p, off = p[at-off:], at
		n := min(int64(len(p)), ln.Size-s.have)
		if err := s.put(ln, p[:n]); err != nil {
			s.err = err
			return
		}
		p, off = p[n:], off+n
	}
}

// put appends b to the copy of ln, the file being written.
func (s *copyStream) put(ln *narindex.ListingNode, b []byte) error {
	if s.tmp == "" {
		tmp, err := os.MkdirTemp(s.fl.dir, ".tmp-")
		if err != nil {
			return err
		}
		s.tmp = tmp
	}
	if s.f == nil {
		f, err := os.OpenFile(filepath.Join(s.tmp, strconv.FormatInt(ln.NarOffset, 10)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
		if err != nil {
			return err
		}
		s.f = f
		s.h.Reset()
	}
	if _, err := s.f.Write(b); err != nil {
		return err
	}
	s.h.Write(b)
	s.have += int64(len(b))
	if s.have < ln.Size {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	s.sums = append(s.sums, crc32cCopySum.format(s.h))
	s.next++
	s.have = 0
	return err
}

// finish makes the copies usable once sp's NAR has matched NarHash: it
// writes the manifest and renames the directory into place. On error the
// stream is gone and nothing of it is left on disk.
func (s *copyStream) finish() error {
	fl := s.fl
	s.flush()
	s.stopWriter()
	s.mu.Lock()
	err := s.seal()
	s.mu.Unlock()
	fl.mu.Lock()
	if fl.streams[s.nh] != s {
		fl.mu.Unlock()
		return errors.New("local copies dropped while being written")
	}
	delete(fl.streams, s.nh)
	switch {
	case err != nil:
	case fl.ctx.Err() != nil:
		err = context.Canceled
	case fl.lru.Contains(s.nh):
		err = errors.New("local copies written meanwhile from blocks")
	default:
		size := s.total + int64(len(s.manifest()))
		fl.evictLocked(size)
		if err = os.Rename(s.tmp, filepath.Join(fl.dir, s.nh)); err == nil {
			fl.lru.Add(s.nh, size)
			fl.used += size
			delete(fl.state, s.nh)
		}
	}
	fl.mu.Unlock()
	if err != nil {
		s.abort()
	}
	return err
}

// seal writes the manifest of a complete stream; s.mu held.
func (s *copyStream) seal() error {
	switch {
	case s.state != streaming:
		return s.failure()
	case s.err != nil:
		return s.err
	case s.next < len(s.todo):
		return fmt.Errorf("the stream ended %d files short", len(s.todo)-s.next)
	}
	f, err := os.OpenFile(filepath.Join(s.tmp, "manifest"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err == nil {
		_, err = f.WriteString(s.manifest())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	s.state = sealed
	return nil
}

func (s *copyStream) manifest() string {
	var b strings.Builder
	for i, ln := range s.todo {
		fmt.Fprintf(&b, "%d %d %s\n", ln.NarOffset, ln.Size, s.sums[i])
	}
	return b.String()
}

// release drops the stream: its checker lets go of it (the path's listing
// was dropped) or it could not start.
func (s *copyStream) release() {
	s.fl.mu.Lock()
	mine := s.fl.streams[s.nh] == s
	if mine {
		delete(s.fl.streams, s.nh)
	}
	s.fl.mu.Unlock()
	if mine {
		s.abort()
	}
}

// abort removes what the stream wrote; it writes nothing afterwards. Only
// whoever took the stream out of fl.streams calls it.
func (s *copyStream) abort() {
	s.stopWriter()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == aborted {
		return
	}
	s.state = aborted
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	if s.tmp != "" {
		if err := os.RemoveAll(s.tmp); err != nil {
			s.fl.log.Warn("removing unfinished local copies", "dir", s.tmp, "err", err)
		}
	}
}

// takeStreamLocked takes out of fl.streams the stream of the NAR whose hash is
// nh, if any; the caller aborts it.
func (fl *files) takeStreamLocked(nh string) *copyStream {
	s := fl.streams[nh]
	delete(fl.streams, nh)
	return s
}

// stopStreams aborts every stream (the filesystem closes).
func (fl *files) stopStreams() {
	fl.mu.Lock()
	all := fl.streams
	fl.streams = map[string]*copyStream{}
	fl.mu.Unlock()
	for _, s := range all {
		s.abort()
	}
}

// SetCopiedBlocks sets drop, called (in the background) with every block
// whose bytes local copies now hold: the leaves that lie wholly inside a
// copied file, once the kernel takes copies for passthrough (otherwise
// reads of those files still need the blocks). A disk block store need
// not keep them; the memory cache may.
func (f *FS) SetCopiedBlocks(drop func(cid.Cid)) {
	if f.files != nil {
		f.files.copiedBlocks.Store(&drop)
	}
}

// uncache hands the leaves of the copied files of sp to copiedBlocks.
func (fl *files) uncache(sp *storePath, todo []*narindex.ListingNode) {
	drop := fl.copiedBlocks.Load()
	if drop == nil || *drop == nil || !sp.fs.opens.Load() {
		return
	}
	fl.wg.Go(func() {
		for _, ln := range todo {
			end := ln.NarOffset + ln.Size
			leaves, err := sp.nar.Leaves(fl.ctx, ln.NarOffset, end)
			if err != nil {
				fl.log.Debug("not dropping the blocks of local copies", "path", sp.base, "err", err)
				return
			}
			for _, l := range leaves {
				if l.Cid.Defined() && l.Start >= ln.NarOffset && l.Start+l.Size <= end {
					(*drop)(l.Cid)
				}
			}
		}
	})
}
