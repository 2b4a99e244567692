package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/narindex"
)

// attackExpr builds the store paths the attack tests tamper with. Every NAR
// is over 1 MiB, so none is verified eagerly at lookup.
//
//   - app: a program (bin/run, a copy of /bin/echo), a script (bin/hello,
//     printing "good"), a non-executable script (share/payload.sh, printing
//     "EVIL": the bytes an attacker would like bin/run to have), a symlink
//     (link -> ../share/data.txt), an empty file and a 2.5 MB file.
//   - links: no regular file with a byte in it: 600 symlinks with long
//     (dangling) targets, a directory and an empty file.
//   - wide30k, wide200k: one directory of 30,000 / 200,000 empty files.
const attackExpr = `
let
  sh = script: name: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  };
  wide = n: sh ''
    mkdir -p $out/d
    cd $out/d
    seq 1 ${toString n} | xargs touch
  '' "ipnix-attack-wide${toString n}";
in {
  app = sh ''
    mkdir -p $out/bin $out/share
    cp /bin/echo $out/bin/run
    chmod 555 $out/bin/run
    printf '#!/bin/sh\necho good\n' > $out/bin/hello
    chmod 555 $out/bin/hello
    printf '#!/bin/sh\necho EVIL\n' > $out/share/payload.sh
    echo "plain data" > $out/share/data.txt
    : > $out/share/empty
    head -c 2500000 /dev/urandom > $out/share/big.bin
    ln -s ../share/data.txt $out/link
  '' "ipnix-attack-app";
  links = sh ''
    mkdir -p $out/d/sub
    : > $out/empty
    for i in $(seq 1 600); do ln -s "t$(printf '%02000d' $i)" $out/d/l$i; done
    ln -s ../../empty $out/d/sub/up
  '' "ipnix-attack-links";
  wide30k = wide 30000;
  wide200k = wide 200000;
}
`

// Defaults of `ipnix mount` that bounds in the tests are derived from.
const (
	defaultMemoryCache   = 64 << 20
	defaultListingMemory = 256 << 20
)

// attackEnv is a kubo daemon and a binary cache into which `ipnix publish`
// wrote some attrs of attackExpr, signed with a key the test holds: the
// tests play both the honest publisher and the attacker who controls the
// substituter (everything but the narinfo's Sig).
type attackEnv struct {
	*published
	key  narindex.SecretKey
	path map[string]string // attr -> store path
}

func newAttackEnv(t *testing.T, attrs ...string) *attackEnv {
	t.Helper()
	requireReal(t)
	e := &attackEnv{path: map[string]string{}}
	expr := filepath.Join(t.TempDir(), "attack.nix")
	must(t, os.WriteFile(expr, []byte(attackExpr), 0o644))
	var paths []string
	for _, a := range attrs {
		out, err := exec.Command("nix-build", "--no-out-link", expr, "-A", a).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("nix-build -A %s: %v\n%s", a, err, stderr)
		}
		p := strings.TrimSpace(string(out))
		e.path[a] = p
		paths = append(paths, p)
	}
	k := startKubo(t)
	secFile, pub := genKey(t, "ipnix-attack-1")
	key, err := narindex.LoadSecretKeyFile(secFile)
	must(t, err)
	e.key = key
	e.published = &published{kubo: k, closure: &testClosure{top: paths[0], paths: paths}, cache: t.TempDir(), pub: pub}
	args := append([]string{"publish", "--api", k.api, "--to", e.cache, "--secret-key", secFile}, paths...)
	out, err := ipnixCmd(t, nil, args...)
	if err != nil {
		t.Fatalf("ipnix publish: %v\n%s", err, out)
	}
	for _, p := range paths {
		ni := e.narInfo(t, p)
		if len(ni.Sigs) == 0 || ni.IpfsCid == "" || ni.IpfsCidSig == "" {
			t.Fatalf("%s: published narinfo lacks Sig, IpfsCid or IpfsCidSig:\n%s", p, ni.Marshal())
		}
	}
	return e
}

// nar is the uncompressed NAR publish wrote for storePath.
func (e *attackEnv) nar(t *testing.T, storePath string) []byte {
	t.Helper()
	ni := e.narInfo(t, storePath)
	if ni.Compression != "none" {
		t.Fatalf("%s: NAR compression %q, want none", storePath, ni.Compression)
	}
	b, err := os.ReadFile(filepath.Join(e.cache, ni.URL))
	must(t, err)
	return b
}

// listingData is the .ls publish wrote for storePath.
func (e *attackEnv) listingData(t *testing.T, storePath string) []byte {
	t.Helper()
	sp, err := narindex.ParseStorePath(storePath)
	must(t, err)
	b, err := os.ReadFile(filepath.Join(e.cache, sp.Hash+".ls"))
	must(t, err)
	return b
}

// writeEntry writes ni and, unless nil, ls as storePath's entry into the
// binary cache directory dst.
func (e *attackEnv) writeEntry(t *testing.T, dst, storePath string, ni []byte, ls []byte) {
	t.Helper()
	sp, err := narindex.ParseStorePath(storePath)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dst, sp.Hash+".narinfo"), ni, 0o644))
	if ls != nil {
		must(t, os.WriteFile(filepath.Join(dst, sp.Hash+".ls"), ls, 0o644))
	}
	info, err := os.ReadFile(filepath.Join(e.cache, "nix-cache-info"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dst, "nix-cache-info"), info, 0o644))
}

// add adds data to the test's kubo and returns its CID.
func (e *attackEnv) add(t *testing.T, data []byte, args ...string) string {
	t.Helper()
	return e.kubo.ipfs(t, bytes.NewReader(data), append([]string{"add", "-Q"}, args...)...)
}

// addDefault adds data as publish does by default.
func (e *attackEnv) addDefault(t *testing.T, data []byte) string {
	t.Helper()
	return e.add(t, data, "--cid-version=1", "--raw-leaves", "--chunker=size-262144")
}

// withLsHash returns ni with the field IpfsLsHash set to the SHA-256 of ls
// (or removed, when ls is nil). It edits the text, so that it works whether
// or not narindex knows the field (before the fix it is an Extra field).
func withLsHash(t *testing.T, ni *narindex.NarInfo, ls []byte) *narindex.NarInfo {
	t.Helper()
	var lines []string
	for _, line := range strings.Split(strings.TrimSuffix(string(ni.Marshal()), "\n"), "\n") {
		if !strings.HasPrefix(line, "IpfsLsHash:") {
			lines = append(lines, line)
		}
	}
	if ls != nil {
		sum := sha256.Sum256(ls)
		lines = append(lines, "IpfsLsHash: sha256:"+narindex.EncodeNix32(sum[:]))
	}
	out, err := narindex.ParseNarInfo([]byte(strings.Join(lines, "\n") + "\n"))
	must(t, err)
	return out
}

// hasLsHash reports whether a narinfo carries IpfsLsHash.
func hasLsHash(ni *narindex.NarInfo) bool {
	return strings.Contains(string(ni.Marshal()), "\nIpfsLsHash: ")
}

// resign sets a valid IpfsCidSig by the publisher's (trusted) key over
// whatever CID (and listing digest) ni now names: what a publisher with a
// bug, or a stolen key, would write. It uses narindex's own CID fingerprint,
// whichever version that is.
func (e *attackEnv) resign(t *testing.T, ni *narindex.NarInfo) {
	t.Helper()
	must(t, ni.SignCid(e.key))
}

// evilApp is the app's NAR as an attacker would change it, with the same
// size: bin/hello prints "EVIL" instead of "good", link points to a file
// under /tmp, and one byte of share/big.bin is flipped.
type evilApp struct {
	nar        []byte
	listing    []byte // the listing of nar, as the attacker publishes it
	trueTarget string
	evilTarget string
}

func (e *attackEnv) evilApp(t *testing.T) *evilApp {
	t.Helper()
	app := e.path["app"]
	nar := bytes.Clone(e.nar(t, app))
	l, err := narindex.ParseListing(e.listingData(t, app))
	must(t, err)
	hello := lookupNode(t, l, "bin/hello")
	span := nar[hello.NarOffset : hello.NarOffset+hello.Size]
	if i := bytes.Index(span, []byte("echo good")); i < 0 {
		t.Fatalf("bin/hello is %q", span)
	} else {
		copy(span[i:], "echo EVIL")
	}
	ev := &evilApp{trueTarget: lookupNode(t, l, "link").Target}
	ev.evilTarget = "/tmp/evil/" + strings.Repeat("e", len(ev.trueTarget)-len("/tmp/evil/"))
	if n := bytes.Count(nar, []byte(ev.trueTarget)); n != 1 {
		t.Fatalf("symlink target %q occurs %d times in the NAR", ev.trueTarget, n)
	}
	i := bytes.Index(nar, []byte(ev.trueTarget))
	copy(nar[i:], ev.evilTarget)
	big := lookupNode(t, l, "share/big.bin")
	nar[big.NarOffset+1000] ^= 0x01
	ev.nar = nar
	el, err := narindex.ListingFromNar(bytes.NewReader(nar))
	must(t, err)
	ev.listing, err = el.Marshal()
	must(t, err)
	return ev
}

func lookupNode(t *testing.T, l *narindex.Listing, p string) *narindex.ListingNode {
	t.Helper()
	n, err := l.Lookup(p)
	must(t, err)
	return n
}

// attackReport collects what one attack got served and logs it as one row
// for the lead's table when the test ends.
type attackReport struct {
	name  string
	start time.Time
	exp   exposure
	why   string // first failure
}

func startReport(t *testing.T, name string) *attackReport {
	return &attackReport{name: name, start: time.Now(), exp: exposure{}}
}

// done logs the row; defer it.
func (r *attackReport) done(t *testing.T) {
	result := "pass"
	if t.Failed() {
		result = "fail"
		if r.why == "" {
			r.why = "see test log"
		}
	}
	b, n, tg, md := r.exp.totals()
	row := fmt.Sprintf("ATTACK %s: result=%s unauthenticated_bytes=%d names=%d targets=%d elapsed=%s modes=%d",
		r.name, result, b, n, tg, time.Since(r.start).Round(time.Millisecond), md)
	if r.why != "" {
		row += fmt.Sprintf(" why=%q", r.why)
	}
	t.Log(row)
}

func (r *attackReport) note(format string, args ...any) {
	if r.why == "" {
		r.why = fmt.Sprintf(format, args...)
		if len(r.why) > 160 {
			r.why = r.why[:160] + "..."
		}
	}
}

func (r *attackReport) errorf(t *testing.T, format string, args ...any) {
	t.Helper()
	r.note(format, args...)
	t.Errorf(format, args...)
}

func (r *attackReport) fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	r.note(format, args...)
	t.Fatalf(format, args...)
}

// mount starts `ipnix mount` as startMountAt does; a mount that does not
// start (e.g. on a flag the code does not know) is named in the row.
func (r *attackReport) mount(t *testing.T, args ...string) *mount {
	t.Helper()
	m, err := tryStartMountAt(t, t.TempDir(), args...)
	if err != nil {
		msg := err.Error()
		for _, line := range strings.Split(msg, "\n") {
			if strings.Contains(line, "ipnix:") || strings.Contains(line, "Error") {
				msg = line
				break
			}
		}
		r.fatalf(t, "mount did not start: %s", strings.TrimSpace(msg))
	}
	return m
}

// mountSub mounts with one substituter and the publisher's key trusted;
// blocks come from kubo's gateway, then its RPC API.
func (r *attackReport) mountSub(t *testing.T, e *attackEnv, substituter string, extra ...string) *mount {
	t.Helper()
	return r.mount(t, append([]string{"--api", e.kubo.api, "--gateway", e.kubo.Gateway,
		"--substituter", substituter, "--trusted-public-key", e.pub}, extra...)...)
}

// exposure counts what a mount served that is not the truth, by kind and
// entry; the same entry seen twice counts once (the larger count).
type exposure map[string]int64

func (x exposure) add(kind, rel string, n int64) {
	k := kind + ":" + rel
	if n > x[k] {
		x[k] = n
	}
}

func (x exposure) merge(o exposure) {
	for k, v := range o {
		if v > x[k] {
			x[k] = v
		}
	}
}

func (x exposure) totals() (bytes, names, targets, modes int64) {
	for k, v := range x {
		switch kind, _, _ := strings.Cut(k, ":"); kind {
		case "bytes":
			bytes += v
		case "name":
			names += v
		case "target":
			targets += v
		case "mode":
			modes += v
		}
	}
	return
}

func (x exposure) any() bool { return len(x) > 0 }

func (x exposure) String() string {
	keys := make([]string, 0, len(x))
	for k := range x {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, x[k]))
	}
	return strings.Join(parts, " ")
}

// observe walks the store path at mounted (not following symlinks) and
// compares every name, type, mode, symlink target and byte it is served
// with the real store path truth. Errors (EIO, ENOENT) serve nothing and
// are returned as notes.
func observe(truth, mounted string) (exposure, []string) {
	x := exposure{}
	var notes []string
	var walk func(rel string)
	walk = func(rel string) {
		mp, tp := filepath.Join(mounted, rel), filepath.Join(truth, rel)
		mi, err := os.Lstat(mp)
		if err != nil {
			notes = append(notes, fmt.Sprintf("lstat %q: %v", rel, err))
			return
		}
		ti, terr := os.Lstat(tp)
		if terr != nil {
			x.add("name", rel, 1)
		} else if mi.Mode() != ti.Mode() {
			x.add("mode", rel, 1)
		}
		switch {
		case mi.Mode()&fs.ModeSymlink != 0:
			got, err := os.Readlink(mp)
			if err != nil {
				notes = append(notes, fmt.Sprintf("readlink %q: %v", rel, err))
				return
			}
			want, _ := os.Readlink(tp)
			if got != want {
				x.add("target", rel, 1)
			}
		case mi.Mode().IsRegular():
			got, err := os.ReadFile(mp)
			if err != nil {
				notes = append(notes, fmt.Sprintf("read %q: %v", rel, err))
				return
			}
			var want []byte
			if terr == nil && ti.Mode().IsRegular() {
				want, _ = os.ReadFile(tp)
			}
			if n := diffBytes(got, want); n > 0 {
				x.add("bytes", rel, n)
			}
		case mi.IsDir():
			entries, err := os.ReadDir(mp)
			if err != nil {
				notes = append(notes, fmt.Sprintf("readdir %q: %v", rel, err))
				return
			}
			for _, d := range entries {
				walk(filepath.Join(rel, d.Name()))
			}
		}
	}
	walk("")
	return x, notes
}

// diffBytes counts the bytes of got that are not the bytes of want at the
// same offset.
func diffBytes(got, want []byte) int64 {
	var n int64
	for i, b := range got {
		if i >= len(want) || want[i] != b {
			n++
		}
	}
	return n
}

// run executes a program with a bound.
func run(path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return string(out), err
}

// probeApp does first what a user of the app path would do, before
// anything has read all of it: look at the root, follow the symlink, run
// both programs. What differs from the truth is counted.
func probeApp(t *testing.T, truth, mounted string) exposure {
	t.Helper()
	x := exposure{}
	if fi, err := os.Lstat(mounted); err != nil {
		t.Logf("probe: lstat root: %v", err)
		return x
	} else if !fi.IsDir() {
		x.add("mode", "", 1)
		t.Logf("probe: root is served as %v", fi.Mode())
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(mounted)
			x.add("target", "", 1)
			t.Logf("probe: root is a symlink to %q", target)
		}
		return x
	}
	if got, err := os.Readlink(filepath.Join(mounted, "link")); err != nil {
		t.Logf("probe: readlink link: %v", err)
	} else if want, _ := os.Readlink(filepath.Join(truth, "link")); got != want {
		x.add("target", "link", 1)
		t.Logf("probe: link -> %q, truth %q", got, want)
	}
	for _, prog := range []string{"bin/run", "bin/hello"} {
		got, err := run(filepath.Join(mounted, prog), "probe")
		if err != nil {
			t.Logf("probe: running %s: %v %q", prog, err, got)
			continue
		}
		want, _ := run(filepath.Join(truth, prog), "probe")
		if got != want {
			// Attacker's bytes were executed; observe counts how many.
			x.add("bytes", prog, 1)
			t.Logf("probe: %s printed %q, truth %q", prog, got, want)
		}
	}
	return x
}

// checkTruth compares the mounted store path with the real one the way Nix
// and a user would: diff, types and modes, NarHash.
func checkTruth(t *testing.T, r *attackReport, truth, mounted string, narHash narindex.Hash) {
	t.Helper()
	if out, err := exec.Command("diff", "-r", "--no-dereference", truth, mounted).CombinedOutput(); err != nil {
		r.errorf(t, "diff -r --no-dereference: %v\n%s", err, firstLines(string(out), 20))
	}
	var got string
	withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) {
		out, err := exec.Command("nix", "--extra-experimental-features", "nix-command",
			"hash", "path", "--base32", "--type", "sha256", mounted).CombinedOutput()
		if err != nil {
			got = fmt.Sprintf("error: %v: %s", err, strings.TrimSpace(string(out)))
			return
		}
		got = "sha256:" + strings.TrimSpace(string(out))
	})
	if want := narHash.String(); got != want {
		r.errorf(t, "nix hash path of the mounted path: %s, narinfo NarHash %s", got, want)
	}
	a, _ := treeModesE(truth)
	if b, err := treeModesE(mounted); err != nil || a != b {
		r.errorf(t, "types, modes, sizes or targets differ (walk error %v):\ntruth:\n%s\nmounted:\n%s", err, firstLines(a, 30), firstLines(b, 30))
	}
}

// treeModesE lists every entry with its type, permission bits, size and
// symlink target, in order, and returns the walk's error instead of
// failing the test: a mount that fails closed answers EIO, which is a
// finding, not the end of the test.
func treeModesE(root string) (string, error) {
	var lines []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		line := rel + " " + fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			line += " -> " + target
		case fi.Mode().IsRegular():
			line += fmt.Sprintf(" %d", fi.Size())
		}
		lines = append(lines, line)
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n"), err
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}

// isErrno reports whether err is one of errnos.
func isErrno(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dropDentries makes the kernel forget unused dentries, negative ones
// included (needs root), so that the next lookup of a name reaches the mount.
func dropDentries(t *testing.T) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Logf("cannot drop dentries (%v): later lookups may be answered by the kernel's negative cache", err)
	}
}

// logLines returns the lines of log containing every one of want.
func logLines(log string, want ...string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		ok := line != ""
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// countingServer serves a binary cache directory over HTTP on loopback and
// counts requests by URL path. It is closed in the test's cleanup.
type countingServer struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func serveCounting(t *testing.T, dir string) *countingServer {
	t.Helper()
	c := &countingServer{hits: map[string]int{}}
	files := http.FileServer(http.Dir(dir))
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		c.mu.Lock()
		c.hits[req.URL.Path]++
		c.mu.Unlock()
		files.ServeHTTP(w, req)
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *countingServer) count(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[path]
}

// waitLogRE waits until a line of the mount's log matches re.
func waitLogRE(m *mount, re *regexp.Regexp, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		for _, line := range strings.Split(m.log.String(), "\n") {
			if re.MatchString(line) {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
