package integration

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Prefetch for offline use: `ipnix prefetch` fetches the published
// closure into a cache directory; with kubo stopped (every IPFS source
// gone; the substituter is a local directory and stays), a second
// prefetch fetches nothing, and a mount on that cache directory, its
// --api and --gateway dead, passes the differential test (every file
// of the closure compared with the original tree) without fetching a
// block. `ipnix cache stats` reports the closure complete before and
// after, and gc keeps it.
func TestPrefetchOffline(t *testing.T) {
	p := publishClosure(t)
	dir := t.TempDir()
	common := []string{"--cache-dir", dir, "--cache-size", "1GiB", "--substituter", "file://" + p.cache, "--trusted-public-key", p.pub}
	sources := []string{"--api", p.kubo.api, "--gateway", p.kubo.Gateway}
	top := filepath.Base(p.closure.top)

	prefetch := func(t *testing.T) (fetched string) {
		t.Helper()
		out, err := ipnixCmd(t, nil, append(append(append([]string{"prefetch"}, sources...), common...), p.closure.top)...)
		if err != nil {
			t.Fatalf("ipnix prefetch: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`ipnix prefetch: 4 store paths in 1 closure, \d+ blocks \([^)]*\): fetched (\d+ blocks? \([^)]*\))`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no summary line for 4 store paths in the output:\n%s", out)
		}
		t.Logf("prefetch:\n%s", out)
		return m[1]
	}
	stats := func(t *testing.T) string {
		t.Helper()
		out, err := ipnixCmd(t, nil, "cache", "stats", "--cache-dir", dir)
		if err != nil {
			t.Fatalf("ipnix cache stats: %v\n%s", err, out)
		}
		return out
	}
	complete := func(t *testing.T, when string) {
		t.Helper()
		out := stats(t)
		if !strings.Contains(out, "prefetched closures: 1\n") || !strings.Contains(out, "  "+top+": complete;") {
			t.Fatalf("cache stats %s: the closure of %s is not reported complete:\n%s", when, top, out)
		}
	}

	if got := prefetch(t); strings.HasPrefix(got, "0 blocks") {
		t.Fatalf("the first prefetch fetched %s", got)
	}
	complete(t, "after the prefetch")

	p.kubo.Stop()
	if got := prefetch(t); got != "0 blocks (0 B)" {
		t.Fatalf("the second prefetch, every IPFS source stopped, fetched %s", got)
	}

	m := startMount(t, append(append([]string{}, sources...), common...)...)
	t.Run("gc-refused-while-mounted", func(t *testing.T) {
		out, err := ipnixCmd(t, nil, "cache", "gc", "--cache-dir", dir, "--keep-recent", "0s")
		if err == nil || !strings.Contains(out, "in use") {
			t.Fatalf("gc with a mount on the directory: %v\n%s", err, out)
		}
		if out := stats(t); !strings.Contains(out, "(in use by a running mount") {
			t.Errorf("cache stats does not say the directory is in use:\n%s", out)
		}
	})
	checkMountedClosure(t, p, m)
	t.Run("nothing-fetched", func(t *testing.T) {
		if n := m.metric(t, "ipnix_fetch_blocks_total"); n != 0 {
			t.Errorf("the offline mount fetched %d blocks", n)
		}
		if n := m.metric(t, "ipnix_disk_cache_hits_total"); n == 0 {
			t.Error("no disk cache hits: where did the bytes come from?")
		}
	})
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	// The mount made local copies of the verified files and dropped the
	// blocks they hold, but not the pinned ones.
	complete(t, "after the mount")

	out, err := ipnixCmd(t, nil, "cache", "gc", "--cache-dir", dir, "--keep-recent", "0s")
	if err != nil || !strings.Contains(out, "ipnix cache gc: freed ") {
		t.Fatalf("ipnix cache gc: %v\n%s", err, out)
	}
	t.Logf("gc: %s", out)
	complete(t, "after gc")
	t.Logf("cache stats after gc:\n%s", stats(t))
	out, err = ipnixCmd(t, nil, "cache", "gc", "--cache-dir", dir, "--keep-recent", "0s", "--forget", p.closure.top)
	if err != nil || !strings.Contains(out, "forgot closure "+top) {
		t.Fatalf("ipnix cache gc --forget: %v\n%s", err, out)
	}
	if out := stats(t); !strings.Contains(out, "prefetched closures: 0\n") || !strings.Contains(out, "blocks: 0 (0 B)") {
		t.Fatalf("after forgetting the only closure and gc:\n%s", out)
	}
}
