// Command bench measures ipnix against the alternatives on this machine: it
// starts its own kubo, builds a corpus with real Nix, publishes it, and
// prints a markdown table (and writes JSON) of figures and ratios. Each
// round measures every case on both sides, one after the other and from
// the same cache state (cold cases drop the page cache before each side);
// the table gives, per row, the round with the median ratio and lists the
// ratios of all rounds.
//
//	go run ./integration/bench [--rounds 3] [--big 256MiB] [--json FILE]
//
// Needs root (FUSE, dropping the page cache), Nix and fuse3, as the tests do.
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
	"sort"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ipnix/ipnix/integration/runenv"
)

// result is one row of the table.
type result struct {
	ID       string  `json:"id"`
	What     string  `json:"what"`
	Ipnix    string  `json:"ipnix"`
	Baseline string  `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	RatioOf  string  `json:"ratio_of"` // how the ratio reads
	Target   string  `json:"target"`
	Met      *bool   `json:"met,omitempty"`
	Note     string  `json:"note,omitempty"`
}

type bench struct {
	work     string
	ipnix    string
	kubo     *runenv.Kubo
	cache    string
	pub      string
	big      string // store path with big.bin
	gopath   string // store path of a Go toolchain
	memCache int64
	results  []result
	peakRSS  int64
	// Measured once, used by later rows.
	nativeCold time.Duration // cold native read of the large file
	subst      time.Duration // full substitution of the Go toolchain path
	log        io.Writer
}

func main() {
	bigSize := flag.String("big", "256MiB", "size of the large file for B1/B2")
	jsonOut := flag.String("json", "", "also write the results as JSON to this file")
	rounds := flag.Int("rounds", 3, "rounds of every case on both sides; the table gives the median")
	flag.Parse()
	size, err := humanize.ParseBytes(*bigSize)
	if err != nil {
		fatal(err)
	}
	if *rounds < 1 {
		fatal(fmt.Errorf("--rounds %d: at least one", *rounds))
	}
	var all [][]result
	for i := range *rounds {
		b := &bench{log: os.Stderr, memCache: 64 << 20}
		b.logf("round %d of %d", i+1, *rounds)
		if err := b.run(int64(size)); err != nil {
			fatal(err)
		}
		all = append(all, b.results)
	}
	results := medianRows(all)
	printTable(os.Stdout, results, 64<<20, int64(size), *rounds)
	if *jsonOut != "" {
		data, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, data, 0o644); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "bench: "+format+"\n", args...)
}

func (b *bench) run(bigSize int64) error {
	var err error
	if b.work, err = os.MkdirTemp("", "ipnix-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.work)
	if b.ipnix, err = runenv.BuildIpnix(b.work); err != nil {
		return err
	}
	kuboBin, err := runenv.KuboBinary()
	if err != nil {
		return err
	}
	b.logf("starting kubo")
	if b.kubo, err = runenv.StartKubo(kuboBin, filepath.Join(b.work, "ipfs")); err != nil {
		return err
	}
	defer b.kubo.Stop()

	b.logf("building the corpus with Nix")
	if err := b.corpus(bigSize); err != nil {
		return err
	}
	if err := b.b7Publish(kuboBin); err != nil {
		return err
	}
	steps := []func() error{b.b1Cold, b.b2Warm, b.b3SmallFiles, b.b4LazyStart, b.b5Stat}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	b.b6RSS()
	return nil
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
	goroot := runtime.GOROOT()
	if goroot == "" {
		goroot = "/usr/local/go"
	}
	out, err = output("nix-store", "--add", goroot)
	if err != nil {
		return err
	}
	b.gopath = strings.TrimSpace(out)
	return nil
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

// dropCaches empties the kernel's page, dentry and inode caches so that
// "cold" means cold for native reads too.
func dropCaches() {
	exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// mount starts a fresh ipnix mount of the benchmark cache.
func (b *bench) mount(extra ...string) (*runenv.Mount, error) {
	dir, err := os.MkdirTemp(b.work, "mnt-")
	if err != nil {
		return nil, err
	}
	args := append([]string{"--api", b.kubo.API, "--gateway", b.kubo.Gateway, "--substituter", "file://" + b.cache,
		"--trusted-public-key", b.pub, "--memory-cache", humanize.IBytes(uint64(b.memCache))}, extra...)
	return runenv.StartMount(b.ipnix, dir, args...)
}

// stopMount stops m and records its peak RSS.
func (b *bench) stopMount(m *runenv.Mount) {
	if rss, err := runenv.PeakRSS(m.Cmd.Process.Pid); err == nil && rss > b.peakRSS {
		b.peakRSS = rss
	}
	if err := m.Stop(); err != nil {
		b.logf("%v", err)
	}
}

func (b *bench) narCid(storePath string) (string, int64, error) {
	hash := strings.SplitN(filepath.Base(storePath), "-", 2)[0]
	data, err := os.ReadFile(filepath.Join(b.cache, hash+".narinfo"))
	if err != nil {
		return "", 0, err
	}
	var cid string
	var size int64
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "IpfsCid: "); ok {
			cid = v
		}
		if v, ok := strings.CutPrefix(line, "NarSize: "); ok {
			fmt.Sscan(v, &size)
		}
	}
	return cid, size, nil
}

// gatewayFetch streams /ipfs/<cid> from kubo's gateway into w.
func (b *bench) gatewayFetch(cid string, w io.Writer) (int64, error) {
	if b.kubo.Gateway == "" {
		return 0, fmt.Errorf("kubo gateway address unknown")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.kubo.Gateway+"/ipfs/"+cid, nil)
	resp, err := http.DefaultClient.Do(req)
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

func (b *bench) add(r result) {
	b.results = append(b.results, r)
	b.logf("%s %s: ipnix %s | baseline %s | ratio %.2f (%s)", r.ID, r.What, r.Ipnix, r.Baseline, r.Ratio, r.RatioOf)
}

// medianRows gives, for each row (the same order in every round), the
// round with the median ratio, its note listing every round's ratio.
func medianRows(all [][]result) []result {
	out := make([]result, len(all[0]))
	for i := range out {
		var rows []result
		for _, r := range all {
			if i < len(r) {
				rows = append(rows, r[i])
			}
		}
		sort.Slice(rows, func(a, b int) bool { return rows[a].Ratio < rows[b].Ratio })
		m := rows[len(rows)/2]
		if len(rows) > 1 && m.Ratio != 0 {
			var rs []string
			for _, r := range rows {
				rs = append(rs, fmt.Sprintf("%.2f", r.Ratio))
			}
			note := fmt.Sprintf("median of %d rounds (ratios %s)", len(rows), strings.Join(rs, ", "))
			if m.Note != "" {
				note = m.Note + "; " + note
			}
			m.Note = note
		}
		out[i] = m
	}
	return out
}
