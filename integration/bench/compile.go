package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ipnix/ipnix/integration/runenv"
)

// The compile job of B11 (and B10): `go build` of a small program that
// imports a handful of standard packages, with an empty build cache, so
// that the toolchain reads the sources of every package they need and
// runs its compiler and linker from GOROOT.
const (
	compileMod = "module ipnixbench/compile\n\ngo 1.21\n"
	compileSrc = `package main

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.Sum256([]byte(r.URL.Path))
		zw := gzip.NewWriter(w)
		defer zw.Close()
		json.NewEncoder(zw).Encode(map[string]any{"path": r.URL.Path, "sum": fmt.Sprintf("%x", sum), "at": time.Now()})
	})
	fmt.Fprintln(os.Stderr, strings.ToUpper("listening on :8080"))
	http.ListenAndServe(":8080", nil)
}
`
	compileImports = "fmt, net/http, encoding/json, compress/gzip, crypto/sha256, os, strings, time"
)

// compileResult is one cold run of the compile job through a mount.
type compileResult struct {
	took      time.Duration
	atEnd     int64 // bytes fetched by the time the build ended
	fetched   int64 // bytes fetched once the mount had gone quiet
	walks     int64 // ipnix_background_walks_total
	walkBytes int64 // ipnix_background_bytes_total
	ahead     int64 // ipnix_readahead_blocks_total (0 without read-ahead)
	evicted   int64 // ipnix_memory_cache_evictions_total: blocks that may be fetched again
	unread    int64 // ipnix_memory_cache_evicted_unread_total: read-ahead wasted
	said      string
}

// compileProgram writes the compile job's program once and gives its
// directory, with the number of packages its build compiles (the standard
// packages it needs, counted with the native toolchain).
func (b *bench) compileProgram() (string, int, error) {
	if b.compileDir != "" {
		return b.compileDir, b.compilePkgs, nil
	}
	dir := filepath.Join(b.work, "compile-src")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(compileMod), 0o644); err != nil {
		return "", 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(compileSrc), 0o644); err != nil {
		return "", 0, err
	}
	scratch, err := os.MkdirTemp(b.work, "compile-list-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(scratch)
	cmd := exec.Command(filepath.Join(b.gopath, "bin", "go"), "list", "-deps", "-f", "{{if .Standard}}{{.ImportPath}}{{end}}", ".")
	cmd.Dir, cmd.Env = dir, compileEnv(b.gopath, scratch)
	out, err := cmd.Output()
	if err != nil {
		return "", 0, fmt.Errorf("go list -deps of the compile job: %v%s", err, stderrOf(err))
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	b.compileDir, b.compilePkgs = dir, n
	return dir, n, nil
}

// compileEnv is the environment of the compile job with the toolchain at
// goroot: nothing of this process's Go settings, a build cache, GOPATH and
// home of its own under scratch, no network and no toolchain switch. cgo
// is off so that the job reads the toolchain only, not a C compiler.
func compileEnv(goroot, scratch string) []string {
	return []string{
		"PATH=/usr/bin:/bin",
		"HOME=" + scratch,
		"TMPDIR=" + scratch,
		"GOROOT=" + goroot,
		"GOCACHE=" + filepath.Join(scratch, "gocache"),
		"GOPATH=" + filepath.Join(scratch, "gopath"),
		"GOENV=off",
		"GOFLAGS=",
		"GOTOOLCHAIN=local",
		"GOPROXY=off",
		"GOWORK=off",
		"CGO_ENABLED=0",
	}
}

// goBuild runs the compile job with the toolchain at goroot, its go
// command run from there, with a fresh build cache, and gives its wall
// time and what it wrote on stderr (nothing, when all is well). A build
// that tries to write into a read-only GOROOT fails, and says where.
func (b *bench) goBuild(goroot string) (time.Duration, string, error) {
	dir, _, err := b.compileProgram()
	if err != nil {
		return 0, "", err
	}
	scratch, err := os.MkdirTemp(b.work, "compile-")
	if err != nil {
		return 0, "", err
	}
	defer os.RemoveAll(scratch)
	cmd := exec.Command(filepath.Join(goroot, "bin", "go"), "build", "-o", filepath.Join(scratch, "prog"), ".")
	cmd.Dir, cmd.Env = dir, compileEnv(goroot, scratch)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	d := time.Since(start)
	said := strings.TrimSpace(stderr.String())
	if err != nil {
		return d, said, fmt.Errorf("go build with GOROOT=%s: %v\n%s", goroot, err, said)
	}
	return d, said, nil
}

// compileCold runs the compile job cold through a fresh mount made by
// mount (with extra flags): the caches dropped, GOROOT the toolchain's
// store path as seen through the mount. The bytes fetched are read when
// the build ends and again once the mount has gone quiet (a background
// fetch may go on after the job).
func (b *bench) compileCold(mount func(extra ...string) (*runenv.Mount, error), extra ...string) (compileResult, error) {
	var r compileResult
	m, err := mount(extra...)
	if err != nil {
		return r, err
	}
	defer b.stopMount(m)
	before, err := m.Metric("ipnix_fetch_bytes_total")
	if err != nil {
		return r, err
	}
	goroot := inMount(m, b.gopath)
	dropCaches()
	r.took, r.said, err = b.goBuild(goroot)
	if err != nil {
		return r, err
	}
	end, err := m.Metric("ipnix_fetch_bytes_total")
	if err != nil {
		return r, err
	}
	quiet, err := quietMetric(m, "ipnix_fetch_bytes_total", time.Second, 30*time.Second)
	if err != nil {
		return r, err
	}
	r.atEnd, r.fetched = end-before, quiet-before
	if r.walks, err = m.Metric("ipnix_background_walks_total"); err != nil {
		return r, err
	}
	if r.walkBytes, err = m.Metric("ipnix_background_bytes_total"); err != nil {
		return r, err
	}
	r.ahead, _ = m.Metric("ipnix_readahead_blocks_total") // not served with --readahead 0
	if r.unread, err = m.Metric("ipnix_memory_cache_evicted_unread_total"); err != nil {
		return r, err
	}
	if r.evicted, err = m.Metric("ipnix_memory_cache_evictions_total"); err != nil {
		return r, err
	}
	// The go command took GOROOT from the environment, not from where it
	// was installed: check it, after the measurement.
	cmd := exec.Command(filepath.Join(goroot, "bin", "go"), "env", "GOROOT")
	scratch, err := os.MkdirTemp(b.work, "compile-env-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(scratch)
	cmd.Env = compileEnv(goroot, scratch)
	out, err := cmd.Output()
	if err != nil {
		return r, fmt.Errorf("go env GOROOT through the mount: %v%s", err, stderrOf(err))
	}
	if got := strings.TrimSpace(string(out)); got != goroot {
		return r, fmt.Errorf("the go command through the mount used GOROOT %s, not %s", got, goroot)
	}
	return r, nil
}

// quietMetric polls metric name of m until it has not moved for quiet, at
// most limit, and gives its value then.
func quietMetric(m *runenv.Mount, name string, quiet, limit time.Duration) (int64, error) {
	last, err := m.Metric(name)
	if err != nil {
		return 0, err
	}
	deadline, since := time.Now().Add(limit), time.Now()
	for time.Now().Before(deadline) && time.Since(since) < quiet {
		time.Sleep(200 * time.Millisecond)
		v, err := m.Metric(name)
		if err != nil {
			return 0, err
		}
		if v != last {
			last, since = v, time.Now()
		}
	}
	return last, nil
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return "\n" + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// compileRows are the rows of the compile job in one case: its time with
// read-ahead against its time without, and the bytes fetched with
// read-ahead against the bytes without (the blocks the job touched).
type compileRows struct {
	speed, bytes *row
}

func (b *bench) newCompileRows(id, where string) (compileRows, error) {
	_, pkgs, err := b.compileProgram()
	if err != nil {
		return compileRows{}, err
	}
	_, goNar, err := b.narCid(b.gopath)
	if err != nil {
		return compileRows{}, err
	}
	what := fmt.Sprintf("compile job%s: `go build` of a program importing %s (%d std packages), empty GOCACHE, GOROOT through the mount, cold",
		where, compileImports, pkgs)
	c := compileRows{
		speed: b.newRow(row{ID: id, What: what + ": time", Ipnix: figure{Unit: "s"},
			Baseline: &figure{Label: "with --readahead 0", Unit: "s"}, RatioOf: "time with read-ahead/without",
			Target: "≤ 1×", meets: func(r *row) bool { return r.Ratio <= 1 }}),
		bytes: b.newRow(row{ID: id, What: "the same job" + where + ": bytes fetched (read once the mount is quiet)", Ipnix: figure{Unit: "B"},
			Baseline: &figure{Label: "with --readahead 0 (blocks touched)", Unit: "B"}, RatioOf: "fetched/floor",
			Target: "≤ 1.1×", meets: func(r *row) bool { return r.Ratio <= 1.1 },
			Note: "NAR of the toolchain " + humanize.IBytes(uint64(goNar))}),
	}
	c.bytes.post = func(r *row) string {
		return fmt.Sprintf("floor %.1f %% of the NAR, fetched %.1f %%", 100*r.Baseline.Median/float64(goNar), 100*r.Ipnix.Median/float64(goNar))
	}
	return c, nil
}

// withReadahead records a run with the default flags.
func (c compileRows) withReadahead(r compileResult) {
	c.speed.ipnix(r.took.Seconds())
	c.bytes.ipnix(float64(r.fetched))
	c.bytes.extra("fetched by the build's end", "B", float64(r.atEnd))
	c.bytes.extra("background walks", "n", float64(r.walks))
	c.bytes.extra("background bytes", "B", float64(r.walkBytes))
	c.bytes.extra("read-ahead blocks", "n", float64(r.ahead))
	c.bytes.extra("memory-cache evictions", "n", float64(r.evicted))
	c.bytes.extra("of them read-ahead never read", "n", float64(r.unread))
	c.said(r)
}

// withoutReadahead records a run with --readahead 0.
func (c compileRows) withoutReadahead(r compileResult) {
	c.speed.base(r.took.Seconds())
	c.bytes.base(float64(r.fetched))
	c.bytes.extra("memory-cache evictions with --readahead 0 (the floor counts blocks fetched again)", "n", float64(r.evicted))
	c.said(r)
}

// said notes, once, what a successful build wrote on stderr.
func (c compileRows) said(r compileResult) {
	if r.said != "" && !strings.Contains(c.speed.Note, "go build said") {
		c.speed.note("go build said: " + firstLine(r.said))
	}
}

// B11: the compile job reading its toolchain from the mount, cold: bytes
// fetched with the default read-ahead against the blocks it touches (the
// same run with --readahead 0), and its time with read-ahead against the
// time without and against native (the same build with GOROOT the store
// path itself).
func (b *bench) b11Compile() error {
	c, err := b.newCompileRows("B11", "")
	if err != nil {
		return err
	}
	native := b.newRow(row{ID: "B11", What: "the same job: time against native (GOROOT the store path itself)", Ipnix: figure{Unit: "s"},
		Baseline: &figure{Label: "native cold", Unit: "s"}, RatioOf: "ipnix/native time", Target: "n/a"})
	return b.eachRound("B11", func(i int) error {
		return alternate(i,
			func() error {
				r, err := b.compileCold(b.mount)
				c.withReadahead(r)
				native.ipnix(r.took.Seconds())
				return err
			},
			func() error {
				r, err := b.compileCold(b.mount, "--readahead", "0")
				c.withoutReadahead(r)
				return err
			},
			func() error {
				dropCaches()
				d, said, err := b.goBuild(b.gopath)
				native.base(d.Seconds())
				c.said(compileResult{said: said})
				return err
			})
	})
}
