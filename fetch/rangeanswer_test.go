package fetch

import (
	"net/http"
	"strconv"
	"testing"
)

// FuzzCheckRangeAnswer: a gateway's answer to a range is accepted only
// when it is exactly the range asked for (or the whole file from 0), and
// no answer makes it panic.
func FuzzCheckRangeAnswer(f *testing.F) {
	f.Add(206, "bytes 0-99/1000", int64(0), int64(100))
	f.Add(206, "bytes 1-100/1000", int64(0), int64(100))
	f.Add(200, "", int64(5), int64(100))
	f.Add(206, "bytes 262144-524287/*", int64(262144), int64(524288))
	f.Add(404, "", int64(0), int64(1))
	f.Fuzz(func(t *testing.T, status int, cr string, from, to int64) {
		resp := &http.Response{StatusCode: status, Status: strconv.Itoa(status), Header: http.Header{}}
		resp.Header.Set("Content-Range", cr)
		err := checkRangeAnswer(resp, from, to)
		if err != nil {
			return
		}
		switch status {
		case http.StatusOK:
			if from != 0 {
				t.Fatalf("200 accepted for a range from %d", from)
			}
		case http.StatusPartialContent:
			want := "bytes " + strconv.FormatInt(from, 10) + "-" + strconv.FormatInt(to-1, 10) + "/"
			if len(cr) < len(want) || cr[:len(want)] != want {
				t.Fatalf("Content-Range %q accepted for %d-%d", cr, from, to-1)
			}
		default:
			t.Fatalf("status %d accepted", status)
		}
	})
}
