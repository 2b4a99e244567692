package prefetch

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
)

const (
	baseA = "0a7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-hello-2.12"
	baseB = "1b7kpxgpaq2ykzwk3c1j5f9b5ivr9pg2-glibc-2.40"
	cidA  = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
	cidB  = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
)

func sampleRecord() *Record {
	a, _ := cid.Decode(cidA)
	b, _ := cid.Decode(cidB)
	return &Record{Closures: []Closure{
		{Root: baseA, Time: time.Unix(1764000000, 0), Paths: []Path{{baseA, a, 1234}, {baseB, b, 99}}},
		{Root: baseB, Time: time.Unix(1764000001, 0), Paths: []Path{{baseB, b, 99}}},
	}}
}

func TestRecordRoundTrip(t *testing.T) {
	r := sampleRecord()
	data := r.Marshal()
	want := "ipnix-prefetched-1\n" +
		"closure " + baseA + " 1764000000\n" +
		"path " + baseA + " " + cidA + " 1234\n" +
		"path " + baseB + " " + cidB + " 99\n" +
		"closure " + baseB + " 1764000001\n" +
		"path " + baseB + " " + cidB + " 99\n"
	if string(data) != want {
		t.Fatalf("Marshal:\n%s\nwant:\n%s", data, want)
	}
	got, err := ParseRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("round trip:\n%+v\nwant\n%+v", got, r)
	}
	if empty, err := ParseRecord([]byte("ipnix-prefetched-1\n")); err != nil || len(empty.Closures) != 0 {
		t.Fatalf("header only: %v %+v", err, empty)
	}
}

// Every malformed record is refused with an error naming its line.
func TestRecordRefusesMalformed(t *testing.T) {
	h := "ipnix-prefetched-1\n"
	cl := "closure " + baseA + " 1764000000\n"
	pa := "path " + baseA + " " + cidA + " 1234\n"
	for _, tc := range []struct{ name, data, want string }{
		{"empty", "", "empty"},
		{"header", "ipnix-prefetched-2\n" + cl + pa, "line 1"},
		{"path first", h + pa, "line 2"},
		{"unknown", h + cl + pa + "pin " + baseA + "\n", "line 4"},
		{"blank line", h + cl + pa + "\n", "line 4"},
		{"closure fields", h + "closure " + baseA + "\n", "line 2"},
		{"closure name", h + "closure not-a-store-path 1\n" + pa, "line 2"},
		{"closure time", h + "closure " + baseA + " -5\n" + pa, "line 2"},
		{"closure twice", h + cl + pa + cl + pa, "line 4"},
		{"root missing", h + cl + "path " + baseB + " " + cidB + " 99\n", "root"},
		{"root missing before next", h + cl + "path " + baseB + " " + cidB + " 99\n" + "closure " + baseB + " 1\n" + "path " + baseB + " " + cidB + " 99\n", "root"},
		{"path fields", h + cl + "path " + baseA + " " + cidA + "\n", "line 3"},
		{"path name", h + cl + "path x " + cidA + " 1\n", "line 3"},
		{"path twice", h + cl + pa + pa, "line 4"},
		{"cid", h + cl + "path " + baseA + " bafynotacid 1\n", "line 3"},
		{"cid spelling", h + cl + "path " + baseA + " " + strings.ToUpper(cidB) + " 1\n", "line 3"},
		{"size zero", h + cl + "path " + baseA + " " + cidA + " 0\n", "line 3"},
		{"size text", h + cl + "path " + baseA + " " + cidA + " 12k\n", "line 3"},
		{"extra spaces", h + "closure  " + baseA + " 1\n", "line 2"},
		{"long line", h + cl + "path " + strings.Repeat("x", 5000) + "\n", "line 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecord([]byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseRecord: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Concurrent updates (two prefetches into one directory) lose nothing.
func TestUpdateRecordConcurrent(t *testing.T) {
	dir := t.TempDir()
	a, _ := cid.Decode(cidA)
	var wg sync.WaitGroup
	roots := []string{baseA, baseB}
	for i := range 20 {
		wg.Go(func() {
			root := roots[i%2]
			err := UpdateRecord(dir, func(r *Record) error {
				r.Set(Closure{Root: root, Time: time.Unix(int64(i), 0), Paths: []Path{{root, a, uint64(i + 1)}}})
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	r, err := LoadRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Closures) != 2 || r.Find(baseA) == nil || r.Find(baseB) == nil {
		t.Fatalf("after concurrent updates: %+v", r)
	}
	if !Recorded(dir) || Recorded(t.TempDir()) {
		t.Fatal("Recorded is wrong")
	}
	// A damaged record is an error naming the file, not an empty record.
	os.WriteFile(filepath.Join(dir, RecordName), []byte("garbage"), 0o600)
	if _, err := LoadRecord(dir); err == nil || !strings.Contains(err.Error(), RecordName) {
		t.Fatalf("damaged record: %v", err)
	}
	if Recorded(dir) {
		t.Fatal("a damaged record counts as recorded")
	}
}

// FuzzParseRecord: any input is refused or parses to a record that
// marshals to bytes parsing to the same record; nothing panics.
func FuzzParseRecord(f *testing.F) {
	f.Add(sampleRecord().Marshal())
	f.Add([]byte("ipnix-prefetched-1\n"))
	f.Add([]byte("ipnix-prefetched-1\nclosure " + baseA + " 0\npath " + baseA + " " + cidB + " 1\n"))
	f.Add([]byte("ipnix-prefetched-1\r\nclosure x 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRecord(data)
		if err != nil {
			if r != nil {
				t.Fatal("a record and an error")
			}
			return
		}
		again, err := ParseRecord(r.Marshal())
		if err != nil {
			t.Fatalf("re-parsing what Marshal wrote: %v\n%s", err, r.Marshal())
		}
		if !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, again)
		}
	})
}
