package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"
)

// Kubo is a Pinner on a kubo node's RPC API. Pins are made with kubo's
// defaults for providing: which of their blocks the node announces is its
// Provide.Strategy's choice (see the README's kubo configuration).
type Kubo struct {
	API *rpc.HttpApi
}

// RecursivePins implements Pinner with one streamed pin/ls.
func (k *Kubo) RecursivePins(ctx context.Context, fn func(cid.Cid)) error {
	resp, err := k.API.Request("pin/ls").
		Option("type", "recursive").
		Option("stream", true).
		Send(ctx)
	if err != nil {
		return fmt.Errorf("kubo pin/ls: %w", err)
	}
	if resp.Error != nil {
		return fmt.Errorf("kubo pin/ls: %w", resp.Error)
	}
	defer resp.Cancel()
	if err := parsePinList(resp.Output, fn); err != nil {
		return fmt.Errorf("kubo pin/ls: %w", err)
	}
	return nil
}

// Pin implements Pinner with pin/add, asking kubo for progress (which it
// sends twice a second).
func (k *Kubo) Pin(ctx context.Context, c cid.Cid, progress func(PinProgress)) error {
	resp, err := k.API.Request("pin/add", c.String()).
		Option("recursive", true).
		Option("progress", true).
		Send(ctx)
	if err != nil {
		return fmt.Errorf("kubo pin/add %s: %w", c, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("kubo pin/add %s: %w", c, resp.Error)
	}
	defer resp.Cancel()
	if err := parsePinAnswer(resp.Output, c, progress); err != nil {
		return fmt.Errorf("kubo pin/add %s: %w", c, err)
	}
	return nil
}

// parsePinList reads kubo's streamed pin/ls answer: one JSON object per
// pin, {"Cid": "...", "Type": "recursive"}.
func parsePinList(r io.Reader, fn func(cid.Cid)) error {
	dec := json.NewDecoder(r)
	for {
		var p struct{ Cid, Type string }
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading the answer: %w", err)
		}
		c, err := cid.Parse(p.Cid)
		if err != nil {
			return fmt.Errorf("answered a pin %.100q that is not a CID: %w", p.Cid, err)
		}
		if p.Type != "recursive" {
			// Asked for recursive pins only; anything else is not
			// counted as one.
			continue
		}
		fn(c)
	}
}

// parsePinAnswer reads kubo's pin/add answer with progress: objects
// {"Progress": blocks, "Bytes": bytes} and finally {"Pins": [...]}, which
// must name want. An error kubo hits after answering arrives as the
// stream's trailer, through r's error.
func parsePinAnswer(r io.Reader, want cid.Cid, progress func(PinProgress)) error {
	dec := json.NewDecoder(r)
	pinned := false
	for {
		var ev struct {
			Pins     []string
			Progress int
			Bytes    uint64
		}
		if err := dec.Decode(&ev); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("reading the answer: %w", err)
		}
		if ev.Progress > 0 && progress != nil {
			progress(PinProgress{Blocks: ev.Progress, Bytes: ev.Bytes})
		}
		for _, p := range ev.Pins {
			c, err := cid.Parse(p)
			if err != nil {
				return fmt.Errorf("answered a pin %.100q that is not a CID: %w", p, err)
			}
			if key(c) != key(want) {
				return fmt.Errorf("answered that it pinned %s", c)
			}
			pinned = true
		}
	}
	if !pinned {
		return errors.New("the answer ended without confirming the pin")
	}
	return nil
}

// AnnouncesEveryBlock reports whether the node announces every block it
// stores to the routing system: kubo's default (Provide.Strategy unset or
// "all", with Provide.Enabled not false), which at a binary cache's scale
// is one provider record per 256 KiB rather than one per NAR.
func (k *Kubo) AnnouncesEveryBlock(ctx context.Context) (bool, error) {
	get := func(key string) (string, bool, error) {
		var out struct{ Value any }
		err := k.API.Request("config", key).Exec(ctx, &out)
		if err != nil {
			if strings.Contains(err.Error(), "not found") {
				return "", false, nil
			}
			return "", false, fmt.Errorf("kubo config %s: %w", key, err)
		}
		return fmt.Sprint(out.Value), true, nil
	}
	enabled, set, err := get("Provide.Enabled")
	if err != nil {
		return false, err
	}
	if set && enabled == "false" {
		return false, nil
	}
	strategy, set, err := get("Provide.Strategy")
	if err != nil {
		return false, err
	}
	return !set || strategy == "" || strategy == "all", nil
}
