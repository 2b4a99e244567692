package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ipnix/ipnix/integration/runenv"
)

// B7: publish throughput against `ipfs add` of the same NARs (into a second,
// fresh kubo so neither run finds the blocks already stored).
func (b *bench) b7Publish(kuboBin string) error {
	b.cache = filepath.Join(b.work, "cache")
	sec, pubFile := filepath.Join(b.work, "sec"), filepath.Join(b.work, "pub")
	if _, err := output("nix-store", "--generate-binary-cache-key", "ipnix-bench-1", sec, pubFile); err != nil {
		return err
	}
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		return err
	}
	b.pub = strings.TrimSpace(string(pub))
	b.logf("B7: publishing")
	dropCaches() // both sides read their input from disk
	d, err := timed(b.ipnix, "publish", "--api", b.kubo.API, "--to", b.cache, "--secret-key", sec, "--no-closure", b.big, b.gopath)
	if err != nil {
		return err
	}
	var narBytes int64
	var nars []string
	cids := map[string]bool{}
	for _, p := range []string{b.big, b.gopath} {
		cid, size, err := b.narCid(p)
		if err != nil {
			return err
		}
		narBytes += size
		cids[cid] = true
	}
	nars, _ = filepath.Glob(filepath.Join(b.cache, "nar", "*.nar"))
	k2, err := runenv.StartKubo(kuboBin, filepath.Join(b.work, "ipfs2"))
	if err != nil {
		return err
	}
	defer k2.Stop()
	var addTime time.Duration
	for _, nar := range nars {
		f, err := os.Open(nar)
		if err != nil {
			return err
		}
		dropCaches()
		start := time.Now()
		cid, err := k2.Run(f, "add", "-Q", "--cid-version=1", "--raw-leaves", "--chunker=size-262144")
		addTime += time.Since(start)
		f.Close()
		if err != nil {
			return err
		}
		if !cids[cid] {
			return fmt.Errorf("ipfs add of %s gives %s, which no narinfo carries: publish's encoding differs", nar, cid)
		}
	}
	r := mbps(narBytes, d) / mbps(narBytes, addTime)
	b.add(result{ID: "B7", What: "publish throughput (" + humanize.IBytes(uint64(narBytes)) + " of NAR)",
		Ipnix: fmt.Sprintf("%.0f MiB/s", mbps(narBytes, d)), Baseline: fmt.Sprintf("ipfs add %.0f MiB/s", mbps(narBytes, addTime)),
		Ratio: r, RatioOf: "ipnix/ipfs add throughput", Target: "≥ 0.8×", Met: boolp(r >= 0.8),
		Note: "publish also hashes, writes the NAR file and the listing; CIDs equal ipfs add's"})
	return nil
}

// B1: cold sequential read of the large file.
func (b *bench) b1Cold() error {
	cid, narSize, err := b.narCid(b.big)
	if err != nil {
		return err
	}
	rel := filepath.Join(filepath.Base(b.big), "big.bin")
	fi, err := os.Stat(filepath.Join(b.big, "big.bin"))
	if err != nil {
		return err
	}
	size := fi.Size()

	m, err := b.mount(b.diskCacheArgs()...)
	if err != nil {
		return err
	}
	dropCaches()
	dIpnix, err := shell("cat " + filepath.Join(m.Dir, rel) + " > /dev/null")
	b.stopMount(m)
	if err != nil {
		return err
	}

	dropCaches()
	start := time.Now()
	if _, err := b.gatewayFetch(cid, io.Discard); err != nil {
		return err
	}
	dGateway := time.Since(start)

	dropCaches()
	dNative, err := shell("cat " + filepath.Join(b.big, "big.bin") + " > /dev/null")
	if err != nil {
		return err
	}
	b.nativeCold = dNative

	ipnixRate := mbps(size, dIpnix)
	r := ipnixRate / mbps(narSize, dGateway)
	b.add(result{ID: "B1", What: "cold sequential read, " + humanize.IBytes(uint64(size)) + " file",
		Ipnix: fmt.Sprintf("%.0f MiB/s", ipnixRate), Baseline: fmt.Sprintf("kubo gateway stream %.0f MiB/s", mbps(narSize, dGateway)),
		Ratio: r, RatioOf: "ipnix/gateway throughput", Target: "≥ 1.0×", Met: boolp(r >= 1.0),
		Note: fmt.Sprintf("native cold read %.0f MiB/s", mbps(size, dNative))})

	dFuse, ferr := b.kuboFuseRead(cid)
	if ferr != nil {
		b.add(result{ID: "B1", What: "cold sequential read vs kubo's FUSE mount", Ipnix: fmt.Sprintf("%.0f MiB/s", ipnixRate),
			Baseline: "unavailable", RatioOf: "ipnix/kubo FUSE throughput", Target: "≥ 8×", Note: "ipfs mount failed: " + firstLine(ferr.Error())})
	} else {
		r := ipnixRate / mbps(narSize, dFuse)
		b.add(result{ID: "B1", What: "cold sequential read vs kubo's FUSE mount", Ipnix: fmt.Sprintf("%.0f MiB/s", ipnixRate),
			Baseline: fmt.Sprintf("ipfs mount %.0f MiB/s", mbps(narSize, dFuse)), Ratio: r, RatioOf: "ipnix/kubo FUSE throughput",
			Target: "≥ 8×", Met: boolp(r >= 8)})
	}
	return nil
}

// kuboFuseRead reads /ipfs/<cid> through kubo's own FUSE mount.
func (b *bench) kuboFuseRead(cid string) (time.Duration, error) {
	ipfsDir, ipnsDir, mfsDir := filepath.Join(b.work, "kubo-ipfs"), filepath.Join(b.work, "kubo-ipns"), filepath.Join(b.work, "kubo-mfs")
	for _, d := range []string{ipfsDir, ipnsDir, mfsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, err
		}
	}
	if _, err := b.kubo.Run(nil, "mount", "-f", ipfsDir, "-n", ipnsDir, "-m", mfsDir); err != nil {
		return 0, err
	}
	defer func() {
		for _, d := range []string{ipfsDir, ipnsDir, mfsDir} {
			exec.Command("fusermount", "-u", "-z", d).Run()
		}
	}()
	dropCaches()
	return shell("cat " + filepath.Join(ipfsDir, cid) + " > /dev/null")
}

// B2: warm re-read after a remount (disk cache warm) against native.
func (b *bench) b2Warm() error {
	args := b.diskCacheArgs()
	rel := filepath.Join(filepath.Base(b.big), "big.bin")
	fi, _ := os.Stat(filepath.Join(b.big, "big.bin"))
	m, err := b.mount(args...)
	if err != nil {
		return err
	}
	_, err = shell("cat " + filepath.Join(m.Dir, rel) + " > /dev/null")
	b.stopMount(m)
	if err != nil {
		return err
	}
	m, err = b.mount(args...)
	if err != nil {
		return err
	}
	dropCaches()
	before, _ := m.Metric("ipnix_fetch_bytes_total")
	d, err := shell("cat " + filepath.Join(m.Dir, rel) + " > /dev/null")
	after, _ := m.Metric("ipnix_fetch_bytes_total")
	b.stopMount(m)
	if err != nil {
		return err
	}
	r := mbps(fi.Size(), d) / mbps(fi.Size(), b.nativeCold)
	note := fmt.Sprintf("fetched %s from kubo after the remount", humanize.IBytes(uint64(after-before)))
	if len(args) == 0 {
		note += "; no disk cache in this build, so a remount starts cold"
	}
	b.add(result{ID: "B2", What: "warm re-read after remount", Ipnix: fmt.Sprintf("%.0f MiB/s", mbps(fi.Size(), d)),
		Baseline: fmt.Sprintf("native cold %.0f MiB/s", mbps(fi.Size(), b.nativeCold)), Ratio: r,
		RatioOf: "ipnix/native throughput", Target: "≥ 0.8×", Met: boolp(r >= 0.8), Note: note})
	return nil
}

// diskCacheArgs returns the disk-cache flags when this ipnix has them.
func (b *bench) diskCacheArgs() []string {
	help, _ := exec.Command(b.ipnix, "mount", "--help").CombinedOutput()
	if !strings.Contains(string(help), "--cache-dir") {
		return nil
	}
	return []string{"--cache-dir", filepath.Join(b.work, "disk-cache"), "--cache-size", "2GiB"}
}

// fullSubstitution fetches a whole NAR from kubo and unpacks it with
// nix-store --restore, as a substituter would.
func (b *bench) fullSubstitution(storePath string) (time.Duration, error) {
	cid, _, err := b.narCid(storePath)
	if err != nil {
		return 0, err
	}
	dst := filepath.Join(b.work, "restored-"+fmt.Sprint(time.Now().UnixNano()))
	defer os.RemoveAll(dst)
	dropCaches()
	start := time.Now()
	cmd := exec.Command("nix-store", "--restore", dst)
	w, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	_, ferr := b.gatewayFetch(cid, w)
	w.Close()
	werr := cmd.Wait()
	if ferr != nil {
		return 0, ferr
	}
	if werr != nil {
		return 0, werr
	}
	exec.Command("sync").Run()
	return time.Since(start), nil
}

// B3: read every file of a 10,000+ file store path, cold and warm.
func (b *bench) b3SmallFiles() error {
	files, _ := output("sh", "-c", "find "+b.gopath+" -type f | wc -l")
	readAll := func(root string) (time.Duration, error) {
		return shell("find " + root + " -type f -exec cat {} + > /dev/null")
	}
	m, err := b.mount()
	if err != nil {
		return err
	}
	root := filepath.Join(m.Dir, filepath.Base(b.gopath))
	dropCaches()
	cold, err := readAll(root)
	if err != nil {
		b.stopMount(m)
		return err
	}
	warm, err := readAll(root)
	b.stopMount(m)
	if err != nil {
		return err
	}
	dropCaches()
	nativeCold, err := readAll(b.gopath)
	if err != nil {
		return err
	}
	nativeWarm, err := readAll(b.gopath)
	if err != nil {
		return err
	}
	subst, err := b.fullSubstitution(b.gopath)
	if err != nil {
		return err
	}
	b.subst = subst
	what := "read every file of a " + strings.TrimSpace(files) + "-file path (Go toolchain)"
	r := warm.Seconds() / nativeWarm.Seconds()
	b.add(result{ID: "B3", What: what + ", warm", Ipnix: secs(warm), Baseline: "native warm " + secs(nativeWarm),
		Ratio: r, RatioOf: "ipnix/native time", Target: "≤ 1.5×", Met: boolp(r <= 1.5)})
	r = cold.Seconds() / subst.Seconds()
	b.add(result{ID: "B3", What: what + ", cold", Ipnix: secs(cold), Baseline: "full substitution " + secs(subst),
		Ratio: r, RatioOf: "ipnix/substitution time", Target: "≤ 1.2×", Met: boolp(r <= 1.2),
		Note: "native cold " + secs(nativeCold)})
	return nil
}

// B4: run a program from a large store path, cold.
func (b *bench) b4LazyStart() error {
	_, narSize, err := b.narCid(b.gopath)
	if err != nil {
		return err
	}
	m, err := b.mount()
	if err != nil {
		return err
	}
	dropCaches()
	before, _ := m.Metric("ipnix_fetch_bytes_total")
	d, err := timed(filepath.Join(m.Dir, filepath.Base(b.gopath), "bin", "go"), "version")
	after, _ := m.Metric("ipnix_fetch_bytes_total")
	b.stopMount(m)
	if err != nil {
		return err
	}
	fetched := after - before
	r := b.subst.Seconds() / d.Seconds()
	frac := float64(fetched) / float64(narSize)
	b.add(result{ID: "B4", What: "lazy start: `go version` from the Go toolchain path, cold", Ipnix: secs(d) + ", fetched " + humanize.IBytes(uint64(fetched)),
		Baseline: "full substitution " + secs(b.subst), Ratio: r, RatioOf: "substitution/ipnix time", Target: "≥ 5×, ≤ 10 % fetched",
		Met: boolp(r >= 5 && frac <= 0.10), Note: fmt.Sprintf("fetched %.1f %% of the %s NAR", 100*frac, humanize.IBytes(uint64(narSize)))})
	return nil
}

// B5: stat every file of B3's path, cold and warm.
func (b *bench) b5Stat() error {
	statAll := func(root string) (time.Duration, error) {
		return shell("find " + root + " -printf '%s %m\\n' > /dev/null")
	}
	m, err := b.mount()
	if err != nil {
		return err
	}
	root := filepath.Join(m.Dir, filepath.Base(b.gopath))
	dropCaches()
	cold, err := statAll(root)
	if err != nil {
		b.stopMount(m)
		return err
	}
	warm, err := statAll(root)
	b.stopMount(m)
	if err != nil {
		return err
	}
	dropCaches()
	nativeCold, _ := statAll(b.gopath)
	nativeWarm, err := statAll(b.gopath)
	if err != nil {
		return err
	}
	r := warm.Seconds() / nativeWarm.Seconds()
	b.add(result{ID: "B5", What: "stat every file of B3's path, warm", Ipnix: secs(warm), Baseline: "native warm " + secs(nativeWarm),
		Ratio: r, RatioOf: "ipnix/native time", Target: "≤ 1.5×", Met: boolp(r <= 1.5),
		Note: "cold: ipnix " + secs(cold) + ", native " + secs(nativeCold)})
	return nil
}

// B6: peak RSS of the mount processes against the memory cache size.
func (b *bench) b6RSS() {
	limit := b.memCache + 100<<20
	b.add(result{ID: "B6", What: "peak RSS of the mount over B1-B5", Ipnix: humanize.IBytes(uint64(b.peakRSS)),
		Baseline: "memory cache " + humanize.IBytes(uint64(b.memCache)), Ratio: float64(b.peakRSS) / float64(b.memCache),
		RatioOf: "RSS/memory cache", Target: "≤ cache + 100 MiB", Met: boolp(b.peakRSS <= limit)})
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// printTable writes the markdown table.
func printTable(w io.Writer, results []result, memCache, bigSize int64, rounds int) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "ipnix benchmark, %s, %s, %d cores, %s/%s; memory cache %s, large file %s; median of %d rounds\n\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH,
		humanize.IBytes(uint64(memCache)), humanize.IBytes(uint64(bigSize)), rounds)
	fmt.Fprintln(w, "| | measure | ipnix | baseline | ratio | target | met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range results {
		met := "n/a"
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*r.Met]
		}
		ratio := "n/a"
		if r.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f× (%s)", r.Ratio, r.RatioOf)
		}
		what := r.What
		if r.Note != "" {
			what += " — " + r.Note
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.ID, what, r.Ipnix, r.Baseline, ratio, r.Target, met)
	}
}
