package integration

// The attacks of issue 7, played by someone who controls only the
// substituter: the narinfo's Sig stays valid (it covers neither the CID nor
// the listing); everything else is theirs. Each test logs one row,
// "ATTACK <name>: result=... unauthenticated_bytes=... names=... targets=...
// elapsed=...", counting what the mount served that the real store path
// does not hold.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
	"github.com/ipnix/ipnix/narindex"
)

// A tampered .ls beside an untouched narinfo (Sig and IpfsCidSig valid)
// must not change any byte, name, mode or target the mount serves.
func TestAttackTamperedListing(t *testing.T) {
	e := newAttackEnv(t, "app", "links")
	app, links := e.path["app"], e.path["links"]
	type variant struct {
		name string
		sp   string
		edit func(t *testing.T, l *narindex.Listing)
	}
	variants := []variant{
		{"a-exec-file-serves-other-bytes", app, func(t *testing.T, l *narindex.Listing) {
			run, pay := lookupNode(t, l, "bin/run"), lookupNode(t, l, "share/payload.sh")
			run.NarOffset, run.Size = pay.NarOffset, pay.Size
		}},
		{"b-symlink-retargeted", app, func(t *testing.T, l *narindex.Listing) {
			lookupNode(t, l, "link").Target = "/tmp/evil"
		}},
		{"c-extra-entry", app, func(t *testing.T, l *narindex.Listing) {
			pay := lookupNode(t, l, "share/payload.sh")
			lookupNode(t, l, "bin").Entries["evil"] = &narindex.ListingNode{
				Type: narindex.TypeRegular, Executable: true, Size: pay.Size, NarOffset: pay.NarOffset}
		}},
		{"d-exec-bit-flipped", app, func(t *testing.T, l *narindex.Listing) {
			lookupNode(t, l, "share/data.txt").Executable = true
		}},
		{"e-root-is-symlink", app, func(t *testing.T, l *narindex.Listing) {
			l.Root = &narindex.ListingNode{Type: narindex.TypeSymlink, Target: "/tmp"}
		}},
		// No regular file with a byte in it: nothing is ever read, so
		// a check that waits for every file to be read never runs.
		{"no-regular-file", links, func(t *testing.T, l *narindex.Listing) {
			lookupNode(t, l, "d/l1").Target = "/tmp/evil"
			d := lookupNode(t, l, "d")
			d.Entries["evil"] = &narindex.ListingNode{Type: narindex.TypeSymlink, Target: "/tmp/evil"}
			d.Entries["evil-dir"] = &narindex.ListingNode{Type: narindex.TypeDirectory, Entries: map[string]*narindex.ListingNode{}}
		}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			r := startReport(t, "TamperedListing/"+v.name)
			defer r.done(t)
			l, err := narindex.ParseListing(e.listingData(t, v.sp))
			must(t, err)
			v.edit(t, l)
			ls, err := l.Marshal()
			must(t, err)
			dir := t.TempDir()
			ni := e.narInfo(t, v.sp)
			e.writeEntry(t, dir, v.sp, ni.Marshal(), ls)
			m := r.mountSub(t, e, "file://"+dir)
			root := filepath.Join(m.dir, filepath.Base(v.sp))
			if v.sp == app {
				r.exp.merge(probeApp(t, v.sp, root))
			}
			var x exposure
			var notes []string
			withTimeout(t, 2*time.Minute, "reading the whole path", func(context.Context) { x, notes = observe(v.sp, root) })
			r.exp.merge(x)
			if r.exp.any() {
				r.errorf(t, "served what the store path does not hold: %s", r.exp)
			}
			if len(notes) > 0 {
				t.Logf("errors while reading: %s", firstLines(strings.Join(notes, "\n"), 10))
			}
			checkTruth(t, r, v.sp, root, ni.NarHash)
		})
	}
	for _, sp := range []string{app, links} {
		if !hasLsHash(e.narInfo(t, sp)) {
			t.Errorf("%s: published narinfo has no IpfsLsHash: IpfsCidSig does not cover the listing", sp)
		}
	}
}

// A narinfo with a valid Sig whose CID signature is gone (removed, the
// legacy IPFSHash field, a CIDv0) and whose CID names a same-size evil NAR:
// nothing of the path may be served before its whole NAR matched NarHash.
func TestAttackDroppedCidSig(t *testing.T) {
	e := newAttackEnv(t, "app")
	app := e.path["app"]
	base := filepath.Base(app)
	ev := e.evilApp(t)
	evilV1 := e.addDefault(t, ev.nar)
	evilV0 := e.add(t, ev.nar, "--cid-version=0", "--chunker=size-262144")
	if !strings.HasPrefix(evilV0, "Qm") {
		t.Fatalf("kubo gave %q for a CIDv0", evilV0)
	}
	// The attacker's narinfo: the publisher's, CID signature dropped, their
	// CID and (unsigned, so worthless) listing digest put in.
	stripped := func(t *testing.T, cid string, legacy bool, ls []byte) []byte {
		ni := e.narInfo(t, app)
		ni.IpfsCid, ni.IpfsCidSig, ni.LegacyIPFSHash = cid, "", legacy
		return withLsHash(t, ni, ls).Marshal()
	}
	for _, v := range []struct {
		name   string
		cid    string
		legacy bool
	}{
		{"a-no-IpfsCidSig", evilV1, false},
		{"b-legacy-IPFSHash", evilV1, true},
		{"c-CIDv0", evilV0, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			r := startReport(t, "DroppedCidSig/"+v.name)
			defer r.done(t)
			ni := stripped(t, v.cid, v.legacy, ev.listing)
			if v.legacy != bytes.Contains(ni, []byte("\nIPFSHash: ")) {
				t.Fatalf("narinfo:\n%s", ni)
			}
			dir := t.TempDir()
			e.writeEntry(t, dir, app, ni, ev.listing)
			m := r.mountSub(t, e, "file://"+dir)
			root := filepath.Join(m.dir, base)
			_, statErr := os.Lstat(root)
			r.exp.merge(probeApp(t, app, root))
			var x exposure
			var notes []string
			withTimeout(t, 2*time.Minute, "reading the whole path", func(context.Context) { x, notes = observe(app, root) })
			r.exp.merge(x)
			if r.exp.any() {
				r.errorf(t, "served the attacker's NAR: %s", r.exp)
			}
			switch {
			case statErr == nil:
				r.errorf(t, "the store path was shown before its whole NAR matched NarHash (it cannot: the NAR is not the signed one)")
			case !isErrno(statErr, syscall.ENOENT, syscall.EIO):
				r.errorf(t, "lookup: %v, want ENOENT or EIO", statErr)
			}
			t.Logf("lookup: %v; read errors: %s", statErr, firstLines(strings.Join(notes, "; "), 5))
		})
	}

	// Without IpfsCidSig the true CID is still served, verified whole first.
	trueStripped := func(t *testing.T) string {
		ni := e.narInfo(t, app)
		ni.IpfsCidSig = ""
		dir := t.TempDir()
		e.writeEntry(t, dir, app, ni.Marshal(), e.listingData(t, app))
		return dir
	}
	t.Run("true-CID-without-sig-verified-first", func(t *testing.T) {
		r := startReport(t, "DroppedCidSig/true-CID-without-sig")
		defer r.done(t)
		m := r.mountSub(t, e, "file://"+trueStripped(t))
		root := filepath.Join(m.dir, base)
		if _, err := os.Lstat(root); err != nil {
			r.fatalf(t, "lookup of the true NAR without IpfsCidSig: %v", err)
		}
		ni := e.narInfo(t, app)
		verified, fetched := m.metric(t, "ipnix_store_paths_verified_total"), m.metric(t, "ipnix_fetch_bytes_total")
		t.Logf("after the lookup: verified=%d, fetched %d of %d NAR bytes", verified, fetched, ni.NarSize)
		if verified != 1 {
			r.errorf(t, "the store path was shown before its whole NAR was verified (verified=%d, fetched %d of %d bytes)", verified, fetched, ni.NarSize)
		}
		checkTruth(t, r, app, root, ni.NarHash)
	})
	t.Run("require-cid-sig", func(t *testing.T) {
		r := startReport(t, "DroppedCidSig/require-cid-sig")
		defer r.done(t)
		m := r.mountSub(t, e, "file://"+trueStripped(t), "--require-cid-sig")
		if _, err := os.Lstat(filepath.Join(m.dir, base)); !errors.Is(err, syscall.ENOENT) {
			r.errorf(t, "with --require-cid-sig, a narinfo without IpfsCidSig: %v, want ENOENT", err)
		}
		if !m.waitLog(base, "IpfsCidSig") {
			r.errorf(t, "no log line naming the path and the missing IpfsCidSig")
		}
	})
}

// A trusted key signed the wrong CID (a publisher bug): the blocks match
// the signed CID and the listing its signed digest, only NarHash can tell.
// Once the whole NAR fails it, the kernel must forget everything it was
// given: entries, attributes, symlink targets, pages.
func TestAttackQuarantineKernelCaches(t *testing.T) {
	e := newAttackEnv(t, "app")
	r := startReport(t, "QuarantineKernelCaches")
	defer r.done(t)
	app := e.path["app"]
	ev := e.evilApp(t)
	ni := e.narInfo(t, app)
	ni.IpfsCid = e.addDefault(t, ev.nar)
	ni = withLsHash(t, ni, ev.listing)
	e.resign(t, ni)
	dir := t.TempDir()
	e.writeEntry(t, dir, app, ni.Marshal(), ev.listing)
	m := r.mountSub(t, e, "file://"+dir)
	root := filepath.Join(m.dir, filepath.Base(app))

	// Before: what a user does first, filling the kernel's caches.
	names := []string{"", "bin", "bin/run", "bin/hello", "share", "share/data.txt", "share/payload.sh", "share/empty", "share/big.bin", "link"}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(root, n)); err != nil {
			r.fatalf(t, "before the whole NAR is read, lstat %q: %v", n, err)
		}
	}
	target, err := os.Readlink(filepath.Join(root, "link"))
	t.Logf("before: link -> %q (%v)", target, err)
	out, err := run(filepath.Join(root, "bin/hello"))
	t.Logf("before: bin/hello printed %q (%v)", out, err)
	out, err = run(filepath.Join(root, "bin/run"), "before")
	t.Logf("before: bin/run printed %q (%v)", out, err)
	if _, err := os.ReadFile(filepath.Join(root, "share/data.txt")); err != nil {
		t.Logf("before: read share/data.txt: %v", err)
	}

	var readErr error
	withTimeout(t, 2*time.Minute, "reading the whole path", func(context.Context) { readErr = readTree(root) })
	if !errors.Is(readErr, syscall.EIO) {
		r.fatalf(t, "reading every file of a path whose NAR is not NarHash's: %v, want EIO", readErr)
	}
	if q := m.metric(t, "ipnix_store_paths_quarantined_total"); q != 1 {
		r.errorf(t, "quarantined counter = %d, want 1", q)
	}

	// After: nothing of it, whatever the kernel was given before.
	after := exposure{}
	for _, n := range names {
		_, err := os.Lstat(filepath.Join(root, n))
		switch {
		case err == nil:
			after.add("name", n, 1)
			r.errorf(t, "after quarantine, lstat %q succeeds", n)
		case !errors.Is(err, syscall.EIO):
			r.errorf(t, "after quarantine, lstat %q: %v, want EIO", n, err)
		}
	}
	if got, err := os.Readlink(filepath.Join(root, "link")); err == nil {
		after.add("target", "link", 1)
		r.errorf(t, "after quarantine, readlink link = %q", got)
	} else if !errors.Is(err, syscall.EIO) {
		r.errorf(t, "after quarantine, readlink link: %v, want EIO", err)
	}
	for _, f := range []string{"bin/run", "bin/hello", "share/data.txt", "share/payload.sh", "share/big.bin"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err == nil {
			after.add("bytes", f, int64(len(b)))
			r.errorf(t, "after quarantine, read %s gives %d bytes", f, len(b))
		} else if !errors.Is(err, syscall.EIO) {
			r.errorf(t, "after quarantine, read %s: %v, want EIO", f, err)
		}
	}
	for _, prog := range []string{"bin/hello", "bin/run"} {
		if out, err := run(filepath.Join(root, prog), "after"); err == nil {
			r.errorf(t, "after quarantine, %s still runs: %q", prog, out)
		}
	}
	if ents, err := os.ReadDir(root); err == nil {
		after.add("name", "(readdir root)", int64(len(ents)))
		r.errorf(t, "after quarantine, readdir of the store path lists %d entries", len(ents))
	}
	r.exp.merge(after)
	if !m.waitLog("quarantined") {
		r.errorf(t, "no log line about the quarantine")
	}
}

// Listing memory is bounded: a per-path entry cap refuses a huge listing
// with a clear reason, and a large one costs bounded memory.
func TestAttackListingTooLarge(t *testing.T) {
	e := newAttackEnv(t, "app", "wide30k", "wide200k")
	t.Run("200k-entries-default-settings", func(t *testing.T) {
		r := startReport(t, "ListingTooLarge/200k-default")
		defer r.done(t)
		m := r.mountSub(t, e, "file://"+e.cache)
		d := filepath.Join(m.dir, filepath.Base(e.path["wide200k"]), "d")
		var n int
		var took time.Duration
		withTimeout(t, 15*time.Minute, "the first ls of 200,000 entries", func(context.Context) {
			start := time.Now()
			out, err := exec.Command("ls", d).Output()
			took = time.Since(start)
			if err != nil {
				r.errorf(t, "ls: %v", err)
				return
			}
			n = bytes.Count(out, []byte("\n"))
		})
		if n != 200000 {
			r.errorf(t, "ls listed %d entries, want 200000", n)
		}
		rss, err := runenv.PeakRSS(m.proc().Pid)
		must(t, err)
		bound := int64(defaultMemoryCache + defaultListingMemory + 150<<20)
		t.Logf("first ls of %d entries: %v; mount peak RSS %d MiB (bound %d MiB)", n, took.Round(time.Millisecond), rss>>20, bound>>20)
		if rss >= bound {
			r.errorf(t, "peak RSS %d MiB, want below --memory-cache + --listing-memory + 150 MiB = %d MiB", rss>>20, bound>>20)
		}
	})
	t.Run("max-entries", func(t *testing.T) {
		r := startReport(t, "ListingTooLarge/max-entries")
		defer r.done(t)
		m := r.mountSub(t, e, "file://"+e.cache, "--max-entries", "10000")
		wide := filepath.Base(e.path["wide30k"])
		if _, err := os.Lstat(filepath.Join(m.dir, wide)); !errors.Is(err, syscall.ENOENT) {
			r.errorf(t, "lookup of a path with 30,001 entries under --max-entries 10000: %v, want ENOENT", err)
		}
		if !m.waitLog(wide, "10000") {
			r.errorf(t, "no log line naming the path and the limit")
		}
		app := e.path["app"]
		checkTruth(t, r, app, filepath.Join(m.dir, filepath.Base(app)), e.narInfo(t, app).NarHash)
	})
}

// A NAR chunked into 64-byte leaves, its CID signed by the trusted key:
// the mount refuses the DAG's shape instead of fetching a block per 64
// bytes.
func TestAttackTinyLeaves(t *testing.T) {
	e := newAttackEnv(t, "app")
	app := e.path["app"]
	start := time.Now()
	tiny := e.add(t, e.nar(t, app), "--chunker=size-64", "--raw-leaves", "--cid-version=1")
	t.Logf("kubo add in 64-byte leaves took %v", time.Since(start).Round(time.Millisecond))
	ls := e.listingData(t, app)
	ni := e.narInfo(t, app)
	ni.IpfsCid = tiny
	ni = withLsHash(t, ni, ls)
	e.resign(t, ni)
	dir := t.TempDir()
	e.writeEntry(t, dir, app, ni.Marshal(), ls)
	r := startReport(t, "TinyLeaves")
	defer r.done(t)
	m := r.mountSub(t, e, "file://"+dir)
	root := filepath.Join(m.dir, filepath.Base(app))
	_, err := os.Lstat(root)
	blocks := m.metric(t, "ipnix_fetch_blocks_total")
	switch {
	case err == nil:
		r.errorf(t, "a NAR in 64-byte leaves was accepted (lookup fetched %d blocks)", blocks)
		// Show what serving it costs: a small file and 256 KiB of a large one.
		withTimeout(t, 5*time.Minute, "reading through 64-byte leaves", func(context.Context) {
			if _, err := os.ReadFile(filepath.Join(root, "bin/hello")); err != nil {
				t.Logf("read bin/hello: %v", err)
			}
			f, err := os.Open(filepath.Join(root, "share/big.bin"))
			if err != nil {
				t.Logf("open share/big.bin: %v", err)
				return
			}
			defer f.Close()
			if _, err := io.ReadFull(f, make([]byte, 256<<10)); err != nil {
				t.Logf("read share/big.bin: %v", err)
			}
		})
		after := m.metric(t, "ipnix_fetch_blocks_total")
		t.Logf("reading 20 bytes and 256 KiB fetched %d blocks", after-blocks)
		blocks = after
	case !isErrno(err, syscall.ENOENT, syscall.EIO):
		r.errorf(t, "lookup: %v, want ENOENT or EIO", err)
	default:
		shape := regexp.MustCompile(`(?i)` + regexp.QuoteMeta(filepath.Base(app)) + `.*(leaf|leaves|dag|chunk|block size)`)
		if !waitLogRE(m, shape, 10*time.Second) {
			r.errorf(t, "no log line naming the path and the DAG's shape")
		}
	}
	if blocks >= 100 {
		r.errorf(t, "%d blocks fetched for a NAR in 64-byte leaves, want < 100", blocks)
	}
}

// A malformed narinfo, and one naming another store path, are refused:
// ENOENT (not EIO), the reason logged once, and not fetched again on every
// lookup.
func TestAttackMalformedNarinfo(t *testing.T) {
	e := newAttackEnv(t, "app", "links")
	r := startReport(t, "MalformedNarinfo")
	defer r.done(t)
	app, links := e.path["app"], e.path["links"]
	dir := t.TempDir()
	garbled := append(e.narInfo(t, app).Marshal(), "this line is not a narinfo field\n"...)
	e.writeEntry(t, dir, app, garbled, e.listingData(t, app))
	other := e.narInfo(t, links)
	other.StorePath = narindex.StoreDir + "/" + strings.Repeat("0", 32) + "-ipnix-attack-other"
	e.writeEntry(t, dir, links, other.Marshal(), e.listingData(t, links))
	srv := serveCounting(t, dir)
	m := r.mountSub(t, e, srv.URL)
	for _, c := range []struct{ what, sp string }{{"malformed", app}, {"for another path", links}} {
		base := filepath.Base(c.sp)
		for i := range 3 {
			if i > 0 {
				dropDentries(t)
			}
			if _, err := os.Lstat(filepath.Join(m.dir, base)); !errors.Is(err, syscall.ENOENT) {
				r.errorf(t, "narinfo %s: lookup %d: %v, want ENOENT", c.what, i+1, err)
			}
		}
		sp, err := narindex.ParseStorePath(c.sp)
		must(t, err)
		if n := srv.count("/" + sp.Hash + ".narinfo"); n > 1 {
			r.errorf(t, "narinfo %s: fetched %d times for 3 lookups, want at most 1", c.what, n)
		}
		if !m.waitLog(base) {
			r.errorf(t, "narinfo %s: no log line naming the path", c.what)
			continue
		}
		time.Sleep(200 * time.Millisecond) // let trailing lines arrive
		if lines := logLines(m.log.String(), base); len(lines) != 1 {
			r.errorf(t, "narinfo %s: %d log lines name the path, want the reason once:\n%s", c.what, len(lines), strings.Join(lines, "\n"))
		}
	}
}

// Local copies and the listing saved beside them are checked before use
// after a restart: a flipped bit or a retargeted symlink in the cache
// directory is not served, and the damaged copy is dropped.
func TestAttackLocalCopies(t *testing.T) {
	e := newAttackEnv(t, "app")
	r := startReport(t, "LocalCopies")
	defer r.done(t)
	app := e.path["app"]
	ni := e.narInfo(t, app)
	cacheDir := filepath.Join(t.TempDir(), "cache")
	args := []string{"--cache-dir", cacheDir, "--cache-size", "1GiB"}
	m := r.mountSub(t, e, "file://"+e.cache, args...)
	if err := readTree(filepath.Join(m.dir, filepath.Base(app))); err != nil {
		r.fatalf(t, "reading the path: %v", err)
	}
	deadline := time.Now().Add(time.Minute)
	for m.metric(t, "ipnix_local_copies_total") != 1 {
		if time.Now().After(deadline) {
			r.fatalf(t, "no local copies written for a verified path")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range []string{cacheDir, filepath.Join(cacheDir, "files")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			r.errorf(t, "%s: %v, mode %v, want 0700", d, err, fi.Mode())
		}
	}
	must(t, m.Stop())

	// The attacker (or a disk) changes what was written.
	copies := filepath.Join(cacheDir, "files", narindex.EncodeNix32(ni.NarHash.Digest))
	l, err := narindex.ParseListing(e.listingData(t, app))
	must(t, err)
	big := lookupNode(t, l, "share/big.bin")
	copyPath := filepath.Join(copies, strconv.FormatInt(big.NarOffset, 10))
	f, err := os.OpenFile(copyPath, os.O_RDWR, 0)
	if err != nil {
		ents, _ := os.ReadDir(copies)
		r.fatalf(t, "no local copy of share/big.bin where expected: %v (dir holds %v)", err, ents)
	}
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 1000)
	must(t, err)
	b[0] ^= 0x01
	_, err = f.WriteAt(b, 1000)
	must(t, err)
	must(t, f.Close())
	// A listing planted beside the copies (older versions saved one and
	// served it): never used; a file the manifest does not name drops the
	// directory.
	sl, err := narindex.ParseListing(e.listingData(t, app))
	must(t, err)
	lookupNode(t, sl, "link").Target = "/tmp/evil"
	saved, err := sl.Marshal()
	must(t, err)
	must(t, os.WriteFile(filepath.Join(copies, "listing"), saved, 0o600))

	m2 := r.mountSub(t, e, "file://"+e.cache, args...)
	root := filepath.Join(m2.dir, filepath.Base(app))
	var x exposure
	var notes []string
	withTimeout(t, 2*time.Minute, "reading the whole path", func(context.Context) { x, notes = observe(app, root) })
	r.exp.merge(x)
	if x.any() {
		r.errorf(t, "served the damaged local copy or saved listing: %s", x)
	}
	if len(notes) > 0 {
		r.errorf(t, "errors reading a path whose blocks are all available: %s", firstLines(strings.Join(notes, "\n"), 10))
	}
	t.Logf("after the restart: copies dropped %d, passthrough opens %d",
		m2.metric(t, "ipnix_local_copies_dropped_total"), m2.metric(t, "ipnix_passthrough_opens_total"))

	// The damaged copy is dropped (or written again from verified data),
	// and the log says so.
	want, err := os.ReadFile(filepath.Join(app, "share/big.bin"))
	must(t, err)
	deadline = time.Now().Add(30 * time.Second)
	for {
		got, err := os.ReadFile(copyPath)
		gone := errors.Is(err, os.ErrNotExist)
		if gone || (err == nil && bytes.Equal(got, want)) {
			break
		}
		if time.Now().After(deadline) {
			r.errorf(t, "the damaged local copy is still there, %d bytes differ", diffBytes(got, want))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	dropped := regexp.MustCompile(`(?i)(local|cop|listing|cache).*(mismatch|differ|corrupt|damag|drop|discard|remov|invalid)`)
	if !waitLogRE(m2, dropped, 10*time.Second) {
		r.errorf(t, "no log line says the local copy was dropped")
	}
	checkTruth(t, r, app, root, ni.NarHash)
}
