package fetch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// Gateway is a block source backed by an HTTP trustless gateway
// (GET /ipfs/<cid>?format=raw, application/vnd.ipld.raw). Blocks are NOT
// verified here; wrap the source in Verify. On a local kubo this path is
// several times faster than the RPC API's block/get.
type Gateway struct {
	base    string
	client  *http.Client
	timeout time.Duration
}

// NewGateway returns a source for the gateway at base (http(s)://host[:port]).
func NewGateway(base string, timeout time.Duration) (*Gateway, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("gateway %q is not an http(s) URL", base)
	}
	if timeout <= 0 {
		timeout = DefaultBlockTimeout
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, ReadBufferSize: responseBufferSize}
	return &Gateway{base: strings.TrimRight(base, "/"), client: &http.Client{Transport: tr}, timeout: timeout}, nil
}

// String names the source in logs.
func (g *Gateway) String() string { return "gateway " + g.base }

// GetBlock fetches one raw block.
func (g *Gateway) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.base+"/ipfs/"+c.String()+"?format=raw", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.ipld.raw")
	resp, err := g.client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%s: block %s: no answer within %v: %w", g, c, g.timeout, ctx.Err())
		}
		return nil, fmt.Errorf("%s: block %s: %w", g, c, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return nil, fmt.Errorf("%s: %w: %s", g, ErrBlockNotFound, c)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s: block %s: HTTP %s", g, c, resp.Status)
	}
	data, err := readBlock(resp.Body, resp.ContentLength)
	if err != nil {
		if errors.Is(err, ErrBlockTooLarge) {
			return nil, fmt.Errorf("%s: %w: %s", g, ErrBlockTooLarge, c)
		}
		return nil, fmt.Errorf("%s: block %s: %w", g, c, err)
	}
	return blocks.NewBlockWithCid(data, c)
}

// Failover asks its sources in order and returns the first block that one
// of them delivers and that verifies; a source that fails or sends a bad
// block costs at most its own timeout, and all of them together no more
// than the caller's deadline. Each source should already be wrapped in
// Verify, so a lying source is skipped rather than trusted.
type Failover []BlockGetter

// GetBlock implements BlockGetter.
func (f Failover) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	var errs []error
	for _, s := range f {
		b, err := s.GetBlock(ctx, c)
		if err == nil {
			return b, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			// The caller's bound is spent: say which sources were tried.
			return nil, fmt.Errorf("block %s: %w (after %w)", c, ctx.Err(), errors.Join(errs...))
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("no block sources: %w: %s", ErrBlockNotFound, c)
	}
	return nil, errors.Join(errs...)
}

// GatewayURL asks kubo's RPC API for the address of its HTTP gateway and
// returns it as a URL when it listens on loopback ("" otherwise).
func (k *Kubo) GatewayURL(ctx context.Context) (string, error) {
	var out struct{ Value any }
	if err := k.api.Request("config", "Addresses.Gateway").Exec(ctx, &out); err != nil {
		return "", err
	}
	var addrs []string
	switch v := out.Value.(type) {
	case string:
		addrs = []string{v}
	case []any:
		for _, a := range v {
			if s, ok := a.(string); ok {
				addrs = append(addrs, s)
			}
		}
	}
	for _, a := range addrs {
		if port, ok := strings.CutPrefix(a, "/ip4/127.0.0.1/tcp/"); ok && port != "0" && !strings.Contains(port, "/") {
			return "http://127.0.0.1:" + port, nil
		}
	}
	return "", nil
}
