package main

import (
	"fmt"

	"github.com/dustin/go-humanize"
)

// sizeValue is a pflag.Value for byte sizes written as 256MiB, 1GB, 4096.
type sizeValue struct{ n *int64 }

func (s sizeValue) String() string {
	if s.n == nil {
		return "0"
	}
	return humanize.IBytes(uint64(*s.n))
}

func (s sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.n = n
	return nil
}

func (s sizeValue) Type() string { return "size" }

func parseSize(v string) (int64, error) {
	n, err := humanize.ParseBytes(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (try 256MiB or 1GiB)", v)
	}
	if n > 1<<50 {
		return 0, fmt.Errorf("size %q is too large", v)
	}
	return int64(n), nil
}
