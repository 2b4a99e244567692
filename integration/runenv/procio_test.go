package runenv

import (
	"os"
	"testing"
)

func TestParseProcIO(t *testing.T) {
	text := "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 512\n"
	got, err := ParseProcIO([]byte(text))
	if err != nil || got != (IO{ReadBytes: 4096, WriteBytes: 8192, CancelledWriteBytes: 512}) {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range []string{"", "read_bytes: 1\nwrite_bytes: 2\n", "read_bytes: 1\nwrite_bytes: x\ncancelled_write_bytes: 0\n",
		"read_bytes: 1\nread_bytes: 1\nwrite_bytes: -2\ncancelled_write_bytes: 0\n", "read_bytes: 1\nwrite_bytes: 1\nwrite_bytes: 1\n"} {
		if _, err := ParseProcIO([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if _, err := ProcIO(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseProcIO(f *testing.F) {
	f.Add([]byte("read_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 512\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseProcIO(b)
		if err == nil && (c.ReadBytes < 0 || c.WriteBytes < 0 || c.CancelledWriteBytes < 0) {
			t.Fatalf("negative counters %+v from %q", c, b)
		}
	})
}
