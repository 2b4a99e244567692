package narindex

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// httpFetcher reads a binary cache over HTTP(S).
type httpFetcher struct {
	base    string // without trailing slash
	client  *http.Client
	timeout time.Duration
}

func (h *httpFetcher) fetch(ctx context.Context, name string, limit int64) ([]byte, error) {
	u := h.base + "/" + name
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, err // names the URL already
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return readLimited(resp.Body, limit, u)
	case http.StatusNotFound, http.StatusForbidden:
		// S3 answers 403 for absent keys when listing is not allowed.
		return nil, fmt.Errorf("%s: %s: %w", u, resp.Status, ErrNotFound)
	default:
		return nil, fmt.Errorf("%s: unexpected HTTP status %s", u, resp.Status)
	}
}
