package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integration/runenv"
	"github.com/ipnix/ipnix/narindex"
)

// ipfsDirPublish runs `ipnix publish ARGS` and returns what it printed on
// stdout, one line an item (the directory's CID, then the IPNS name), and
// on stderr.
func ipfsDirPublish(t *testing.T, args ...string) (lines []string, stderr string) {
	t.Helper()
	cmd := exec.Command(ipnixBin, append([]string{"publish"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ipnix publish %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return strings.Fields(out.String()), errb.String()
}

// ipfsDirShardingKubo starts a kubo that shards every directory of more
// than a few entries, so that a test cache is a HAMT as a cache of
// thousands of paths would be. Its routing is the DHT (with no peers):
// with Routing "none", kubo 0.43 resolves no IPNS name, not even one it
// published itself with --allow-offline.
func ipfsDirShardingKubo(t *testing.T) *kubo {
	t.Helper()
	k, err := runenv.StartKuboWrapped(ipfsBin, t.TempDir(), nil, func(k *runenv.Kubo) error {
		for _, args := range [][]string{
			{"config", "Import.UnixFSHAMTDirectorySizeThreshold", "100B"},
			{"config", "--json", "Routing.Type", `"dht"`},
		} {
			if _, err := k.Run(nil, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	return &kubo{Kubo: k, api: k.API}
}

// ipfsDirIsHAMT asks kubo (not ipnix) whether the root of a directory is a HAMT
// shard: the UnixFS Data of its dag-pb node starts with type 5.
func ipfsDirIsHAMT(t *testing.T, k *kubo, c string) bool {
	t.Helper()
	out := k.ipfs(t, nil, "dag", "get", "--output-codec", "dag-json", c)
	// {"Data":{"/":{"bytes":"CAU..."}}: 0x08 0x05 is type HAMTShard,
	// 0x08 0x01 (CAE) a plain directory.
	return strings.Contains(out, `"bytes":"CAU`)
}

// ipfsDirStatWithin polls for path until it exists or bound passes.
func ipfsDirStatWithin(path string, bound time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		_, err := os.Lstat(path)
		if err == nil || !errors.Is(err, syscall.ENOENT) || time.Since(start) > bound {
			return time.Since(start), err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestIPFSCache: a binary cache published as a UnixFS directory (sharded)
// under an IPNS name is mounted by name; its paths read correctly, a path
// not yet published is ENOENT, and one published (under the same name)
// after the mount started appears within the refresh interval plus the
// kernel's memory of the miss. A mount of the directory's CID reads it
// too, and narinfos in such a directory that are unsigned or signed by an
// untrusted key are refused.
func TestIPFSCache(t *testing.T) {
	requireReal(t)
	k := ipfsDirShardingKubo(t)
	closure := buildClosure(t)
	sec, pub := genKey(t, "ipnix-test-1")
	cache := t.TempDir()
	const keyName = "ipnix-test-cache"
	k.ipfs(t, nil, "key", "gen", keyName)
	lib, bin := closure.path(t, "ipnix-test-lib"), closure.path(t, "ipnix-test-bin")
	big := closure.path(t, "ipnix-test-big")

	// Without the key created first, --ipns-key fails and says how.
	cmd := exec.Command(ipnixBin, "publish", "--api", k.api, "--to", t.TempDir(), "--ipns-key", "no-such-key")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "ipfs key gen no-such-key") {
		t.Errorf("--ipns-key of a missing key: %v\n%s", err, out)
	}

	lines, stderr := ipfsDirPublish(t, "--api", k.api, "--to", cache, "--secret-key", sec, "--no-closure", "--ipfs-dir", "--ipns-key", keyName, lib)
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "k51") {
		t.Fatalf("publish printed %q on stdout; want the CID and the k51... name\nstderr:\n%s", lines, stderr)
	}
	root1, name := lines[0], lines[1]
	if !strings.Contains(stderr, "HAMT-sharded") || !ipfsDirIsHAMT(t, k, root1) {
		t.Errorf("cache directory %s is not HAMT-sharded (stderr: %s)", root1, stderr)
	}
	// Exactly the cache's own files: no nar/.
	var names []string
	for _, line := range strings.Split(k.ipfs(t, nil, "ls", root1), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[len(f)-1])
		}
	}
	sort.Strings(names)
	h := ipfsDirHash(t, lib)
	if want := []string{h + ".ls", h + ".narinfo", "nix-cache-info"}; strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("directory %s holds %q, want %q", root1, names, want)
	}
	t.Logf("published %s under %s:\n%s", root1, name, stderr)

	const refresh = 2 * time.Second
	m := startMount(t, "--api", k.api, "--gateway", k.Gateway, "--substituter", "ipns://"+name,
		"--ipns-refresh", refresh.String(), "--trusted-public-key", pub)
	readsAsPublished := func(m *mount, sp string) {
		t.Helper()
		var got string
		withTimeout(t, 2*time.Minute, "nix hash path", func(context.Context) { got = nixHashPath(t, filepath.Join(m.dir, filepath.Base(sp))) })
		if want := ipfsDirNarInfo(t, cache, sp).NarHash.String(); got != want {
			t.Errorf("%s: mounted path hashes to %s, narinfo says %s", sp, got, want)
		}
	}
	readsAsPublished(m, lib)
	if _, err := os.Lstat(filepath.Join(m.dir, filepath.Base(bin))); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("not yet published %s: %v, want ENOENT", bin, err)
	}

	// Publish another path; the same name now points to a new directory.
	lines, stderr = ipfsDirPublish(t, "--api", k.api, "--to", cache, "--secret-key", sec, "--no-closure", "--ipfs-dir", "--ipns-key", keyName, bin)
	if len(lines) != 2 || lines[1] != name || lines[0] == root1 {
		t.Fatalf("republish printed %q; want a new CID and the same name %s\nstderr:\n%s", lines, name, stderr)
	}
	root2 := lines[0]
	// The mount sees the new root within the refresh interval (and the
	// time one resolution takes); the kernel keeps its answer to the miss
	// above for up to 30 s (the root's negative entry timeout), so the
	// path itself may take that long more.
	bound := refresh + 30*time.Second + 15*time.Second
	took, err := ipfsDirStatWithin(filepath.Join(m.dir, filepath.Base(bin)), bound)
	if err != nil {
		t.Fatalf("%s published under the name did not appear within %v: %v", bin, bound, err)
	}
	t.Logf("%s appeared %v after the republish (refresh %v)", bin, took.Round(100*time.Millisecond), refresh)
	// The record came from the gateway and was verified here.
	if !m.waitLog("IPNS name points to a new cache directory", root2, "verified=true", `from="gateway`) {
		t.Errorf("mount log does not show the move to %s by a verified record", root2)
	}
	readsAsPublished(m, bin)

	// The first directory by CID: fixed, so bin is not in it.
	mc := startMount(t, "--api", k.api, "--gateway", k.Gateway, "--substituter", "ipfs://"+root1, "--trusted-public-key", pub)
	readsAsPublished(mc, lib)
	if _, err := os.Lstat(filepath.Join(mc.dir, filepath.Base(bin))); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("%s in ipfs://%s, which predates it: %v", bin, root1, err)
	}

	// With no gateway that answers, the name is resolved through kubo's
	// RPC API (routing/get hands over the record, verified here).
	dead := "http://127.0.0.1:1"
	mk := startMount(t, "--api", k.api, "--gateway", dead, "--substituter", "ipns://"+name, "--trusted-public-key", pub)
	readsAsPublished(mk, bin)
	if !mk.waitLog("IPNS name resolved", root2, "verified=true", "(record)") {
		t.Errorf("mount without a gateway did not resolve the name by kubo's record")
	}

	t.Run("unsigned-or-untrusted-narinfo-refused", func(t *testing.T) {
		// A directory whose lib entry is as published, whose bin
		// narinfo has lost its signatures, and whose big narinfo is
		// signed by a key the mount does not trust (its NAR is in
		// kubo, so only the signature stands in the way).
		evilSec, _ := genKey(t, "evil-1")
		evilKey, err := narindex.LoadSecretKeyFile(evilSec)
		if err != nil {
			t.Fatal(err)
		}
		full := t.TempDir()
		if out, err := ipnixCmd(t, nil, "publish", "--api", k.api, "--to", full, "--secret-key", sec, "--no-closure", big); err != nil {
			t.Fatalf("publish %s: %v\n%s", big, err, out)
		}
		dir := t.TempDir()
		ipfsDirCopy(t, filepath.Join(cache, "nix-cache-info"), filepath.Join(dir, "nix-cache-info"))
		for _, sp := range []string{lib, bin} {
			h := ipfsDirHash(t, sp)
			ipfsDirCopy(t, filepath.Join(cache, h+".ls"), filepath.Join(dir, h+".ls"))
		}
		ipfsDirCopy(t, filepath.Join(cache, ipfsDirHash(t, lib)+".narinfo"), filepath.Join(dir, ipfsDirHash(t, lib)+".narinfo"))
		unsigned := ipfsDirNarInfo(t, cache, bin)
		unsigned.Sigs, unsigned.IpfsCidSig = nil, ""
		ipfsDirWrite(t, filepath.Join(dir, ipfsDirHash(t, bin)+".narinfo"), unsigned.Marshal())
		foreign := ipfsDirNarInfo(t, full, big)
		foreign.Sigs, foreign.IpfsCidSig = nil, ""
		if err := foreign.Sign(evilKey); err != nil {
			t.Fatal(err)
		}
		if err := foreign.SignCid(evilKey); err != nil {
			t.Fatal(err)
		}
		ipfsDirWrite(t, filepath.Join(dir, ipfsDirHash(t, big)+".narinfo"), foreign.Marshal())
		ipfsDirCopy(t, filepath.Join(full, ipfsDirHash(t, big)+".ls"), filepath.Join(dir, ipfsDirHash(t, big)+".ls"))
		lines, stderr := ipfsDirPublish(t, "--api", k.api, "--to", dir, "--ipfs-dir")
		if len(lines) != 1 {
			t.Fatalf("publish --ipfs-dir printed %q\n%s", lines, stderr)
		}
		me := startMount(t, "--api", k.api, "--gateway", k.Gateway, "--substituter", "ipfs://"+lines[0], "--trusted-public-key", pub)
		readsAsPublished(me, lib) // the directory itself is fine
		for _, sp := range []string{bin, big} {
			if _, err := os.Lstat(filepath.Join(me.dir, filepath.Base(sp))); !errors.Is(err, syscall.ENOENT) {
				t.Errorf("%s, %s: %v, want ENOENT", sp, map[string]string{bin: "unsigned", big: "signed by an untrusted key"}[sp], err)
			}
		}
		// Refused for their signatures, not for anything else.
		if !me.waitLog("store path not shown", filepath.Base(bin), filepath.Base(big), "no signature (Sig)", "no signature by a trusted key") {
			t.Errorf("the refusals are not logged with their reasons")
		}
	})
}

func ipfsDirHash(t *testing.T, storePath string) string {
	t.Helper()
	sp, err := narindex.ParseStorePath(storePath)
	if err != nil {
		t.Fatal(err)
	}
	return sp.Hash
}

func ipfsDirNarInfo(t *testing.T, dir, storePath string) *narindex.NarInfo {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ipfsDirHash(t, storePath)+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narindex.ParseNarInfo(b)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func ipfsDirCopy(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	ipfsDirWrite(t, to, b)
}

func ipfsDirWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestIPFSCacheShardedByDefault: with kubo's default import settings, a
// cache directory of 2,000 store paths (4,000 files) is added as a HAMT,
// not as one block; one of 20 is not.
func TestIPFSCacheShardedByDefault(t *testing.T) {
	requireReal(t)
	k := startKubo(t)
	for _, tc := range []struct {
		paths   int
		sharded bool
	}{{20, false}, {2000, true}} {
		dir := t.TempDir()
		ipfsDirWrite(t, filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"))
		const nix32 = "0123456789abcdfghijklmnpqrsvwxyz"
		for i := range tc.paths {
			h := []byte("00000000000000000000000000000000")
			for j, n := 31, i; n > 0; j, n = j-1, n/32 {
				h[j] = nix32[n%32]
			}
			ipfsDirWrite(t, filepath.Join(dir, string(h)+".narinfo"), []byte("StorePath: x\n"))
			ipfsDirWrite(t, filepath.Join(dir, string(h)+".ls"), []byte("{}"))
		}
		lines, stderr := ipfsDirPublish(t, "--api", k.api, "--to", dir, "--ipfs-dir")
		if len(lines) != 1 {
			t.Fatalf("publish printed %q\n%s", lines, stderr)
		}
		if got := ipfsDirIsHAMT(t, k, lines[0]); got != tc.sharded || strings.Contains(stderr, "HAMT-sharded") != tc.sharded {
			t.Errorf("%d paths: sharded %v (kubo), stderr %q; want sharded %v", tc.paths, got, stderr, tc.sharded)
		}
		t.Logf("%d paths: %s", tc.paths, strings.TrimSpace(stderr))
	}
}
