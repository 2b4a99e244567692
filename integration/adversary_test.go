package integration

// Adversarial tests beyond attack_test.go and faults_test.go: what the
// mount serves after a quarantine through what a process already holds
// (open descriptors, memory mappings), concurrent readers racing the
// check, and unsigned inputs the existing attacks do not touch.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
	"github.com/ipnix/ipnix/narindex"
)

// quarantineEnv mounts the app path under a narinfo whose IpfsCidSig (by
// the trusted key: a publisher bug) names the CID of evilApp's NAR with
// its listing: served lazily, quarantined once every file has been read.
func quarantineEnv(t *testing.T, r *attackReport, extra ...string) (e *attackEnv, ev *evilApp, m *mount, root string) {
	t.Helper()
	e = newAttackEnv(t, "app")
	app := e.path["app"]
	ev = e.evilApp(t)
	ni := e.narInfo(t, app)
	ni.IpfsCid = e.addDefault(t, ev.nar)
	ni = withLsHash(t, ni, ev.listing)
	e.resign(t, ni)
	dir := t.TempDir()
	e.writeEntry(t, dir, app, ni.Marshal(), ev.listing)
	m = r.mountSub(t, e, "file://"+dir, extra...)
	return e, ev, m, filepath.Join(m.dir, filepath.Base(app))
}

// touch reads b[i] with faults turned into panics: it reports the byte, or
// ok false when the access faulted (SIGBUS: the kernel could not fill the
// page).
func touch(b []byte, i int) (v byte, ok bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return b[i], true
}

// The file whose read completes the path is quarantined while the kernel
// holds its earlier pages. forget skips that inode's pages (they are
// locked by the read in flight), so what it read before stays in the page
// cache: a mapping made before the quarantine, or made afterwards through
// a descriptor opened before, must not show those pages any more.
func TestAdversaryQuarantineTriggerFilePages(t *testing.T) {
	r := startReport(t, "Adversary/QuarantineTriggerFilePages")
	defer r.done(t)
	e, _, m, root := quarantineEnv(t, r)
	app := e.path["app"]
	truthBig, err := os.ReadFile(filepath.Join(app, "share/big.bin"))
	must(t, err)
	size := len(truthBig)

	// Every other file first: share/big.bin's tail is then the last
	// unread byte range of the path.
	for _, f := range []string{"bin/run", "bin/hello", "share/data.txt", "share/payload.sh"} {
		if _, err := os.ReadFile(filepath.Join(root, f)); err != nil {
			r.fatalf(t, "before: read %s: %v", f, err)
		}
	}
	f, err := os.Open(filepath.Join(root, "share/big.bin"))
	if err != nil {
		r.fatalf(t, "open share/big.bin: %v", err)
	}
	defer f.Close()
	mapped, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		r.fatalf(t, "mmap share/big.bin: %v", err)
	}
	defer syscall.Munmap(mapped)
	// One page per fault, no read-ahead: the tail stays unread.
	must(t, syscall.Madvise(mapped, syscall.MADV_RANDOM))
	const page = 4096
	tail := (size/page - 4) * page // the last 4-5 pages stay unread
	withTimeout(t, 2*time.Minute, "faulting in the head of share/big.bin", func(context.Context) {
		for i := 0; i < tail; i += page {
			if _, ok := touch(mapped, i); !ok {
				r.errorf(t, "before: page at %d faulted", i)
				return
			}
		}
	})
	before, _ := touch(mapped, 1000)
	t.Logf("before the quarantine: byte 1000 of share/big.bin is %#02x (truth %#02x)", before, truthBig[1000])

	// The tail: the last bytes of the path, the whole NAR is checked and
	// fails.
	buf := make([]byte, size-tail)
	var tailErr error
	withTimeout(t, 2*time.Minute, "reading the tail", func(context.Context) {
		_, tailErr = f.ReadAt(buf, int64(tail))
	})
	if !errors.Is(tailErr, syscall.EIO) {
		r.fatalf(t, "reading the last bytes of the path: %v, want EIO (quarantine)", tailErr)
	}
	if q := m.metric(t, "ipnix_store_paths_quarantined_total"); q != 1 {
		r.fatalf(t, "quarantined = %d, want 1", q)
	}

	// After: nothing of the file through anything held before.
	after := exposure{}
	var served, wrong int
	withTimeout(t, 2*time.Minute, "touching the old mapping", func(context.Context) {
		for i := 0; i < tail; i += page {
			if v, ok := touch(mapped, i+1000%page); ok {
				served++
				if v != truthBig[i+1000%page] {
					wrong++
				}
			}
		}
	})
	if served > 0 {
		after.add("bytes", "share/big.bin (mapping made before)", int64(served*page))
		v, _ := touch(mapped, 1000)
		r.errorf(t, "after quarantine, %d pages of share/big.bin are still readable through a mapping made before (%d of the probed bytes differ from the store path; byte 1000 = %#02x, truth %#02x)",
			served, wrong, v, truthBig[1000])
	}
	one := make([]byte, page)
	if n, err := f.ReadAt(one, 0); err == nil || !errors.Is(err, syscall.EIO) {
		after.add("bytes", "share/big.bin (pread)", int64(n))
		r.errorf(t, "after quarantine, pread on a descriptor opened before: %d bytes, %v; want EIO", n, err)
	}
	// sendfile (splice) reads the page cache without the attribute check
	// that read(2) makes.
	sink, err := os.CreateTemp(t.TempDir(), "sink")
	must(t, err)
	defer sink.Close()
	off := int64(0)
	if n, err := syscall.Sendfile(int(sink.Fd()), int(f.Fd()), &off, page); err == nil && n > 0 {
		got := make([]byte, n)
		_, _ = sink.ReadAt(got, 0)
		after.add("bytes", "share/big.bin (sendfile)", int64(n))
		r.errorf(t, "after quarantine, sendfile from a descriptor opened before copies %d bytes (byte 1000 = %#02x, truth %#02x)", n, got[1000], truthBig[1000])
	} else {
		t.Logf("after quarantine, sendfile: %d, %v", n, err)
	}
	m2, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err == nil {
		defer syscall.Munmap(m2)
		if v, ok := touch(m2, 1000); ok {
			after.add("bytes", "share/big.bin (new mapping)", page)
			r.errorf(t, "after quarantine, a new mapping through a descriptor opened before serves byte 1000 = %#02x (truth %#02x)", v, truthBig[1000])
		}
	}
	r.exp.merge(after)
	t.Logf("after the quarantine: %d of %d head pages readable through the old mapping", served, tail/page)
}

// Readers racing the check: many goroutines read every file of the path
// at once, repeatedly, while the last bytes trigger the whole-NAR check.
// Once one reader has seen EIO (the quarantine), no read that starts
// afterwards may return a byte.
func TestAdversaryQuarantineRace(t *testing.T) {
	r := startReport(t, "Adversary/QuarantineRace")
	defer r.done(t)
	_, _, m, root := quarantineEnv(t, r)
	files := []string{"bin/run", "bin/hello", "share/data.txt", "share/payload.sh", "share/big.bin"}
	type result struct {
		file          string
		start, finish time.Time
		n             int
		err           error
	}
	results := make(chan result, 4096)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	const workers = 16
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; ctx.Err() == nil; i++ {
				f := files[(w+i)%len(files)]
				fh, err := os.Open(filepath.Join(root, f))
				start := time.Now()
				var n int
				if err == nil {
					buf := make([]byte, 64<<10)
					off := int64(0)
					for {
						k, rerr := fh.ReadAt(buf, off)
						n += k
						off += int64(k)
						if rerr != nil {
							if rerr.Error() != "EOF" {
								err = rerr
							}
							break
						}
					}
					fh.Close()
				}
				results <- result{f, start, time.Now(), n, err}
				if err != nil && errors.Is(err, syscall.EIO) && i > 200 {
					return
				}
			}
		}()
	}
	var all []result
	finished := 0
	for finished < workers {
		select {
		case res := <-results:
			all = append(all, res)
		case <-done:
			finished++
		}
	}
	cancel()
	close(results)
	for res := range results {
		all = append(all, res)
	}
	var firstEIO time.Time
	for _, res := range all {
		if errors.Is(res.err, syscall.EIO) && (firstEIO.IsZero() || res.finish.Before(firstEIO)) {
			firstEIO = res.finish
		}
	}
	if firstEIO.IsZero() {
		r.fatalf(t, "%d reads of every file, none saw EIO: the path was never quarantined", len(all))
	}
	var late []string
	for _, res := range all {
		if res.err == nil && res.n > 0 && res.start.After(firstEIO) {
			late = append(late, fmt.Sprintf("%s: %d bytes, started %v after the first EIO", res.file, res.n, res.start.Sub(firstEIO)))
			r.exp.add("bytes", res.file+" (after quarantine)", int64(res.n))
		}
	}
	if len(late) > 0 {
		r.errorf(t, "%d reads that started after the quarantine returned bytes: %s", len(late), firstLines(fmt.Sprint(late), 5))
	}
	t.Logf("%d reads; quarantined=%d", len(all), m.metric(t, "ipnix_store_paths_quarantined_total"))
}

// aheadExpr builds aheadPaths store paths of one 40 MB file each.
const aheadPaths = 8

const aheadExpr = `
let
  big = i: derivation {
    name = "ipnix-adv-ahead-${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/usr/bin:/bin; mkdir $out; head -c 40000000 /dev/urandom > $out/f" ];
  };
in builtins.listToAttrs (map (i: { name = "p${toString i}"; value = big i; }) [ 1 2 3 4 5 6 7 8 ])
`

// newExprEnv is newAttackEnv for another Nix expression.
func newExprEnv(t *testing.T, expr string, attrs ...string) *attackEnv {
	t.Helper()
	requireReal(t)
	e := &attackEnv{path: map[string]string{}}
	file := filepath.Join(t.TempDir(), "adv.nix")
	must(t, os.WriteFile(file, []byte(expr), 0o644))
	var paths []string
	for _, a := range attrs {
		out, err := exec.Command("nix-build", "--no-out-link", file, "-A", a).Output()
		if err != nil {
			t.Fatalf("nix-build -A %s: %v", a, err)
		}
		p := strings.TrimSpace(string(out))
		e.path[a] = p
		paths = append(paths, p)
	}
	k := startKubo(t)
	secFile, pub := genKey(t, "ipnix-adv-1")
	key, err := narindex.LoadSecretKeyFile(secFile)
	must(t, err)
	e.key = key
	e.published = &published{kubo: k, closure: &testClosure{top: paths[0], paths: paths}, cache: t.TempDir(), pub: pub}
	args := append([]string{"publish", "--api", k.api, "--to", e.cache, "--secret-key", secFile}, paths...)
	if out, err := ipnixCmd(t, nil, args...); err != nil {
		t.Fatalf("ipnix publish: %v\n%s", err, out)
	}
	return e
}

// Every store path keeps up to 32 MiB of leaves read ahead of its hashing
// frontier (integrity.Checker.OnLeaf), and nothing bounds the number of
// paths doing so: reading the second part of a few large files, each in
// its own store path, holds that memory until the path is dropped, which
// only listing memory pressure does. The mount's memory must stay within
// its caches plus a fixed slack, whatever is read.
func TestAdversaryAheadMemory(t *testing.T) {
	attrs := make([]string, aheadPaths)
	for i := range attrs {
		attrs[i] = fmt.Sprintf("p%d", i+1)
	}
	e := newExprEnv(t, aheadExpr, attrs...)
	r := startReport(t, "Adversary/AheadMemory")
	defer r.done(t)
	const memCache = 16 << 20
	// read reads 36 MB of every file, from `from`, in its own mount, and
	// returns the mount's peak RSS.
	read := func(from, to int64) int64 {
		m := r.mountSub(t, e, "file://"+e.cache, "--memory-cache", "16MiB")
		withTimeout(t, 10*time.Minute, "reading every file", func(context.Context) {
			for _, a := range attrs {
				f, err := os.Open(filepath.Join(m.dir, filepath.Base(e.path[a]), "f"))
				if err != nil {
					r.errorf(t, "open %s: %v", a, err)
					return
				}
				buf := make([]byte, 1<<20)
				for off := from; off < to; off += int64(len(buf)) {
					n, err := f.ReadAt(buf, off)
					if err != nil || n < len(buf) {
						break
					}
				}
				f.Close()
			}
		})
		rss, err := runenv.PeakRSS(m.proc().Pid)
		must(t, err)
		return rss
	}
	// Control: the heads, in order; the frontier follows the reader.
	head := read(0, 36<<20)
	t.Logf("control, after reading the first 36 MiB of each of %d store paths: peak RSS %d MiB", aheadPaths, head>>20)
	rss := read(4<<20, 40<<20)
	bound := int64(memCache + 150<<20)
	t.Logf("after reading the last 36 MiB of each of %d store paths: peak RSS %d MiB (bound %d MiB)", aheadPaths, rss>>20, bound>>20)
	if rss >= bound {
		r.errorf(t, "peak RSS %d MiB after reading the tails of %d store paths, want below --memory-cache + 150 MiB = %d MiB (leaves kept ahead of the hashing frontier, 32 MiB per path, are not bounded across paths)", rss>>20, aheadPaths, bound>>20)
	}
}

// Names at the root that carry the right hash but another name part, or
// are not store path names at all: ENOENT, nothing shown in the root, and
// the true name is served afterwards (the refusal of a wrong name does
// not poison it).
func TestAdversaryRootNames(t *testing.T) {
	e := newAttackEnv(t, "app")
	r := startReport(t, "Adversary/RootNames")
	defer r.done(t)
	app := e.path["app"]
	base := filepath.Base(app)
	sp, err := narindex.ParseStorePath(app)
	must(t, err)
	m := r.mountSub(t, e, "file://"+e.cache)
	for _, name := range []string{
		sp.Hash + "-ipnix-attack-evil",                 // right hash, other name
		sp.Hash + "-ipnix-attack-app-x",                // a longer name
		sp.Hash + "-ipnix-attack-ap",                   // a prefix of the name
		sp.Hash,                                        // the hash alone
		sp.Hash + "-",                                  // empty name
		strings.ToUpper(sp.Hash) + "-ipnix-attack-app", // not nix32
		sp.Hash + "-" + strings.Repeat("a", 255-33),    // longest name
		sp.Hash + "-.ipnix-attack-app",
		sp.Hash + "-ipnix attack app",
	} {
		_, err := os.Lstat(filepath.Join(m.dir, name))
		if err == nil {
			r.exp.add("name", name, 1)
			r.errorf(t, "lookup %q succeeds", name)
		} else if !errors.Is(err, syscall.ENOENT) {
			r.errorf(t, "lookup %q: %v, want ENOENT", name, err)
		}
	}
	ents, err := os.ReadDir(m.dir)
	must(t, err)
	for _, d := range ents {
		if d.Name() != base {
			r.exp.add("name", d.Name(), 1)
			r.errorf(t, "the root lists %q", d.Name())
		}
	}
	got, err := os.ReadFile(filepath.Join(m.dir, base, "bin/hello"))
	want, _ := os.ReadFile(filepath.Join(app, "bin/hello"))
	if err != nil || string(got) != string(want) {
		r.errorf(t, "after the wrong names, the true path: %v %q", err, got)
	}
}
