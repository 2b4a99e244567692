package publish

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/narindex"
)

func testKey(t *testing.T) narindex.SecretKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return narindex.SecretKey{Name: "publish-test-1", Key: k}
}

const helloPath = "/nix/store/rsw37b3mfmf5mwk74h93w7daljgm23cm-hello"

// helloNar gives the NAR inside testdata/hello.nar.bz2 and the compressed
// bytes.
func helloNar(t *testing.T) (nar, compressed []byte) {
	t.Helper()
	compressed, err := os.ReadFile("testdata/hello.nar.bz2")
	if err != nil {
		t.Fatal(err)
	}
	nar, err = io.ReadAll(bzip2.NewReader(bytes.NewReader(compressed)))
	if err != nil {
		t.Fatal(err)
	}
	return nar, compressed
}

// sourceCache writes a binary cache holding helloPath, its NAR file as
// given, described by a narinfo changed by edit.
func sourceCache(t *testing.T, cacheInfo string, file []byte, edit func(*narindex.NarInfo)) string {
	t.Helper()
	nar, _ := helloNar(t)
	return writeCache(t, cacheInfo, "nar/hello.nar.bz2", "bzip2", nar, file, edit)
}

// writeCache writes a binary cache holding helloPath: file at url, and a
// narinfo describing nar (at url, with compression), changed by edit;
// nix-cache-info holds cacheInfo, unless empty.
func writeCache(t *testing.T, cacheInfo, url, compression string, nar, file []byte, edit func(*narindex.NarInfo)) string {
	t.Helper()
	dir := t.TempDir()
	sum := sha256.Sum256(nar)
	ni := &narindex.NarInfo{
		StorePath:   helloPath,
		URL:         url,
		Compression: compression,
		NarHash:     narindex.SHA256(sum[:]),
		NarSize:     uint64(len(nar)),
	}
	if edit != nil {
		edit(ni)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "nar"), 0o755))
	must(os.MkdirAll(filepath.Dir(filepath.Join(dir, filepath.FromSlash(url))), 0o755))
	must(os.WriteFile(filepath.Join(dir, filepath.FromSlash(url)), file, 0o644))
	must(os.WriteFile(filepath.Join(dir, "rsw37b3mfmf5mwk74h93w7daljgm23cm.narinfo"), ni.Marshal(), 0o644))
	if cacheInfo != "" {
		must(os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte(cacheInfo), 0o644))
	}
	return dir
}

// checkPublished checks an output entry: the CID of the NAR, the listing
// built from the NAR, IpfsLsHash the digest of exactly the .ls bytes, and
// IpfsCidSig (version 2) by key.
func checkPublished(t *testing.T, st *fetchtest.Store, to string, sp narindex.StorePath, nar []byte, key narindex.SecretKey) *narindex.NarInfo {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(to, sp.Hash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narindex.ParseNarInfo(data)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := os.ReadFile(filepath.Join(to, sp.Hash+".ls"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(ls)
	if !ni.IpfsLsHash.Equal(narindex.SHA256(sum[:])) {
		t.Errorf("IpfsLsHash %s, but the .ls written has digest %s", ni.IpfsLsHash, narindex.SHA256(sum[:]))
	}
	if err := ni.VerifyCidSig([]narindex.PublicKey{key.Public()}); err != nil {
		t.Errorf("IpfsCidSig: %v", err)
	}
	if err := ni.VerifySigs([]narindex.PublicKey{key.Public()}); err != nil {
		t.Errorf("Sig: %v", err)
	}
	if want, _ := st.AddFile(nar, fetchtest.DefaultOptions); ni.IpfsCid != want.String() || ni.LegacyIPFSHash {
		t.Errorf("IpfsCid %s (legacy name %v), want %s", ni.IpfsCid, ni.LegacyIPFSHash, want)
	}
	got, err := narindex.ParseListing(ls)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := narindex.ListingFromNar(bytes.NewReader(nar))
	if !reflect.DeepEqual(got.Root, want.Root) {
		t.Errorf("the .ls written is not the NAR's listing: %s", ls)
	}
	return ni
}

func TestCacheSignsListing(t *testing.T) {
	nar, compressed := helloNar(t)
	key := testKey(t)
	for name, edit := range map[string]func(*narindex.NarInfo){
		"bzip2": nil,
		// Nix reads a narinfo without Compression as bzip2.
		"no Compression": func(ni *narindex.NarInfo) { ni.Compression = "" },
		// What the source says of its CID is replaced, under the current
		// field name.
		"old CID fields": func(ni *narindex.NarInfo) {
			ni.IpfsCid, ni.LegacyIPFSHash, ni.IpfsCidSig = "bafyold", true, "old:c2ln"
		},
	} {
		t.Run(name, func(t *testing.T) {
			from := sourceCache(t, "StoreDir: /nix/store\n", compressed, edit)
			// A listing in the source cache is not trusted: the one built
			// from the NAR is written and signed.
			if err := os.WriteFile(filepath.Join(from, "rsw37b3mfmf5mwk74h93w7daljgm23cm.ls"),
				[]byte(`{"version":1,"root":{"type":"symlink","target":"/tmp/evil"}}`), 0o644); err != nil {
				t.Fatal(err)
			}
			st := fetchtest.NewStore()
			to := t.TempDir()
			p, err := New(storeAdder{st}, Options{To: to, SecretKey: &key})
			if err != nil {
				t.Fatal(err)
			}
			sum, err := p.Cache(context.Background(), from)
			if err != nil || sum.Published != 1 {
				t.Fatalf("Cache: %+v, %v", sum, err)
			}
			sp, _ := narindex.ParseStorePath(helloPath)
			checkPublished(t, st, to, sp, nar, key)
			// The NAR file is copied as it was.
			if got, _ := os.ReadFile(filepath.Join(to, "nar/hello.nar.bz2")); !bytes.Equal(got, compressed) {
				t.Error("NAR file not copied")
			}
			// A second run has nothing to do.
			if sum, err := p.Cache(context.Background(), from); err != nil || sum.Skipped != 1 || sum.Published != 0 {
				t.Fatalf("second Cache: %+v, %v", sum, err)
			}
		})
	}
}

func TestCacheRefuses(t *testing.T) {
	nar, compressed := helloNar(t)
	for name, tc := range map[string]struct {
		cacheInfo string
		file      []byte
		edit      func(*narindex.NarInfo)
		want      string
	}{
		"other store":        {"StoreDir: /nix/store2\n", compressed, nil, `"/nix/store2"`},
		"store subdirectory": {"StoreDir: /nix/store/sub\n", compressed, nil, `"/nix/store/sub"`},
		"no nix-cache-info":  {"", compressed, nil, "not a binary cache"},
		// Without Compression the NAR is read as bzip2, so an
		// uncompressed one does not decode.
		"uncompressed NAR without Compression": {"StoreDir: /nix/store\n", nar, func(ni *narindex.NarInfo) { ni.Compression = "" }, "bzip2"},
		"wrong NarHash":                        {"StoreDir: /nix/store\n", compressed, func(ni *narindex.NarInfo) { ni.NarHash.Digest[0] ^= 1 }, "NAR hash is"},
	} {
		t.Run(name, func(t *testing.T) {
			from := sourceCache(t, tc.cacheInfo, tc.file, tc.edit)
			to := t.TempDir()
			p, err := New(storeAdder{fetchtest.NewStore()}, Options{To: to})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Cache(context.Background(), from); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Cache: %v, want an error saying %s", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(to, "rsw37b3mfmf5mwk74h93w7daljgm23cm.narinfo")); err == nil {
				t.Fatal("narinfo written")
			}
		})
	}
	// A nix-cache-info without StoreDir is accepted, as Nix accepts it.
	from := sourceCache(t, "WantMassQuery: 1\n", compressed, nil)
	p, _ := New(storeAdder{fetchtest.NewStore()}, Options{To: t.TempDir()})
	if _, err := p.Cache(context.Background(), from); err != nil {
		t.Fatalf("nix-cache-info without StoreDir: %v", err)
	}
}

// Without a key, a CID signature that no longer covers the CID and listing
// is dropped rather than left to fail; with one, entries that are not
// current (no listing digest, a v1 signature) are published again.
func TestCacheRepublishes(t *testing.T) {
	nar, compressed := helloNar(t)
	key := testKey(t)
	from := sourceCache(t, "StoreDir: /nix/store\n", compressed, func(ni *narindex.NarInfo) { ni.IpfsCidSig = "old:c2ln" })
	st := fetchtest.NewStore()
	to := t.TempDir()
	p, _ := New(storeAdder{st}, Options{To: to})
	if _, err := p.Cache(context.Background(), from); err != nil {
		t.Fatal(err)
	}
	narinfo := filepath.Join(to, "rsw37b3mfmf5mwk74h93w7daljgm23cm.narinfo")
	data, _ := os.ReadFile(narinfo)
	ni, _ := narindex.ParseNarInfo(data)
	if ni.IpfsCidSig != "" || ni.IpfsLsHash.IsZero() || ni.IpfsCid == "" {
		t.Fatalf("unsigned publish:\n%s", data)
	}
	// The same output with a key: the unsigned entry is published again.
	p, _ = New(storeAdder{st}, Options{To: to, SecretKey: &key})
	if sum, err := p.Cache(context.Background(), from); err != nil || sum.Published != 1 {
		t.Fatalf("with a key: %+v, %v", sum, err)
	}
	sp, _ := narindex.ParseStorePath(helloPath)
	ni = checkPublished(t, st, to, sp, nar, key)
	// An entry signed with the retired fingerprint is published again.
	ni.IpfsLsHash = narindex.Hash{}
	ni.IpfsCidSig = ""
	if err := os.WriteFile(narinfo, ni.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	if sum, err := p.Cache(context.Background(), from); err != nil || sum.Published != 1 {
		t.Fatalf("entry without IpfsLsHash: %+v, %v", sum, err)
	}
	// So is one whose listing changed on disk.
	if err := os.WriteFile(filepath.Join(to, sp.Hash+".ls"), []byte(`{"version":1,"root":{"type":"directory"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if sum, err := p.Cache(context.Background(), from); err != nil || sum.Published != 1 {
		t.Fatalf("entry whose listing changed: %+v, %v", sum, err)
	}
	checkPublished(t, st, to, sp, nar, key)
}

func TestIngestTooManyEntries(t *testing.T) {
	nar := testNar(t) // 6 entries
	if _, err := ingest(context.Background(), storeAdder{fetchtest.NewStore()}, bytes.NewReader(nar), nil, 6); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	_, err := ingest(context.Background(), storeAdder{fetchtest.NewStore()}, bytes.NewReader(nar), nil, 5)
	if !errors.Is(err, narindex.ErrTooManyEntries) || !strings.Contains(err.Error(), "limit of 5") {
		t.Fatalf("over the limit: %v", err)
	}
}

// Publishing from the local Nix store writes the same signed listing.
func TestStorePathsSignsListing(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		if os.Getenv("IPNIX_REQUIRE_INTEGRATION") == "1" {
			t.Fatal("nix-store not installed")
		}
		t.Skip("nix-store not installed")
	}
	dir := filepath.Join(t.TempDir(), "ipnix-publish-test")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "bin/run"), []byte("#!/bin/sh\nexit 0\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), bytes.Repeat([]byte("ipnix "), 100000), 0o644)
	os.Symlink("bin/run", filepath.Join(dir, "link"))
	out, err := exec.Command("nix-store", "--add", dir).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	path := strings.TrimSpace(string(out))
	nar, err := exec.Command("nix-store", "--dump", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t)
	st := fetchtest.NewStore()
	to := t.TempDir()
	p, err := New(storeAdder{st}, Options{To: to, SecretKey: &key})
	if err != nil {
		t.Fatal(err)
	}
	if sum, err := p.StorePaths(context.Background(), []string{path}, false); err != nil || sum.Published != 1 {
		t.Fatalf("StorePaths: %+v, %v", sum, err)
	}
	sp, _ := narindex.ParseStorePath(path)
	checkPublished(t, st, to, sp, nar, key)
	if sum, err := p.StorePaths(context.Background(), []string{path}, false); err != nil || sum.Skipped != 1 {
		t.Fatalf("second StorePaths: %+v, %v", sum, err)
	}
}

// addStorePaths puts n small trees into the Nix store and returns their
// paths and NARs.
func addStorePaths(t *testing.T, n int) ([]string, map[string][]byte) {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil {
		if os.Getenv("IPNIX_REQUIRE_INTEGRATION") == "1" {
			t.Fatal("nix-store not installed")
		}
		t.Skip("nix-store not installed")
	}
	var paths []string
	nars := map[string][]byte{}
	for i := range n {
		dir := filepath.Join(t.TempDir(), "ipnix-publish-multi")
		os.MkdirAll(filepath.Join(dir, "lib"), 0o755)
		for j := range 20 {
			os.WriteFile(filepath.Join(dir, "lib", strings.Repeat("f", j+1)), bytes.Repeat([]byte{byte(i), byte(j)}, 1000*j+i), 0o644)
		}
		os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte{byte(i)}, 3*chunkSize+i), 0o644)
		out, err := exec.Command("nix-store", "--add", dir).Output()
		if err != nil {
			t.Fatalf("nix-store --add: %v", err)
		}
		path := strings.TrimSpace(string(out))
		nar, err := exec.Command("nix-store", "--dump", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
		nars[path] = nar
	}
	return paths, nars
}

// failingAdderFor fails, after reading a little, to add the NAR that
// starts as fail does.
type failingAdderFor struct {
	Adder
	fail []byte
}

func (a *failingAdderFor) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	head := make([]byte, 1000)
	n, _ := io.ReadFull(r, head)
	if bytes.Equal(head[:n], a.fail[:min(len(a.fail), 1000)]) {
		return cid.Undef, errors.New("kubo went away")
	}
	return a.Adder.Add(ctx, io.MultiReader(bytes.NewReader(head[:n]), r))
}

// tempFiles lists what a run left in nar/ besides NAR files.
func leftovers(t *testing.T, to string) []string {
	t.Helper()
	var left []string
	ents, _ := os.ReadDir(filepath.Join(to, "nar"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			left = append(left, e.Name())
		}
	}
	return left
}

// Several paths stream one after another with their walks and ends
// overlapping: each is published as if alone.
func TestStorePathsSeveral(t *testing.T) {
	paths, nars := addStorePaths(t, 4)
	for _, streams := range []int{0, 1, 3} {
		storePathsSeveral(t, paths, nars, streams)
	}
}

func storePathsSeveral(t *testing.T, paths []string, nars map[string][]byte, streams int) {
	key := testKey(t)
	st := fetchtest.NewStore()
	to := t.TempDir()
	p, err := New(storeAdder{st}, Options{To: to, SecretKey: &key, Streams: streams})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.StorePaths(context.Background(), paths, false)
	if err != nil || sum.Published != 4 {
		t.Fatalf("StorePaths: %+v, %v", sum, err)
	}
	var total uint64
	for _, path := range paths {
		sp, _ := narindex.ParseStorePath(path)
		ni := checkPublished(t, st, to, sp, nars[path], key)
		got, err := os.ReadFile(filepath.Join(to, ni.URL))
		if err != nil || !bytes.Equal(got, nars[path]) {
			t.Errorf("%s: NAR file differs from nix-store --dump (%v)", ni.URL, err)
		}
		total += uint64(len(nars[path]))
	}
	if sum.Bytes != total {
		t.Errorf("Summary.Bytes %d, want %d", sum.Bytes, total)
	}
	if left := leftovers(t, to); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A failure in the middle of a run stops it: no path after it gets a
// narinfo (the one before it does when streaming one at a time, and may
// when two stream side by side), nothing temporary is left behind and no
// file stays open.
func TestStorePathsFailureStops(t *testing.T) {
	paths, nars := addStorePaths(t, 4)
	for _, streams := range []int{1, 2, 3} {
		fds := openFDs(t)
		to := t.TempDir()
		add := &failingAdderFor{Adder: storeAdder{fetchtest.NewStore()}, fail: nars[paths[1]]}
		p, err := New(add, Options{To: to, Streams: streams})
		if err != nil {
			t.Fatal(err)
		}
		sum, err := p.StorePaths(context.Background(), paths, false)
		if err == nil || !strings.Contains(err.Error(), "went away") {
			t.Fatalf("streams %d: StorePaths: %v", streams, err)
		}
		infos, _ := filepath.Glob(filepath.Join(to, "*.narinfo"))
		if len(infos) != sum.Published || sum.Published > 1 || (streams == 1 && sum.Published != 1) {
			t.Fatalf("streams %d: published %d, %d narinfos written", streams, sum.Published, len(infos))
		}
		if sp, _ := narindex.ParseStorePath(paths[0]); len(infos) == 1 && filepath.Base(infos[0]) != sp.Hash+".narinfo" {
			t.Fatalf("streams %d: narinfo %s written, not the first path's", streams, infos[0])
		}
		if left := leftovers(t, to); len(left) > 0 {
			t.Errorf("streams %d: temporary files left: %v", streams, left)
		}
		if n := openFDs(t); n != fds {
			t.Errorf("streams %d: %d files open after the run, %d before", streams, n, fds)
		}
	}
}

// A path that cannot be finished (here its NAR file cannot be put in
// place) stops the run before any later narinfo is written.
func TestStorePathsFinishFailureStops(t *testing.T) {
	paths, nars := addStorePaths(t, 3)
	sum := sha256.Sum256(nars[paths[0]]) // streamed first
	to := t.TempDir()
	blocker := filepath.Join(to, "nar", narindex.EncodeNix32(sum[:])+".nar", "x")
	if err := os.MkdirAll(blocker, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := New(storeAdder{fetchtest.NewStore()}, Options{To: to})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.StorePaths(context.Background(), paths, false)
	if err == nil || s.Published != 0 {
		t.Fatalf("StorePaths: %+v, %v", s, err)
	}
	if ni, _ := filepath.Glob(filepath.Join(to, "*.narinfo")); len(ni) != 0 {
		t.Fatalf("narinfos written after a failure: %v", ni)
	}
	if left := leftovers(t, to); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A path that is not in the store is an error naming it, though its walk
// starts before Nix answers.
func TestStorePathsUnknownPath(t *testing.T) {
	paths, _ := addStorePaths(t, 1)
	t.Setenv("NIX_CONFIG", "substituters =") // no attempt to download it
	missing := "/nix/store/00000000000000000000000000000000-ipnix-missing"
	to := t.TempDir()
	p, err := New(storeAdder{fetchtest.NewStore()}, Options{To: to})
	if err != nil {
		t.Fatal(err)
	}
	for _, list := range [][]string{{missing}, {paths[0], missing}, {missing, paths[0]}} {
		if _, err := p.StorePaths(context.Background(), list, false); err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("%v: %v", list, err)
		}
	}
	if left := leftovers(t, to); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
