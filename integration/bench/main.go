// Command bench measures ipnix against the alternatives on this machine: it
// starts its own kubo, builds a corpus with real Nix, publishes it, and
// prints a markdown table (and writes JSON) of figures and ratios.
//
// Every figure is measured in each of --rounds rounds (at least 3 for a
// table worth quoting), ipnix and its baseline one after the other, the
// order reversed every other round. The table gives each side's median
// with its min and max, and the ratio of the two medians; the JSON keeps
// every round's figures and ratios. A cold side starts after the page,
// dentry and inode caches are dropped, and runs against a fresh mount (and
// a fresh --cache-dir where one is used).
//
//	go run ./integration/bench [--rounds 3] [--big 256MiB] [--only B1,B8] [--json FILE]
//
// Needs root (FUSE, dropping the page cache, network namespaces), Nix and
// fuse3, as the tests do.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ipnix/ipnix/integration/runenv"
)

// benchCase is one numbered case of the benchmark; it adds its own rows.
type benchCase struct {
	id  string
	run func(*bench) error
}

// cases in the order they run. B6 (peak RSS) sums up the mounts of the
// others and is added at the end.
var cases = []benchCase{
	{"B1", (*bench).b1Cold},
	{"B2", (*bench).b2Warm},
	{"B3", (*bench).b3SmallFiles},
	{"B4", (*bench).b4LazyStart},
	{"B5", (*bench).b5Stat},
	{"B7", (*bench).b7Publish},
	{"B8", (*bench).b8DiskWrites},
	{"B9", (*bench).b9Reread},
	{"B10", (*bench).b10Remote},
	{"B11", (*bench).b11Compile},
	{"B12", (*bench).b12Dedup},
}

type bench struct {
	work     string
	ipnix    string
	kuboBin  string
	kubo     *runenv.Kubo
	cache    string // file:// binary cache published into kubo at setup
	pub, sec string // signing key files' contents (pub) and path (sec)
	big      string // store path with big.bin
	bigFile  string
	bigSize  int64
	gopath   string // store path of a Go toolchain
	goFiles  int
	goBytes  int64 // bytes of its regular files
	// the compile job's program (B10, B11), written on first use, and the
	// number of standard packages its build compiles
	compileDir  string
	compilePkgs int
	memCache    int64
	rounds      int
	round       int     // the round being measured
	peak        []int64 // peak RSS of the mounts, per round
	rows        []*row
	m           *machine
	log         io.Writer
}

func main() {
	bigSize := flag.String("big", "256MiB", "size of the large file (B1, B2, B8, B9)")
	memCache := flag.String("memory-cache", "64MiB", "the mounts' --memory-cache")
	jsonOut := flag.String("json", "", "also write the results, every round's figures included, as JSON to this file")
	rounds := flag.Int("rounds", 3, "rounds of every case, ipnix and baseline alternating; the table gives medians (3 or more for a table worth quoting)")
	only := flag.String("only", "", "run only these cases, e.g. B1,B8 (default: all)")
	workParent := flag.String("work", "", "directory to put the benchmark's working directory in: kubo's repository, the NAR files, ipnix's cache directories (default: $TMPDIR or /tmp); must not be tmpfs")
	allowTmpfs := flag.Bool("allow-tmpfs", false, "run even when the working directory is on tmpfs (cold figures are then not cold)")
	flag.Parse()
	size, err := humanize.ParseBytes(*bigSize)
	if err != nil {
		fatal(fmt.Errorf("--big %q: %v", *bigSize, err))
	}
	mem, err := humanize.ParseBytes(*memCache)
	if err != nil || mem < 1<<20 {
		fatal(fmt.Errorf("--memory-cache %q: a size of at least 1MiB", *memCache))
	}
	if *rounds < 1 {
		fatal(fmt.Errorf("--rounds %d: at least one", *rounds))
	}
	selected, err := parseOnly(*only)
	if err != nil {
		fatal(err)
	}
	b := &bench{log: os.Stderr, memCache: int64(mem), rounds: *rounds, peak: make([]int64, *rounds), m: describeMachine()}
	if *rounds < 3 {
		b.logf("--rounds %d: fewer than 3 rounds, the figures are not fit to quote", *rounds)
	}
	if err := b.setup(*workParent, *allowTmpfs, int64(size)); err != nil {
		b.cleanup()
		fatal(err)
	}
	failed := false
	for _, c := range cases {
		if selected != nil && !selected[c.id] {
			continue
		}
		n := len(b.rows)
		if err := c.run(b); err != nil {
			failed = true
			b.logf("%s failed: %v", c.id, err)
			b.rows = append(b.rows[:n], &row{ID: c.id, What: "failed: " + firstLine(err.Error()), Target: "n/a"})
		}
	}
	if selected == nil || selected["B6"] {
		b.b6RSS()
	}
	b.cleanup()
	slices.SortStableFunc(b.rows, func(x, y *row) int { return caseNumber(x.ID) - caseNumber(y.ID) })
	for _, r := range b.rows {
		r.finish()
	}
	printTable(os.Stdout, b.m, b.rows, *rounds)
	if *jsonOut != "" {
		data, _ := json.MarshalIndent(struct {
			Machine *machine `json:"machine"`
			Rounds  int      `json:"rounds"`
			Rows    []*row   `json:"rows"`
		}{b.m, *rounds, b.rows}, "", "  ")
		if err := os.WriteFile(*jsonOut, data, 0o644); err != nil {
			fatal(err)
		}
	}
	if failed {
		os.Exit(1)
	}
}

// parseOnly parses --only: case ids separated by commas, in any case; nil
// when empty (run all).
func parseOnly(s string) (map[string]bool, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	known := map[string]bool{"B6": true}
	var ids []string
	for _, c := range cases {
		known[c.id] = true
		ids = append(ids, c.id)
	}
	sel := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		id := strings.ToUpper(strings.TrimSpace(f))
		if id == "" {
			continue
		}
		if !known[id] {
			return nil, fmt.Errorf("--only %q: no case %q (cases: %s, B6)", s, strings.TrimSpace(f), strings.Join(ids, ", "))
		}
		sel[id] = true
	}
	if len(sel) == 0 {
		return nil, fmt.Errorf("--only %q names no case", s)
	}
	if len(sel) == 1 && sel["B6"] {
		return nil, fmt.Errorf("--only B6: B6 is the peak RSS of the other cases' mounts; name some of them too")
	}
	return sel, nil
}

// caseNumber orders ids B1 < B2 < ... < B10 < B11.
func caseNumber(id string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "B"))
	if err != nil {
		return 1 << 20
	}
	return n
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

// setup makes the working directory, builds ipnix, starts kubo, builds the
// corpus and publishes it (untimed; B7 times publishing on fresh nodes).
func (b *bench) setup(parent string, allowTmpfs bool, bigSize int64) error {
	if parent == "" {
		parent = os.TempDir()
	}
	if t := fsType(parent); (t == "tmpfs" || t == "ramfs") && !allowTmpfs {
		return fmt.Errorf("working directory parent %s is on %s: cold reads of the NAR files, kubo's repository and the cache directories would come from memory; give --work DIR on disk (or --allow-tmpfs)", parent, t)
	}
	var err error
	if b.work, err = os.MkdirTemp(parent, "ipnix-bench-"); err != nil {
		return err
	}
	b.m.locate("NAR files, --cache-dir", b.work)
	if b.ipnix, err = runenv.BuildIpnix(b.work); err != nil {
		return err
	}
	if b.kuboBin, err = runenv.KuboBinary(); err != nil {
		return err
	}
	if out, err := exec.Command(b.kuboBin, "version").Output(); err == nil {
		b.m.Kubo = strings.Replace(strings.TrimSpace(string(out)), "ipfs version ", "kubo ", 1)
	}
	b.logf("starting kubo")
	if b.kubo, err = runenv.StartKubo(b.kuboBin, filepath.Join(b.work, "ipfs")); err != nil {
		return err
	}
	b.m.locate("kubo repository", b.kubo.Path)
	b.logf("building the corpus with Nix")
	if err := b.corpus(bigSize); err != nil {
		return err
	}
	b.m.locate("native store", "/nix/store") // made by the corpus on a fresh machine
	b.cache = filepath.Join(b.work, "cache")
	b.sec = filepath.Join(b.work, "sec")
	pubFile := filepath.Join(b.work, "pub")
	if _, err := output("nix-store", "--generate-binary-cache-key", "ipnix-bench-1", b.sec, pubFile); err != nil {
		return err
	}
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		return err
	}
	b.pub = strings.TrimSpace(string(pub))
	b.logf("publishing the corpus")
	if _, err := output(b.ipnix, "publish", "--api", b.kubo.API, "--to", b.cache, "--secret-key", b.sec, "--no-closure", b.big, b.gopath); err != nil {
		return err
	}
	_, goNar, err := b.narCid(b.gopath)
	if err != nil {
		return err
	}
	b.m.Settings = fmt.Sprintf("memory cache %s, large file %s, Go toolchain path %d files (%s of NAR)",
		humanize.IBytes(uint64(b.memCache)), humanize.IBytes(uint64(b.bigSize)), b.goFiles, humanize.IBytes(uint64(goNar)))
	return nil
}

func (b *bench) cleanup() {
	if b.kubo != nil {
		b.kubo.Stop()
	}
	if b.work != "" {
		os.RemoveAll(b.work)
	}
}

// corpus builds the store paths: a large file, and a Go toolchain of
// 10,000+ files copied into the store.
func (b *bench) corpus(bigSize int64) error {
	expr := fmt.Sprintf(`derivation {
  name = "ipnix-bench-big-%d";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "export PATH=/usr/bin:/bin; mkdir $out; head -c %d /dev/urandom > $out/big.bin" ];
}`, bigSize, bigSize)
	f := filepath.Join(b.work, "big.nix")
	if err := os.WriteFile(f, []byte(expr), 0o644); err != nil {
		return err
	}
	out, err := output("nix-build", "--no-out-link", f)
	if err != nil {
		return err
	}
	b.big = strings.TrimSpace(out)
	b.bigFile = filepath.Join(b.big, "big.bin")
	fi, err := os.Stat(b.bigFile)
	if err != nil {
		return err
	}
	b.bigSize = fi.Size()
	goroot := runtime.GOROOT()
	if goroot == "" {
		goroot = "/usr/local/go"
	}
	out, err = output("nix-store", "--add", goroot)
	if err != nil {
		return err
	}
	b.gopath = strings.TrimSpace(out)
	return filepath.Walk(b.gopath, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			b.goFiles++
			b.goBytes += fi.Size()
		}
		return err
	})
}

func output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// timed runs a command and returns its wall time.
func timed(name string, args ...string) (time.Duration, error) {
	start := time.Now()
	_, err := output(name, args...)
	return time.Since(start), err
}

// shell runs a shell command line and returns its wall time.
func shell(line string) (time.Duration, error) { return timed("sh", "-c", line) }

// dropCaches writes back dirty pages and empties the kernel's page, dentry
// and inode caches, so that "cold" means cold for native reads, kubo's
// repository and ipnix's cache directory alike.
func dropCaches() {
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// alternate runs the sides of round i: in the order given in even rounds
// and reversed in odd ones, so that no side always runs on the machine
// state the other left behind. It stops at the first error.
func alternate(i int, sides ...func() error) error {
	if i%2 == 1 {
		sides = slices.Clone(sides)
		slices.Reverse(sides)
	}
	for _, s := range sides {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// eachRound runs measure for every round, recording which round it is.
func (b *bench) eachRound(id string, measure func(i int) error) error {
	return b.eachOfRounds(id, b.rounds, measure)
}

// eachOfRounds is eachRound for a case that runs n rounds, a multiple of
// --rounds: short cases whose figures swing with this machine's host.
func (b *bench) eachOfRounds(id string, n int, measure func(i int) error) error {
	for i := range n {
		b.round = i % b.rounds
		b.logf("%s: round %d of %d", id, i+1, n)
		if err := measure(i); err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
	}
	return nil
}

func (b *bench) newRow(r row) *row {
	p := &r
	b.rows = append(b.rows, p)
	return p
}

// mount starts a fresh ipnix mount against the benchmark's kubo, on this
// machine: its blockstore is read directly (--kubo-repo), as a mount
// finds it by default through $IPFS_PATH. A later --kubo-repo in extra
// wins.
func (b *bench) mount(extra ...string) (*runenv.Mount, error) {
	return b.mountWith(nil, nil, b.kubo, append([]string{"--kubo-repo", b.kubo.Path}, extra...)...)
}

// mountWith starts a fresh mount against kubo k, the command behind wrap
// and its metrics read with client (nil: the default).
func (b *bench) mountWith(wrap []string, client *http.Client, k *runenv.Kubo, extra ...string) (*runenv.Mount, error) {
	dir, err := os.MkdirTemp(b.work, "mnt-")
	if err != nil {
		return nil, err
	}
	args := append([]string{"--api", k.API, "--gateway", k.Gateway, "--substituter", "file://" + b.cache,
		"--trusted-public-key", b.pub, "--memory-cache", humanize.IBytes(uint64(b.memCache))}, extra...)
	m, err := runenv.StartMountWrapped(wrap, b.ipnix, dir, args...)
	if err != nil {
		return nil, err
	}
	m.HTTP = client
	return m, nil
}

// stopMount stops m and records its peak RSS.
func (b *bench) stopMount(m *runenv.Mount) {
	if rss, err := runenv.PeakRSS(m.Cmd.Process.Pid); err == nil && rss > b.peak[b.round] {
		b.peak[b.round] = rss
	}
	if err := m.Stop(); err != nil {
		b.logf("%v", err)
	}
	os.Remove(m.Dir)
}

// cacheDir makes an empty directory for --cache-dir and gives the flags
// with a function that removes it.
func (b *bench) cacheDir() ([]string, func(), error) {
	dir, err := os.MkdirTemp(b.work, "cache-dir-")
	if err != nil {
		return nil, nil, err
	}
	return []string{"--cache-dir", dir, "--cache-size", "2GiB"}, func() { os.RemoveAll(dir) }, nil
}

// mountCacheDir mounts with a fresh --cache-dir; stop unmounts and
// removes the directory.
func (b *bench) mountCacheDir() (*runenv.Mount, func(), error) {
	args, done, err := b.cacheDir()
	if err != nil {
		return nil, nil, err
	}
	m, err := b.mount(args...)
	if err != nil {
		done()
		return nil, nil, err
	}
	return m, func() { b.stopMount(m); done() }, nil
}

// inMount is path's place in mount m.
func inMount(m *runenv.Mount, storePath string) string {
	return filepath.Join(m.Dir, strings.TrimPrefix(storePath, "/nix/store/"))
}

func (b *bench) narCid(storePath string) (string, int64, error) {
	cid, size, _, err := b.narInfo(storePath)
	return cid, size, err
}

// narFile is the NAR file of storePath in the benchmark's binary cache.
func (b *bench) narFile(storePath string) (string, error) {
	_, _, url, err := b.narInfo(storePath)
	return filepath.Join(b.cache, url), err
}

// narInfo reads IpfsCid, NarSize and URL from storePath's narinfo in the
// benchmark's binary cache.
func (b *bench) narInfo(storePath string) (cid string, size int64, url string, err error) {
	f, err := b.narinfoFields(storePath)
	if err != nil {
		return "", 0, "", err
	}
	fmt.Sscan(f["NarSize"], &size)
	cid, url = f["IpfsCid"], f["URL"]
	if cid == "" || size == 0 || url == "" || strings.Contains(url, "..") {
		return "", 0, "", fmt.Errorf("%s: no IpfsCid, NarSize or URL (or a URL leaving the cache)", filepath.Base(storePath))
	}
	return cid, size, url, nil
}

// narinfoFields reads the fields of storePath's narinfo in the benchmark's
// binary cache.
func (b *bench) narinfoFields(storePath string) (map[string]string, error) {
	hash := strings.SplitN(filepath.Base(storePath), "-", 2)[0]
	data, err := os.ReadFile(filepath.Join(b.cache, hash+".narinfo"))
	if err != nil {
		return nil, err
	}
	f := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			f[k] = v
		}
	}
	return f, nil
}

// gatewayFetch streams /ipfs/<cid> from gateway into w, over client (nil:
// the default).
func gatewayFetch(client *http.Client, gateway, cid string, w io.Writer) (int64, error) {
	if gateway == "" {
		return 0, fmt.Errorf("kubo gateway address unknown")
	}
	if client == nil {
		client = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", gateway+"/ipfs/"+cid, nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("gateway: %s", resp.Status)
	}
	return io.Copy(w, resp.Body)
}

func mbps(bytes int64, d time.Duration) float64 {
	return float64(bytes) / (1 << 20) / d.Seconds()
}

func boolp(v bool) *bool { return &v }

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
