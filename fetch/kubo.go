package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/ipnix/ipnix/internal/blockfile"
)

// DefaultKuboAPI is where kubo's CLI looks when $IPFS_PATH/api does not exist.
const DefaultKuboAPI = "/ip4/127.0.0.1/tcp/5001"

// kuboAPIFileMax bounds the read of a repository's api file, which holds
// one multiaddr.
const kuboAPIFileMax = 4 << 10

// KuboRepoPath is the kubo repository the ipfs command uses: $IPFS_PATH,
// else ~/.ipfs ("" when there is no home directory either).
func KuboRepoPath() string {
	if root := os.Getenv("IPFS_PATH"); root != "" {
		return root
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".ipfs")
	}
	return ""
}

// RepoAPI is the API address in the api file of the kubo repository repo,
// which its daemon writes while it runs. It is read without blocking (not
// os.ReadFile: whoever owns the repository could put a FIFO there and hang
// the start), following a symlink.
func RepoAPI(repo string) (string, error) {
	b, _, err := blockfile.ReadFollowing(filepath.Join(repo, "api"), kuboAPIFileMax)
	return strings.TrimSpace(string(b)), err
}

// KuboAPIURL turns what a user may pass as --api into the base URL of a kubo
// RPC endpoint: a multiaddr (/ip4/127.0.0.1/tcp/5001, /dns/host/tcp/5001,
// /unix/path), an http(s):// URL, or "" for kubo's own default: the multiaddr
// in $IPFS_PATH/api (IPFS_PATH defaulting to ~/.ipfs), else DefaultKuboAPI.
func KuboAPIURL(addr string) (url string, unixSocket string, err error) {
	if addr == "" {
		addr = DefaultKuboAPI
		if root := KuboRepoPath(); root != "" {
			if a, err := RepoAPI(root); err == nil {
				addr = a
			}
		}
	}
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimRight(addr, "/"), "", nil
	}
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return "", "", fmt.Errorf("kubo API address %q is neither a multiaddr nor an http(s) URL: %v", addr, err)
	}
	network, host, err := manet.DialArgs(m)
	if err != nil {
		return "", "", fmt.Errorf("kubo API address %q: %v", addr, err)
	}
	if network == "unix" {
		return "http://unix", host, nil
	}
	scheme := "http://"
	for _, p := range m.Protocols() {
		if p.Code == ma.P_HTTPS || p.Code == ma.P_TLS {
			scheme = "https://"
		}
	}
	return scheme + host, "", nil
}

// NewKuboClient returns a kubo RPC client for addr (see KuboAPIURL) that keeps
// connections alive; the client's own constructor disables keep-alive, which
// costs a TCP handshake per block.
func NewKuboClient(addr string) (*rpc.HttpApi, string, error) {
	return newKuboClient(addr, 0)
}

// newKuboClient is NewKuboClient with every response body limited to
// maxBody bytes when positive: the RPC client reads error bodies whole.
func newKuboClient(addr string, maxBody int64) (*rpc.HttpApi, string, error) {
	url, sock, err := KuboAPIURL(addr)
	if err != nil {
		return nil, "", err
	}
	tr := &http.Transport{
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// The 4 KiB defaults turn a block or an added NAR into thousands
		// of small reads and writes, each dragging the whole tee of
		// hashing, parsing and file writing behind it when publishing.
		ReadBufferSize:  responseBufferSize,
		WriteBufferSize: httpBufferSize,
	}
	if sock != "" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
	}
	var rt http.RoundTripper = tr
	if maxBody > 0 {
		rt = limitBodies{tr, maxBody}
	}
	api, err := rpc.NewURLApiWithClient(url, &http.Client{Transport: rt})
	if err != nil {
		return nil, "", err
	}
	if sock != "" {
		url = "unix:" + sock
	}
	return api, url, nil
}

// httpBufferSize is the connection write buffer of the HTTP clients
// (publish streams NARs through it).
const httpBufferSize = 512 << 10

// responseBufferSize is the connection read buffer of the HTTP clients.
// Leaves are read whole into buffers of their own; a read at least this
// large into an empty buffer goes straight from the socket to the leaf,
// where a larger buffer (512 KiB here before) copied every byte fetched
// once more (10 % of the mount's CPU in a cold sequential read).
const responseBufferSize = 32 << 10

// Kubo is a block source backed by a kubo node's RPC API (block/get). Kubo
// fetches from the IPFS network what it does not hold; Timeout bounds that.
type Kubo struct {
	api     *rpc.HttpApi
	url     string
	timeout time.Duration
}

// DefaultBlockTimeout bounds one block request to a source. A read's own
// deadline (DefaultReadTimeout) bounds it further: a request gets the
// block timeout or the time the read has left, whichever is less.
const DefaultBlockTimeout = 10 * time.Second

// NewKubo returns a source for the kubo RPC API at addr (see KuboAPIURL).
// timeout bounds each block request; zero means DefaultBlockTimeout.
func NewKubo(addr string, timeout time.Duration) (*Kubo, error) {
	// A block is at most MaxBlockSize; an error message needs far less.
	api, url, err := newKuboClient(addr, MaxBlockSize+64<<10)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultBlockTimeout
	}
	return &Kubo{api: api, url: url, timeout: timeout}, nil
}

// String names the source in logs.
func (k *Kubo) String() string { return "kubo " + k.url }

// GetBlock fetches one block with block/get. The block is NOT verified here;
// wrap the source in Verify. The request, body included, ends at the block
// timeout or the caller's deadline, whichever comes first.
func (k *Kubo) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	ctx, cancel, limit := blockContext(ctx, k.timeout)
	defer cancel()
	resp, err := k.api.Request("block/get", c.String()).Send(ctx)
	if err != nil {
		return nil, sourceErr(ctx, k, c, limit, err)
	}
	if resp.Error != nil {
		resp.Cancel()
		if strings.Contains(resp.Error.Message, "not found") {
			return nil, fmt.Errorf("%s: %w: %s", k, ErrBlockNotFound, c)
		}
		return nil, sourceErr(ctx, k, c, limit, errors.New(clip(resp.Error.Message)))
	}
	defer resp.Cancel()
	data, err := readBlock(resp.Output, -1)
	if errors.Is(err, ErrBlockTooLarge) {
		return nil, fmt.Errorf("%s: %w: %s", k, ErrBlockTooLarge, c)
	}
	if err != nil {
		return nil, sourceErr(ctx, k, c, limit, err)
	}
	return blocks.NewBlockWithCid(data, c)
}

// blockContext bounds one request to a source: its block timeout or the
// time the caller has left, whichever is less (returned for messages).
func blockContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc, time.Duration) {
	limit := timeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < limit {
		limit = max(time.Until(d), 0)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	return ctx, cancel, limit
}

// sourceErr names the source, the block and, when the request's time ran
// out, the bound that ended it; the context's error stays wrapped.
func sourceErr(ctx context.Context, src fmt.Stringer, c cid.Cid, limit time.Duration, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%s: block %s: not delivered within %v: %w", src, c, limit.Round(time.Millisecond), cerr)
	}
	return fmt.Errorf("%s: block %s: %w", src, c, err)
}

// clip shortens a message from outside to what a log line can hold.
func clip(msg string) string {
	const max = 300
	if len(msg) <= max {
		return msg
	}
	return fmt.Sprintf("%q... (%d bytes)", msg[:max], len(msg))
}

// limitBodies refuses response bodies longer than max bytes.
type limitBodies struct {
	rt  http.RoundTripper
	max int64
}

func (l limitBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err == nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: l.max + 1, max: l.max}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	left, max int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("%w: response longer than %d bytes", ErrBlockTooLarge, b.max)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left <= 0 && err == nil {
		err = fmt.Errorf("%w: response longer than %d bytes", ErrBlockTooLarge, b.max)
	}
	return n, err
}

// Ping checks that the RPC API answers.
func (k *Kubo) Ping(ctx context.Context) error {
	resp, err := k.api.Request("version").Send(ctx)
	if err != nil {
		return err
	}
	defer resp.Close()
	if resp.Error != nil {
		return resp.Error
	}
	return nil
}
