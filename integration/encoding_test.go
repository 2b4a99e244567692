package integration

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/ipnix/ipnix/integration/runenv"
	"github.com/ipnix/ipnix/narindex"
	"github.com/ipnix/ipnix/publish"
)

// The IpfsEncoding publish writes (RFC 133's draft) is true: rebuilding the
// NAR file as it says gives the narinfo's IpfsCid, even on a kubo whose
// Import configuration would lay a plain `ipfs add` out otherwise (1024
// links per node, trickle, 1 MiB chunks). A content-defined chunker gets no
// IpfsEncoding.
func TestPublishEncodingRecomputes(t *testing.T) {
	requireReal(t)
	k, err := runenv.StartKuboWrapped(ipfsBin, t.TempDir(), nil, func(k *runenv.Kubo) error {
		for _, kv := range [][2]string{
			{"Import.UnixFSFileMaxLinks", "1024"},
			{"Import.UnixFSDAGLayout", `"trickle"`},
			{"Import.UnixFSChunker", `"size-1048576"`},
		} {
			if _, err := k.Run(nil, "config", "--json", kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)

	// A store path whose NAR, in 4 KiB chunks, has more than 174 leaves:
	// two levels under 174 links per node, one under 1024. The same bytes
	// on every run, so the store path is the same.
	src := filepath.Join(t.TempDir(), "ipnix-encoding-test")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20+5)
	rand.NewChaCha8([32]byte{'e', 'n', 'c'}).Read(data)
	if err := os.WriteFile(filepath.Join(src, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", src).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	sp := strings.TrimSpace(string(out))
	hash := strings.SplitN(filepath.Base(sp), "-", 2)[0]

	publishWith := func(chunker string) (*narindex.NarInfo, []byte) {
		t.Helper()
		to := t.TempDir()
		if out, err := ipnixCmd(t, nil, "publish", "--api", k.API, "--to", to, "--no-closure", "--chunker", chunker, sp); err != nil {
			t.Fatalf("publish --chunker %s: %v\n%s", chunker, err, out)
		}
		raw, err := os.ReadFile(filepath.Join(to, hash+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narindex.ParseNarInfo(raw)
		if err != nil {
			t.Fatal(err)
		}
		nar, err := os.ReadFile(filepath.Join(to, ni.URL))
		if err != nil {
			t.Fatal(err)
		}
		return ni, nar
	}

	ni, nar := publishWith("size-4096")
	t.Logf("IpfsEncoding: %s", ni.IpfsEncoding)
	e, err := narindex.ParseIpfsEncoding(ni.IpfsEncoding)
	if err != nil {
		t.Fatal(err)
	}
	if e != narindex.FixedSizeEncoding(4096) {
		t.Fatalf("IpfsEncoding %+v, want 4 KiB fixed chunks, balanced, 174 links", e)
	}
	root, err := cid.Parse(ni.IpfsCid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := publish.RecomputeCID(context.Background(), bytes.NewReader(nar), e, root)
	if err != nil || got != root {
		t.Fatalf("the NAR rebuilt as IpfsEncoding says: %s (%v); the narinfo has %s", got, err, root)
	}
	// The node's configuration does lay a plain add out otherwise: had
	// publish left the layout to it, the description would be false.
	plain, err := k.Run(bytes.NewReader(nar), "add", "-Q", "--only-hash", "--cid-version=1", "--raw-leaves", "--chunker=size-4096")
	if err != nil {
		t.Fatal(err)
	}
	if plain == root.String() {
		t.Fatalf("this kubo's Import configuration changes nothing (%s): the test proves nothing", plain)
	}

	ni, _ = publishWith("buzhash")
	if ni.IpfsCid == "" || ni.IpfsEncoding != "" {
		t.Errorf("publish --chunker buzhash: IpfsCid %q, IpfsEncoding %q; want a CID and no description", ni.IpfsCid, ni.IpfsEncoding)
	}
}
