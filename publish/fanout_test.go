package publish

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Every sink sees every byte in order; chunks go back to the free list.
func TestFanoutDelivers(t *testing.T) {
	data := make([]byte, 5*chunkSize+12345)
	for i := range data {
		data[i] = byte(i * 31)
	}
	f := newFanout(3)
	var a, b bytes.Buffer
	waitA := f.drain(1, func(p []byte) error { a.Write(p); return nil })
	waitB := f.drain(2, func(p []byte) error { b.Write(p); return nil })
	go func() {
		if err := readChunks(bytes.NewReader(data))(f); err != nil {
			f.fail(err)
		}
		f.close()
	}()
	got, err := io.ReadAll(f.reader(0))
	if err != nil {
		t.Fatal(err)
	}
	waitA()
	waitB()
	for i, s := range [][]byte{got, a.Bytes(), b.Bytes()} {
		if !bytes.Equal(s, data) {
			t.Fatalf("sink %d got %d bytes, not the stream", i, len(s))
		}
	}
	if len(f.free) != f.made {
		t.Fatalf("%d of %d chunks back", len(f.free), f.made)
	}
}

// A failing sink stops a source that waits for chunks, and the reader
// ends with the failure, not EOF: a truncated NAR is never uploaded as
// complete.
func TestFanoutSinkFailure(t *testing.T) {
	f := newFanout(2)
	boom := errors.New("malformed")
	wait := f.drain(1, func([]byte) error { return boom })
	srcErr := make(chan error, 1)
	go func() {
		err := readChunks(io.LimitReader(zeros{}, 4*chunksInFlight*chunkSize))(f)
		if err != nil {
			f.fail(err)
		}
		f.close()
		srcErr <- err
	}()
	r := f.reader(0)
	_, err := io.Copy(io.Discard, r)
	if err != boom {
		t.Fatalf("reader: %v, want the sink's error", err)
	}
	if err := <-srcErr; err != boom {
		t.Fatalf("source: %v, want the sink's error", err)
	}
	r.discard()
	wait()
}

// A reader abandoned early (an uploader that gave up) does not block the
// source once discarded.
func TestFanoutAbandonedReader(t *testing.T) {
	f := newFanout(2)
	var n int
	wait := f.drain(1, func(p []byte) error { n += len(p); return nil })
	done := make(chan struct{})
	go func() {
		readChunks(io.LimitReader(zeros{}, 3*chunksInFlight*chunkSize))(f)
		f.close()
		close(done)
	}()
	r := f.reader(0)
	io.CopyN(io.Discard, r, 1000)
	r.discard()
	<-done
	wait()
	if n != 3*chunksInFlight*chunkSize {
		t.Fatalf("other sink saw %d bytes", n)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// The NAR file holds the stream whatever its chunking, with O_DIRECT
// where the file system takes it and through the page cache otherwise.
func TestNarFile(t *testing.T) {
	dirs := []string{t.TempDir()}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "ipnix-test-")
		if err == nil {
			defer os.RemoveAll(d)
			dirs = append(dirs, d) // tmpfs: O_DIRECT or not, by kernel
		}
	}
	data := make([]byte, 3*chunkSize+100)
	for i := range data {
		data[i] = byte(i * 13)
	}
	for _, dir := range dirs {
		tmp, err := os.CreateTemp(dir, "nar")
		if err != nil {
			t.Fatal(err)
		}
		w := newNarFile(tmp)
		direct := w.direct
		t.Logf("%s: O_DIRECT %v", dir, direct)
		// Chunks as the fanout makes them, then odd sizes.
		for i, p := range [][]byte{data[:chunkSize], data[chunkSize : 2*chunkSize], data[2*chunkSize : 3*chunkSize], data[3*chunkSize:]} {
			c := chunkPool.Get().(*chunk)
			c.b = append(c.b[:0], p...)
			if _, err := w.Write(c.b); err != nil {
				t.Fatal(err)
			}
			chunkPool.Put(c)
			if i < 3 && w.direct != direct {
				t.Errorf("chunk %d: a whole chunk did not go O_DIRECT (memory not aligned?)", i)
			}
		}
		if w.direct {
			t.Error("still O_DIRECT after an unaligned write")
		}
		if err := tmp.Sync(); err != nil {
			t.Fatal(err)
		}
		tmp.Close()
		got, err := os.ReadFile(filepath.Join(dir, filepath.Base(tmp.Name())))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: file holds %d bytes, not the stream", dir, len(got))
		}
	}
}
