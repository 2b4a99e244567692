package publish

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ipnix/ipnix/narindex"
)

// StorePaths publishes paths from the local Nix store, with their closure
// unless closure is false.
//
// Each path streams into kubo, the hash and listing, and its NAR file at
// once, and Options.Streams paths stream side by side. Around that, things
// overlap: without the closure, the first paths stream while Nix is asked
// what it recorded about them (needed only to check them at the end); the
// walk of the next path (opening and reading ahead its files) starts once
// the one before it is done; and the end of a path (syncing its NAR file,
// writing listing and narinfo) runs while the next ones stream. Narinfos
// are written in order, each only after its NAR and listing; a failure
// stops the run, and no path after the failed one gets a narinfo.
func (p *Publisher) StorePaths(ctx context.Context, paths []string, closure bool) (Summary, error) {
	var sum Summary
	info := make(chan pathInfos, 1)
	var list []string
	if closure {
		infos, err := QueryPathInfo(ctx, paths, closure)
		if err != nil {
			return sum, err
		}
		for _, pi := range infos {
			list = append(list, pi.Path)
		}
		info <- pathInfos{infos: infos}
	} else {
		seen := map[string]bool{}
		for _, path := range paths {
			if _, err := narindex.ParseStorePath(path); err != nil {
				return sum, err
			}
			if !seen[path] {
				seen[path] = true
				list = append(list, path)
			}
		}
		go func() {
			infos, err := QueryPathInfo(ctx, list, false)
			info <- pathInfos{infos, err}
		}()
	}
	p.opts.Progress.Start(len(list))
	defer p.opts.Progress.Done()
	var todo []string
	for _, path := range list {
		sp, _ := narindex.ParseStorePath(path)
		if p.published(sp.Hash) {
			p.opts.Progress.Item(sp.Base(), 0)
			sum.Skipped++
			p.opts.Progress.Skipped()
			continue
		}
		todo = append(todo, path)
	}
	if len(todo) == 0 {
		// Still report a path Nix does not know.
		return sum, (<-info).err
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	walks := walkAll(wctx, todo, newReadAhead(defaultWindow()))
	fin := p.startFinisher(info)
	run := &streamRun{failed: make(chan struct{}), cancel: cancel}
	// Each path's result, collected in order: the finisher gets every
	// path streamed up to the first that failed, none after it.
	results := make([]chan *finishJob, len(todo))
	for i := range results {
		results[i] = make(chan *finishJob, 1)
	}
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		stopped := false
		for _, r := range results {
			j := <-r
			switch {
			case stopped && j != nil:
				j.discard()
			case j == nil:
				stopped = true
			default:
				fin.jobs <- j
			}
		}
	}()
	slots := make(chan struct{}, p.streams())
	var streaming sync.WaitGroup
	i := 0
	for ; i < len(todo); i++ {
		select {
		case slots <- struct{}{}:
		case <-run.failed:
		}
		if run.err() != nil {
			break
		}
		if err := fin.failed(); err != nil {
			run.fail(err)
			break
		}
		w, ok := <-walks.ch
		if !ok {
			break
		}
		sp, _ := narindex.ParseStorePath(todo[i])
		p.opts.Progress.Item(sp.Base(), fin.narSize(todo[i]))
		streaming.Add(1)
		go func(res chan<- *finishJob) {
			defer streaming.Done()
			j, err := p.stream(wctx, sp, w)
			w.stop()
			if err != nil {
				run.fail(err)
			}
			res <- j
			<-slots
		}(results[i])
	}
	for ; i < len(todo); i++ {
		results[i] <- nil
	}
	streaming.Wait()
	<-collected
	cancel()
	walks.wait()
	published, bytes, finErr := fin.close()
	sum.Published += published
	sum.Bytes += bytes
	err := run.err()
	if finErr != nil {
		// A path Nix does not know, or one that differs from what it
		// recorded, is the cause of what followed.
		err = finErr
	}
	return sum, err
}

// defaultStreams is how many store paths stream into kubo at once: a
// second hides the time each add waits on kubo and on its own files.
const defaultStreams = 2

func (p *Publisher) streams() int {
	if p.opts.Streams > 0 {
		return p.opts.Streams
	}
	return defaultStreams
}

// streamRun keeps the first failure of the paths streaming at once and
// stops the others.
type streamRun struct {
	once   sync.Once
	first  error
	failed chan struct{} // closed after first is set
	cancel func()
}

func (r *streamRun) fail(err error) {
	r.once.Do(func() {
		r.first = err
		close(r.failed)
		r.cancel()
	})
}

func (r *streamRun) err() error {
	select {
	case <-r.failed:
		return r.first
	default:
		return nil
	}
}

// pathInfos is the answer of QueryPathInfo.
type pathInfos struct {
	infos []PathInfo
	err   error
}

// walks hands out one started walk per path, in order; a walk starts once
// the one before it has visited its whole tree and been taken.
type walks struct {
	ch   chan *walker
	done chan struct{}
}

func walkAll(ctx context.Context, todo []string, ra *readAhead) *walks {
	ws := &walks{ch: make(chan *walker), done: make(chan struct{})}
	go func() {
		defer close(ws.done)
		defer close(ws.ch)
		for _, path := range todo {
			w := startWalk(path, ra)
			select {
			case ws.ch <- w:
			case <-ctx.Done():
				w.stop()
				return
			}
			select {
			case <-w.done:
			case <-ctx.Done():
				return // the taker stops w
			}
		}
	}()
	return ws
}

// wait returns once no walk is started any more; the caller has stopped
// every walk it took.
func (ws *walks) wait() {
	for w := range ws.ch {
		w.stop()
	}
	<-ws.done
}

// finishJob is a streamed path waiting for its files to be written.
type finishJob struct {
	sp  narindex.StorePath
	in  *ingested
	tmp *os.File
}

// discard drops a streamed path that will not be finished.
func (j *finishJob) discard() {
	j.tmp.Close()
	os.Remove(j.tmp.Name())
}

// stream sends the NAR of a walk into kubo, the hash and listing, and a
// temporary NAR file.
func (p *Publisher) stream(ctx context.Context, sp narindex.StorePath, w *walker) (*finishJob, error) {
	tmp, err := os.CreateTemp(filepath.Join(p.opts.To, "nar"), ".tmp-*.nar")
	if err != nil {
		return nil, err
	}
	in, err := ingestFrom(ctx, p.add, dumpChunks(w), newNarFile(tmp), p.opts.MaxEntries)
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("%s: %w", sp, err)
	}
	return &finishJob{sp: sp, in: in, tmp: tmp}, nil
}

// finisher ends streamed paths in order, one at a time, once it knows
// what Nix recorded about them.
type finisher struct {
	p         *Publisher
	info      chan pathInfos
	byPath    map[string]*PathInfo
	known     chan struct{} // closed once byPath is set
	jobs      chan *finishJob
	done      chan struct{}
	fail      chan struct{} // closed after err is set
	err       error
	published int
	bytes     uint64
}

func (p *Publisher) startFinisher(info chan pathInfos) *finisher {
	f := &finisher{p: p, info: info, known: make(chan struct{}), jobs: make(chan *finishJob, 1),
		done: make(chan struct{}), fail: make(chan struct{})}
	go func() {
		defer close(f.done)
		ans := <-info
		if ans.err != nil {
			f.failWith(ans.err)
		}
		f.byPath = map[string]*PathInfo{}
		for i := range ans.infos {
			f.byPath[ans.infos[i].Path] = &ans.infos[i]
		}
		close(f.known)
		for j := range f.jobs {
			if f.err == nil {
				pi := f.byPath[j.sp.String()]
				if err := p.finishStorePath(pi, j); err != nil {
					f.failWith(err)
				} else {
					f.published++
					f.bytes += pi.NarSize
					p.opts.Progress.Finished(pi.NarSize)
				}
			}
			j.discard() // the NAR file is gone already when renamed
		}
	}()
	return f
}

func (f *finisher) failWith(err error) {
	f.err = err
	close(f.fail)
}

// narSize is path's NarSize if Nix has answered, else 0.
func (f *finisher) narSize(path string) uint64 {
	select {
	case <-f.known:
		if pi := f.byPath[path]; pi != nil {
			return pi.NarSize
		}
	default:
	}
	return 0
}

// failed returns the finisher's error, once it has one.
func (f *finisher) failed() error {
	select {
	case <-f.fail:
		return f.err
	default:
		return nil
	}
}

// close waits for the paths handed over and returns what they came to.
func (f *finisher) close() (published int, bytes uint64, err error) {
	close(f.jobs)
	<-f.done
	return f.published, f.bytes, f.err
}

// finishStorePath checks a streamed path against the Nix database and
// writes its NAR file, listing and narinfo.
func (p *Publisher) finishStorePath(pi *PathInfo, j *finishJob) error {
	if pi == nil {
		return fmt.Errorf("%s: nix path-info did not describe it", j.sp)
	}
	ni, err := pi.narInfo()
	if err != nil {
		return err
	}
	in, tmp := j.in, j.tmp
	if err := in.check(pi.Path, ni.NarHash, ni.NarSize); err != nil {
		return fmt.Errorf("%w (the store path differs from what the Nix database recorded; try nix-store --verify --check-contents)", err)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	// Readable by a web server serving the directory, as the narinfos.
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	narFile := "nar/" + narindex.EncodeNix32(in.hash.Digest) + ".nar"
	if err := os.Rename(tmp.Name(), filepath.Join(p.opts.To, narFile)); err != nil {
		return err
	}
	ni.URL = narFile
	ni.Compression = "none"
	ni.FileHash = in.hash.String()
	ni.FileSize = in.size
	return p.finish(j.sp, ni, in)
}
