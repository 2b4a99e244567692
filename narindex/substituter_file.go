package narindex

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// fileFetcher reads a binary cache in a local directory.
type fileFetcher struct{ dir string }

func (f fileFetcher) fetch(ctx context.Context, name string, limit int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := filepath.Join(f.dir, name)
	file, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer file.Close()
	return readLimited(file, limit, path)
}

// errTooLarge is wrapped by the error of readLimited for a file over the
// limit.
var errTooLarge = errors.New("larger than the limit")

// readLimited reads r to its end, refusing more than limit bytes.
func readLimited(r io.Reader, limit int64, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if int64(len(data)) > limit {
		return nil, tag(errTooLarge, fmt.Errorf("%s: larger than the limit of %d bytes", what, limit))
	}
	return data, nil
}
