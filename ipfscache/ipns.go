package ipfscache

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/fetch"
)

// Resolution is what an IPNS name points to.
type Resolution struct {
	Root cid.Cid
	// Seq is the record's sequence number; meaningful only when Verified.
	Seq uint64
	// Verified: the signed record was checked here against the name's
	// key. Otherwise a kubo node that ipnix was told to use vouches for
	// Root.
	Verified bool
	From     string // the resolver, for messages
}

// NameResolver finds the directory an IPNS name points to now, without
// caches of its own.
type NameResolver interface {
	ResolveName(ctx context.Context, name ipns.Name) (Resolution, error)
	String() string
}

// VerifyRecord checks a serialized IPNS record against name (signature by
// the name's key, validity not expired, at most ipns.MaxRecordSize bytes)
// and returns the directory it points to, which must be /ipfs/<dag-pb
// CID> with no path below it, and its sequence number.
func VerifyRecord(name ipns.Name, data []byte) (cid.Cid, uint64, error) {
	if len(data) > ipns.MaxRecordSize {
		return cid.Undef, 0, fmt.Errorf("IPNS record for %s: %d bytes, more than the limit of %d", name, len(data), ipns.MaxRecordSize)
	}
	rec, err := ipns.UnmarshalRecord(data)
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("IPNS record for %s: %w", name, err)
	}
	if err := ipns.ValidateWithName(rec, name); err != nil {
		return cid.Undef, 0, fmt.Errorf("IPNS record for %s: %w", name, err)
	}
	seq, err := rec.Sequence()
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("IPNS record for %s: sequence: %w", name, err)
	}
	p, err := rec.Value()
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("IPNS record for %s: value: %w", name, err)
	}
	root, err := directoryOf(p)
	if err != nil {
		return cid.Undef, 0, fmt.Errorf("IPNS record for %s: %w", name, err)
	}
	return root, seq, nil
}

// directoryOf accepts exactly /ipfs/<dag-pb CID>: a name pointing to
// another name, or below a directory, is not followed.
func directoryOf(p path.Path) (cid.Cid, error) {
	if p.Namespace() != path.IPFSNamespace {
		return cid.Undef, fmt.Errorf("points to %q, not /ipfs/<CID> (names pointing to names are not followed)", clip(p.String()))
	}
	ip, err := path.NewImmutablePath(p)
	if err != nil {
		return cid.Undef, fmt.Errorf("points to %q: %v", clip(p.String()), err)
	}
	if len(ip.Segments()) != 2 {
		return cid.Undef, fmt.Errorf("points to %q, below a directory: name the directory that holds nix-cache-info itself", clip(p.String()))
	}
	c := ip.RootCid()
	if c.Type() != cid.DagProtobuf {
		return cid.Undef, fmt.Errorf("points to %s, whose codec %#x is not dag-pb, so not a directory", c, c.Type())
	}
	return c, nil
}

// clip shortens a string from outside for a message.
func clip(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return fmt.Sprintf("%s... (%d bytes)", s[:max], len(s))
}

// GatewayResolver fetches the signed record from an HTTP gateway
// (GET /ipns/<name>?format=ipns-record) and verifies it: the gateway is
// trusted for nothing.
type GatewayResolver struct {
	Base    string // http(s)://host[:port], no trailing slash
	Client  *http.Client
	Timeout time.Duration // per request; 0 means 10 s
}

func (g *GatewayResolver) String() string { return "gateway " + g.Base }

// ResolveName implements NameResolver.
func (g *GatewayResolver) ResolveName(ctx context.Context, name ipns.Name) (Resolution, error) {
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := strings.TrimRight(g.Base, "/") + "/ipns/" + url.PathEscape(name.String()) + "?format=ipns-record"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Resolution{}, err
	}
	req.Header.Set("Accept", "application/vnd.ipfs.ipns-record")
	client := g.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return Resolution{}, fmt.Errorf("%s: %w", g, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Resolution{}, fmt.Errorf("%s: IPNS record of %s: HTTP %s", g, name, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(ipns.MaxRecordSize)+1))
	if err != nil {
		return Resolution{}, fmt.Errorf("%s: IPNS record of %s: %w", g, name, err)
	}
	root, seq, err := VerifyRecord(name, data)
	if err != nil {
		return Resolution{}, fmt.Errorf("%s: %w", g, err)
	}
	return Resolution{Root: root, Seq: seq, Verified: true, From: g.String()}, nil
}

// KuboResolver asks a kubo node's RPC API. kubo's routing/get hands over
// the signed record, which is then verified here; when it has none to
// give (kubo answers routing/get only from the network, and a node with
// Routing "none" holds its own names in its datastore alone), name/resolve
// (uncached) is asked, and the node is trusted for the answer: a node that
// lies can point the name at another directory, whose narinfos still need
// trusted signatures, so it can hide paths or offer old ones, as a lying
// substituter can.
type KuboResolver struct {
	API     *rpc.HttpApi
	URL     string // for messages
	Timeout time.Duration
}

// maxKuboAnswer bounds what is read of one answer of kubo's RPC API to a
// resolution: a record (ipns.MaxRecordSize) in base64 inside JSON, or a
// path, or an error message, all far smaller. The RPC client reads error
// bodies whole and drains every body it closes, so the bound must be in
// the transport.
const maxKuboAnswer = 64 << 10

// NewKuboResolver returns a KuboResolver for the kubo RPC API at addr (as
// --api takes it: see fetch.KuboAPIURL) whose answers are cut at
// maxKuboAnswer bytes: a node that answers without end costs a bounded
// read, not memory until the timeout.
func NewKuboResolver(addr string, timeout time.Duration) (*KuboResolver, error) {
	u, sock, err := fetch.KuboAPIURL(addr)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
	if sock != "" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
	}
	api, err := rpc.NewURLApiWithClient(u, &http.Client{Transport: limitAnswers{tr}})
	if err != nil {
		return nil, err
	}
	if sock != "" {
		u = "unix:" + sock
	}
	return &KuboResolver{API: api, URL: u, Timeout: timeout}, nil
}

// limitAnswers cuts every response body at maxKuboAnswer bytes.
type limitAnswers struct{ rt http.RoundTripper }

func (l limitAnswers) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err == nil {
		resp.Body = &cutBody{ReadCloser: resp.Body, left: maxKuboAnswer}
	}
	return resp, err
}

// cutBody fails a read past its limit (rather than ending quietly, which
// could pass a truncated answer for a whole one).
type cutBody struct {
	io.ReadCloser
	left int64
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("kubo answer longer than %d bytes", maxKuboAnswer)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

func (k *KuboResolver) String() string { return "kubo " + k.URL }

// ResolveName implements NameResolver.
func (k *KuboResolver) ResolveName(ctx context.Context, name ipns.Name) (Resolution, error) {
	timeout := k.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var ev struct {
		Extra string
		Type  int
	}
	var recErr error
	if err := k.API.Request("routing/get", "/ipns/"+name.String()).Exec(ctx, &ev); err != nil {
		recErr = err
	} else if data, err := decodeBase64(ev.Extra); err != nil {
		recErr = err
	} else if root, seq, err := VerifyRecord(name, data); err != nil {
		// A record that does not verify is not an absence: say so.
		return Resolution{}, fmt.Errorf("%s: %w", k, err)
	} else {
		return Resolution{Root: root, Seq: seq, Verified: true, From: k.String() + " (record)"}, nil
	}
	if ctx.Err() != nil {
		return Resolution{}, fmt.Errorf("%s: IPNS record of %s: %w", k, name, recErr)
	}
	var out struct{ Path string }
	err := k.API.Request("name/resolve", "/ipns/"+name.String()).
		Option("recursive", false).
		Option("nocache", true).
		Exec(ctx, &out)
	if err != nil {
		return Resolution{}, fmt.Errorf("%s: resolving %s: %w (routing/get: %v)", k, name, err, recErr)
	}
	p, err := path.NewPath(out.Path)
	if err != nil {
		return Resolution{}, fmt.Errorf("%s: %s resolves to %q: %v", k, name, clip(out.Path), err)
	}
	root, err := directoryOf(p)
	if err != nil {
		return Resolution{}, fmt.Errorf("%s: %s %w", k, name, err)
	}
	return Resolution{Root: root, From: k.String() + " (name/resolve)"}, nil
}

// decodeBase64 reads routing/get's Extra field, standard base64.
func decodeBase64(s string) ([]byte, error) {
	if len(s) > 2*ipns.MaxRecordSize {
		return nil, errors.New("routing/get: record too large")
	}
	return base64.StdEncoding.DecodeString(s)
}
