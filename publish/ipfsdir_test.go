package publish

import (
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/fetch"
)

func TestIsCacheDirEntry(t *testing.T) {
	h := "rsw37b3mfmf5mwk74h93w7daljgm23cm"
	for name, want := range map[string]bool{
		"nix-cache-info":              true,
		h + ".narinfo":                true,
		h + ".ls":                     true,
		"nar":                         false,
		h + ".nar":                    false,
		".tmp-" + h + ".narinfo-1234": false,
		"rsw37b3mfmf5mwk74h93w7daljgm23c.narinfo":  false, // 31 characters
		"rsw37b3mfmf5mwk74h93w7daljgm23ce.narinfo": false, // e is not nix32
		"log":          false,
		"realisations": false,
		".narinfo":     false,
	} {
		if got := IsCacheDirEntry(name); got != want {
			t.Errorf("IsCacheDirEntry(%q) = %v", name, got)
		}
	}
}

// dirKubo answers add (recording the files of the multipart body) with a
// directory root, and block/get for that root with rootBlock.
type dirKubo struct {
	t         *testing.T
	rootBlock []byte
	files     map[string]string // path -> content, as sent
	query     url.Values
}

func (k *dirKubo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	root, _ := merkledag.DecodeProtobuf(k.rootBlock)
	switch r.URL.Path {
	case "/api/v0/add":
		k.query = r.URL.Query()
		_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil {
			k.t.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
		}
		mr := multipart.NewReader(r.Body, params["boundary"])
		k.files = map[string]string{}
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"Message":%q,"Code":0,"Type":"error"}`, err.Error())
				return
			}
			name, _ := url.QueryUnescape(p.FileName())
			data, _ := io.ReadAll(p)
			if p.Header.Get("Content-Type") == "application/x-directory" {
				name += "/"
			}
			k.files[name] = string(data)
		}
		fmt.Fprintf(w, `{"Name":"","Hash":"%s"}`+"\n", root.Cid())
	case "/api/v0/block/get":
		w.Header().Set("Content-Type", "text/plain")
		w.Write(k.rootBlock)
	default:
		http.NotFound(w, r)
	}
}

func startDirKubo(t *testing.T, rootBlock []byte) (*dirKubo, *rpc.HttpApi) {
	k := &dirKubo{t: t, rootBlock: rootBlock}
	srv := httptest.NewServer(k)
	t.Cleanup(srv.Close)
	api, err := rpc.NewURLApiWithClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return k, api
}

// nd0 is any CID, for links.
var nd0 = merkledag.NodeWithData(nil).Cid()

func dirBlock(t *testing.T, data []byte, links int) []byte {
	nd := merkledag.NodeWithData(data)
	nd.SetCidBuilder(merkledag.V1CidPrefix())
	for i := range links {
		// Long names make a block as large as a directory that is not
		// sharded grows.
		if err := nd.AddRawLink(fmt.Sprintf("%0200d", i), &ipld.Link{Cid: nd0}); err != nil {
			t.Fatal(err)
		}
	}
	return nd.RawData()
}

// TestAddCacheDir: only nix-cache-info, narinfos and listings are sent,
// with the options fixed by DESIGN.md, and whether kubo sharded the root
// is reported.
func TestAddCacheDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	h1, h2 := "rsw37b3mfmf5mwk74h93w7daljgm23cm", "l2ab8sldkfww980gkvsdvmbqsxn9sqkz"
	for name, data := range map[string]string{
		"nix-cache-info":         "StoreDir: /nix/store\n",
		h1 + ".narinfo":          "one",
		h1 + ".ls":               "{}",
		h2 + ".narinfo":          "two",
		"nar/x.nar":              "nar bytes",
		".tmp-" + h2 + ".ls-123": "partial",
		"log/x":                  "log",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hamt, err := unixfs.HAMTShardData([]byte{0}, 256, 0x22)
	if err != nil {
		t.Fatal(err)
	}
	k, api := startDirKubo(t, dirBlock(t, hamt, 0))
	var progress []int
	res, err := AddCacheDir(ctx, api, dir, func(sent, total int) { progress = append(progress, sent, total) })
	if err != nil {
		t.Fatal(err)
	}
	var sent []string
	for name := range k.files {
		sent = append(sent, name)
	}
	sort.Strings(sent)
	want := []string{"", h1 + ".ls", h1 + ".narinfo", h2 + ".narinfo", "nix-cache-info"}
	if len(sent) != len(want) || !strings.HasSuffix(sent[0], "/") {
		t.Errorf("sent %q, want the directory and %q", sent, want[1:])
	}
	for _, w := range want[1:] {
		if _, ok := k.files[w]; !ok {
			t.Errorf("%s not sent (sent %q)", w, sent)
		}
	}
	if k.files[h1+".narinfo"] != "one" {
		t.Errorf("content of %s.narinfo: %q", h1, k.files[h1+".narinfo"])
	}
	for o, v := range map[string]string{"cid-version": "1", "raw-leaves": "true", "pin": "true", "chunker": DefaultChunker, "inline": "false"} {
		if k.query.Get(o) != v {
			t.Errorf("add option %s=%q, want %q", o, k.query.Get(o), v)
		}
	}
	if res.Files != 4 || res.NarInfos != 2 || !res.Sharded || res.Bytes != int64(len("StoreDir: /nix/store\n")+3+2+3) {
		t.Errorf("result %+v", res)
	}
	if len(progress) != 8 || progress[6] != 4 || progress[7] != 4 {
		t.Errorf("progress calls %v", progress)
	}

	// A plain directory is reported as one block; one too large for
	// clients is an error naming the way out.
	_, api = startDirKubo(t, dirBlock(t, unixfs.FolderPBData(), 0))
	if res, err := AddCacheDir(ctx, api, dir, nil); err != nil || res.Sharded {
		t.Errorf("plain directory: %+v, %v", res, err)
	}
	_, api = startDirKubo(t, dirBlock(t, unixfs.FolderPBData(), fetch.MaxBlockSize/200))
	if _, err := AddCacheDir(ctx, api, dir, nil); err == nil || !strings.Contains(err.Error(), "UnixFSHAMTDirectorySizeThreshold") {
		t.Errorf("oversized directory block: %v", err)
	}
	// Not a binary cache.
	if _, err := AddCacheDir(ctx, api, t.TempDir(), nil); err == nil {
		t.Error("directory without nix-cache-info added")
	}
	// An entry that is not a regular file fails the add, naming it.
	_, api = startDirKubo(t, dirBlock(t, hamt, 0))
	odd := filepath.Join(dir, "0000000000000000000000000000000a.narinfo")
	if err := os.Mkdir(odd, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := AddCacheDir(ctx, api, dir, nil); err == nil || !strings.Contains(err.Error(), odd) {
		t.Errorf("a narinfo that is a directory: %v", err)
	}
}
