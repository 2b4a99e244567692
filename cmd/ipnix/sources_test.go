package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLocalSources(t *testing.T) {
	for u, want := range map[string]bool{
		"http://127.0.0.1:8080":      true,
		"http://127.1.2.3:8080/":     true,
		"http://[::1]:8080":          true,
		"http://localhost:8080":      true,
		"https://LOCALHOST":          true,
		"http://192.0.2.1:8080":      false,
		"https://ipfs.io":            false,
		"http://localhost.evil.com/": false,
		"http://[::ffff:1.2.3.4]/":   false,
		"not a url\x7f":              false,
	} {
		if got := loopbackURL(u); got != want {
			t.Errorf("loopbackURL(%q) = %v, want %v", u, got, want)
		}
	}
	for addr, want := range map[string]bool{
		"/ip4/127.0.0.1/tcp/5001":     true,
		"/ip6/::1/tcp/5001":           true,
		"/unix/run/ipfs.sock":         true,
		"http://127.0.0.1:5001":       true,
		"/ip4/10.0.0.7/tcp/5001":      false,
		"/dns/ipfs.example/tcp/5001":  false,
		"https://kubo.example:5001":   false,
		"/not/a/multiaddr/ at all \n": false,
	} {
		if got := localKubo(addr); got != want {
			t.Errorf("localKubo(%q) = %v, want %v", addr, got, want)
		}
	}
}

// With --cache-dir, blocks go to disk only when a source is remote
// (auto), or when asked (always); never keeps none.
func TestDiskBlocksDecision(t *testing.T) {
	const deadLocal = "http://127.0.0.1:1" // refuses at once
	for _, tc := range []struct {
		name     string
		mode     diskBlocks
		api      string
		gateways []string
		want     bool
	}{
		{"local kubo", diskBlocksAuto, deadLocal, nil, false},
		{"local kubo, zero value", "", deadLocal, nil, false},
		{"local kubo and gateway", diskBlocksAuto, deadLocal, []string{"http://127.0.0.1:2"}, false},
		{"remote gateway", diskBlocksAuto, deadLocal, []string{"http://192.0.2.1:8080"}, true},
		{"remote kubo", diskBlocksAuto, "/ip4/192.0.2.1/tcp/5001", []string{"http://127.0.0.1:2"}, true},
		{"always", diskBlocksAlways, deadLocal, []string{"http://127.0.0.1:2"}, true},
		{"never", diskBlocksNever, deadLocal, []string{"http://192.0.2.1:8080"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond) // nothing answers
			defer cancel()
			st, err := openBlocks(ctx, blockFlags{API: tc.api, Gateways: tc.gateways, BlockTimeout: time.Second,
				CacheDir: dir, DiskBytes: 1 << 20, DiskBlocks: tc.mode, MemoryBytes: 1 << 20}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if got := st.disk != nil; got != tc.want {
				t.Fatalf("blocks kept on disk: %v, want %v (remote sources %v)", got, tc.want, st.remote)
			}
			if _, err := os.Stat(filepath.Join(dir, "blocks")); !tc.want && err == nil {
				t.Fatal("a block store was made where none is kept")
			}
		})
	}
}

func TestDiskBlocksArgs(t *testing.T) {
	base := []string{"--substituter", "file:///c", "--trusted-public-key", testKey}
	checkMountArgs(t, append(base, "/mnt"), func(c *mountConfig) bool { return c.DiskBlocks == diskBlocksAuto }, "")
	checkMountArgs(t, append(base, "--disk-blocks", "always", "/mnt"), func(c *mountConfig) bool { return c.DiskBlocks == diskBlocksAlways }, "")
	checkMountArgs(t, append(base, "-o", "disk-blocks=never", "/mnt"), func(c *mountConfig) bool { return c.DiskBlocks == diskBlocksNever }, "")
	checkMountArgs(t, append(base, "--disk-blocks", "sometimes", "/mnt"), nil, `"sometimes" is not one of auto, always, never`)
	checkMountArgs(t, append(base, "-o", "disk-blocks", "/mnt"), nil, "needs a value")
}

// Source addresses come from flags and -o: any string is classified,
// never a panic, and only what names this machine counts as local.
func FuzzLocalSources(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:8080", "http://[::1]:1", "/unix/x", "/ip4/127.0.0.1/tcp/5001", "http://localhost", "https://ipfs.io", "", "%", "/ip6zone/x/ip6/::1/tcp/1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if loopbackURL(s) {
			p, err := url.Parse(s)
			if err != nil {
				t.Fatalf("%q counted as loopback but does not parse", s)
			}
			h := p.Hostname()
			if ip := net.ParseIP(h); !strings.EqualFold(h, "localhost") && (ip == nil || !ip.IsLoopback()) {
				t.Fatalf("%q counted as loopback: host %q", s, h)
			}
		}
		localKubo(s)
		var d diskBlocks
		if (diskBlocksValue{&d}).Set(s) == nil && d != diskBlocksAuto && d != diskBlocksAlways && d != diskBlocksNever {
			t.Fatalf("--disk-blocks %q accepted as %q", s, d)
		}
	})
}

// By default the blockstore read directly is that of the repository the
// ipfs command would use, only when its api file names the kubo asked
// and that kubo is on this machine; --kubo-repo names one or none.
func TestKuboRepoFound(t *testing.T) {
	repo := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(repo, "api"), []byte("/ip4/127.0.0.1/tcp/45123\n"), 0o644))
	must(os.MkdirAll(filepath.Join(repo, "blocks"), 0o755))
	must(os.WriteFile(filepath.Join(repo, "blocks", "SHARDING"), []byte("/repo/flatfs/shard/v1/next-to-last/2\n"), 0o644))
	// Another repository, named explicitly: no api file needed.
	other := t.TempDir()
	must(os.MkdirAll(filepath.Join(other, "blocks"), 0o755))
	must(os.WriteFile(filepath.Join(other, "blocks", "SHARDING"), []byte("/repo/flatfs/shard/v1/next-to-last/2\n"), 0o644))
	t.Setenv("IPFS_PATH", repo)
	quiet := slog.New(slog.DiscardHandler)
	// found names the repository whose blockstore localBlockstore opened.
	found := func(f blockFlags, haveKubo bool) (string, error) {
		bs, err := localBlockstore(f, haveKubo, quiet)
		if bs == nil {
			return "", err
		}
		dir, ok := strings.CutPrefix(bs.String(), "kubo blockstore ")
		if !ok || filepath.Base(dir) != "blocks" {
			t.Fatalf("blockstore %q", bs)
		}
		return filepath.Dir(dir), err
	}
	for _, tc := range []struct {
		flags    blockFlags
		haveKubo bool
		want     string
	}{
		{blockFlags{}, true, repo}, // --api from $IPFS_PATH/api
		{blockFlags{API: "/ip4/127.0.0.1/tcp/45123"}, true, repo},
		{blockFlags{API: "http://127.0.0.1:45123"}, true, repo},
		{blockFlags{API: "/ip4/127.0.0.1/tcp/45124"}, true, ""}, // another kubo
		{blockFlags{API: "http://192.0.2.1:45123"}, true, ""},   // not on this machine
		{blockFlags{Gateways: []string{"http://127.0.0.1:8080"}}, false, ""},
		{blockFlags{KuboRepo: "none"}, true, ""},
		{blockFlags{KuboRepo: other, API: "http://192.0.2.1:5001"}, true, other},
	} {
		got, err := found(tc.flags, tc.haveKubo)
		if err != nil || got != tc.want {
			t.Errorf("localBlockstore(%+v, %v) opened %q, %v; want %q", tc.flags, tc.haveKubo, got, err, tc.want)
		}
	}
	// A repository without a flatfs blockstore is not used by default.
	must(os.Remove(filepath.Join(repo, "blocks", "SHARDING")))
	if got, err := found(blockFlags{}, true); got != "" || err != nil {
		t.Errorf("a repository without blocks/SHARDING: %q, %v", got, err)
	}
	// Named explicitly, it is an error that says so.
	if _, err := openBlocks(context.Background(), blockFlags{API: "http://127.0.0.1:1", KuboRepo: repo, BlockTimeout: time.Second, MemoryBytes: 1 << 20}, quiet); err == nil || !strings.Contains(err.Error(), "--kubo-repo") || !strings.Contains(err.Error(), "no flatfs blockstore") {
		t.Errorf("--kubo-repo without a blockstore: %v", err)
	}
}
