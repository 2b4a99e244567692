package publish

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/fetch/fetchtest"
)

// fakeKubo answers /api/v0/add as kubo does, after checking that the
// request is what kubo's RPC client would send; fail makes it answer
// with an error instead.
func fakeKubo(t *testing.T, fail string) (*KuboAdder, *[]byte) {
	t.Helper()
	var got []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v0/add" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		for k, v := range map[string]string{"cid-version": "1", "raw-leaves": "true", "chunker": DefaultChunker, "pin": "true", "hash": "sha2-256", "inline": "false",
			// The rest of what IpfsEncoding says, against the node's
			// Import configuration.
			"trickle": "false", "max-file-links": "174"} {
			if q.Get(k) != v {
				t.Errorf("option %s=%q, want %q", k, q.Get(k), v)
			}
		}
		mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "multipart/form-data" {
			t.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
		}
		mr := multipart.NewReader(r.Body, params["boundary"])
		part, err := mr.NextPart()
		if err != nil {
			t.Errorf("no part: %v", err)
			return
		}
		if cd := part.Header.Get("Content-Disposition"); cd != `attachment; filename=""` {
			t.Errorf("Content-Disposition %q", cd)
		}
		got, _ = io.ReadAll(part)
		if _, err := mr.NextPart(); err != io.EOF {
			t.Errorf("more than one part: %v", err)
		}
		switch fail {
		case "status":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `{"Message":"blockstore full","Code":0,"Type":"error"}`)
		case "stream":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Trailer", "X-Stream-Error")
			fmt.Fprint(w, `{"Name":"","Bytes":100}`+"\n")
			w.Header().Set("X-Stream-Error", "disk went away")
		case "nohash":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"Name":""}`+"\n")
		default:
			c, _ := fetchtest.NewStore().AddFile(got, fetchtest.DefaultOptions)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"Name":"","Hash":"%s","Size":"%d"}`+"\n", c, len(got))
		}
	}))
	t.Cleanup(srv.Close)
	api, err := rpc.NewURLApiWithClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return &KuboAdder{API: api}, &got
}

// The add request carries the stream unchanged as the one file of the
// multipart body, with the options of the encoding DESIGN.md fixes.
func TestKuboAdderRequest(t *testing.T) {
	add, got := fakeKubo(t, "")
	data := bytes.Repeat([]byte("0123456789\r\n--"), chunkSize/7)
	c, err := add.Add(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(*got, data) {
		t.Fatalf("kubo received %d bytes, not the stream", len(*got))
	}
	want, _ := fetchtest.NewStore().AddFile(data, fetchtest.DefaultOptions)
	if !c.Equals(want) {
		t.Fatalf("root %s, want %s", c, want)
	}
	// Through the fanout's reader, which writes itself out in chunks.
	nar := testNar(t)
	in, err := ingest(context.Background(), add, bytes.NewReader(nar), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(*got, nar) {
		t.Fatalf("kubo received %d bytes through the fanout, not the NAR", len(*got))
	}
	want, _ = fetchtest.NewStore().AddFile(nar, fetchtest.DefaultOptions)
	if !in.cid.Equals(want) {
		t.Fatalf("root %s, want %s", in.cid, want)
	}
}

// Whatever way kubo says no, Add fails with kubo's words.
func TestKuboAdderErrors(t *testing.T) {
	for fail, want := range map[string]string{"status": "blockstore full", "stream": "disk went away", "nohash": "no root CID"} {
		add, _ := fakeKubo(t, fail)
		_, err := add.Add(context.Background(), strings.NewReader("abc"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", fail, err, want)
		}
	}
}

// Whatever kubo answers, reading it ends with a CID it named or an error.
func FuzzParseAddAnswer(f *testing.F) {
	f.Add([]byte(`{"Name":"","Hash":"bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy","Size":"3"}` + "\n"))
	f.Add([]byte(`{"Name":"a","Bytes":4}{"Name":"","Hash":"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"}`))
	f.Add([]byte(`{"Hash":7}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseAddAnswer(bytes.NewReader(data))
		if err == nil && !c.Defined() {
			t.Fatalf("no error and no CID from %q", data)
		}
	})
}
