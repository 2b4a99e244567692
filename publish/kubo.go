package publish

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/narindex"
)

// Adder stores a byte stream in IPFS as a UnixFS file and returns its root.
type Adder interface {
	Add(ctx context.Context, r io.Reader) (cid.Cid, error)
}

// DefaultChunker is the encoding DESIGN.md fixes, so that anyone holding the
// NAR can recompute its CID with `ipfs add --cid-version=1`.
const DefaultChunker = "size-262144"

// KuboAdder adds through a kubo node's RPC API: CIDv1, raw leaves, balanced
// layout, the given chunker, pinned so the node's garbage collector keeps it.
// Every parameter of the DAG is sent with the request, so that the node's
// Import configuration (a profile such as unixfs-v1-2025 sets 1024 links
// per node; Import.UnixFSDAGLayout can choose trickle) cannot change what
// the narinfo's IpfsEncoding says.
type KuboAdder struct {
	API     *rpc.HttpApi
	Chunker string
}

// Add implements Adder. It sends what the RPC client's Unixfs().Add sends
// for one unnamed file (the options, the multipart framing), but writes
// the body itself, so that a reader that can write itself out (the
// fanout's, in megabyte chunks) reaches the connection without being
// copied through small buffers.
func (k *KuboAdder) Add(ctx context.Context, r io.Reader) (cid.Cid, error) {
	chunker := k.Chunker
	if chunker == "" {
		chunker = DefaultChunker
	}
	var b [30]byte
	rand.Read(b[:])
	boundary := hex.EncodeToString(b[:])
	head := "--" + boundary + "\r\n" +
		"Abspath-Encoded: \r\n" +
		"Content-Disposition: attachment; filename=\"\"\r\n" +
		"Content-Type: application/octet-stream\r\n\r\n"
	tail := "\r\n--" + boundary + "--\r\n"
	resp, err := k.API.Request("add").
		Option("hash", "sha2-256").
		Option("chunker", chunker).
		Option("cid-version", 1).
		Option("raw-leaves", true).
		Option("trickle", false).
		Option("max-file-links", narindex.DefaultMaxWidth).
		Option("inline", false).
		Option("pin", true).
		Option("progress", false).
		Option("quieter", true). // only the root, as `ipfs add -Q`
		Header("Content-Type", "multipart/form-data; boundary="+boundary).
		Header("Content-Disposition", `form-data; name="files"`).
		Body(io.MultiReader(strings.NewReader(head), r, strings.NewReader(tail))).
		Send(ctx)
	if err != nil {
		return cid.Undef, fmt.Errorf("kubo add: %w", err)
	}
	if resp.Error != nil {
		return cid.Undef, fmt.Errorf("kubo add: %w", resp.Error)
	}
	defer resp.Close()
	return parseAddAnswer(resp.Output)
}

// parseAddAnswer reads the events kubo's add answers with, one JSON object
// per file and directory added; the last names the root.
func parseAddAnswer(r io.Reader) (cid.Cid, error) {
	var last struct{ Hash string }
	dec := json.NewDecoder(r)
	for {
		var ev struct{ Hash string }
		if err := dec.Decode(&ev); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return cid.Undef, fmt.Errorf("kubo add: %w", err)
		}
		last = ev
	}
	c, err := cid.Parse(last.Hash)
	if err != nil {
		return cid.Undef, fmt.Errorf("kubo add answered no root CID (%q): %w", last.Hash, err)
	}
	return c, nil
}
