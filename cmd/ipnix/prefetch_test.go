package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/cache"
	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/prefetch"
)

// rawCid names a block no source here has.
func rawCid(t *testing.T) cid.Cid {
	c, err := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum([]byte("ipnix test block"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// countConns listens on loopback and counts connections (closing each).
func countConns(t *testing.T) (port int, n *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n = &atomic.Int64{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).Port, n
}

// With --gateway and no --api, the gateways are the only sources: no kubo
// API is built, pinged or asked, not even the default one. With --api as
// well, kubo comes after them.
func TestGatewayOnlySources(t *testing.T) {
	port, conns := countConns(t)
	ipfsPath := t.TempDir()
	os.WriteFile(filepath.Join(ipfsPath, "api"), []byte("/ip4/127.0.0.1/tcp/"+strconv.Itoa(port)), 0o600)
	t.Setenv("IPFS_PATH", ipfsPath)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()

	st, err := openBlocks(ctx, blockFlags{Gateways: []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}, BlockTimeout: time.Second, MemoryBytes: 1 << 20}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(st.names, ", "); got != "gateway http://127.0.0.1:1, gateway http://127.0.0.1:2" {
		t.Fatalf("gateway-only sources: %s", got)
	}
	if _, err := st.mem.GetBlock(ctx, rawCid(t)); err == nil {
		t.Fatal("a block came from dead gateways")
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("%d connections to the kubo API of $IPFS_PATH with only --gateway given", n)
	}

	// The trap works: with no --gateway, the default API is asked.
	st, err = openBlocks(ctx, blockFlags{BlockTimeout: time.Second, MemoryBytes: 1 << 20}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n == 0 || !strings.Contains(strings.Join(st.names, ", "), "kubo http://127.0.0.1:"+strconv.Itoa(port)) {
		t.Fatalf("default kubo API: %d connections, sources %v", n, st.names)
	}
	st, err = openBlocks(ctx, blockFlags{API: "http://127.0.0.1:3", Gateways: []string{"http://127.0.0.1:1"}, BlockTimeout: time.Second, MemoryBytes: 1 << 20}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(st.names, ", "); got != "gateway http://127.0.0.1:1, kubo http://127.0.0.1:3" {
		t.Fatalf("--gateway and --api: %s", got)
	}
}

// Ranged fetches go to the first gateway until one of them fails there,
// then to the next; a cancelled fetch moves nothing.
func TestGatewayPick(t *testing.T) {
	var gws []*fetch.Gateway
	for _, u := range []string{"http://127.0.0.1:1", "http://127.0.0.1:2"} {
		gw, _ := fetch.NewGateway(u, time.Second)
		gws = append(gws, gw)
	}
	p := &gatewayPick{gws: gws}
	i, gw := p.get()
	if i != 0 || gw != gws[0] {
		t.Fatal("does not start at the first gateway")
	}
	p.failed(i, context.Canceled)
	p.failed(i, nil)
	if i, _ := p.get(); i != 0 {
		t.Fatal("moved on after a cancelled or good fetch")
	}
	p.failed(0, errors.New("refused"))
	p.failed(0, errors.New("refused, from a fetch that started at the same time"))
	if i, _ := p.get(); i != 1 {
		t.Fatalf("after failures of gateway 0: at %d, want 1", i)
	}
	p.failed(1, fetch.ErrHashMismatch)
	if i, _ := p.get(); i != 0 {
		t.Fatal("does not wrap around")
	}
	one := &gatewayPick{gws: gws[:1]}
	one.failed(0, errors.New("x"))
	if i, _ := one.get(); i != 0 {
		t.Fatal("a single gateway moved")
	}
}

// A cache directory holding prefetched closures keeps blocks on disk
// under auto, even with every source local: they may be nowhere else.
func TestDiskBlocksForPrefetched(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func() *blockStack {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		st, err := openBlocks(ctx, blockFlags{API: "http://127.0.0.1:1", BlockTimeout: time.Second,
			CacheDir: dir, DiskBytes: 1 << 20, DiskBlocks: diskBlocksAuto, MemoryBytes: 1 << 20}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		return st
	}
	if open().disk != nil {
		t.Fatal("blocks kept with a local kubo and nothing prefetched")
	}
	c := rawCid(t)
	err := prefetch.UpdateRecord(dir, func(r *prefetch.Record) error {
		r.Set(prefetch.Closure{Root: "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x", Time: time.Unix(1, 0),
			Paths: []prefetch.Path{{Base: "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x", Cid: c, NarSize: 1}}})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if open().disk == nil {
		t.Fatal("blocks not kept on disk with closures prefetched into --cache-dir")
	}
}

func TestPrefetchArgs(t *testing.T) {
	base := []string{"--cache-dir", "/c", "--substituter", "file:///s", "--trusted-public-key", testKey}
	for _, tc := range []struct {
		args []string
		want string // "" when accepted
	}{
		{append(base, "/nix/store/0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x", "/nix/store/0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x/bin/y", "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"), ""},
		{append(base, "-j", "0", "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"), "--jobs 0"},
		{append(base, "--cache-size", "lots", "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"), `"lots"`},
		{append(base, "/tmp/not-a-store-path"), "/tmp/not-a-store-path"},
		{base, "STOREPATH"},
		{[]string{"--substituter", "file:///s", "--trusted-public-key", testKey, "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"}, "--cache-dir"},
		{[]string{"--cache-dir", "/c", "--trusted-public-key", testKey, "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"}, "--substituter"},
		{[]string{"--cache-dir", "/c", "--substituter", "file:///s", "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"}, "--trusted-public-key"},
		{[]string{"--cache-dir", "/c", "--substituter", "file:///s", "--no-require-sigs", "--require-cid-sig", "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"}, "--require-cid-sig"},
	} {
		c, err := parsePrefetchArgs(tc.args, io.Discard)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want == "" && (len(c.Roots) != 1 || c.Roots[0] != "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x" || c.CacheSize != defaultCacheSize || c.Jobs != 8):
			t.Errorf("%v: parsed %+v", tc.args, c)
		case tc.want != "":
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v: %v, want a usage error naming %q", tc.args, err, tc.want)
			}
		}
	}
}

// ipnix cache stats and gc on a store directory, and their refusals.
func TestCacheCommand(t *testing.T) {
	dir := t.TempDir()
	d, err := cache.OpenDisk(dir, 1<<20, fetch.Verify(fetch.Failover{}, nil))
	if err != nil {
		t.Fatal(err)
	}
	runIt := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := run(append([]string{"ipnix", "cache"}, args...), &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := runIt("stats", "--cache-dir", dir); code != exitOK || !strings.Contains(out, "(in use by a running mount") ||
		!strings.Contains(out, "blocks: 0 (0 B), 0 of them pinned (0 B); quota 1.0 MiB") || !strings.Contains(out, "prefetched closures: 0") {
		t.Fatalf("stats: %d\n%s", code, out)
	}
	if code, out := runIt("gc", "--cache-dir", dir); code != exitError || !strings.Contains(out, "in use") {
		t.Fatalf("gc while open: %d\n%s", code, out)
	}
	d.Close()
	if code, out := runIt("gc", "--cache-dir", dir, "--keep-recent", "1h"); code != exitOK || !strings.Contains(out, "freed 0 blocks") {
		t.Fatalf("gc: %d\n%s", code, out)
	}
	if code, out := runIt("gc", "--cache-dir", dir, "--forget", "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-x"); code != exitError || !strings.Contains(out, "not a prefetched closure") {
		t.Fatalf("gc --forget of an unknown closure: %d\n%s", code, out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "stats or gc"},
		{[]string{"frob"}, exitUsage, "stats or gc"},
		{[]string{"--help"}, exitOK, "ipnix cache gc"},
		{[]string{"gc", "--help"}, exitOK, "--keep-recent"},
		{[]string{"stats"}, exitUsage, "--cache-dir"},
		{[]string{"stats", "--cache-dir", filepath.Join(dir, "nope")}, exitUsage, "not a directory"},
		{[]string{"stats", "--cache-dir", t.TempDir()}, exitError, "no ipnix block store"},
		{[]string{"gc", "--cache-dir", dir, "--keep-recent", "-1h"}, exitUsage, "--keep-recent"},
		{[]string{"gc", "--cache-dir", dir, "--forget", "/tmp/x"}, exitUsage, "/tmp/x"},
		{[]string{"stats", "--cache-dir", dir, "extra"}, exitUsage, "no arguments"},
		{[]string{"stats", "--cache-dir", dir, "--keep-recent", "1h"}, exitUsage, "keep-recent"},
	} {
		if code, out := runIt(tc.args...); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("cache %v: exit %d (want %d)\n%s(want %q)", tc.args, code, tc.code, out, tc.want)
		}
	}
}
